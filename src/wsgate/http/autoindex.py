"""``autoindex``: a directory's listing as nginx writes it, in html, json, jsonp or xml
(``ngx_http_autoindex_module.c``, https://nginx.org/en/docs/http/ngx_http_autoindex_module.html).

Pure: the entries come in (read by :mod:`wsgate.content.files`), the page's bytes go out.
Names are bytes as the file system has them; the HTML page pads and truncates them to 50
columns, counting characters when the response's charset is utf-8, else bytes, as nginx does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from wsgate.http.headers import http_date

__all__ = [
    "Entry",
    "NAME_LEN",
    "content_type",
    "html",
    "json",
    "jsonp_callback",
    "render",
    "sort",
    "xml",
]

#: ``NGX_HTTP_AUTOINDEX_NAME_LEN``: the name column's width in the HTML page.
NAME_LEN = 50
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
#: ``NGX_ESCAPE_URI_COMPONENT`` leaves these unescaped.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HTML = {ord("<"): b"&lt;", ord(">"): b"&gt;", ord("&"): b"&amp;", ord('"'): b"&quot;"}


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry (names starting with ``.`` are never listed)."""

    name: bytes
    is_dir: bool
    is_file: bool
    mtime: int
    size: int


def sort(entries: list[Entry]) -> list[Entry]:
    """``ngx_http_autoindex_cmp_entries``: directories first, then by name (``strcmp``)."""
    return sorted(entries, key=lambda e: (not e.is_dir, e.name))


def _escape_uri(name: bytes) -> bytes:
    return b"".join(bytes([c]) if c in _UNRESERVED else b"%%%02X" % c for c in name)


def _escape_html(name: bytes) -> bytes:
    return b"".join(_HTML.get(c, bytes([c])) for c in name)


def _utf8_prefix(name: bytes, chars: int) -> tuple[bytes, int]:
    """The first ``chars`` characters of ``name`` and its length in characters (an invalid
    byte counts as one, as ``ngx_utf8_decode`` skips it)."""
    text = name.decode("utf-8", "surrogateescape")
    return text[:chars].encode("utf-8", "surrogateescape"), len(text)


def _size(e: Entry, exact: bool) -> str:
    if exact:
        return "                  -" if e.is_dir else f"{e.size:19d}"
    if e.is_dir:
        return "      -"
    n = e.size
    for unit, scale in ((1 << 30, "G"), (1 << 20, "M")):
        if n > unit - 1:
            return f"{n // unit + (n % unit > unit // 2 - 1):6d}{scale}"
    if n > 9999:
        return f"{n // 1024 + (n % 1024 > 511):6d}K"
    return f" {n:6d}"


def html(
    uri: str, entries: Sequence[Entry], *, utf8: bool, exact_size: bool, localtime: bool
) -> bytes:
    """``ngx_http_autoindex_html``."""
    u = _escape_html(uri.encode("utf-8", "surrogateescape"))
    out = [
        b"<html>\r\n<head><title>Index of " + u + b"</title></head>\r\n<body>\r\n<h1>Index of ",
        u + b'</h1><hr><pre><a href="../">../</a>\r\n',
    ]
    for e in entries:
        line = b'<a href="' + _escape_uri(e.name) + (b"/" if e.is_dir else b"") + b'">'
        length = _utf8_prefix(e.name, 0)[1] if utf8 else len(e.name)
        if length > NAME_LEN:
            cut = _utf8_prefix(e.name, NAME_LEN - 3)[0] if utf8 else e.name[: NAME_LEN - 3]
            line += _escape_html(cut) + b"..&gt;</a>"
        else:
            line += _escape_html(e.name)
            if e.is_dir and NAME_LEN - length > 0:
                line += b"/"
                length += 1
            line += b"</a>" + b" " * (NAME_LEN - length)
        t = time.localtime(e.mtime) if localtime else time.gmtime(e.mtime)
        month = _MONTHS[t.tm_mon - 1]
        date = f" {t.tm_mday:02d}-{month}-{t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d} "
        out.append(line + date.encode() + _size(e, exact_size).encode() + b"\r\n")
    out.append(b"</pre><hr></body>\r\n</html>\r\n")
    return b"".join(out)


def _escape_json(name: bytes) -> bytes:
    """``ngx_escape_json``: ``"`` and ``\\`` escaped, control bytes as ``\\u00XX``."""
    out = bytearray()
    for c in name:
        if c in (0x22, 0x5C):
            out += b"\\" + bytes([c])
        elif c < 0x20:
            out += b"\\u%04x" % c
        else:
            out.append(c)
    return bytes(out)


def _kind(e: Entry) -> bytes:
    return b"directory" if e.is_dir else b"file" if e.is_file else b"other"


def json(entries: Sequence[Entry], callback: str | None = None) -> bytes:
    """``ngx_http_autoindex_json`` (with ``callback``: jsonp)."""
    items = []
    for e in entries:
        item = b'\r\n{ "name":"' + _escape_json(e.name) + b'", "type":"' + _kind(e)
        item += b'", "mtime":"' + http_date(e.mtime).encode()
        item += (b'", "size":' + str(e.size).encode()) if e.is_file else b'"'
        items.append(item + b" }")
    body = b"[" + b",".join(items) + b"\r\n]"
    if callback:
        return b"/* callback */\r\n" + callback.encode() + b"(" + body + b");"
    return body


def xml(entries: Sequence[Entry]) -> bytes:
    """``ngx_http_autoindex_xml``."""
    out = [b'<?xml version="1.0"?>\r\n<list>\r\n']
    for e in entries:
        kind = _kind(e)
        t = time.gmtime(e.mtime)
        stamp = (
            f"{t.tm_year:4d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}Z"
        )
        line = b"<" + kind + b' mtime="' + stamp.encode()
        if e.is_file:
            line += b'" size="' + str(e.size).encode()
        line += b'">' + _escape_html(e.name) + b"</" + kind + b">\r\n"
        out.append(line)
    out.append(b"</list>\r\n")
    return b"".join(out)


def jsonp_callback(args: str) -> str | None:
    """``ngx_http_autoindex_jsonp_callback``: the ``callback`` argument ("" without one), or
    None for a bad one (400): over 128 bytes, or a byte other than letters, digits, ``_``
    and ``.``."""
    value = ""
    for part in args.split("&"):
        key, sep, val = part.partition("=")
        if key == "callback" and sep:
            value = val
            break
    if len(value) > 128:
        return None
    if any(not (c.isascii() and (c.isalnum() or c in "_.")) for c in value):
        return None
    return value


def content_type(fmt: str, callback: str = "") -> str:
    """The page's ``Content-Type`` for ``autoindex_format`` ``fmt`` (before the charset
    filter, which may add a charset, and which the HTML page's widths depend on)."""
    if fmt == "json" or (fmt == "jsonp" and not callback):
        return "application/json"
    if fmt == "jsonp":
        return "application/javascript"
    return "text/xml; charset=utf-8" if fmt == "xml" else "text/html"


def render(
    fmt: str,
    uri: str,
    entries: Sequence[Entry],
    *,
    utf8: bool = False,
    exact_size: bool = True,
    localtime: bool = False,
    callback: str = "",
) -> bytes:
    """The page for ``autoindex_format`` ``fmt``."""
    if fmt in ("json", "jsonp"):
        return json(entries, callback or None)
    if fmt == "xml":
        return xml(entries)
    return html(uri, entries, utf8=utf8, exact_size=exact_size, localtime=localtime)
