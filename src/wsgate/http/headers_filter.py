"""``add_header`` and ``expires``: nginx's headers filter (its headers_filter_module), pure.

https://nginx.org/en/docs/http/ngx_http_headers_module.html#add_header: "Adds the specified
field to a response header provided that the response code equals 200, 201, 204, 206, 301,
302, 303, 304, 307, or 308. ... If the always parameter is specified, the header field will be
added regardless of the response code."  The value may contain variables; an empty value adds
nothing (``ngx_http_add_header``: "if (value->len)").

As in nginx, four names are not simply added (``ngx_http_set_headers[]``): ``Cache-Control``
and ``Link`` are added as further lines; ``Last-Modified`` and ``ETag`` replace the response's
own field where it stands (its last one, the one nginx points at), and an empty value removes
it.  Every other name is added after the response's fields, so ``add_header X-A 1`` next to an
upstream's ``X-A: 0`` gives two fields.

The filter runs for every response the request gets -- proxied, ``return``, ``stub_status``,
``prometheus``, wsgate's error pages and a ``101`` -- with the status the client receives;
``101`` is not in the list, so only ``always`` headers reach a WebSocket handshake response.

``expires`` (https://nginx.org/en/docs/http/ngx_http_headers_module.html#expires,
``ngx_http_set_expires``) runs first, for the same statuses: it sets ``Expires`` and
``Cache-Control`` -- the response's own ``Expires`` and first ``Cache-Control`` get the new
values where they stand and its further ``Cache-Control`` lines are removed; when it has
none, they are added, ``Expires`` first.  ``add_header Cache-Control`` then adds further
lines after them, as in nginx.
"""

from __future__ import annotations

import time
from calendar import timegm
from collections.abc import Callable
from email.utils import formatdate, parsedate_tz

from wsgate.config.model import AddHeader, Expires, LocationSettings
from wsgate.config.units import ExpiresError, parse_expires
from wsgate.config.variables import RequestContext
from wsgate.http.cookies import rewrite_set_cookies
from wsgate.http.redirects import rewrite_redirects

__all__ = [
    "SAFE_STATUSES",
    "add_headers",
    "chunked_trailer",
    "filter_headers",
    "set_expires",
    "expects_trailers",
    "trailers",
    "upstream_fields",
    "wants_trailer",
]

#: The statuses every ``add_header`` applies to (``safe_status`` in nginx's filter).
SAFE_STATUSES = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})

#: Names whose field is replaced in place, not added (``ngx_http_set_response_header``).
_REPLACED = frozenset({"last-modified", "etag"})


#: ``$sent_http_*`` nginx computes from the connection, not from headers_out's list.
_FROM_CONNECTION = frozenset({"connection", "keep_alive", "transfer_encoding"})


