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

``proxy_pass https://`` connects with TLS (:func:`open_upstream`, contexts and nginx's rules in
:mod:`wsgate.upstream.tls`).  The handshake is part of connecting and is bounded by
``proxy_connect_timeout``, as in nginx (``ngx_http_upstream_ssl_init_connection`` arms the
connect timeout); a failed handshake, a chain that does not verify or a certificate that does
not match ``proxy_ssl_name`` is an ``error`` for ``proxy_next_upstream``.  Kept connections are
keyed by peer *and* TLS settings, so a location proxying with ``http://`` never gets a TLS
connection to the same upstream (nginx matches kept connections by address only).
"""

from __future__ import annotations

import asyncio
import errno
import os
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Hashable
from typing import TYPE_CHECKING

from wsgate.config.model import Config, Location, LocationSettings, ProxyPass
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
from wsgate.proxy.endpoint import Endpoint, KeptEndpoints, PeerClosed
from wsgate.proxy.tunnel import Tunnel
from wsgate.routing import proxy_uri
from wsgate.upstream.pool import Kept
from wsgate.upstream.tls import (
    PENDING_SESSION,
    TlsContexts,
    UpstreamTls,
    chain_too_long,
    handshake_error,
    match_name,
    sni_name,
    ssl_name,
)

if TYPE_CHECKING:
    from wsgate.config.model import Server
    from wsgate.server.gateway import Gateway
    from wsgate.upstream.roundrobin import Peer, Selection

__all__ = ["Forwarder", "HandshakeFailed", "UpstreamOpen", "open_upstream"]

_CONNECTING = "connecting to upstream"
_HANDSHAKING = "SSL handshaking to upstream"

#: "non_idempotent: normally, requests with a non-idempotent method (POST, LOCK, PATCH) are not
#: passed to the next server if a request has been sent to an upstream server".
_NON_IDEMPOTENT = frozenset({"POST", "LOCK", "PATCH"})

#: Upstream statuses ``proxy_next_upstream`` can name (``ngx_http_upstream_next_errors``).
_STATUS_NEXT = {s: f"http_{s}" for s in (500, 502, 503, 504, 403, 404, 429)}


class _Retry(Exception):
    """A try failed in a way ``proxy_next_upstream`` names (``kind``); ``status`` is what the
    client gets if it is the last one, ``log`` nginx's error-log text, ``phase`` the action
    for the "temporarily disabled" warning, ``answered`` whether any response byte came."""

    def __init__(
        self, kind: str, status: int, log: str, phase: str, answered: bool = False
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


#: Per gateway: id(peer group) -> (the group, its cache).
_CACHES: weakref.WeakKeyDictionary[Gateway, dict[int, tuple[object, KeptEndpoints]]] = (
    weakref.WeakKeyDictionary()
)


#: Per gateway: the configuration the TLS contexts were built for, and the contexts.
_TLS: weakref.WeakKeyDictionary[Gateway, tuple[Config, TlsContexts]] = weakref.WeakKeyDictionary()


def _close_caches(caches: dict[int, tuple[object, KeptEndpoints]]) -> None:
    for _, cache in caches.values():
        cache.close_all()
    caches.clear()


class HandshakeFailed(Exception):
    """The TLS handshake with an upstream failed; ``args[0]`` is nginx's text for it."""


