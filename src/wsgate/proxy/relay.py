"""Sending the upstream's answer to the client: a streamed response, or the tunnel.

:func:`relay_response` re-frames a response for the client (the pure
:func:`wsgate.http.framing.client_framing`: Content-Length kept, otherwise chunked for
HTTP/1.1 or close-delimited for HTTP/1.0, as nginx does) and streams it; :func:`start_tunnel`
hands both transports to :class:`wsgate.proxy.tunnel.Tunnel` on a ``101`` to a request that
carried ``Upgrade``, with the bytes each side sent early delivered first (NGINX-SEMANTICS.md
§4).

There the request's task ends: nothing awaits a tunnel, so an idle one keeps no coroutine
frames, parsers or buffers, only a :class:`TunnelEnd`.  The tunnel's ``on_close`` (the front
connection) finishes the request with :func:`tunnel_closed` (error-log and access-log lines,
the peer, ``limit_conn`` slots, ``stub_status``, metrics) and then the connection
(:meth:`WorkerContext.connection_closed
<wsgate.proxy.context.WorkerContext.connection_closed>`), whichever of the task's end and the
tunnel's close comes last doing the latter, once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from sys import intern
from typing import TYPE_CHECKING, NamedTuple, cast

from wsgate.config.model import AccessLog, LocationSettings
from wsgate.config.variables import (
    CONNECTION_TIME,
    UPSTREAM_BYTES,
    UPSTREAM_PHASE_TIMES,
    RequestContext,
    request_headers_read,
)
from wsgate.content.ssi import SsiFilter, ssi_applies, ssi_headers
from wsgate.errors import HttpError
from wsgate.http.body import Body, EndOfMessage
from wsgate.http.charset import proxied_charset
from wsgate.http.fields import first_value
from wsgate.http.framing import client_framing
from wsgate.http.gzip import (
    GunzipError,
    GunzipStream,
    GzipStream,
    gunzip_response,
    gzip_response,
)
from wsgate.http.headers import (
    LAST_CHUNK,
    BodyFraming,
    build_client_response_head,
    encode_chunk,
    for_version,
    hidden_fields,
    http_date,
    last_chunk,
    visible_fields,
)
from wsgate.http.headers_filter import (
    add_headers,
    expects_trailers,
    filter_headers,
    trailers,
    upstream_fields,
)
from wsgate.http.pages import STATUS_LINES
from wsgate.http.phases import UninitializedWarning, response_fields
from wsgate.http.response import ResponseEvent, ResponseHead, ResponseParser
from wsgate.proxy.endpoint import CountedEndpoint, Endpoint, PeerClosed
from wsgate.proxy.frames import is_websocket
from wsgate.proxy.pacing import accel_limit_rate, response_rate, send_paced
from wsgate.proxy.tunnel import Tunnel, websocket_figures, ws_features
from wsgate.redis_shed import RedisSlot

if TYPE_CHECKING:
    from wsgate.cache.glue import BodySink
    from wsgate.http.rate import WriteRate
    from wsgate.limits import SlotHolder
    from wsgate.observability.metrics import TunnelSeries
    from wsgate.proxy.context import WorkerContext
    from wsgate.proxy.exchange import Exchange, Outcome
    from wsgate.proxy.front import FrontConnection
    from wsgate.upstream.roundrobin import Peer

__all__ = ["TunnelEnd", "note_time", "relay_response", "start_tunnel", "tunnel_closed"]

#: The request headers the error log names (``host``, ``referrer``; see ``format_error_line``).
_ERROR_LOG_HEADERS = frozenset({"host", "referer"})


class TunnelEnd:
    """What the request of an open tunnel still needs when the tunnel closes: the context of
    its access-log and error-log lines, the peer to release, its metrics series, the length
    of the 101, the ``limit_conn`` slots it holds.

    No coroutine waits for a tunnel: each would keep its frames (request head, parsers,
    endpoints, selection state) and an ``asyncio.Task`` alive for the tunnel's whole life,
    several kilobytes per idle connection.  This record is what remains of the request.
    Not even the peer's :class:`~wsgate.upstream.roundrobin.Selection`: the tunnel holds its
    pick of ``peer`` until it closes (see :meth:`release`).
    """

    __slots__ = ("ctx", "settings", "series", "peer", "scheme", "head_len", "conn_slots", "opened")

    def __init__(
        self,
        ctx: RequestContext,
        settings: LocationSettings,
        peer: Peer,
        scheme: str,
        head_len: int,
        conn_slots: tuple[tuple[SlotHolder, str], ...],
        opened: float = 0.0,
    ) -> None:
        self.ctx = ctx
        self.settings = settings
        #: What ``tunnel_opened`` returned, for ``tunnel_closed``.
        self.series: TunnelSeries | None = None
        self.peer = peer
        self.scheme = scheme
        self.head_len = head_len
        self.conn_slots = conn_slots
        #: Loop time of the 101 (``$ws_duration``, the tunnel-duration histogram).
        self.opened = opened

    def release(self, gw: WorkerContext, tunnel: Tunnel) -> None:
        """What the tunnel held: its count, its metrics series, the peer's pick (its
        selection, not kept, is done: nothing else releases that pick once the tunnel holds
        it), and the ``limit_conn`` slots."""
        try:
            gw.tunnel_closed()
            gw.metrics.tunnel_closed(tunnel, self.series, gw.clock() - self.opened)
            self.peer.connection_closed()
        finally:
            for zone, key in self.conn_slots:
                zone.release(key)
            self.conn_slots = ()


#: Variables that read a context's :class:`~wsgate.config.variables.ColdFields`.
_COLD_NAMES = frozenset(
    {
        "upstream_response_length",
        "upstream_bytes_received",
        "upstream_bytes_sent",
        "upstream_connect_time",
        "upstream_header_time",
        "document_root",
        "realpath_root",
        "request_filename",
        "connection_time",
        "limit_rate",
        "proxy_host",
        "proxy_port",
        "request_length",
        "upstream_response_time",
    }
)
_COLD_PREFIXES = ("upstream_http_", "upstream_cookie_", "sent_http_", "sent_trailer_")


class _LogReads(NamedTuple):
    """What an ``access_logs`` tuple's formats and conditions read, for what a tunnel keeps."""

    #: The request headers their lines and the error log read (None: all).
    headers: frozenset[str] | None
    #: A ``$sent_http_*`` variable (the 101's fields).
    sent_fields: bool
    #: A field of :class:`~wsgate.config.variables.ColdFields`.
    cold: bool


