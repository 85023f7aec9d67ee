"""``proxy_pass``, the content handler: the upstream request, the tries, then the response.

:class:`Proxying` builds the request for the upstream (``proxy_set_header``, the URI, the
body's framing), picks peers (pure :mod:`wsgate.upstream.roundrobin`), makes one
:class:`~wsgate.proxy.attempt.Attempt` per try and passes a failed one to the next server as
``proxy_next_upstream`` allows (pure :func:`wsgate.upstream.next.may_retry`; NGINX-SEMANTICS.md
§8).  The response is then streamed to the client (:func:`wsgate.proxy.relay.relay_response`)
or, on a ``101`` to a request that carried ``Upgrade``, becomes a tunnel
(:func:`wsgate.proxy.relay.start_tunnel`; nginx's only trigger, NGINX-SEMANTICS.md §4).

``proxy_upgrade_protocols`` (wsgate's) is applied here, not in the access phase: a refused
``Upgrade`` is no denial, the request goes on without it, and only a proxied request has one
to refuse.

With ``keepalive`` in the ``upstream`` block, a connection goes back to the group's
:class:`~wsgate.proxy.endpoint.KeptEndpoints` after a complete keep-alive response to a request
that carried no ``Upgrade``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wsgate.access import upgrade_allowed, without_upgrade
from wsgate.cache.glue import CacheRequest, conditional_fields
from wsgate.config.model import LocationSettings, ProxyPass
from wsgate.errors import HttpError
from wsgate.http.body import EndOfMessage, Framing
from wsgate.http.cookies import rewrite_set_cookies
from wsgate.http.headers import BodyFraming, build_upstream_request, single_fields
from wsgate.http.reqbody import BodyStore, RequestBody, TempPath, memory_limit, read_request_body
from wsgate.http.response import ResponseHead
from wsgate.http.xar import AccelRedirect, carried_fields, target
from wsgate.proxy.attempt import Attempt, TryFailed
from wsgate.proxy.pacing import accel_limit_rate
from wsgate.proxy.relay import note_time, relay_response, start_tunnel
from wsgate.proxy.variables import evaluate
from wsgate.routing import proxy_uri
from wsgate.upstream.next import Failure, may_retry, status_failure
from wsgate.upstream.tls import UpstreamTls, ssl_name

if TYPE_CHECKING:
    from wsgate.proxy.exchange import Exchange, Outcome
    from wsgate.upstream.roundrobin import Peer, Selection

__all__ = ["Proxying"]


class Proxying:
    """One request's ``proxy_pass``: every try, and what the response becomes."""

    __slots__ = ("ex", "started", "attempts", "header_only", "response", "cache", "body")

    def __init__(self, ex: Exchange, *, header_only: bool = False) -> None:
        self.ex = ex
        #: A subrequest's (``auth_request``'s: "sr->header_only = 1"): the response head is
        #: kept in ``response``, nothing goes to the client, the upstream connection closes.
        self.header_only = header_only
        self.response: ResponseHead | None = None
        #: When the first try started (``proxy_next_upstream_timeout``).
        self.started = 0.0
        self.attempts = 0
        #: The request's use of ``proxy_cache`` (None: none).
        self.cache: CacheRequest | None = None
        #: The request body read whole (``proxy_request_buffering on``), closed at the end.
        self.body: RequestBody | None = None

    def _uri(self, pp: ProxyPass) -> str:
        """The URI sent upstream (:func:`~wsgate.routing.proxy_uri`), with what the rewrite
        module changed: "if (r->quoted_uri || r->internal)" it is escaped, after a rewrite
        the request-target is no longer sent, after ``rewrite ... break`` nor is the
        location's URI part."""
        head, r = self.ex.head, self.ex.r
        # After a rewrite or an internal redirect the client's request-target is no longer
        # the URI (r->valid_unparsed_uri cleared; a named location keeps it): $uri is sent.
        return proxy_uri(
            pp,
            r.location,
            head.target,
            r.ctx.uri,
            r.ctx.args,
            "%" in head.target or r.internal,
            valid_unparsed_uri=r.valid_unparsed_uri,
            valid_location=r.valid_location,
        )

    async def run(self) -> Outcome:
        try:
            return await self._run()
        finally:
            if self.cache is not None:
                self.cache.done()
            if self.body is not None:
                self.body.close()

    async def _run(self) -> Outcome:
        ex = self.ex
        front, head, r = ex.front, ex.head, ex.r
        gw, ctx, settings = front.gw, r.ctx, r.settings
        pp = settings.proxy_pass
        assert pp is not None
        refused = head.upgrade is not None and not upgrade_allowed(
            settings.proxy_upgrade_protocols, head.upgrade
        )
        if refused:
            if getattr(front.ep, "ws", None) is not None:
                # An RFC 8441 stream asked for a tunnel, not for a plain GET: refused here.
                raise HttpError(501, f'client sent disallowed protocol "{head.upgrade}"')
            self._refuse_upgrade()
        if pp.template is not None:
            # proxy_pass with variables: "a URI part replaces the whole request URI".
            ev = await evaluate(gw, pp, settings, ctx)
            pp, group = ev.pp, ev.group
            uri = ev.uri if ev.uri is not None else self._uri(pp)
            ctx.proxy_host = ev.proxy_host
        else:
            group = gw.peer_group(pp)
            uri = self._uri(pp)
            ctx.proxy_host = pp.proxy_host
        ctx.proxy_port = str(pp.port)
        cache = None
        if settings.proxy_cache is not None and not self.header_only:
            cache = self.cache = CacheRequest.begin(ex)
            if cache is not None:
                served = await cache.lookup()
                if served is not None:
                    return served
        set_headers = []
        for h in settings.proxy_set_headers:
            set_headers.append((h.name, h.value.render(ctx.lookup)))
        if refused:
            set_headers = without_upgrade(set_headers)
        if cache is not None and cache.cacheable:
            # nginx's cache headers are sent only for a response that may be cached.
            set_headers += conditional_fields(cache, {n.lower() for n, _ in set_headers})
        method = head.method if cache is None else cache.method
        body_framing = BodyFraming.none()
        # After an error page the body may be gone: discarded after a 413, or streamed to an
        # earlier upstream, which wsgate cannot do twice (nginx sends its buffered copy).
        # A subrequest (auth_request, an SSI include) never reads the client's body: in
        # nginx it sends the main request's buffered copy if there is one; wsgate sends none
        # (and so no Content-Length an upstream would wait on).
        if not (r.discard_body or self.ex.front.body_done or r.subrequest):
            if head.content_length:
                # With proxy_pass_request_body off nginx still sends the client's
                # Content-Length ($proxy_internal_body_length), and no body.
                body_framing = BodyFraming.content_length(head.content_length)
            elif head.chunked and settings.proxy_pass_request_body:
                body_framing = BodyFraming.chunked()
        buffered_body: RequestBody | None = None
        if not settings.proxy_pass_request_body:
            buffered_body = RequestBody()  # nothing is sent; the front connection discards it
        elif body_framing.kind is not Framing.NONE and (
            settings.proxy_request_buffering
            or (body_framing.kind is Framing.CHUNKED and settings.proxy_http_version == "1.0")
        ):
            # ngx_http_read_client_request_body: the whole body before the upstream is
            # contacted (an HTTP/1.0 upstream cannot take a chunked one even with buffering
            # off), sent with its Content-Length, and again to a next upstream.  Unbuffered,
            # client_body_in_file_only has no effect (ngx_http_request_body_save_filter).
            buffered_body = self.body = await self._read_whole_body(settings, body_framing)
            if buffered_body.path is None:
                ctx.set_request_body(buffered_body.data)
            else:
                ctx.set_request_body_file(buffered_body.path)
            body_framing = BodyFraming.content_length(buffered_body.size)
        request = build_upstream_request(
            method,
            uri,
            settings.proxy_http_version,
            head.headers,
            set_headers,
            ctx.proxy_host,
            body_framing,
        )

        tls: UpstreamTls | None = None
        tls_name = ""
        if pp.scheme == "https":
            tls = gw.upstream_caches.tls(gw.config, settings)
            tls_name = ssl_name(settings.proxy_ssl, ctx.proxy_host, ctx.lookup)
        scheme = pp.scheme
        selection = group.start(group.key(ctx))
        keep = gw.upstream_caches.keepalive(pp, group, gw.config, gw.peer_groups)
        self.started = gw.loop.time()
        streamed = False
        while True:
            peer = selection.next()
            if peer is None:
                # ngx_http_upstream_connect on NGX_BUSY: "no live upstreams", the group's name
                # in $upstream_addr, and 502 whatever the earlier tries ended with.
                gw.error_log.log(
                    "error",
                    "no live upstreams while connecting to upstream",
                    front.number,
                    ctx,
                    upstream=f"{scheme}://{group.name}{uri}",
                )
                ctx.upstream_addrs.append(group.name)
                ctx.upstream_statuses.append("502")
                ctx.upstream_times.append("0.000")
                ctx.upstream_lengths.append("0")
                ctx.upstream_bytes.append([0, 0])
                ctx.upstream_phase_times.append(["-", "-"])
                if cache is not None and cache.stale_for("error"):
                    return await cache.send_stale()
                raise HttpError(502)
            self.attempts += 1
            upstream_url = f"{scheme}://{peer.address}{uri}"
            ctx.upstream_addrs.append(peer.address)
            ctx.upstream_started = gw.loop.time()
            att = Attempt(
                gw,
                front.ep,
                front.body_events,
                front.number,
                head,
                settings,
                streamed=streamed,
                ready=front.body_ready,
                memory=memory_limit(
                    settings.client_body_buffer_size,
                    head.content_length if body_framing.kind is Framing.LENGTH else None,
                ),
                tls=tls,
                name=tls_name,
                head_request=method == "HEAD",
            )
            ctx.upstream_bytes.append(att.counts)
            ctx.upstream_phase_times.append(att.times)
            try:
                resp, rparser, rpending = await att.run(
                    peer, keep, request, buffered_body, body_framing, ctx
                )
                if att.memory is not None:
                    # A streamed body that fit its buffer is still $request_body.
                    ctx.set_request_body(b"".join(att.memory))
            except TryFailed as failed:
                streamed = att.streamed
                r.discard_body |= streamed
                if att.up is not None:
                    att.up.abort()
                gw.error_log.log("error", failed.log, front.number, ctx, upstream_url)
                self._failed(selection, peer, upstream_url, failed.status, failed.phase)
                gw.metrics.upstream_failed(group.name, peer.address, failed.kind.value)
                if self._may_retry(failed.kind, selection.tries, att):
                    continue
                if cache is not None and cache.stale_for(failed.kind.value):
                    return await cache.send_stale()
                raise HttpError(failed.status) from None
            except BaseException:
                if att.up is not None:
                    att.up.abort()
                selection.release(peer)
                # ngx_http_upstream_finalize_request: the try's response time is set however
                # it ended (a client that closed while the head was awaited: 499).
                note_time(gw.clock, ctx)
                raise
            streamed = att.streamed
            r.discard_body |= streamed
            up = att.up
            assert up is not None
            resp.headers, repeated = single_fields(resp.headers)
            for text in repeated:
                gw.error_log.log("warn", text, front.number, ctx, upstream_url)
            kind = status_failure(resp.status)
            # ngx_http_upstream_test_next: "peer.tries > 1" before this peer is freed, i.e.
            # at least one try left after it.
            if kind is not None and self._may_retry(kind, selection.tries - 1, att):
                up.abort()
                if not kind.counts_as_failure:
                    # NGX_PEER_NEXT: the next server is tried, but this is no failure.
                    ctx.upstream_statuses.append(str(resp.status))
                    note_time(gw.clock, ctx)
                    selection.succeed(peer)
                    selection.release(peer)
                else:
                    self._failed(
                        selection,
                        peer,
                        upstream_url,
                        resp.status,
                        "reading response header from upstream",
                    )
                    gw.metrics.upstream_failed(group.name, peer.address, kind.value)
                continue
            selection.succeed(peer)
            ctx.upstream_statuses.append(str(resp.status))
            ctx.upstream_headers = resp.headers
            reusable = False
            try:
                if cache is not None:
                    if kind is not None and cache.stale_for(kind.value):
                        note_time(gw.clock, ctx)
                        return await cache.send_stale()
                    if cache.revalidates(resp):
                        note_time(gw.clock, ctx)
                        return await cache.send_revalidated(resp)
                if resp.status >= 300 and _intercepted(resp, settings):
                    # ngx_http_upstream_intercept_errors: the upstream's body is not read;
                    # its connection is kept only if the response was all there.
                    reusable = _complete(resp, head.upgrade is None, rpending, rparser.buffered)
                    note_time(gw.clock, ctx)
                    if cache is not None:
                        cache.intercepted(resp)
                    if resp.status == 401:
                        r.headers_out += tuple(
                            (name, value)
                            for name, value in resp.headers
                            if name.lower() == "www-authenticate"
                        )
                    raise HttpError(resp.status)
                accel = _accel_redirect(resp, settings)
                if accel is not None:
                    # ngx_http_upstream_process_headers: the upstream's body is not relayed
                    # (its connection kept as an intercepted one's), the request body is
                    # discarded and the phases go on at the field's URI.
                    reusable = _complete(resp, head.upgrade is None, rpending, rparser.buffered)
                    note_time(gw.clock, ctx)
                    r.discard_body = True
                    kept = rewrite_set_cookies(
                        list(carried_fields(resp.headers)),
                        settings.proxy_cookie_domains,
                        settings.proxy_cookie_paths,
                        settings.proxy_cookie_flags,
                        ctx.lookup,
                    )
                    r.headers_out += tuple(kept)
                    if "X-Accel-Limit-Rate" not in settings.proxy_ignore_headers:
                        rate = accel_limit_rate(resp.headers)
                        if rate is not None:
                            ctx.limit_rate = rate
                    raise AccelRedirect(target(accel))
                if self.header_only:
                    self.response = resp
                    # The body is not read; a response that has none leaves the connection
                    # reusable (nginx: "u->keepalive = !u->headers_in.connection_close" for
                    # 204, 304 and Content-Length: 0).
                    reusable = (
                        resp.keep_alive
                        and (resp.status in (204, 304) or resp.content_length == 0)
                        and rparser.buffered == 0
                    )
                    return False, None
                if resp.status == 101 and r.subrequest and ctx.header("upgrade") is not None:
                    # ngx_http_upstream_upgrade: "if (r != r->main)" the subrequest ends
                    # with NGX_ERROR, which terminates the main request.
                    r.log("error", "connection upgrade in subrequest")
                    raise HttpError(444)
                if resp.status == 101 and (
                    refused or (head.upgrade is not None and not _upgrade_ok(resp, settings))
                ):
                    raise HttpError(
                        502,
                        f'upstream sent 101 to "{resp.header("upgrade") or ""}", which '
                        "proxy_upgrade_protocols does not allow, while reading response header "
                        "from upstream",
                    )
                if resp.status == 101 and head.upgrade is not None:
                    return start_tunnel(ex, up, rparser, resp, selection.group.name, peer, scheme)
                sink = None if cache is None else cache.response(resp)
                result, complete = await relay_response(ex, up, rparser, rpending, resp, sink)
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
                if front.tunnel is None:
                    selection.release(peer)
                    if not (reusable and keep is not None and att.kept and keep.put(att.kept)):
                        up.close()

    def _refuse_upgrade(self) -> None:
        """Treat the client's ``Upgrade`` as absent: ``proxy_upgrade_protocols`` names none of
        its protocols.  The header leaves the request (``$http_upgrade`` is empty, map results
        are recomputed) and ``head.upgrade`` becomes ``None``, so a ``101`` cannot tunnel."""
        ex = self.ex
        head, ctx = ex.head, ex.r.ctx
        ex.r.log("info", f'client sent disallowed upgrade protocol "{head.upgrade}"')
        head.headers = [(n, v) for n, v in head.headers if n.lower() != "upgrade"]
        head.upgrade = None
        ctx.headers = head.headers
        ctx.invalidate()

    def _failed(
        self, selection: Selection, peer: Peer, upstream_url: str, status: int, phase: str
    ) -> None:
        """Count a failed try against ``max_fails`` (``NGX_PEER_FAILED``)."""
        front, ctx = self.ex.front, self.ex.r.ctx
        ctx.upstream_statuses.append(str(status))
        note_time(front.gw.clock, ctx)
        if selection.fail(peer):
            front.gw.error_log.log(
                "warn",
                f"upstream server temporarily disabled while {phase}",
                front.number,
                ctx,
                upstream_url,
            )

    def _may_retry(self, kind: Failure, left: int, att: Attempt) -> bool:
        """:func:`wsgate.upstream.next.may_retry` for this try."""
        settings = self.ex.r.settings
        return may_retry(
            kind,
            settings.proxy_next_upstream,
            left=left,
            attempts=self.attempts,
            tries_limit=settings.proxy_next_upstream_tries,
            elapsed=self.ex.front.gw.loop.time() - self.started,
            timeout=settings.proxy_next_upstream_timeout,
            sent=att.sent,
            streamed=att.streamed,
            method=self.ex.head.method,
        )

    async def _read_whole_body(
        self, settings: LocationSettings, framing: BodyFraming
    ) -> RequestBody:
        """The body in memory or in a temporary file (:mod:`wsgate.http.reqbody`)."""
        ex = self.ex
        head, front = ex.head, ex.front
        if head.expect_continue and head.version == "1.1":
            head.expect_continue = False
            front.ep.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        directory, levels = settings.client_body_temp_path
        temp = TempPath(os.path.join(front.gw.config.prefix, directory), levels)
        known = framing.length if framing.kind is Framing.LENGTH else None
        limit = memory_limit(settings.client_body_buffer_size, known, ex.r.ctx.version == "2.0")
        store = BodyStore(temp, limit, settings.client_body_in_file_only, ex.r.log)
        return await read_request_body(
            front.body_events(settings.client_body_timeout, whole=True),
            store,
            settings.client_max_body_size,
        )


