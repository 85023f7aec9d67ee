"""Compression, the rules: whether a response is gzipped, what that does to its fields, and
the stream that compresses a body as it comes.  No sockets here (values in, values out;
``zlib`` is a computation); the response producers (:mod:`wsgate.proxy.relay`,
:mod:`wsgate.content.sender`, :mod:`wsgate.proxy.exchange`) hand their body to a
:class:`GzipStream` chunk by chunk and write what it returns.

nginx decides in two places (https://nginx.org/en/docs/http/ngx_http_gzip_module.html):

- ``ngx_http_gzip_header_filter`` looks at the response: ``gzip on``, status 200, 403 or 404,
  no ``Content-Encoding``, a ``Content-Length`` (when known) not under ``gzip_min_length``,
  a type of ``gzip_types``.  A response that passes earns ``Vary: Accept-Encoding`` with
  ``gzip_vary on`` (``r->gzip_vary``), whether or not this client gets it compressed
  (:func:`gzip_applies`);
- ``ngx_http_gzip_ok`` (src/http/ngx_http_core_module.c) looks at the request: an
  ``Accept-Encoding`` that accepts gzip, not MSIE 4-6 with ``gzip_disable msie6``, the HTTP
  version of ``gzip_http_version``, ``gzip_proxied`` for a request with ``Via``, and no
  ``User-Agent`` matching ``gzip_disable`` (:func:`gzip_ok`).  ``gzip_static`` asks the
  same question before it opens ``FILE.gz``.

The header filter then adds ``Content-Encoding: gzip``, clears ``Content-Length`` and
``Accept-Ranges`` and makes the ``ETag`` weak (:func:`gzip_fields`).  It runs before the
range filter, so a compressed response is never a ``206``: the range filter finds no length.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wsgate.http.fields import first_value
from wsgate.http.headers import LAST_CHUNK, encode_chunk
from wsgate.http.static import parse_http_time

if TYPE_CHECKING:
    from wsgate.config.model import LocationSettings

__all__ = [
    "PROXIED",
    "STATUSES",
    "GunzipError",
    "GunzipStream",
    "GzipStream",
    "accepts_gzip",
    "gzip_applies",
    "gzip_fields",
    "gzip_ok",
    "gzip_page",
    "gunzip_response",
    "gzip_response",
    "has_vary",
    "is_msie6",
    "new_stream",
    "ratio",
]

Fields = Sequence[tuple[str, str]]

#: The statuses the gzip filter compresses (``NGX_HTTP_OK``, ``FORBIDDEN``, ``NOT_FOUND``).
STATUSES = frozenset({200, 403, 404})
#: ``gzip_proxied``'s words (``ngx_http_gzip_proxied_mask``).
PROXIED = frozenset(
    {
        "off",
        "expired",
        "no-cache",
        "no-store",
        "private",
        "no_last_modified",
        "no_etag",
        "auth",
        "any",
    }
)
_VERSIONS = {"0.9": 9, "1.0": 1000, "1.1": 1001}


# -- the request side: ngx_http_gzip_ok -----------------------------------------------------------
def _quantity(text: str) -> int:
    """``ngx_http_gzip_quantity``: ``q=`` as thousandths-ish hundredths, 0 for invalid."""
    if not text or text[0] not in "01":
        return 0
    q = (ord(text[0]) - 48) * 100
    if len(text) == 1 or text[1] in ", ":
        return q
    if text[1] != ".":
        return 0
    n = 0
    for c in text[2:]:
        if c in ", ":
            break
        if not "0" <= c <= "9":
            return 0
        # nginx adds each digit to the hundreds as it comes ("q += c - '0'"): "0.5" is 5,
        # not 50; what matters is zero or not, and the bounds below.
        q += ord(c) - 48
        n += 1
    if q > 100 or n > 3:
        return 0
    return q


def accepts_gzip(value: str) -> bool:
    """``Accept-Encoding`` as ``ngx_http_gzip_ok`` reads it: "gzip," first, or a ``gzip``
    token (case-insensitive, at the start or after "," or " ") followed by nothing, ",", or
    ``;q=`` with a quantity that is not zero.  "gzip is disabled for ... "gzip; q=0" ...
    "gzip; q=0.000", and for any invalid cases"."""
    if len(value) < 4:
        return False
    if value.startswith("gzip,"):
        return True
    low = value.lower()
    start = 0
    while True:
        p = low.find("gzip", start)
        if p == -1:
            return False
        if p == 0 or value[p - 1] in ", ":
            break
        start = p + 4
    i, end = p + 4, len(value)
    while i < end:
        c = value[i]
        i += 1
        if c == ",":
            return True
        if c == ";":
            break
        if c != " ":
            return False
    else:
        return True
    while i < end:
        c = value[i]
        i += 1
        if c in "qQ":
            break
        if c != " ":
            return False
    else:
        return True
    if i + 2 > end or value[i] != "=":
        return False
    return _quantity(value[i + 1 :]) != 0


