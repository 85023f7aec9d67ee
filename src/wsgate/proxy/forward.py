"""Forwarding one request to an upstream server, and the switch to a tunnel on ``101``.

:class:`Forwarder` is mixed into :class:`wsgate.proxy.handler.ClientConnection`; it holds
the upstream half of a request's life: pick a peer (pure :mod:`wsgate.upstream.roundrobin`),
connect (``proxy_connect_timeout``), send the rebuilt head and stream the body, read the
response head (``proxy_read_timeout``), retry on the next peer as ``proxy_next_upstream``
allows, then stream the response back, or hand both transports to
:class:`wsgate.proxy.tunnel.Tunnel` when the upstream answers ``101`` to a request that
carried ``Upgrade`` (nginx's only trigger, NGINX-SEMANTICS.md §4).

Retries follow ``ngx_http_upstream_next``/``ngx_http_upstream_test_next`` (NGINX-SEMANTICS.md
§8): ``error``/``timeout``/``invalid_header`` always count against ``max_fails``; listed
``http_5xx``/``http_429`` count only when the retry happens; ``http_403``/``http_404`` never.
Only before anything was sent to the client, so never after a ``101``.

With ``keepalive`` in the ``upstream`` block, a connection goes back to the group's
:class:`~wsgate.proxy.endpoint.KeptEndpoints` after a complete keep-alive response to a request
that carried no ``Upgrade``; a kept connection found closed by the upstream is replaced by a
new one to the same server, once, without counting a failure.

``proxy_pass https://`` connects with TLS (:class:`wsgate.proxy.connect.UpstreamOpen`;
contexts and nginx's rules in :mod:`wsgate.upstream.tls`).  A failed handshake, a chain that
does not verify or a certificate that does not match ``proxy_ssl_name`` is an ``error`` for
``proxy_next_upstream``.  Kept connections are keyed by peer *and* TLS settings, so a location
proxying with ``http://`` never gets a TLS connection to the same upstream (nginx matches kept
connections by address only).
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Hashable
from typing import TYPE_CHECKING

from wsgate.access import upgrade_allowed, without_upgrade
from wsgate.config.model import Location, LocationSettings, ProxyPass
from wsgate.config.variables import RequestContext
from wsgate.errors import HttpError
from wsgate.http.headers import (
    LAST_CHUNK,
    BodyFraming,
    Framing,
    build_upstream_request,
    encode_chunk,
)
from wsgate.http.request import RequestHead, RequestParser
from wsgate.http.response import InvalidHeader, ResponseEvent, ResponseHead, ResponseParser
from wsgate.proxy.connect import (
    HANDSHAKING,
    HandshakeFailed,
    UpstreamOpen,
    save_session,
)
from wsgate.proxy.endpoint import CountedEndpoint, Endpoint, KeptEndpoints, PeerClosed
from wsgate.proxy.relay import ResponseRelay
from wsgate.proxy.tunnel import Tunnel
from wsgate.routing import proxy_uri
from wsgate.upstream.next import Failure, may_retry, replayable, status_failure
from wsgate.upstream.pool import Kept
from wsgate.upstream.tls import (
    UpstreamTls,
    ssl_name,
)

if TYPE_CHECKING:
    from wsgate.config.model import Server
    from wsgate.proxy.context import WorkerContext
    from wsgate.upstream.roundrobin import Peer, Selection

__all__ = ["Forwarder"]


class _Retry(Exception):
    """A try failed in a way ``proxy_next_upstream`` names (``kind``); ``status`` is what the
    client gets if it is the last one, ``log`` nginx's error-log text, ``phase`` the action
    for the "temporarily disabled" warning, ``answered`` whether any response byte came."""

    def __init__(
        self, kind: Failure, status: int, log: str, phase: str, answered: bool = False
    ) -> None:
        self.kind = kind
        self.status = status
        self.log = log
        self.phase = phase
        self.answered = answered


class _Attempt:
    """What one try did so far: the connection, whether the request (and a body) was sent."""

    __slots__ = ("up", "kept", "sent", "streamed", "tls", "name")

    def __init__(self, streamed: bool, tls: UpstreamTls | None, name: str) -> None:
        self.tls = tls
        self.name = name
        self.up: Endpoint | None = None
        self.kept: Kept[Endpoint] | None = None
        self.sent = False
        self.streamed = streamed


class Forwarder(ResponseRelay):
    """The upstream side of :class:`~wsgate.proxy.handler.ClientConnection`."""

    __slots__ = ()  # its attributes are ClientConnection's and ResponseRelay's slots

    gw: WorkerContext
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
        refused = head.upgrade is not None and not upgrade_allowed(
            settings.proxy_upgrade_protocols, head.upgrade
        )
        if refused:
            self._refuse_upgrade(head, ctx)
        uri = proxy_uri(pp, location, head.target, ctx.uri, ctx.args, "%" in head.target)
        ctx.proxy_host = pp.proxy_host
        ctx.proxy_port = str(pp.port)
        set_headers = []
        for h in settings.proxy_set_headers:
            set_headers.append((h.name, h.value.render(ctx.lookup)))
        if refused:
            set_headers = without_upgrade(set_headers)
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

        tls: UpstreamTls | None = None
        tls_name = ""
        if pp.scheme == "https":
            tls = gw.upstream_caches.tls(gw.config, settings)
            tls_name = ssl_name(settings.proxy_ssl, pp.proxy_host, ctx.lookup)
        scheme = pp.scheme
        group = gw.peer_group(pp)
        selection = group.start(group.key(ctx))
        keep = gw.upstream_caches.keepalive(pp, group, gw.config, gw.peer_groups)
        started = gw.loop.time()
        attempts = 0
        streamed = False
        while True:
            peer = selection.next()
            if peer is None:
                # ngx_http_upstream_connect on NGX_BUSY: "no live upstreams", the group's name
                # in $upstream_addr, and 502 whatever the earlier tries ended with.
                gw.error_log.log(
                    "error",
                    "no live upstreams while connecting to upstream",
                    self.number,
                    ctx,
                    upstream=f"{scheme}://{group.name}{uri}",
                )
                ctx.upstream_addrs.append(group.name)
                ctx.upstream_statuses.append("502")
                ctx.upstream_times.append("0.000")
                raise HttpError(502)
            attempts += 1
            upstream_url = f"{scheme}://{peer.address}{uri}"
            ctx.upstream_addrs.append(peer.address)
            ctx.upstream_started = gw.loop.time()
            att = _Attempt(streamed, tls, tls_name)
            try:
                resp, rparser, rpending = await self._attempt(
                    att, peer, keep, head, request, buffered_body, body_framing, settings, ctx
                )
            except _Retry as retry:
                streamed = att.streamed
                if att.up is not None:
                    att.up.abort()
                gw.error_log.log("error", retry.log, self.number, ctx, upstream_url)
                self._failed(selection, peer, ctx, upstream_url, retry.status, retry.phase)
                gw.metrics.upstream_failed(group.name, peer.address, retry.kind.value)
                if self._may_retry(
                    retry.kind, settings, selection.tries, attempts, started, att, head
                ):
                    continue
                raise HttpError(retry.status) from None
            except BaseException:
                if att.up is not None:
                    att.up.abort()
                selection.release(peer)
                raise
            streamed = att.streamed
            up = att.up
            assert up is not None
            kind = status_failure(resp.status)
            # ngx_http_upstream_test_next: "peer.tries > 1" before this peer is freed, i.e.
            # at least one try left after it.
            if kind is not None and self._may_retry(
                kind, settings, selection.tries - 1, attempts, started, att, head
            ):
                up.abort()
                if not kind.counts_as_failure:
                    # NGX_PEER_NEXT: the next server is tried, but this is no failure.
                    ctx.upstream_statuses.append(str(resp.status))
                    self._note_time(ctx)
                    selection.succeed(peer)
                    selection.release(peer)
                else:
                    self._failed(
                        selection,
                        peer,
                        ctx,
                        upstream_url,
                        resp.status,
                        "reading response header from upstream",
                    )
                    gw.metrics.upstream_failed(group.name, peer.address, kind.value)
                continue
            selection.succeed(peer)
            ctx.upstream_statuses.append(str(resp.status))
            reusable = False
            try:
                if resp.status == 101 and (
                    refused or (head.upgrade is not None and not self._upgrade_ok(resp, settings))
                ):
                    raise HttpError(
                        502,
                        f'upstream sent 101 to "{resp.header("upgrade") or ""}", which '
                        "proxy_upgrade_protocols does not allow, while reading response header "
                        "from upstream",
                    )
                if resp.status == 101 and head.upgrade is not None:
                    return await self._tunnel(
                        head, ctx, settings, up, rparser, resp, selection, peer, scheme
                    )
                result, complete = await self._relay_response(
                    head, ctx, settings, up, rparser, rpending, resp
                )
                # Back to the pool only after a complete response that allows keep-alive, on a
                # connection that never carried an upgrade.
                reusable = (
                    complete
                    and resp.keep_alive
                    and resp.status != 101
                    and head.upgrade is None
                    and rparser.buffered == 0
                )
                return result
            finally:
                if self.tunnel is None:
                    selection.release(peer)
                    if not (reusable and keep is not None and att.kept and keep.put(att.kept)):
                        up.close()

    def _refuse_upgrade(self, head: RequestHead, ctx: RequestContext) -> None:
        """Treat the client's ``Upgrade`` as absent: ``proxy_upgrade_protocols`` names none of
        its protocols.  The header leaves the request (``$http_upgrade`` is empty, map results
        are recomputed) and ``head.upgrade`` becomes ``None``, so a ``101`` cannot tunnel."""
        self.gw.error_log.log(
            "info",
            f'client sent disallowed upgrade protocol "{head.upgrade}"',
            self.number,
            ctx,
        )
        head.headers = [(n, v) for n, v in head.headers if n.lower() != "upgrade"]
        head.upgrade = None
        ctx.headers = head.headers
        ctx.invalidate()

    @staticmethod
    def _upgrade_ok(resp: ResponseHead, settings: LocationSettings) -> bool:
        """A ``101`` may only switch to an allowed protocol: when the request named several
        (``Upgrade: h2c, websocket``) the upstream must not pick a refused one.  A ``101``
        without ``Upgrade`` (RFC 9110 §15.2.2 requires one) is left to the tunnel as before."""
        upgrade = resp.header("upgrade")
        return upgrade is None or upgrade_allowed(settings.proxy_upgrade_protocols, upgrade)

    def _failed(
        self,
        selection: Selection,
        peer: Peer,
        ctx: RequestContext,
        upstream_url: str,
        status: int,
        phase: str,
    ) -> None:
        """Count a failed try against ``max_fails`` (``NGX_PEER_FAILED``)."""
        ctx.upstream_statuses.append(str(status))
        self._note_time(ctx)
        if selection.fail(peer):
            self.gw.error_log.log(
                "warn",
                f"upstream server temporarily disabled while {phase}",
                self.number,
                ctx,
                upstream_url,
            )

    def _may_retry(
        self,
        kind: Failure,
        settings: LocationSettings,
        left: int,
        attempts: int,
        started: float,
        att: _Attempt,
        head: RequestHead,
    ) -> bool:
        """:func:`wsgate.upstream.next.may_retry` for this try."""
        return may_retry(
            kind,
            settings.proxy_next_upstream,
            left=left,
            attempts=attempts,
            tries_limit=settings.proxy_next_upstream_tries,
            elapsed=self.gw.loop.time() - started,
            timeout=settings.proxy_next_upstream_timeout,
            sent=att.sent,
            streamed=att.streamed,
            method=head.method,
        )

    async def _attempt(
        self,
        att: _Attempt,
        peer: Peer,
        keep: KeptEndpoints | None,
        head: RequestHead,
        request: bytes,
        buffered_body: bytes | None,
        framing: BodyFraming,
        settings: LocationSettings,
        ctx: RequestContext,
    ) -> tuple[ResponseHead, ResponseParser, list[ResponseEvent]]:
        """One try on ``peer``: a kept connection if there is one, else a new one."""
        key: Hashable = (peer, att.tls)
        if keep is not None:
            kept = await keep.take(key)
            if kept is not None:
                att.up, att.kept = kept.conn, kept
                try:
                    return await self._exchange(
                        att, head, request, buffered_body, framing, settings
                    )
                except _Retry as retry:
                    # The upstream closed the kept connection meanwhile: nginx retries through
                    # its next-upstream logic ("if (u->peer.cached && ft_type == FT_ERROR)
                    # u->peer.tries++"); wsgate opens a new connection to the same server,
                    # once, counting no failure, when the request can be sent again.
                    if not (
                        retry.kind is Failure.ERROR
                        and not retry.answered
                        and replayable(att.streamed, head.method, settings.proxy_next_upstream)
                    ):
                        raise
                    self.gw.error_log.log(
                        "info", f"{retry.log} (kept connection, retrying)", self.number, ctx
                    )
                    kept.conn.abort()
                    att.up = att.kept = None
                    att.sent = False
        att.up = await self._connect(peer, settings, att.tls, att.name)
        att.kept = keep.new(key, att.up) if keep is not None else None
        result = await self._exchange(att, head, request, buffered_body, framing, settings)
        if att.tls is not None:
            save_session(att.tls, peer, att.up)
        return result

    async def _exchange(
        self,
        att: _Attempt,
        head: RequestHead,
        request: bytes,
        buffered_body: bytes | None,
        framing: BodyFraming,
        settings: LocationSettings,
    ) -> tuple[ResponseHead, ResponseParser, list[ResponseEvent]]:
        """Send the request on ``att.up`` and read the response head."""
        up = att.up
        assert up is not None
        att.sent = True
        if att.kept is not None:
            att.kept.requests += 1
        up.write(request)
        if buffered_body is not None:
            up.write(buffered_body)
        elif head.content_length or head.chunked:
            if att.streamed:  # pragma: no cover - _may_retry never repeats a streamed body
                raise _Retry(Failure.ERROR, 502, "request body already sent", "sending request")
            att.streamed = True
            await self._stream_body(head, up, framing, settings)
        return await self._read_response_head(up, head, settings)

    async def _connect(
        self, peer: Peer, settings: LocationSettings, tls: UpstreamTls | None, name: str
    ) -> Endpoint:
        gw = self.gw
        excess = gw.upstream_room()
        if excess:
            gw.upstream_caches.drop_idle(excess)
        loop = gw.loop
        opening = UpstreamOpen(loop, peer, tls, name, factory=lambda: CountedEndpoint(loop, gw))
        # The socket being connected is a connection (worker_connections, a descriptor) too.
        gw.upstream_opening()
        try:
            async with asyncio.timeout(settings.proxy_connect_timeout):
                ep = await opening.run()
        except TimeoutError:
            if opening.ep is not None:
                opening.ep.abort()
            raise _Retry(
                Failure.TIMEOUT,
                504,
                f"upstream timed out (110: Connection timed out) while {opening.phase}",
                opening.phase,
            ) from None
        except HandshakeFailed as exc:
            if opening.ep is not None:
                opening.ep.abort()
            raise _Retry(
                Failure.ERROR, 502, f"{exc.args[0]} while {HANDSHAKING}", HANDSHAKING
            ) from None
        except OSError as exc:
            code = exc.errno or errno.ECONNREFUSED
            raise _Retry(
                Failure.ERROR,
                502,
                f"connect() failed ({code}: {os.strerror(code)}) while connecting to upstream",
                "connecting to upstream",
            ) from None
        finally:
            gw.upstream_closed()  # connected: counted by the endpoint from now on
        return ep

    async def _read_response_head(
        self, up: Endpoint, head: RequestHead, settings: LocationSettings
    ) -> tuple[ResponseHead, ResponseParser, list[ResponseEvent]]:
        phase = "reading response header from upstream"
        max_head = max(settings.proxy_buffer_size, 4096)
        rparser = ResponseParser(head_request=head.method == "HEAD", max_head=max_head)
        timeout = settings.proxy_read_timeout
        client_gone = self.ep.gone()
        answered = False
        while True:
            ready = await up.wait_data_or(client_gone, timeout)
            if ready == 1:
                data = up.take() if up.buffer else b""
            elif ready == 2:
                # ngx_http_upstream_check_broken_connection: a client that closed while we
                # wait for the upstream ends the request with 499, upstream closed too.
                raise HttpError(
                    499,
                    "client prematurely closed connection, so upstream connection is closed "
                    "too while reading response header from upstream",
                )
            else:
                raise _Retry(
                    Failure.TIMEOUT,
                    504,
                    "upstream timed out (110: Connection timed out) while reading "
                    "response header from upstream",
                    phase,
                    answered,
                )
            try:
                if not data:
                    if up.error is not None and not isinstance(up.error, PeerClosed):
                        raise _Retry(
                            Failure.ERROR,
                            502,
                            f"recv() failed ({_errno_text(up.error)}) while reading "
                            "response header from upstream",
                            phase,
                            answered,
                        )
                    events = rparser.feed_eof()
                else:
                    answered = True
                    events = rparser.feed(data)
            except HttpError as exc:
                if exc.log and not isinstance(exc, InvalidHeader):
                    raise _Retry(Failure.ERROR, 502, exc.log, phase, answered) from None
                log = exc.log or "upstream sent invalid header"
                raise _Retry(Failure.INVALID_HEADER, 502, log, phase, answered) from None
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
                raise _Retry(
                    Failure.ERROR,
                    502,
                    "upstream prematurely closed connection while reading response "
                    "header from upstream",
                    phase,
                    answered,
                )

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
            await self._drain_upstream(up, settings)
        if chunked:
            up.write(LAST_CHUNK)

    async def _drain_upstream(self, up: Endpoint, settings: LocationSettings) -> None:
        """Wait for the upstream to take the body: ``proxy_send_timeout`` "is set only between
        two successive write operations"; a failed write is ``error``."""
        phase = "sending request to upstream"
        try:
            async with asyncio.timeout(settings.proxy_send_timeout):
                await up.drain()
        except TimeoutError:
            raise _Retry(
                Failure.TIMEOUT,
                504,
                f"upstream timed out (110: Connection timed out) while {phase}",
                phase,
            ) from None
        except PeerClosed:
            raise _Retry(
                Failure.ERROR, 502, f"writev() failed (32: Broken pipe) while {phase}", phase
            ) from None


def _errno_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return f"{exc.errno}: {os.strerror(exc.errno)}"
    return f"{errno.ECONNRESET}: Connection reset by peer"
