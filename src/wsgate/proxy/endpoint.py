"""One TCP connection as the HTTP phase sees it: awaitable reads, flow-controlled writes.

An :class:`Endpoint` is an ``asyncio.Protocol`` (fast with uvloop: no StreamReader layers)
that buffers what arrives until the request or response handler asks for it, pausing the
transport when the buffer is full (back-pressure), and lets the handler await ``drain()``
while the kernel send buffer is full.  When a WebSocket tunnel starts, the transport is
handed to :mod:`wsgate.proxy.tunnel` with ``set_protocol`` and this object steps aside.

:class:`KeptEndpoints` holds idle upstream endpoints for reuse (``keepalive`` in an
``upstream`` block): the pure :class:`~wsgate.upstream.pool.KeepalivePool` plus its timer.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Hashable
from typing import Protocol, cast

from wsgate.upstream.pool import KeepalivePool, Kept

__all__ = [
    "ConnectionCounter",
    "CountedEndpoint",
    "Endpoint",
    "KeptEndpoints",
    "PeerClosed",
    "Ready",
]

#: Bytes buffered from a peer before its reading is paused (nginx reads one buffer at a time).
READ_HIGH_WATER = 64 * 1024


class PeerClosed(ConnectionError):
    """The peer closed (or reset) the connection while we waited for it."""


class Ready(enum.IntEnum):
    """What ended :meth:`Endpoint.wait_data_or`: the timeout, bytes or EOF on the endpoint,
    or the other future (the client going away while the upstream's head is awaited)."""

    TIMEOUT = 0
    DATA = 1
    OTHER = 2


class Endpoint(asyncio.Protocol):
    """Buffering protocol with ``await read()``, ``write()`` and ``await drain()``."""

    # Slots: a client connection's endpoint lives as long as its tunnel (no instance dict).
    __slots__ = (
        "loop",
        "transport",
        "buffer",
        "eof",
        "error",
        "closed",
        "_read_waiter",
        "_drain_waiter",
        "_write_paused",
        "_read_paused",
        "_gone",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.closed = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._gone: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.  Both loops
        # set TCP_NODELAY on every TCP transport themselves; asking for the socket here would
        # make the transport keep a socket object for as long as the connection lives.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_HIGH_WATER and not self._read_paused and self.transport:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        self._set_gone()
        # Keep the write side open (half-close is the handler's decision), except on TLS,
        # which cannot be half-closed: there the EOF ends the connection.
        transport = self.transport
        return transport is None or transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.eof = True
        if exc is not None:
            self.error = exc
        self._wake()
        self._set_gone()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _set_gone(self) -> None:
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    # -- handler side -------------------------------------------------------------------------
    @property
    def write_paused(self) -> bool:
        """Whether the transport's write buffer is over its high-water mark."""
        return self._write_paused

    def gone(self) -> asyncio.Future[None]:
        """A future done once the peer has sent EOF or the connection is lost."""
        if self._gone is None:
            self._gone = self.loop.create_future()
            if self.eof:
                self._gone.set_result(None)
        return self._gone

    def _wake(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_data(self) -> bool:
        """Wait until the buffer has bytes; ``False`` at EOF with an empty buffer."""
        while not self.buffer:
            if self.eof:
                return False
            self._read_waiter = self.loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        return True

    async def wait_data_or(self, other: asyncio.Future[None] | None, timeout: float) -> Ready:
        """Wait for bytes or EOF here (``DATA``), ``other`` done (``OTHER``), or ``timeout``
        seconds (``TIMEOUT``, which is false); the first that holds, in that order.  One
        future and one timer: what ``asyncio.wait((ensure_future(read()), other),
        timeout=...)`` or ``asyncio.timeout`` around :meth:`wait_data` do with tasks, futures
        and callbacks (measured: a few per cent of a handshake's CPU)."""
        if not (self.buffer or self.eof or (other is not None and other.done())):
            waiter = self.loop.create_future()

            def wake(_: object = None) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            self._read_waiter = waiter
            if other is not None:
                other.add_done_callback(wake)
            timer = self.loop.call_later(timeout, wake)
            try:
                await waiter
            finally:
                self._read_waiter = None
                timer.cancel()
                if other is not None:
                    other.remove_done_callback(wake)
        if self.buffer or self.eof:
            return Ready.DATA
        return Ready.OTHER if other is not None and other.done() else Ready.TIMEOUT

    def take(self) -> bytes:
        """Everything buffered, and reading resumed."""
        data = bytes(self.buffer)
        self.buffer.clear()
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    async def read(self) -> bytes:
        """The next bytes, or ``b""`` at EOF."""
        if not await self.wait_data():
            return b""
        return self.take()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise PeerClosed("connection lost")
        if not self._write_paused:
            # A transport that met a send error closes on the loop's next turn; a writer
            # that never waits would not see it until its whole response was thrown away.
            transport = self.transport
            if transport is not None and transport.is_closing():
                raise PeerClosed("connection closing")
            return
        self._drain_waiter = self.loop.create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None
        if self.closed:
            raise PeerClosed("connection lost")

    def detach(self) -> None:
        """The transport now belongs to a tunnel (``set_protocol``): this endpoint is not read
        again, so what it would keep for as long as the tunnel lives is let go."""
        self.buffer = bytearray()
        self._gone = None

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


class ConnectionCounter(Protocol):
    """Who counts upstream connections (the gateway, for ``worker_connections``)."""

    def upstream_opening(self) -> None: ...

    def upstream_closed(self) -> None: ...


class CountedEndpoint(Endpoint):
    """An upstream connection, counted from ``connection_made`` until it is lost or released
    (:meth:`release`: a tunnel, which counts its connections itself, took it over)."""

    __slots__ = ("counter", "counted")

    def __init__(self, loop: asyncio.AbstractEventLoop, counter: ConnectionCounter) -> None:
        super().__init__(loop)
        self.counter = counter
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.counted = True
        self.counter.upstream_opening()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.release()

    def release(self) -> None:
        if self.counted:
            self.counted = False
            self.counter.upstream_closed()


class KeptEndpoints:
    """One upstream group's idle connections (:class:`~wsgate.upstream.pool.KeepalivePool`) on
    the event loop: the ``keepalive_timeout`` timer, and a watch that drops a kept connection
    the upstream closes or writes to (``ngx_http_upstream_keepalive_close_handler``)."""

    __slots__ = ("loop", "pool", "_timer", "_watch")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        size: int,
        *,
        requests: int,
        timeout: float,
        lifetime: float,
    ) -> None:
        self.loop = loop
        self.pool: KeepalivePool[Endpoint] = KeepalivePool(
            size,
            requests=requests,
            timeout=timeout,
            lifetime=lifetime,
            clock=loop.time,
            close=Endpoint.close,
        )
        self._timer: asyncio.TimerHandle | None = None
        self._watch: dict[Kept[Endpoint], Callable[[asyncio.Future[None]], None]] = {}

    def new(self, peer: Hashable, ep: Endpoint) -> Kept[Endpoint]:
        return self.pool.new(peer, ep)

    async def take(self, peer: Hashable) -> Kept[Endpoint] | None:
        """A live kept connection to ``peer``, or None."""
        if not self.pool.idle(peer):
            return None
        await asyncio.sleep(0)  # let a FIN that already arrived be seen first
        while (kept := self.pool.take(peer)) is not None:
            callback = self._watch.pop(kept, None)
            if callback is not None:
                kept.conn.gone().remove_done_callback(callback)
            if kept.conn.eof or kept.conn.buffer:  # closed, or bytes nobody asked for
                kept.conn.abort()
                continue
            return kept
        return None

    def put(self, kept: Kept[Endpoint]) -> bool:
        """Cache ``kept``; False when a limit says close it."""
        ep = kept.conn
        if ep.eof or ep.buffer or not self.pool.put(kept):
            return False

        def lost(_: asyncio.Future[None]) -> None:
            self._watch.pop(kept, None)
            if self.pool.discard(kept):
                ep.close()

        self._watch[kept] = lost
        ep.gone().add_done_callback(lost)
        self._arm()
        return True

    def drop_oldest(self, count: int) -> int:
        """Close up to ``count`` idle connections, least recently used first; how many."""
        return self.pool.drop_oldest(count)

    def close_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pool.close_all()

    def _arm(self) -> None:
        deadline = self.pool.next_deadline()
        if deadline is None or self._timer is not None:
            return  # a pending timer is never later than the oldest entry's deadline
        self._timer = self.loop.call_at(deadline + 0.001, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self.pool.expire()
        self._arm()