#: ``access_logs`` tuples (by identity, each kept with its result) -> what they read.
_READS: dict[int, tuple[tuple[AccessLog, ...], _LogReads]] = {}


def _log_reads(logs: tuple[AccessLog, ...], maps: Mapping[str, object] | None = None) -> _LogReads:
    hit = _READS.get(id(logs))
    if hit is not None and hit[0] is logs:
        return hit[1]
    names = [
        name
        for log in logs
        for tpl in (log.format.template, log.condition)
        if tpl is not None
        for name in tpl.variables
    ]
    kept = request_headers_read(names, maps)
    if kept is not None:
        kept |= _ERROR_LOG_HEADERS
    reads = _LogReads(
        kept,
        any(name.startswith("sent_http_") for name in names),
        any(name in _COLD_NAMES or name.startswith(_COLD_PREFIXES) for name in names),
    )
    if len(_READS) >= 1024:  # configurations come and go with reloads
        _READS.clear()
    _READS[id(logs)] = (logs, reads)
    return reads


#: The ``upstream_bytes`` of a tunnel whose logs do not read them (shared, never appended to).
_NO_BYTES: list[list[int]] = cast("list[list[int]]", ())


def _slim(ctx: RequestContext, settings: LocationSettings) -> RequestContext:
    """``ctx`` as an open tunnel keeps it, for as long as the tunnel lives.

    Only the tunnel's access-log lines (their formats and ``if=`` conditions) and the error
    log read it again.  Of the request headers, the error log uses ``Host`` and ``Referer``
    (their first values, as ``first_value`` finds them) and the access logs those their
    variables read (all of them if one is a map result), so the others are let go; without
    ``access_log``, neither are ``$host``, ``$uri`` and the times (``ctx.start``, for
    ``$request_time``, and ``upstream_started``): they become shared empty values, and the
    metrics' handshake time is taken before.  Lists become tuples
    (nothing appends to them any more: ``_note_time`` makes a new list), and the strings
    tunnels often have in common (method, version, statuses, port, header names, host,
    request line: one WebSocket path) are interned: ``sys.intern`` keeps one copy while any
    tunnel uses it and none after (the client's address is interned on accept)."""
    reads = _log_reads(settings.access_logs, ctx.maps)
    kept = reads.headers
    if isinstance(ctx.uninitialized, UninitializedWarning):
        ctx.uninitialized = ctx.uninitialized.settle(settings)
    headers = []
    for name, value in ctx.headers:
        low = name.lower()
        if kept is None or low in kept:
            # Most clients of a server send the same Host.
            headers.append((intern(name), intern(value) if low == "host" else value))
    ctx.headers = tuple(headers)
    if settings.access_logs:
        ctx.host = intern(ctx.host)
    else:
        # No access log reads a cold field either: those go with them below.
        ctx.host = ctx.uri = ""
        ctx.start = 0.0
    ctx.method = intern(ctx.method)
    ctx.version = intern(ctx.version)
    ctx.request_line = intern(ctx.request_line)
    ctx.request_uri = intern(ctx.request_uri)
    # Read-only from here on (variables.py joins them); a tuple is smaller than a list.
    ctx.upstream_addrs = cast("list[str]", tuple(ctx.upstream_addrs))
    ctx.upstream_statuses = cast("list[str]", tuple(map(intern, ctx.upstream_statuses)))
    ctx.upstream_times = cast("list[str]", tuple(ctx.upstream_times))
    if kept is not None and not reads.cold:
        ctx.drop_cold()  # 8 bytes where each of its fields would be a slot
        return ctx
    # A log reads some cold field: they stay, each as small as what is read allows.
    ctx.proxy_port = intern(ctx.proxy_port)
    ctx.upstream_lengths = cast("list[str]", tuple(ctx.upstream_lengths))
    if kept is not None and UPSTREAM_BYTES not in kept:
        ctx.upstream_bytes = _NO_BYTES
    if kept is not None and UPSTREAM_PHASE_TIMES not in kept:
        ctx.upstream_phase_times = cast("list[list[str]]", ())
    if kept is not None and CONNECTION_TIME not in kept:
        ctx.connection_start = 0.0
    if ctx.upstream_headers:
        ctx.upstream_headers = tuple(
            (intern(n), v)
            for n, v in ctx.upstream_headers
            if kept is None or "upstream:" + n.lower() in kept
        )
    return ctx


