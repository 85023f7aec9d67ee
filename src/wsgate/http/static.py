"""Static files, the rules: which file a URI names, its type, its validators, and what a
conditional or range request makes of its response.  No sockets and no file system here
(values in, values out); :mod:`wsgate.content.files` opens the files and
:mod:`wsgate.content.sender` sends them.

nginx splits the same work between ``ngx_http_map_uri_to_path`` (core), the static module
(the file becomes a 200 with ``Last-Modified``, ``ETag``, the type by extension), and two
header filters that may turn that 200 into a 304/412 (not_modified) or a 206/416 (range),
https://nginx.org/en/docs/http/ngx_http_core_module.html#root and RFC 9110 sections 13 (the
preconditions) and 14 (ranges).
"""

from __future__ import annotations

import calendar
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import count

from wsgate.config.model import DocRoot, LocationSettings
from wsgate.http.fields import first_value

__all__ = [
    "DEFAULT_TYPES",
    "NOT_SATISFIABLE",
    "FileResponse",
    "content_type",
    "etag_for",
    "exten",
    "map_uri_to_path",
    "multipart",
    "not_modified",
    "parse_http_time",
    "parse_ranges",
    "range_applies",
]

#: nginx's built-in ``types`` when none is configured ("Default: types { text/html html;
#: image/gif gif; image/jpeg jpg; }").
DEFAULT_TYPES = {"html": "text/html", "gif": "image/gif", "jpg": "image/jpeg"}

Lookup = Callable[[str], str]


# -- the file a URI names ------------------------------------------------------------------------
def root_path(root: DocRoot, lookup: Lookup) -> str:
    """``root``/``alias`` rendered (variables, captures) and made absolute against the prefix
    (nginx's ``ngx_get_full_name`` for a value starting with a variable)."""
    path = root.path.render(lookup)
    if not os.path.isabs(path):
        path = os.path.join(root.prefix, path)
    return path


def map_uri_to_path(
    root: DocRoot, uri: str, lookup: Lookup, add_uri_to_alias: bool = False
) -> tuple[str, int]:
    """``ngx_http_map_uri_to_path``: the file name for ``uri``, and the length of its root
    part.  "A path to the file is constructed by merely adding a URI to the value of the root
    directive"; with ``alias`` the location's part of the URI is replaced; in a regular
    expression location the alias (with its captures) is the whole name, unless
    ``try_files`` found a file there (``r->add_uri_to_alias``)."""
    base = root_path(root, lookup)
    if not root.alias:
        return base + uri, len(base)
    if root.alias_len < 0:
        return (base + uri if add_uri_to_alias else base), len(base)
    return base + uri[root.alias_len :], len(base)


def exten(uri: str) -> str:
    """``r->exten``: what follows the last ``.`` of the URI's last segment."""
    slash = uri.rfind("/")
    dot = uri.rfind(".")
    return uri[dot + 1 :] if dot > slash else ""


def content_type(settings: LocationSettings, uri: str) -> str:
    """``ngx_http_set_content_type``: the type of the URI's extension (looked up lowercased)
    in ``types``, else ``default_type``."""
    ext = exten(uri).lower()
    types = settings.types.by_ext if settings.types is not None else DEFAULT_TYPES
    return types.get(ext, settings.default_type) if ext else settings.default_type


def etag_for(mtime: int, size: int) -> str:
    """``ngx_http_set_etag``: ``"%xT-%xO"``, the modification time and size in hexadecimal."""
    return f'"{mtime:x}-{size:x}"'


# -- HTTP dates (ngx_parse_http_time) -----------------------------------------------------------
_MONTHS = {m: i for i, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)}
_RFC1123 = re.compile(r"^[A-Za-z]{3}, (\d\d) ([A-Za-z]{3}) (\d{4}) (\d\d):(\d\d):(\d\d) GMT")
_RFC850 = re.compile(r"^[A-Za-z]+, (\d\d)-([A-Za-z]{3})-(\d\d) (\d\d):(\d\d):(\d\d) GMT")
_ISOC = re.compile(r"^[A-Za-z]{3} ([A-Za-z]{3}) ( \d|\d\d) (\d\d):(\d\d):(\d\d) (\d{4})")


