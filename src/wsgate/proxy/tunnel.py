"""The WebSocket tunnel: after a 101, two transports relay bytes to each other.

This is the hot path.  Each side's ``data_received`` does one ``write`` to the other transport,
counts the bytes (for ``$bytes_sent`` and the access log) and stamps the activity time (for the
idle timer).  There is no per-message task and no copy.  Flow control is the
transport's own: when one transport's write buffer passes its high-water mark, asyncio calls
``pause_writing`` on its protocol, and we stop reading the *other* side until
``resume_writing`` (the wiring of uvicorn's ``flow_control.py``).  So a slow reader never makes
the proxy buffer without bound.

Timers follow nginx's ``ngx_http_upstream_process_upgraded`` (NGINX-SEMANTICS.md §4):

* ``proxy_read_timeout`` is an idle timer shared by both directions: traffic either way
  re-arms it; it fires only after that long with no byte in either direction (at most 50 ms
  later: the loop's tunnels share one timer, :mod:`wsgate.proxy.idle`).
* ``proxy_send_timeout`` runs only while writing to the upstream is blocked, ``send_timeout``
  only while writing to the client is blocked.

On expiry both connections are closed and the error log gets nginx's INFO line.

Half-close (a deliberate difference from nginx, which closes both sockets on the first FIN):
when one side shuts down its sending direction, wsgate shuts down the same direction towards
the other side (``write_eof``) and keeps relaying the other way; the tunnel ends when both
directions are shut or either connection is closed or reset.

Frame boundaries (WebSocket tunnels only: the 101 switched to ``websocket``; any other upgrade
is an opaque byte stream).  To count messages each way and to end a tunnel between two frames,
each side keeps ``skip``, the bytes until the next frame header (RFC 6455 §5.2,
https://www.rfc-editor.org/rfc/rfc6455#section-5.2).  A chunk no longer than ``skip`` lies
inside one frame's payload and costs one comparison and one subtraction.  A chunk that starts
with a header and holds no other (one message per read, or the first read of a big message)
is measured from its first bytes with table look-ups.  Only other chunks (several frames per
read, a header split across reads, a Close) go to the header scanner in
:mod:`wsgate.proxy.frames`.  Nothing is parsed or copied beyond the headers.  Measured with
``bench/relay_micro.py``: about 0.1 µs of Python per 64-byte message, 0.2 µs per 4 KiB one,
next to 3 µs of relaying CPU.

Compiled: where the optional extension ``wsgate.proxy._frames`` was built (and
``WSGATE_PURE`` is not set), the sides' hot fields and both ``data_received`` methods (the
byte stream's and the fast path above) are its ``SideBase`` type, in C, and the header
scanner is its ``scan_fields``; :class:`_PySideBase` and :mod:`wsgate.proxy.frames` are the
Python twins, step for step the same.  A chunk the fast path leaves while the direction is
relaying (several headers in one read, a split header: pipelined small messages) is written
and scanned there too, without a call into :meth:`_WsSide._frames` (whose first case it is).
Everything else of a side stays in Python.

Going away (:meth:`Tunnel.going_away`, for a graceful stop or the end of
``worker_shutdown_timeout``): per direction, at that direction's next frame boundary, wsgate
sends the receiver a Close frame (§5.5.1) with code 1001 "going away" or 1012 "service
restart", unless the sender has already sent its own Close there, and from then on drops what
that sender sends (its Close reply included: its peer already has a Close).  Each connection
is closed once it has answered with its own Close (or its FIN): the client's at once (towards
it wsgate is the server, which "SHOULD" close the TCP connection first, §7.1.1), the upstream's
after the upstream's FIN (towards it wsgate is the client).  ``close_timeout`` after
:meth:`Tunnel.going_away` whatever is still open is closed: with a FIN if everything written
to it has been sent, aborted (what is queued for it dropped) if it has stopped reading, since
``close()`` would wait for it for ever (§7.1.1 lets an endpoint drop a connection its peer
does not close "in a reasonable time period").  That also ends a peer stuck in the middle of
a frame, into whose stream no Close can be put: the other peer then sees the connection end
without a Close (1006), exactly as if that peer had gone away mid-frame.

WebSocket features (the ``websocket_*`` directives, :class:`WsFeatures`; docs/configuration.md
"WebSocket features"): a tunnel with any of them on gets :class:`_FeatSide` sides, which read
every frame header they relay, check data frames against the message limits before relaying
them, drop the Pongs that answer wsgate's own Pings, and write wsgate's Pings to the other
side between two frames.  A limit passed ends the tunnel as :meth:`Tunnel.going_away` does,
with a code of its own towards the sender (1009, 1008) and 1001 towards the other side; an
unanswered Ping (:class:`_Keepalive`, on the loop's shared tunnel timer) aborts the silent
side and sends the other a Close 1001.  With every feature off the sides are the plain ones
above: not a byte nor a step added.  With pings alone the sides are :class:`_PingSide`: the
plain side's relaying, the feature side's only while a Ping concerns them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wsgate.proxy.frames import (
    BUCKET_BY_BITS,
    CLOSE,
    EXTENDED_HEAD,
    FRAME_KIND,
    GOING_AWAY,
    HEADER_SIZE,
    MESSAGE_TOO_BIG,
    PING,
    PING_PAYLOAD,
    POLICY_VIOLATION,
    PONG,
    REASONS,
    SIDE_BASE,
    SIZE_BUCKETS,
    SMALL_FRAME,
    ScanState,
    close_code,
    close_code_at,
    close_frame,
    control_frame,
    header_at,
    next_boundary,
    scan_fields,
    scan_sizes,
    unmask,
)
from wsgate.proxy.idle import idle_timers

if TYPE_CHECKING:
    from wsgate.config.model import LocationSettings

__all__ = ["CLOSE_TIMEOUT", "Tunnel", "WsFeatures", "websocket_figures", "ws_features"]

#: Seconds :meth:`Tunnel.going_away` waits for frame boundaries and Close replies before it
#: closes what is left (websockets' and browsers' own closing handshakes take well under it).
CLOSE_TIMEOUT = 5.0

# A direction's phase (``_Side.phase``, for the bytes that side sends).
_RELAY = 0  # normal relaying
_WAIT = 1  # going away: relaying the rest of the current frame, then the Close is sent
_DROP = 2  # going away: the receiver has its Close (or FIN); what the sender sends is dropped

# The hot path's header tables (frames.py): module globals, one cached look-up each.
_WHOLE = SMALL_FRAME
_EXT = EXTENDED_HEAD
_KIND = FRAME_KIND
_HEAD = HEADER_SIZE
_BUCKET = BUCKET_BY_BITS
#: By byte 1: the size bucket of a frame's 7-bit payload length, or -1 for a longer one.
_SMALL_BUCKET = tuple(
    -1 if b & 0x7F > 125 else BUCKET_BY_BITS[((b & 0x7F) - 1).bit_length()] for b in range(256)
)
#: By byte 0: a final text or binary frame (any RSV bits), a message of one frame.
_SINGLE = tuple(b & 0x80 != 0 and b & 0x0F in (1, 2) for b in range(256))
#: A limit that is not set (larger than any frame or message).
_NO_LIMIT = 1 << 63


class _Sink:
    """Where a direction whose receiver already has a Close frame writes: nowhere."""

    __slots__ = ()

    @staticmethod
    def write(data: bytes) -> None:
        pass


_DISCARD = _Sink()


class _PySideBase:
    """The hot fields of a side and its per-chunk relaying, in Python: the twin of the
    compiled ``wsgate.proxy._frames.SideBase`` (src/wsgate/proxy/_frames.c), which
    :class:`_Side` subclasses instead when the extension was built and ``WSGATE_PURE`` is
    not set (:data:`wsgate.proxy.frames.SIDE_BASE`).  Both do the same steps."""

    __slots__ = (
        "out",
        "clock",
        "last",
        "nbytes",
        "skip",
        "messages",
        "partial",
        "close_seen",
        "phase",
    )
    #: ``peer.transport`` (one attribute look-up per chunk, not two), or _DISCARD once the
    #: peer has been sent a Close.  Not the bound ``write``: that would be an object of 64
    #: bytes per side for as long as the tunnel is open, for no measurable gain.
    out: asyncio.Transport | _Sink
    clock: Callable[[], float]
    #: When this side was last read (the idle timer takes the later of the two sides' and
    #: the tunnel's own; the keepalive Ping timer, this side's).
    last: float
    nbytes: int  # bytes read from this side (and written to the peer)
    #: The frame scanner's state between reads (frames.ScanState); -1 while a header is
    #: split across reads (``partial``), and in the _WAIT phase, so that the hot path falls
    #: through to _frames; in _WAIT the real skip is ``held``.
    skip: int
    messages: int  # complete WebSocket data messages read from this side (_WsSide)
    #: A frame header split across reads (frames.ScanState.partial); see :class:`_FeatSide`
    #: for what it holds there.
    partial: bytes
    close_seen: int  # frames.ScanState.close_seen: CLOSE_SEEN | the first Close's code
    phase: int  # this direction's: _RELAY, _WAIT or _DROP

    # the hot path -------------------------------------------------------------------------
    def relay(self, data: bytes) -> None:
        """:class:`_Side`'s ``data_received``: a byte stream, relayed as it comes."""
        self.out.write(data)
        self.nbytes += len(data)
        self.last = self.clock()

    def relay_ws(self, data: bytes) -> None:
        """:class:`_WsSide`'s ``data_received``: also tracks frame boundaries (see the
        module docstring for the cost of each case); what the fast path leaves goes to
        ``_frames``."""
        n = len(data)
        skip = self.skip
        if n <= skip:
            # Inside one frame's payload, up to its end at most: no header in this chunk.
            self.skip = skip - n
            self.out.write(data)
        elif skip == 0 and n > 1:
            # A header first: if the chunk holds one frame, or the start of one, and no other
            # header (a message per read, or the first read of a big one), no scan is needed.
            b1 = data[1]
            size = _WHOLE[b1]
            if size < 0 and n > 9:  # 16- or 64-bit payload length
                if b1 & 0x7F == 126:
                    size = ((data[2] << 8) | data[3]) + _EXT[b1]
                else:
                    size = int.from_bytes(data[2:10], "big") + _EXT[b1]
            if size >= n and (kind := _KIND[data[0]]) >= 0:
                self.skip = size - n
                self.out.write(data)
                self.messages += kind
            else:
                self._frames(data)
        else:
            self._frames(data)
        self.nbytes += n
        self.last = self.clock()

    def _frames(self, data: bytes) -> None:
        raise NotImplementedError  # _WsSide's