def note_time(clock: Callable[[], float], ctx: RequestContext, length: int = 0) -> None:
    """``$upstream_response_time`` and ``$upstream_response_length`` of the current try:
    "keeps time spent on receiving the response from the upstream server ... Times of
    several responses are separated by commas"; the length is the body's, in bytes (0 for a
    try that got none, and for a tunnel) (ngx_http_upstream_module)."""
    # New lists: an open tunnel's context holds tuples (``_slim``).
    now = f"{clock() - ctx.upstream_started:.3f}"
    ctx.upstream_times = [*ctx.upstream_times, now]
    ctx.upstream_lengths = [*ctx.upstream_lengths, str(length)]


async def relay_response(
    ex: Exchange,
    up: Endpoint,
    rparser: ResponseParser,
    pending: list[ResponseEvent],
    resp: ResponseHead,
    sink: BodySink | None = None,
) -> tuple[Outcome, bool]:
    """Stream the response to the client; returns the exchange's (keep, keepalive_timeout)
    and whether the upstream's response was read completely.  ``sink`` (the proxy cache's
    file) gets the upstream's body as it is read, and whether it all came."""
    head, settings, ctx, front = ex.head, ex.r.settings, ex.r.ctx, ex.front
    gw = front.gw
    if resp.status == 101:
        return _lone_101(ex, resp), False
    with_trailers = expects_trailers(resp.status, settings.add_trailers)
    # After an error page: "if (r->err_status) r->headers_out.status = r->err_status".
    status, reason = resp.status, resp.reason
    if ex.r.err_status:
        status, reason = ex.r.err_status, STATUS_LINES.get(ex.r.err_status, "")
    ctx.status = status
    hidden = hidden_fields(settings.proxy_hide_headers, settings.proxy_pass_headers)
    headers, location = upstream_fields(visible_fields(resp.headers, hidden), settings, ctx.lookup)
    if ex.r.headers_out:  # after an error page
        own = location is not None or first_value(headers, "location") is not None
        headers = [*response_fields(ex.r, redirect=own), *headers]
    gun: GunzipStream | None = None
    if settings.gunzip:
        # Before the charset, SSI and gzip filters, as nginx's gunzip filter runs.
        headers, _, gun = gunzip_response(
            settings, ctx.headers, ctx.version, headers, [], not ex.r.subrequest
        )
    ssi = ssi_applies(settings, status, resp.headers) and resp.content_length != 0
    if ssi:
        headers = ssi_headers(settings, headers)
    recode: bytes | None = None
    if settings.charset is not None:
        headers, recode = proxied_charset(settings, headers, ctx.lookup, ex.r.log, resp.status)
    now = time.time()
    headers, added = filter_headers(
        status, headers, settings.add_headers, settings.expires, ctx.lookup, now
    )
    length = None if ssi or gun is not None else resp.content_length
    gz: GzipStream | None = None
    if settings.gzip and not ex.r.subrequest:
        headers, added, gz = gzip_response(
            settings, ctx.headers, ctx.version, status, headers, added, length, now
        )
    cut = None
    if sink is not None and gz is None and gun is None and recode is None and not ssi:
        # A response being cached answers one range itself (ngx_http_upstream_copy_allow_ranges).
        cut = sink.range_cut(status, headers, length)
        if cut is not None:
            status, reason, length = 206, STATUS_LINES[206], cut.length
            headers = [*headers, ("Content-Range", cut.content_range)]
            ctx.status = status
    plan = client_framing(
        head.method,
        head.version,
        status if cut is not None else resp.status,
        None if gz is not None else length,
        head.keep_alive,
        trailers=with_trailers,
        chunked=settings.chunked_transfer_encoding,
    )
    keep, no_body, chunk_out = plan.keep_alive, plan.no_body, plan.chunked
    out = build_client_response_head(
        status,
        reason,
        headers,
        server_tokens=settings.server_tokens,
        date=http_date(now),
        framing=plan.framing,
        keep_alive=keep,
        keepalive_header=settings.keepalive_header,
        upgrade=False,
        added=added,
        hidden=hidden,
        location=None if location is None else ex.r.absolute(location),
    )
    ctx.sent_head = out
    out = for_version(head.version, out)
    ep = front.ep
    ctx.bytes_sent = len(out)
    body_bytes = upstream_bytes = 0
    complete = noted = False
    rate = _rate(ex, resp)
    counts = ctx.upstream_bytes[-1] if ctx.upstream_bytes else None
    filt: SsiFilter | None = None
    head_out = out
    sent = 0
    if ssi and not no_body:
        # The body goes through the SSI filter, which writes (and drains) its output; the
        # head goes with its first output (as nginx's write filter holds it).
        async def write(data: bytes) -> None:
            nonlocal body_bytes, head_out
            if gz is not None and not (data := gz.compress(data)):
                return
            framed = encode_chunk(data) if chunk_out else data
            if head_out:
                framed, head_out = head_out + framed, b""
            ep.write(framed)
            body_bytes += len(data)
            await ep.drain()

        filt = SsiFilter(ex, write)
    try:
        if filt is not None:
            pass  # written with the first output
        elif rate is None:
            ep.write(out)
            head_out = b""
        else:
            sent = await send_paced(ep, out, rate, 0)
            head_out = b""
        while True:
            for ev in pending:
                if isinstance(ev, Body):
                    upstream_bytes += len(ev.data)
                    if sink is not None:
                        sink.write(ev.data)
                    if no_body:
                        continue
                    data = ev.data if gun is None else gun.feed(ev.data)
                    if recode is not None:
                        data = data.translate(recode)
                    if filt is not None:
                        await filt.feed(data)
                        continue
                    if gz is not None and not (data := gz.compress(data)):
                        continue
                    if cut is not None and not (data := cut.take(data)):
                        continue
                    size = len(data)
                    data = encode_chunk(data) if chunk_out else data
                    if rate is None:
                        ep.write(data)
                    else:
                        sent = await send_paced(ep, data, rate, sent)
                    body_bytes += size
                elif isinstance(ev, EndOfMessage):
                    complete = True
            if complete:
                if gun is not None and not no_body:
                    gun.finish()
                if filt is not None:
                    await filt.finish()
                    if head_out:
                        ep.write(head_out)
                        head_out = b""
                if gz is not None and not no_body:
                    sent = await _gzip_out(ep, gz.finish(), chunk_out, rate, sent)
                    body_bytes = gz.zout
                break
            if gz is not None and not no_body and (gz.zin or filt is None):
                # What this read made goes before the next wait for the upstream, as
                # nginx's gzip filter flushes on an unbuffered upstream's every read
                # (``Z_SYNC_FLUSH`` for a buffer with ``flush`` set).
                if head_out:
                    ep.write(head_out)
                    head_out = b""
                sent = await _gzip_out(ep, gz.flush(), chunk_out, rate, sent)
                body_bytes = gz.zout
            if ep.closed:
                raise PeerClosed("client closed")
            await ep.drain()
            try:
                rparser.check()  # a fault in the bytes already read comes before waiting
                async with asyncio.timeout(settings.proxy_read_timeout):
                    data = await up.read()
                if counts is not None:
                    counts[0] += len(data)
                pending = rparser.feed(data) if data else rparser.feed_eof()
            except TimeoutError:
                gw.error_log.log(
                    "error",
                    "upstream timed out (110: Connection timed out) while reading upstream",
                    front.number,
                    ctx,
                )
                keep = False
                break
            except HttpError as exc:
                # The head is the client's already: nginx logs the fault ("upstream
                # prematurely closed connection", "upstream sent invalid chunked
                # response") and closes, with no error page inside the response.
                gw.error_log.log("error", exc.log, front.number, ctx)
                keep = False
                break
        if complete and chunk_out:
            if with_trailers:
                # Made when the body ends: this try's $upstream_response_* are known.
                note_time(gw.clock, ctx, upstream_bytes)
                noted = True
            ep.write(
                last_chunk(trailers(resp.status, settings.add_trailers, ctx.lookup, ctx))
                if with_trailers
                else LAST_CHUNK
            )
        if complete:
            await ep.drain()
    except PeerClosed:
        keep = False
        ctx.status = ctx.status or 499
    except GunzipError as exc:
        # The head is the client's already: logged, and the connection closed.
        gw.error_log.log("error", str(exc), front.number, ctx)
        keep = complete = False
    finally:
        if sink is not None:
            sink.finish(complete)
    ctx.body_bytes_sent = body_bytes
    ctx.bytes_sent += body_bytes
    if gz is not None and not no_body:
        ctx.gzip_ratio = gz.ratio
    if not noted:
        note_time(gw.clock, ctx, upstream_bytes)
    ex.log()
    return (keep and complete, settings.keepalive_timeout), complete


