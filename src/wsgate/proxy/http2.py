"""HTTP/2 on the front (RFC 9113): one connection, many streams, each an ordinary request.

Design decision (issue 13).  The protocol is python-hyper's ``h2`` (sans-I/O, maintained,
the HTTP/2 state machine, HPACK and flow-control accounting of httpx, hypercorn and
twisted): it is fed the socket's bytes and says what happened; this module only moves
bytes and runs requests.  The request pipeline stays protocol-agnostic: each stream gets

- a :class:`~wsgate.http.request.RequestHead` made from its header list
  (:func:`wsgate.http.http2.request_head`: ``:authority`` as the host, cookies joined with
  ``"; "``, nginx's refusals), and
- a :class:`_Stream`, which has the interface of the
  :class:`~wsgate.proxy.endpoint.Endpoint` the exchange writes to (``write``, ``drain``,
  ``gone``, ``abort``, ``close``, ``closed``; no ``transport``, so the static sender takes
  its ``pread`` path, never ``sendfile``; an RFC 8441 stream gets one, its
  :class:`~wsgate.proxy.h2tunnel.StreamTransport`, when the upstream's 101 opens the
  tunnel).  What the exchange writes is an HTTP/1.1 response; the stream parses it back
  with the upstream's :class:`~wsgate.http.response.ResponseParser`: its head becomes
  HEADERS (connection-specific fields dropped), its body, with the chunked or length framing
  undone, DATA frames of at most ``http2_chunk_size`` bytes as the peer's flow-control
  windows allow, its end END_STREAM,
- a :class:`_StreamFront`, the front connection as the :class:`~wsgate.proxy.exchange.Exchange`
  sees it (the request body from DATA frames, ``$server_protocol`` ``HTTP/2.0``, ``$http2``).

So every phase, directive, error page, log line and the proxy work on a stream as on an
HTTP/1.1 connection, at the cost of framing a response once and parsing it back (a copy per
body chunk), and with no change to the shared response writers.  A narrower seam (a response
writer interface the exchange calls) would save that copy; it is the next step when the
writers are reworked.

nginx's rules followed here (``src/http/v2/ngx_http_v2.c``, 1.31): SETTINGS with
``SETTINGS_MAX_CONCURRENT_STREAMS`` (``http2_max_concurrent_streams``) and
``SETTINGS_INITIAL_WINDOW_SIZE`` (``http2_body_preread_size``), the connection window opened
to 2^31-1 at once; a stream over the limit is reset with REFUSED_STREAM; the idle connection
closes after ``keepalive_timeout`` with GOAWAY; a graceful stop or reload sends GOAWAY and lets
the open streams finish.

RFC 8441 WebSockets (wsgate's ``http2_websocket``, on by default): when the default server of
the address has it on and one of its locations proxies (a stream could really tunnel),
SETTINGS carries ``SETTINGS_ENABLE_CONNECT_PROTOCOL`` 1 and an extended CONNECT is served as
an upgrade; its tunnel runs on the stream through :class:`~wsgate.proxy.h2tunnel.StreamTransport`.
A response other than the tunnel is the stream's: the upstream's refusal (403...) passes as
it is, a 2xx that is no tunnel (a location that does not proxy, an upstream that ignored the
upgrade) becomes 501 or 502, since a 2xx to CONNECT means the tunnel is open.  Not yet:
trailers, the defences of issue 13 beyond what ``h2`` itself enforces.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import (
    DenialOfServiceError,
    FlowControlError,
    ProtocolError,
    StreamClosedError,
)
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from hpack import Encoder
from hpack.exceptions import HPACKError, InvalidTableSizeError, OversizedHeaderListError
from hpack.hpack import INDEX_INCREMENTAL, encode_integer
from hyperframe.frame import (
    AltSvcFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PushPromiseFrame,
    RstStreamFrame,
)

from wsgate.config.directives.http2 import MAX_FRAME_SIZE, MAX_WINDOW
from wsgate.config.variables import RequestContext
from wsgate.errors import HttpError
from wsgate.http.body import Body, EndOfMessage
from wsgate.http.http2 import (
    HPACK_TABLE_SIZE,
    FrameGuard,
    H2Refused,
    Violation,
    header_block_error,
    header_block_scan,
    request_head,
    response_fields,
    tunnel_fields,
)
from wsgate.http.response import ResponseHead, ResponseParser
from wsgate.observability.status import REQUESTS, WRITING
from wsgate.proxy.endpoint import PeerClosed, Ready
from wsgate.proxy.h2tunnel import StreamTransport

if TYPE_CHECKING:
    from wsgate.config.model import Location, Server
    from wsgate.http.phases import Request
    from wsgate.http.request import RequestHead
    from wsgate.proxy.front import FrontConnection
    from wsgate.proxy.relay import TunnelEnd
    from wsgate.proxy.tunnel import Tunnel
    from wsgate.upstream.roundrobin import Peer

__all__ = ["PREFACE", "Http2Connection"]

#: The client connection preface (RFC 9113 §3.4), by which nginx tells a cleartext HTTP/2
#: connection from HTTP/1.1 (``ngx_http_wait_request_handler``).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _FrameBuffer(FrameBuffer):
    """h2's frame reader, with nginx's reading of a frame's header (``ngx_http_v2_state_head``):
    a client's PUSH_PROMISE is a connection error PROTOCOL_ERROR once its header is read
    (``ngx_http_v2_state_push_promise``; h2 would wait for its payload), and ALTSVC, a type
    nginx does not know, is skipped unparsed as any other unknown type (h2 parses it, and
    ends the connection when its body is not an ALTSVC's).  A HEADERS frame's header block is
    read as it arrives, as nginx reads it: an HPACK integer longer than nginx takes is an error
    before the frame's end (:func:`~wsgate.http.http2.header_block_error`)."""

    #: The stream whose unfinished HEADERS frame ended the connection (GOAWAY names it).
    failed_stream = 0
    #: Where the walk of the unfinished HEADERS frame at the buffer's start goes on.
    _resume = 0

    def __next__(self) -> Frame:
        data = self._data
        if len(data) >= 9 and not self._headers_buffer:
            if data[3] == PushPromiseFrame.type:
                raise ProtocolError("client sent PUSH_PROMISE frame")
            if data[3] == HeadersFrame.type and data[4] & 0x4:
                error = self._partial_block(data)
                if error is not None:
                    sid = int.from_bytes(data[5:9]) & 0x7FFFFFFF
                    self.failed_stream = sid if sid % 2 else 0
                    raise error
            if data[3] == AltSvcFrame.type:
                length = int.from_bytes(data[:3])
                if len(data) < 9 + length:
                    raise StopIteration
                self._validate_frame_length(length)
                sid = int.from_bytes(data[5:9]) & 0x7FFFFFFF
                frame = ExtensionFrame(data[3], sid, data[4], bytes(data[9 : 9 + length]))
                frame.body_len = length
                del data[: 9 + length]
                return frame
        taken = super().__next__()
        self._resume = 0  # a frame was taken: the next one is walked from its start
        return taken

    def _partial_block(self, data: bytearray) -> ProtocolError | None:
        """A HEADERS frame with END_HEADERS whose payload has not all arrived: the error of
        its header block so far (nginx's connection error comes before the rest of the
        frame), walked on from where the last look stopped."""
        length = int.from_bytes(data[:3])
        if len(data) >= 9 + length:
            return None  # complete: read whole (:meth:`_Connection._receive_headers_frame`)
        flags, pos, end = data[4], 9, 9 + length
        if flags & 0x8:  # PADDED
            if len(data) < 10:
                return None
            end -= 1 + data[9]
            pos += 1
        if flags & 0x20:  # PRIORITY
            pos += 5
        if pos >= len(data) or end <= pos:
            return None
        error, self._resume = header_block_scan(data, end, max(pos, self._resume))
        return None if error is None else _block_error(*error)


def _block_error(code: int, text: str) -> ProtocolError:
    exc = ProtocolError(text)
    exc.error_code = ErrorCodes(code)
    return exc


class _Encoder(Encoder):
    """hpack's encoder with nginx's choice per string (``ngx_http_v2_string_encode``): the
    Huffman code only when it is shorter than the string (hpack codes every string)."""

    def _string(self, data: bytes) -> bytes:
        coded = self.huffman_coder.encode(data)
        if len(coded) < len(data):
            length = encode_integer(len(coded), 7)
            length[0] |= 0x80
            return bytes(length) + coded
        return bytes(encode_integer(len(data), 7)) + data

    def _encode_literal(
        self, name: bytes, value: bytes, indexbit: bytes, huffman: bool = False
    ) -> bytes:
        return indexbit + self._string(name) + self._string(value)

    def _encode_indexed_literal(
        self, index: int, value: bytes, indexbit: bytes, huffman: bool = False
    ) -> bytes:
        prefix = encode_integer(index, 6 if indexbit == INDEX_INCREMENTAL else 4)
        prefix[0] |= indexbit[0]
        return bytes(prefix) + self._string(value)


def _no_content_length(headers: object) -> None:
    """In place of ``H2Stream._initialize_content_length``: no expected length is kept."""


class _Connection(H2Connection):
    """``h2`` with nginx's answer to a stream over ``SETTINGS_MAX_CONCURRENT_STREAMS``: h2
    treats it as a connection error (PROTOCOL_ERROR for all the streams); nginx resets only
    that stream with REFUSED_STREAM (``ngx_http_v2_state_headers``).  The count is kept by
    :class:`Http2Connection`, h2's own check is lifted while a HEADERS frame is read."""

    _lifted = False
    #: The length of the last header block received (nginx's ``$request_length`` of a
    #: stream: ``h2c->state.length``).
    block_size = 0

    #: The stream whose header block ended the connection (nginx's GOAWAY names it).
    failed_stream = 0

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config=config)
        buffer = _FrameBuffer(server=True)
        buffer.max_frame_size = self.incoming_buffer.max_frame_size
        self.incoming_buffer = buffer
        self.encoder = _Encoder()

    def _receive_headers_frame(self, frame: Any) -> Any:
        if frame.stream_id % 2 == 0 or frame.stream_id <= self.highest_inbound_stream_id:
            # ngx_http_v2_state_headers: a stream id that is even, or not above the last
            # one opened (a stream closed, h2's STREAM_CLOSED, or trailers, which nginx
            # does not take either) is a connection error PROTOCOL_ERROR naming the last.
            raise ProtocolError("client sent HEADERS frame with incorrect identifier")
        error = header_block_error(frame.data)
        if error is not None:
            self.failed_stream = frame.stream_id
            raise _block_error(*error)
        self._lifted = True
        self.block_size = len(frame.data)
        try:
            return super()._receive_headers_frame(frame)
        except ProtocolError as exc:
            self.failed_stream = frame.stream_id
            if isinstance(exc.__cause__, HPACKError | IndexError) and not isinstance(
                exc.__cause__, OversizedHeaderListError
            ):
                # RFC 7541 §4.3 / RFC 9113 §4.3: a header block that cannot be decoded is a
                # connection error of type COMPRESSION_ERROR (h2 says PROTOCOL_ERROR).
                exc.error_code = ErrorCodes.COMPRESSION_ERROR
            raise
        finally:
            self._lifted = False

    def _terminate_connection(self, error_code: ErrorCodes) -> None:
        """h2's GOAWAY on a connection error, naming the stream that caused it as nginx does
        (``h2c->last_sid``) rather than only the streams opened before it."""
        frame = GoAwayFrame(0)
        partial = cast(_FrameBuffer, self.incoming_buffer).failed_stream
        frame.last_stream_id = max(self.highest_inbound_stream_id, self.failed_stream, partial)
        frame.error_code = error_code
        self.state_machine.process_input(ConnectionInputs.SEND_GOAWAY)
        self._prepare_for_sending([frame])

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> Any:
        """A stream without h2's ``content-length`` accounting (its connection error):
        nginx checks the header (a stream's 400, :func:`wsgate.http.http2.request_head`)
        and the DATA against it as the body is read (:meth:`_StreamFront.body_events`)."""
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream._initialize_content_length = _no_content_length  # type: ignore[method-assign]
        return stream

    def _receive_data_frame(self, frame: Any) -> Any:
        """ngx_http_v2_state_data: DATA beyond a stream's window (and within the
        connection's) resets that stream with FLOW_CONTROL_ERROR ("client violated flow
        control for stream"); h2 ends the connection."""
        size = frame.flow_controlled_length
        stream = self.streams.get(frame.stream_id)
        if (
            stream is None
            or not stream.open
            or size <= stream.inbound_flow_control_window
            or size > self._inbound_flow_control_window_manager.current_window_size
        ):
            return super()._receive_data_frame(frame)
        events = self.state_machine.process_input(ConnectionInputs.RECV_DATA)
        self._inbound_flow_control_window_manager.window_consumed(size)
        self.reset_stream(frame.stream_id, ErrorCodes.FLOW_CONTROL_ERROR)
        self.acknowledge_received_data(size, frame.stream_id)  # the connection's share
        reset = StreamReset(
            stream_id=frame.stream_id, error_code=ErrorCodes.FLOW_CONTROL_ERROR, remote_reset=False
        )
        return [], [*events, reset]

    @property
    def open_inbound_streams(self) -> int:
        if self._lifted:
            return 0
        return cast(int, H2Connection.open_inbound_streams.fget(self))  # type: ignore[attr-defined]


