"""RFC 8441 WebSockets over HTTP/2: one stream as the client transport of a tunnel.

An extended CONNECT (``:method CONNECT``, ``:protocol websocket``) is turned into the
HTTP/1.1 upgrade the pipeline knows (:func:`wsgate.http.http2.request_head`), so routing,
every phase and the upstream side run unchanged.  When the upstream answers ``101``,
:func:`wsgate.proxy.relay.start_tunnel` hands the client's "transport" to
:class:`wsgate.proxy.tunnel.Tunnel`: for a stream that is a :class:`StreamTransport`, the
stream with the interface of an ``asyncio.Transport`` the tunnel's side drives.  So the
tunnel's whole machinery applies to a stream as to a TCP connection: the idle timer
(``proxy_read_timeout``), the send timers (``send_timeout`` while the stream's window is
shut), the frame counting, the Close frames of a graceful stop (1001) or of
``worker_shutdown_timeout`` after a reload (1012), ``limit_conn``/``least_conn``/``max_conns``
held until it closes, its access-log line.  The WebSocket frames pass unchanged (RFC 8441
§5: the same framing, in DATA frames).

What the adapter maps:

- ``write`` → DATA frames as the client's windows allow (the stream's ``out``, sent by
  :meth:`Http2Connection.pump <wsgate.proxy.http2.Http2Connection.pump>`); past
  :data:`HIGH_WATER` bytes not sent the tunnel's ``pause_writing`` stops reading the upstream,
  below :data:`LOW_WATER` ``resume_writing`` restarts it (back-pressure towards the client);
- ``pause_reading`` → the DATA read are held and their window is not given back, so the client
  stops at its stream window (``http2_body_preread_size``): back-pressure towards the upstream;
- ``write_eof`` → END_STREAM; the client's END_STREAM → ``eof_received`` (half-close, as a FIN);
- ``close`` → END_STREAM after what is queued, then RST_STREAM NO_ERROR if the client has
  not ended its side (RFC 9113 §8.1, as nginx for a body nobody reads); ``abort`` →
  RST_STREAM CANCEL; the client's RST_STREAM, or the connection's end → ``connection_lost``.

Not shared with an HTTP/1.1 tunnel: the bytes pass through the HTTP/2 connection (h2's
framing and a copy per DATA frame), not from socket to socket; the connection's own socket
buffer is bounded by the client's windows, not by this adapter.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from h2.errors import ErrorCodes

if TYPE_CHECKING:
    from wsgate.proxy.http2 import Http2Connection, _Stream
    from wsgate.proxy.tunnel import Tunnel

__all__ = ["HIGH_WATER", "LOW_WATER", "StreamTransport"]

#: Bytes for the client not yet sent (its windows shut) that pause the upstream's reading.
HIGH_WATER = 64 * 1024
#: ... and that resume it.
LOW_WATER = 16 * 1024


class StreamTransport:
    """One stream as the client transport of a :class:`~wsgate.proxy.tunnel.Tunnel`."""

    __slots__ = ("conn", "stream", "protocol", "paused", "held", "eof", "writing_paused", "lost")

    def __init__(self, conn: Http2Connection, stream: _Stream) -> None:
        self.conn = conn
        self.stream = stream
        self.protocol: Any = None
        #: Reading paused by the tunnel: DATA held, its window not given back.
        self.paused = True
        self.held: list[tuple[bytes, int]] = []
        #: The client's END_STREAM, delivered after what is held.
        self.eof = False
        self.writing_paused = False
        #: ``connection_lost`` reported (once).
        self.lost = False

    @property
    def tunnel(self) -> Tunnel | None:
        """The tunnel this stream carries, once started."""
        protocol = self.protocol
        return None if protocol is None else protocol.tunnel

    # -- the transport interface the tunnel uses ---------------------------------------------
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """The tunnel's side takes the stream: DATA that came before the ``200`` (the client
        need not wait for it) is held for it, then delivered by ``resume_reading``."""
        if self.protocol is not None:
            # Set again: the same side, its class changed (wsgate.proxy.tunnel._PingSide).
            self.protocol = protocol
            return
        self.protocol = protocol
        stream = self.stream
        self.held.extend(stream.body)
        stream.body.clear()
        self.eof = stream.body_ended
        if stream.reset:
            self.conn.loop.call_soon(self.gone)

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "sslcontext":
            return None  # a stream can be half-closed, whatever carries the connection
        transport = self.conn.front.ep.transport
        return default if transport is None else transport.get_extra_info(name, default)

    def write(self, data: bytes) -> None:
        stream = self.stream
        if stream.reset or stream.ended:
            return
        stream.out += data
        self.conn.pump(stream)
        if not self.writing_paused and len(stream.out) > HIGH_WATER and not self.lost:
            self.writing_paused = True
            self.protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return len(self.stream.out)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        stream = self.stream
        if stream.reset or stream.ended:
            return
        stream.ended = True
        self.conn.pump(stream)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        self._deliver()

    def is_closing(self) -> bool:
        return self.stream.ended or self.stream.reset

    def close(self) -> None:
        """END_STREAM once what is queued is sent (:meth:`pumped`), then the end."""
        self.stream.closed = True
        self.write_eof()
        self.pumped()

    def abort(self) -> None:
        stream = self.stream
        stream.closed = True
        if not stream.reset:
            self.conn.reset_stream(stream, ErrorCodes.CANCEL)  # calls gone()
        self.gone()

    # -- the stream's side -----------------------------------------------------------------
    def received(self, data: bytes, flow: int) -> None:
        """DATA from the client."""
        if self.lost or self.protocol is None:
            self.conn.consumed(self.stream, flow)
            return
        self.held.append((data, flow))
        if not self.paused:
            self._deliver()

    def ended(self) -> None:
        """The client's END_STREAM."""
        self.eof = True
        if not self.paused:
            self._deliver()

    def _deliver(self) -> None:
        held = self.held
        while held and not self.paused and not self.lost:
            data, flow = held.pop(0)
            self.conn.consumed(self.stream, flow)
            if data:
                self.protocol.data_received(data)
        if self.eof and not held and not self.lost and not self.paused:
            self.eof = False
            self.protocol.eof_received()

    def pumped(self) -> None:
        """The connection has sent what the windows allowed of the stream's ``out``."""
        if self.lost or self.protocol is None:
            return
        stream = self.stream
        if self.writing_paused and len(stream.out) <= LOW_WATER:
            self.writing_paused = False
            self.protocol.resume_writing()
        if stream.closed and stream.end_sent and not self.lost:
            if not stream.body_ended and not stream.reset:
                self.conn.reset_stream(stream, ErrorCodes.NO_ERROR)
            self.gone()

    def gone(self) -> None:
        """The stream is over (reset either way, closed, or the connection lost)."""
        if self.lost or self.protocol is None:
            return
        self.lost = True
        self.held.clear()
        self.conn.loop.call_soon(self.protocol.connection_lost, None)
