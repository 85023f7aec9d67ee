"""Static files, the pure rules (:mod:`wsgate.http.static`, :mod:`wsgate.http.autoindex`,
:mod:`wsgate.http.charset`): the file a URI names, types, validators, nginx's not_modified
and range filters, autoindex pages, the charset filter; no sockets, no files."""

from __future__ import annotations

import dataclasses

import pytest

from wsgate.config.model import DocRoot, LocationSettings, MimeTypes
from wsgate.config.template import compile_template
from wsgate.http import autoindex
from wsgate.http.charset import apply_charset, charset_page, proxied_charset, split_charset
from wsgate.http.static import (
    NOT_SATISFIABLE,
    content_type,
    etag_for,
    exten,
    map_uri_to_path,
    multipart,
    not_modified,
    parse_http_time,
    parse_ranges,
    range_applies,
)

S = LocationSettings()
CAPS = {"1": "/cap", "host": "example.org"}


def root(text: str, alias: bool = False, alias_len: int = 0) -> DocRoot:
    return DocRoot(compile_template(text), "/prefix", alias, alias_len)


def lookup(name: str) -> str:
    return CAPS.get(name, "")


# -- the file --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("doc", "uri", "path"),
    [
        (root("/srv"), "/a/b.html", "/srv/a/b.html"),
        (root("/srv/$host"), "/x", "/srv/example.org/x"),
        (root("$host/d"), "/x", "/prefix/example.org/d/x"),  # made absolute per request
        (root("/data/", alias=True, alias_len=5), "/img/a.png", "/data/a.png"),
        (root("/data", alias=True, alias_len=5), "/img/a.png", "/dataa.png"),  # as nginx
        (root("/data$1", alias=True, alias_len=-1), "/anything", "/data/cap"),
    ],
)
def test_map_uri_to_path(doc: DocRoot, uri: str, path: str) -> None:
    assert map_uri_to_path(doc, uri, lookup)[0] == path


def test_regex_alias_takes_the_uri_after_try_files() -> None:
    doc = root("/dir", alias=True, alias_len=-1)
    assert map_uri_to_path(doc, "/f.html", lookup, add_uri_to_alias=True)[0] == "/dir/f.html"


def test_types_by_extension_of_the_uri() -> None:
    assert exten("/a.b/c") == "" and exten("/a/b.TXT") == "TXT" and exten("/a/.x") == "x"
    assert content_type(S, "/a.html") == "text/html"  # nginx's three built-in types
    assert content_type(S, "/a.JPG") == "image/jpeg"
    assert content_type(S, "/a.css") == "text/plain"  # default_type
    own = dataclasses.replace(S, types=MimeTypes({"css": "text/css"}), default_type="x/y")
    assert content_type(own, "/a.css") == "text/css"
    assert content_type(own, "/a.html") == "x/y"  # a types block replaces the built-in one
    assert content_type(own, "/noext") == "x/y"


def test_etag_is_mtime_and_size_in_hex() -> None:
    assert etag_for(0x5F5E1000, 255) == '"5f5e1000-ff"'


# -- dates ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ],
)
def test_parse_http_time_three_formats(text: str) -> None:
    assert parse_http_time(text) == 784111777


@pytest.mark.parametrize("text", ["", "yesterday", "Sun, 06 Nov 1994 25:49:37 GMT", "Sun, 06 Foo"])
def test_parse_http_time_bad_is_minus_one(text: str) -> None:
    assert parse_http_time(text) == -1


# -- not_modified -------------------------------------------------------------------------------
LM = "Sun, 06 Nov 1994 08:49:37 GMT"
MTIME = 784111777
ETAG = '"2ebc-5"'


@pytest.mark.parametrize(
    ("headers", "setting", "want"),
    [
        ([], "exact", None),
        ([("If-Modified-Since", LM)], "exact", 304),
        ([("If-Modified-Since", "Sun, 06 Nov 1994 08:49:38 GMT")], "exact", None),
        ([("If-Modified-Since", "Sun, 06 Nov 1994 08:49:38 GMT")], "before", 304),
        ([("If-Modified-Since", "Sun, 06 Nov 1994 08:49:36 GMT")], "before", None),
        ([("If-Modified-Since", LM)], "off", None),
        ([("If-None-Match", ETAG)], "exact", 304),
        ([("If-None-Match", 'W/"2ebc-5"')], "exact", 304),  # weak comparison
        ([("If-None-Match", '"x", "2ebc-5"')], "exact", 304),
        ([("If-None-Match", "*")], "exact", 304),
        ([("If-None-Match", '"x"')], "exact", None),
        ([("If-None-Match", ETAG), ("If-Modified-Since", "bad")], "exact", None),
        ([("If-Match", '"x"')], "exact", 412),
        ([("If-Match", ETAG)], "exact", None),
        ([("If-Match", 'W/"2ebc-5"')], "exact", 412),  # strong comparison
        ([("If-Unmodified-Since", "Sun, 06 Nov 1994 08:49:36 GMT")], "exact", 412),
        ([("If-Unmodified-Since", LM)], "exact", None),
    ],
)
def test_not_modified(headers: list[tuple[str, str]], setting: str, want: int | None) -> None:
    settings = dataclasses.replace(S, if_modified_since=setting)
    assert not_modified(settings, headers, MTIME, ETAG) == want