def _protocol_text(exc: ProtocolError) -> str:
    """The ``[info]`` line of a connection error h2 found (nginx's words where it has them)."""
    cause = exc.__cause__
    if isinstance(exc, DenialOfServiceError):
        return "client sent too large header"
    if isinstance(cause, InvalidTableSizeError):
        return f"client sent invalid table size update: {cause}"
    if isinstance(cause, HPACKError | IndexError):
        return f"client sent invalid header block: {cause}"
    text = str(exc)
    if text.isdigit():  # h2's StreamClosedError says only the stream
        text = f"{type(exc).__name__} on stream {text}"
    return f"client sent invalid HTTP/2: {text}"


def _clamp_table(h2: H2Connection) -> None:
    """A client's ``SETTINGS_HEADER_TABLE_SIZE`` above nginx's 4096 does not make our HPACK
    encoder keep more (RFC 7541 §4.2: the encoder signals the size it uses)."""
    encoder = h2.encoder
    encoder.header_table_size = HPACK_TABLE_SIZE
    encoder.table_size_changes = [min(n, HPACK_TABLE_SIZE) for n in encoder.table_size_changes]


class _Stream:
    """One stream's request body (in) and response (out), with the endpoint interface the
    exchange writes to."""

    __slots__ = (
        "conn",
        "sid",
        "parser",
        "head_fields",
        "out",
        "ended",
        "end_sent",
        "reset",
        "closed",
        "body",
        "body_ended",
        "body_waiter",
        "window_waiter",
        "_gone",
        "chunk",
        "status",
        "served",
        "request",
        "ws",
        "transport",
        "mute",
        "length",
        "timedout",
    )

    write_paused = False
    eof = False

    def __init__(self, conn: Http2Connection, sid: int, head_request: bool, chunk: int) -> None:
        self.conn = conn
        self.sid = sid
        self.parser = ResponseParser(head_request, max_head=1 << 20, own=True)
        #: The response head not sent yet (sent with the first body bytes, its end, or a drain).
        self.head_fields: list[tuple[bytes, bytes]] | None = None
        self.out = bytearray()
        #: The response is complete (END_STREAM to send once ``out`` is sent).
        self.ended = False
        self.end_sent = False
        #: The stream was reset (by the peer or by us), or the connection is gone.
        self.reset = False
        self.closed = False
        self.body: list[tuple[bytes, int]] = []
        self.body_ended = False
        self.body_waiter: asyncio.Future[None] | None = None
        self.window_waiter: asyncio.Future[None] | None = None
        self._gone: asyncio.Future[None] | None = None
        self.chunk = chunk
        self.status = 0
        #: Its exchange is over (the stream is forgotten once its response is sent too).
        self.served = False
        #: The request's phase state: its location's ``http2_chunk_size`` applies.
        self.request: Request | None = None
        #: An extended CONNECT's tunnel transport (RFC 8441), else None.
        self.ws: StreamTransport | None = None
        #: The tunnel's transport once the upstream has answered 101 (None until then: the
        #: static sender takes its ``pread`` path, never ``sendfile``).
        self.transport: StreamTransport | None = None
        #: The response is replaced (a 2xx to an extended CONNECT that is no tunnel).
        self.mute = False
        #: The request's ``Content-Length`` (None: none), which its DATA must match.
        self.length: int | None = None
        #: ``client_body_timeout`` expired: the stream is reset with PROTOCOL_ERROR.
        self.timedout = False

    # -- the endpoint interface ---------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closed or self.reset:
            if self.ws is not None and self.transport is None and data[:13] == b"HTTP/1.1 101 ":
                # Reset before the upstream's 101: the tunnel starts and ends at once
                # (StreamTransport.set_protocol sees the reset), closing the upstream side.
                self.transport = self.ws
            return
        try:
            events = self.parser.feed(data)
        except (HttpError, RuntimeError):
            # Bytes after the response (none are expected): the stream ends here.
            self.abort()
            return
        for ev in events:
            if self.mute:
                continue
            if isinstance(ev, ResponseHead):
                if self.ws is not None and self._connect_answer(ev):
                    continue
                if ev.status < 200:
                    continue  # "100 Continue": not for HTTP/2 clients here
                self.status = ev.status
                self.head_fields = response_fields(ev.status, ev.headers)
            elif isinstance(ev, Body):
                if ev.data:
                    self._send_head()
                    self.out += ev.data
            elif isinstance(ev, EndOfMessage):
                self.ended = True
                self._send_head()
        self.conn.pump(self)

    def _connect_answer(self, ev: ResponseHead) -> bool:
        """The answer to an extended CONNECT (RFC 8441 §5): a 101 is the tunnel's
        ``:status 200``; a 2xx that is no tunnel cannot be sent (it would say the tunnel is
        open): 502 when the upstream gave it, 501 when the location does not proxy."""
        if ev.status == 101:
            self.status = 200
            if self.request is not None:
                self.request.ctx.status = 200  # $status of the tunnel's log line: what was sent
            self.mute = True
            self.transport = self.ws
            self.conn.send_head(self, tunnel_fields(ev.headers), end=False)
            return True
        if 200 <= ev.status < 300:
            request = self.request
            proxied = request is not None and request.settings.proxy_pass is not None
            self.status = 502 if proxied else 501
            if request is not None:
                request.ctx.status = self.status  # $status: what the stream got
            self.mute = self.ended = True
            self.conn.send_head(self, [(b":status", str(self.status).encode())], end=True)
            return True
        return False

    def detach(self) -> None:
        """The tunnel's now (:func:`~wsgate.proxy.relay.start_tunnel`)."""

    @property
    def buffer(self) -> bytearray:
        """Bytes read ahead of the tunnel: none (DATA is held by the tunnel's transport)."""
        return bytearray()

    async def drain(self) -> None:
        if self.reset:
            raise PeerClosed("stream reset")
        self._send_head()
        self.conn.pump(self)
        # Until the peer's windows have taken every byte: the request lives as long as its
        # response is being sent (``send_timeout`` applies, ``limit_conn`` holds its slot).
        while self.out and not self.reset:
            self.window_waiter = self.conn.loop.create_future()
            try:
                await self.window_waiter
            finally:
                self.window_waiter = None
        await self.conn.front.ep.drain()
        if self.reset:
            raise PeerClosed("stream reset")

    def gone(self) -> asyncio.Future[None]:
        if self._gone is None:
            self._gone = self.conn.loop.create_future()
            if self.reset:
                self._gone.set_result(None)
        return self._gone

    def abort(self) -> None:
        """The response cannot be completed: RST_STREAM INTERNAL_ERROR (nginx's
        ``ngx_http_v2_close_stream`` of a stream whose response was cut), PROTOCOL_ERROR
        when the client timed out (``fc->timedout``)."""
        if not self.reset:
            code = ErrorCodes.PROTOCOL_ERROR if self.timedout else ErrorCodes.INTERNAL_ERROR
            self.conn.reset_stream(self, code)
        self.closed = True

    def close(self) -> None:
        self.closed = True

    # -- the stream's side --------------------------------------------------------------------
    def _send_head(self) -> None:
        fields = self.head_fields
        if fields is not None and not self.reset:
            self.head_fields = None
            self.conn.send_head(self, fields, end=self.ended and not self.out)

    def finish(self) -> None:
        """The exchange is over: a response delimited by its end is complete now, anything
        else not complete is cut (RST_STREAM)."""
        if self.reset or self.ended:
            return
        try:
            events = self.parser.feed_eof()
        except HttpError:
            events = []
        if any(isinstance(ev, EndOfMessage) for ev in events):
            self.ended = True
            self._send_head()
            self.conn.pump(self)
        else:
            self.abort()

    def gone_now(self) -> None:
        """Reset by the peer, or the connection is lost: every waiter wakes."""
        self.reset = True
        self.out.clear()
        for fut in (self._gone, self.body_waiter, self.window_waiter):
            if fut is not None and not fut.done():
                fut.set_result(None)
        if self.ws is not None:
            self.ws.gone()

    def wake(self) -> None:
        for fut in (self.body_waiter, self.window_waiter):
            if fut is not None and not fut.done():
                fut.set_result(None)


