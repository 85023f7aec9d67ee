"""The WebSocket tunnel: after a 101, two transports relay bytes to each other.

This is the hot path.  Each side's ``data_received`` does one ``write`` to the other transport,
counts the bytes (for ``$bytes_sent`` and the access log) and stamps the activity time (for the
idle timer).  There is no per-message task, no copy and no frame parsing.  Flow control is the
transport's own: when one transport's write buffer passes its high-water mark, asyncio calls
``pause_writing`` on its protocol, and we stop reading the *other* side until
``resume_writing`` (the wiring of uvicorn's ``flow_control.py``).  So a slow reader never makes
the proxy buffer without bound.

Timers follow nginx's ``ngx_http_upstream_process_upgraded`` (NGINX-SEMANTICS.md §4):

* ``proxy_read_timeout`` is an idle timer shared by both directions: traffic either way
  re-arms it; it fires only after that long with no byte in either direction.
* ``proxy_send_timeout`` runs only while writing to the upstream is blocked, ``send_timeout``
  only while writing to the client is blocked.

On expiry both connections are closed and the error log gets nginx's INFO line.

Half-close (a deliberate difference from nginx, which closes both sockets on the first FIN):
when one side shuts down its sending direction, wsgate shuts down the same direction towards
the other side (``write_eof``) and keeps relaying the other way; the tunnel ends when both
directions are shut or either connection is closed or reset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Tunnel"]


class _Side(asyncio.Protocol):
    """One transport of the tunnel; relays what it reads to ``peer``."""

    __slots__ = (
        "tunnel",
        "transport",
        "peer",
        "nbytes",
        "eof",
        "lost",
        "blocked_since",
        "name",
        "tls",
    )

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport, name: str) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: _Side = self
        self.nbytes = 0  # bytes read from this side (and written to the peer)
        self.eof = False
        self.lost = False
        self.blocked_since: float | None = None
        self.name = name
        # A TLS transport cannot stay open half-closed (asyncio's TLS transports have no
        # write_eof): its EOF ends that connection, and the peer is closed after its data.
        self.tls = transport.get_extra_info("sslcontext") is not None

    # the hot path -------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)
        self.nbytes += len(data)
        self.tunnel.last = self.tunnel.clock()

    # flow control: *our* transport is full, so stop reading the peer ------------------------
    def pause_writing(self) -> None:
        if not self.peer.lost:
            self.peer.transport.pause_reading()
        self.blocked_since = self.tunnel.clock()
        self.tunnel.arm_send_timer(self)

    def resume_writing(self) -> None:
        self.blocked_since = None
        if not self.peer.lost and not self.peer.eof:
            self.peer.transport.resume_reading()
        self.tunnel.last = self.tunnel.clock()

    # ends ---------------------------------------------------------------------------------
    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
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


class Tunnel:
    """Relays between ``client`` and ``upstream`` transports until both are closed.

    ``on_close(reason)`` is called once, after both transports are gone; ``reason`` is
    ``None`` for a normal end, or ``"upstream"``/``"client"`` after a timeout of that side.
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
        "_idle_handle",
        "_send_handle",
        "_closed",
        "_done",
        "started",
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
    ) -> None:
        self.loop = loop
        self.clock = loop.time
        self.started = self.last = self.clock()
        self.read_timeout = read_timeout
        self.send_timeout_up = send_timeout_upstream
        self.send_timeout_client = send_timeout_client
        self.on_close = on_close
        self.timeout_reason: str | None = None
        self._closed = False
        self._done = False
        self._send_handle: asyncio.TimerHandle | None = None
        self.client = _Side(self, client, "client")
        self.upstream = _Side(self, upstream, "upstream")
        self.client.peer = self.upstream
        self.upstream.peer = self.client
        self._idle_handle = loop.call_at(self.last + read_timeout, self._idle_check)

    def start(
        self,
        to_client: bytes,
        to_upstream: bytes,
        client_write_paused: bool,
        upstream_write_paused: bool,
    ) -> None:
        """Switch both transports to the tunnel and send what each side had sent early."""
        c, u = self.client, self.upstream
        c.transport.set_protocol(c)
        u.transport.set_protocol(u)
        if to_client:
            c.transport.write(to_client)
            u.nbytes += len(to_client)
        if to_upstream:
            u.transport.write(to_upstream)
            c.nbytes += len(to_upstream)
        # Reading may have been paused by the HTTP phase: restart it, unless the other
        # side's write buffer is still full.
        for side, other_paused in ((c, upstream_write_paused), (u, client_write_paused)):
            if other_paused:
                side.transport.pause_reading()
                side.peer.pause_writing()
            else:
                side.transport.resume_reading()

    @property
    def bytes_to_client(self) -> int:
        return self.upstream.nbytes

    @property
    def bytes_to_upstream(self) -> int:
        return self.client.nbytes

    # timers -----------------------------------------------------------------------------------
    def _idle_check(self) -> None:
        if self._closed:
            return
        deadline = self.last + self.read_timeout
        now = self.clock()
        if now >= deadline - 0.001:
            self.timeout_reason = "upstream"
            self.abort()
        else:
            self._idle_handle = self.loop.call_at(deadline, self._idle_check)

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
        self._idle_handle.cancel()
        if self._send_handle is not None:
            self._send_handle.cancel()
            self._send_handle = None