def is_msie6(user_agent: str) -> bool:
    """``r->headers_in.msie6`` (ngx_http_process_user_agent): "MSIE 4." or "MSIE 5.", or
    "MSIE 6." without "SV1" after it; never for Opera, which names MSIE too."""
    at = user_agent.find("MSIE ")
    if at == -1 or at + 7 >= len(user_agent) or "Opera" in user_agent:
        return False
    if user_agent[at + 6] != ".":
        return False
    major = user_agent[at + 5]
    if major in "45":
        return True
    return major == "6" and "SV1" not in user_agent[at + 8 :]


def _has_token(fields: Fields, name: str, token: str) -> bool:
    """``ngx_http_parse_multi_header_lines``: ``token`` among the comma-separated words of
    every ``name`` field (``private="x"`` counts as ``private``)."""
    for key, value in fields:
        if key.lower() != name:
            continue
        for word in value.split(","):
            if word.strip().split("=", 1)[0].strip().lower() == token:
                return True
    return False


def _proxied_ok(proxied: frozenset[str], request: Fields, response: Fields, now: float) -> bool:
    """``gzip_proxied`` for a request with ``Via``, judged on the response's fields as
    ``ngx_http_gzip_ok`` reads them (its first ``Expires``, ``Date``, ``Cache-Control``...)."""
    if "off" in proxied:
        return False
    if "any" in proxied:
        return True
    if "auth" in proxied and first_value(request, "authorization") is not None:
        return True
    expires = first_value(response, "expires")
    if expires is not None:
        if "expired" not in proxied:
            return False
        when = parse_http_time(expires)
        if when == -1:
            return False
        date_text = first_value(response, "date")
        date = int(now) if date_text is None else parse_http_time(date_text)
        if date == -1:
            return False
        return when < date
    if any(k.lower() == "cache-control" for k, _ in response):
        return any(
            token in proxied and _has_token(response, "cache-control", token)
            for token in ("no-cache", "no-store", "private")
        )
    if "no_last_modified" in proxied and first_value(response, "last-modified") is not None:
        return False
    return not ("no_etag" in proxied and first_value(response, "etag") is not None)


def gzip_ok(
    settings: LocationSettings,
    request: Fields,
    version: str,
    response: Fields = (),
    now: float | None = None,
) -> bool:
    """``ngx_http_gzip_ok`` for a main request with ``request`` fields of HTTP ``version``,
    and a response with ``response`` fields (after the headers filter: ``expires`` and
    ``add_header`` have run; ``gzip_static`` asks before there is any)."""
    ae = first_value(request, "accept-encoding")
    if ae is None or not accepts_gzip(ae):
        return False
    agent = first_value(request, "user-agent")
    disable = settings.gzip_disable
    if agent is not None and "msie6" in disable and is_msie6(agent):
        return False
    if _VERSIONS.get(version, 1001) < _VERSIONS[settings.gzip_http_version]:
        return False
    if first_value(request, "via") is not None and not _proxied_ok(
        settings.gzip_proxied, request, response, time.time() if now is None else now
    ):
        return False
    if agent is not None:
        # "Disables gzipping of responses for requests with "User-Agent" header fields
        # matching any of the specified regular expressions."
        for regex in disable:
            if not isinstance(regex, str) and regex.search(agent):
                return False
    return True


# -- the response side: ngx_http_gzip_header_filter ---------------------------------------------
def _mime(fields: Fields) -> str | None:
    value = first_value(fields, "content-type")
    return None if value is None else value.split(";", 1)[0].strip().lower()


def gzip_applies(
    settings: LocationSettings, status: int, fields: Fields, length: int | None
) -> bool:
    """Whether the gzip filter takes a response of ``status`` with ``fields`` and a body of
    ``length`` bytes (None: not known) — before the client is asked (``r->gzip_vary``).
    "Sets the minimum length of a response that will be gzipped.  The length is determined
    only from the "Content-Length" response header field"; "Responses with the "text/html"
    type are always compressed"; "The special value "*" matches any MIME type"."""
    if not settings.gzip or status not in STATUSES:
        return False
    if first_value(fields, "content-encoding"):
        return False
    if length is not None and length < settings.gzip_min_length:
        return False
    types = settings.gzip_types
    if "*" in types:
        return True
    mime = _mime(fields)
    return mime is not None and (mime == "text/html" or mime in types)