def _complete(
    resp: ResponseHead, no_upgrade: bool, pending: Sequence[object], buffered: int
) -> bool:
    """A response whose body is not read leaves its connection reusable only when all of it
    was read with the head (ngx_http_upstream_intercept_errors)."""
    return (
        resp.keep_alive
        and no_upgrade
        and any(isinstance(ev, EndOfMessage) for ev in pending)
        and buffered == 0
    )


def _accel_redirect(resp: ResponseHead, settings: LocationSettings) -> str | None:
    """The ``X-Accel-Redirect`` value the response redirects with: none for a 101 or when
    ``proxy_ignore_headers`` names the field."""
    if resp.status == 101 or "X-Accel-Redirect" in settings.proxy_ignore_headers:
        return None
    return resp.header("x-accel-redirect")


def _intercepted(resp: ResponseHead, settings: LocationSettings) -> bool:
    """``proxy_intercept_errors on`` and an ``error_page`` for the status: "proxied
    responses with codes greater than or equal to 300 ... intercepted and redirected to
    nginx for processing with the error_page directive" (a 101 never is)."""
    return settings.proxy_intercept_errors and any(
        page.status == resp.status for page in settings.error_pages
    )


def _upgrade_ok(resp: ResponseHead, settings: LocationSettings) -> bool:
    """A ``101`` may only switch to an allowed protocol: when the request named several
    (``Upgrade: h2c, websocket``) the upstream must not pick a refused one.  A ``101``
    without ``Upgrade`` (RFC 9110 §15.2.2 requires one) is left to the tunnel as before."""
    upgrade = resp.header("upgrade")
    return upgrade is None or upgrade_allowed(settings.proxy_upgrade_protocols, upgrade)
