"""The proxy cache in a request: nginx's ``ngx_http_upstream_cache`` and its friends, on
asyncio.

:class:`CacheRequest` is made by :class:`~wsgate.proxy.proxying.Proxying` for a request
whose location has ``proxy_cache`` (never one carrying ``Upgrade``: a WebSocket handshake is
neither served from the cache nor stored).  Before the upstream is asked,
:meth:`CacheRequest.lookup` serves a fresh entry (``HIT``), an expired one another request
is updating (``UPDATING``, with ``proxy_cache_use_stale updating``), or waits for the
request that holds ``proxy_cache_lock``.  After the upstream's head,
:meth:`CacheRequest.response` decides whether the response is kept and returns the sink its
body is written to while it streams to the client (:func:`wsgate.proxy.relay.relay_response`);
the file is renamed into place only when the body is complete.  A failed try may instead be
answered from an expired entry (``STALE``, ``proxy_cache_use_stale``), and a 304 to a
revalidation refreshes it (``REVALIDATED``).  A hit is sent as a static file is, by
:func:`wsgate.content.sender.send_file` (``sendfile``, ranges, ``If-Modified-Since``).

A worker's stores and their manager are :class:`wsgate.cache.manager.ProxyCaches`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from wsgate.cache.rules import (
    Entry,
    Freshness,
    digest,
    freshness,
    revalidated_valid,
    stored_fields,
    valid_until,
    variant,
)
from wsgate.cache.store import CacheStore, Hit, Writer
from wsgate.config.template import Template
from wsgate.errors import HttpError
from wsgate.http.headers import hidden_fields, http_date, visible_fields
from wsgate.http.headers_filter import upstream_fields
from wsgate.http.static import (
    NOT_SATISFIABLE,
    FileResponse,
    multipart,
    not_modified,
    parse_http_time,
    parse_ranges,
    range_applies,
)

if TYPE_CHECKING:
    from wsgate.cache.manager import ProxyCaches
    from wsgate.http.response import ResponseHead
    from wsgate.proxy.exchange import Exchange, Outcome
    from wsgate.proxy.front import FrontConnection
    from wsgate.proxy.subrequest import SubExchange

__all__ = ["BodySink", "CacheRequest", "RangeCut", "Status", "conditional_fields"]


class Status(enum.StrEnum):
    """``$upstream_cache_status`` values (``ngx_http_cache_status``)."""

    MISS = "MISS"
    BYPASS = "BYPASS"
    EXPIRED = "EXPIRED"
    STALE = "STALE"
    UPDATING = "UPDATING"
    REVALIDATED = "REVALIDATED"
    HIT = "HIT"


#: nginx's lock wait: "ngx_add_timer(&c->wait_event, (timer > 500) ? 500 : timer)".
_LOCK_POLL = 0.5


class RangeCut:
    """The bytes ``start``..``end`` (exclusive) of a streamed body of ``size`` bytes."""

    __slots__ = ("start", "end", "size", "seen")

    def __init__(self, start: int, end: int, size: int) -> None:
        self.start, self.end, self.size = start, end, size
        self.seen = 0

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end - 1}/{self.size}"

    def take(self, data: bytes) -> bytes:
        """What of the next ``data`` is in the range."""
        at = self.seen
        self.seen += len(data)
        return data[max(self.start - at, 0) : max(self.end - at, 0)]


class BodySink:
    """Where a miss's body goes while it streams: the entry's temporary file."""

    __slots__ = ("cache", "writer", "target", "done")

    def __init__(self, cache: CacheRequest, writer: Writer, target: bytes) -> None:
        self.cache = cache
        self.writer = writer
        self.target = target
        self.done = False

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def range_cut(
        self, status: int, headers: list[tuple[str, str]], length: int | None
    ) -> RangeCut | None:
        """The one range of the response streaming to the client, if it answers one: a 200
        of known length whose upstream allows ranges (``Accept-Ranges``), for a ``Range``
        of one range that applies (``If-Range``); several ranges get the whole 200
        (``r->single_range``)."""
        r = self.cache.ex.r
        if status != 200 or length is None:
            return None
        if not any(n.lower() == "accept-ranges" for n, _ in headers):
            return None
        etag = next((v for n, v in headers if n.lower() == "etag"), None)
        lm = next((v for n, v in headers if n.lower() == "last-modified"), None)
        mtime = -1 if lm is None else parse_http_time(lm)
        spec = range_applies(r.settings, r.ctx.headers, etag, mtime)
        if spec is None:
            return None
        ranges = parse_ranges(spec, length, r.settings.max_ranges)
        if not isinstance(ranges, list) or len(ranges) != 1:
            return None  # a 416 or several ranges: the whole response, as nginx's
        start, end = ranges[0]
        return RangeCut(start, end, length)

    def finish(self, complete: bool) -> None:
        """The body ended: complete, the entry is put in place; else it is dropped."""
        if self.done:
            return
        self.done = True
        cache = self.cache
        if complete and self.writer.commit(cache.store.path_of(self.target)):
            if cache.counted:
                cache.store.forget_uses(cache.main)
        else:
            self.writer.abort()
        cache.release()


class CacheRequest:
    """One request's use of a cache (nginx's ``r->cache`` with ``u->cache_status``)."""

    __slots__ = (
        "ex",
        "caches",
        "store",
        "key",
        "main",
        "cur",
        "secondary",
        "status",
        "stale",
        "cacheable",
        "locked",
        "counted",
        "stale_updating",
        "stale_error",
        "_background",
        "sink",
    )

    def __init__(self, ex: Exchange, caches: ProxyCaches, store: CacheStore, key: str) -> None:
        self.ex = ex
        self.caches = caches
        self.store = store
        self.key = key
        self.main = digest(key)
        #: The md5 whose file is used: the main key's, or a ``Vary`` variant's.
        self.cur = self.main
        self.secondary = False
        self.status = Status.MISS
        #: An expired entry (for ``proxy_cache_use_stale`` and revalidation).
        self.stale: Hit | None = None
        self.cacheable = True
        #: This request holds the entry's lock (``proxy_cache_lock``, "updating").
        self.locked = False
        #: A use was counted for ``proxy_cache_min_uses``.
        self.counted = False
        self.stale_updating = self.stale_error = False
        self._background: SubExchange | None = None
        #: The miss's body sink, once the response is kept.
        self.sink: BodySink | None = None

    # -- before the upstream ---------------------------------------------------------------
    @classmethod
    def begin(cls, ex: Exchange) -> CacheRequest | None:
        """The request's cache, or None: no cache for this request (``proxy_cache`` off or
        empty, a method not in ``proxy_cache_methods``, an ``Upgrade``).  A zone name no
        ``proxy_cache_path`` declares is a 500."""
        r, head = ex.r, ex.head
        settings, ctx = r.settings, r.ctx
        zone = settings.proxy_cache
        if zone is None or head.upgrade is not None:
            return None
        gw = ex.front.gw
        if isinstance(zone, Template):
            name = zone.render(ctx.lookup)
            if name in ("", "off"):
                return None
        else:
            name = zone
        spec = gw.config.http.cache_paths.get(name)
        if spec is None:
            raise HttpError(500, f'cache "{name}" not found')
        if head.method not in settings.proxy_cache_methods:
            return None
        caches = gw.upstream_caches.proxy_caches
        cache = cls(ex, caches, caches.store(spec), settings.proxy_cache_key.render(ctx.lookup))
        if _any_true(settings.proxy_cache_bypass, ctx.lookup):
            cache.status = Status.BYPASS
        ctx.cache_status = cache.status
        return cache

    @property
    def method(self) -> str:
        """The method sent upstream: "GET" for a HEAD with ``proxy_cache_convert_head``."""
        method = self.ex.head.method
        if method == "HEAD" and self.ex.r.settings.proxy_cache_convert_head:
            return "GET"
        return method

    async def lookup(self) -> Outcome | None:
        """Serve the request from the cache if it can be (the outcome), else None: go to
        the upstream (with what this request may store)."""
        if self.status == Status.BYPASS:
            return None
        served = await self._lookup()
        if served is None and not self._range_ok():
            self.cacheable = False
        return served

    def _range_ok(self) -> bool:
        """``ngx_http_upstream_cache_check_range``: a ``Range`` starting at or after
        ``proxy_cache_max_range_offset`` (or a suffix range, when one is set) makes the
        response not cacheable (and the range goes upstream)."""
        limit = self.ex.r.settings.proxy_cache_max_range_offset
        value = self.ex.r.ctx.header("range")
        if value is None or limit is None or not self.cacheable:
            return True
        if limit == 0:
            return False
        if len(value) < 7 or value[:6].lower() != "bytes=":
            return True
        spec = value[6:].lstrip(" ")
        if spec.startswith("-"):
            return False
        digits = spec[: len(spec) - len(spec.lstrip("0123456789"))]
        return int(digits or "0") < limit

    async def _lookup(self) -> Outcome | None:
        settings = self.ex.r.settings
        lock_timeout = settings.proxy_cache_lock_timeout
        waited_until = 0.0
        while True:
            now = time.time()
            hit = self._open()
            if hit is not None and hit.entry.error:
                _close(hit)
                if hit.entry.valid_sec >= int(now):
                    # "cached NGX_HTTP_BAD_GATEWAY, NGX_HTTP_GATEWAY_TIME_OUT, etc."
                    self.status = Status.HIT
                    self.ex.r.ctx.cache_status = self.status
                    raise HttpError(hit.entry.status)
                hit = None
            if hit is not None:
                entry = hit.entry
                if entry.valid_sec >= int(now):
                    self.status = Status.HIT
                    return await self.send(hit)
                return await self._expired(hit, now)
            if settings.proxy_cache_min_uses > 1 and not self.counted:
                self.counted = True
                if self.store.use(self.main) < settings.proxy_cache_min_uses:
                    self.cacheable = False
                    return None
            if not settings.proxy_cache_lock:
                return None
            if self.store.lock(self.cur, self, settings.proxy_cache_lock_age, now):
                self.locked = True
                return None
            if waited_until == 0.0:
                waited_until = now + lock_timeout
            if lock_timeout == 0 or now >= waited_until:
                if lock_timeout:
                    self.ex.r.log("info", "cache lock timeout")
                self.cacheable = False
                return None
            await self._wait(waited_until - now)

    async def _wait(self, left: float) -> None:
        """Until the lock's holder ends (in this worker: at once; another: polled)."""
        await self.caches.wait_unlocked(self.cur, min(left, _LOCK_POLL))

    async def _expired(self, hit: Hit, now: float) -> Outcome | None:
        settings = self.ex.r.settings
        entry = hit.entry
        self.stale_updating = entry.valid_sec + entry.updating_sec >= int(now)
        self.stale_error = entry.valid_sec + entry.error_sec >= int(now)
        use_updating = "updating" in settings.proxy_cache_use_stale or self.stale_updating
        background = getattr(self.ex, "background", False)
        if self.store.locked(self.cur, now, check_age=False):
            if use_updating and not background:
                self.status = Status.UPDATING
                return await self.send(hit)
        elif self.store.lock(self.cur, self, settings.proxy_cache_lock_age, now):
            self.locked = True
        if use_updating and settings.proxy_cache_background_update and not background:
            # "allows starting a background subrequest to update an expired cache item,
            # while a stale cached response is returned to the client": the stale entry is
            # sent, then the update runs (in an SSI include, on its own: the document is not
            # held up); a client that goes away does not end it.
            self.status = Status.STALE
            self.release()
            self._background = _background(self.ex)
            if self.ex.r.subrequest:
                self.caches.spawn(self._update())
                return await self.send(hit)
            outcome = await self.send(hit)
            await self._update()  # nginx's main request ends with its background subrequest
            return outcome
        self.status = Status.EXPIRED
        self.ex.r.ctx.cache_status = self.status
        self.stale = hit
        return None

    async def _update(self) -> None:
        """The background subrequest: the same URI through the phases again, its response
        stored and its body discarded."""

        async def discard(data: bytes) -> None:
            return None

        sub = self._background
        assert sub is not None
        try:
            await sub.output(discard)
        except (HttpError, OSError):
            pass

    def _open(self) -> Hit | None:
        """The entry for the request (its ``Vary`` variant: nginx's secondary key)."""
        store, log = self.store, self.ex.r.log
        self.cur, self.secondary = self.main, False
        hit = store.open(self.main, self.key, log)
        if hit is None or not hit.entry.vary:
            return hit
        want = variant(self.main, hit.entry.vary, self.ex.head.headers)
        if want == hit.entry.variant:
            return hit
        _close(hit)
        self.cur, self.secondary = want, True
        hit = store.open(want, self.key, log)
        if hit is not None and (
            not hit.entry.vary or variant(self.main, hit.entry.vary, self.ex.head.headers) != want
        ):
            log("crit", f'cache file "{hit.path}" has incorrect vary hash')
            _close(hit)
            return None
        return hit

    # -- the upstream's answer ----------------------------------------------------------------
    def response(self, resp: ResponseHead) -> BodySink | None:
        """The sink for a response's body if it is kept, else None (this request's lock,
        if any, is released then)."""
        r = self.ex.r
        settings, ctx = r.settings, r.ctx
        ctx.cache_status = self.status
        keep = self.cacheable and resp.status != 101
        if keep and _any_true(settings.proxy_no_cache, ctx.lookup):
            keep = False
        if not keep:
            self.release()
            return None
        now = int(time.time())
        fresh = freshness(resp.headers, settings.proxy_ignore_headers, now)
        valid = valid_until(fresh, settings.proxy_cache_valid, resp.status, now)
        if not valid:
            self.release()
            return None
        entry, target = self._entry(resp, fresh, valid, now)
        writer = self.store.writer(target, entry, r.log)
        if writer is None:
            self.release()
            return None
        self.sink = BodySink(self, writer, target)
        return self.sink

    def intercepted(self, resp: ResponseHead) -> None:
        """An error ``proxy_intercept_errors`` passes to ``error_page``: its status is kept
        while valid (from its fields, else ``proxy_cache_valid``), as nginx keeps
        ``node->error`` (ngx_http_upstream_intercept_errors)."""
        settings = self.ex.r.settings
        self.ex.r.ctx.cache_status = self.status
        if not self.cacheable:
            return
        now = int(time.time())
        fresh = freshness(resp.headers, settings.proxy_ignore_headers, now)
        valid = valid_until(fresh, settings.proxy_cache_valid, resp.status, now)
        if not valid:
            return
        entry, target = self._entry(resp, fresh, valid, now)
        entry.headers, entry.error = [], True
        writer = self.store.writer(target, entry, self.ex.r.log)
        if writer is not None:
            writer.commit()

    def _entry(
        self, resp: ResponseHead, fresh: Freshness, valid: int, now: int
    ) -> tuple[Entry, bytes]:
        target = self.cur
        var = b""
        if fresh.vary:
            var = variant(self.main, fresh.vary, self.ex.head.headers)
        if self.secondary and not (fresh.vary and var == self.cur):
            target = self.main  # "switch back to the original key"
        modified, etag = -1, ""
        if resp.status in (200, 206):
            lm = resp.header("last-modified")
            modified = -1 if lm is None else parse_http_time(lm)
            tag = resp.header("etag") or ""
            etag = tag if len(tag) <= 128 else ""
        entry = Entry(
            self.key,
            resp.status,
            resp.reason,
            stored_fields(resp.headers),
            valid,
            fresh.updating_sec,
            fresh.error_sec,
            now,
            modified,
            etag,
            fresh.vary,
            var,
        )
        return entry, target

    def stale_for(self, kind: str) -> bool:
        """Whether a failed try (``proxy_cache_use_stale``'s name for it) is answered
        from the expired entry."""
        if self.stale is None or self.status != Status.EXPIRED:
            return False
        use = self.ex.r.settings.proxy_cache_use_stale
        if kind.startswith("http_"):
            return kind in use
        return kind in use or self.stale_error

    async def send_stale(self) -> Outcome:
        assert self.stale is not None
        hit, self.stale = self.stale, None
        self.status = Status.STALE
        self.release()
        return await self.send(hit)

    def revalidates(self, resp: ResponseHead) -> bool:
        return (
            resp.status == 304
            and self.stale is not None
            and self.status == Status.EXPIRED
            and self.ex.r.settings.proxy_cache_revalidate
        )

    async def send_revalidated(self, resp: ResponseHead) -> Outcome:
        """A 304 to a revalidation: the entry is fresh again (its new times from the 304's
        fields, else its own, else ``proxy_cache_valid``) and is sent."""
        assert self.stale is not None
        hit, self.stale = self.stale, None
        settings = self.ex.r.settings
        now = int(time.time())
        ign = settings.proxy_ignore_headers
        valid, updating, error = revalidated_valid(
            freshness(resp.headers, ign, now),
            freshness(hit.entry.headers, ign, now),
            settings.proxy_cache_valid,
            hit.entry.status,
            now,
        )
        if valid:
            entry = hit.entry
            entry.valid_sec, entry.updating_sec, entry.error_sec = valid, updating, error
            entry.date = now
            self.store.update_header(hit, entry, self.ex.r.log)
        self.status = Status.REVALIDATED
        self.release()
        return await self.send(hit)

    def release(self) -> None:
        """Give back the entry's lock (waiters in this worker wake at once)."""
        if self.locked:
            self.locked = False
            self.store.unlock(self.cur, self)
            self.caches.unlocked(self.cur)

    def done(self) -> None:
        """The request is over: whatever it still holds is let go (a body that never
        finished streaming is not kept)."""
        if self.sink is not None:
            self.sink.finish(False)
        self.release()
        if self.stale is not None:
            _close(self.stale)
            self.stale = None

    # -- sending an entry -------------------------------------------------------------------
    async def send(self, hit: Hit) -> Outcome:
        """Send ``hit`` as nginx's ``ngx_http_cache_send``: the cached head through the
        upstream's header processing, the body from the file (ranges and conditional
        requests apply as to a static file)."""
        from wsgate.content.sender import send_file

        ex = self.ex
        r = ex.r
        settings, ctx = r.settings, r.ctx
        ctx.cache_status = self.status
        if self.stale is not None and self.stale is not hit:
            _close(self.stale)
            self.stale = None
        self.release()
        entry = hit.entry
        self.store.touch(hit, time.time())
        ctx.upstream_headers = entry.headers
        try:
            hidden = hidden_fields(settings.proxy_hide_headers, settings.proxy_pass_headers)
            headers, location = upstream_fields(
                visible_fields(entry.headers, hidden), settings, ctx.lookup
            )
            if location is not None:
                headers.append(("Location", r.absolute(location)))
            resp = _file_response(self, hit, headers)
        except BaseException:
            _close(hit)
            raise
        return await send_file(ex, resp)