def _weak(fields: Fields) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in fields:
        if name.lower() == "etag" and not (len(value) > 2 and value.startswith("W/")):
            if not value.startswith('"'):
                continue
            value = "W/" + value
        out.append((name, value))
    return out


def gzip_fields(
    fields: Fields, added: Fields = ()
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A compressed response's fields (its own, and those the headers filter added after
    them): no ``Content-Length`` or ``Accept-Ranges``, the ``ETag`` weak
    (``ngx_http_weak_etag``: a strong one gets "W/", one that is not a quoted string goes),
    ``Content-Encoding: gzip`` added last (after ``add_header``'s, as nginx pushes it)."""
    own = _weak([(n, v) for n, v in fields if n.lower() not in ("content-length", "accept-ranges")])
    return own, [*_weak(added), ("Content-Encoding", "gzip")]


def gzip_response(
    settings: LocationSettings,
    request: Fields,
    version: str,
    status: int,
    fields: list[tuple[str, str]],
    added: list[tuple[str, str]],
    length: int | None,
    now: float | None = None,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], GzipStream | None]:
    """The gzip header filter for a response: its fields as they go (``Vary`` first with
    ``gzip_vary on`` when the filter takes the response, whether or not this client gets it
    compressed, as nginx's header filter writes it before the other fields), and the stream
    its body goes through (None: sent as it is)."""
    if not gzip_applies(settings, status, [*fields, *added], length):
        return fields, added, None
    if settings.gzip_vary:
        fields = [("Vary", "Accept-Encoding"), *fields]
    if not gzip_ok(settings, request, version, [*fields, *added], now):
        return fields, added, None
    fields, added = gzip_fields(fields, added)
    return fields, added, new_stream(settings)


def has_vary(fields: Fields) -> bool:
    """Whether ``Vary: Accept-Encoding`` is among ``fields`` already (written once)."""
    return any(n.lower() == "vary" and v == "Accept-Encoding" for n, v in fields)


def new_stream(settings: LocationSettings) -> GzipStream:
    """A stream with the location's ``gzip_comp_level``, ``gzip_window``, ``gzip_hash``."""
    return GzipStream(settings.gzip_comp_level, settings.gzip_window, settings.gzip_hash)


# -- the stream ------------------------------------------------------------------------------------
def ratio(zin: int, zout: int) -> str:
    """``$gzip_ratio``: "%ui.%02ui" of in/out, the hundredths rounded half up as nginx
    rounds them (2.125 → "2.13"); empty when nothing came out."""
    if zout == 0:
        return ""
    whole = zin // zout
    frac = zin * 100 // zout % 100
    if zin * 1000 // zout % 10 > 4:
        frac += 1
        if frac > 99:
            whole, frac = whole + 1, 0
    return f"{whole}.{frac:02d}"


class GzipStream:
    """One response body compressed with gzip framing (RFC 1952), as it comes: each
    :meth:`compress` returns what zlib has made so far (often nothing: it holds up to its
    window), :meth:`flush` what it holds (``Z_SYNC_FLUSH``: the client can inflate all it
    got), :meth:`finish` the rest and the trailer.  Memory is zlib's, bounded by
    ``gzip_window`` and ``gzip_hash``, never the response's size."""

    __slots__ = ("_z", "zin", "zout")

    def __init__(self, level: int = 1, window: int = 15, memlevel: int = 8) -> None:
        # wbits 16 + window: a gzip header and trailer around the deflate stream.
        self._z = zlib.compressobj(level, zlib.DEFLATED, 16 + window, memlevel)
        #: Bytes in and out so far (``$gzip_ratio``).
        self.zin = self.zout = 0

    def compress(self, data: bytes) -> bytes:
        self.zin += len(data)
        out = self._z.compress(data)
        self.zout += len(out)
        return out

    def flush(self) -> bytes:
        out = self._z.flush(zlib.Z_SYNC_FLUSH)
        self.zout += len(out)
        return out

    def finish(self) -> bytes:
        out = self._z.flush(zlib.Z_FINISH)
        self.zout += len(out)
        return out

    @property
    def ratio(self) -> str:
        return ratio(self.zin, self.zout)


