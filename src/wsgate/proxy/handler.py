"""One client connection, from accept to close: requests in order, proxied, or a tunnel.

The flow for each request (pipelined requests are handled strictly in order):
read the head (``client_header_timeout``) → pick the server and location (pure
:mod:`wsgate.routing`) → ``return``/redirect/404, or proxy: pick a peer (pure
:mod:`wsgate.upstream.roundrobin`), connect (``proxy_connect_timeout``, next peer on
error/timeout as ``proxy_next_upstream error timeout``), send the rebuilt head and the body,
read the response head (``proxy_read_timeout``), then either stream the response back or, on
``101`` to a request that carried ``Upgrade``, hand both transports to
:class:`wsgate.proxy.tunnel.Tunnel`.  One access-log line per request, written when it ends
(a tunnel when it closes).
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from wsgate.config.model import Location, LocationSettings, ProxyPass
from wsgate.config.variables import RequestContext
from wsgate.errors import HttpError
from wsgate.http.body import Body, EndOfMessage
from wsgate.http.headers import (
    LAST_CHUNK,
    BodyFraming,
    Framing,
    build_client_response_head,
    build_upstream_request,
    encode_chunk,
    http_date,
)
from wsgate.http.pages import closes_connection, error_response
from wsgate.http.request import (
    HeadLimits,
    IncompleteRequest,
    RequestEvent,
    RequestHead,
    RequestParser,
)
from wsgate.http.response import ResponseEvent, ResponseHead, ResponseParser
from wsgate.proxy.endpoint import Endpoint, PeerClosed
from wsgate.proxy.tunnel import Tunnel
from wsgate.routing import (
    find_location,
    needs_slash_redirect,
    normalize_uri,
    proxy_uri,
    select_server,
    split_target,
)

if TYPE_CHECKING:
    from wsgate.server.gateway import Gateway, ListenGroup
    from wsgate.upstream.roundrobin import Peer, Selection

__all__ = ["ClientConnection"]

_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


class _Retry(Exception):
    """Try the next upstream server (``proxy_next_upstream``)."""

    def __init__(self, kind: str, status: int) -> None:
        self.kind = kind
        self.status = status


class ClientConnection:
    """Serves one accepted connection until it closes."""

    def __init__(self, gw: Gateway, ep: Endpoint, group: ListenGroup, number: int) -> None:
        self.gw = gw
        self.ep = ep
        self.group = group
        self.number = number
        transport = ep.transport
        assert transport is not None
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.remote_addr, self.remote_port = str(peer[0]), int(peer[1])
        self.local_addr, self.local_port = str(local[0]), int(local[1])
        self.candidates, self.default = group.candidates(self.local_addr)
        self.requests = 0
        self.idle = True  # waiting for a request: may be closed at once on graceful stop
        self.tunnel: Tunnel | None = None
        self.parser: RequestParser
        self.pending: list[RequestEvent] = []
        self.body_done = True

    # -- the connection loop ------------------------------------------------------------------
    async def run(self) -> None:
        default = self.default
        parser = RequestParser(
            HeadLimits(
                default.client_header_buffer_size,
                default.large_client_header_buffers[0],
                default.large_client_header_buffers[1],
            )
        )
        self.parser = parser
        keepalive_timeout: float | None = None
        try:
            while True:
                self.idle = True
                if self.gw.stopping and self.requests:
                    return
                try:
                    head = await self._read_head(keepalive_timeout)
                except HttpError as exc:
                    # Bad input before a head exists: nginx's 400/414/494/501/505 and close.
                    if not isinstance(exc, IncompleteRequest):
                        await self._error(exc, self._bare_ctx(), None, default.settings)
                    return
                if head is None:
                    return
                self.idle = False
                self.requests += 1
                self.body_done = False
                keep, keepalive_timeout = await self._serve(head)
                if not keep or self.gw.stopping or self.tunnel is not None:
                    return
                if not self.body_done:
                    keep = await self._discard_body()
                    if not keep:
                        return
                self.pending = parser.next_request()
        finally:
            if self.tunnel is None:
                self.ep.close()

    async def _next_events(self, timeout: float) -> bool:
        """Read more bytes into ``self.pending``; ``False`` at EOF.  Raises TimeoutError."""
        ep = self.ep
        async with asyncio.timeout(timeout):
            ok = await ep.wait_data()
        if not ok:
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
            try:
                if not await self._next_events(keepalive_timeout):
                    return None
            except TimeoutError:
                return None
        deadline = loop.time() + self.default.client_header_timeout
        while True:
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
        settings: LocationSettings = server.settings
        try:
            path, args = split_target(head.target)
            uri = normalize_uri(path)
            ctx.uri, ctx.args = uri, args
            if not ctx.host:
                ctx.host = server.name
            if server.settings.return_ is not None:
                return await self._return(server.settings, ctx, head)
            location, captures = find_location(server, uri)
            ctx.captures = captures
            if location is not None:
                settings = location.settings
            if location is not None and needs_slash_redirect(location, uri):
                target = f"{uri}/" + (f"?{args}" if args else "")
                return await self._redirect(settings, ctx, head, 301, self._absolute(ctx, target))
            if settings.return_ is not None:
                return await self._return(settings, ctx, head)
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

    def _absolute(self, ctx: RequestContext, target: str) -> str:
        host = ctx.host or self.local_addr
        port = "" if self.local_port == 80 else f":{self.local_port}"
        return f"{ctx.scheme}://{host}{port}{target}"

    async def _error(
        self,
        exc: HttpError,
        ctx: RequestContext,
        head: RequestHead | None,
        settings: LocationSettings,
    ) -> tuple[bool, float | None]:
        if exc.log and exc.status != 404:
            level = "error" if exc.status in (413, 500, 502, 504) else "info"
            self.gw.error_log.log(level, exc.log, self.number, ctx)
        keep = head is not None and head.keep_alive and not closes_connection(exc.status)
        ctx.status = exc.status
        if exc.status not in (408, 444, 499):
            data = error_response(
                exc.status,
                server_tokens=settings.server_tokens,
                user_agent=ctx.header("user-agent"),
                keep_alive=keep,
                date=http_date(time.time()),
                head_only=head is not None and head.method == "HEAD",
            )
            self.ep.write(data)
            ctx.bytes_sent = len(data)
            ctx.body_bytes_sent = len(data) - data.index(b"\r\n\r\n") - 4
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
            _REASONS.get(status, ""),
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
        self.ep.write(out)
        ctx.status = status
        ctx.bytes_sent = len(out)
        ctx.body_bytes_sent = len(body) if head.method != "HEAD" else 0
        self._log_access(settings, ctx)
        return keep, settings.keepalive_timeout

    def _log_access(self, settings: LocationSettings, ctx: RequestContext) -> None:
        if settings.access_logs:
            self.gw.access_logs.write(settings.access_logs, ctx)

    # -- proxying -----------------------------------------------------------------------------
    async def _proxy(
        self,
        head: RequestHead,
        ctx: RequestContext,
        settings: LocationSettings,
        location: Location | None,
        pp: ProxyPass,
    ) -> tuple[bool, float | None]:
        gw = self.gw
        uri = proxy_uri(pp, location, head.target, ctx.uri, ctx.args, "%" in head.target)
        ctx.proxy_host = pp.proxy_host
        ctx.proxy_port = str(pp.port)
        set_headers = []
        for h in settings.proxy_set_headers:
            set_headers.append((h.name, h.value.render(ctx.lookup)))
        body_framing = BodyFraming.none()
        if head.content_length:
            body_framing = BodyFraming.content_length(head.content_length)
        elif head.chunked:
            body_framing = BodyFraming.chunked()
        buffered_body: bytes | None = None
        if head.chunked and settings.proxy_http_version == "1.0":
            # An HTTP/1.0 upstream cannot take a chunked body: read it whole (bounded by
            # client_max_body_size) and send it with a Content-Length, as nginx does.
            buffered_body = await self._read_whole_body(settings)
            body_framing = BodyFraming.content_length(len(buffered_body))
        request = build_upstream_request(
            head.method,
            uri,
            settings.proxy_http_version,
            head.headers,
            set_headers,
            pp.proxy_host,
            body_framing,
        )

        group = gw.peer_group(pp)
        selection = group.start()
        loop = gw.loop
        started = loop.time()
        body_sent = False
        attempts = 0
        last_status = 502
        while True:
            peer = selection.next()
            if peer is None:
                if not ctx.upstream_addrs:
                    gw.error_log.log(
                        "error",
                        "no live upstreams while connecting to upstream",
                        self.number,
                        ctx,
                        upstream=f"http://{group.name}{uri}",
                    )
                    ctx.upstream_addrs.append(group.name)
                raise HttpError(last_status)
            upstream_url = f"http://{peer.address}{uri}"
            ctx.upstream_addrs.append(peer.address)
            try:
                up = await self._connect(peer, settings, ctx, upstream_url)
            except _Retry as retry:
                attempts += 1
                self._failed(selection, peer, ctx, upstream_url, retry)
                last_status = retry.status
                if self._may_retry(
                    retry.kind, settings, selection, attempts, started, body_sent, head, sent=False
                ):
                    continue
                raise HttpError(retry.status) from None
            try:
                up.write(request)
                if buffered_body is not None:
                    up.write(buffered_body)
                elif (head.content_length or head.chunked) and not body_sent:
                    body_sent = True
                    await self._stream_body(head, up, body_framing, settings)
                resp, rparser, rpending = await self._read_response_head(
                    up, head, settings, ctx, upstream_url
                )
            except _Retry as retry:
                up.abort()
                attempts += 1
                self._failed(selection, peer, ctx, upstream_url, retry)
                last_status = retry.status
                if self._may_retry(
                    retry.kind, settings, selection, attempts, started, body_sent, head, sent=True
                ):
                    continue
                raise HttpError(retry.status) from None
            except BaseException:
                up.abort()
                selection.release(peer)
                raise
            selection.succeed(peer)
            ctx.upstream_statuses.append(str(resp.status))
            try:
                if resp.status == 101 and head.upgrade is not None:
                    return await self._tunnel(
                        head, ctx, settings, up, rparser, resp, selection, peer
                    )
                return await self._relay_response(head, ctx, settings, up, rparser, rpending, resp)
            finally:
                if self.tunnel is None:
                    selection.release(peer)
                    up.close()

    def _failed(
        self,
        selection: Selection,
        peer: Peer,
        ctx: RequestContext,
        upstream_url: str,
        retry: _Retry,
    ) -> None:
        ctx.upstream_statuses.append(str(retry.status))
        if selection.fail(peer):
            self.gw.error_log.log(
                "warn",
                "upstream server temporarily disabled while connecting to upstream",
                self.number,
                ctx,
                upstream_url,
            )

    def _may_retry(
        self,
        kind: str,
        settings: LocationSettings,
        selection: Selection,
        attempts: int,
        started: float,
        body_sent: bool,
        head: RequestHead,
        *,
        sent: bool,
    ) -> bool:
        """``proxy_next_upstream``: only listed kinds, only before anything of the body was
        streamed, non-idempotent methods only with ``non_idempotent``, within the tries and
        ``proxy_next_upstream_timeout`` limits."""
        if kind not in settings.proxy_next_upstream or body_sent or selection.tries <= 0:
            return False
        if (
            sent
            and head.method not in _IDEMPOTENT
            and "non_idempotent" not in settings.proxy_next_upstream
        ):
            return False
        tries = settings.proxy_next_upstream_tries
        if tries and attempts >= tries:
            return False
        limit = settings.proxy_next_upstream_timeout
        return not (limit and self.gw.loop.time() - started >= limit)

    async def _connect(
        self, peer: Peer, settings: LocationSettings, ctx: RequestContext, upstream_url: str
    ) -> Endpoint:
        loop = self.gw.loop
        try:
            async with asyncio.timeout(settings.proxy_connect_timeout):
                _, ep = await loop.create_connection(lambda: Endpoint(loop), peer.host, peer.port)
        except TimeoutError:
            self.gw.error_log.log(
                "error",
                "upstream timed out (110: Connection timed out) while connecting to upstream",
                self.number,
                ctx,
                upstream_url,
            )
            raise _Retry("timeout", 504) from None
        except OSError as exc:
            code = exc.errno or errno.ECONNREFUSED
            self.gw.error_log.log(
                "error",
                f"connect() failed ({code}: {exc.strerror or 'Connection refused'}) "
                "while connecting to upstream",
                self.number,
                ctx,
                upstream_url,
            )
            raise _Retry("error", 502) from None
        return ep

    async def _read_response_head(
        self,
        up: Endpoint,
        head: RequestHead,
        settings: LocationSettings,
        ctx: RequestContext,
        upstream_url: str,
    ) -> tuple[ResponseHead, ResponseParser, list[ResponseEvent]]:
        rparser = ResponseParser(
            head_request=head.method == "HEAD", max_head=max(settings.proxy_buffer_size, 4096)
        )
        timeout = settings.proxy_read_timeout
        client_gone = self.ep.gone()
        while True:
            reading = asyncio.ensure_future(up.read())
            done, _ = await asyncio.wait(
                (reading, client_gone), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if reading in done:
                data = reading.result()
            elif client_gone in done:
                # ngx_http_upstream_check_broken_connection: a client that closed while we
                # wait for the upstream ends the request with 499, upstream closed too.
                reading.cancel()
                raise HttpError(
                    499,
                    "client prematurely closed connection, so upstream connection is closed "
                    "too while reading response header from upstream",
                )
            else:
                reading.cancel()
                self.gw.error_log.log(
                    "error",
                    "upstream timed out (110: Connection timed out) while reading "
                    "response header from upstream",
                    self.number,
                    ctx,
                    upstream_url,
                )
                raise _Retry("timeout", 504)
            try:
                if not data:
                    if up.error is not None and not isinstance(up.error, PeerClosed):
                        self.gw.error_log.log(
                            "error",
                            f"recv() failed ({_errno_text(up.error)}) while reading "
                            "response header from upstream",
                            self.number,
                            ctx,
                            upstream_url,
                        )
                        raise _Retry("error", 502)
                    events = rparser.feed_eof()
                else:
                    events = rparser.feed(data)
            except HttpError as exc:
                self.gw.error_log.log(
                    "error",
                    exc.log or "upstream sent invalid header",
                    self.number,
                    ctx,
                    upstream_url,
                )
                kind = "invalid_header" if "invalid" in exc.log or "big" in exc.log else "error"
                raise _Retry(kind, 502) from None
            for ev in events:
                if isinstance(ev, ResponseHead):
                    return ev, rparser, [e for e in events if e is not ev]
            if not data:
                self.gw.error_log.log(
                    "error",
                    "upstream prematurely closed connection while reading response "
                    "header from upstream",
                    self.number,
                    ctx,
                    upstream_url,
                )
                raise _Retry("error", 502)

    async def _read_whole_body(self, settings: LocationSettings) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for data in self._body_events():
            size += len(data)
            if settings.client_max_body_size and size > settings.client_max_body_size:
                raise HttpError(
                    413, f"client intended to send too large chunked body: {size} bytes"
                )
            chunks.append(data)
        return b"".join(chunks)

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
                more = await self._next_events(self.default.client_header_timeout)
            except TimeoutError:
                raise HttpError(
                    408,
                    "client timed out (110: Connection timed out) while "
                    "reading client request body",
                ) from None
            if not more:
                raise HttpError(499, "client prematurely closed connection")

    async def _stream_body(
        self, head: RequestHead, up: Endpoint, framing: BodyFraming, settings: LocationSettings
    ) -> None:
        if head.expect_continue and head.version == "1.1":
            self.ep.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        size = 0
        chunked = framing.kind is Framing.CHUNKED
        async for data in self._body_events():
            size += len(data)
            if settings.client_max_body_size and size > settings.client_max_body_size:
                raise HttpError(
                    413, f"client intended to send too large chunked body: {size} bytes"
                )
            up.write(encode_chunk(data) if chunked else data)
            await up.drain()
        if chunked:
            up.write(LAST_CHUNK)

    async def _relay_response(
        self,
        head: RequestHead,
        ctx: RequestContext,
        settings: LocationSettings,
        up: Endpoint,
        rparser: ResponseParser,
        pending: list[ResponseEvent],
        resp: ResponseHead,
    ) -> tuple[bool, float | None]:
        keep = head.keep_alive
        no_body = head.method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        if no_body:
            framing = (
                BodyFraming.content_length(resp.content_length)
                if resp.content_length is not None and resp.status != 204
                else BodyFraming.none()
            )
            chunk_out = False
        elif resp.content_length is not None:
            framing = BodyFraming.content_length(resp.content_length)
            chunk_out = False
        elif head.version == "1.1":
            framing = BodyFraming.chunked()
            chunk_out = True
        else:
            framing = BodyFraming.none()
            chunk_out = False
            keep = False
        out = build_client_response_head(
            resp.status,
            resp.reason,
            resp.headers,
            server_tokens=settings.server_tokens,
            date=http_date(time.time()),
            framing=framing,
            keep_alive=keep,
            keepalive_header=settings.keepalive_header,
            upgrade=False,
        )
        ep = self.ep
        ep.write(out)
        ctx.status = resp.status
        ctx.bytes_sent = len(out)
        body_bytes = 0
        complete = False
        try:
            while True:
                for ev in pending:
                    if isinstance(ev, Body):
                        if no_body:
                            continue
                        ep.write(encode_chunk(ev.data) if chunk_out else ev.data)
                        body_bytes += len(ev.data)
                    elif isinstance(ev, EndOfMessage):
                        complete = True
                if complete:
                    break
                if ep.closed:
                    raise PeerClosed("client closed")
                await ep.drain()
                try:
                    async with asyncio.timeout(settings.proxy_read_timeout):
                        data = await up.read()
                except TimeoutError:
                    self.gw.error_log.log(
                        "error",
                        "upstream timed out (110: Connection timed out) while reading upstream",
                        self.number,
                        ctx,
                    )
                    keep = False
                    break
                if data:
                    pending = rparser.feed(data)
                else:
                    try:
                        pending = rparser.feed_eof()
                    except HttpError:
                        self.gw.error_log.log(
                            "error",
                            "upstream prematurely closed connection while reading upstream",
                            self.number,
                            ctx,
                        )
                        keep = False
                        break
            if complete and chunk_out:
                ep.write(LAST_CHUNK)
            if complete:
                await ep.drain()
        except PeerClosed:
            keep = False
            ctx.status = ctx.status or 499
        ctx.body_bytes_sent = body_bytes
        ctx.bytes_sent += body_bytes
        self._log_access(settings, ctx)
        return keep and complete, settings.keepalive_timeout

    async def _tunnel(
        self,
        head: RequestHead,
        ctx: RequestContext,
        settings: LocationSettings,
        up: Endpoint,
        rparser: ResponseParser,
        resp: ResponseHead,
        selection: Selection,
        peer: Peer,
    ) -> tuple[bool, None]:
        out = build_client_response_head(
            101,
            resp.reason,
            resp.headers,
            server_tokens=settings.server_tokens,
            date=http_date(time.time()),
            framing=BodyFraming.none(),
            keep_alive=False,
            keepalive_header=None,
            upgrade=True,
        )
        ep = self.ep
        ep.write(out)
        ctx.status = 101
        head_len = len(out)
        early_to_client = rparser.take_buffered() + bytes(up.buffer)
        up.buffer.clear()
        early_to_upstream = self.parser.take_buffered() + bytes(ep.buffer)
        ep.buffer.clear()
        done: asyncio.Future[None] = self.gw.loop.create_future()
        assert ep.transport is not None and up.transport is not None

        def finished(t: Tunnel) -> None:
            if not done.done():
                done.set_result(None)

        tunnel = Tunnel(
            self.gw.loop,
            ep.transport,
            up.transport,
            read_timeout=settings.proxy_read_timeout,
            send_timeout_upstream=settings.proxy_send_timeout,
            send_timeout_client=settings.send_timeout,
            on_close=finished,
        )
        self.tunnel = tunnel
        self.gw.tunnels.add(tunnel)
        tunnel.start(
            early_to_client,
            early_to_upstream,
            client_write_paused=ep._write_paused,
            upstream_write_paused=up._write_paused,
        )
        if ep.closed:
            tunnel.side_lost(tunnel.client) if not tunnel.client.lost else None
        try:
            await done
        finally:
            self.gw.tunnels.discard(tunnel)
            selection.release(peer)
        upstream_url = f"http://{peer.address}{ctx.request_uri}"
        if tunnel.timeout_reason == "upstream":
            self.gw.error_log.log(
                "info",
                "upstream timed out (110: Connection timed out) while proxying upgraded connection",
                self.number,
                ctx,
                upstream_url,
            )
        elif tunnel.timeout_reason == "client":
            self.gw.error_log.log(
                "info",
                "client timed out (110: Connection timed out) while proxying upgraded connection",
                self.number,
                ctx,
                upstream_url,
            )
        ctx.body_bytes_sent = tunnel.bytes_to_client
        ctx.bytes_sent = head_len + tunnel.bytes_to_client
        ctx.upstream_times.append(f"{self.gw.loop.time() - tunnel.started:.3f}")
        self._log_access(settings, ctx)
        return False, None


def _first_head(events: list[object]) -> RequestHead | None:
    for ev in events:
        if isinstance(ev, RequestHead):
            return ev
    return None


def _errno_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return f"{exc.errno}: {exc.strerror}"
    return f"{errno.ECONNRESET}: Connection reset by peer"


_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    303: "See Other",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
}