if TYPE_CHECKING:
    _SideBase = _PySideBase
else:
    _SideBase = SIDE_BASE or _PySideBase


class _Side(_SideBase, asyncio.Protocol):
    """One transport of the tunnel; relays what it reads to ``peer``."""

    __slots__ = (
        "tunnel",
        "transport",
        "peer",
        "frozen",
        "held",
        "finished",
        "eof",
        "lost",
        "blocked_since",
        "tls",
    )

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: _Side = self
        self.out = _DISCARD
        self.clock = tunnel.clock
        self.last = tunnel.last
        self.nbytes = 0
        self.messages = 0
        self.frozen = 0  # ``messages`` when this direction stopped relaying (going away)
        self.skip = 0
        self.held = 0
        self.partial = b""
        self.close_seen = 0
        self.phase = _RELAY
        self.finished = False  # going away: this transport's close() has been called
        self.eof = False
        self.lost = False
        self.blocked_since: float | None = None
        # A TLS transport cannot stay open half-closed (asyncio's TLS transports have no
        # write_eof): its EOF ends that connection, and the peer is closed after its data.
        self.tls = transport.get_extra_info("sslcontext") is not None

    # the hot path: _SideBase's (compiled, or _PySideBase's) ---------------------------------
    data_received = _SideBase.relay

    # flow control: *our* transport is full, so stop reading the peer ------------------------
    def pause_writing(self) -> None:
        # A peer whose data is being dropped (going away) is read on, for its Close reply.
        if not self.peer.lost and self.peer.phase != _DROP:
            self.peer.transport.pause_reading()
        self.blocked_since = self.tunnel.clock()
        self.tunnel.arm_send_timer(self)

    def resume_writing(self) -> None:
        self.blocked_since = None
        peer = self.peer
        if not peer.lost and not peer.eof and not peer.finished:
            peer.transport.resume_reading()
        self.tunnel.last = self.tunnel.clock()

    # ends ---------------------------------------------------------------------------------
    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        tunnel = self.tunnel
        if tunnel.going and not tunnel.closed:
            if self.phase != _DROP:
                # Mid-frame: that frame never ends, so no Close can follow it; pass the FIN on.
                if peer.lost or peer.finished:
                    pass
                elif peer.transport.can_write_eof():
                    peer.transport.write_eof()
                else:
                    tunnel.finish(peer)
                tunnel.drop(self)
            tunnel.progress()
            return not self.tls
        if peer.eof or peer.lost or not peer.transport.can_write_eof():
            # Both directions are done, or the peer (TLS) cannot be half-closed: end the
            # tunnel, each side getting what is already queued for it first.
            self.tunnel.close()
        else:
            peer.transport.write_eof()
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.tunnel.side_lost(self)


