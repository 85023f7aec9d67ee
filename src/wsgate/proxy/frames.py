"""WebSocket frame boundaries, as little of RFC 6455 §5.2 as a relay needs.  Pure: no I/O.

The tunnel relays bytes, not frames.  It needs frame boundaries for two things only: counting
data messages each way (metrics), and ending a tunnel the way a WebSocket endpoint would, with
a Close frame injected *between* two frames (a byte in the middle of a frame would corrupt the
stream: https://www.rfc-editor.org/rfc/rfc6455#section-5.2).  So this module reads frame
*headers* and nothing else: no unmasking, no payload, no UTF-8 or extension checks.  A malformed
stream is not our business (the endpoints fail it, §7.1.7); the scanner must only never raise
and never lose its place on well-formed input, however the reads split it.

Header layout (§5.2)::

    byte 0: FIN(1) RSV1-3(3) opcode(4)
    byte 1: MASK(1) payload length(7): 0-125, 126 (16-bit length follows), 127 (64-bit follows)
    then 0, 2 or 8 length bytes, then a 4-byte masking key if MASK, then the payload.

The masking key is not needed to find the next header, so it is skipped like payload: a header
split across reads only has to be carried over until its length bytes are complete, which
makes :attr:`ScanState.partial` 1 to 9 bytes long (up to 15 for a first Close, below).

A *message* (§5.4) is counted once, when the header of its final frame is seen: FIN set and
opcode 0x0 (continuation), 0x1 (text) or 0x2 (binary).  Control frames (§5.5: Close, Ping,
Pong) are not messages; they may sit between the fragments of a message.  With
permessage-deflate (RFC 7692) a message is still one frame sequence with RSV1 set on its first
frame, so the count is the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

from wsgate.compiled import extension, pure_note

__all__ = [
    "CLOSE",
    "CLOSE_SEEN",
    "EXTENDED_HEAD",
    "MESSAGE_TOO_BIG",
    "PING",
    "PING_PAYLOAD",
    "POLICY_VIOLATION",
    "PONG",
    "FRAME_KIND",
    "GOING_AWAY",
    "HEADER_SIZE",
    "REASONS",
    "SERVICE_RESTART",
    "TRY_AGAIN_LATER",
    "PURE_SCANNERS",
    "SCANNER",
    "SIDE_BASE",
    "SMALL_FRAME",
    "ScanState",
    "close_code",
    "close_code_at",
    "close_frame",
    "control_frame",
    "header_at",
    "is_websocket",
    "BUCKET_BY_BITS",
    "SIZE_BUCKETS",
    "next_boundary",
    "scan",
    "scan_fields",
    "scan_sizes",
    "size_bucket",
    "unmask",
]

#: Opcode of a Close frame (§5.5.1).
CLOSE = 0x8
#: The flag of a ``close_seen`` value (:class:`ScanState`): set once a Close has been seen, with
#: its status code in the low 16 bits (any code, 0 included, leaves the value true).
CLOSE_SEEN = 0x10000
#: "1005 ... designated for use in applications expecting a status code to indicate that no
#: status code was actually present" (§7.4.1).
NO_STATUS = 1005
#: Opcodes of Ping and Pong frames (§5.5.2, §5.5.3).
PING = 0x9
PONG = 0xA
#: The payload of wsgate's own keepalive Pings: a Pong carrying it answers wsgate and is not
#: relayed.  Drawn when the module loads (in the master, so its workers share it), so an end
#: cannot guess it (it can only echo it, §5.5.3).
PING_PAYLOAD = b"wsgate:" + os.urandom(6).hex().encode()
#: "1008 indicates that an endpoint is terminating the connection because it has received a
#: message that violates its policy" (§7.4.1).
POLICY_VIOLATION = 1008
#: "1009 indicates ... a message that is too big for it to process" (§7.4.1).
MESSAGE_TOO_BIG = 1009
#: "1001 indicates that an endpoint is "going away", such as a server going down" (§7.4.1).
GOING_AWAY = 1001
#: 1012 Service Restart (IANA WebSocket Close Code Number Registry, §11.7).
SERVICE_RESTART = 1012
#: 1013 Try Again Later (the same registry): a ``limit_conn`` zone kept in Redis ends the
#: tunnels over its limit with it after Redis recovered (:mod:`wsgate.redis_shed`).
TRY_AGAIN_LATER = 1013
#: The reason text wsgate sends with each code: short, ASCII, and for people reading logs.
REASONS: dict[int, bytes] = {
    GOING_AWAY: b"going away",
    SERVICE_RESTART: b"service restart",
    TRY_AGAIN_LATER: b"try again later",
    POLICY_VIOLATION: b"message rate exceeded",
    MESSAGE_TOO_BIG: b"message too big",
}

# Look-up tables indexed by a header byte: a table look-up costs less Python than the bit
# operations it replaces, and these run once per frame (the tunnel's fast path uses them too).
#: By byte 1: the whole length of a frame with a 7-bit payload length (2 or 6 header bytes
#: plus the payload), or -1 when a 16- or 64-bit length follows.
SMALL_FRAME = tuple(
    -1 if b & 0x7F > 125 else (b & 0x7F) + (6 if b & 0x80 else 2) for b in range(256)
)
#: By byte 1: the header length (masking key included) of a frame with an extended length.
EXTENDED_HEAD = tuple((4 if b & 0x7F == 126 else 10) + (4 if b & 0x80 else 0) for b in range(256))
#: By byte 1: the header length (masking key included) of any frame.
HEADER_SIZE = tuple(
    (2 if b & 0x7F < 126 else 4 if b & 0x7F == 126 else 10) + (4 if b & 0x80 else 0)
    for b in range(256)
)
#: By byte 0: 1 for the final frame of a data message, -1 for a Close frame, 0 otherwise.
FRAME_KIND = tuple(
    -1 if b & 0x0F == CLOSE else int(b & 0x8F in (0x80, 0x81, 0x82)) for b in range(256)
)


class ScanState(NamedTuple):
    """Where one direction's byte stream stands, between two reads."""

    #: Bytes still to come of the current frame (rest of its masking key and payload) before
    #: the next header starts.  0 with an empty ``partial``: the stream is at a frame boundary.
    skip: int = 0
    #: The start of a header whose length bytes have not all arrived yet (``skip`` is 0).
    partial: bytes = b""
    #: Complete data messages seen (final-frame headers, see the module docstring).
    messages: int = 0
    #: 0, or :data:`CLOSE_SEEN` with the status code of the first Close frame this sender
    #: sent (:func:`close_code`): it has started the closing handshake.
    close_seen: int = 0

    @property
    def at_boundary(self) -> bool:
        """Whether the next byte of the stream is the first byte of a frame header."""
        return self.skip == 0 and not self.partial


