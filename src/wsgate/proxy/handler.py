"""One client connection, from accept to close: requests in order, proxied, or a tunnel.

The flow for each request (pipelined requests are handled strictly in order):
read the head (``client_header_timeout``) → pick the server and location (pure
:mod:`wsgate.routing`) → ``return``/redirect, ``limit_req``/``limit_conn`` (pure
:mod:`wsgate.limits`; 503 or a delay), ``allow``/``deny`` (pure :mod:`wsgate.access`;
403), 404, or proxy: pick a peer (pure
:mod:`wsgate.upstream.roundrobin`), connect (``proxy_connect_timeout``, next peer on
error/timeout as ``proxy_next_upstream error timeout``), send the rebuilt head and the body,
read the response head (``proxy_read_timeout``), then either stream the response back or, on
``101`` to a request that carried ``Upgrade``, hand both transports to
:class:`wsgate.proxy.tunnel.Tunnel`.  One access-log line per request, written when it ends
(a tunnel when it closes).
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from wsgate.access import check_access
from wsgate.config.model import LocationSettings
from wsgate.config.variables import RequestContext
from wsgate.errors import HttpError
from wsgate.http.body import Body, EndOfMessage
from wsgate.http.headers import (
    BodyFraming,
    build_client_response_head,
    for_version,
    http_date,
)
from wsgate.http.pages import STATUS_LINES, closes_connection, error_response
from wsgate.http.request import (
    HeadLimits,
    IncompleteRequest,
    RequestEvent,
    RequestHead,
    RequestParser,
)
from wsgate.limits import ConnZone, Refused, ReqZone, check_requests
from wsgate.observability.metrics import CONTENT_TYPE, location_label
from wsgate.observability.status import READING, REQUESTS, WRITING, stub_status_page
from wsgate.proxy.endpoint import Endpoint
from wsgate.proxy.forward import Forwarder
from wsgate.proxy.relay import TunnelEnd
from wsgate.proxy.tunnel import Tunnel
from wsgate.routing import (
    find_location,
    needs_slash_redirect,
    normalize_uri,
    select_server,
    split_target,
)
from wsgate.server.tls import (
    connection_variables,
    handshake,
    handshake_error,
    is_tls_hello,
)

if TYPE_CHECKING:
    from wsgate.proxy.context import WorkerContext
    from wsgate.server.gateway import ListenGroup

__all__ = ["ClientConnection"]

#: ``delay_log_level``: "Logging level for delays is one point less than for refusals".
_LEVEL_BELOW = {"notice": "info", "warn": "notice", "error": "warn"}

#: nginx's ``client_body_timeout`` default: the longest pause between two reads of a body.
CLIENT_BODY_TIMEOUT = 60.0


class ClientConnection(Forwarder):
    """Serves one accepted connection until it closes."""

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
        "conn_slots",
        "task_done",
    )

    def __init__(self, gw: WorkerContext, ep: Endpoint, group: ListenGroup, number: int) -> None:
        self.gw = gw
        self.ep = ep
        self.group = group
        self.number = number
        transport = ep.transport
        assert transport is not None
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
        self.tunnel: Tunnel | None = None
        #: ``stub_status``: READING, WRITING, or None for Waiting (see :meth:`_stat`).
        self.stat_state: int | None = None
        self.parser: RequestParser
        self.pending: list[RequestEvent] = []
        self.body_done = True
        #: ``$https``/``$ssl_*`` of a TLS connection (None: plain TCP).
        self.tls_vars: dict[str, str] | None = None
        #: Plain HTTP arrived on a ``listen ... ssl`` address: every request gets 497.
        self.plain_on_tls = False
        #: ``limit_conn`` slots the current request holds (released when it ends); a tuple,
        #: the shared empty one when none, since an open tunnel keeps its connection.
        self.conn_slots: tuple[tuple[ConnZone, str], ...] = ()
        #: Metrics labels of the request being served: (its context, location, has Upgrade).
        self.metric_req: tuple[RequestContext | None, str, bool] = (None, "", False)
        self.tunnel_end: TunnelEnd | None = None
        self.task_done = False

    # -- the connection loop ------------------------------------------------------------------
    async def run(self) -> None:
        default = self.default
        if self.group.tls is not None and not await self._start_tls():
            self.ep.close()
            return
        parser = RequestParser(
            HeadLimits(
                default.client_header_buffer_size,
                default.large_client_header_buffers[0],
                default.large_client_header_buffers[1],
                default.max_headers,
            )
        )
        self.parser = parser
        keepalive_timeout: float | None = None
        try:
            while True:
                if self.gw.stopping and self.requests:
                    return
                try:
                    if self.requests:
                        # Bytes pipelined behind the last request are parsed now: their
                        # errors are answered as a first request's are.
                        self.pending = parser.next_request()
                    head = await self._read_head(keepalive_timeout)
                except HttpError as exc:
                    # Bad input before a head exists: nginx's 400/414/494/501/505 and close.
                    if not isinstance(exc, IncompleteRequest):
                        await self._error(exc, self._bare_ctx(), None, default.settings)
                    return
                if head is None:
                    return
                self._stat(WRITING)
                self.requests += 1
                self.body_done = False
                keep, keepalive_timeout = await self._serve(head)
                if not keep or self.gw.stopping or self.tunnel is not None:
                    return
                if not self.body_done:
                    keep = await self._discard_body()
                    if not keep:
                        return
                self._stat(None)
        finally:
            # A tunnel's request (and connection) ends when the tunnel closes.
            if self.tunnel is None:
                self._stat(None)
                self.ep.close()
            else:
                # Not needed again, and would otherwise live as long as the tunnel (the
                # endpoint too: the tunnel's side is the transport's protocol now).
                del self.parser, self.pending, self.ep, self.started

    def task_ended(self) -> bool:
        """The task running :meth:`run` has ended; ``True`` when an open tunnel now holds the
        connection, which then ends when the tunnel closes (:meth:`_tunnel_closed`)."""
        self.task_done = True
        return self.tunnel_end is not None

    def _tunnel_finished(self) -> None:
        """An open tunnel's request has ended (it closed, or a fast stop abandoned it): what
        ``_serve`` and :meth:`run` do when a request ends (``limit_conn`` slots released,
        ``stub_status`` Writing left), then the connection ends if its task already has."""
        for zone, key in self.conn_slots:
            zone.release(key)
        self.conn_slots = ()
        self._stat(None)
        if self.task_done:
            self.gw.connection_closed(self)

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
            ctx = self._bare_ctx()
            host = f"[{self.local_addr}]" if ":" in self.local_addr else self.local_addr
            ctx.server_name = f"{host}:{self.local_port}"
            self.gw.error_log.log("info", handshake_error(exc), self.number, ctx)
            return False
        obj = ep.transport.get_extra_info("ssl_object")
        if isinstance(obj, ssl.SSLObject):
            self.tls_vars = connection_variables(obj)
        return True

    async def _next_events(self, timeout: float) -> bool:
        """Read more bytes into ``self.pending``; ``False`` at EOF.  Raises TimeoutError."""
        self.parser.check()  # what the bytes already read hold comes before waiting
        ep = self.ep
        if not await ep.wait_data_or(None, timeout):
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
                self._stat(READING)
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
                    ctx = self._bare_ctx()
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
                    self._log_access(self.default.settings, ctx)
                return None

    async def _discard_body(self) -> bool:
        """Read and drop the rest of a body nobody consumed (keep-alive needs it gone)."""
        try:
            async for _ in self._body_events():
                pass
        except HttpError:
            return False
        return True

    def _bare_ctx(self) -> RequestContext:
        ctx = RequestContext(
            remote_addr=self.remote_addr,
            remote_port=self.remote_port,
            server_addr=self.local_addr,
            server_port=self.local_port,
            connection=self.number,
            maps=self.gw.config.http.maps,
        )
        ctx.server_name = self.default.name
        ctx.counters = self.gw.stub_status
        if self.tls_vars is not None:
            ctx.scheme = "https"
            ctx.tls = self.tls_vars
        return ctx

    # -- one request --------------------------------------------------------------------------
    async def _serve(self, head: RequestHead) -> tuple[bool, float | None]:
        """Handle one request; returns (keep the connection, keepalive_timeout)."""
        ctx = self._bare_ctx()
        ctx.connection_requests = self.requests
        ctx.method, ctx.request_uri, ctx.version = head.method, head.target, head.version
        ctx.headers, ctx.request_line = head.headers, head.request_line
        ctx.host = head.host or ""
        ctx.request_length = head.head_size
        server = select_server(self.candidates, head.host, self.default)
        ctx.server_name = server.name
        self.metric_req = (ctx, "", head.upgrade is not None)
        settings: LocationSettings = server.settings
        try:
            path, args = split_target(head.target)
            uri = normalize_uri(path)
            ctx.uri, ctx.args = uri, args
            if not ctx.host:
                ctx.host = server.name
            if self.plain_on_tls:
                raise HttpError(497, "client sent plain HTTP request to HTTPS port")
            if self.tls_vars is not None and server.ssl is not None:
                self._check_client_certificate(server.ssl.verify_client)
            if server.settings.return_ is not None:
                return await self._return(server.settings, ctx, head)
            location, captures = find_location(server, uri)
            ctx.captures = captures
            if location is not None:
                settings = location.settings
                self.metric_req = (ctx, location_label(location), head.upgrade is not None)
            if (
                settings.keepalive_timeout == 0
                or self.requests >= settings.keepalive_requests
                or self.gw.loop.time() - self.started >= settings.keepalive_time
                or self.gw.stopping
            ):
                # keepalive_timeout 0 disables keep-alive; keepalive_requests caps a connection
                # (https://nginx.org/en/docs/http/ngx_http_core_module.html#keepalive_requests).
                head.keep_alive = False
            if location is not None and needs_slash_redirect(location, uri):
                target = f"{uri}/" + (f"?{args}" if args else "")
                return await self._redirect(settings, ctx, head, 301, self._absolute(ctx, target))
            if settings.return_ is not None:
                return await self._return(settings, ctx, head)
            # Preaccess phase, after rewrite and before access: nginx runs limit_req, then
            # limit_conn (handlers of one phase run in reverse module order).
            if settings.limit_req:
                await self._limit_req(settings, ctx)
            if settings.limit_conn:
                self._limit_conn(settings, ctx)
            # Access phase, after rewrite (``return``): "The rules are checked in sequence
            # until the first match is found." (ngx_http_access_module)
            if settings.access_rules:
                rule = check_access(settings.access_rules, self.remote_addr)
                if rule is not None and not rule.allow:
                    raise HttpError(403, "access forbidden by rule")
            if settings.stub_status:
                return await self._stub_status(settings, ctx, head)
            if settings.prometheus:
                return await self._prometheus(settings, ctx, head)
            if settings.proxy_pass is None:
                raise HttpError(404)
            if (
                head.content_length is not None
                and settings.client_max_body_size
                and head.content_length > settings.client_max_body_size
            ):
                raise HttpError(
                    413, f"client intended to send too large body: {head.content_length} bytes"
                )
            return await self._proxy(head, ctx, settings, location, settings.proxy_pass)
        except HttpError as exc:
            return await self._error(exc, ctx, head, settings)
        finally:
            # A tunnel's request ends when the tunnel closes (``_tunnel_closed``).
            if self.tunnel is None:
                for zone, key in self.conn_slots:
                    zone.release(key)
                self.conn_slots = ()

    async def _limit_req(self, settings: LocationSettings, ctx: RequestContext) -> None:
        """ngx_http_limit_req_handler: "If the requests rate exceeds the rate configured for a
        zone, their processing is delayed such that requests are processed at a defined rate.
        Excessive requests are delayed until their number exceeds the maximum burst size in
        which case the request is terminated with an error."  "Requests with an empty key
        value are not accounted."  Delays are logged one level below refusals."""
        entries: list[tuple[ReqZone, str, int, int]] = []
        for lr in settings.limit_req:
            spec = lr.zone
            key = spec.key.render(ctx.lookup)
            if key:
                zone = self.gw.limits.req_zone(spec.name, spec.rate)
                entries.append((zone, key, lr.burst, lr.delay))
        decision = check_requests(entries, int(self.gw.loop.time() * 1000))
        dry = ", dry run" if settings.limit_req_dry_run else ""
        level = settings.limit_req_log_level
        excess = f"{decision.excess // 1000}.{decision.excess % 1000:03d}"
        if decision.rejected is not None:
            if decision.no_memory:
                self.gw.error_log.log(
                    "alert",
                    f'could not allocate node in limit_req zone "{decision.rejected}"',
                    self.number,
                    ctx,
                )
            else:
                self.gw.error_log.log(
                    level,
                    f'limiting requests{dry}, excess: {excess} by zone "{decision.rejected}"',
                    self.number,
                    ctx,
                )
            if not dry:
                raise HttpError(settings.limit_req_status)
        elif decision.delay_ms:
            lower = "info" if level == "info" else _LEVEL_BELOW[level]
            self.gw.error_log.log(
                lower,
                f'delaying request{dry}, excess: {excess}, by zone "{decision.zone}"',
                self.number,
                ctx,
            )
            if not dry:
                await asyncio.sleep(decision.delay_ms / 1000)

    def _limit_conn(self, settings: LocationSettings, ctx: RequestContext) -> None:
        """ngx_http_limit_conn_handler: "When this limit is exceeded, the server will return
        the error in reply to a request."  "Connections with an empty key value are not
        accounted."  The slots taken are kept in ``self.conn_slots`` until the request (or
        its tunnel) ends."""
        for lc in settings.limit_conn:
            spec = lc.zone
            key = spec.key.render(ctx.lookup)
            if not key:
                continue
            zone = self.gw.limits.conn_zone(spec.name)
            got = zone.acquire(key, lc.conn)
            if got is True:
                self.conn_slots += ((zone, key),)
                continue
            dry = settings.limit_conn_dry_run
            if got is Refused.NO_MEMORY:
                # nginx: the slab allocator's line, and the limit's status.
                self.gw.error_log.log(
                    "crit",
                    f'ngx_slab_alloc() failed: no memory in limit_conn_zone "{spec.name}"',
                    self.number,
                    ctx,
                )
            else:
                self.gw.error_log.log(
                    settings.limit_conn_log_level,
                    f'limiting connections{", dry run" if dry else ""} by zone "{spec.name}"',
                    self.number,
                    ctx,
                )
            if not dry:
                raise HttpError(settings.limit_conn_status)

    def _check_client_certificate(self, verify: str) -> None:
        """nginx's ``ngx_http_process_request``: with ``ssl_verify_client``, a certificate
        that did not verify is 495 ("400 The SSL certificate error"), and with ``on`` a
        missing one is 496 ("400 No required SSL certificate was sent")."""
        assert self.tls_vars is not None
        result = self.tls_vars["ssl_client_verify"]
        if verify == "off":
            return
        if result.startswith("FAILED") and verify != "optional_no_ca":
            raise HttpError(495, f"client SSL certificate verify error: ({result[7:]})")
        if verify == "on" and result == "NONE":
            raise HttpError(496, "client sent no required SSL certificate")

    def _absolute(self, ctx: RequestContext, target: str) -> str:
        host = ctx.host or self.local_addr
        default_port = 443 if ctx.scheme == "https" else 80
        port = "" if self.local_port == default_port else f":{self.local_port}"
        return f"{ctx.scheme}://{host}{port}{target}"

    async def _error(
        self,
        exc: HttpError,
        ctx: RequestContext,
        head: RequestHead | None,
        settings: LocationSettings,
    ) -> tuple[bool, float | None]:
        if exc.log and exc.status != 404:
            level = "error" if exc.status in (403, 413, 500, 502, 504) else "info"
            self.gw.error_log.log(level, exc.log, self.number, ctx)
        keep = head is not None and head.keep_alive and not closes_connection(exc.status)
        # 495-497 are sent and logged as 400 (ngx_http_special_response_handler sets
        # ``r->err_status = NGX_HTTP_BAD_REQUEST`` for them).
        ctx.status = 400 if exc.status in (495, 496, 497) else exc.status
        if exc.status not in (408, 444, 499):
            data = error_response(
                exc.status,
                server_tokens=settings.server_tokens,
                user_agent=ctx.header("user-agent"),
                keep_alive=keep,
                date=http_date(time.time()),
                head_only=head is not None and head.method == "HEAD",
            )
            ctx.body_bytes_sent = len(data) - data.index(b"\r\n\r\n") - 4
            if head is not None:
                data = for_version(head.version, data)
            self.ep.write(data)
            ctx.bytes_sent = len(data)
        else:
            keep = False
        self._log_access(settings, ctx)
        return keep, settings.keepalive_timeout

    async def _redirect(
        self,
        settings: LocationSettings,
        ctx: RequestContext,
        head: RequestHead,
        status: int,
        location: str,
    ) -> tuple[bool, float | None]:
        keep = head.keep_alive
        data = error_response(
            status,
            server_tokens=settings.server_tokens,
            user_agent=ctx.header("user-agent"),
            keep_alive=keep,
            date=http_date(time.time()),
            location=location,
            head_only=head.method == "HEAD",
        )
        data = for_version(head.version, data)
        self.ep.write(data)
        ctx.status = status
        ctx.bytes_sent = len(data)
        self._log_access(settings, ctx)
        return keep, settings.keepalive_timeout

    async def _return(
        self, settings: LocationSettings, ctx: RequestContext, head: RequestHead
    ) -> tuple[bool, float | None]:
        ret = settings.return_
        assert ret is not None
        text = ret.text.render(ctx.lookup) if ret.text is not None else None
        if ret.code in (301, 302, 303, 307, 308) and text is not None:
            if text.startswith("/"):
                text = self._absolute(ctx, text)
            return await self._redirect(settings, ctx, head, ret.code, text)
        if ret.code == 444:
            ctx.status = 444
            self._log_access(settings, ctx)
            return False, None
        if text is None:
            if ret.code >= 400:
                raise HttpError(ret.code)
            return await self._plain(settings, ctx, head, ret.code, b"", None)
        return await self._plain(settings, ctx, head, ret.code, text.encode(), "text/plain")

    async def _plain(
        self,
        settings: LocationSettings,
        ctx: RequestContext,
        head: RequestHead,
        status: int,
        body: bytes,
        ctype: str | None,
    ) -> tuple[bool, float | None]:
        headers = [("Content-Type", ctype)] if ctype else []
        keep = head.keep_alive
        framing = BodyFraming.content_length(len(body)) if status != 204 else BodyFraming.none()
        out = build_client_response_head(
            status,
            STATUS_LINES.get(status, ""),
            headers,
            server_tokens=settings.server_tokens,
            date=http_date(time.time()),
            framing=framing,
            keep_alive=keep,
            keepalive_header=settings.keepalive_header,
            upgrade=False,
        )
        if head.method != "HEAD":
            out += body
        out = for_version(head.version, out)
        self.ep.write(out)
        ctx.status = status
        ctx.bytes_sent = len(out)
        ctx.body_bytes_sent = len(body) if head.method != "HEAD" else 0
        self._log_access(settings, ctx)
        return keep, settings.keepalive_timeout

    async def _stub_status(
        self, settings: LocationSettings, ctx: RequestContext, head: RequestHead
    ) -> tuple[bool, float | None]:
        """ngx_http_stub_status_handler: "if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD)))
        return NGX_HTTP_NOT_ALLOWED;", else ``text/plain`` with the counters as they are now
        (this request is one of the Writing connections).  A body is discarded by
        :meth:`run`, as nginx's ``ngx_http_discard_request_body``."""
        if head.method not in ("GET", "HEAD"):
            raise HttpError(405)
        body = stub_status_page(self.gw.stub_status.snapshot())
        return await self._plain(settings, ctx, head, 200, body, "text/plain")

    async def _prometheus(
        self, settings: LocationSettings, ctx: RequestContext, head: RequestHead
    ) -> tuple[bool, float | None]:
        """``prometheus`` (wsgate's): the metrics of every worker in text format 0.0.4, with
        this worker's live tunnels flushed first; other methods than GET and HEAD get 405, as
        ``stub_status``."""
        if head.method not in ("GET", "HEAD"):
            raise HttpError(405)
        self.gw.metrics.flush()
        body = self.gw.metrics.exposition()
        return await self._plain(settings, ctx, head, 200, body, CONTENT_TYPE)

    def _stat(self, state: int | None) -> None:
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

    def _log_access(self, settings: LocationSettings, ctx: RequestContext) -> None:
        if self.tunnel is None:  # a tunnel is counted when it opens and closes (relay.py)
            req, location, upgrade = self.metric_req
            if req is not ctx:  # ended before _serve knew it (408 reading the head)
                location, upgrade = "", False
            seconds = time.time() - ctx.start
            self.gw.metrics.request_done(ctx.server_name, location, ctx.status, upgrade, seconds)
        if settings.access_logs:
            self.gw.access_logs.write(settings.access_logs, ctx)

    async def _body_events(self) -> AsyncIterator[bytes]:
        """Yield the request body's decoded chunks until its end."""
        while True:
            while self.pending:
                ev = self.pending.pop(0)
                if isinstance(ev, Body):
                    yield ev.data
                elif isinstance(ev, EndOfMessage):
                    self.body_done = True
                    return
            try:
                more = await self._next_events(CLIENT_BODY_TIMEOUT)
            except TimeoutError:
                raise HttpError(
                    408,
                    "client timed out (110: Connection timed out) while "
                    "reading client request body",
                ) from None
            if not more:
                raise HttpError(499, "client prematurely closed connection")