class _NoneAhead:
    """A request parser with nothing read ahead (a stream's bytes are its DATA frames)."""

    __slots__ = ()

    @staticmethod
    def take_buffered() -> bytes:
        return b""


def _proxies(locations: tuple[Location, ...]) -> bool:
    """Some location (nested ones too) proxies: a stream there could tunnel."""
    return any(loc.settings.proxy_pass is not None or _proxies(loc.locations) for loc in locations)


#: :func:`websocket_offered` per server (the server kept with it: ids are not reused while
#: it lives; a worker's configuration does not change, a reload starts new workers).
_OFFERED: dict[int, tuple[Server, bool]] = {}


def websocket_offered(server: Server) -> bool:
    """SETTINGS_ENABLE_CONNECT_PROTOCOL for a connection whose default server is ``server``:
    ``http2_websocket`` on and a location of the server that proxies (RFC 8441 §3)."""
    known = _OFFERED.get(id(server))
    if known is not None and known[0] is server:
        return known[1]
    offered = server.http2_websocket and (
        server.settings.proxy_pass is not None
        or _proxies(server.locations)
        or _proxies(server.named_locations)
    )
    _OFFERED[id(server)] = (server, offered)
    return offered


class _StreamFront:
    """The front connection as one stream's exchange sees it: the stream is its endpoint,
    DATA frames its request body; everything else is the connection's."""

    __slots__ = ("_main", "ep", "h2", "requests", "body_done", "tunnel", "tunnel_end")
    plain_on_tls = False
    #: What :func:`~wsgate.proxy.relay.start_tunnel` takes of bytes read ahead: none.
    parser = _NoneAhead()

    def __init__(self, h2: Http2Connection, stream: _Stream, requests: int, body: bool) -> None:
        self._main = h2.front
        self.h2 = h2
        self.ep = stream
        self.requests = requests
        self.body_done = not body
        #: An RFC 8441 stream's tunnel (:func:`~wsgate.proxy.relay.start_tunnel` sets both).
        self.tunnel: Tunnel | None = None
        self.tunnel_end: TunnelEnd | None = None

    def __call__(self, tunnel: Tunnel) -> None:
        """The stream tunnel's ``on_close``: its request ends as an HTTP/1.1 tunnel's
        (:func:`~wsgate.proxy.relay.tunnel_closed`), then the stream."""
        from wsgate.proxy.relay import tunnel_closed

        end = self.tunnel_end
        self.tunnel_end = None
        try:
            if end is not None:
                tunnel_closed(cast("FrontConnection", self), tunnel, end)
        finally:
            self.h2.tunnel_done(self.ep)

    def abandon_tunnel(self) -> None:
        """A fast stop: what the tunnel holds is released now (as the connection's own)."""
        end, tunnel = self.tunnel_end, self.tunnel
        self.tunnel_end = None
        if end is not None and tunnel is not None:
            end.release(self._main.gw, tunnel)

    def __getattr__(self, name: str) -> object:
        return getattr(self._main, name)

    def nodelay_off(self) -> None:
        """``tcp_nodelay off`` is the connection's matter, not one stream's."""

    def discard_preread(self) -> None:
        """DATA frames have no chunk framing to be invalid."""

    def body_ready(self) -> bool:
        return self.ep.body_ended or any(data for data, _ in self.ep.body)

    def bare_ctx(self) -> RequestContext:
        ctx = self._main.bare_ctx()
        ctx.http2 = "h2" if self._main.tls_vars is not None else "h2c"
        return ctx

    async def body_events(self, timeout: float, whole: bool = False) -> AsyncIterator[bytes]:
        """The request body from DATA frames (``client_body_timeout`` between two; the
        stream window is given back as each piece is consumed; a body read ``whole`` before
        proxying has its window opened to the maximum at once).  DATA beyond the
        ``Content-Length``, or short of it at END_STREAM, is the stream's 400, not a
        connection error (``ngx_http_v2_filter_request_body``)."""
        stream = self.ep
        h2 = self.h2
        length = stream.length
        received = 0
        if whole and not stream.body_ended:
            h2.open_window(stream)
        while True:
            while stream.body:
                # The DATA frames read together go on as one piece, as nginx reads them into
                # one buffer (one chunk to an upstream the body streams to).
                pieces, stream.body = stream.body, []
                data = pieces[0][0] if len(pieces) == 1 else b"".join(d for d, _ in pieces)
                h2.consumed(stream, sum(flow for _, flow in pieces))
                received += len(data)
                if length is not None and received > length:
                    raise HttpError(400, "client intended to send body data larger than declared")
                if data:
                    yield data
            if stream.body_ended:
                if length is not None and received != length:
                    raise HttpError(
                        400,
                        "client prematurely closed stream: "
                        f"only {received} out of {length} bytes of request body received",
                    )
                self.body_done = True
                return
            if stream.reset:
                raise HttpError(499, "client prematurely closed stream")
            stream.body_waiter = h2.loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await stream.body_waiter
            except TimeoutError:
                stream.timedout = True
                raise HttpError(408) from None
            finally:
                stream.body_waiter = None