class UpstreamOpen:
    """One connection to an upstream server, TCP (or Unix socket) then TLS when ``tls`` is set.

    :meth:`run` raises ``OSError`` for a failed connect, :class:`HandshakeFailed` for TLS;
    the caller bounds it with a timeout and reads :attr:`phase` ("connecting to upstream" or
    "SSL handshaking to upstream") to word a timeout, and aborts :attr:`ep` if it is set.
    """

    __slots__ = ("loop", "peer", "tls", "name", "key", "phase", "ep")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        peer: Peer,
        tls: UpstreamTls | None = None,
        name: str = "",
        key: Hashable = None,
    ) -> None:
        self.loop = loop
        self.peer = peer
        self.tls = tls
        self.name = name
        self.key = key if key is not None else peer
        self.phase = _CONNECTING
        self.ep: Endpoint | None = None

    async def run(self) -> Endpoint:
        loop, peer, tls = self.loop, self.peer, self.tls
        # Set before connecting: uvloop runs the TLS protocol in the context the transport
        # copied when it was created (wsgate.upstream.tls, session reuse).
        token = PENDING_SESSION.set(tls.session(self.key) if tls is not None else None)
        try:
            if peer.name.startswith("unix:"):
                _, ep = await loop.create_unix_connection(lambda: Endpoint(loop), peer.host)
            else:
                _, ep = await loop.create_connection(lambda: Endpoint(loop), peer.host, peer.port)
            self.ep = ep
            if tls is None:
                return ep
            self.phase = _HANDSHAKING
            await self._handshake(ep, tls)
            return ep
        finally:
            PENDING_SESSION.reset(token)

    async def _handshake(self, ep: Endpoint, tls: UpstreamTls) -> None:
        settings = tls.settings
        assert ep.transport is not None
        try:
            transport = await self.loop.start_tls(
                ep.transport,
                ep,
                tls.context,
                server_hostname=sni_name(settings, self.name),
                ssl_handshake_timeout=3600.0,  # the caller's proxy_connect_timeout bounds it
            )
        except (OSError, EOFError) as exc:
            tls.forget(self.key)
            raise HandshakeFailed(handshake_error(exc)) from None
        if transport is None:  # pragma: no cover - only when the loop is closing
            raise HandshakeFailed("peer closed connection in SSL handshake")
        ep.transport = transport
        if not settings.verify:
            return
        # "proxy_ssl_verify: Enables or disables verification of the proxied HTTPS server
        # certificate": the chain was verified in the handshake; depth and name are checked
        # here, as ngx_http_upstream_ssl_handshake does after SSL_do_handshake.
        sslobj = transport.get_extra_info("ssl_object")
        inner = getattr(sslobj, "_sslobj", None)
        chain = getattr(inner, "get_verified_chain", lambda: None)()
        if chain:
            too_long = chain_too_long(len(chain), settings.verify_depth)
            if too_long is not None:
                tls.forget(self.key)
                code, text = too_long
                raise HandshakeFailed(f"upstream SSL certificate verify error: ({code}:{text})")
        cert = transport.get_extra_info("peercert") or {}
        if not match_name(cert, self.name):
            tls.forget(self.key)
            raise HandshakeFailed(f'upstream SSL certificate does not match "{self.name}"')


async def open_upstream(
    loop: asyncio.AbstractEventLoop,
    peer: Peer,
    tls: UpstreamTls | None = None,
    name: str = "",
) -> Endpoint:
    """:class:`UpstreamOpen` in one call (no timeout; the caller sets one)."""
    return await UpstreamOpen(loop, peer, tls, name).run()