async def _gzip_out(
    ep: Endpoint, data: bytes, chunked: bool, rate: WriteRate | None, sent: int
) -> int:
    """Compressed bytes the stream gave up (flushed or finished) to the client, framed;
    returns ``sent`` for ``limit_rate`` (bytes of the response so far)."""
    if not data:
        return sent
    framed = encode_chunk(data) if chunked else data
    if rate is None:
        ep.write(framed)
        return sent + len(framed)
    return await send_paced(ep, framed, rate, sent)


def _rate(ex: Exchange, resp: ResponseHead) -> WriteRate | None:
    """``limit_rate`` for a proxied response: ``X-Accel-Limit-Rate`` first, and none at all
    when nginx would not buffer it (``proxy_buffering off``, ``X-Accel-Buffering: no``);
    either field is not read when ``proxy_ignore_headers`` names it."""
    settings, ctx, front = ex.r.settings, ex.r.ctx, ex.front
    buffering = settings.proxy_buffering
    ignored = settings.proxy_ignore_headers
    accel = (
        None if "X-Accel-Buffering" in ignored else first_value(resp.headers, "x-accel-buffering")
    )
    if accel is not None:
        low = accel.lower()
        buffering = True if low.startswith("yes") else False if low.startswith("no") else buffering
    if not buffering:
        ctx.limit_rate = 0
        return None
    accel_rate = None if "X-Accel-Limit-Rate" in ignored else accel_limit_rate(resp.headers)
    if accel_rate is not None:
        ctx.limit_rate = accel_rate
    gw = front.gw
    return response_rate(
        settings, ctx, lambda text: gw.error_log.log("error", text, front.number, ctx)
    )


