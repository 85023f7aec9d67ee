"""The gzip rules (wsgate.http.gzip), values in and out: Accept-Encoding as nginx reads it,
MSIE 6, gzip_proxied, gzip_disable, the header filter's checks and fields, the stream and
$gzip_ratio, a whole page; and the directives' values and errors."""

from __future__ import annotations

import gzip as gzip_lib
import re
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.model import LocationSettings
from wsgate.errors import ConfigError
from wsgate.http.gzip import (
    GunzipError,
    GunzipStream,
    GzipStream,
    accepts_gzip,
    gunzip_response,
    gzip_applies,
    gzip_fields,
    gzip_ok,
    gzip_page,
    gzip_response,
    is_msie6,
    ratio,
)
from wsgate.http.pages import error_response

ON = LocationSettings(gzip=True)
AE = [("Accept-Encoding", "gzip")]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("gzip", True),
        ("gzip, deflate", True),
        ("gzip,deflate", True),
        ("deflate, gzip", True),
        ("deflate,gzip", True),
        ("GZIP", True),
        ("br;q=1, gzip;q=0.5", True),
        ("gzip; q=1", True),
        ("gzip;q=0.001", True),
        ("gzip;q=1.000", True),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("gzip;q=0.", False),
        ("gzip;q=1.5", False),  # over 100 hundredths
        ("gzip;q=0.0001", False),  # more than three digits
        ("gzip;q=2", False),
        ("gzip;x=1", False),
        ("xgzip", False),
        ("gzipx", False),
        ("x-gzip", False),
        ("deflate", False),
        ("gzi", False),
        ("", False),
    ],
)
def test_accept_encoding(value: str, ok: bool) -> None:
    assert accepts_gzip(value) is ok


@pytest.mark.parametrize(
    ("agent", "msie6"),
    [
        ("Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)", True),
        ("Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1; SV1)", False),
        ("Mozilla/4.0 (compatible; MSIE 5.5; Windows 98)", True),
        ("Mozilla/4.0 (compatible; MSIE 4.01; Windows 95)", True),
        ("Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.0)", False),
        ("Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1) Opera 8.5", False),
        ("MSIE 6.", False),  # too short: nginx wants two bytes after "MSIE 6."
        ("curl/8", False),
    ],
)
def test_msie6(agent: str, msie6: bool) -> None:
    assert is_msie6(agent) is msie6


def test_gzip_ok_request_side() -> None:
    assert gzip_ok(ON, AE, "1.1")
    assert not gzip_ok(ON, [], "1.1")
    assert not gzip_ok(ON, AE, "1.0")  # gzip_http_version 1.1 by default
    assert gzip_ok(replace(ON, gzip_http_version="1.0"), AE, "1.0")
    assert not gzip_ok(replace(ON, gzip_http_version="1.0"), AE, "0.9")
    ie6 = [*AE, ("User-Agent", "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)")]
    assert gzip_ok(ON, ie6, "1.1")
    assert not gzip_ok(replace(ON, gzip_disable=("msie6",)), ie6, "1.1")
    # gzip_disable expressions are caseless and search the whole User-Agent.
    bot = replace(ON, gzip_disable=(re.compile("badbot", re.I),))
    assert not gzip_ok(bot, [*AE, ("User-Agent", "x BadBot/1")], "1.1")
    assert gzip_ok(bot, [*AE, ("User-Agent", "curl")], "1.1")
    assert gzip_ok(bot, AE, "1.1")  # no User-Agent: nothing to match