def gzip_page(
    settings: LocationSettings,
    request: Fields,
    version: str,
    status: int,
    data: bytes,
    keep_alive: bool,
    head_only: bool = False,
) -> tuple[bytes, bool]:
    """One of wsgate's own pages (an error page: a whole response, ``text/html`` with its
    length, as :func:`wsgate.http.pages.error_response` makes it) through the gzip filter,
    as nginx's special responses go through the header filters: compressed when the filter
    takes it and the client accepts gzip, then chunked (HTTP/1.1) or delimited by the close.
    A ``HEAD`` response (``head_only``) gets the fields, neither framing nor body.
    Returns the response and whether the connection may stay open."""
    end = data.find(b"\r\n\r\n")
    if end == -1 or b"\r\nTransfer-Encoding:" in data[:end]:
        return data, keep_alive  # a trailer's chunked page: left as it is
    lines = data[:end].decode("latin-1").split("\r\n")
    body = data[end + 4 :]
    fields = [tuple(line.split(": ", 1)) for line in lines[1:]]
    pairs = [(f[0], f[1]) for f in fields if len(f) == 2]
    length = next((int(v) for n, v in pairs if n == "Content-Length"), None)
    out, added, gz = gzip_response(settings, request, version, status, pairs, [], length)
    if out is pairs:
        return data, keep_alive
    chunked = version == "1.1" and settings.chunked_transfer_encoding
    if head_only:
        gz = None  # its fields are the compressed response's; no body, no framing
    head = [lines[0]]
    for name, value in out:
        if name == "Vary":
            continue  # written after Connection, as nginx's header filter writes it
        if name == "Connection":
            if gz is not None and not chunked:
                value, keep_alive = "close", False
            if gz is not None and chunked:
                head.append("Transfer-Encoding: chunked")
            head.append(f"Connection: {value}")
            if any(n == "Vary" for n, _ in out):
                head.append("Vary: Accept-Encoding")
            continue
        if name == "Keep-Alive" and not keep_alive:
            continue
        head.append(f"{name}: {value}")
    head += [f"{n}: {v}" for n, v in added]
    if gz is not None and body:
        body = gz.compress(body) + gz.finish()
        if chunked:
            body = encode_chunk(body) + LAST_CHUNK
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body, keep_alive


# -- gunzip (ngx_http_gunzip_filter_module) --------------------------------------------------------
class GunzipError(ValueError):
    """A body that is not gzip after all (nginx: ``inflate() failed: 0, -3``)."""


class GunzipStream:
    """A gzip body decompressed as it comes, member after member ("multiple gzip members"
    of one body are one output, as nginx's filter resets zlib at each member's end)."""

    __slots__ = ("_z", "zin", "zout")

    def __init__(self) -> None:
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.zin = self.zout = 0

    def feed(self, data: bytes) -> bytes:
        self.zin += len(data)
        out = b""
        try:
            while data:
                out += self._z.decompress(data)
                if not self._z.eof:
                    break
                data = self._z.unused_data
                if data:
                    self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        except zlib.error as exc:
            raise GunzipError(f"inflate() failed: {exc}") from None
        self.zout += len(out)
        return out

    def finish(self) -> None:
        """The body's end: a member cut short is nginx's ``inflate() returned -5 on response
        end`` (``decompress`` without a limit has given all it could already)."""
        if not self._z.eof and self.zin:
            raise GunzipError("inflate() returned -5 on response end")


def gunzip_response(
    settings: LocationSettings,
    request: Fields,
    version: str,
    fields: list[tuple[str, str]],
    added: list[tuple[str, str]],
    main: bool = True,
    now: float | None = None,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], GunzipStream | None]:
    """``gunzip on`` (ngx_http_gunzip_header_filter): a response with ``Content-Encoding:
    gzip`` (that one coding, any case) for a client that does not accept gzip (a subrequest
    never does) is decompressed: no ``Content-Encoding``, ``Content-Length`` or
    ``Accept-Ranges``, a weak ``ETag``.  Any such response earns ``Vary: Accept-Encoding``
    with ``gzip_vary on``, decompressed or not."""
    both = [*fields, *added]
    coding = first_value(both, "content-encoding")
    if not settings.gunzip or coding is None or coding.lower() != "gzip":
        return fields, added, None
    if settings.gzip_vary:
        # nginx's own line (``r->gzip_vary``), besides an upstream's ``Vary`` if any.
        fields = [("Vary", "Accept-Encoding"), *fields]
    if main and gzip_ok(settings, request, version, both, now):
        return fields, added, None
    drop = ("content-encoding", "content-length", "accept-ranges")
    own = _weak([(n, v) for n, v in fields if n.lower() not in drop])
    return own, _weak([(n, v) for n, v in added if n.lower() != "content-encoding"]), GunzipStream()
