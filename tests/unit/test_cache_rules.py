"""The proxy cache's pure rules: key and file name, freshness from the upstream's fields in
nginx's order, the Vary variant, the file header and what makes it damaged."""

from __future__ import annotations

import hashlib
import zlib

import pytest

from wsgate.cache.rules import (
    Corrupt,
    Entry,
    cache_valid,
    decode_entry,
    digest,
    encode_entry,
    entry_name,
    freshness,
    is_entry_name,
    revalidated_valid,
    stored_fields,
    valid_until,
    variant,
)
from wsgate.config.model import CacheValid

NOW = 1_700_000_000


def test_digest_and_levels_as_nginx_names_files() -> None:
    # nginx's documentation: key "http://example.com/..." -> c/29/b7f54b2df7773722d382f4809d65029c
    md5 = bytes.fromhex("b7f54b2df7773722d382f4809d65029c")
    assert entry_name(md5, (1, 2)) == "c/29/b7f54b2df7773722d382f4809d65029c"
    assert entry_name(md5, ()) == "b7f54b2df7773722d382f4809d65029c"
    assert entry_name(md5, (2,)) == "9c/b7f54b2df7773722d382f4809d65029c"
    assert digest("httplocalhost/t.html") == hashlib.md5(b"httplocalhost/t.html").digest()
    assert is_entry_name(md5.hex())
    assert not is_entry_name("." + md5.hex() + ".lock")


def test_cache_valid_first_matching_entry() -> None:
    valid = (CacheValid(200, 10), CacheValid(302, 20), CacheValid(0, 5))
    assert cache_valid(valid, 200) == 10
    assert cache_valid(valid, 302) == 20
    assert cache_valid(valid, 404) == 5
    assert cache_valid((CacheValid(200, 10),), 404) == 0


@pytest.mark.parametrize(
    ("fields", "valid"),
    [
        ([("Cache-Control", "max-age=60")], NOW + 60),
        ([("Cache-Control", "s-maxage=30, max-age=60")], NOW + 30),
        ([("Cache-Control", "no-cache")], 0),
        ([("Cache-Control", "private, max-age=60")], 0),
        ([("Cache-Control", "max-age=0")], 0),
        ([("Cache-Control", "max-age=abc")], 0),
        ([("Expires", "Thu, 01 Jan 1970 00:00:01 GMT")], 0),
        ([("X-Accel-Expires", "0")], 0),
        ([("X-Accel-Expires", "100")], NOW + 100),
        ([("X-Accel-Expires", f"@{NOW + 7}")], NOW + 7),
        # X-Accel-Expires wins over Cache-Control whatever the order.
        ([("X-Accel-Expires", "100"), ("Cache-Control", "no-cache")], NOW + 100),
        ([("Cache-Control", "no-cache"), ("X-Accel-Expires", "100")], NOW + 100),
        # Cache-Control then Expires: the first that set the time.
        ([("Cache-Control", "max-age=5"), ("Expires", "Thu, 01 Jan 2099 00:00:00 GMT")], NOW + 5),
        ([("Set-Cookie", "a=b"), ("Cache-Control", "max-age=60")], 0),
        ([("Vary", "*")], 0),
        ([], NOW + 9),
    ],
)
def test_freshness_in_nginx_order(fields: list[tuple[str, str]], valid: int) -> None:
    f = freshness(fields, (), NOW)
    assert valid_until(f, (CacheValid(0, 9),), 200, NOW) == valid


def test_ignore_headers() -> None:
    f = freshness([("Set-Cookie", "a=b"), ("Cache-Control", "no-store")], ("Set-Cookie",), NOW)
    assert not f.storable
    f = freshness(
        [("Set-Cookie", "a=b"), ("Cache-Control", "no-store")], ("Set-Cookie", "Cache-Control"), NOW
    )
    assert f.storable
    f = freshness([("X-Accel-Expires", "0")], ("X-Accel-Expires",), NOW)
    assert f.storable


def test_stale_extensions() -> None:
    f = freshness([("Cache-Control", "max-age=1, stale-while-revalidate=5")], (), NOW)
    assert (f.updating_sec, f.error_sec) == (5, 5)
    f = freshness([("Cache-Control", "max-age=1, stale-if-error=7")], (), NOW)
    assert (f.updating_sec, f.error_sec) == (0, 7)
    # After X-Accel-Expires the extensions are still read.
    f = freshness(
        [("X-Accel-Expires", "10"), ("Cache-Control", "no-cache, stale-if-error=3")], (), NOW
    )
    assert f.storable and f.error_sec == 3


def test_vary_joined_and_variant_normalised() -> None:
    f = freshness([("Vary", "Accept-Encoding"), ("Vary", "User-Agent")], (), NOW)
    assert f.vary == "Accept-Encoding, User-Agent"
    main = digest("k")
    a = variant(main, "accept-encoding", [("Accept-Encoding", "gzip,  deflate")])
    b = variant(main, "Accept-Encoding", [("accept-encoding", "gzip, deflate")])
    c = variant(main, "Accept-Encoding", [("Accept-Encoding", "gzip")])
    assert a == b != c


def test_revalidated_valid_order() -> None:
    none = freshness([], (), NOW)
    from_304 = freshness([("Cache-Control", "max-age=10")], (), NOW)
    cached = freshness([("Cache-Control", "max-age=20")], (), NOW)
    valid = (CacheValid(200, 30),)
    assert revalidated_valid(from_304, cached, valid, 200, NOW)[0] == NOW + 10
    assert revalidated_valid(none, cached, valid, 200, NOW)[0] == NOW + 20
    assert revalidated_valid(none, none, valid, 200, NOW)[0] == NOW + 30
    assert revalidated_valid(none, none, (), 200, NOW)[0] == 0


def _entry(body: bytes) -> tuple[Entry, bytes]:
    e = Entry(
        "httplocalhost/x",
        200,
        "OK",
        stored_fields([("Content-Length", "3"), ("Content-Type", "text/plain"), ("X-Ü", "ä")]),
        NOW + 5,
        etag='"x"',
        vary="Accept",
        variant=b"\x01" * 16,
    )
    e.body_len, e.body_crc = len(body), zlib.crc32(body)
    return e, encode_entry(e) + body


def test_header_round_trip() -> None:
    e, data = _entry(b"abc")
    got = decode_entry(data, len(data))
    assert got == e
    assert got.headers == [("Content-Type", "text/plain"), ("X-Ü", "ä")]
    assert data[got.header_len :] == b"abc"


def test_truncated_or_damaged_file_is_corrupt() -> None:
    _, data = _entry(b"abcdef")
    with pytest.raises(Corrupt):
        decode_entry(data[:-1], len(data) - 1)  # truncated body
    with pytest.raises(Corrupt):
        decode_entry(data + b"x", len(data) + 1)  # longer than announced
    with pytest.raises(Corrupt):
        decode_entry(data[:20], 20)  # truncated header
    for at in (0, 10, 40, 70):
        damaged = bytearray(data)
        damaged[at] ^= 0xFF
        with pytest.raises(Corrupt):
            decode_entry(bytes(damaged), len(damaged))
    with pytest.raises(Corrupt):
        decode_entry(b"", 0)