def _header(buf: bytes) -> tuple[int, int] | None:
    """``(header length with masking key, payload length)`` of the header at ``buf[0]``, or
    ``None`` while its length bytes are incomplete."""
    n = len(buf)
    if n < 2:
        return None
    b1 = buf[1]
    length = b1 & 0x7F
    head = 2
    if length == 126:
        if n < 4:
            return None
        length = (buf[2] << 8) | buf[3]
        head = 4
    elif length == 127:
        if n < 10:
            return None
        length = int.from_bytes(buf[2:10], "big")
        head = 10
    if b1 & 0x80:
        head += 4
    return head, length


def scan(data: bytes, state: ScanState) -> ScanState:
    """The state after ``data``, the next bytes of the stream ``state`` describes.

    Only headers are read; the payload between them is stepped over by its length, so the
    cost is per frame, not per byte.
    """
    return ScanState(*scan_fields(data, *state))


def _scan_fields(
    data: bytes, skip: int, partial: bytes, messages: int, close_seen: int
) -> tuple[int, bytes, int, int]:
    """:func:`scan` on the fields of a :class:`ScanState`, returning them as a plain tuple.

    The tunnel calls this for the chunks its fast path leaves; building a NamedTuple costs
    more than scanning a small frame.
    """
    n = len(data)
    pos = skip
    if partial:
        # Complete the carried-over header with at most the 15 bytes it can still lack (9
        # for its length, 6 more for a first Close's masking key and code).
        buf = partial + data[:15]
        hdr = _header(buf)
        if hdr is None:
            return 0, buf, messages, close_seen
        kind = FRAME_KIND[buf[0]]
        if kind > 0:
            messages += 1
        elif kind and not close_seen:
            close_seen = close_code_at(buf, 0)
            if not close_seen:
                return 0, buf, messages, 0  # its code is still to come
        pos = hdr[0] + hdr[1] - len(partial)
        partial = b""
    # _header with tables, inlined: this runs once per frame of the chunk.
    last = n - 1  # a header needs its second byte
    while pos < last:
        b1 = data[pos + 1]
        size = SMALL_FRAME[b1]
        if size < 0:
            if b1 & 0x7F == 126:
                if pos + 4 > n:
                    break
                size = ((data[pos + 2] << 8) | data[pos + 3]) + EXTENDED_HEAD[b1]
            else:
                if pos + 10 > n:
                    break
                size = int.from_bytes(data[pos + 2 : pos + 10], "big") + EXTENDED_HEAD[b1]
        kind = FRAME_KIND[data[pos]]
        if kind > 0:
            messages += 1
        elif kind and not close_seen:
            close_seen = close_code_at(data, pos)
            if not close_seen:
                break  # its code is still to come: carried over as a split header
        pos += size
    if pos < n:  # a header whose length bytes are not all here yet
        return 0, data[pos:], messages, close_seen
    return pos - n, b"", messages, close_seen


