"""``X-Accel-Redirect`` from an upstream (``ngx_http_upstream_process_headers``): the pure
decision.  The proxied response is not relayed; the request goes on as an internal redirect
to the field's URI (``ngx_http_internal_redirect``, the method GET unless HEAD) or to a
``@name`` location (``ngx_http_named_location``).  A URI ``ngx_http_parse_unsafe_uri``
refuses is a 404.  The upstream's Content-Type, Set-Cookie, Content-Disposition,
Cache-Control, Expires and Accept-Ranges stay in ``r->headers_out`` for the final response
(the ``redirect`` flag of ``ngx_http_upstream_headers_in``).

:class:`AccelRedirect` carries the decision from the proxy's I/O to the phases:
:func:`x_accel_redirect` is the error handler that turns it into the :class:`Restart`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from wsgate.errors import HttpError
from wsgate.http.phases import Redirect, Request, Restart, internal_redirect, named_location

__all__ = [
    "CARRIED",
    "AccelRedirect",
    "Target",
    "carried_fields",
    "parse_unsafe_uri",
    "target",
    "with_kept",
    "x_accel_redirect",
]

#: The upstream fields an X-Accel-Redirect keeps (lower case), as nginx's table marks them.
CARRIED = frozenset(
    {
        "content-type",
        "set-cookie",
        "content-disposition",
        "cache-control",
        "expires",
        "accept-ranges",
    }
)


@dataclass(frozen=True, slots=True)
class Target:
    """Where an X-Accel-Redirect goes: ``name`` (a ``@name`` location) or ``uri`` and
    ``args``; ``uri`` None: unsafe (404)."""

    value: str
    name: str | None = None
    uri: str | None = None
    args: str = ""


def _unescape(data: bytes) -> bytes:
    """``ngx_unescape_uri`` (type 0): ``%XX`` with two hex digits is the byte; anything
    else stays as it is."""
    out = bytearray()
    i, n = 0, len(data)
    hexdigits = b"0123456789abcdefABCDEF"
    while i < n:
        ch = data[i]
        if ch == 0x25 and i + 2 < n and data[i + 1] in hexdigits and data[i + 2] in hexdigits:
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
            continue
        out.append(ch)
        i += 1
    return bytes(out)


def _dotdot(p: bytes, i: int) -> bool:
    """``p[i:]`` starts with ``..`` followed by the end or a ``/``."""
    return p[i : i + 2] == b".." and (len(p) == i + 2 or p[i + 2 : i + 3] == b"/")


def _unsafe_path(p: bytes) -> bool:
    """The checks of ``ngx_http_parse_unsafe_uri`` on a path: a leading ``..`` segment, a
    NUL, ``/..`` followed by the end or ``/``."""
    if _dotdot(p, 0):
        return True
    for i, ch in enumerate(p):
        if ch == 0:
            return True
        if ch == 0x2F and len(p) - i > 2 and _dotdot(p, i + 1):
            return True
    return False


def parse_unsafe_uri(value: str) -> tuple[str, str] | None:
    """``ngx_http_parse_unsafe_uri``: the path (``%XX`` decoded) and the arguments after the
    first ``?``; None when it is unsafe (empty, starting with ``?``, a ``..`` segment or a
    NUL, before or after decoding)."""
    raw = value.encode("latin-1", "surrogateescape")
    if not raw or raw[0] == 0x3F:
        return None
    path, sep, args = raw.partition(b"?")
    if _unsafe_path(path):
        return None
    if b"%" in path:
        path = _unescape(path)
        if _unsafe_path(path):
            return None
    return path.decode("latin-1"), args.decode("latin-1") if sep else ""


def target(value: str) -> Target:
    """The redirect an ``X-Accel-Redirect: value`` makes."""
    if value.startswith("@"):
        return Target(value, name=value)
    parsed = parse_unsafe_uri(value)
    if parsed is None:
        return Target(value)
    return Target(value, uri=parsed[0], args=parsed[1])


def carried_fields(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The upstream fields the final response keeps, in their order."""
    return tuple((n, v) for n, v in headers if n.lower() in CARRIED)


#: Fields a response makes for itself that a kept one replaces (``r->headers_out.content_type``
#: is not set again when an X-Accel-Redirect set it; ``accept_ranges`` likewise).
_REPLACED = frozenset({"content-type", "accept-ranges"})


def with_kept(
    kept: tuple[tuple[str, str], ...], own: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """A response's own fields after the ``headers_out`` it inherits (``kept``): a kept
    Content-Type or Accept-Ranges replaces the response's own."""
    names = {n.lower() for n, _ in kept} & _REPLACED
    return [*kept, *((n, v) for n, v in own if n.lower() not in names)]


class AccelRedirect(HttpError):
    """The proxied response redirects: no error, no log line; :func:`x_accel_redirect`
    makes the :class:`Restart`."""

    def __init__(self, to: Target) -> None:
        super().__init__(200)
        self.target = to


def x_accel_redirect(r: Request, exc: HttpError) -> Restart | Redirect | None:
    """The error handler for :class:`AccelRedirect`: a named location as the request is,
    or ``$uri``/``$args`` from the field with the method GET unless HEAD; unsafe: 404."""
    if not isinstance(exc, AccelRedirect):
        return None
    to = exc.target
    if to.name is not None:
        return named_location(r, to.name)
    if to.uri is None:
        r.log("error", f'unsafe URI "{to.value}" was detected')  # NGX_HTTP_LOG_UNSAFE
        raise HttpError(404)
    if r.head.method != "HEAD":
        r.head.method = r.ctx.method = "GET"
    return internal_redirect(r, to.uri, to.args)