def _head_101(ex: Exchange, resp: ResponseHead, upgrade: bool) -> bytes:
    """The client's 101 head from the upstream's (``ctx.status`` set first: ``$status`` in
    an ``add_header`` value).  101 is no "safe" status: only ``add_header ... always``
    applies (nginx's headers filter runs for the 101 as for any response header)."""
    settings, ctx = ex.r.settings, ex.r.ctx
    ctx.status = 101
    hidden = hidden_fields(settings.proxy_hide_headers, settings.proxy_pass_headers)
    # ngx_http_upstream_process_headers runs for a 101 as for any response.
    headers, location = upstream_fields(visible_fields(resp.headers, hidden), settings, ctx.lookup)
    headers, added = add_headers(101, headers, settings.add_headers, ctx.lookup)
    return build_client_response_head(
        101,
        resp.reason,
        headers,
        server_tokens=settings.server_tokens,
        date=http_date(time.time()),
        framing=BodyFraming.none(),
        keep_alive=False,
        keepalive_header=None,
        upgrade=upgrade,
        added=added,
        hidden=hidden,
        location=None if location is None else ex.r.absolute(location),
    )


def _lone_101(ex: Exchange, resp: ResponseHead) -> Outcome:
    """A 101 to a request that carried no ``Upgrade``: no tunnel (nginx sets
    ``u->upgrade`` only "if (r->headers_in.upgrade)"), so its head goes to the client and
    nothing the upstream sends after it does (nginx-tests ``proxy_upgrade.t``, "handshake
    noupgrade": no byte after the head, ``$body_bytes_sent`` 0).  A backend cannot push a
    stream to a client that did not ask for one.  Both connections are then closed."""
    settings, ctx = ex.r.settings, ex.r.ctx
    out = _head_101(ex, resp, upgrade=False)
    ctx.sent_head = out
    out = for_version(ctx.version, out)
    ex.front.ep.write(out)
    ctx.bytes_sent = len(out)
    ctx.body_bytes_sent = 0
    note_time(ex.front.gw.clock, ctx)
    ex.log()
    return False, settings.keepalive_timeout


