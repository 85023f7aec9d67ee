"""Header rewriting between client and upstream, as nginx's proxy module does it (pure functions).

Upstream request (``ngx_http_proxy_create_request``, current nginx 1.29.7+ defaults, which wsgate
follows; https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_set_header):

1. ``Host`` first: the configured value, or ``$proxy_host`` when not configured or configured empty
   on HTTP/1.1 (configured empty on HTTP/1.0 drops it);
2. the other ``proxy_set_header`` entries in config order, empty values dropped;
3. built-in defaults for names not configured: ``Content-Length`` recomputed when there is a body,
   ``Transfer-Encoding: chunked`` when streaming a chunked body; no ``Connection`` (1.29.7+);
4. the client's headers in original order, case and duplicates, minus every configured name (even
   when configured empty) and the hop-by-hop headers.

**Deliberate difference from nginx:** the header names listed in the client's ``Connection`` header
are dropped too (RFC 9110 §7.6.1, https://www.rfc-editor.org/rfc/rfc9110#section-7.6.1); nginx never
parses Connection tokens and forwards them.  Every ``Proxy-*`` header is dropped as well (nginx
1.29.7+ drops ``Proxy-Connection`` only; ``Proxy-Authorization`` is credentials for *this* hop).

Client response (``src/http/ngx_http_header_filter_module.c ngx_http_header_filter``): the status
line with the upstream's reason verbatim, then nginx's own headers in its order -- Server, Date,
Content-Type, Content-Length, Transfer-Encoding, Connection, Keep-Alive -- then the remaining
upstream headers in order.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from email.utils import formatdate

from wsgate import NAME, SERVER_TOKEN
from wsgate.errors import HttpError
from wsgate.http.body import BodyFraming, Framing

__all__ = [
    "HOP_BY_HOP_REQUEST",
    "HIDDEN_RESPONSE",
    "LAST_CHUNK",
    "NEVER_PASSED",
    "SINGLE_RESPONSE",
    "BodyFraming",
    "Framing",
    "build_client_response_head",
    "build_upstream_request",
    "connection_tokens",
    "encode_chunk",
    "for_version",
    "hidden_fields",
    "http_date",
    "last_chunk",
    "single_fields",
    "visible_fields",
]

#: Client request headers never forwarded as such (replaced, recomputed, or hop-by-hop).
HOP_BY_HOP_REQUEST = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "transfer-encoding",
        "content-length",
        "expect",
        "proxy-connection",
    }
)

#: Upstream response headers nginx hides by default (``ngx_http_proxy_hide_headers``):
#: "By default, nginx does not pass the header fields “Date”, “Server”, “X-Pad”, and
#: “X-Accel-...” from the response of a proxied server to a client" (proxy_hide_header); the
#: ``X-Accel-*`` ones are the five nginx acts on, not every name with the prefix.
HIDDEN_RESPONSE = frozenset(
    {
        "date",
        "server",
        "x-pad",
        "x-accel-expires",
        "x-accel-redirect",
        "x-accel-limit-rate",
        "x-accel-buffering",
        "x-accel-charset",
    }
)
#: Upstream response headers never passed as such, whatever ``proxy_pass_header`` says: the
#: connection's own and the framing, which wsgate writes itself (nginx's upstream module
#: handles them before the hide list, ``ngx_http_upstream_headers_in``).
NEVER_PASSED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


#: Upstream response fields nginx takes once (``ngx_http_upstream_process_header_line`` and
#: its kin for Expires, X-Accel-Expires, Last-Modified, X-Accel-Limit-Rate): a repeated one
#: is dropped, with a ``[warn]`` (nginx 1.23.0+).
SINGLE_RESPONSE = frozenset(
    {
        "status",
        "content-type",
        "date",
        "etag",
        "server",
        "location",
        "refresh",
        "x-accel-redirect",
        "expires",
        "x-accel-expires",
        "last-modified",
        "x-accel-limit-rate",
    }
)


def single_fields(
    headers: list[tuple[str, str]],
) -> tuple[list[tuple[str, str]], list[str]]:
    """``headers`` without the repeats of :data:`SINGLE_RESPONSE` fields, and nginx's
    ``[warn]`` text for each one dropped ("upstream sent duplicate header line: ...,
    previous value: ..., ignored").  ``headers`` itself when nothing repeats."""
    first: dict[str, tuple[str, str]] = {}
    out: list[tuple[str, str]] | None = None
    warnings: list[str] = []
    for i, (name, value) in enumerate(headers):
        lname = name.lower()
        if lname not in SINGLE_RESPONSE:
            if out is not None:
                out.append((name, value))
            continue
        prev = first.get(lname)
        if prev is None:
            first[lname] = (name, value)
            if out is not None:
                out.append((name, value))
            continue
        if out is None:
            out = list(headers[:i])
        warnings.append(
            f'upstream sent duplicate header line: "{name}: {value}", previous value: '
            f'"{prev[0]}: {prev[1]}", ignored while reading response header from upstream'
        )
    return (headers if out is None else out), warnings


@functools.lru_cache(maxsize=256)
def hidden_fields(hide: tuple[str, ...], pass_: tuple[str, ...]) -> frozenset[str]:
    """The lowercased names a location hides: nginx's default list plus ``proxy_hide_header``
    minus ``proxy_pass_header`` (``ngx_http_upstream_hide_headers_hash``), plus the fields
    that are never passed."""
    names = HIDDEN_RESPONSE | {h.lower() for h in hide}
    return (names - {p.lower() for p in pass_}) | NEVER_PASSED


def visible_fields(headers: list[tuple[str, str]], hidden: frozenset[str]) -> list[tuple[str, str]]:
    """``headers`` without the ``hidden`` names."""
    return [(n, v) for n, v in headers if n.lower() not in hidden]


#: The chunked body terminator (last-chunk plus the empty trailer section, RFC 9112 §7.1).
LAST_CHUNK = b"0\r\n\r\n"


def last_chunk(trailer: Iterable[tuple[str, str]] = ()) -> bytes:
    """The last-chunk with ``trailer``'s fields (``add_trailer``; RFC 9112 §7.1.2), as
    nginx's ``ngx_http_chunked_create_trailers`` writes them."""
    fields = "".join(f"{name}: {value}\r\n" for name, value in trailer)
    return LAST_CHUNK if not fields else b"0\r\n" + fields.encode("latin-1") + b"\r\n"


def connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Lowercased option names listed in all ``Connection`` headers (RFC 9110 §7.6.1)."""
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            for tok in value.split(","):
                tok = tok.strip().lower()
                if tok:
                    tokens.add(tok)
    return tokens


def build_upstream_request(
    method: str,
    uri: str,
    http_version: str,
    client_headers: list[tuple[str, str]],
    set_headers: list[tuple[str, str]],
    proxy_host: str,
    body: BodyFraming,
) -> bytes:
    """Serialise the request head sent upstream.

    ``set_headers`` are the evaluated ``proxy_set_header`` entries of the location, in config order.
    ``body`` is the framing of the body that will follow: ``BodyFraming.content_length(n)`` writes
    ``Content-Length: n`` (also for 0), ``BodyFraming.chunked()`` writes
    ``Transfer-Encoding: chunked`` and requires ``http_version == "1.1"`` -- an HTTP/1.0 upstream
    cannot receive a chunked body, so the caller must buffer it and pass its length (nginx does
    the same; ``ValueError`` otherwise).  ``BodyFraming.none()`` writes neither.
    """
    if not uri:
        raise HttpError(500, "zero length URI to proxy")
    if body.kind is Framing.CHUNKED and http_version != "1.1":
        raise ValueError("a chunked body cannot be streamed over HTTP/1.0; buffer it first")
    if body.kind is Framing.CLOSE:
        raise ValueError("a request body cannot be close-delimited")

    configured = {name.lower() for name, _ in set_headers}
    out = [f"{method} {uri} HTTP/{http_version}\r\n"]

    host = proxy_host
    for name, value in set_headers:
        if name.lower() == "host":
            host = value  # last one wins, as a hash lookup would
    if host == "" and http_version != "1.0":
        host = proxy_host
    if host:
        out.append(f"Host: {host}\r\n")

    for name, value in set_headers:
        if value and name.lower() != "host":
            out.append(f"{name}: {value}\r\n")

    if "content-length" not in configured and body.kind is Framing.LENGTH:
        out.append(f"Content-Length: {body.length}\r\n")
    if "transfer-encoding" not in configured and body.kind is Framing.CHUNKED:
        out.append("Transfer-Encoding: chunked\r\n")

    dropped = configured | HOP_BY_HOP_REQUEST | connection_tokens(client_headers)
    for name, value in client_headers:
        lname = name.lower()
        if lname in dropped or lname.startswith("proxy-"):
            continue
        out.append(f"{name}: {value}\r\n")
    out.append("\r\n")
    return "".join(out).encode("latin-1")


def build_client_response_head(
    status: int,
    reason: str,
    upstream_headers: list[tuple[str, str]],
    *,
    server_tokens: bool,
    date: str,
    framing: BodyFraming,
    keep_alive: bool,
    keepalive_header: float | None = None,
    upgrade: bool = False,
    added: Iterable[tuple[str, str]] = (),
    hidden: frozenset[str] = HIDDEN_RESPONSE | NEVER_PASSED,
    location: str | None = None,
) -> bytes:
    """Serialise the response head sent to the client for a proxied response.

    ``framing`` is the caller's choice for the client side: ``content_length(n)`` (also for a HEAD
    response, carrying the upstream's length), ``chunked()``, ``close()`` or ``none()`` (204/304).
    Every 101 gets ``Connection: upgrade`` (nginx writes it for any 101, tunnel or not), as does
    ``upgrade=True``; otherwise ``Connection: keep-alive`` (plus ``Keep-Alive: timeout=N`` when
    ``keepalive_header`` is set, nginx's second ``keepalive_timeout`` value) or ``close``.
    Upstream ``Upgrade`` and ``Sec-WebSocket-*`` headers pass unchanged.  The upstream's
    ``Content-Type`` (one: a repeat was dropped by :func:`single_fields`) moves up to nginx's
    position (``ngx_http_upstream_copy_content_type``).
    ``added`` (``add_header``'s, :mod:`wsgate.http.headers_filter`) come last, as written.
    ``location`` (made absolute by :func:`wsgate.http.redirects.absolute_location`) is
    written where nginx's header filter writes the ``Location`` it made absolute, after
    ``Content-Length``.
    ``hidden`` (:func:`hidden_fields`) are not written; an upstream ``Server`` or ``Date``
    that is not hidden (``proxy_pass_header``) is written where it stands instead of
    wsgate's own, as nginx's header filter writes its own only "if
    (r->headers_out.server == NULL)".
    """
    out = [f"HTTP/1.1 {status} {reason}\r\n" if reason else f"HTTP/1.1 {status} \r\n"]
    own_server = own_date = True
    if "server" not in hidden or "date" not in hidden:
        for name, _ in upstream_headers:
            lname = name.lower()
            if lname == "server" and lname not in hidden:
                own_server = False
            elif lname == "date" and lname not in hidden:
                own_date = False
    if own_server:
        out.append(f"Server: {SERVER_TOKEN if server_tokens else NAME}\r\n")
    if own_date:
        out.append(f"Date: {date}\r\n")

    content_type: str | None = None
    rest: list[tuple[str, str]] = []
    for name, value in upstream_headers:
        lname = name.lower()
        if lname in hidden:
            continue
        if lname == "content-type":
            content_type = value
            continue
        rest.append((name, value))

    if content_type is not None:
        out.append(f"Content-Type: {content_type}\r\n")
    if framing.kind is Framing.LENGTH:
        out.append(f"Content-Length: {framing.length}\r\n")
    if location is not None:
        out.append(f"Location: {location}\r\n")
    if framing.kind is Framing.CHUNKED:
        out.append("Transfer-Encoding: chunked\r\n")
    if status == 101 or upgrade:
        out.append("Connection: upgrade\r\n")
    elif keep_alive:
        out.append("Connection: keep-alive\r\n")
        if keepalive_header is not None:
            out.append(f"Keep-Alive: timeout={int(keepalive_header)}\r\n")
    else:
        out.append("Connection: close\r\n")
    for name, value in rest:
        out.append(f"{name}: {value}\r\n")
    for name, value in added:
        out.append(f"{name}: {value}\r\n")
    out.append("\r\n")
    return "".join(out).encode("latin-1")


_date_cache: tuple[int, str] = (-1, "")


def for_version(version: str, response: bytes) -> bytes:
    """``response`` (head, and maybe body) as a client speaking HTTP ``version`` gets it: an
    HTTP/0.9 client gets no status line and no headers, only the body.  nginx's
    ``ngx_http_header_filter``: "if (r->http_version < NGX_HTTP_VERSION_10) return NGX_OK;"."""
    if version != "0.9":
        return response
    return response[response.index(b"\r\n\r\n") + 4 :]


def http_date(t: float | None = None) -> str:
    """RFC 9110 §5.6.7 IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``), cached per second."""
    global _date_cache
    sec = int(time.time() if t is None else t)
    cached_sec, cached = _date_cache
    if sec == cached_sec:
        return cached
    text = formatdate(sec, usegmt=True)
    _date_cache = (sec, text)
    return text


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1); empty data gives b"" (never a last-chunk)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)