def save_session(tls: UpstreamTls, key: Hashable, ep: Endpoint) -> None:
    """Keep the TLS session of ``ep`` for the next connection (TLS 1.3 tickets arrive after
    the handshake, so this is called once the response head was read)."""
    if ep.transport is None or ep.closed:
        return
    sslobj = ep.transport.get_extra_info("ssl_object")
    if sslobj is not None:
        tls.save(key, sslobj.session)


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

        tls: UpstreamTls | None = None
        tls_name = ""
        if pp.scheme == "https":
            tls = self._tls(settings)
            tls_name = ssl_name(settings.proxy_ssl, pp.proxy_host, ctx.lookup)
        scheme = pp.scheme
        group = gw.peer_group(pp)
        selection = group.start(group.key(ctx))
        keep = self._keepalive(pp, group)
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
                raise HttpError(502)
            attempts += 1
            upstream_url = f"{scheme}://{peer.address}{uri}"
            ctx.upstream_addrs.append(peer.address)
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
            kind = _STATUS_NEXT.get(resp.status)
            # ngx_http_upstream_test_next: "peer.tries > 1" before this peer is freed, i.e.
            # at least one try left after it.
            if kind is not None and self._may_retry(
                kind, settings, selection.tries - 1, attempts, started, att, head
            ):
                up.abort()
                if resp.status in (403, 404):
                    # NGX_PEER_NEXT: the next server is tried, but this is no failure.
                    ctx.upstream_statuses.append(str(resp.status))
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
                continue
            selection.succeed(peer)
            ctx.upstream_statuses.append(str(resp.status))
            reusable = False
            try:
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
        kind: str,
        settings: LocationSettings,
        left: int,
        attempts: int,
        started: float,
        att: _Attempt,
        head: RequestHead,
    ) -> bool:
        """Whether ``proxy_next_upstream`` passes this try to the next server.

        ``ngx_http_upstream_next``: "if (u->peer.tries == 0 || (next_upstream & ft_type) !=
        ft_type || (u->request_sent && r->request_body_no_buffering) || (timeout &&
        ngx_current_msec - u->peer.start_time >= timeout))" finalize, where ``ft_type``
        gains ``NON_IDEMPOTENT`` for a POST, LOCK or PATCH already sent.  wsgate streams
        request bodies (nginx's ``proxy_request_buffering off``), so a try that sent a body
        is never repeated.  ``left`` is what remains of the tries after this one;
        ``proxy_next_upstream_tries`` caps them ("0 turns off this limitation").
        """
        allowed = settings.proxy_next_upstream
        if kind not in allowed or left <= 0:
            return False
        limit = settings.proxy_next_upstream_tries
        if limit and attempts >= limit:
            return False
        if att.sent:
            if att.streamed:
                return False
            if head.method in _NON_IDEMPOTENT and "non_idempotent" not in allowed:
                return False
        timeout = settings.proxy_next_upstream_timeout
        return not (timeout and self.gw.loop.time() - started >= timeout)

    def _keepalive(self, pp: ProxyPass, group: object) -> KeptEndpoints | None:
        """The idle-connection cache of ``group`` when its ``upstream`` block has ``keepalive``.

        One cache per peer group: a reload builds new groups, and the caches of groups that
        are gone are closed here when the first new one is made.
        """
        if pp.upstream is None:
            return None
        conf = self.gw.config.http.upstreams.get(pp.upstream)
        if conf is None or conf.keepalive <= 0:
            return None
        caches = _CACHES.get(self.gw)
        if caches is None:
            caches = _CACHES[self.gw] = {}
            self.gw.stopped.add_done_callback(lambda _: _close_caches(caches))
        entry = caches.get(id(group))
        if entry is not None and entry[0] is group:
            return entry[1]
        live = {id(g) for g in self.gw.peer_groups.values()}
        for key in [k for k in caches if k not in live]:
            caches.pop(key)[1].close_all()
        cache = KeptEndpoints(
            self.gw.loop,
            conf.keepalive,
            requests=conf.keepalive_requests,
            timeout=conf.keepalive_timeout,
            lifetime=conf.keepalive_time,
        )
        caches[id(group)] = (group, cache)
        return cache

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
                        retry.kind == "error"
                        and not retry.answered
                        and self._replayable(att, head, settings)
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

    @staticmethod
    def _replayable(att: _Attempt, head: RequestHead, settings: LocationSettings) -> bool:
        if att.streamed:
            return False
        return head.method not in _NON_IDEMPOTENT or (
            "non_idempotent" in settings.proxy_next_upstream
        )

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
                raise _Retry("error", 502, "request body already sent", "sending request")
            att.streamed = True
            await self._stream_body(head, up, framing, settings)
        return await self._read_response_head(up, head, settings)

    def _tls(self, settings: LocationSettings) -> UpstreamTls:
        """The TLS context of ``settings`` (built once per configuration)."""
        gw = self.gw
        entry = _TLS.get(gw)
        if entry is None or entry[0] is not gw.config:
            entry = _TLS[gw] = (gw.config, TlsContexts())
        try:
            return entry[1].get(settings.proxy_ssl)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise HttpError(502, f"cannot create the upstream SSL context: {exc}") from None

    async def _connect(
        self, peer: Peer, settings: LocationSettings, tls: UpstreamTls | None, name: str
    ) -> Endpoint:
        opening = UpstreamOpen(self.gw.loop, peer, tls, name)
        try:
            async with asyncio.timeout(settings.proxy_connect_timeout):
                ep = await opening.run()
        except TimeoutError:
            if opening.ep is not None:
                opening.ep.abort()
            raise _Retry(
                "timeout",
                504,
                f"upstream timed out (110: Connection timed out) while {opening.phase}",
                opening.phase,
            ) from None
        except HandshakeFailed as exc:
            if opening.ep is not None:
                opening.ep.abort()
            raise _Retry(
                "error", 502, f"{exc.args[0]} while {_HANDSHAKING}", _HANDSHAKING
            ) from None
        except OSError as exc:
            code = exc.errno or errno.ECONNREFUSED
            raise _Retry(
                "error",
                502,
                f"connect() failed ({code}: {os.strerror(code)}) while connecting to upstream",
                "connecting to upstream",
            ) from None
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
                raise _Retry(
                    "timeout",
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
                            "error",
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
                log = exc.log or "upstream sent invalid header"
                kind = "invalid_header" if "invalid" in log or "big" in log else "error"
                raise _Retry(kind, 502, log, phase, answered) from None
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
                    "error",
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
                "timeout",
                504,
                f"upstream timed out (110: Connection timed out) while {phase}",
                phase,
            ) from None
        except PeerClosed:
            raise _Retry(
                "error", 502, f"writev() failed (32: Broken pipe) while {phase}", phase
            ) from None

    async def _relay_response(
        self,
        head: RequestHead,
        ctx: RequestContext,
        settings: LocationSettings,
        up: Endpoint,
        rparser: ResponseParser,
        pending: list[ResponseEvent],
        resp: ResponseHead,
    ) -> tuple[tuple[bool, float | None], bool]:
        """Stream the response to the client; returns the handler's (keep, keepalive_timeout)
        and whether the upstream's response was read completely."""
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
        return (keep and complete, settings.keepalive_timeout), complete

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
        scheme: str,
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
        upstream_url = f"{scheme}://{peer.address}{ctx.request_uri}"
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
        return f"{exc.errno}: {os.strerror(exc.errno)}"
    return f"{errno.ECONNRESET}: Connection reset by peer"