class _WsSide(_Side):
    """A side of a WebSocket tunnel: relays as :class:`_Side` does, tracking frame boundaries
    (see the module docstring for the cost of each case)."""

    __slots__ = ()
    data_received = _SideBase.relay_ws

    def _frames(self, data: bytes) -> None:
        """Everything the hot path leaves: several headers or a split one in the chunk, a
        Close frame, and the going-away phases."""
        if self.phase == _RELAY:  # the common case, without the calls below
            self.out.write(data)
            skip = self.skip
            skip, partial, self.messages, self.close_seen = scan_fields(
                data, skip if skip > 0 else 0, self.partial, self.messages, self.close_seen
            )
            self.partial = partial
            self.skip = -1 if partial else skip
            return
        skip = self.held if self.phase == _WAIT else self.skip
        if skip < 0:
            skip = 0  # a split header: ``partial`` holds it
        if self.phase == _WAIT:
            end = next_boundary(data, ScanState(skip, self.partial))
            if end >= 0:
                # Relay up to the end of the current frame; the Close goes right after it.
                if end:
                    head = data[:end]
                    self.out.write(head)
                    self._scan(head, skip)
                self.tunnel.boundary(self)
                data = data[end:]
                if not data:
                    return
                skip = 0
        self.out.write(data)
        self._scan(data, skip)
        if self.phase == _DROP and self.close_seen:
            self.tunnel.progress()  # this may complete the sender's Close reply

    def _scan(self, data: bytes, skip: int) -> None:
        skip, partial, self.messages, self.close_seen = scan_fields(
            data, skip, self.partial, self.messages, self.close_seen
        )
        self.partial = partial
        if partial:
            skip = -1
        if self.phase == _WAIT:
            self.held = skip  # the hot path must not see the boundary: ``skip`` stays -1
        else:
            self.skip = skip


if SIDE_BASE is not None and not TYPE_CHECKING:
    # The compiled relay_ws does the relaying case of this _frames itself (the chunk written,
    # then scanned as scan_fields does), for sides whose _frames is this one (_frames.c).
    SIDE_BASE.plain_frames(_WsSide._frames)


@dataclass(frozen=True, slots=True)
class WsFeatures:
    """The WebSocket features of a location (``websocket_*`` directives), per direction:
    ``*_client`` limits what the client sends, ``*_upstream`` what the upstream sends; 0 is
    off.  ``rate_*`` are milli-messages per second and ``burst`` milli-messages, as
    :mod:`wsgate.limits` keeps ``limit_req``'s."""

    ping_interval: float = 0.0
    ping_timeout: float = 30.0
    ping_client: bool = False
    ping_upstream: bool = False
    max_message_client: int = 0
    max_message_upstream: int = 0
    max_frame_client: int = 0
    max_frame_upstream: int = 0
    rate_client: int = 0
    rate_upstream: int = 0
    burst: int = 0

    @property
    def limits(self) -> bool:
        """Any message limit is on (else only keepalive pings are)."""
        return any(
            (
                self.max_message_client,
                self.max_message_upstream,
                self.max_frame_client,
                self.max_frame_upstream,
                self.rate_client,
                self.rate_upstream,
            )
        )


def _sides(which: str) -> tuple[bool, bool]:
    return which in ("client", "both"), which in ("upstream", "both")


@functools.lru_cache(maxsize=256)
def _features(
    ping: tuple[float, str],
    timeout: float,
    message: tuple[int, str],
    frame: tuple[int, str],
    rate: tuple[int, int, str],
) -> WsFeatures | None:
    pc, pu = _sides(ping[1]) if ping[0] else (False, False)
    mc, mu = _sides(message[1])
    fc, fu = _sides(frame[1])
    rc, ru = _sides(rate[2])
    f = WsFeatures(
        ping[0] if pc or pu else 0.0,
        timeout,
        pc,
        pu,
        message[0] if mc else 0,
        message[0] if mu else 0,
        frame[0] if fc else 0,
        frame[0] if fu else 0,
        rate[0] if rc else 0,
        rate[0] if ru else 0,
        rate[1],
    )
    if not (f.ping_interval or f.max_message_client or f.max_message_upstream):
        if not (f.max_frame_client or f.max_frame_upstream or f.rate_client or f.rate_upstream):
            return None  # all off: the tunnel is the plain one, byte for byte and cost
    return f


def ws_features(settings: LocationSettings) -> WsFeatures | None:
    """The location's WebSocket features, or ``None`` when all are off (the common case)."""
    return _features(
        settings.websocket_ping_interval,
        settings.websocket_ping_timeout,
        settings.websocket_max_message_size,
        settings.websocket_max_frame_size,
        settings.websocket_message_rate,
    )