def add_headers(
    status: int,
    headers: list[tuple[str, str]],
    entries: tuple[AddHeader, ...],
    lookup: Callable[[str], str],
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``headers`` (the response's own fields, in order) after ``entries`` for ``status``,
    and the fields to write after them.  ``headers`` is not changed; with no entry that
    applies, it is returned as it is."""
    if not entries:
        return headers, []
    safe = status in SAFE_STATUSES
    added: list[tuple[str, str]] = []

    def sent(name: str) -> str:
        # nginx's add_header values are evaluated one by one into headers_out: a
        # ``$sent_http_*`` sees the response's fields and what earlier lines added
        # (http_headers_multi.t); those nginx makes from the connection stay the context's.
        if name.startswith("sent_http_") and name[10:] not in _FROM_CONNECTION:
            want = name[10:]
            return ", ".join(
                v for k, v in (*headers, *added) if k.lower().replace("-", "_") == want
            )
        return lookup(name)

    for h in entries:
        if not safe and not h.always:
            continue
        value = h.value.render(sent)
        lname = h.name.lower()
        if lname in _REPLACED:
            headers = _replace(headers, added, lname, h.name, value)
        elif value:
            added.append((h.name, value))
    return headers, added


def _replace(
    headers: list[tuple[str, str]],
    added: list[tuple[str, str]],
    lname: str,
    name: str,
    value: str,
) -> list[tuple[str, str]]:
    """``ngx_http_set_response_header``: the last ``lname`` field (of the response, or one an
    earlier entry added) gets ``name: value``; with none, it is added; an empty value removes
    it.  ``added`` is changed in place; a changed ``headers`` is a new list."""
    for i in range(len(added) - 1, -1, -1):
        if added[i][0].lower() == lname:
            if value:
                added[i] = (name, value)
            else:
                del added[i]
            return headers
    for i in range(len(headers) - 1, -1, -1):
        if headers[i][0].lower() == lname:
            headers = list(headers)
            if value:
                headers[i] = (name, value)
            else:
                del headers[i]
            return headers
    if value:
        added.append((name, value))
    return headers


def upstream_fields(
    headers: list[tuple[str, str]],
    settings: LocationSettings,
    lookup: Callable[[str], str],
) -> tuple[list[tuple[str, str]], str | None]:
    """An upstream's fields as the proxy module passes them on (``ngx_http_upstream_process_
    headers``: ``proxy_redirect`` on ``Location`` and ``Refresh``, ``proxy_cookie_*`` on
    ``Set-Cookie``), before the header filters; and the ``Location`` nginx's header filter
    will make absolute (a rewritten one starting with ``/``, with ``absolute_redirect on``),
    taken out of the fields: it is written at nginx's place for it, after
    ``Content-Length``.  ``headers`` is not changed."""
    headers, at = rewrite_redirects(headers, settings.proxy_redirects, lookup)
    headers = rewrite_set_cookies(
        headers,
        settings.proxy_cookie_domains,
        settings.proxy_cookie_paths,
        settings.proxy_cookie_flags,
        lookup,
    )
    if at is None or not settings.absolute_redirect or not headers[at][1].startswith("/"):
        return headers, None
    return headers[:at] + headers[at + 1 :], headers[at][1]


def trailers(
    status: int,
    entries: tuple[AddHeader, ...],
    lookup: Callable[[str], str],
    sent: RequestContext | None = None,
) -> list[tuple[str, str]]:
    """``add_trailer``'s fields for a response with ``status`` (``ngx_http_trailers_filter``:
    the statuses of ``add_header``, or ``always``; an empty value adds nothing), rendered
    when the body ends; each one added is seen by the next ones as ``$sent_trailer_*`` of
    the request ``sent``."""
    safe = status in SAFE_STATUSES
    out: list[tuple[str, str]] = []
    for t in entries:
        if safe or t.always:
            value = t.value.render(lookup)
            if value:
                out.append((t.name, value))
                if sent is not None:
                    sent.sent_trailer = tuple(out)  # $sent_trailer_* of the later ones
    return out


def expects_trailers(status: int, entries: tuple[AddHeader, ...]) -> bool:
    """``r->expect_trailers``: an ``add_trailer`` applies to ``status`` (nginx's headers
    filter); the body is then chunked for an HTTP/1.1 client, even with a known length."""
    safe = status in SAFE_STATUSES
    return any(safe or t.always for t in entries)


def chunked_trailer(
    status: int,
    method: str,
    version: str,
    settings: LocationSettings,
    lookup: Callable[[str], str],
    sent: RequestContext | None = None,
) -> list[tuple[str, str]] | None:
    """The trailer of a response made in one piece (an error page, a redirect), or None
    when it gets none (:func:`wants_trailer`)."""
    if not wants_trailer(status, method, version, settings):
        return None
    return trailers(status, settings.add_trailers, lookup, sent)


def wants_trailer(status: int, method: str, version: str, settings: LocationSettings) -> bool:
    """Whether a response made here gets a trailer: an ``add_trailer`` applies, and nginx's
    chunked filter chunks it (not for HEAD, 1xx, 204, 304, an HTTP/1.0 client, or
    ``chunked_transfer_encoding off``)."""
    return not (
        method == "HEAD"
        or version != "1.1"
        or not settings.chunked_transfer_encoding
        or status < 200
        or status in (204, 304)
        or not expects_trailers(status, settings.add_trailers)
    )


#: ``expires epoch`` and ``expires max``'s fixed values.
EPOCH = ("Thu, 01 Jan 1970 00:00:01 GMT", "no-cache")
MAX = ("Thu, 31 Dec 2037 23:55:55 GMT", "max-age=315360000")


def filter_headers(
    status: int,
    headers: list[tuple[str, str]],
    entries: tuple[AddHeader, ...],
    expires: Expires,
    lookup: Callable[[str], str],
    now: float,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """nginx's headers filter: :func:`set_expires`, then :func:`add_headers`; the response's
    own fields and the fields to write after them."""
    headers, added = set_expires(status, headers, expires, lookup, now)
    headers, more = add_headers(status, headers, entries, lookup)
    return headers, added + more if added else more


def set_expires(
    status: int,
    headers: list[tuple[str, str]],
    expires: Expires,
    lookup: Callable[[str], str],
    now: float,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``ngx_http_set_expires`` for a response with ``status`` and ``headers`` (its own
    fields) at ``now``: the fields, and the ones to add after them.  ``headers`` is not
    changed; with ``expires off`` or a status not in :data:`SAFE_STATUSES` it is returned as
    it is.  A variable value that is not a valid ``expires`` value, or is ``off``, sets
    nothing (nginx's "rc != NGX_OK: return NGX_OK")."""
    if expires.kind == "off" or status not in SAFE_STATUSES:
        return headers, []
    kind, seconds = expires.kind, expires.time
    if expires.value is not None:
        try:
            kind, seconds = parse_expires(expires.value.render(lookup), kind)
        except ExpiresError:
            return headers, []
        if kind == "off":
            return headers, []
    values = _expires_values(kind, seconds, expires.time, headers, int(now))
    if values is None:
        return headers, []
    return _place(headers, *values)