def _file_response(cache: CacheRequest, hit: Hit, headers: list[tuple[str, str]]) -> FileResponse:
    """The entry as a :class:`FileResponse`: a 200 through the not_modified filter and, if
    the upstream sent ``Accept-Ranges``, the range filter (ngx_http_upstream_copy_allow_ranges:
    "if (r->cached) r->allow_ranges = 1", the field itself then the range filter's own); the
    body's bytes are after the header."""
    settings, ctx = cache.ex.r.settings, cache.ex.r.ctx
    entry = hit.entry
    start, size = entry.header_len, entry.body_len
    status = entry.status
    whole: list[bytes | tuple[int, int]] = [(start, size)] if size else []
    ranges_allowed = any(n.lower() == "accept-ranges" for n, _ in headers)
    if ranges_allowed:
        headers = [(n, v) for n, v in headers if n.lower() != "accept-ranges"]
    if status != 200:
        return FileResponse(status, hit.fd, headers, size, whole, hit.path)
    lm = next((v for n, v in headers if n.lower() == "last-modified"), None)
    mtime = -1 if lm is None else parse_http_time(lm)
    etag = next((v for n, v in headers if n.lower() == "etag"), None)
    code = not_modified(settings, ctx.headers, mtime, etag)
    if code == 412:
        raise HttpError(412)  # the caller closes the file
    if code == 304:
        # ngx_http_not_modified_header_filter: no type, length, ranges or encoding.
        dropped = ("content-type", "content-encoding")
        kept = [(n, v) for n, v in headers if n.lower() not in dropped]
        return FileResponse(304, hit.fd, kept, -1, [], hit.path)
    if not ranges_allowed:
        return FileResponse(200, hit.fd, headers, size, whole, hit.path)
    spec = range_applies(settings, ctx.headers, etag, mtime) if ctx.version != "0.9" else None
    ranges = parse_ranges(spec, size, settings.max_ranges) if spec is not None else None
    if ranges == NOT_SATISFIABLE:
        raise HttpError(416, headers=(("Content-Range", f"bytes */{size}"),))
    if isinstance(ranges, list):
        if len(ranges) == 1:
            a, b = ranges[0]
            headers.append(("Content-Range", f"bytes {a}-{b - 1}/{size}"))
            return FileResponse(206, hit.fd, headers, b - a, [(start + a, b - a)], hit.path)
        ctype = next((v for n, v in headers if n.lower() == "content-type"), "")
        mtype, parts = multipart(ranges, size, ctype)
        headers = [(n, v) for n, v in headers if n.lower() != "content-type"]
        headers.insert(0, ("Content-Type", mtype))
        shifted = [p if isinstance(p, bytes) else (start + p[0], p[1]) for p in parts]
        length = sum(p[1] if isinstance(p, tuple) else len(p) for p in shifted)
        return FileResponse(206, hit.fd, headers, length, shifted, hit.path)
    if settings.max_ranges != 0:
        headers.append(("Accept-Ranges", "bytes"))
    return FileResponse(200, hit.fd, headers, size, whole, hit.path)