def test_if_match_without_etag_fails() -> None:
    assert not_modified(S, [("If-Match", ETAG)], MTIME, None) == 412
    assert not_modified(S, [("If-Match", "*")], MTIME, None) is None


# -- ranges (ngx_http_range_parse; cases of nginx-tests range.t) -----------------------------------
@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("0-9", [(0, 10)]),
        ("-10", [(990, 1000)]),
        ("990-", [(990, 1000)]),
        ("990-1990", [(990, 1000)]),
        ("-2000", [(0, 1000)]),
        (" 0 - 9 ", [(0, 10)]),
        ("0-9, -10, 10-19", [(0, 10), (990, 1000), (10, 20)]),
        ("0-9, -10, 100000-, 10-19", [(0, 10), (990, 1000), (10, 20)]),
        ("1000-", NOT_SATISFIABLE),
        ("1000-1001", NOT_SATISFIABLE),
        ("x", NOT_SATISFIABLE),
        ("0-x", NOT_SATISFIABLE),
        ("9-1", None),  # empty at a non-zero start: skipped... and nothing left
        ("0-0,0-999", None),  # adds up to more than the file
        ("0-", [(0, 1000)]),
        ("99999999999999999999-", NOT_SATISFIABLE),
    ],
)
def test_parse_ranges(spec: str, want: object) -> None:
    got = parse_ranges(spec, 1000, None)
    if spec == "9-1":
        assert got == NOT_SATISFIABLE
    else:
        assert got == want


def test_max_ranges_declines_over_the_limit() -> None:
    assert parse_ranges("0-1,3-4", 1000, 2) == [(0, 2), (3, 5)]
    assert parse_ranges("0-1,3-4,6-7", 1000, 2) is None
    assert parse_ranges("0-1", 1000, 1) == [(0, 2)]


def test_many_small_ranges_are_declined_without_max_ranges() -> None:
    """nginx: without ``max_ranges``, 256 bytes per range count against the file's size."""
    spec = ",".join(f"{i}-{i}" for i in range(0, 40, 2))
    assert parse_ranges(spec, 1000, None) is None
    assert isinstance(parse_ranges(spec, 10000, None), list)


def test_range_applies_with_if_range() -> None:
    rng = [("Range", "bytes=0-9")]
    assert range_applies(S, rng, ETAG, MTIME) == "0-9"
    assert range_applies(S, [("Range", "items=0-9")], ETAG, MTIME) is None
    assert range_applies(S, rng + [("If-Range", ETAG)], ETAG, MTIME) == "0-9"
    assert range_applies(S, rng + [("If-Range", '"other"')], ETAG, MTIME) is None
    assert range_applies(S, rng + [("If-Range", LM)], ETAG, MTIME) == "0-9"
    assert range_applies(S, rng + [("If-Range", "wrong")], ETAG, MTIME) is None
    assert range_applies(S, rng + [("If-Range", LM)], ETAG, -1) is None
    assert range_applies(dataclasses.replace(S, max_ranges=0), rng, ETAG, MTIME) is None


def test_multipart_body() -> None:
    ctype, parts = multipart([(0, 2), (8, 10)], 10, "text/plain")
    boundary = ctype.split("boundary=")[1]
    assert ctype.startswith("multipart/byteranges; boundary=") and len(boundary) == 20
    assert (
        parts[0]
        == (
            f"\r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n"
        ).encode()
    )
    assert parts[1] == (0, 2) and parts[3] == (8, 2)
    assert parts[-1] == f"\r\n--{boundary}--\r\n".encode()


# -- autoindex ----------------------------------------------------------------------------------
E = [
    autoindex.Entry(b"b.txt", False, True, 0, 12345),
    autoindex.Entry(b"a dir", True, False, 86400, 4096),
    autoindex.Entry(b"<x>&" + b"y" * 60, False, True, 0, 5),
]


def test_autoindex_html_columns_sizes_and_escapes() -> None:
    entries = autoindex.sort(E)
    page = autoindex.html("/d<ir>/", entries, utf8=False, exact_size=False, localtime=False)
    text = page.decode()
    assert text.startswith("<html>\r\n<head><title>Index of /d&lt;ir&gt;/</title>")
    lines = text.split("\r\n")
    assert lines[4] == ('<a href="a%20dir/">a dir/</a>' + " " * 44 + " 02-Jan-1970 00:00       -")
    assert lines[5].startswith('<a href="%3Cx%3E%26') and "&lt;x&gt;&amp;" + "y" * 43 in lines[5]
    assert "..&gt;</a>" in lines[5]
    assert lines[6].endswith("01-Jan-1970 00:00     12K")
    exact = autoindex.html("/", E[:1], utf8=False, exact_size=True, localtime=False).decode()
    assert "12345\r\n" in exact and f"{12345:19d}" in exact