def parse_http_time(text: str) -> int:
    """``ngx_parse_http_time``: RFC 1123, RFC 850 and asctime dates; ``-1`` for anything
    else (which then matches no ``Last-Modified``)."""
    text = text.strip()
    if m := _RFC1123.match(text):
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _RFC850.match(text):
        day, mon, yy, hh, mm, ss = m.groups()
        year = str(1900 + int(yy) if int(yy) >= 70 else 2000 + int(yy))
    elif m := _ISOC.match(text):
        mon, day, hh, mm, ss, year = m.groups()
    else:
        return -1
    month = _MONTHS.get(mon)
    fields = int(day), int(hh), int(mm), int(ss)
    if month is None or not (1 <= fields[0] <= 31 and fields[1] <= 23 and fields[2] <= 59):
        return -1
    if fields[3] > 59:
        return -1
    return calendar.timegm((int(year), month, *fields, 0, 0, 0))


# -- not_modified filter ------------------------------------------------------------------------
def _etag_matches(header: str, etag: str | None, weak: bool) -> bool:
    """``ngx_http_test_if_match``: ``*``, or the entity tag in the list (for If-None-Match
    a weak comparison: ``W/`` ignored on both sides)."""
    if header == "*":
        return True
    if etag is None:
        return False
    if weak and etag.startswith("W/") and len(etag) > 2:
        etag = etag[2:]
    for item in header.split(","):
        item = item.strip(" \t")
        if weak and item.startswith("W/") and len(item) > 2:
            item = item[2:]
        if item == etag:
            return True
    return False


def not_modified(
    settings: LocationSettings,
    headers: Sequence[tuple[str, str]],
    mtime: int,
    etag: str | None,
) -> int | None:
    """ngx_http_not_modified_header_filter for a 200: 412 when ``If-Unmodified-Since`` or
    ``If-Match`` fails, 304 when ``If-Modified-Since`` (per ``if_modified_since``) and
    ``If-None-Match`` both say "not modified", else None (the 200 stands)."""
    ius = first_value(headers, "if-unmodified-since")
    if ius is not None and (mtime == -1 or parse_http_time(ius) < mtime):
        return 412
    im = first_value(headers, "if-match")
    if im is not None and not _etag_matches(im, etag, weak=False):
        return 412
    ims = first_value(headers, "if-modified-since")
    inm = first_value(headers, "if-none-match")
    if ims is None and inm is None:
        return None
    if ims is not None and _modified(settings, ims, mtime):
        return None
    if inm is not None and not _etag_matches(inm, etag, weak=True):
        return None
    return 304


def _modified(settings: LocationSettings, ims: str, mtime: int) -> bool:
    """``ngx_http_test_if_modified``: ``exact`` wants the same time, ``before`` a time no
    earlier than the file's."""
    if mtime == -1 or settings.if_modified_since == "off":
        return True
    since = parse_http_time(ims)
    if since == mtime:
        return False
    return settings.if_modified_since == "exact" or since < mtime


# -- range filter -------------------------------------------------------------------------------
#: ``parse_ranges``' answer for a 416.
NOT_SATISFIABLE = "not satisfiable"
_MAX_OFF_T = (1 << 63) - 1


def range_applies(
    settings: LocationSettings,
    headers: Sequence[tuple[str, str]],
    etag: str | None,
    mtime: int,
) -> str | None:
    """ngx_http_range_header_filter up to the parse: the ``Range`` value when it applies
    (``bytes=``, ranges not disabled, ``If-Range`` matching the entity tag or the exact
    modification time), else None."""
    if settings.max_ranges == 0:
        return None
    value = first_value(headers, "range")
    if value is None or len(value) < 7 or value[:6].lower() != "bytes=":
        return None
    if_range = first_value(headers, "if-range")
    if if_range is not None:
        if len(if_range) >= 2 and if_range.endswith('"'):
            if etag is None or if_range != etag:
                return None
        elif mtime == -1 or parse_http_time(if_range) != mtime:
            return None
    return value[6:]