def conditional_fields(cache: CacheRequest | None, configured: set[str]) -> list[tuple[str, str]]:
    """``ngx_http_proxy_cache_headers``: with ``proxy_cache``, no conditional or range field
    of the client goes upstream (unless ``proxy_set_header`` names it); a revalidation sends
    the expired entry's validators (``$upstream_cache_last_modified``, ``_etag``)."""
    lm = etag = ""
    stale = None if cache is None else cache.stale
    if (
        cache is not None
        and stale is not None
        and cache.status == Status.EXPIRED
        and cache.ex.r.settings.proxy_cache_revalidate
    ):
        if stale.entry.last_modified != -1:
            lm = http_date(stale.entry.last_modified)
        etag = stale.entry.etag
    pairs = [
        ("If-Modified-Since", lm),
        ("If-Unmodified-Since", ""),
        ("If-None-Match", etag),
        ("If-Match", ""),
        ("Range", ""),
        ("If-Range", ""),
    ]
    return [(n, v) for n, v in pairs if n.lower() not in configured]


def _any_true(templates: tuple[Template, ...], lookup: Callable[[str], str]) -> bool:
    """``ngx_http_test_predicates``: "If at least one value of the string parameters is not
    empty and is not equal to "0"..."."""
    for tpl in templates:
        value = tpl.render(lookup)
        if value and value != "0":
            return True
    return False


class _Detached:
    """The main request's front connection as a background update sees it: the client's
    going away is not its end (``ngx_http_subrequest`` with ``NGX_HTTP_SUBREQUEST_BACKGROUND``)."""

    __slots__ = ("_front", "ep")

    def __init__(self, front: object) -> None:
        self._front = front
        self.ep = _NeverGone()

    def __getattr__(self, name: str) -> object:
        return getattr(self._front, name)


class _NeverGone:
    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def gone(self) -> asyncio.Future[None]:
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        return self._future


def _background(ex: Exchange) -> SubExchange:
    """A clone of ``ex`` (same URI, method and headers) whose response updates the cache
    and goes nowhere."""
    from wsgate.proxy.subrequest import SubExchange

    class Background(SubExchange):
        __slots__ = ()
        background = True

    ctx = ex.r.ctx
    sub = Background(ex, ctx.uri, ctx.args)
    sub.head.method = ex.head.method  # a clone keeps the main request's method
    sub.front = cast("FrontConnection", _Detached(ex.front))
    return sub


def _close(hit: Hit) -> None:
    with contextlib.suppress(OSError):
        os.close(hit.fd)
