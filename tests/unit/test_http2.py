"""HTTP/2 without sockets: a stream's header list as a request head (nginx's checks), a
response head as HEADERS, and the ``http2_*`` directives as nginx 1.31 reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.model import Config
from wsgate.config.modules import configure_arguments
from wsgate.errors import ConfigError
from wsgate.http.http2 import H2Refused, request_head, response_fields

BASE = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"Example.org:8443"),
    (b":path", b"/a?b=1"),
]


def refused(fields: list[tuple[bytes, bytes]], end: bool = True, **kw: object) -> H2Refused:
    with pytest.raises(H2Refused) as info:
        request_head(fields, end, **kw)  # type: ignore[arg-type]
    return info.value


def test_head_from_pseudo_headers_and_fields() -> None:
    head = request_head([*BASE, (b"cookie", b"a=1"), (b"x-y", b"z"), (b"cookie", b"b=2")], True)
    assert (head.method, head.target, head.host) == ("GET", "/a?b=1", "example.org")
    assert head.request_line == "GET /a?b=1 HTTP/2.0"
    # :authority becomes Host for $http_host; the cookie crumbs are joined with "; ".
    assert head.headers == [("host", "Example.org:8443"), ("x-y", "z"), ("cookie", "a=1; b=2")]
    assert head.version == "1.1" and head.keep_alive and head.upgrade is None
    assert not head.chunked and head.content_length is None


def test_body_framing() -> None:
    # No Content-Length and the stream is open: read as chunked (r->headers_in.chunked = 1).
    assert request_head(BASE, False).chunked
    head = request_head([*BASE, (b"content-length", b"5")], False)
    assert head.content_length == 5 and not head.chunked
    assert refused([*BASE, (b"content-length", b"5")], True).log == (
        "client prematurely closed stream"
    )
    assert refused([*BASE, (b"content-length", b"x")], False).log == (
        'client sent invalid "Content-Length" header'
    )


@pytest.mark.parametrize(
    ("name", "words"),
    [
        (b"upgrade", 'client sent "Upgrade" header'),
        (b"connection", 'client sent "Connection" header'),
        (b"keep-alive", 'client sent "Keep-Alive" header'),
        (b"transfer-encoding", 'client sent "Transfer-Encoding" header'),
    ],
)
def test_connection_specific_fields_are_400(name: bytes, words: str) -> None:
    exc = refused([*BASE, (name, b"x")])
    assert (exc.status, exc.log) == (400, words)
    assert exc.head.request_line == "GET /a?b=1 HTTP/2.0"  # for the error page and the log


def test_te_only_trailers() -> None:
    request_head([*BASE, (b"te", b"trailers")], True)
    assert refused([*BASE, (b"te", b"gzip")]).log == 'client sent invalid "TE" header'


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        (BASE[1:], 400, "client sent no :method header"),
        ([BASE[0], *BASE[2:]], 400, "client sent no :scheme header"),
        (BASE[:3], 400, "client sent no :path header"),
        ([(b":method", b"foo"), *BASE[1:]], 400, 'client sent invalid method: "foo"'),
        ([*BASE, (b":path", b"/")], 400, "client sent duplicate :path header"),
        ([*BASE, (b":protocol", b"websocket")], 400, 'unknown pseudo-header ":protocol"'),
        ([BASE[0], (b"x", b"y"), *BASE[1:]], 400, "after regular header"),
        ([*BASE[:3], (b":path", b"/t\x02")], 400, 'client sent invalid :path header: "/t'),
        ([*BASE[:3], (b":path", b"t1.html")], 400, "client sent invalid :path header"),
        ([*BASE, (b"X-Upper", b"y")], 400, 'client sent invalid header name: "X-Upper"'),
        ([*BASE, (b"x", b"a\nb")], 400, "with invalid value"),
        (BASE[:2] + BASE[3:], 400, 'client sent neither ":authority" nor "Host" header'),
        ([*BASE, (b"host", b"other")], 400, '":authority" and "Host" headers with different'),
        ([(b":method", b"TRACE"), *BASE[1:]], 405, "client sent TRACE method"),
        ([(b":method", b"CONNECT"), *BASE[1:]], 405, "client sent CONNECT method"),
    ],
)
def test_bad_requests(fields: list[tuple[bytes, bytes]], status: int, words: str) -> None:
    exc = refused(fields)
    assert exc.status == status and words in exc.log


def test_host_field_without_authority() -> None:
    head = request_head([BASE[0], BASE[1], BASE[3], (b"host", b"h.example")], True)
    assert head.host == "h.example"


def test_invalid_names_ignored_or_kept() -> None:
    head = request_head([*BASE, (b"x_y", b"1"), (b"x.y", b"2")], True)
    assert head.ignored_headers == ["x_y", "x.y"] and len(head.headers) == 1
    head = request_head([*BASE, (b"x_y", b"1")], True, underscores=True)
    assert ("x_y", "1") in head.headers
    head = request_head([*BASE, (b"x.y", b"2")], True, ignore_invalid=False)
    assert ("x.y", "2") in head.headers


def test_max_headers_at_and_over() -> None:
    # The Host made from :authority is not counted (ngx_http_v2_construct_host_header).
    five = [(f"x-{i}".encode(), b"v") for i in range(5)]
    assert len(request_head([*BASE, *five], True, max_headers=5).headers) == 6
    exc = refused([*BASE, *five, (b"x-5", b"v")], max_headers=5)
    assert (exc.status, exc.log) == (494, "client sent too many header lines")


def test_request_length_is_the_header_block() -> None:
    assert request_head(BASE, True, block_size=18).head_size == 18


def test_response_fields_drop_connection_specific_ones() -> None:
    fields = response_fields(
        200,
        [
            ("Server", "wsgate"),
            ("Connection", "keep-alive"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "3"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ],
    )
    assert fields == [
        (b":status", b"200"),
        (b"server", b"wsgate"),
        (b"content-length", b"3"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]


# -- the directives -----------------------------------------------------------------------------
def conf(tmp_path: Path, text: str) -> Config:
    (tmp_path / "nginx.conf").write_text(f"events {{}} http {{ {text} }}")
    return load("nginx.conf", prefix=str(tmp_path))


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        conf(tmp_path, text)
    return str(info.value)


def test_directives_and_defaults(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "http2_recv_buffer_size 128k; http2_chunk_size 4k;"
        " server { listen 80; http2 on; http2_max_concurrent_streams 10;"
        " http2_body_preread_size 1m; location / { http2_chunk_size 1m; } }"
        " server { listen 81; }",
    )
    on, off = config.http.servers
    assert (on.http2, on.http2_max_concurrent_streams, on.http2_body_preread_size) == (
        True,
        10,
        1 << 20,
    )
    assert on.http2_recv_buffer_size == 128 * 1024 and on.settings.http2_chunk_size == 4096
    assert on.locations[0].settings.http2_chunk_size == 1 << 20
    assert (off.http2, off.http2_max_concurrent_streams, off.http2_body_preread_size) == (
        False,
        128,
        65536,
    )
    assert off.settings.http2_chunk_size == 4096  # the http level's
    assert conf(tmp_path, "server { listen 80; }").http.servers[0].settings.http2_chunk_size == (
        8192
    )
    # More than NGX_HTTP_V2_MAX_FRAME_SIZE is cut to it.
    big = conf(tmp_path, "http2_chunk_size 32m; server { listen 80; }")
    assert big.http.servers[0].settings.http2_chunk_size == (1 << 24) - 1


def test_listen_http2_is_deprecated_but_accepted(tmp_path: Path) -> None:
    config = conf(tmp_path, "server { listen 80 http2; listen 81; }")
    first, second = config.http.servers[0].listens
    assert first.http2 and not second.http2 and not config.http.servers[0].http2
    assert any(
        w.startswith('the "listen ... http2" directive is deprecated, use the "http2" directive')
        for w in config.warnings
    ), config.warnings


@pytest.mark.parametrize(
    ("name", "instead"),
    [
        ("http2_idle_timeout", "keepalive_timeout"),
        ("http2_recv_timeout", "client_header_timeout"),
        ("http2_max_field_size", "large_client_header_buffers"),
        ("http2_max_header_size", "large_client_header_buffers"),
        ("http2_max_requests", "keepalive_requests"),
    ],
)
def test_obsolete_directives_warn_as_nginx(tmp_path: Path, name: str, instead: str) -> None:
    config = conf(tmp_path, f"{name} 10; server {{ listen 80; }}")
    assert any(
        w.startswith(
            f'the "{name}" directive is obsolete, use the "{instead}" directive instead in '
        )
        for w in config.warnings
    ), config.warnings


def test_push_directives_are_obsolete_and_ignored(tmp_path: Path) -> None:
    config = conf(tmp_path, "server { listen 80; location / { http2_push_preload on; } }")
    assert any(
        w.startswith('the "http2_push_preload" directive is obsolete, ignored in ')
        for w in config.warnings
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("http2_chunk_size 0;", "the http2 chunk size cannot be zero"),
        ("http2_body_preread_size 2g;", "the maximum body preread buffer size is 2147483647"),
        ("http2_recv_buffer_size 16;", '"http2_recv_buffer_size" directive value is too small'),
        ("http2_streams_index_size 3;", "must be a power of two"),
        ("http2_pool_size 100;", "the pool size must be a multiple of 16"),
        ("http2 maybe;", 'invalid value "maybe" in "http2" directive'),
        ("server { http2_recv_buffer_size 1m; }", "is not allowed here"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, words: str) -> None:
    assert words in error(tmp_path, text)


def test_v2_module_is_reported_built() -> None:
    assert "--with-http_v2_module" in configure_arguments()


@pytest.mark.parametrize(
    ("name", "words"),
    [
        (b"host", 'client sent duplicate host header: "host: b", previous value: "host: a"'),
        (b"authorization", 'duplicate header line: "authorization: b", previous value:'),
        (b"content-length", 'duplicate header line: "content-length: b"'),
    ],
)
def test_unique_fields_repeated_are_400(name: bytes, words: str) -> None:
    """h2_host.t "host repeat": nginx's headers_in handlers refuse a second Host (and the
    other fields read once) on a stream as on HTTP/1.1."""
    exc = refused([*BASE, (name, b"a"), (name, b"b")])
    assert exc.status == 400 and words in str(exc)


def test_fields_that_may_repeat_are_kept() -> None:
    head = request_head([*BASE, (b"x-a", b"1"), (b"x-a", b"1"), (b"accept", b"a")], True)
    assert [v for k, v in head.headers if k == "x-a"] == ["1", "1"]