class Http2Connection:
    """Serves HTTP/2 on one client connection after TLS (ALPN ``h2``) or the preface."""

    __slots__ = (
        "front",
        "loop",
        "h2",
        "streams",
        "tasks",
        "stopping",
        "failed",
        "_wake",
        "tls",
        "last",
        "websocket",
        "guard",
        "expired",
        "acked",
    )

    def __init__(self, front: FrontConnection) -> None:
        self.front = front
        self.loop = front.gw.loop
        self.tls = front.tls_vars is not None
        server = front.default
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            # The fields are checked as nginx checks them (a bad one is a stream's 400,
            # through error_page, not h2's connection error): wsgate.http.http2.
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        self.h2 = _Connection(config=config)
        # ngx_http_v2_send_settings: what the first SETTINGS frame announces (in force from
        # the start, as h2 takes initial values; an update would wait for the peer's ACK).
        initial = {
            SettingCodes.MAX_CONCURRENT_STREAMS: server.http2_max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: server.http2_body_preread_size,
            SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
        }
        #: RFC 8441 offered: ``:protocol`` is accepted on this connection's streams.
        self.websocket = websocket_offered(server)
        if self.websocket:
            initial[SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1
        self.h2.local_settings = Settings(client=False, initial_values=initial)
        self.h2.max_inbound_frame_size = MAX_FRAME_SIZE
        # nginx's limits on a header block are checked on the decoded fields (:meth:`_request`);
        # hpack's own bound (RFC 7541 sizes, 32 bytes more per field) only stops a bomb.
        num, size = server.large_client_header_buffers
        self.h2.decoder.max_header_list_size = 2 * num * size + 32 * server.max_headers
        # nginx's flood defences, counted on the frame headers before h2 buffers a frame: an
        # encoded header block is held up to twice nginx's header_limit (an encoder choosing
        # the shorter of Huffman and raw never needs more), a DATA frame up to a window.
        self.guard = FrameGuard(
            header_limit=2 * num * size,
            data_limit=max(server.http2_body_preread_size, 65535),
            frame_limit=max(server.http2_recv_buffer_size, 16384),
            concurrent=server.http2_max_concurrent_streams,
            idle_limit=10 * server.settings.keepalive_requests,
        )
        self.streams: dict[int, _Stream] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        #: A connection error of ours (GOAWAY sent): the connection closes at once.
        self.failed = False
        self._wake: asyncio.Future[None] = self.loop.create_future()
        self.last = 0
        #: The stream whose header block outlived client_header_timeout (reset already).
        self.expired = 0
        #: The client has acknowledged our SETTINGS (``h2c->settings_ack``).
        self.acked = False

    # -- the connection loop ------------------------------------------------------------------
    async def run(self, early: bytes = b"") -> bool:
        """Serve until the connection ends; ``True`` when it ends by our GOAWAY with the
        client still there (nginx then closes lingering: ``ngx_http_v2_lingering_close``)."""
        front, h2, ep = self.front, self.h2, self.front.ep
        h2.initiate_connection()
        # ngx_http_v2_send_settings: the connection window opened to its maximum at once.
        h2.increment_flow_control_window(MAX_WINDOW - 65535)
        self.flush()
        if front.gw.stopping:
            self.goaway()
        try:
            data = early
            guard = self.guard
            first = True  # nginx's first read is not an idle one
            stall = 0.0  # when the output was first seen stuck (the client reads nothing)
            while True:
                if data:
                    violation = guard.feed(data)
                    if violation is None and not self.streams and not first:
                        violation = guard.idle_read()
                        guard.cut = 0 if violation is not None else guard.cut
                    if violation is not None:
                        # The frames before the one refused are processed first (nginx reads
                        # frame by frame): the GOAWAY names the streams they opened.
                        data = data[: guard.cut]
                    try:
                        events = h2.receive_data(data)
                    except ProtocolError as exc:
                        front.gw.error_log.log("info", _protocol_text(exc), front.number)
                        self.flush()  # h2 has queued the GOAWAY
                        return False
                    if h2.encoder.header_table_size > HPACK_TABLE_SIZE:
                        _clamp_table(h2)
                    for ev in events:
                        self._event(ev)
                        if self.failed:
                            return False
                    self.flush()
                    if violation is not None:
                        self._violation(violation)
                        return False
                    transport = ep.transport
                    guard.sent(transport.get_write_buffer_size() if transport else 0)
                    violation = guard.flooded()
                    if violation is not None:
                        self._violation(violation)
                        return False
                    first = False
                if self.stopping and not self.streams:
                    return not ep.eof
                front.idle = not self.streams
                block = guard.block_sid if guard.block_sid != self.expired else 0
                if block:
                    # ngx_http_v2_state_headers_save: a header block not complete in
                    # client_header_timeout resets its stream.
                    timeout = front.default.client_header_timeout
                elif self.streams:
                    timeout = 3600.0  # the streams' own timers run
                elif front.requests:
                    timeout = front.default.settings.keepalive_timeout
                else:
                    timeout = front.default.client_header_timeout
                if ep.write_paused:
                    # ngx_http_v2_write_handler: output stuck for send_timeout ends the
                    # connection, its streams with it.
                    now = self.loop.time()
                    stall = stall or now
                    left = stall + front.default.settings.send_timeout - now
                    if left <= 0:
                        front.gw.error_log.log(
                            "info", "client timed out", front.number, front.bare_ctx()
                        )
                        if ep.transport is not None:
                            ep.transport.abort()
                        return False
                    timeout = min(timeout, left)
                else:
                    stall = 0.0
                ready = await ep.wait_data_or(self._wake, timeout)
                front.idle = False
                if ready is Ready.TIMEOUT:
                    if block:
                        self._header_timeout(block)
                        data = b""
                        continue
                    if not self.streams:
                        self.goaway()
                        return False
                    data = b""
                    continue
                if ready is Ready.OTHER:
                    self._wake = self.loop.create_future()
                    data = b""
                    continue
                data = ep.take()
                if not data:  # EOF
                    return False
        finally:
            for stream in self.streams.values():
                stream.gone_now()
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)
            await self._flushed()

    async def _flushed(self) -> None:
        """Wait (``send_timeout`` at most) until the socket has taken every byte written,
        so that a GOAWAY and the last responses are not lost when the worker then exits."""
        ep = self.front.ep
        transport = ep.transport
        if transport is None or ep.closed or not transport.get_write_buffer_size():
            return
        # With both marks at 0 the protocol is paused until the buffer is empty (a loop that
        # does not pause at once for the new mark is polled).
        transport.set_write_buffer_limits(high=0)
        try:
            async with asyncio.timeout(self.front.default.settings.send_timeout):
                while transport.get_write_buffer_size() and not ep.closed:
                    if ep.write_paused:
                        await ep.drain()
                    else:
                        await asyncio.sleep(0.01)
        except (TimeoutError, PeerClosed):
            pass

    def wind_down(self) -> None:
        """A graceful stop or a reload: GOAWAY now, the open streams finish."""
        self.goaway()
        if not self._wake.done():
            self._wake.set_result(None)

    def goaway(self) -> None:
        """GOAWAY (NO_ERROR) naming the last stream served; the open streams go on.  Written
        here, not with h2's ``close_connection``, after which h2 sends nothing more."""
        if self.stopping:
            return
        self.stopping = True
        self.flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.last
        frame.error_code = ErrorCodes.NO_ERROR
        self.front.ep.write(frame.serialize())

    def _header_timeout(self, sid: int) -> None:
        """A header block unfinished after ``client_header_timeout``: "client timed out",
        RST_STREAM PROTOCOL_ERROR (nginx's stream timer); its rest, when it comes, is
        dropped (:meth:`_request`)."""
        front = self.front
        front.gw.error_log.log("info", "client timed out", front.number, front.bare_ctx())
        self.expired = sid
        self.last = max(self.last, sid)
        # nginx had made the stream's request: the connection now waits keepalive_timeout.
        front.requests += 1
        self.flush()
        frame = RstStreamFrame(sid)
        frame.error_code = ErrorCodes.PROTOCOL_ERROR
        front.ep.write(frame.serialize())

    def _calm(self, text: str) -> None:
        """A connection error: GOAWAY ENHANCE_YOUR_CALM naming the last stream, then close."""
        self._violation(Violation(ErrorCodes.ENHANCE_YOUR_CALM, text))

    def _violation(self, violation: Violation) -> None:
        """A connection error of ours (:class:`~wsgate.http.http2.FrameGuard`): the ``[info]``
        line, GOAWAY with its code naming the last stream (none when nginx sends none), then
        the connection closes."""
        front = self.front
        front.gw.error_log.log("info", violation.text, front.number, front.bare_ctx())
        self.flush()
        if violation.code is not None:
            frame = GoAwayFrame(0)
            frame.last_stream_id = max(self.last, violation.sid)
            frame.error_code = violation.code
            front.ep.write(frame.serialize())
        elif front.ep.transport is not None:
            # Output the client does not read: dropped, not waited for (nginx's c->error).
            front.ep.transport.abort()
        self.stopping = self.failed = True

    def flush(self) -> None:
        out = self.h2.data_to_send()
        if out:
            self.front.ep.write(out)

    # -- events -------------------------------------------------------------------------------
    def _event(self, ev: object) -> None:
        if isinstance(ev, RequestReceived):
            self._request(ev)
        elif isinstance(ev, DataReceived):
            stream = self.streams.get(ev.stream_id)
            if stream is not None and stream.transport is not None:
                self.guard.credit(len(ev.data))
                stream.transport.received(ev.data, ev.flow_controlled_length)
                return
            if stream is None or stream.body_ended:
                # A stream already answered: its window is given back at once.
                self._ack(ev.stream_id, ev.flow_controlled_length)
                return
            self.guard.credit(len(ev.data))
            stream.body.append((ev.data, ev.flow_controlled_length))
            if ev.stream_ended:
                stream.body_ended = True
            stream.wake()
        elif isinstance(ev, StreamEnded):
            stream = self.streams.get(ev.stream_id)
            if stream is not None:
                stream.body_ended = True
                stream.wake()
                if stream.transport is not None:
                    stream.transport.ended()
        elif isinstance(ev, StreamReset):
            stream = self.streams.get(ev.stream_id)
            if stream is not None:
                stream.gone_now()
        elif isinstance(ev, WindowUpdated):
            targets = (
                list(self.streams.values())
                if ev.stream_id == 0
                else [s for s in (self.streams.get(ev.stream_id),) if s is not None]
            )
            for stream in targets:
                self.pump(stream)
        elif isinstance(ev, RemoteSettingsChanged):
            # A new SETTINGS_INITIAL_WINDOW_SIZE or SETTINGS_MAX_FRAME_SIZE (every parameter
            # of the frame applied first): the streams' windows moved, what waits goes on
            # (ngx_http_v2_state_settings_params).
            for stream in list(self.streams.values()):
                self.pump(stream)
        elif isinstance(ev, SettingsAcknowledged):
            self.acked = True
        elif isinstance(ev, ConnectionTerminated):
            self.stopping = True

    def _request(self, ev: RequestReceived) -> None:
        sid = ev.stream_id
        front = self.front
        if sid == self.expired:
            # Reset at its header timeout: h2 forgets it, its RST_STREAM has gone already.
            self.flush()
            try:
                self.h2.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
            except (ProtocolError, StreamClosedError):
                pass
            self.h2.data_to_send()
            return
        if self.stopping:
            self._refuse(sid)
            return
        if len(self.streams) >= front.default.http2_max_concurrent_streams:
            # ngx_http_v2_state_headers.  A stream reset by the client holds its slot until
            # its request has ended (nginx frees it at once and refuses instead past twice
            # the limit opened in one read): rapid reset (CVE-2023-44487) gets no more.
            self._refuse(sid, f"concurrent streams exceeded {len(self.streams)}")
            return
        self.guard.credit(self.h2.block_size)
        self.last = max(self.last, sid)
        end = ev.stream_ended is not None
        if not self.acked and not end and front.default.http2_body_preread_size < 65535:
            # ngx_http_v2_state_headers: a body may not wait on a window smaller than the
            # default before the client has taken our SETTINGS.
            front.gw.error_log.log(
                "info",
                "client sent stream with data before settings were acknowledged",
                front.number,
                front.bare_ctx(),
            )
            self._reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        fields = cast(list[tuple[bytes, bytes]], ev.headers or [])
        # ngx_http_v2_state_field_len and ngx_http_v2_state_process_header: a field longer
        # than a large_client_header_buffers buffer, or a block longer than all of them, is a
        # connection error ENHANCE_YOUR_CALM (nginx measures a field as sent, Huffman-coded;
        # here as decoded).
        num, size = front.default.large_client_header_buffers
        total = 0
        for name, value in fields:
            if len(name) > size or len(value) > size:
                self._calm("client sent too large header field")
                return
            total += len(name) + len(value)
        if total > num * size:
            self._calm("client sent too large header")
            return
        error: HttpError | None = None
        default = front.default
        try:
            head = request_head(
                fields,
                end,
                block_size=self.h2.block_size,
                max_headers=default.max_headers,
                underscores=default.underscores_in_headers,
                ignore_invalid=default.ignore_invalid_headers,
                connect_protocol=self.websocket,
            )
        except H2Refused as exc:
            head, error = exc.head, exc
        settings = default.settings
        front.requests += 1
        # ngx_http_v2_state_headers: the connection's last stream is announced (GOAWAY)
        # with keepalive_timeout 0, at keepalive_requests, or past keepalive_time.
        if (
            settings.keepalive_timeout == 0
            or front.requests >= settings.keepalive_requests
            or self.loop.time() - front.started > settings.keepalive_time
        ):
            self.goaway()
        chunk = settings.http2_chunk_size
        stream = _Stream(self, sid, head.method == "HEAD", chunk)
        stream.body_ended = end
        stream.length = head.content_length
        extended = error is None and head.upgrade is not None
        if extended:
            stream.ws = StreamTransport(self, stream)
        self.streams[sid] = stream
        body = not end and not extended  # an extended CONNECT's DATA is the tunnel's
        task = self.loop.create_task(self._serve(stream, head, error, front.requests, body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(
        self,
        stream: _Stream,
        head: RequestHead,
        error: HttpError | None,
        number: int,
        body: bool,
    ) -> None:
        from wsgate.proxy.exchange import Exchange  # it imports the front's modules

        front = self.front
        counters = front.gw.stub_status
        counters.increment(REQUESTS)
        counters.increment(WRITING)
        sfront = _StreamFront(self, stream, number, body)
        try:
            exchange = Exchange(cast("FrontConnection", sfront), head)
            exchange.r.ctx.version = "2.0"
            if error is None and not (exchange.r.server.http2 or front.listen_http2()):
                # ngx_http_v2_run_request: Host chose a server without ``http2``.
                error = HttpError(
                    421,
                    "client attempted to request the server name "
                    "for which the negotiated protocol is disabled",
                )
            if error is None and stream.ws is not None and not exchange.r.server.http2_websocket:
                # The default server offered RFC 8441, the server :authority chose did not.
                stream.ws = None
                error = HttpError(400, 'client sent unknown pseudo-header ":protocol"')
            stream.request = exchange.r
            await exchange.run(error)
        except Exception as exc:  # noqa: BLE001 - one stream's failure is not the connection's
            front.gw.error_log.log("alert", f"unexpected error: {exc!r}", front.number)
            stream.abort()
        finally:
            # An RFC 8441 tunnel: the stream lives until it closes (tunnel_done).
            if sfront.tunnel is None:
                self._served(stream)

    def _refuse(self, sid: int, text: str = "") -> None:
        """RST_STREAM REFUSED_STREAM (a control frame owed: :class:`FrameGuard`)."""
        if text:
            front = self.front
            front.gw.error_log.log("info", text, front.number, front.bare_ctx())
        self.guard.answered(13)
        self._reset(sid, ErrorCodes.REFUSED_STREAM)

    def _served(self, stream: _Stream) -> None:
        """A stream's exchange is over: its response is completed or cut."""
        self.front.gw.stub_status.decrement(WRITING)
        stream.served = True
        stream.finish()
        if not stream.body_ended and not stream.reset:
            # ngx_http_v2_close_stream: a body nobody read is refused with NO_ERROR
            # after the response (RFC 9113 §8.1).
            if stream.end_sent:
                self._reset(stream.sid, ErrorCodes.NO_ERROR)
                stream.reset = True
        if stream.end_sent or stream.reset:
            self.streams.pop(stream.sid, None)
        self.flush()
        if not self._wake.done():
            self._wake.set_result(None)

    def tunnel_done(self, stream: _Stream) -> None:
        """An RFC 8441 stream's tunnel has closed: the stream is forgotten."""
        self.front.gw.stub_status.decrement(WRITING)
        stream.served = True
        self.streams.pop(stream.sid, None)
        if not stream.end_sent and not stream.reset:
            self._reset(stream.sid, ErrorCodes.CANCEL)
        if not self._wake.done():
            self._wake.set_result(None)

    def abandon_tunnels(self) -> None:
        """A fast stop (TERM): each RFC 8441 tunnel is aborted and what it holds released
        now, as :meth:`FrontConnection.abandon_tunnel
        <wsgate.proxy.front.FrontConnection.abandon_tunnel>` does for an HTTP/1.1 one."""
        for tunnel in self.tunnels():
            tunnel.abort()
            if isinstance(tunnel.on_close, _StreamFront):
                tunnel.on_close.abandon_tunnel()

    def tunnels(self) -> list[Tunnel]:
        """The open RFC 8441 tunnels of this connection (a graceful stop closes them)."""
        return [
            t
            for s in self.streams.values()
            if s.transport is not None and (t := s.transport.tunnel) is not None
        ]

    def tunnel_peers(self) -> list[tuple[Tunnel, Peer]]:
        """The open RFC 8441 tunnels with the peer each was opened to (a drain moves them):
        a stream tunnel's ``on_close`` is its :class:`_StreamFront`, which holds its end."""
        found = []
        for t in self.tunnels():
            end = t.on_close.tunnel_end if isinstance(t.on_close, _StreamFront) else None
            if end is not None:
                found.append((t, end.peer))
        return found

    # -- sending ------------------------------------------------------------------------------
    def send_head(self, stream: _Stream, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        try:
            self.h2.send_headers(stream.sid, fields, end_stream=end)
        except (ProtocolError, StreamClosedError):
            stream.gone_now()
            return
        if end:
            self._ended(stream)
        self.flush()

    def pump(self, stream: _Stream) -> None:
        """Send what the stream holds, as far as the windows allow."""
        if stream.reset or stream.head_fields is not None or stream.end_sent:
            return
        h2 = self.h2
        sid = stream.sid
        out = stream.out
        if stream.request is not None:
            stream.chunk = stream.request.settings.http2_chunk_size
        try:
            while out:
                window = h2.local_flow_control_window(sid)
                size = min(len(out), window, h2.max_outbound_frame_size, stream.chunk)
                if size <= 0:
                    break
                last = stream.ended and size == len(out)
                h2.send_data(sid, bytes(out[:size]), end_stream=last)
                del out[:size]
                if last:
                    self._ended(stream)
            if not out and stream.ended and not stream.end_sent:
                h2.end_stream(sid)
                self._ended(stream)
        except (ProtocolError, StreamClosedError, FlowControlError):
            stream.gone_now()
        self.flush()
        if not out:
            stream.wake()
        if stream.transport is not None:
            stream.transport.pumped()

    def _ended(self, stream: _Stream) -> None:
        stream.end_sent = True
        stream.wake()
        if stream.served:
            self.streams.pop(stream.sid, None)

    def reset_stream(self, stream: _Stream, code: ErrorCodes) -> None:
        self._reset(stream.sid, code)
        stream.gone_now()

    def _reset(self, sid: int, code: ErrorCodes) -> None:
        try:
            self.h2.reset_stream(sid, code)
        except (ProtocolError, StreamClosedError):
            pass
        self.flush()

    def open_window(self, stream: _Stream) -> None:
        """``ngx_http_v2_read_request_body`` of a body read whole (no
        ``request_body_no_buffering``): the stream's window opened to the maximum in one
        WINDOW_UPDATE (``no_flow_control``; the connection's is given back as before)."""
        h2stream = self.h2.streams.get(stream.sid)
        if stream.reset or h2stream is None:
            return
        increment = MAX_WINDOW - h2stream.inbound_flow_control_window
        if increment > 0:
            try:
                self.h2.increment_flow_control_window(increment, stream.sid)
            except (ProtocolError, StreamClosedError):
                return
            self.flush()

    def consumed(self, stream: _Stream, flow: int) -> None:
        """Body bytes read: the window is given back (WINDOW_UPDATE)."""
        if not stream.reset:
            self._ack(stream.sid, flow)

    def _ack(self, sid: int, flow: int) -> None:
        if not flow:
            return
        try:
            # h2 gives the connection's share back even when the stream is gone.
            self.h2.acknowledge_received_data(flow, sid)
        except ProtocolError:
            pass
        self.flush()