class _FeatSide(_WsSide):
    """A side of a WebSocket tunnel with features on (keepalive pings, message limits).

    It reads every frame header of what it relays (not only where the plain side's fast
    path cannot avoid it): each data frame is checked against the limits before any byte of
    it is relayed, wsgate's own Pings are written to the receiver between two frames of this
    stream, and a Pong answering one of them (its payload is :data:`PING_PAYLOAD`) is held
    until complete and dropped.  Pings and Pongs of the ends pass untouched.

    ``skip`` and ``partial`` mean what they mean for :class:`_WsSide`, except that
    ``partial`` (a split header, or a Pong being held) has *not* been relayed yet;
    :meth:`Tunnel.going_away` relays it before the plain going-away phases take over.
    """

    __slots__ = (
        "sent",
        "ping_at",
        "owe",
        "keep",
        "limited",
        "max_message",
        "max_frame",
        "max_whole",
        "rate",
        "period",
        "window",
        "tat",
        "size",
        "close_to",
        "note",
    )

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        super().__init__(tunnel, transport)
        #: How many first bytes of ``partial`` were relayed already (a :class:`_PingSide`
        #: engaged in the middle of a split header had relayed them as a plain side does).
        self.sent = 0
        self.ping_at = 0.0  # when wsgate's Ping to this side was sent (0: none pending)
        self.owe = False  # a Ping to ``peer`` waits for the next frame boundary of this stream
        self.keep: _Keepalive | None = None
        # Limits on what this side sends (:data:`_NO_LIMIT`: none), checked only if
        # ``limited``; the rate in messages per second and the burst in messages.
        self.limited = False
        self.max_message = _NO_LIMIT
        self.max_frame = _NO_LIMIT
        self.max_whole = _NO_LIMIT  # the smaller: the limit on a one-frame message
        # The rate limit, limit_req's account in messages (:meth:`_check`): messages per
        # second, seconds per message (0: no limit), the burst in seconds of it, and when
        # the excess is drained (long ago: all drained).
        self.rate = 0.0
        self.period = 0.0
        self.window = 0.0
        self.tat = -1e18
        self.size = 0  # wire payload bytes of this side's message in progress
        self.close_to = 0  # the code of the Close sent to ``peer`` when ending (0: ``going``)
        self.note: tuple[str, str] | None = None  # the error-log line of the tunnel's end

    def data_received(self, data: bytes) -> None:
        if self.phase != _RELAY:
            _WsSide.data_received(self, data)  # going away: as any WebSocket side
            return
        n = len(data)
        now = self.clock()
        self.nbytes += n
        self.last = now
        skip = self.skip
        if n <= skip:
            # Inside one frame's payload, up to its end at most: no header in this chunk.
            self.skip = skip - n
            self.out.write(data)
            if n == skip and self.owe:
                self.tunnel.ping(self.peer)  # type: ignore[arg-type]
            return
        if skip == 0 and n > 1:
            # The plain side's fast path: one data frame, or the start of one, and no other
            # header (no Ping owed to the receiver: it would go before this frame).
            b0, b1 = data[0], data[1]
            size = _WHOLE[b1]
            if size < 0 and n > 9:
                if b1 & 0x7F == 126:
                    size = ((data[2] << 8) | data[3]) + _EXT[b1]
                else:
                    size = int.from_bytes(data[2:10], "big") + _EXT[b1]
            if size >= n and b0 & 0x08 == 0 and not self.owe:
                if self.limited:
                    # (The common case is _LimitSide's fast path: here, engaged for a Ping.)
                    refused = self._check(b0, size - _HEAD[b1], now)
                    if refused is not None:
                        self.nbytes -= n
                        self.tunnel.refuse(self, refused)
                        self._frames(data)  # dropped, but scanned for the Close reply
                        return
                self.skip = size - n
                self.out.write(data)
                if b0 & 0x80:
                    self.messages += _KIND[b0]
                return
        self._many(data, n, now)

    def _many(self, data: bytes, n: int, now: float) -> None:
        """A chunk with several headers, a split one, a control frame, or a Ping owed."""
        skip = self.skip
        start = 0  # what is relayed of ``data`` up to here (the rest is, from here on)
        if skip < 0:
            data = self.partial + data  # a split header or a held Pong: not relayed yet
            start = self.sent  # (except these bytes)
            self.partial = b""
            self.sent = 0
            n = len(data)
            pos = 0
        else:
            pos = skip
        out = self.out
        peer = self.peer
        while pos < n:
            if self.owe and pos >= start:
                if pos > start:
                    out.write(data[start:pos])
                    start = pos
                self.tunnel.ping(peer)  # type: ignore[arg-type]
            hdr = header_at(data, pos)
            if hdr is None:
                break
            b0 = data[pos]
            op = b0 & 0x0F
            end = pos + hdr[0] + hdr[1]
            if op >= 8:
                if op == PONG and hdr[1] == len(PING_PAYLOAD):
                    if end > n:
                        break  # hold it until it is whole
                    if self.ping_at and pos >= start and self._ours(data, pos, hdr[0]):
                        if pos > start:
                            out.write(data[start:pos])
                        start = end
                        self.nbytes -= end - pos
                elif op == CLOSE and not self.close_seen:
                    seen = close_code_at(data, pos)
                    if not seen:
                        break  # hold it until its code is here (frames.py)
                    self.close_seen = seen
            else:
                refused = self._check(b0, hdr[1], now) if self.limited else None
                if refused is not None:
                    if pos > start:
                        out.write(data[start:pos])
                    self.skip = 0
                    self.nbytes -= n - pos
                    self.tunnel.refuse(self, refused)
                    # Dropped, but scanned: the sender's Close reply must still be found.
                    self._frames(data[pos:])
                    return
                if b0 & 0x80:
                    self.messages += _KIND[b0]  # 1 for a final text, binary or continuation
            pos = end
        if pos < n:
            if pos > start:
                out.write(data[start:pos])
            self.partial = data[pos:]
            self.sent = start - pos if start > pos else 0
            self.skip = -1
            return
        if start < n:
            out.write(data[start:] if start else data)
        self.skip = pos - n
        if pos == n and self.owe:
            self.tunnel.ping(peer)  # type: ignore[arg-type]

    @staticmethod
    def _ours(data: bytes, pos: int, head: int) -> bool:
        """Whether the Pong at ``pos`` carries wsgate's Ping payload (unmasked)."""
        payload = data[pos + head : pos + head + len(PING_PAYLOAD)]
        if head > 2:  # masked (head is 6: the payload is short)
            payload = unmask(payload, data[pos + 2 : pos + 6])
        return payload == PING_PAYLOAD

    def _check(self, b0: int, length: int, now: float) -> tuple[int, str] | None:
        """The limits on a data frame of ``length`` payload bytes whose header is being
        relayed: ``None``, or the close code for this side and the error-log line."""
        if length > self.max_frame:
            return MESSAGE_TOO_BIG, (
                f"{self._who()} intended to send too large websocket frame: {length} bytes"
            )
        if b0 & 0x0F:  # the first frame of a message
            size = length
            period = self.period
            if period:
                # limit_req's account (wsgate.limits), in messages: the excess drains at
                # ``rate``, the message adds one, the first after a drain is free
                # (``max(0, excess - elapsed * rate + 1)``, refused over the burst), kept as
                # ``tat``, when the excess will be drained: the excess is
                # ``(tat - now) * rate``, so the message's is ``(tat + period - now) *
                # rate``, and ``tat`` becomes the later of ``tat + period`` and now.
                due = self.tat + period
                if due - now > self.window:
                    return POLICY_VIOLATION, (
                        f"limiting websocket messages from {self._who()}, excess: "
                        f"{(due - now) * self.rate:.3f} by websocket_message_rate"
                    )
                self.tat = due if due > now else now
        else:
            size = self.size + length
        if size > self.max_message:
            return MESSAGE_TOO_BIG, (
                f"{self._who()} intended to send too large websocket message: {size} bytes"
            )
        self.size = 0 if b0 & 0x80 else size
        return None

    def _who(self) -> str:
        return "client" if self is self.tunnel.client else "upstream"


#: The slots of a side that keeps the message-size histogram (``websocket_metrics on``).
_SIZE_SLOTS = ("size_now", "sizes", "size_sum")