def start_tunnel(
    ex: Exchange,
    up: Endpoint,
    rparser: ResponseParser,
    resp: ResponseHead,
    group: str,
    peer: Peer,
    scheme: str,
) -> Outcome:
    """Send the 101 and hand both transports to a :class:`Tunnel`, whose ``on_close`` is
    the front connection; the request's coroutines end here, with only a
    :class:`TunnelEnd` kept of the request."""
    front, head, settings, ctx = ex.front, ex.head, ex.r.settings, ex.r.ctx
    gw = front.gw
    out = _head_101(ex, resp, upgrade=True)
    ep = front.ep
    ep.write(out)
    head_len = len(out)
    if _log_reads(settings.access_logs, ctx.maps).sent_fields:
        # $sent_http_* in a tunnel's log line (the 101's fields); kept only when read.
        ctx.sent_head = out
    early_to_client = rparser.take_buffered() + bytes(up.buffer)
    up.buffer.clear()
    early_to_upstream = front.parser.take_buffered() + bytes(ep.buffer)
    ep.buffer.clear()
    assert ep.transport is not None and up.transport is not None
    tunnel = Tunnel(
        gw.loop,
        ep.transport,
        up.transport,
        read_timeout=settings.proxy_read_timeout,
        send_timeout_upstream=settings.proxy_send_timeout,
        send_timeout_client=settings.send_timeout,
        # The connection itself (``__call__``): a bound method would cost 64 bytes for
        # as long as the tunnel is open, as would a clock of its own.
        on_close=front,
        clock=gw.clock,
        # The 101 names the protocol switched to (RFC 9110 §7.8); only WebSocket has frames.
        websocket=is_websocket(resp.header("upgrade") or head.upgrade),
        features=ws_features(settings),
        sizes=settings.websocket_metrics,
    )
    labels = (ctx.server_name, ex.location, group, peer.address)
    seconds = time.time() - ctx.start  # before ``_slim``, which may drop the start
    slots = ex.r.conn_slots
    end = TunnelEnd(_slim(ctx, settings), settings, peer, scheme, head_len, slots, gw.clock())
    ex.r.conn_slots = ()  # the tunnel's now: released when it closes
    for holder, _ in slots:
        if type(holder) is RedisSlot:
            holder.tunnel = tunnel  # a zone kept in Redis may close it (over its limit)
    front.tunnel_end = end
    front.tunnel = tunnel
    ep.detach()
    if isinstance(up, CountedEndpoint):
        up.release()  # the tunnel counts its upstream connection from now on
    gw.add_tunnel()
    # Metrics: counted here and when it ends, never on the relay path; before start(),
    # which may already end the tunnel.
    end.series = gw.metrics.tunnel_opened(tunnel, labels, seconds)
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
            side.connection_lost(endpoint.error if isinstance(endpoint.error, Exception) else None)
        elif endpoint.eof:
            side.eof_received()
    return False, None


