"""One client connection, from accept to close: TLS, request heads, keep-alive, its tunnel.

A :class:`FrontConnection` reads request heads in order (pipelined requests strictly one
after the other; ``client_header_timeout``, ``keepalive_timeout``), hands each to an
:class:`~wsgate.proxy.exchange.Exchange` that walks nginx's phases and makes the response,
drops a body nobody read, and keeps the connection alive or closes it.  It is composed, not
inherited: the exchange, the upstream attempt and the response streamer each hold what they
need, and this object holds only what outlives a request.

When a request becomes a tunnel the connection's task ends and this object stays as the
tunnel's ``on_close`` (it is called with the tunnel when both sides are closed), with the
tunnel's request reduced to a :class:`~wsgate.proxy.relay.TunnelEnd`.  It is slotted and
small for that reason: it lives as long as every idle tunnel.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import sys
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from wsgate.config.model import LocationSettings
from wsgate.config.variables import RequestContext
from wsgate.errors import HttpError
from wsgate.http.body import Body, EndOfMessage
from wsgate.http.phases import UninitializedWarning
from wsgate.http.proxy_protocol import (
    MAX_HEADER,
    ProxyHeader,
    ProxyProtocolError,
    complete,
    parse,
)
from wsgate.http.request import (
    HeadLimits,
    IncompleteRequest,
    RequestEvent,
    RequestHead,
    RequestParser,
)
from wsgate.observability.status import READING, REQUESTS, WRITING
from wsgate.proxy.endpoint import Endpoint, Ready
from wsgate.proxy.exchange import Exchange, unreadable_head, write_error
from wsgate.proxy.http2 import PREFACE, Http2Connection
from wsgate.proxy.relay import TunnelEnd, tunnel_closed
from wsgate.proxy.tunnel import Tunnel
from wsgate.server.tls import (
    connection_variables,
    handshake,
    handshake_error,
    is_tls_hello,
)

if TYPE_CHECKING:
    from wsgate.proxy.context import WorkerContext
    from wsgate.server.listening import ListenGroup

__all__ = ["FrontConnection"]


class _HeadTimedOut(Exception):
    """``client_header_timeout`` expired in a request's head (logged; nothing is sent)."""