class _SizedWsSide(_WsSide):
    """A :class:`_WsSide` that keeps the message-size histogram (``websocket_metrics``).

    Its fast path is the plain side's, with the size of the data frame it reads added to
    the message in progress and, at the message's final frame, the message to its bucket
    (one table look-up).  Chunks the fast path leaves go to the plain side's scanner and
    to :func:`~wsgate.proxy.frames.scan_sizes`, from the same state."""

    __slots__ = _SIZE_SLOTS
    #: Wire payload bytes of the message in progress.
    size_now: int
    #: Messages per bucket of :data:`~wsgate.proxy.frames.SIZE_BUCKETS`, ``+Inf``, then the
    #: sum of their sizes (:func:`~wsgate.proxy.frames.scan_sizes`'s), plus ``size_sum``
    #: (the fast path's: an attribute costs less than a list cell); taken (and zeroed) by
    #: :meth:`Tunnel.take_sizes`.
    sizes: list[int]
    size_sum: int

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        super().__init__(tunnel, transport)
        self.size_now = 0
        self.sizes = [0] * (len(SIZE_BUCKETS) + 2)
        self.size_sum = 0

    def data_received(self, data: bytes) -> None:
        n = len(data)
        skip = self.skip
        if n <= skip:
            self.skip = skip - n
            self.out.write(data)
        elif skip == 0 and n > 1:
            b1 = data[1]
            size = _WHOLE[b1]
            if size < 0 and n > 9:
                if b1 & 0x7F == 126:
                    size = ((data[2] << 8) | data[3]) + _EXT[b1]
                else:
                    size = int.from_bytes(data[2:10], "big") + _EXT[b1]
            b0 = data[0]
            if size >= n and (kind := _KIND[b0]) >= 0:
                self.skip = size - n
                self.out.write(data)
                if kind:  # the final frame of a data message
                    self.messages += 1
                    if b0 & 0x0F and (i := _SMALL_BUCKET[b1]) >= 0:
                        # A message of one frame with a 7-bit length: its bucket by table.
                        self.sizes[i] += 1
                        self.size_sum += b1 & 0x7F
                    else:
                        length = size - _HEAD[b1]
                        if not b0 & 0x0F:  # a continuation: the message's earlier frames
                            length += self.size_now
                            self.size_now = 0
                        self.sizes[_BUCKET[(length - 1).bit_length()]] += 1
                        self.size_sum += length
                elif not b0 & 0x08:  # a data frame that is not the last of its message
                    self.size_now += size - _HEAD[b1]
            else:
                self._frames(data)
        else:
            self._frames(data)
        self.nbytes += n
        self.last = self.clock()

    def _frames(self, data: bytes) -> None:
        skip = self.held if self.phase == _WAIT else self.skip
        partial = self.partial
        _WsSide._frames(self, data)
        self.size_now = scan_sizes(
            data, skip if skip > 0 else 0, partial, self.size_now, self.sizes
        )[2]


def _frame_size(data: bytes, n: int) -> int:
    """The whole length of the frame at ``data[0]`` (``n`` bytes, at least 2), or -1 while
    its extended length is incomplete."""
    b1 = data[1]
    size = _WHOLE[b1]
    if size < 0 and n > 9:
        if b1 & 0x7F == 126:
            return ((data[2] << 8) | data[3]) + _EXT[b1]
        return int.from_bytes(data[2:10], "big") + _EXT[b1]
    return size


class _SizedFeatSide(_FeatSide):
    """A :class:`_FeatSide` that keeps the message-size histogram (``websocket_metrics``),
    with a :func:`~wsgate.proxy.frames.scan_sizes` state of its own: the feature side's
    state does not follow every chunk (a held Pong, a refused frame)."""

    __slots__ = (*_SIZE_SLOTS, "size_skip", "size_partial")
    size_now: int
    sizes: list[int]
    size_sum: int
    size_skip: int
    size_partial: bytes

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        super().__init__(tunnel, transport)
        self.size_now = 0
        self.sizes = [0] * (len(SIZE_BUCKETS) + 2)
        self.size_sum = 0
        self.size_skip = 0
        self.size_partial = b""

    def data_received(self, data: bytes) -> None:
        n = len(data)
        skip = self.size_skip
        if n <= skip:  # inside one frame's payload: no header
            self.size_skip = skip - n
        elif (
            skip == 0
            and n > 1
            and (
                (size := _WHOLE[data[1]]) >= n or (size < 0 and (size := _frame_size(data, n)) >= n)
            )
        ):
            # One frame, or the start of one, and no other header: the plain sized side's
            # accounting.
            b0 = data[0]
            self.size_skip = size - n
            if not b0 & 0x08:
                if b0 & 0x80:
                    length = self.size_now + size - _HEAD[data[1]]
                    self.size_now = 0
                    self.sizes[_BUCKET[(length - 1).bit_length()]] += 1
                    self.size_sum += length
                else:
                    self.size_now += size - _HEAD[data[1]]
        else:
            skip, partial, self.size_now = scan_sizes(
                data, skip if skip > 0 else 0, self.size_partial, self.size_now, self.sizes
            )
            self.size_partial = partial
            self.size_skip = -1 if partial else skip
        _FeatSide.data_received(self, data)


def _become(side: _FeatSide, cls: type[_FeatSide]) -> None:
    """``side`` is a ``cls`` from now on (``__class__`` assignment: the same slots), and its
    transport is given it again: uvloop keeps the bound ``data_received`` of its protocol."""
    side.__class__ = cls
    side.transport.set_protocol(side)


class _PingSide(_FeatSide):
    """A side of a tunnel whose only feature is keepalive pings, while no Ping of wsgate's
    concerns it: it relays with the plain :class:`_WsSide` method itself, so a message costs
    what it costs with the features off.  The ping timer needs no more than that: every side
    stamps ``last`` when it reads.

    :meth:`engage` makes it a :class:`_FeatSide` (``__class__`` assignment: the same slots)
    for as long as a Ping of wsgate's is owed to its receiver (``owe``) or awaited from it
    (``ping_at``): those need the feature side's reading of every header; :class:`_Keepalive`
    makes it plain again at its next check once neither is, and nothing is held.  A plain
    side has relayed its ``partial`` (a split header): engaged, ``sent`` says so.
    """

    __slots__ = ()
    data_received = _WsSide.data_received

    def engage(self) -> None:
        self.sent = len(self.partial) if self.skip < 0 else 0
        _become(self, _FeatSide)


class _LimitSide(_FeatSide):
    """A side of a tunnel with message limits, while no Ping of wsgate's concerns it: a
    message of one data frame within the size limits (the common case) is checked and
    relayed here with the rate accounted, in about the plain side's steps; everything else
    (a fragment, a control frame, several headers, a limit passed) is the feature side's
    :meth:`_FeatSide._many`, whose state this side shares (``partial`` held back).  Engaged
    for a Ping it is a :class:`_FeatSide`; a tunnel going away makes it one for good."""

    __slots__ = ()

    def _relay_limited(self, data: bytes) -> None:
        """``data_received`` in Python (the compiled one is ``SideBase.relay_limited``)."""
        n = len(data)
        now = self.clock()
        self.nbytes += n
        self.last = now
        skip = self.skip
        if n <= skip:
            self.skip = skip - n
            self.out.write(data)
            return
        if skip == 0 and n > 1:
            b1 = data[1]
            size = _WHOLE[b1]
            if size < 0 and n > 9:
                if b1 & 0x7F == 126:
                    size = ((data[2] << 8) | data[3]) + _EXT[b1]
                else:
                    size = int.from_bytes(data[2:10], "big") + _EXT[b1]
                if size - _HEAD[b1] > self.max_whole:
                    size = -1  # over a size limit: _many's _check refuses it
            # (A 7-bit length, up to 125 bytes, is within every size limit of this class.)
            if size >= n and _SINGLE[data[0]]:
                period = self.period
                if period:
                    # _FeatSide._check's account; a message over it goes to _many, whose
                    # _check refuses it.
                    due = self.tat + period
                    if due - now > self.window:
                        self._many(data, n, now)
                        return
                    self.tat = due if due > now else now
                self.skip = size - n
                self.out.write(data)
                self.messages += 1
                return
        self._many(data, n, now)

    if TYPE_CHECKING or SIDE_BASE is None:
        data_received = _relay_limited
    else:
        data_received = SIDE_BASE.relay_limited

    def engage(self) -> None:
        _become(self, _FeatSide)


