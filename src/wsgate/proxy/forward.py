"""Forwarding one request to an upstream server, and the switch to a tunnel on ``101``.

:class:`Forwarder` is mixed into :class:`wsgate.proxy.handler.ClientConnection`; it holds
the upstream half of a request's life: pick a peer (pure :mod:`wsgate.upstream.roundrobin`),
connect (``proxy_connect_timeout``), send the rebuilt head and stream the body, read the
response head (``proxy_read_timeout``), retry on the next peer as ``proxy_next_upstream``
allows, then stream the response back, or hand both transports to
:class:`wsgate.proxy.tunnel.Tunnel` when the upstream answers ``101`` to a request that
carried ``Upgrade`` (nginx's only trigger, NGINX-SEMANTICS.md §4).
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
from wsgate.http.request import RequestHead, RequestParser
from wsgate.http.response import ResponseEvent, ResponseHead, ResponseParser
from wsgate.proxy.endpoint import Endpoint, PeerClosed
from wsgate.proxy.tunnel import Tunnel
from wsgate.routing import proxy_uri

if TYPE_CHECKING:
    from wsgate.config.model import Server
    from wsgate.server.gateway import Gateway
    from wsgate.upstream.roundrobin import Peer, Selection

__all__ = ["Forwarder"]

#: Methods retried after the request was sent without ``non_idempotent`` (RFC 9110 §9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


class _Retry(Exception):
    """Try the next upstream server (``proxy_next_upstream``)."""

    def __init__(self, kind: str, status: int) -> None:
        self.kind = kind
        self.status = status


class Forwarder:
    """The upstream side of :class:`~wsgate.proxy.handler.ClientConnection`."""

    gw: Gateway
    ep: Endpoint
    number: int
    parser: RequestParser
    tunnel: Tunnel | None
    default: Server

    def _body_events(self) -> AsyncIterator[bytes]:  # provided by ClientConnection
        raise NotImplementedError

    def _log_access(self, settings: LocationSettings, ctx: RequestContext) -> None:
        raise NotImplementedError

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
            up: Endpoint | None = None
            try:
                up = await self._connect(peer, settings, ctx, upstream_url)
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
                if up is not None:
                    up.abort()
                attempts += 1
                self._failed(selection, peer, ctx, upstream_url, retry)
                last_status = retry.status
                sent = up is not None
                if self._may_retry(
                    retry.kind, settings, selection, attempts, started, body_sent, head, sent=sent
                ):
                    continue
                raise HttpError(retry.status) from None
            except BaseException:
                if up is not None:
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
                if peer.name.startswith("unix:"):
                    _, ep = await loop.create_unix_connection(lambda: Endpoint(loop), peer.host)
                else:
                    _, ep = await loop.create_connection(
                        lambda: Endpoint(loop), peer.host, peer.port
                    )
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
        max_head = max(settings.proxy_buffer_size, 4096)
        rparser = ResponseParser(head_request=head.method == "HEAD", max_head=max_head)
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
            while True:
                resp = next((ev for ev in events if isinstance(ev, ResponseHead)), None)
                if resp is None:
                    break
                if resp.status >= 200 or resp.status == 101:
                    return resp, rparser, [e for e in events if e is not resp]
                # An interim 1xx (100 Continue, 103 Early Hints) is not relayed; nginx reads
                # on to the final response.
                rest = rparser.take_buffered()
                rparser = ResponseParser(head_request=head.method == "HEAD", max_head=max_head)
                events = rparser.feed(rest) if rest else []
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
        no_body = head.method == "HEAD" or resp.status in (204, 304)
        if resp.status == 101:
            # A 101 to a request without Upgrade: nginx relays it and reads the rest as a
            # close-delimited body.  wsgate then closes the client connection (README).
            pending = pending + rparser.close_delimited()
            framing = BodyFraming.none()
            chunk_out = no_body = keep = False
        elif no_body:
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
            client_write_paused=ep.write_paused,
            upstream_write_paused=up.write_paused,
        )
        # An EOF or close that arrived before the switch will not be reported again to the
        # tunnel's protocols: replay it.
        for side, endpoint in ((tunnel.client, ep), (tunnel.upstream, up)):
            if endpoint.closed:
                side.connection_lost(
                    endpoint.error if isinstance(endpoint.error, Exception) else None
                )
            elif endpoint.eof:
                side.eof_received()
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


def _errno_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return f"{exc.errno}: {exc.strerror}"
    return f"{errno.ECONNRESET}: Connection reset by peer"
