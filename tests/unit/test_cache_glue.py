"""The request side of the cache, without sockets: which fields go upstream, the entry as
a file response (ranges and conditional requests, offsets past the header), the range
offset limit, and the predicates of proxy_cache_bypass/proxy_no_cache."""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from wsgate.cache.glue import CacheRequest, Status, _any_true, _file_response, conditional_fields
from wsgate.cache.rules import Entry, encode_entry
from wsgate.cache.store import Hit
from wsgate.config.model import LocationSettings
from wsgate.config.template import compile_template
from wsgate.errors import HttpError


def _fake(headers: list[tuple[str, str]], **settings: Any) -> Any:
    ctx = SimpleNamespace(
        headers=headers,
        version="1.1",
        header=lambda name: next((v for n, v in headers if n.lower() == name), None),
    )
    r = SimpleNamespace(settings=LocationSettings(**settings), ctx=ctx)
    return SimpleNamespace(ex=SimpleNamespace(r=r))


def _hit(tmp_path: Path, body: bytes, fields: list[tuple[str, str]], status: int = 200) -> Hit:
    entry = Entry("k", status, "OK", fields, int(time.time()) + 60, last_modified=-1)
    entry.body_len, entry.body_crc = len(body), zlib.crc32(body)
    path = tmp_path / "entry"
    path.write_bytes(encode_entry(entry) + body)
    fd = os.open(path, os.O_RDONLY)
    return Hit(fd, entry, str(path), path.stat().st_size, 0.0)


def _bytes(hit: Hit, parts: list[bytes | tuple[int, int]]) -> bytes:
    out = b""
    for p in parts:
        out += p if isinstance(p, bytes) else os.pread(hit.fd, p[1], p[0])
    return out


FIELDS = [("Content-Type", "text/plain"), ("ETag", '"e1"'), ("Accept-Ranges", "bytes")]


def test_hit_whole_and_ranges_after_the_header(tmp_path: Path) -> None:
    hit = _hit(tmp_path, b"0123456789", FIELDS)
    try:
        resp = _file_response(_fake([]), hit, list(FIELDS))
        assert (resp.status, resp.length, _bytes(hit, resp.parts)) == (200, 10, b"0123456789")
        assert resp.headers.count(("Accept-Ranges", "bytes")) == 1
        resp = _file_response(_fake([("Range", "bytes=2-4")]), hit, list(FIELDS))
        assert (resp.status, _bytes(hit, resp.parts)) == (206, b"234")
        assert ("Content-Range", "bytes 2-4/10") in resp.headers
        resp = _file_response(_fake([("Range", "bytes=0-1,8-")]), hit, list(FIELDS))
        body = _bytes(hit, resp.parts)
        assert resp.status == 206 and b"\r\n\r\n01\r\n" in body and b"\r\n\r\n89\r\n" in body
        assert resp.length == len(body)
        with pytest.raises(HttpError) as err:
            _file_response(_fake([("Range", "bytes=20-")]), hit, list(FIELDS))
        assert err.value.status == 416
    finally:
        os.close(hit.fd)


def test_hit_without_accept_ranges_is_sent_whole(tmp_path: Path) -> None:
    fields = FIELDS[:2]
    hit = _hit(tmp_path, b"0123456789", fields)
    try:
        resp = _file_response(_fake([("Range", "bytes=2-4")]), hit, list(fields))
        assert (resp.status, _bytes(hit, resp.parts)) == (200, b"0123456789")
        assert all(n != "Accept-Ranges" for n, _ in resp.headers)
    finally:
        os.close(hit.fd)


def test_hit_conditional(tmp_path: Path) -> None:
    hit = _hit(tmp_path, b"abc", FIELDS)
    try:
        resp = _file_response(_fake([("If-None-Match", '"e1"')]), hit, list(FIELDS))
        assert resp.status == 304 and resp.parts == []
        assert all(n.lower() != "content-type" for n, _ in resp.headers)
        with pytest.raises(HttpError) as err:
            _file_response(_fake([("If-Match", '"other"')]), hit, list(FIELDS))
        assert err.value.status == 412
        # Not a 200: no filter applies.
        hit404 = _hit(tmp_path, b"gone", FIELDS, status=404)
        try:
            resp = _file_response(_fake([("Range", "bytes=0-0")]), hit404, list(FIELDS))
            assert (resp.status, _bytes(hit404, resp.parts)) == (404, b"gone")
        finally:
            os.close(hit404.fd)
    finally:
        os.close(hit.fd)


def test_conditional_fields() -> None:
    blank = conditional_fields(None, set())
    assert dict(blank) == dict.fromkeys(
        [
            "If-Modified-Since",
            "If-Unmodified-Since",
            "If-None-Match",
            "If-Match",
            "Range",
            "If-Range",
        ],
        "",
    )
    assert "Range" not in dict(conditional_fields(None, {"range"}))
    fake = _fake([], proxy_cache_revalidate=True)
    entry = Entry("k", 200, "OK", [], 0, last_modified=784111777, etag='"v"')
    fake.stale = SimpleNamespace(entry=entry)
    fake.status = Status.EXPIRED
    got = dict(conditional_fields(fake, set()))
    assert got["If-Modified-Since"] == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert got["If-None-Match"] == '"v"'
    fake.status = Status.MISS
    assert dict(conditional_fields(fake, set()))["If-None-Match"] == ""


@pytest.mark.parametrize(
    ("limit", "value", "ok"),
    [
        (None, "bytes=100-", True),
        (0, "bytes=0-", False),
        (1000, "bytes=999-", True),
        (1000, "bytes=1000-", False),
        (1000, "bytes=-5", False),
        (1000, "items=5000-", True),
        (1000, None, True),
    ],
)
def test_max_range_offset(limit: int | None, value: str | None, ok: bool) -> None:
    fake = _fake([("Range", value)] if value else [], proxy_cache_max_range_offset=limit)
    fake.cacheable = True
    assert CacheRequest._range_ok(fake) is ok


def test_predicates() -> None:
    values = {"a": "", "b": "0", "c": "1"}
    tpl = [compile_template(f"${n}") for n in "abc"]
    assert not _any_true((tpl[0], tpl[1]), values.__getitem__)
    assert _any_true((tpl[0], tpl[2]), values.__getitem__)
    assert not _any_true((), values.__getitem__)


def test_range_cut_over_pieces() -> None:
    from wsgate.cache.glue import RangeCut

    cut = RangeCut(3, 8, 12)
    assert (cut.length, cut.content_range) == (5, "bytes 3-7/12")
    body = b"0123456789ab"
    got = b"".join(cut.take(body[i : i + 2]) for i in range(0, 12, 2))
    assert got == b"34567"
    whole = RangeCut(0, 12, 12)
    assert whole.take(body) == body