#: The classes of sides whose ``partial`` is held back, not relayed (beyond ``sent``).
_HOLDING = frozenset({_FeatSide, _SizedFeatSide, _LimitSide})
#: The classes a side rests in while no Ping concerns it (:meth:`engage` leaves them).
_RESTING = frozenset({_PingSide, _LimitSide})


def _engage(side: _Side) -> None:
    if type(side) in _RESTING:
        side.engage()  # type: ignore[attr-defined]


def _settle(side: _Side, rest: type[_FeatSide]) -> None:
    """An engaged side with nothing owed, awaited or held goes back to ``rest``."""
    if (
        type(side) is _FeatSide
        and not side.ping_at
        and not side.owe
        and side.skip >= 0
        and side.phase == _RELAY
        and not side.lost
    ):
        _become(side, rest)


def _between_frames(side: _Side) -> bool:
    """The stream ``side`` sends is, as relayed so far, between two frames."""
    skip = side.skip
    return skip == 0 or (skip < 0 and type(side) in _HOLDING and not side.sent)  # type: ignore[attr-defined]


class _Keepalive:
    """A feature tunnel's ping timer, filed with the loop's idle timers
    (:mod:`wsgate.proxy.idle`) as the tunnel's own idle timer is."""

    __slots__ = ("tunnel", "interval", "timeout", "sides", "rest", "slot")

    def __init__(self, tunnel: Tunnel, features: WsFeatures, sides: tuple[_FeatSide, ...]) -> None:
        self.tunnel = tunnel
        self.interval = features.ping_interval
        self.timeout = features.ping_timeout
        self.sides = sides
        #: The class the sides rest in (:data:`_RESTING`), to which engaged ones go back at
        #: each check, or ``None`` (they are always feature sides).
        rest = type(tunnel.client)
        self.rest = rest if rest in _RESTING else None
        self.slot = idle_timers(tunnel.loop).add(self, tunnel.clock() + self.interval)

    def idle_check(self) -> None:
        """Ping each pinged side silent for ``interval``; end the tunnel when a side has
        sent nothing (its Pong included) for ``timeout`` after wsgate's Ping."""
        t = self.tunnel
        if t.closed or t.going:
            return
        now = t.clock()
        due = now + self.interval
        for side in self.sides:
            if side.lost or side.eof or side.peer.eof:
                continue  # half-closed: that side sends no Pong, or nothing may be written to it
            if side.ping_at:
                if side.last >= side.ping_at:
                    side.ping_at = 0.0  # answered (or busy sending): alive
                elif now >= side.ping_at + self.timeout - 0.001:
                    t.dead(side)
                    return
                else:
                    due = min(due, side.ping_at + self.timeout)
                    continue
            quiet = side.last + self.interval
            if side.peer.owe:  # type: ignore[attr-defined]
                due = min(due, now + self.timeout)
            elif now >= quiet - 0.001:
                sender = side.peer
                if _between_frames(sender) and sender.phase == _RELAY:
                    t.ping(side)  # the stream towards it is between two frames
                    due = min(due, now + self.timeout)
                else:
                    _engage(sender)
                    sender.owe = True  # type: ignore[attr-defined]  # at its next frame boundary
                    due = min(due, now + self.timeout)
            else:
                due = min(due, quiet)
        if self.rest is not None:
            _settle(t.client, self.rest)
            _settle(t.upstream, self.rest)
        self.slot = idle_timers(t.loop).add(self, due)


