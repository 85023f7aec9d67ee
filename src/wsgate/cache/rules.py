"""The proxy cache's rules, with no file system and no event loop: the key and where its
file lives, whether and for how long a response may be kept (``Cache-Control``, ``Expires``,
``X-Accel-Expires``, ``Set-Cookie``, ``Vary``, ``proxy_cache_valid``), the ``Vary``
variant, and the cache file's header (its encoding and the checks that make a damaged file
a miss).

nginx: ``ngx_http_file_cache.c`` (``ngx_http_file_cache_create_key``, ``_name``, ``_vary``,
``_valid``) and ``ngx_http_upstream.c`` (``ngx_http_upstream_process_cache_control``,
``_expires``, ``_accel_expires``, ``_set_cookie``, ``_vary``, applied field by field in the
order the upstream sent them; https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_cache_valid:
"Parameters of caching can also be set directly in the response header. This has higher
priority than setting of caching time using the directive.").
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from wsgate.config.model import CacheValid
from wsgate.http.static import parse_http_time

__all__ = [
    "CORRUPT",
    "Entry",
    "Freshness",
    "cache_valid",
    "decode_entry",
    "digest",
    "encode_entry",
    "entry_name",
    "freshness",
    "hashed_name",
    "is_entry_name",
    "revalidated_valid",
    "stored_fields",
    "variant",
]

#: nginx's ``NGX_HTTP_CACHE_VARY_LEN``: a longer ``Vary`` makes a response uncacheable.
VARY_LEN = 128
#: nginx's ``NGX_HTTP_CACHE_ETAG_LEN``: a longer ``ETag`` is not kept for revalidation.
ETAG_LEN = 128
_MAX = (1 << 63) - 1

#: The fixed part of a cache file's header: magic, version, flags, header length, body length,
#: valid/updating/error seconds, date, last modified, status, body CRC-32, header CRC-32.
_FIXED = struct.Struct("<4sHHIQqqqqqHII")
_MAGIC = b"WSGC"
_VERSION = 1
#: A header is never longer (nginx keeps a cached head within ``proxy_buffer_size``).
MAX_HEADER = 1 << 20


class Corrupt(ValueError):
    """A cache file that is not one, or damaged: a miss, never a response."""


CORRUPT = Corrupt


# -- the key (ngx_http_file_cache_create_key, ngx_http_file_cache_name) -------------------------
def _bytes(text: str) -> bytes:
    try:
        return text.encode("latin-1")  # the bytes the request carried
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def digest(key: str) -> bytes:
    """The md5 of the key, which names its file."""
    return hashlib.md5(_bytes(key), usedforsecurity=False).digest()


def entry_name(md5: bytes, levels: Sequence[int]) -> str:
    """The file's path under the cache directory: "levels=1:2 ... file names in a cache
    will look like this: /data/nginx/cache/c/29/b7f54b2df7773722d382f4809d65029c" (the
    directories are taken from the end of the hexadecimal md5)."""
    return hashed_name(md5.hex(), levels)


def hashed_name(name: str, levels: Sequence[int]) -> str:
    """``ngx_create_hashed_filename``: ``name`` under directories named by its own last
    characters, ``levels`` long each (cache entries, temporary files)."""
    parts = []
    end = len(name)
    for n in levels:
        parts.append(name[end - n : end])
        end -= n
    return "/".join([*parts, name])


def is_entry_name(name: str) -> bool:
    """Whether a file name is a cache entry's (32 lowercase hexadecimal digits); temporary
    and lock files start with a dot."""
    return len(name) == 32 and all(c in "0123456789abcdef" for c in name)


# -- Vary (ngx_http_file_cache_vary, ngx_http_file_cache_vary_header) ---------------------------
_NORMALIZED = frozenset({"accept-charset", "accept-encoding", "accept-language"})


def _tokens(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split(" ") if t]


def variant(main: bytes, vary: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """The md5 naming the request's variant of a response with ``vary``: the main key's
    md5, then each named field of the request ("name:value" lines; the values of
    ``Accept-Charset``, ``-Encoding``, ``-Language`` with their spaces normalised)."""
    md5 = hashlib.md5(main, usedforsecurity=False)
    for name in _tokens(vary.lower()):
        md5.update(_bytes(name) + b":")
        values: list[str] = []
        for hname, hvalue in headers:
            if hname.lower() != name:
                continue
            if name in _NORMALIZED:
                values.extend(_tokens(hvalue))
            else:
                values.append(hvalue)
        md5.update(_bytes(",".join(values)))
        md5.update(b"\r\n")
    return md5.digest()


# -- what the upstream's fields say ---------------------------------------------------------------
@dataclass(slots=True)
class Freshness:
    """What the response's fields say about caching it (nginx's ``u->cacheable``,
    ``headers_in.no_cache``/``expired`` and ``r->cache->valid_sec``/``updating_sec``/
    ``error_sec``), the ``Vary`` to key its variant, and the validators kept for
    ``proxy_cache_revalidate``."""

    cacheable: bool = True
    no_cache: bool = False
    expired: bool = False
    valid_sec: int = 0
    updating_sec: int = 0
    error_sec: int = 0
    vary: str = ""

    @property
    def storable(self) -> bool:
        return self.cacheable and not self.no_cache and not self.expired


def _delta(text: str) -> int | None:
    """``ngx_http_upstream_process_delta_seconds``: digits up to ``,``, ``;`` or a space;
    anything else is an error (None); saturates."""
    n = 0
    for c in text:
        if c in ",; ":
            break
        if not "0" <= c <= "9":
            return None
        n = n * 10 + ord(c) - 48
        if n > _MAX:
            return _MAX
    return n


def _find(low: str, word: str) -> int:
    i = low.find(word)
    return -1 if i < 0 else i + len(word)


def _atoi(text: str) -> int | None:
    """``ngx_atoi``: digits only, else None."""
    return int(text) if text and text.isascii() and text.isdigit() else None


def freshness(headers: Sequence[tuple[str, str]], ignore: Sequence[str], now: int) -> Freshness:
    """Apply the upstream's cache fields in the order it sent them, as nginx's header
    handlers do (``proxy_ignore_headers`` names the ones not to read)."""
    f = Freshness()
    ign = {h.lower() for h in ignore}
    seen_expires = seen_accel = False
    varies: list[str] = []
    for name, value in headers:
        low = name.lower()
        if low == "set-cookie":
            if "set-cookie" not in ign:
                f.cacheable = False
        elif low == "cache-control":
            if "cache-control" not in ign:
                _cache_control(f, value, seen_accel, now)
        elif low == "expires":
            if seen_expires:
                continue
            seen_expires = True
            if "expires" in ign or f.valid_sec != 0:
                continue
            t = parse_http_time(value)
            if t < 0 or t < now:
                f.expired = True
            else:
                f.valid_sec = t
        elif low == "x-accel-expires":
            if seen_accel:
                continue
            seen_accel = True
            if "x-accel-expires" not in ign:
                _accel_expires(f, value, now)
        elif low == "vary":
            varies.append(value)
            if "vary" in ign or not f.cacheable:
                continue
            if value == "*":
                f.cacheable = False
                continue
            joined = ", ".join(varies)
            if len(joined) > VARY_LEN:
                f.cacheable = False
                continue
            f.vary = joined
    return f


def _cache_control(f: Freshness, value: str, seen_accel: bool, now: int) -> None:
    low = value.lower()
    if not (f.valid_sec != 0 and seen_accel):
        if "no-cache" in low or "no-store" in low or "private" in low:
            f.no_cache = True
            return
        at = _find(low, "s-maxage=")
        if at < 0:
            at = _find(low, "max-age=")
        if at >= 0:
            n = _delta(low[at:])
            if n is None:
                f.cacheable = False
                return
            if n == 0:
                f.no_cache = True
                return
            f.valid_sec = min(now + n, _MAX)
            f.expired = False
    for word in ("stale-while-revalidate=", "stale-if-error="):
        at = _find(low, word)
        if at < 0:
            continue
        n = _delta(low[at:])
        if n is None:
            f.cacheable = False
            return
        if word == "stale-if-error=":
            f.error_sec = n
        else:
            f.updating_sec = f.error_sec = n


def _accel_expires(f: Freshness, value: str, now: int) -> None:
    """``X-Accel-Expires``: seconds, 0 (not cached), or ``@`` an absolute time."""
    if not value.startswith("@"):
        n = _atoi(value)
        if n is None:
            return
        if n == 0:
            f.cacheable = False
            return
        f.valid_sec = now + n
        f.no_cache = f.expired = False
        return
    n = _atoi(value[1:])
    if n is not None:
        f.valid_sec = n
        f.no_cache = f.expired = False


def cache_valid(valid: Sequence[CacheValid], status: int) -> int:
    """``ngx_http_file_cache_valid``: the first entry for the status or ``any``; 0: none."""
    for v in valid:
        if v.status == 0 or v.status == status:
            return v.seconds
    return 0


def valid_until(f: Freshness, valid: Sequence[CacheValid], status: int, now: int) -> int:
    """When a response may be kept until (0: not kept): the fields' time, else
    ``proxy_cache_valid``'s for the status (ngx_http_upstream_send_response)."""
    if not f.storable:
        return 0
    if f.valid_sec:
        return f.valid_sec
    seconds = cache_valid(valid, status)
    return now + seconds if seconds else 0