def _expires_values(
    kind: str, seconds: int, conf_time: int, headers: list[tuple[str, str]], now: int
) -> tuple[str, str] | None:
    """(Expires, Cache-Control) as ``ngx_http_set_expires`` computes them; ``conf_time`` is
    the configured time (0 for a variable value), whose sign alone makes ``no-cache``."""
    if kind == "epoch":
        return EPOCH
    if kind == "max":
        return MAX
    if seconds == 0 and kind != "daily":
        return formatdate(now, usegmt=True), "max-age=0"
    if kind == "daily":
        when = _next_time(seconds, now)
        max_age = when - now
    else:
        last_modified = _last_modified_time(headers) if kind == "modified" else -1
        if last_modified == -1:
            max_age = seconds
            when = seconds + now
        else:
            when = seconds + last_modified
            max_age = when - now
    try:
        date = formatdate(when, usegmt=True)
    except (OverflowError, OSError, ValueError):
        return None  # beyond what a date can say (nginx writes whatever its gmtime gives)
    if conf_time < 0 or max_age < 0:
        return date, "no-cache"
    return date, f"max-age={max_age}"


def _next_time(when: int, now: int) -> int:
    """``ngx_next_time``: the next moment, local time, that is ``when`` seconds after a
    midnight -- today's when it is still ahead, else tomorrow's."""
    tm = time.localtime(now)
    hms = (when // 3600, when % 3600 // 60, when % 60)
    fields = (tm.tm_year, tm.tm_mon, tm.tm_mday, *hms, tm.tm_wday, tm.tm_yday, tm.tm_isdst)
    nxt = int(time.mktime(fields))
    if nxt - now > 0:
        return nxt
    tomorrow = (tm.tm_year, tm.tm_mon, tm.tm_mday + 1, *hms, tm.tm_wday, tm.tm_yday, tm.tm_isdst)
    return int(time.mktime(tomorrow))


def _last_modified_time(headers: list[tuple[str, str]]) -> int:
    """``r->headers_out.last_modified_time``: the response's first ``Last-Modified`` (nginx
    ignores an upstream's further ones) as a time, -1 when there is none or it is no date."""
    for name, value in headers:
        if name.lower() == "last-modified":
            parsed = parsedate_tz(value)
            if parsed is None:
                return -1
            offset = parsed[9] or 0
            return timegm(parsed[:6] + (0, 1, -1)) - offset
    return -1


def _place(
    headers: list[tuple[str, str]], expires: str, cache_control: str
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The response's ``Expires`` (nginx's ``r->headers_out.expires``, its first: an
    upstream's further ones are ignored, so they go) and its first ``Cache-Control`` get the
    values where they stand, further ``Cache-Control`` lines go (``cc->hash = 0``); what the
    response lacks is added, ``Expires`` first."""
    out: list[tuple[str, str]] = []
    seen_e = seen_cc = False
    for name, value in headers:
        lname = name.lower()
        if lname == "expires":
            if not seen_e:
                out.append((name, expires))
                seen_e = True
        elif lname == "cache-control":
            if not seen_cc:
                out.append((name, cache_control))
                seen_cc = True
        else:
            out.append((name, value))
    added: list[tuple[str, str]] = []
    if not seen_e:
        added.append(("Expires", expires))
    if not seen_cc:
        added.append(("Cache-Control", cache_control))
    return out, added
