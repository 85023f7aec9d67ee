"""One request, from its head to its log line: nginx's phases, then the response.

An :class:`Exchange` is made per request by the front connection.  It picks the virtual
server (nginx does it while reading the head), walks the phase handlers of
:mod:`wsgate.http.phases` (pure: they return decisions), sleeps on a ``limit_req`` delay, and
performs the decision: a redirect, a ``return``, ``stub_status``, ``prometheus``, or
``proxy_pass`` (:class:`wsgate.proxy.proxying.Proxying`); an
:class:`~wsgate.errors.HttpError` from any of them becomes nginx's error page.  Then the log
phase (:meth:`FrontConnection.log_access <wsgate.proxy.front.FrontConnection.log_access>`),
unless the request became a tunnel, whose close logs it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wsgate.config.model import LocationSettings
from wsgate.config.variables import RequestContext
from wsgate.content.sender import send_file
from wsgate.content.ssi import send_through_ssi, ssi_applies, ssi_framing
from wsgate.errors import HttpError
from wsgate.http.charset import apply_charset, charset_page
from wsgate.http.errorpages import ERROR_HANDLERS
from wsgate.http.gzip import GzipStream, gzip_page, gzip_response
from wsgate.http.headers import (
    LAST_CHUNK,
    BodyFraming,
    build_client_response_head,
    encode_chunk,
    for_version,
    http_date,
    last_chunk,
)
from wsgate.http.headers_filter import chunked_trailer, filter_headers, trailers, wants_trailer
from wsgate.http.pages import STATUS_LINES, closes_connection, error_response
from wsgate.http.phases import (
    Close,
    Content,
    Decision,
    Delay,
    Plain,
    Redirect,
    Request,
    release_slots,
    response_fields,
    run,
    uninitialized_warning,
)
from wsgate.http.request import RequestHead
from wsgate.http.static import FileResponse
from wsgate.http.suspend import Await, Offload, Pause, Subrequest
from wsgate.observability.metrics import CONTENT_TYPE, location_label
from wsgate.observability.status import stub_status_page
from wsgate.proxy.endpoint import PeerClosed
from wsgate.proxy.offload import offload
from wsgate.proxy.pacing import response_rate, send_paced
from wsgate.proxy.proxying import Proxying
from wsgate.routing import select_server

if TYPE_CHECKING:
    from wsgate.proxy.front import FrontConnection

__all__ = ["Exchange", "unreadable_head", "write_error"]

#: What a response leaves the connection with: keep it alive, and its ``keepalive_timeout``.
Outcome = tuple[bool, float | None]


class Exchange:
    """One request's owner: its phase state (:class:`~wsgate.http.phases.Request`), and the
    response it makes on the front connection."""

    __slots__ = ("front", "head", "upgrade", "r")

    def __init__(self, front: FrontConnection, head: RequestHead) -> None:
        self.front = front
        self.head = head
        #: The metrics' ``upgrade`` label: whether the client asked for one (even if
        #: ``proxy_upgrade_protocols`` then refuses it).
        self.upgrade = head.upgrade is not None
        ctx = front.bare_ctx()
        ctx.connection_requests = front.requests
        ctx.method, ctx.request_uri, ctx.version = head.method, head.target, head.version
        ctx.headers, ctx.request_line = head.headers, head.request_line
        ctx.host = head.host or ""
        ctx.request_length = head.head_size
        # ngx_http_set_virtual_server: while the head is read, before any phase.
        server = select_server(front.candidates, head.host, front.default)
        ctx.server_name = server.name
        ctx.error_logs = server.settings.error_logs
        self.r = Request(
            front.gw,
            front.number,
            head,
            ctx,
            server,
            tls_vars=front.tls_vars,
            plain_on_tls=front.plain_on_tls,
            connection_requests=front.requests,
            connection_started=front.started,
        )
        for line in head.ignored_headers:
            # ngx_http_process_request_headers, ignore_invalid_headers on.
            self.r.log("info", f'client sent invalid header line: "{line}"')
        names = front.gw.config.http.user_variables
        if names:
            ctx.uninitialized = uninitialized_warning(self.r, names)

    async def run(self, error: HttpError | None = None) -> Outcome:
        """Walk the phases and make the response; returns (keep the connection,
        keepalive_timeout).  An error the response meets (a proxied request's 502...) goes
        back to the phases, where ``error_page`` may redirect; one no error page answers
        gets nginx's page.  ``error``: the request starts with one (its head was
        unreadable)."""
        r = self.r
        index = 0
        try:
            while True:
                try:
                    decision, index = run(r, index, error=error, errors=ERROR_HANDLERS)
                except HttpError as final:
                    page, keep = error_page(
                        self.front,
                        final,
                        r.ctx,
                        self.head,
                        r.settings,
                        logged=True,
                        extra=response_fields(r),
                        main=not r.subrequest,
                    )
                    return await self.finish(page, keep)
                error = None
                try:
                    if isinstance(decision, Delay | Offload | Pause | Subrequest | Await):
                        # A failed wait (a subrequest's 500...) is an error like any other.
                        await self._wait(decision)
                        continue
                    return await self._respond(decision)
                except HttpError as exc:
                    error = exc
        finally:
            # A tunnel's request ends when the tunnel closes (its TunnelEnd has the slots).
            if self.front.tunnel is None:
                release_slots(r)

    async def _wait(self, decision: Delay | Offload | Pause | Subrequest | Await) -> None:
        """A ``limit_req`` delay, or a wait of :mod:`wsgate.http.suspend`."""
        if isinstance(decision, Delay | Pause):
            await asyncio.sleep(decision.seconds)
        elif isinstance(decision, Offload):
            await offload(decision.job)
        elif isinstance(decision, Await):
            await decision.call()  # a zone kept in Redis (it bounds its own wait)
        else:
            from wsgate.proxy.subrequest import run_subrequest  # it builds on Exchange

            await run_subrequest(self, decision)

    @property
    def location(self) -> str:
        """The ``location`` label of the metrics (``""`` before one is chosen)."""
        return location_label(self.r.location)

    async def _respond(self, decision: Decision) -> Outcome:
        r = self.r
        if not r.settings.tcp_nodelay:
            self.front.nodelay_off()
        if decision is not Content.PROXY:
            # ngx_http_discard_request_body: the body bytes read with the head are looked at
            # before a response made without the body; an invalid chunk there is a 400.
            self.front.discard_preread()
        if isinstance(decision, Redirect):
            return await self.redirect(decision.status, decision.location)
        if isinstance(decision, Plain):
            if (
                r.settings.ssi
                and decision.body
                and ssi_applies(
                    r.settings, decision.status, [("Content-Type", decision.content_type or "")]
                )
            ):
                return await self.plain_ssi(decision.status, decision.body, decision.content_type)
            return await self.plain(decision.status, decision.body, decision.content_type)
        if isinstance(decision, Close):
            r.ctx.status = decision.status
            self.log()
            return False, None
        if decision is Content.STUB_STATUS:
            # The counters as they are now (this request is one of the Writing connections);
            # a body is discarded by the front connection (ngx_http_discard_request_body).
            body = stub_status_page(self.front.gw.stub_status.snapshot())
            return await self.plain(200, body, "text/plain")
        if decision is Content.PROMETHEUS:
            # The metrics of every worker, with this worker's live tunnels flushed first.
            metrics = self.front.gw.metrics
            metrics.flush()
            return await self.plain(200, metrics.exposition(), CONTENT_TYPE)
        if decision is Content.READINESS:
            # wsgate's: what a balancer's health check reads; 503 from QUIT on, so that the
            # balancer takes the node out of its pool during ``shutdown_grace``.
            if self.front.gw.quitting:
                return await self.plain(503, b"draining\n", "text/plain")
            return await self.plain(200, b"ready\n", "text/plain")
        if decision is Content.UPSTREAM_CONTROL:
            control = self.front.gw.control
            if control is None:  # pragma: no cover - every served gateway has one
                raise HttpError(503)
            status, body = control.endpoint(r.ctx.lookup("args"))
            return await self.plain(status, body, "application/json")
        if decision is Content.PROXY:
            return await Proxying(self).run()
        if isinstance(decision, FileResponse):
            return await send_file(self, decision)
        raise AssertionError(f"no response for {decision!r}")  # pragma: no cover

    # -- responses made here -------------------------------------------------------------------
    async def finish(self, data: bytes | None, keep: bool) -> Outcome:
        """Send a response made here (a page, a ``return`` text, a redirect) whole and log
        the request.  One write; under ``limit_rate``, paced as nginx's write filter paces
        every response, pages included (stub_status.t: a 404 at ``limit_rate 15`` is still
        "writing" seconds later).  A client gone meanwhile closes the connection."""
        r = self.r
        if data is not None:
            rate = response_rate(r.settings, r.ctx, lambda text: r.log("error", text))
            if rate is None:
                self.front.ep.write(data)
            else:
                try:
                    await send_paced(self.front.ep, data, rate, 0)
                except (PeerClosed, ConnectionError):
                    keep = False
        self.log()
        return keep, r.settings.keepalive_timeout

    async def redirect(self, status: int, location: str) -> Outcome:
        head, settings, ctx = self.head, self.r.settings, self.r.ctx
        keep = head.keep_alive
        ctx.status = status
        now = time.time()
        _, added = filter_headers(
            status, [], settings.add_headers, settings.expires, ctx.lookup, now
        )
        # ngx_http_header_filter writes a Location it made absolute after Content-Length;
        # any other stays among the response's fields, before add_header's.
        absolute = self.r.absolute(location)
        if absolute == location:
            added = [("Location", location), *added]
        added = [*response_fields(self.r, redirect=True), *added]
        data = error_response(
            status,
            server_tokens=settings.server_tokens,
            user_agent=ctx.header("user-agent"),
            keep_alive=keep,
            date=http_date(now),
            location=absolute if absolute != location else None,
            head_only=head.method == "HEAD",
            added=added,
            trailer=chunked_trailer(status, head.method, head.version, settings, ctx.lookup, ctx),
            msie_padding=settings.msie_padding,
        )
        data = charset_page(settings, status, data, ctx.lookup, self.r.log)
        ctx.sent_head = data[: data.index(b"\r\n\r\n") + 2]
        data = for_version(head.version, data)
        ctx.status = status
        ctx.bytes_sent = len(data)
        return await self.finish(data, keep)

    def _text_head(
        self, status: int, body: bytes, ctype: str | None, ssi: bool
    ) -> tuple[bytes, bytes, bool, bool, GzipStream | None]:
        """The head of a text made here (``ctx.sent_head`` set), the body in the response's
        charset, whether the connection stays, whether the body is chunked, and the gzip
        stream it goes through (None: sent as it is).  Its length is known unless ``ssi``
        (the SSI filter's output: chunked for HTTP/1.1, else to the close) or gzip;
        ``add_trailer`` chunks it too."""
        head, settings, ctx = self.head, self.r.settings, self.r.ctx
        if settings.charset is not None:
            ctype, recode = apply_charset(settings, ctype, ctx.lookup, self.r.log, status)
            if recode is not None:
                body = body.translate(recode)
        headers = [("Content-Type", ctype)] if ctype else []
        headers += response_fields(self.r)
        # ngx_http_send_header: "if (r->err_status) r->headers_out.status = r->err_status".
        status = self.r.err_status or status
        ctx.status = status
        now = time.time()
        headers, added = filter_headers(
            status, headers, settings.add_headers, settings.expires, ctx.lookup, now
        )
        keep = head.keep_alive
        chunked = wants_trailer(status, head.method, head.version, settings)
        gz: GzipStream | None = None
        if settings.gzip and not self.r.subrequest:
            headers, added, gz = gzip_response(
                settings,
                ctx.headers,
                ctx.version,
                status,
                headers,
                added,
                None if ssi else len(body),
                now,
            )
        if ssi or gz is not None:
            plan = ssi_framing(settings, head, status, keep, trailers=chunked)
            framing, keep, chunked = plan.framing, plan.keep_alive, plan.chunked
        elif chunked:
            framing = BodyFraming.chunked()
        else:
            framing = BodyFraming.content_length(len(body)) if status != 204 else BodyFraming.none()
        out = build_client_response_head(
            status,
            STATUS_LINES.get(status, ""),
            headers,
            server_tokens=settings.server_tokens,
            date=http_date(now),
            framing=framing,
            keep_alive=keep,
            keepalive_header=settings.keepalive_header,
            upgrade=False,
            added=added,
        )
        ctx.sent_head = out
        return out, body, keep, chunked, gz

    async def plain(self, status: int, body: bytes, ctype: str | None) -> Outcome:
        head, settings, ctx = self.head, self.r.settings, self.r.ctx
        out, body, keep, with_trailer, gz = self._text_head(status, body, ctype, ssi=False)
        status = ctx.status  # an error page's status (r->err_status), as the head has it
        if gz is not None and head.method != "HEAD":
            # A text made here is whole: compressed at once.
            body = gz.compress(body) + gz.finish()
            ctx.gzip_ratio = gz.ratio
        if with_trailer:
            # Rendered when the body ends: $sent_http_* see the head.
            trailer = trailers(status, settings.add_trailers, ctx.lookup, ctx)
            body = encode_chunk(body) + last_chunk(trailer)
        if head.method != "HEAD":
            out += body
        out = for_version(head.version, out)
        ctx.bytes_sent = len(out)
        ctx.body_bytes_sent = len(body) if head.method != "HEAD" else 0
        return await self.finish(out, keep)

    async def plain_ssi(self, status: int, body: bytes, ctype: str | None) -> Outcome:
        """A ``return`` text that is an SSI document (``ssi on``, a type of ``ssi_types``):
        :meth:`plain` through the SSI filter, its length unknown."""
        head, settings, ctx = self.head, self.r.settings, self.r.ctx
        out, body, keep, chunked, gz = self._text_head(status, body, ctype, ssi=True)
        out = for_version(head.version, out)
        ep = self.front.ep
        try:
            if head.method == "HEAD":
                ep.write(out)
                sent = len(out)
            else:
                sent = await send_through_ssi(
                    self, out, (body,), chunked, settings.send_timeout, gz
                )
                if gz is not None:
                    ctx.gzip_ratio = gz.ratio
                if chunked:
                    ep.write(LAST_CHUNK)
                    sent += len(LAST_CHUNK)
            ctx.bytes_sent = sent
            ctx.body_bytes_sent = sent - len(out)
        except TimeoutError:
            self.r.log(
                "info",
                "client timed out (110: Connection timed out) while sending response to client",
            )
            ep.abort()
            keep = False
        except (PeerClosed, ConnectionError):
            keep = False
        self.log()
        return keep, settings.keepalive_timeout

    def log(self) -> None:
        """The log phase of a request that is no tunnel."""
        self.front.log_access(self.r.settings, self.r.ctx, self.location, self.upgrade)


def unreadable_head() -> RequestHead:
    """The head of a request whose head could not be read, for its error page: nginx knows
    no method (``ngx_http_send_error_page`` makes it GET), no URI, and closes after it."""
    return RequestHead("GET", "", "1.1", [], False, None, False, None, None, "", 0)


def write_error(
    front: FrontConnection,
    exc: HttpError,
    ctx: RequestContext,
    head: RequestHead | None,
    settings: LocationSettings,
    location: str,
    upgrade: bool,
) -> Outcome:
    """nginx's error response for bad input before a request head (``head`` None) or for
    a head no location took: :func:`error_page`, written at once, then the log phase
    (``location`` and ``upgrade``: the metrics' labels).  A request's own errors go through
    :meth:`Exchange.finish`, which paces them under ``limit_rate``."""
    data, keep = error_page(front, exc, ctx, head, settings)
    if data is not None:
        front.ep.write(data)
    front.log_access(settings, ctx, location, upgrade)
    return keep, settings.keepalive_timeout


def error_page(
    front: FrontConnection,
    exc: HttpError,
    ctx: RequestContext,
    head: RequestHead | None,
    settings: LocationSettings,
    *,
    logged: bool = False,
    extra: Sequence[tuple[str, str]] = (),
    main: bool = True,
) -> tuple[bytes | None, bool]:
    """nginx's error response for ``exc`` and whether the connection stays: None for 408,
    444 and 499, which close.  Logs its error-log line unless ``logged``
    (:func:`~wsgate.http.phases.on_error` did); ``head`` is None for bad input before a
    head.  ``extra`` fields come before ``add_header``'s (an intercepted 401's
    ``WWW-Authenticate``).  ``main``: not a subrequest (whose pages are never gzipped:
    ``ngx_http_gzip_ok`` declines "if (r != r->main)")."""
    level = exc.log_level
    if level is not None and not logged:
        front.gw.error_log.log(level, exc.log, front.number, ctx)
    keep = head is not None and head.keep_alive and not closes_connection(exc.status)
    # 495-497 are sent and logged as 400 (ngx_http_special_response_handler sets
    # ``r->err_status = NGX_HTTP_BAD_REQUEST`` for them).
    ctx.status = 400 if exc.status in (495, 496, 497) else exc.status
    if exc.status not in (408, 444, 499):
        # add_header: only ``always`` ones reach an error page (no error status is "safe").
        # expires: no error status is "safe" either.
        now = time.time()
        _, added = filter_headers(
            ctx.status, [], settings.add_headers, settings.expires, ctx.lookup, now
        )
        # The handlers' fields come before the header filter's (a 401's WWW-Authenticate,
        # the range filter's 416 Content-Range).
        added = [*exc.headers, *added]
        trailer = None
        if head is not None:
            trailer = chunked_trailer(
                ctx.status, head.method, head.version, settings, ctx.lookup, ctx
            )
        data = error_response(
            exc.status,
            server_tokens=settings.server_tokens,
            user_agent=ctx.header("user-agent"),
            keep_alive=keep,
            date=http_date(now),
            head_only=head is not None and head.method == "HEAD",
            added=[*extra, *added],
            trailer=trailer,
            msie_padding=settings.msie_padding,
        )
        data = charset_page(
            settings,
            exc.status,
            data,
            ctx.lookup,
            lambda level, text: front.gw.error_log.log(level, text, front.number, ctx),
        )
        if settings.gzip and head is not None and main:
            data, keep = gzip_page(
                settings, ctx.headers, head.version, ctx.status, data, keep, head.method == "HEAD"
            )
        ctx.sent_head = data[: data.index(b"\r\n\r\n") + 2]
        ctx.body_bytes_sent = len(data) - len(ctx.sent_head) - 2
        if head is not None:
            data = for_version(head.version, data)
        ctx.bytes_sent = len(data)
        return data, keep
    return None, False