class FrontConnection:
    """Serves one accepted connection until it closes (or becomes a tunnel)."""

    # Slots: a tunnel keeps its connection for as long as it is open (no instance dict).
    __slots__ = (
        "gw",
        "ep",
        "group",
        "number",
        "remote_addr",
        "remote_port",
        "local_addr",
        "local_port",
        "candidates",
        "default",
        "requests",
        "started",
        "idle",
        "stat_state",
        "parser",
        "pending",
        "body_done",
        "tls_vars",
        "plain_on_tls",
        "proxy_protocol",
        "task_done",
        "tunnel",
        "tunnel_end",
        "h2",
    )

    def __init__(self, gw: WorkerContext, ep: Endpoint, group: ListenGroup, number: int) -> None:
        self.gw = gw
        self.ep = ep
        self.group = group
        self.number = number
        transport = ep.transport
        assert transport is not None
        if group.key[0].startswith("unix:"):
            # nginx: a UNIX-domain client's $remote_addr is "unix:" and $server_addr is the
            # listener's "unix:/path"; neither has a port.
            peer: tuple[str, int] = ("unix:", 0)
            local: tuple[str, int] = (group.key[0], 0)
        else:
            peer = transport.get_extra_info("peername") or ("", 0)
            local = transport.get_extra_info("sockname") or ("", 0)
        # Interned: connections from one address (a NAT, a load balancer) share the string.
        self.remote_addr, self.remote_port = sys.intern(str(peer[0])), int(peer[1])
        self.local_addr, self.local_port = group.local_address(str(local[0]), int(local[1]))
        self.candidates, self.default = group.candidates(self.local_addr)
        self.requests = 0
        self.started = gw.loop.time()
        #: nginx's ``c->idle``: waiting for the first byte of a keep-alive request, the only
        #: state in which a graceful stop or a retiring worker closes a connection at once.
        #: A new connection is not idle: its first request is served even if the worker
        #: retires before a byte arrives (closing it would drop a client the kernel has
        #: already accepted for us, unanswered).
        self.idle = False
        #: The tunnel this connection became (its client side is the transport's protocol).
        self.tunnel: Tunnel | None = None
        #: ``stub_status``: READING, WRITING, or None for Waiting (see :meth:`stat`).
        self.stat_state: int | None = None
        self.parser: RequestParser
        self.pending: list[RequestEvent] = []
        self.body_done = True
        #: ``$https``/``$ssl_*`` of a TLS connection (None: plain TCP).
        self.tls_vars: dict[str, str] | None = None
        #: Plain HTTP arrived on a ``listen ... ssl`` address: every request gets 497.
        self.plain_on_tls = False
        #: The PROXY protocol header (``listen ... proxy_protocol``), if it gave addresses.
        self.proxy_protocol: ProxyHeader | None = None
        #: An open tunnel's request (None: no tunnel, or its request is finished).
        self.tunnel_end: TunnelEnd | None = None
        #: The connection's task has ended; an open tunnel then ends the connection itself.
        self.task_done = False
        #: The HTTP/2 connection this one speaks (ALPN ``h2`` or the preface), if any.
        self.h2: Http2Connection | None = None

    # -- the connection loop ------------------------------------------------------------------
    async def run(self) -> None:
        default = self.default
        if self.group.proxy_protocol(self.local_addr) and not await self._read_proxy_protocol():
            self.ep.close()
            return
        if self.group.tls is not None and not await self._start_tls():
            self.ep.close()
            return
        if await self._is_http2():
            self.h2 = Http2Connection(self)
            try:
                settings = self.default.settings
                linger = await self.h2.run()
                if linger and settings.lingering_close != "off" and self.tls_vars is None:
                    await self._linger(settings)
            finally:
                self.ep.close()
            return
        parser = RequestParser(
            HeadLimits(
                default.client_header_buffer_size,
                default.large_client_header_buffers[0],
                default.large_client_header_buffers[1],
                default.max_headers,
                # nginx reads header lines with the default server's settings until the
                # Host line names another server; wsgate with the default server's for all.
                ignore_invalid=default.ignore_invalid_headers,
                underscores=default.underscores_in_headers,
            )
        )
        self.parser = parser
        keepalive_timeout: float | None = None
        #: The settings of the request that ends the connection, when it ends after one
        #: (lingering close); None when it ends idle.
        last: LocationSettings | None = None
        #: ``reset_timedout_connection``: the connection timed out or got ``return 444``.
        reset = False
        try:
            while True:
                last = None
                if self.gw.stopping and self.requests:
                    return
                # ngx_http_set_keepalive: bytes already read behind the last request make
                # the next one pipelined ($pipe "p").
                pipelined = bool(self.requests) and bool(parser.buffered or self.ep.buffer)
                try:
                    if self.requests:
                        # Bytes pipelined behind the last request are parsed now: their
                        # errors are answered as a first request's are.
                        self.pending = parser.next_request()
                    head = await self._read_head(keepalive_timeout)
                except _HeadTimedOut:
                    reset = default.settings.reset_timedout_connection
                    return
                except HttpError as exc:
                    # Bad input before a head exists: nginx's 400/414/494/501/505 and close,
                    # through the default server's error_page when it has one for the status.
                    if isinstance(exc, IncompleteRequest):
                        return
                    if any(page.status == exc.status for page in default.settings.error_pages):
                        await Exchange(self, unreadable_head()).run(exc)
                    else:
                        write_error(self, exc, self.bare_ctx(), None, default.settings, "", False)
                        last = default.settings
                    return
                if head is None:
                    return
                self.stat(WRITING)
                self.requests += 1
                self.body_done = False
                exchange = Exchange(self, head)
                exchange.r.ctx.pipelined = pipelined
                keep, keepalive_timeout = await exchange.run()
                settings = last = exchange.r.settings
                status = exchange.r.ctx.status
                if status in (408, 444, 499):
                    # ngx_http_terminate_request: closed at once, never lingering; reset
                    # with reset_timedout_connection (ngx_http_free_request: "if
                    # (r->connection->timedout)", set by a timeout and by 444).
                    reset = settings.reset_timedout_connection and status != 499
                    last = None
                if not keep or self.gw.stopping or self.tunnel is not None:
                    return
                if not self.body_done:
                    keep = await self._discard_body(settings)
                    if not keep:
                        last = None  # lingering_time ran out, or the client went
                        return
                self.stat(None)
        finally:
            # A tunnel's request (and connection) ends when the tunnel closes.
            if self.tunnel is None:
                # Not when the task is cancelled (a fast stop) or failed.
                if reset:
                    self._reset()
                elif last is not None and sys.exc_info()[0] is None and self._lingers(last):
                    await self._linger(last)
                self.stat(None)
                self.ep.close()
            else:
                # Not needed again, and would otherwise live as long as the tunnel (the
                # endpoint too: the tunnel's side is the transport's protocol now).
                del self.parser, self.pending, self.ep, self.started

    def task_ended(self) -> bool:
        """The task running :meth:`run` has ended; ``True`` when an open tunnel now holds the
        connection, which then ends when the tunnel closes (:meth:`__call__`)."""
        self.task_done = True
        return self.tunnel_end is not None

    # -- an open tunnel's end -----------------------------------------------------------------
    def __call__(self, tunnel: Tunnel) -> None:
        """The tunnel's ``on_close`` (the connection itself: a bound method would cost 64
        bytes for as long as the tunnel is open): its request ends
        (:func:`~wsgate.proxy.relay.tunnel_closed`), then the connection."""
        end = self.tunnel_end
        if end is None:  # abandoned by a fast stop (:meth:`abandon_tunnel`)
            return
        self.tunnel_end = None
        try:
            tunnel_closed(self, tunnel, end)
        finally:
            self._tunnel_finished()

    def abandon_tunnel(self) -> None:
        """A fast stop (TERM) ends an open tunnel without its access-log line, as it cancels
        requests: the peer, the gauges, the ``limit_conn`` slots and the connection are
        released now, since the process may exit before the tunnel's close is reported."""
        end = self.tunnel_end
        if end is None or self.tunnel is None:
            return
        self.tunnel_end = None
        try:
            end.release(self.gw, self.tunnel)
        finally:
            self._tunnel_finished()

    def _tunnel_finished(self) -> None:
        """An open tunnel's request has ended: ``stub_status`` Writing is left, then the
        connection ends if its task already has."""
        self.stat(None)
        if self.task_done:
            self.gw.connection_closed(self)

    # -- reading --------------------------------------------------------------------------------
    def _log_connection(self, level: str, message: str) -> None:
        """A line about the connection before any request, with the listening address as
        ``server`` (nginx's ``ngx_http_log_error`` without a request)."""
        ctx = self.bare_ctx()
        ctx.server_name = self.listening_text()
        self.gw.error_log.log(level, message, self.number, ctx)

    def listening_text(self) -> str:
        """The local address as nginx's ``addr_text`` writes it (the ``server`` of a line
        logged before any request)."""
        if self.local_addr.startswith("unix:"):
            return self.local_addr
        host = f"[{self.local_addr}]" if ":" in self.local_addr else self.local_addr
        return f"{host}:{self.local_port}"

    async def _read_proxy_protocol(self) -> bool:
        """The PROXY protocol header (``listen ... proxy_protocol``); ``False``: close.

        nginx (``ngx_http_wait_request_handler``, ``ngx_http_ssl_handshake``) waits
        ``client_header_timeout`` for it, in a buffer of ``client_header_buffer_size`` bytes
        (``NGX_PROXY_PROTOCOL_MAX_HEADER``, 4096, on an ``ssl`` port), and closes the
        connection when it is broken, with ``[error] broken header: "..." while reading PROXY
        protocol``.  What follows the header is the connection's first bytes (TLS or HTTP).
        """
        ep = self.ep
        limit = MAX_HEADER if self.group.tls is not None else self.default.client_header_buffer_size
        action = " while reading PROXY protocol"
        buf = bytearray()
        loop = self.gw.loop
        deadline = loop.time() + self.default.client_header_timeout
        while not complete(buf, limit):
            remaining = deadline - loop.time()
            if remaining <= 0 or await ep.wait_data_or(None, remaining) is Ready.TIMEOUT:
                self._log_connection(
                    "info", "client timed out (110: Connection timed out)" + action
                )
                return False
            if not ep.buffer:  # EOF
                if not buf:
                    self._log_connection("info", "client closed connection" + action)
                    return False
                break
            buf += ep.take()
        try:
            header, used = parse(buf[:limit])
        except ProxyProtocolError as exc:
            if exc.message:
                self._log_connection("error", exc.message + action)
            return False
        self.proxy_protocol = header
        rest = bytes(buf[used:])
        if rest:
            ep.buffer[0:0] = rest
        return True

    async def _start_tls(self) -> bool:
        """First bytes, then the handshake (``listen ... ssl``); ``False``: close silently.

        nginx's ``ngx_http_ssl_handshake``: the first byte decides between a handshake and
        plain HTTP (answered with 497 once its head is read); both wait at most
        ``client_header_timeout``.  A failed handshake is logged at ``info``, with the
        listening address as ``server``, and only this connection is closed.
        """
        tls, ep, loop = self.group.tls, self.ep, self.gw.loop
        assert tls is not None and ep.transport is not None
        context = tls.front(self.local_addr, self.candidates, self.default)
        if context is None:  # this address has no ``ssl``: plain HTTP
            return True
        timeout = self.default.client_header_timeout
        try:
            async with asyncio.timeout(timeout):
                if not await ep.wait_data():
                    return False
            if not is_tls_hello(ep.buffer[0]):
                self.plain_on_tls = True
                return True
            early = bytes(ep.buffer)
            ep.buffer.clear()
            ep.transport = await handshake(loop, ep.transport, ep, context, timeout, early)
        except (OSError, EOFError, TimeoutError) as exc:
            self._log_connection("info", handshake_error(exc))
            return False
        obj = ep.transport.get_extra_info("ssl_object")
        if isinstance(obj, ssl.SSLObject):
            self.tls_vars = connection_variables(obj)
        return True

    def listen_http2(self) -> bool:
        """``listen ... http2`` on this address (nginx's ``addr_conf->http2``)."""
        listens = [lst for _, lst in self.group.pairs]
        exact = [lst for lst in listens if lst.host == self.local_addr]
        chosen = exact or [lst for lst in listens if lst.is_wildcard] or listens
        return any(lst.http2 for lst in chosen)

    async def _is_http2(self) -> bool:
        """Whether the connection speaks HTTP/2: ALPN chose ``h2`` (``ngx_http_ssl_handshake``
        after the handshake, with the server SNI chose), or, in cleartext, the first bytes
        are the connection preface (``ngx_http_wait_request_handler``: nginx compares what
        has arrived and waits for more while it matches)."""
        ep = self.ep
        if self.tls_vars is not None:
            obj = ep.transport.get_extra_info("ssl_object") if ep.transport else None
            return isinstance(obj, ssl.SSLObject) and obj.selected_alpn_protocol() == "h2"
        if self.plain_on_tls or not (self.default.http2 or self.listen_http2()):
            return False
        loop = self.gw.loop
        deadline = loop.time() + self.default.client_header_timeout
        got = bytearray()
        try:
            while True:
                got += ep.take()
                n = min(len(PREFACE), len(got))
                if got[:n] != PREFACE[:n]:
                    return False
                if n == len(PREFACE):
                    return True
                remaining = deadline - loop.time()
                if ep.eof or remaining <= 0:
                    return False
                if await ep.wait_data_or(None, remaining) is Ready.TIMEOUT:
                    return False
        finally:
            ep.buffer[0:0] = got

    def wind_down(self) -> None:
        """A graceful stop or a reload: an idle connection closes now; an HTTP/2 one sends
        GOAWAY and lets its streams finish."""
        if self.h2 is not None:
            self.h2.wind_down()
        elif self.idle and self.tunnel is None:
            self.ep.close()

    async def _next_events(self, timeout: float) -> bool:
        """Read more bytes into ``self.pending``; ``False`` at EOF.  Raises TimeoutError."""
        self.parser.check()  # what the bytes already read hold comes before waiting
        ep = self.ep
        if await ep.wait_data_or(None, timeout) is Ready.TIMEOUT:
            raise TimeoutError
        if not ep.buffer:  # EOF
            self.pending.extend(self.parser.feed_eof())
            return bool(self.pending)
        self.pending.extend(self.parser.feed(ep.take()))
        return True

    async def _read_head(self, keepalive_timeout: float | None) -> RequestHead | None:
        """Wait for the next request head; ``None`` when the connection should just close.

        Between requests nginx waits ``keepalive_timeout`` for the first byte and closes
        silently; from the first byte, ``client_header_timeout`` runs until the head is
        complete (expiry: close without a response, INFO "client timed out").
        """
        loop = self.gw.loop
        parser = self.parser
        if keepalive_timeout is not None and not self.pending and not parser.request_started:
            # ngx_http_set_keepalive sets c->idle, the first byte clears it
            # (ngx_http_keepalive_handler).
            self.idle = True
            try:
                if not await self._next_events(keepalive_timeout):
                    return None
            except TimeoutError:
                return None
            finally:
                self.idle = False
        deadline = loop.time() + self.default.client_header_timeout
        while True:
            if self.stat_state is None and (self.pending or parser.request_started):
                self.stat(READING)
            if self.pending:
                ev = self.pending.pop(0)
                if isinstance(ev, RequestHead):
                    return ev
                continue
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                if not await self._next_events(remaining):
                    return None
            except TimeoutError:
                if parser.request_started:
                    ctx = self.bare_ctx()
                    ctx.request_line = parser.request_line
                    self.gw.error_log.log(
                        "info",
                        "client timed out (110: Connection timed out) while reading "
                        "client request headers",
                        self.number,
                        ctx,
                    )
                    # nginx sends nothing but logs "408 0" once the request had started.
                    ctx.status = 408
                    self.log_access(self.default.settings, ctx, "", False)
                    raise _HeadTimedOut from None
                return None

    def nodelay_off(self) -> None:
        """``tcp_nodelay off``: Nagle's algorithm on again for this client connection
        (asyncio and uvloop set ``TCP_NODELAY`` on every TCP transport; nginx sets it only
        with ``tcp_nodelay on``, on keep-alive and upgraded connections)."""
        transport = self.ep.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and sock.family != socket.AF_UNIX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            except OSError:
                pass

    def _reset(self) -> None:
        """``reset_timedout_connection``: "Before closing a socket, the SO_LINGER option is
        set on it with a timeout value of 0. When the socket is closed, TCP RST is sent to
        the client, and all memory occupied by this socket is released" (nginx docs)."""
        transport = self.ep.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or sock.family == socket.AF_UNIX:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            return
        self.ep.abort()

    def body_ready(self) -> bool:
        """Whether more of the request body (bytes, or its end) is here, to be read."""
        return any(
            isinstance(ev, EndOfMessage) or (isinstance(ev, Body) and ev.data)
            for ev in self.pending
        )

    def discard_preread(self) -> None:
        """Raise the error of a body invalid in the bytes read with its head, if any (the
        rest is discarded after the response, :meth:`_discard_body`)."""
        if not self.body_done:
            self.parser.check()

    async def _discard_body(self, settings: LocationSettings) -> bool:
        """Read and drop the rest of a body nobody consumed (keep-alive needs it gone).

        ``ngx_http_discarded_request_body_handler``: at most ``lingering_timeout`` between
        two reads and ``lingering_time`` in all, then the connection is closed."""
        try:
            async with asyncio.timeout(settings.lingering_time):
                async for _ in self.body_events(settings.lingering_timeout):
                    pass
        except (HttpError, TimeoutError):
            return False
        return True

    def _lingers(self, settings: LocationSettings) -> bool:
        """``ngx_http_finalize_connection``: ``lingering_close always``, or ``on`` when the
        client may still be sending (a body not read to its end, bytes already here)."""
        mode = settings.lingering_close
        if mode == "off" or self.ep.closed or self.ep.eof or self.tls_vars is not None:
            # TLS: asyncio cannot send the close alert and keep reading (nginx's
            # ngx_ssl_shutdown first), and without it the client cannot tell the response
            # ended: the connection is closed at once.
            return False
        if mode == "always":
            return True
        body_unread = not self.body_done and not any(
            isinstance(ev, EndOfMessage) for ev in self.pending
        )
        return body_unread or bool(self.ep.buffer) or bool(self.parser.buffered)

    async def _linger(self, settings: LocationSettings) -> None:
        """nginx's lingering close (``ngx_http_set_lingering_close``): "nginx will wait for
        and process additional data from a client" before closing, so that a client still
        sending (the rest of a body its error response refused) reads the whole response
        instead of a reset.  The write side is shut down once the response is out, then
        what arrives is read and dropped until the client closes, ``lingering_timeout``
        passes without data, or ``lingering_time`` in all (a TLS connection cannot be
        half-closed, and does not linger: see :meth:`_lingers`)."""
        ep = self.ep
        transport = ep.transport
        if transport is None:
            return
        if transport.can_write_eof():
            transport.write_eof()
        loop = self.gw.loop
        deadline = loop.time() + settings.lingering_time
        ep.take()
        while not ep.eof:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            wait = min(settings.lingering_timeout, remaining)
            if await ep.wait_data_or(None, wait) is Ready.TIMEOUT:
                return
            ep.take()

    async def body_events(self, timeout: float, whole: bool = False) -> AsyncIterator[bytes]:
        """Yield the request body's decoded chunks until its end, waiting at most ``timeout``
        between two reads (``client_body_timeout``: "set only for a period between two
        successive read operations, not for the transmission of the whole request body").
        ``whole``: the body is read before proxying (an HTTP/2 stream's window opens; no
        matter here).

        Its expiry is 408: nginx ends the request without a response and closes
        (``ngx_http_finalize_request`` terminates a 408), with no error-log line (neither
        ``ngx_http_read_client_request_body_handler`` nor the upstream's
        ``ngx_http_upstream_read_request_handler`` logs one) and ``408`` in the access log.
        """
        pending = self.pending
        while True:
            while pending:
                # The chunks one read brought come as one piece, as nginx sends them on
                # (one chunk upstream for what one read gave: proxy_request_buffering off).
                n = 0
                while n < len(pending) and isinstance(pending[n], Body):
                    n += 1
                if n:
                    parts = [ev.data for ev in pending[:n] if isinstance(ev, Body)]
                    del pending[:n]
                    yield parts[0] if n == 1 else b"".join(parts)
                    continue
                if isinstance(pending.pop(0), EndOfMessage):
                    self.body_done = True
                    return
            try:
                more = await self._next_events(timeout)
            except TimeoutError:
                raise HttpError(408) from None
            if not more:
                raise HttpError(499, "client prematurely closed connection")

    # -- what every request of the connection shares -------------------------------------------
    def bare_ctx(self) -> RequestContext:
        """A request's variables as far as the connection knows them."""
        ctx = RequestContext(
            remote_addr=self.remote_addr,
            remote_port=self.remote_port,
            server_addr=self.local_addr,
            server_port=self.local_port,
            connection=self.number,
            maps=self.gw.config.http.maps,
        )
        ctx.server_name = self.default.name
        # ngx_http_init_connection: the default server's error_log until a request picks
        # its server.
        ctx.error_logs = self.default.settings.error_logs
        ctx.counters = self.gw.stub_status
        ctx.connection_start = time.time() - (self.gw.loop.time() - self.started)
        ctx.proxy_protocol = self.proxy_protocol
        if self.tls_vars is not None:
            ctx.scheme = "https"
            ctx.tls = self.tls_vars
        return ctx

    def stat(self, state: int | None) -> None:
        """Move this connection between ``stub_status``'s Reading, Writing and Waiting (None).

        nginx: requests and Reading go up when a request's first bytes arrive
        (``ngx_http_create_request``), Reading becomes Writing once the head is read
        (``ngx_http_process_request``), Writing goes down when the request is freed; Waiting
        is what is left of Active.  A tunnel ends its request when it closes, so it is
        counted here twice, at its start and end, and never on its hot path.
        """
        counters = self.gw.stub_status
        if self.stat_state is not None:
            counters.decrement(self.stat_state)
        if state is not None:
            counters.increment(state)
            if state == READING:
                counters.increment(REQUESTS)
        self.stat_state = state

    def log_access(
        self, settings: LocationSettings, ctx: RequestContext, location: str, upgrade: bool
    ) -> None:
        """The log phase of a request that was no tunnel: the metrics (by ``location``
        label, and whether it asked for an ``Upgrade``) and the access-log lines."""
        seconds = time.time() - ctx.start
        self.gw.metrics.request_done(ctx.server_name, location, ctx.status, upgrade, seconds)
        if settings.access_logs:
            if isinstance(ctx.uninitialized, UninitializedWarning):
                ctx.uninitialized.logging()
            self.gw.access_logs.write(settings.access_logs, ctx, settings.open_log_file_cache)