def test_autoindex_utf8_counts_characters() -> None:
    """nginx-tests autoindex.t: 'test-utf8-' and 45 two-byte letters keep 47 characters."""
    name = b"test-utf8-" + "ф".encode() * 45
    entries = [autoindex.Entry(name, False, True, 0, 0)]
    page = autoindex.html("/", entries, utf8=True, exact_size=True, localtime=False).decode()
    assert "test-utf8-" + "ф" * 37 + "..&gt;</a>" in page
    as_bytes = autoindex.html("/", entries, utf8=False, exact_size=True, localtime=False)
    assert b"test-utf8-" + "ф".encode() * 18 + b"\xd1..&gt;" in as_bytes


def test_autoindex_json_xml_jsonp() -> None:
    entries = autoindex.sort(E[:2])
    js = autoindex.json(entries)
    assert js == (
        b'[\r\n{ "name":"a dir", "type":"directory", "mtime":"Fri, 02 Jan 1970 00:00:00 GMT" },'
        b'\r\n{ "name":"b.txt", "type":"file", "mtime":"Thu, 01 Jan 1970 00:00:00 GMT", '
        b'"size":12345 }\r\n]'
    )
    assert autoindex.json([]) == b"[\r\n]"
    assert autoindex.json(entries, "cb").startswith(b"/* callback */\r\ncb([")
    xml = autoindex.xml(entries)
    assert b'<directory mtime="1970-01-02T00:00:00Z">a dir</directory>' in xml
    assert b'<file mtime="1970-01-01T00:00:00Z" size="12345">b.txt</file>' in xml
    assert autoindex.jsonp_callback("callback=a.b_1") == "a.b_1"
    assert autoindex.jsonp_callback("x=1") == ""
    assert autoindex.jsonp_callback("callback=a(b)") is None
    assert autoindex.jsonp_callback("callback=" + "a" * 129) is None


# -- charset -------------------------------------------------------------------------------------
def charset_settings(**kw: object) -> LocationSettings:
    return dataclasses.replace(
        S,
        charset=compile_template(str(kw.pop("charset", "utf-8"))),
        charset_maps={("b", "a"): bytes(range(0x58)) + b"Y" + bytes(range(0x59, 256))},
        **kw,  # type: ignore[arg-type]
    )


def test_charset_adds_and_converts() -> None:
    logs: list[str] = []
    log = lambda level, msg: logs.append(msg)  # noqa: E731
    s = charset_settings()
    assert apply_charset(s, "text/html", lookup, log) == ("text/html; charset=utf-8", None)
    assert apply_charset(s, "text/foo", lookup, log) == ("text/foo", None)
    assert apply_charset(s, "text/html; charset=koi8-r", lookup, log)[0].endswith("koi8-r")
    assert apply_charset(S, "text/html", lookup, log) == ("text/html", None)
    recoding = charset_settings(charset="A", source_charset="B")
    ctype, table = apply_charset(recoding, "text/html", lookup, log)
    assert ctype == "text/html; charset=A" and table is not None
    assert b"XaX".translate(table) == b"YaY"
    missing = charset_settings(charset="A", source_charset="C")
    assert apply_charset(missing, "text/html", lookup, log) == ("text/html", None)
    assert logs == ['no "charset_map" between the charsets "C" and "A"']
    anything = charset_settings(charset_types=("*",))
    assert apply_charset(anything, "x/y", lookup, log)[0] == "x/y; charset=utf-8"


def test_charset_on_proxied_fields() -> None:
    s = charset_settings(charset="B", override_charset=True)
    s = dataclasses.replace(s, charset_maps={("a", "b"): bytes(range(256))})
    fields = [("Content-Type", "text/html; charset=A"), ("X", "1")]
    out, table = proxied_charset(s, fields, lookup, lambda *a: None)
    assert out[0] == ("Content-Type", "text/html; charset=B") and table is not None
    assert split_charset('text/html; charset="A"') == ("text/html", "A")


def test_charset_on_nginx_pages() -> None:
    page = b"HTTP/1.1 404 Not Found\r\nServer: x\r\nContent-Type: text/html\r\n\r\n<html>"
    got = charset_page(charset_settings(), 404, page, lookup, lambda *a: None)
    assert b"\r\nContent-Type: text/html; charset=utf-8\r\n" in got
    assert charset_page(S, 404, page, lookup, lambda *a: None) is page
    # nginx sets no charset on a 301 or 302 ("because NN 4.x use this charset ...").
    assert charset_page(charset_settings(), 302, page, lookup, lambda *a: None) == page
    assert b"charset" in charset_page(charset_settings(), 307, page, lookup, lambda *a: None)