def test_gzip_proxied() -> None:
    via = [*AE, ("Via", "1.1 proxy")]
    assert not gzip_ok(ON, via, "1.1")  # gzip_proxied off by default
    s = replace(ON, gzip_proxied=frozenset({"any"}))
    assert gzip_ok(s, via, "1.1")
    s = replace(ON, gzip_proxied=frozenset({"auth"}))
    assert gzip_ok(s, [*via, ("Authorization", "Basic eA==")], "1.1")
    assert gzip_ok(s, via, "1.1")  # no response field forbids it
    # expired: an Expires before the Date (or now).
    s = replace(ON, gzip_proxied=frozenset({"expired"}))
    past = [("Expires", "Thu, 01 Jan 1970 00:00:01 GMT")]
    future = [("Expires", "Thu, 31 Dec 2037 23:55:55 GMT")]
    assert gzip_ok(s, via, "1.1", past)
    assert not gzip_ok(s, via, "1.1", future)
    assert not gzip_ok(s, via, "1.1", [("Expires", "bogus")])
    assert not gzip_ok(replace(ON, gzip_proxied=frozenset({"any", "off"})), via, "1.1")
    # Any Expires without "expired" declines, whatever else is allowed.
    assert not gzip_ok(replace(ON, gzip_proxied=frozenset({"no-cache"})), via, "1.1", past)
    # Cache-Control: one of the allowed tokens, else no.
    s = replace(ON, gzip_proxied=frozenset({"no-cache", "private"}))
    assert gzip_ok(s, via, "1.1", [("Cache-Control", "max-age=0, no-cache")])
    assert gzip_ok(s, via, "1.1", [("Cache-Control", 'private="x"')])
    assert not gzip_ok(s, via, "1.1", [("Cache-Control", "no-store")])
    assert not gzip_ok(s, via, "1.1", [("Cache-Control", "public")])
    # no_last_modified / no_etag: declined when the response has one.
    s = replace(ON, gzip_proxied=frozenset({"no_last_modified", "no_etag"}))
    assert gzip_ok(s, via, "1.1", [])
    assert not gzip_ok(s, via, "1.1", [("Last-Modified", "Thu, 01 Jan 2026 00:00:00 GMT")])
    assert not gzip_ok(s, via, "1.1", [("ETag", '"x"')])


def test_gzip_applies_response_side() -> None:
    html = [("Content-Type", "text/html; charset=utf-8")]
    assert gzip_applies(ON, 200, html, None)
    assert gzip_applies(ON, 404, html, 100) and gzip_applies(ON, 403, html, 100)
    for status in (201, 204, 206, 301, 304, 500):
        assert not gzip_applies(ON, status, html, 100)
    assert not gzip_applies(LocationSettings(), 200, html, 100)
    assert not gzip_applies(ON, 200, [*html, ("Content-Encoding", "br")], 100)
    assert gzip_applies(ON, 200, [*html, ("Content-Encoding", "")], 100)  # empty: none
    # gzip_min_length (20 by default) on the known length only: at and under.
    assert gzip_applies(ON, 200, html, 20)
    assert not gzip_applies(ON, 200, html, 19)
    assert gzip_applies(replace(ON, gzip_min_length=0), 200, html, 0)
    # gzip_types: text/html always, others when listed, "*" any (even no type).
    css = [("Content-Type", "text/css")]
    assert not gzip_applies(ON, 200, css, None)
    assert gzip_applies(replace(ON, gzip_types=("text/css",)), 200, css, None)
    assert not gzip_applies(ON, 200, [], None)
    assert gzip_applies(replace(ON, gzip_types=("*",)), 200, [], None)


def test_fields_of_a_compressed_response() -> None:
    own, added = gzip_fields(
        [
            ("Content-Type", "text/html"),
            ("Content-Length", "100"),
            ("Accept-Ranges", "bytes"),
            ("ETag", '"abc"'),
        ],
        [("X-A", "1")],
    )
    assert own == [("Content-Type", "text/html"), ("ETag", 'W/"abc"')]
    assert added == [("X-A", "1"), ("Content-Encoding", "gzip")]
    assert gzip_fields([("ETag", 'W/"x"')])[0] == [("ETag", 'W/"x"')]
    assert gzip_fields([("ETag", "bare")])[0] == []  # not a quoted string: it goes