class Tunnel:
    """Relays between ``client`` and ``upstream`` transports until both are closed.

    ``on_close(reason)`` is called once, after both transports are gone; ``reason`` is
    ``None`` for a normal end, or ``"upstream"``/``"client"`` after a timeout of that side.

    ``websocket``: the upgrade switched to the WebSocket protocol, so frame boundaries are
    tracked (message counts, :meth:`going_away` with Close frames).  ``close_timeout`` bounds
    :meth:`going_away`.
    """

    __slots__ = (
        "loop",
        "client",
        "upstream",
        "clock",
        "last",
        "read_timeout",
        "send_timeout_up",
        "send_timeout_client",
        "on_close",
        "timeout_reason",
        "_idle",
        "_idle_slot",
        "_send_handle",
        "_closed",
        "_done",
        "close_timeout",
        "going",
        "_away_handle",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        *,
        read_timeout: float,
        send_timeout_upstream: float,
        send_timeout_client: float,
        on_close: Callable[[Tunnel], None],
        websocket: bool = False,
        close_timeout: float = CLOSE_TIMEOUT,
        clock: Callable[[], float] | None = None,
        features: WsFeatures | None = None,
        sizes: bool = False,
    ) -> None:
        self.loop = loop
        #: ``loop.time``: pass one bound once for all tunnels (each costs 64 bytes).
        self.clock = loop.time if clock is None else clock
        self.last = self.clock()
        self.read_timeout = read_timeout
        self.send_timeout_up = send_timeout_upstream
        self.send_timeout_client = send_timeout_client
        self.on_close = on_close
        self.timeout_reason: str | None = None
        self._closed = False
        self._done = False
        self._send_handle: asyncio.TimerHandle | None = None
        self.close_timeout = close_timeout
        #: The close code being sent by :meth:`going_away`; 0 until then.
        self.going = 0
        self._away_handle: asyncio.TimerHandle | None = None
        if not websocket:
            features = None
        side: type[_Side]
        if not websocket:
            side = _Side
        elif features is None:
            side = _SizedWsSide if sizes else _WsSide
        elif sizes:
            side = _SizedFeatSide
        else:
            side = _PingSide
            if features.limits:
                # _LimitSide's fast path takes every 7-bit length (up to 125 bytes) within the
                # size limits; smaller limits (a curiosity) keep the feature side's checks.
                small = min(
                    features.max_message_client or _NO_LIMIT,
                    features.max_frame_client or _NO_LIMIT,
                    features.max_message_upstream or _NO_LIMIT,
                    features.max_frame_upstream or _NO_LIMIT,
                )
                side = _LimitSide if small >= 125 else _FeatSide
        self.client = side(self, client)
        self.upstream = side(self, upstream)
        self.client.peer = self.upstream
        self.upstream.peer = self.client
        self.client.out = upstream
        self.upstream.out = client
        # The idle timer: shared with the loop's other tunnels (wsgate.proxy.idle).
        self._idle = idle_timers(loop)
        self._idle_slot = self._idle.add(self, self.last + read_timeout)
        if features is not None:
            self._features(features)

    def _features(self, f: WsFeatures) -> None:
        c, u = self.client, self.upstream
        assert isinstance(c, _FeatSide) and isinstance(u, _FeatSide)
        for side, message, frame, rate in (
            (c, f.max_message_client, f.max_frame_client, f.rate_client),
            (u, f.max_message_upstream, f.max_frame_upstream, f.rate_upstream),
        ):
            side.limited = bool(message or frame or rate)
            side.max_message = message or _NO_LIMIT
            side.max_frame = frame or _NO_LIMIT
            side.max_whole = min(side.max_message, side.max_frame)
            side.rate = rate / 1000  # milli-messages per second, as limit_req keeps it
            if rate:
                side.period = 1000 / rate
                # The burst in seconds of the rate, and a microsecond against the rounding
                # of ``tat`` (the excess computed at one instant is exact).
                side.window = f.burst / 1000 * side.period + 1e-6
        pinged = tuple(s for s, on in ((c, f.ping_client), (u, f.ping_upstream)) if on)
        if f.ping_interval and pinged:
            c.keep = _Keepalive(self, f, pinged)

    def start(
        self,
        to_client: bytes,
        to_upstream: bytes,
        client_write_paused: bool,
        upstream_write_paused: bool,
    ) -> None:
        """Switch both transports to the tunnel and send what each side had sent early.

        A plain TCP connection is on the compiled transport from its start
        (:mod:`wsgate.proxy.fdrelay`), so the tunnel relays there with nothing handed over."""
        c, u = self.client, self.upstream
        c.transport.set_protocol(c)
        u.transport.set_protocol(u)
        # As if just read: relayed, counted, and their frames tracked.
        if to_client:
            u.data_received(to_client)
        if to_upstream:
            c.data_received(to_upstream)
        # Reading may have been paused by the HTTP phase: restart it, unless the other
        # side's write buffer is still full.
        for side, other_paused in ((c, upstream_write_paused), (u, client_write_paused)):
            if other_paused:
                side.transport.pause_reading()
                side.peer.pause_writing()
            else:
                side.transport.resume_reading()

    @property
    def websocket(self) -> bool:
        """The upgrade switched to WebSocket: its sides track frames (a property, not a slot:
        every slot of an open tunnel costs memory for its whole life)."""
        return isinstance(self.client, _WsSide)

    @property
    def bytes_to_client(self) -> int:
        return self.upstream.nbytes

    @property
    def bytes_to_upstream(self) -> int:
        return self.client.nbytes

    @property
    def messages_to_client(self) -> int:
        """WebSocket data messages relayed from the upstream to the client (0 for other
        upgrades).  A message counts when its final frame's header has been relayed."""
        side = self.upstream
        return side.frozen if side.phase == _DROP else side.messages

    @property
    def messages_to_upstream(self) -> int:
        """WebSocket data messages relayed from the client to the upstream (0 for other
        upgrades).  A message counts when its final frame's header has been relayed."""
        side = self.client
        return side.frozen if side.phase == _DROP else side.messages

    @property
    def sized(self) -> bool:
        """The sides keep the message-size histogram (``websocket_metrics on``)."""
        return isinstance(self.client, (_SizedWsSide, _SizedFeatSide))

    def take_sizes(self) -> tuple[list[int], list[int]] | None:
        """The message-size histograms (to upstream, to client: per bucket, ``+Inf``, the
        sum) since the last call, zeroed here; ``None`` for a tunnel that keeps none."""
        c, u = self.client, self.upstream
        if not isinstance(c, (_SizedWsSide, _SizedFeatSide)):
            return None
        assert isinstance(u, (_SizedWsSide, _SizedFeatSide))
        taken = c.sizes, u.sizes
        taken[0][-1] += c.size_sum
        taken[1][-1] += u.size_sum
        c.sizes = [0] * len(taken[0])
        u.sizes = [0] * len(taken[1])
        c.size_sum = u.size_sum = 0
        return taken

    @property
    def close_code_client(self) -> int | None:
        """The status code of the first Close frame the client sent (1005: one without a
        code), or ``None``: none seen (wsgate's own Close frames are not the client's)."""
        return close_code(self.client.close_seen)

    @property
    def close_code_upstream(self) -> int | None:
        """The status code of the first Close frame the upstream sent, as
        :attr:`close_code_client`."""
        return close_code(self.upstream.close_seen)

    @property
    def note(self) -> tuple[str, str] | None:
        """``(level, text)`` of the error-log line a WebSocket feature ended the tunnel with
        (a ping unanswered, a limit passed), or ``None``."""
        return getattr(self.client, "note", None)

    @property
    def closed(self) -> bool:
        """The tunnel is ending: its transports have been closed or aborted."""
        return self._closed

    # timers -----------------------------------------------------------------------------------
    def idle_check(self) -> None:
        """The idle deadline filed with :mod:`wsgate.proxy.idle` has passed: time out, or file
        the deadline that traffic since then has moved it to."""
        if self._closed:
            return
        deadline = max(self.last, self.client.last, self.upstream.last) + self.read_timeout
        now = self.clock()
        if now >= deadline - 0.001:
            self.timeout_reason = "upstream"
            self.abort()
        else:
            self._idle_slot = self._idle.add(self, deadline)

    def arm_send_timer(self, side: _Side) -> None:
        if self._send_handle is not None:
            return
        timeout = self.send_timeout_up if side is self.upstream else self.send_timeout_client
        self._send_handle = self.loop.call_later(timeout, self._send_check)

    def _send_check(self) -> None:
        self._send_handle = None
        if self._closed:
            return
        now = self.clock()
        for side, timeout in (
            (self.upstream, self.send_timeout_up),
            (self.client, self.send_timeout_client),
        ):
            if side.blocked_since is not None and now - side.blocked_since >= timeout - 0.001:
                self.timeout_reason = "upstream" if side is self.upstream else "client"
                self.abort()
                return
        for side in (self.upstream, self.client):
            if side.blocked_since is not None:
                self.arm_send_timer(side)
                return

    # WebSocket features ------------------------------------------------------------------------
    def ping(self, side: _FeatSide) -> None:
        """Send wsgate's keepalive Ping to ``side`` (its peer's stream is between frames)."""
        side.peer.owe = False  # type: ignore[attr-defined]
        if side.lost or side.finished or self._closed or side.peer.eof:
            return  # (after the peer's FIN, the direction towards ``side`` is shut)
        _engage(side)  # its Pong is to be found and dropped
        side.transport.write(control_frame(PING, PING_PAYLOAD, side is self.upstream))
        side.ping_at = self.clock()

    def dead(self, side: _FeatSide) -> None:
        """``side`` answered no Ping in time: abort its connection; the other side gets a
        Close 1001 (if the dead side's stream stopped between frames) and its FIN."""
        who = "client" if side is self.client else "upstream"
        self.client.note = (  # type: ignore[attr-defined]
            "info" if side is self.client else "error",
            f"{who} timed out (110: Connection timed out) waiting for websocket pong",
        )
        other = side.peer
        self._closed = True
        self._cancel_timers()
        if not side.lost:
            side.transport.abort()
        if not other.lost:
            if _between_frames(side) and not other.finished:
                frame = close_frame(GOING_AWAY, REASONS[GOING_AWAY], other is self.upstream)
                other.transport.write(frame)
            other.transport.close()

    def refuse(self, sender: _FeatSide, why: tuple[int, str]) -> None:
        """``sender`` passed a limit at a frame header (nothing of that frame relayed): its
        peer gets a Close 1001 at once, ``sender`` a Close with ``why``'s code at the next
        boundary of the stream towards it, as :meth:`going_away` ends a tunnel."""
        self.client.note = ("error", why[1])  # type: ignore[attr-defined]
        sender.close_to = GOING_AWAY
        sender.peer.close_to = why[0]  # type: ignore[attr-defined]
        self.going_away(GOING_AWAY)

    # going away -------------------------------------------------------------------------------
    def going_away(self, code: int = GOING_AWAY, timeout: float | None = None) -> None:
        """End the tunnel as a WebSocket endpoint would (RFC 6455 §7.1.2, §7.4.1).

        ``code`` is 1001 (going away: a graceful stop), 1012 (service restart: the tunnels
        ``worker_shutdown_timeout`` ends after a reload, drains) or 1013 (try again later:
        over a ``limit_conn`` zone's limit after its Redis recovered); the reason sent is
        :data:`wsgate.proxy.frames.REASONS`.  Each direction gets its Close at its next frame
        boundary; both connections are then closed after their peers' replies, or after
        ``timeout`` (default ``close_timeout``) at the latest.  Returns at once; ``on_close``
        reports the end.  A tunnel that is not a WebSocket one is closed (after flushing).
        Calling it again, or on a closed tunnel, does nothing.
        """
        if self._closed or self.going:
            return
        if not self.websocket:
            self.close()
            return
        close_frame(code)  # a code that may not be sent fails here, before anything changes
        self.going = code
        delay = self.close_timeout if timeout is None else timeout
        self._away_handle = self.loop.call_later(delay, self._away_expired)
        for side in (self.client, self.upstream):
            if type(side) is _LimitSide:
                side.engage()  # the going-away phases are the feature side's
            if side.partial and type(side) in _HOLDING:
                # A feature side's carry was held back: relay it (what it has not relayed).
                side.out.write(side.partial[side.sent :] if side.sent else side.partial)  # type: ignore[attr-defined]
            if side.eof or side.peer.lost:
                # Its FIN was passed on, or nobody reads this direction: nothing can follow.
                self.drop(side)
            elif side.skip == 0:
                self.boundary(side)
            else:
                side.held = side.skip
                side.skip = -1
                side.phase = _WAIT
        self.progress()

    def boundary(self, side: _Side) -> None:
        """``side`` (going away) is at a frame boundary: send its peer the Close, unless
        ``side`` has sent its own (an endpoint sends one Close, §5.5.1), and drop what
        ``side`` sends from now on."""
        peer = side.peer
        if not side.close_seen and not peer.lost and not peer.finished:
            code = getattr(side, "close_to", 0) or self.going  # a feature side's own code
            frame = close_frame(code, REASONS.get(code, b""), peer is self.upstream)
            peer.transport.write(frame)
        self.drop(side)
        self.progress()

    def drop(self, side: _Side) -> None:
        """Stop relaying what ``side`` sends; keep reading it, for its Close reply."""
        if side.phase == _WAIT:
            side.skip = side.held
        side.phase = _DROP
        side.frozen = side.messages
        side.out = _DISCARD
        if not side.lost and not side.eof and not side.finished:
            side.transport.resume_reading()

    def progress(self) -> None:
        """Close each connection whose closing handshake is complete (going away)."""
        if self._closed:
            return
        for side in (self.client, self.upstream):
            if side.lost or side.finished:
                continue
            sender = side.peer
            if sender.phase != _DROP:
                if sender.lost:
                    # Its sender is gone in the middle of a frame: no Close can reach it.
                    self.finish(side)
                continue
            if not (side.eof or (side.close_seen and side.skip == 0)):
                continue  # no Close reply (complete) nor FIN from it yet
            if side is self.upstream and not side.eof:
                continue  # towards the upstream wsgate is the client: the server closes first
            self.finish(side)

    def finish(self, side: _Side) -> None:
        """Close ``side``'s connection once what is queued for it has been sent."""
        side.finished = True
        side.transport.close()

    def _away_expired(self) -> None:
        self._away_handle = None
        if self._closed:
            return
        self._closed = True
        self._cancel_timers()
        for side in (self.client, self.upstream):
            if side.lost:
                continue
            if side.transport.get_write_buffer_size():
                side.transport.abort()  # not reading: close() would wait for it for ever
            else:
                side.transport.close()

    # ends ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Close both transports after flushing what they hold."""
        if self._closed:
            return
        self._closed = True
        self._cancel_timers()
        for side in (self.client, self.upstream):
            if not side.lost:
                side.transport.close()

    def abort(self) -> None:
        """Close both at once, dropping unsent data (timeouts, as nginx does)."""
        self._closed = True
        self._cancel_timers()
        for side in (self.client, self.upstream):
            if not side.lost:
                side.transport.abort()

    def side_lost(self, side: _Side) -> None:
        peer = side.peer
        if not peer.lost:
            if self.going and not self._closed:
                # Going away: the peer finishes its own closing handshake first.
                self.progress()
                return
            # The other side gets what is already queued for it, then a close.
            self._cancel_timers()
            self._closed = True
            peer.transport.close()
            return
        self._cancel_timers()
        if not self._done:
            self._done = True
            self.on_close(self)

    def _cancel_timers(self) -> None:
        self._idle.remove(self, self._idle_slot)
        keep = getattr(self.client, "keep", None)
        if keep is not None:
            self._idle.remove(keep, keep.slot)
        if self._away_handle is not None:
            self._away_handle.cancel()
            self._away_handle = None
        if self._send_handle is not None:
            self._send_handle.cancel()
            self._send_handle = None


def websocket_figures(tunnel: Tunnel, seconds: float) -> dict[str, str]:
    """The ``$ws_*`` access-log values of a WebSocket tunnel that ended ``seconds`` after its
    101 (:data:`wsgate.config.variables.WS_VARIABLES`).  "in" is what the client sent (read
    from it, relayed to the upstream), "out" what the client was sent; bytes are the frames
    on the wire after the 101; a close code is the first Close frame's of that side, 1005
    for one without a code, ``none`` when that side sent no Close."""
    client, upstream = tunnel.close_code_client, tunnel.close_code_upstream
    return {
        "ws_messages_in": str(tunnel.messages_to_upstream),
        "ws_messages_out": str(tunnel.messages_to_client),
        "ws_bytes_in": str(tunnel.bytes_to_upstream),
        "ws_bytes_out": str(tunnel.bytes_to_client),
        "ws_close_code_client": "none" if client is None else str(client),
        "ws_close_code_upstream": "none" if upstream is None else str(upstream),
        "ws_duration": f"{max(0.0, seconds):.3f}",
    }
