"""``charset``: the charset filter (ngx_http_charset_filter_module), pure.

https://nginx.org/en/docs/http/ngx_http_charset_module.html: "Adds the specified charset to
the 'Content-Type' response header field.  If this charset is different from the charset
specified in the source_charset directive, a conversion is performed."  It applies to the
types of ``charset_types``; a response whose type already names a charset keeps it unless
``override_charset on``, and then that charset is the source (a proxied response's body is
converted as it streams).

Conversion uses ``charset_map`` tables; wsgate reads one-byte tables (each byte to one byte,
both directions, as nginx builds them), which keep a body's length, so ranges and
``Content-Length`` stay true.  A map to or from ``utf-8`` is refused at load time.
"""

from __future__ import annotations

from collections.abc import Callable

from wsgate.config.model import LocationSettings

__all__ = ["apply_charset", "charset_page", "proxied_charset", "split_charset"]


def split_charset(ctype: str) -> tuple[str, str]:
    """``Content-Type`` without its ``charset=`` parameter, and that charset ("" if none), as
    ``ngx_http_upstream_copy_content_type`` reads an upstream's."""
    low = ctype.lower()
    at = low.find("charset=")
    if at == -1:
        return ctype, ""
    value = ctype[at + 8 :].split(";", 1)[0].strip().strip('"')
    base = ctype[:at].rstrip().rstrip(";").rstrip()
    return base, value


def apply_charset(
    settings: LocationSettings,
    ctype: str | None,
    lookup: Callable[[str], str],
    log: Callable[[str, str], None],
    status: int = 200,
    encoded: bool = False,
) -> tuple[str | None, bytes | None]:
    """ngx_http_charset_header_filter for a response of type ``ctype``: the type to send and
    the byte table to convert its body with (None: no conversion).  A 301 or 302 gets no
    charset at all (``ngx_http_set_charset``: "do not set charset for the redirect because
    NN 4.x use this charset instead of the next page charset").  A body with a
    ``Content-Encoding`` (``encoded``: ``gzip_static``, an upstream's gzip) cannot be
    converted: it is left as it is, its type without a charset, when a conversion would be
    needed ("source_charset != charset ... if (r->headers_out.content_encoding ...)")."""
    if not ctype or settings.charset is None:
        return ctype, None
    base, current = split_charset(ctype)
    if current:
        if not settings.override_charset:
            return ctype, None
    else:
        mime = base.split(";", 1)[0].strip().lower()
        if mime not in settings.charset_types and "*" not in settings.charset_types:
            return ctype, None
    dst = settings.charset.render(lookup)
    src = current or settings.source_charset or ""
    with_charset = base if status in (301, 302) else f"{base}; charset={dst}"
    if not src or src.lower() == dst.lower():
        return with_charset, None
    if encoded:
        return ctype, None
    table = settings.charset_maps.get((src.lower(), dst.lower()))
    if table is None:
        log("error", f'no "charset_map" between the charsets "{src}" and "{dst}"')
        return ctype, None
    return with_charset, table


def proxied_charset(
    settings: LocationSettings,
    headers: list[tuple[str, str]],
    lookup: Callable[[str], str],
    log: Callable[[str, str], None],
    status: int = 200,
) -> tuple[list[tuple[str, str]], bytes | None]:
    """The charset filter on a proxied response's fields: its last ``Content-Type`` gets
    the charset; and the table its body is converted with, if any (one-byte tables keep the
    length, so the upstream's framing stands)."""
    encoded = any(n.lower() == "content-encoding" and v for n, v in headers)
    for i in range(len(headers) - 1, -1, -1):
        if headers[i][0].lower() == "content-type":
            ctype, recode = apply_charset(
                settings, headers[i][1], lookup, log, status, encoded=encoded
            )
            if ctype == headers[i][1]:
                return headers, recode
            out = list(headers)
            out[i] = (headers[i][0], ctype or "")
            return out, recode
    return headers, None


def charset_page(
    settings: LocationSettings,
    status: int,
    data: bytes,
    lookup: Callable[[str], str],
    log: Callable[[str, str], None],
) -> bytes:
    """nginx's own pages (errors, redirects) are ``text/html`` and go through the charset
    filter too (``ngx_http_send_special_response`` sends its head through the filters):
    ``data``, a whole response, with the charset added to its ``Content-Type``.  The pages
    are ASCII, so no conversion is needed."""
    if settings.charset is None:
        return data
    ctype, _ = apply_charset(settings, "text/html", lookup, log, status)
    if ctype is None or ctype == "text/html":
        return data
    return data.replace(
        b"\r\nContent-Type: text/html\r\n", f"\r\nContent-Type: {ctype}\r\n".encode(), 1
    )