def test_gzip_response_vary() -> None:
    html = [("Content-Type", "text/html")]
    vary = replace(ON, gzip_vary=True)
    fields, added, gz = gzip_response(vary, AE, "1.1", 200, html, [], 100)
    assert gz is not None and fields[0] == ("Vary", "Accept-Encoding")
    # The client does not accept gzip: uncompressed, but Vary all the same.
    fields, added, gz = gzip_response(vary, [], "1.1", 200, html, [], 100)
    assert gz is None and fields == [("Vary", "Accept-Encoding"), *html] and added == []
    # A response the filter does not take gets no Vary.
    fields, _, gz = gzip_response(vary, AE, "1.1", 200, html, [], 5)
    assert gz is None and fields is html


def test_stream_and_ratio() -> None:
    data = [b"a" * 1000, b"b" * 1000, b"", b"c" * 1000]
    gz = GzipStream(level=6)
    out = b""
    for piece in data:
        out += gz.compress(piece)
        flushed = gz.flush()
        out += flushed
        # After a sync flush, all that went in can be inflated.
        assert zlib.decompressobj(16 + 15).decompress(out) == b"".join(
            data[: data.index(piece) + 1]
        )
    out += gz.finish()
    assert gzip_lib.decompress(out) == b"".join(data)
    assert gz.zin == 3000 and gz.zout == len(out)
    assert gz.ratio == ratio(3000, len(out))
    assert ratio(0, 0) == "" and ratio(100, 0) == ""
    assert ratio(2125, 1000) == "2.13"  # rounded half up, as nginx
    assert ratio(1999, 1000) == "2.00"
    assert ratio(1000, 3) == "333.33"


def test_error_page_compressed() -> None:
    page = error_response(404, keep_alive=True, date="D")
    vary = replace(ON, gzip_vary=True)
    data, keep = gzip_page(vary, AE, "1.1", 404, page, True)
    head, _, body = data.partition(b"\r\n\r\n")
    assert keep and b"Content-Length" not in head
    assert (
        b"\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nVary: Accept-Encoding" in head
    )
    assert head.endswith(b"\r\nContent-Encoding: gzip")
    size, _, rest = body.partition(b"\r\n")
    assert rest.endswith(b"\r\n0\r\n\r\n")
    assert gzip_lib.decompress(rest[: int(size, 16)]) == page.partition(b"\r\n\r\n")[2]
    # HTTP/1.0 (with gzip_http_version 1.0): delimited by the close.
    data, keep = gzip_page(replace(vary, gzip_http_version="1.0"), AE, "1.0", 404, page, True)
    assert not keep and b"Connection: close" in data and b"Transfer-Encoding" not in data
    # HEAD: the compressed response's fields, no framing, no body.
    head_only = error_response(404, keep_alive=True, date="D", head_only=True)
    data, keep = gzip_page(vary, AE, "1.1", 404, head_only, True, head_only=True)
    assert keep and data.endswith(b"Content-Encoding: gzip\r\n\r\n")
    assert b"Transfer-Encoding" not in data and b"Content-Length" not in data
    # Not accepted: unchanged but for Vary; a 500 is never compressed.
    data, _ = gzip_page(vary, [], "1.1", 404, page, True)
    assert b"Vary: Accept-Encoding" in data and b"Content-Length" in data
    page500 = error_response(500, keep_alive=True, date="D")
    assert gzip_page(vary, AE, "1.1", 500, page500, True) == (page500, True)


def _location(tmp_path: Path, body: str) -> LocationSettings:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "events {} http { server { listen 127.0.0.1:0; location / { " + body + " return 200; } } }"
    )
    return load(str(conf), prefix=str(tmp_path)).http.servers[0].locations[0].settings