def parse_ranges(
    spec: str, size: int, max_ranges: int | None
) -> list[tuple[int, int]] | str | None:
    """``ngx_http_range_parse``: ``[(start, end), ...]`` (end exclusive), or
    :data:`NOT_SATISFIABLE` (416), or None (declined: the whole 200 is sent) — more ranges
    than ``max_ranges``, a range starting at 0 that is empty, or ranges adding up to more than
    the file."""
    limit = max_ranges if max_ranges is not None else 0x7FFFFFFF
    left = limit
    ranges: list[tuple[int, int]] = []
    total = 0
    p, n = 0, len(spec)

    def digits(at: int) -> tuple[int, int] | None:
        value, start = 0, at
        while at < n and spec[at].isdigit() and spec[at].isascii():
            value = value * 10 + ord(spec[at]) - 48
            if value > _MAX_OFF_T:
                return None
            at += 1
        return (value, at) if at > start else None

    while True:
        while p < n and spec[p] == " ":
            p += 1
        suffix = False
        if p < n and spec[p] == "-":
            suffix = True
            p += 1
            start = 0
        else:
            got = digits(p)
            if got is None:
                return NOT_SATISFIABLE
            start, p = got
            while p < n and spec[p] == " ":
                p += 1
            if p >= n or spec[p] != "-":
                return NOT_SATISFIABLE
            p += 1
            while p < n and spec[p] == " ":
                p += 1
        if not suffix and (p >= n or spec[p] == ","):
            end = size
        else:
            got = digits(p)
            if got is None:
                return NOT_SATISFIABLE
            end, p = got
            while p < n and spec[p] == " ":
                p += 1
            if p < n and spec[p] != ",":
                return NOT_SATISFIABLE
            if suffix:
                start = size - end if end < size else 0
                end = size - 1
            end = size if end >= size else end + 1
        if start < end:
            ranges.append((start, end))
            total += end - start
            if left == 0:
                return None
            left -= 1
        elif start == 0:
            return None
        if p >= n or spec[p] != ",":
            break
        p += 1
    if not ranges:
        return NOT_SATISFIABLE
    if len(ranges) == 1:
        return ranges
    if total > size:
        return None
    if max_ranges is None and total + len(ranges) * 256 > size + 4096:
        return None
    return ranges


_BOUNDARY = count(1)


def multipart(
    ranges: Sequence[tuple[int, int]], size: int, ctype: str
) -> tuple[str, list[bytes | tuple[int, int]]]:
    """``ngx_http_range_multipart_header``: the ``multipart/byteranges`` type and the body as
    parts (bytes to write, or ``(offset, length)`` of the file)."""
    boundary = f"{next(_BOUNDARY):020d}"
    head = f"\r\n--{boundary}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    head += "Content-Range: bytes "
    parts: list[bytes | tuple[int, int]] = []
    for start, end in ranges:
        parts.append(f"{head}{start}-{end - 1}/{size}\r\n\r\n".encode())
        parts.append((start, end - start))
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    return f"multipart/byteranges; boundary={boundary}", parts


@dataclass(slots=True)
class FileResponse:
    """A response whose body is (parts of) an open file, for :mod:`wsgate.content.sender`:
    ``parts`` are bytes to write or ``(offset, length)`` of ``fd``; the sender closes ``fd``.
    ``headers`` are the entity's (type, validators, range), before ``add_header``/``expires``;
    ``length`` is the body's ``Content-Length``."""

    status: int
    fd: int
    headers: list[tuple[str, str]]
    length: int
    parts: list[bytes | tuple[int, int]] = field(default_factory=list)
    path: str = ""
    #: The charset filter's byte table (``charset`` with ``source_charset``), or None.
    recode: bytes | None = None
    #: ``gzip_static on`` found a ``.gz`` beside it: ``Vary: Accept-Encoding`` with
    #: ``gzip_vary on`` (nginx's ``r->gzip_vary``).
    vary: bool = False