def tunnel_closed(front: FrontConnection, tunnel: Tunnel, end: TunnelEnd) -> None:
    """The end of an open tunnel's request, as nginx finalizes an upgraded request when both
    connections are closed: what it held (:meth:`TunnelEnd.release`), the timeout line in
    the error log, the access-log line (its metrics were counted by ``tunnel_closed``)."""
    gw, ctx = front.gw, end.ctx
    try:
        end.release(gw, tunnel)
        reason = tunnel.timeout_reason
        if reason is not None:
            gw.error_log.log(
                "info",
                f"{reason} timed out (110: Connection timed out) while proxying upgraded "
                "connection",
                front.number,
                ctx,
                f"{end.scheme}://{end.peer.address}{ctx.request_uri}",
            )
        note = tunnel.note  # a WebSocket feature ended it (wsgate.proxy.tunnel)
        if note is not None:
            gw.error_log.log(
                note[0],
                f"{note[1]} while proxying upgraded connection",
                front.number,
                ctx,
                f"{end.scheme}://{end.peer.address}{ctx.request_uri}",
            )
        ctx.body_bytes_sent = tunnel.bytes_to_client
        ctx.bytes_sent = end.head_len + tunnel.bytes_to_client
        note_time(gw.clock, ctx)
        if end.settings.access_logs:
            if tunnel.websocket:
                ctx.set_websocket_figures(websocket_figures(tunnel, gw.clock() - end.opened))
            gw.access_logs.write(end.settings.access_logs, ctx, end.settings.open_log_file_cache)
    except Exception as exc:  # what the connection's task reported when it ran to here
        gw.error_log.log("alert", f"unexpected error: {exc!r}", front.number)