def revalidated_valid(
    from_304: Freshness, from_cached: Freshness, valid: Sequence[CacheValid], status: int, now: int
) -> tuple[int, int, int]:
    """A 304 to ``proxy_cache_revalidate``'s request: the entry's new valid, updating and
    error seconds, from the 304's fields, else the cached response's, else
    ``proxy_cache_valid`` for the cached status (ngx_http_upstream_test_next); valid 0: the
    entry is not updated."""
    for f in (from_304, from_cached):
        if f.valid_sec:
            return f.valid_sec, f.updating_sec, f.error_sec
    seconds = cache_valid(valid, status)
    return (now + seconds if seconds else 0), from_304.updating_sec, from_304.error_sec


#: Fields that describe the upstream connection or the framing, not the entity: not kept.
_NOT_STORED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


def stored_fields(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The response fields kept with an entry (the framing is the sender's again)."""
    return [(n, v) for n, v in headers if n.lower() not in _NOT_STORED]


# -- the cache file's header ---------------------------------------------------------------------
@dataclass(slots=True)
class Entry:
    """A cache file's header: the key, the times (``valid_sec``: until when it is fresh;
    ``updating_sec``/``error_sec``: ``stale-while-revalidate``/``stale-if-error``), the
    validators, the ``Vary`` and the variant it was stored for, the response's status and
    fields; ``body_len`` and ``body_crc`` describe the bytes after ``header_len``."""

    key: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    valid_sec: int
    updating_sec: int = 0
    error_sec: int = 0
    date: int = 0
    last_modified: int = -1
    etag: str = ""
    vary: str = ""
    variant: bytes = b""
    body_len: int = 0
    body_crc: int = 0
    header_len: int = field(default=0, compare=False)
    #: An intercepted error (``proxy_intercept_errors``): nginx keeps its status only, and
    #: answers it again while it is valid.
    error: bool = False


def encode_entry(e: Entry) -> bytes:
    """The header bytes of ``e`` (``e.header_len`` set), with a CRC-32 over all of it: the
    fixed fields, then the key, reason, validators, ``Vary`` and fields as JSON (decoded in
    C: a hit reads it each time)."""
    tail = json.dumps([e.key, e.reason, e.etag, e.vary, e.variant.hex(), e.headers]).encode()
    e.header_len = _FIXED.size + len(tail)
    fixed = _fixed(e, 0)
    crc = zlib.crc32(tail, zlib.crc32(fixed))
    return _fixed(e, crc) + tail


def _fixed(e: Entry, crc: int) -> bytes:
    return _FIXED.pack(
        _MAGIC,
        _VERSION,
        1 if e.error else 0,
        e.header_len,
        e.body_len,
        e.valid_sec,
        e.updating_sec,
        e.error_sec,
        e.date,
        e.last_modified,
        e.status,
        e.body_crc,
        crc,
    )


def header_length(prefix: bytes) -> int:
    """The header's length from a file's first bytes (``Corrupt`` if they are no header)."""
    if len(prefix) < _FIXED.size:
        raise Corrupt("too small")
    magic, version, _flags, header_len = struct.unpack_from("<4sHHI", prefix)
    if magic != _MAGIC:
        raise Corrupt("not a cache file")
    if version != _VERSION:
        raise Corrupt("version mismatch")
    if not _FIXED.size <= header_len <= MAX_HEADER:
        raise Corrupt("bad header length")
    return int(header_len)


def decode_entry(data: bytes, file_size: int) -> Entry:
    """The header at the start of ``data`` (at least its whole header), checked: its CRC,
    and that the file holds exactly the body it announces (``file_size``)."""
    header_len = header_length(data)
    if len(data) < header_len:
        raise Corrupt("truncated header")
    (_, _, flags, _, body_len, valid, updating, error, date, modified, status, body_crc, crc) = (
        _FIXED.unpack_from(data)
    )
    zeroed = data[: _FIXED.size - 4] + b"\0\0\0\0"
    if zlib.crc32(data[_FIXED.size : header_len], zlib.crc32(zeroed)) != crc:
        raise Corrupt("header checksum mismatch")
    if file_size != header_len + body_len:
        raise Corrupt(f"size {file_size}, expected {header_len + body_len}")
    try:
        key, reason, etag, vary, var, fields = json.loads(data[_FIXED.size : header_len])
        headers = [(str(n), str(v)) for n, v in fields]
        variant_md5 = bytes.fromhex(var)
    except (ValueError, TypeError) as exc:
        raise Corrupt("bad header") from exc
    return Entry(
        key,
        status,
        reason,
        headers,
        valid,
        updating,
        error,
        date,
        modified,
        etag,
        vary,
        variant_md5,
        body_len,
        body_crc,
        header_len,
        bool(flags & 1),
    )