#: Upper bounds (bytes) of the message-size histogram (``websocket_metrics``): powers of 4
#: from 64 B to 16 MiB, ten buckets and ``+Inf``: a chat line, a JSON update, a small file.
SIZE_BUCKETS = tuple(64 << 2 * i for i in range(10))
#: By ``(size - 1).bit_length()``: the index of the bucket of ``size`` (10: ``+Inf``); a size
#: up to ``2**b`` is in the bucket ``64 * 4**i`` with ``6 + 2*i >= b``.
BUCKET_BY_BITS = tuple(min(max(0, (b - 5) // 2), len(SIZE_BUCKETS)) for b in range(65))


def size_bucket(size: int) -> int:
    """The index in :data:`SIZE_BUCKETS` of the smallest bound ``>= size`` (the number of
    bounds for a size above them all: the ``+Inf`` bucket)."""
    return BUCKET_BY_BITS[min((size - 1).bit_length(), 64)]


def _scan_sizes(
    data: bytes, skip: int, partial: bytes, size: int, counts: list[int]
) -> tuple[int, bytes, int]:
    """The message-size histogram of a stream: each complete data message (§5.4) adds one
    to ``counts[size_bucket(its size)]`` and its size to ``counts[-1]`` (the sum); ``counts``
    has ``len(SIZE_BUCKETS) + 2`` cells.  A message's size is its payload on the wire, summed
    over its frames (compressed, with permessage-deflate); control frames are not messages.

    ``skip`` and ``partial`` mean what they mean for :func:`scan_fields`; ``size`` is what
    the message in progress has so far.  Returns the three after ``data``."""
    n = len(data)
    pos = skip
    if partial:
        buf = partial + data[:9]
        hdr = _header(buf)
        if hdr is None:
            return 0, buf, size
        b0 = buf[0]
        if not b0 & 0x08:  # a data frame (§5.2: opcodes 0x0-0x7)
            size += hdr[1]
            if b0 & 0x80:
                counts[size_bucket(size)] += 1
                counts[-1] += size
                size = 0
        pos = hdr[0] + hdr[1] - len(partial)
    last = n - 1
    while pos < last:
        b1 = data[pos + 1]
        head = HEADER_SIZE[b1]
        length = b1 & 0x7F
        if length == 126:
            if pos + 4 > n:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
        elif length == 127:
            if pos + 10 > n:
                break
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
        b0 = data[pos]
        if not b0 & 0x08:
            size += length
            if b0 & 0x80:
                counts[BUCKET_BY_BITS[min((size - 1).bit_length(), 64)]] += 1
                counts[-1] += size
                size = 0
        pos += head + length
    if pos < n:
        return 0, data[pos:], size
    return pos - n, b"", size


#: The pure-Python scanners, and those the tunnel calls: the compiled ones of
#: ``wsgate.proxy._frames`` (src/wsgate/proxy/_frames.c, the same results) when the extension
#: was built and ``WSGATE_PURE`` is not set to a non-empty value, else these.
PURE_SCANNERS = (_scan_fields, _scan_sizes)
scan_fields: Callable[[bytes, int, bytes, int, int], tuple[int, bytes, int, int]] = _scan_fields
scan_sizes: Callable[[bytes, int, bytes, int, list[int]], tuple[int, bytes, int]] = _scan_sizes
SCANNER = "pure Python" + pure_note()
#: The compiled base of the tunnel's sides (``_frames.SideBase``: their hot fields and
#: per-chunk relaying), or None: tunnel.py then uses its Python twin, ``_PySideBase``.
SIDE_BASE: type | None = None
_frames = extension("wsgate.proxy._frames")
if _frames is not None:
    _frames.fallback(_scan_fields, _scan_sizes)  # lengths past 2**62 go back to Python
    scan_fields = _frames.scan_fields
    scan_sizes = _frames.scan_sizes
    SIDE_BASE = _frames.SideBase
    SCANNER = "compiled"


def header_at(data: bytes, pos: int) -> tuple[int, int] | None:
    """``(header length with masking key, payload length)`` of the header at ``data[pos]``,
    or ``None`` while its length bytes are incomplete (:func:`_header` at an offset)."""
    n = len(data)
    if pos + 2 > n:
        return None
    b1 = data[pos + 1]
    size = SMALL_FRAME[b1]
    if size >= 0:
        head = 6 if b1 & 0x80 else 2
        return head, size - head
    if b1 & 0x7F == 126:
        if pos + 4 > n:
            return None
        return EXTENDED_HEAD[b1], (data[pos + 2] << 8) | data[pos + 3]
    if pos + 10 > n:
        return None
    return EXTENDED_HEAD[b1], int.from_bytes(data[pos + 2 : pos + 10], "big")


def close_code_at(data: bytes, pos: int) -> int:
    """The ``close_seen`` value (:data:`CLOSE_SEEN` | code) of the Close frame whose header
    is at ``data[pos]``, or 0 while its header or its code's bytes are incomplete."""
    hdr = header_at(data, pos)
    if hdr is None:
        return 0
    head, length = hdr
    if length < 2:
        return CLOSE_SEEN | NO_STATUS
    start = pos + head
    if start + 2 > len(data):
        return 0
    hi, lo = data[start], data[start + 1]
    if data[pos + 1] & 0x80:  # masked: the key is the header's last 4 bytes (§5.3)
        hi ^= data[start - 4]
        lo ^= data[start - 3]
    return CLOSE_SEEN | (hi << 8) | lo


def close_code(seen: int) -> int | None:
    """The status code in a ``close_seen`` value (1005 for a Close without one), or ``None``
    when no Close has been seen."""
    return seen & 0xFFFF if seen else None


def next_boundary(data: bytes, state: ScanState) -> int:
    """Offset in ``data`` where the frame in progress ends (the next header starts), or -1
    when it ends after ``data``.  0 when ``state`` is at a boundary already."""
    n = len(data)
    if not state.partial:
        return state.skip if state.skip <= n else -1
    carried = len(state.partial)
    hdr = _header(state.partial + data[:15])
    if hdr is None:
        return -1
    end = hdr[0] + hdr[1] - carried
    return end if end <= n else -1


def close_frame(
    code: int, reason: bytes = b"", mask: bool = False, key: bytes | None = None
) -> bytes:
    """A Close frame carrying ``code`` and ``reason`` (§5.5.1).

    ``mask`` for frames sent to the upstream: toward it wsgate speaks as the client, and "a
    client MUST mask all frames that it sends to the server" with a fresh, unpredictable key
    (§5.3; ``key`` is for tests).  Frames toward the client are not masked (§5.1).
    """
    if not 1000 <= code <= 4999 or code in (1004, 1005, 1006, 1015):
        # §7.4.1/§7.4.2: 1005, 1006 and 1015 must never be sent; 1004 is reserved.
        raise ValueError(f"close code {code} may not be sent")
    if len(reason) > 123:
        raise ValueError("a close reason is at most 123 bytes (§5.5: payload <= 125)")
    return control_frame(CLOSE, code.to_bytes(2, "big") + reason, mask, key)


def control_frame(
    opcode: int, payload: bytes = b"", mask: bool = False, key: bytes | None = None
) -> bytes:
    """A control frame (§5.5: final, never fragmented, never compressed, payload <= 125
    bytes), masked as :func:`close_frame` says."""
    if len(payload) > 125:
        raise ValueError("a control frame's payload is at most 125 bytes (§5.5)")
    if not mask:
        return bytes((0x80 | opcode, len(payload))) + payload
    if key is None:
        key = os.urandom(4)
    elif len(key) != 4:
        raise ValueError("a masking key is 4 bytes")
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + unmask(payload, key)


def unmask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the 4-byte masking ``key`` (§5.3; its own inverse)."""
    return bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def is_websocket(upgrade: str | None) -> bool:
    """Whether an ``Upgrade`` value names the WebSocket protocol alone (RFC 6455 §4.2.2:
    ``Upgrade: websocket``, case-insensitive).  Other upgrades are opaque byte streams."""
    if upgrade is None:
        return False
    tokens = [t.strip() for t in upgrade.split(",") if t.strip()]
    return len(tokens) == 1 and tokens[0].lower() == "websocket"