def test_directives(tmp_path: Path) -> None:
    s = _location(tmp_path, "")
    assert (s.gzip, s.gzip_types, s.gzip_min_length, s.gzip_comp_level) == (
        False,
        ("text/html",),
        20,
        1,
    )
    assert (s.gzip_window, s.gzip_hash, s.gzip_vary, s.gzip_http_version) == (15, 8, False, "1.1")
    assert s.gzip_proxied == frozenset({"off"}) and s.gzip_disable == () and s.gzip_static == "off"
    s = _location(
        tmp_path,
        "gzip on; gzip_types text/CSS application/json; gzip_min_length 1k; gzip_comp_level 9; "
        "gzip_window 512; gzip_hash 128k; gzip_vary on; gzip_http_version 1.0; "
        "gzip_proxied expired no-cache; gzip_disable msie6 Bot; gzip_buffers 16 8k; "
        "gzip_static always;",
    )
    assert s.gzip and s.gzip_types == ("text/css", "application/json")
    assert (s.gzip_min_length, s.gzip_comp_level, s.gzip_window, s.gzip_hash) == (1024, 9, 9, 9)
    assert s.gzip_vary and s.gzip_http_version == "1.0" and s.gzip_static == "always"
    assert s.gzip_proxied == frozenset({"expired", "no-cache"})
    assert s.gzip_disable[0] == "msie6"
    bot = s.gzip_disable[1]
    assert not isinstance(bot, str) and bot.search("a bot")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("gzip_comp_level 10;", "value must be between 1 and 9"),
        ("gzip_comp_level 0;", "value must be between 1 and 9"),
        ("gzip_comp_level x;", "invalid number"),
        ("gzip_window 1000;", "must be 512, 1k, 2k, 4k, 8k, 16k, or 32k"),
        ("gzip_hash 256k;", "must be 512, 1k, 2k, 4k, 8k, 16k, 32k, 64k, or 128k"),
        ("gzip_proxied sometimes;", 'invalid value "sometimes"'),
        ("gzip_http_version 2.0;", 'invalid value "2.0"'),
        ("gzip_static maybe;", 'invalid value "maybe"'),
        ("gzip_disable (;", "pcre2_compile() failed"),
        ("gzip maybe;", 'it must be "on" or "off"'),
    ],
)
def test_directive_errors(tmp_path: Path, body: str, error: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(error)):
        _location(tmp_path, body)


def test_gunzip_stream_members_and_errors() -> None:
    one, two = gzip_lib.compress(b"first " * 100), gzip_lib.compress(b"second")
    data = one + two
    gun = GunzipStream()
    out = b"".join(gun.feed(data[i : i + 7]) for i in range(0, len(data), 7))
    gun.finish()
    assert out == b"first " * 100 + b"second"
    cut = GunzipStream()
    cut.feed(one[:-5])
    with pytest.raises(GunzipError, match="on response end"):
        cut.finish()
    with pytest.raises(GunzipError, match="inflate"):
        GunzipStream().feed(b"not gzip at all, really")
    GunzipStream().finish()  # an empty body is no error


def test_gunzip_response() -> None:
    on = replace(ON, gzip=False, gunzip=True, gzip_vary=True)
    fields = [("Content-Encoding", "GZIP"), ("Content-Length", "9"), ("ETag", '"e"')]
    own, added, gun = gunzip_response(on, [], "1.1", fields, [])
    assert gun is not None and added == []
    assert own == [("Vary", "Accept-Encoding"), ("ETag", 'W/"e"')]
    # A client that accepts gzip gets it as it is (Vary all the same); a subrequest never.
    own, _, gun = gunzip_response(on, AE, "1.1", fields, [])
    assert gun is None and own == [("Vary", "Accept-Encoding"), *fields]
    assert gunzip_response(on, AE, "1.1", fields, [], main=False)[2] is not None
    # Another coding, several, or none: untouched.
    for coding in ("br", "gzip, br", ""):
        other = [("Content-Encoding", coding)]
        assert gunzip_response(on, [], "1.1", other, []) == (other, [], None)
    assert gunzip_response(replace(on, gunzip=False), [], "1.1", fields, [])[2] is None
