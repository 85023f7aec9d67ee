"""Request parser: bytes in, events out; every limit at and over; nginx's statuses for bad input."""

from __future__ import annotations

import pytest

from wsgate.errors import HttpError
from wsgate.http.body import Body, EndOfMessage
from wsgate.http.request import (
    HeadLimits,
    IncompleteRequest,
    RequestHead,
    RequestParser,
    normalize_host,
)


def parse(data: bytes, limits: HeadLimits | None = None) -> list[object]:
    return list(RequestParser(limits).feed(data))


def head_of(data: bytes) -> RequestHead:
    ev = parse(data)
    assert isinstance(ev[0], RequestHead)
    return ev[0]


def error_of(data: bytes, limits: HeadLimits | None = None) -> HttpError:
    with pytest.raises(HttpError) as info:
        RequestParser(limits).feed(data)
    return info.value


def body_of(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Body))


def test_simple_get() -> None:
    ev = parse(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: x\r\n\r\n")
    assert len(ev) == 2 and isinstance(ev[1], EndOfMessage)
    h = ev[0]
    assert isinstance(h, RequestHead)
    assert (h.method, h.target, h.version) == ("GET", "/a?b=1", "1.1")
    assert h.headers == [("Host", "example.com"), ("User-Agent", "x")]
    assert h.keep_alive and h.host == "example.com"
    assert h.content_length is None and not h.chunked and h.upgrade is None
    assert h.request_line == "GET /a?b=1 HTTP/1.1"
    assert h.head_size == len(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: x\r\n\r\n")
    assert h.header("user-agent") == "x" and h.header("nope") is None


def test_headers_keep_case_order_duplicates_and_latin1() -> None:
    h = head_of(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\nX-B:  sp \t\r\nX-C: \xe9\r\n\r\n"
    )
    assert h.headers == [("Host", "a"), ("X-A", "1"), ("x-a", "2"), ("X-B", "sp"), ("X-C", "\xe9")]


def test_invalid_header_names_are_dropped() -> None:
    h = head_of(b"GET / HTTP/1.1\r\nHost: a\r\nX_Y: 1\r\nX.Z: 2\r\nOk-1: 3\r\n\r\n")
    assert h.headers == [("Host", "a"), ("Ok-1", "3")]
    assert h.ignored_headers == ["X_Y: 1", "X.Z: 2"]


def test_underscores_in_headers_on_keeps_underscore_names() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX_Y: 1\r\nX.Z: 2\r\n\r\n"
    h = head_of_limited(data, HeadLimits(underscores=True))
    assert h.headers == [("Host", "a"), ("X_Y", "1")]
    assert h.ignored_headers == ["X.Z: 2"]


def test_ignore_invalid_headers_off_keeps_every_name() -> None:
    """nginx: the line is kept and passed on, whatever the name holds but controls and
    spaces (those are still 400); its value is still checked."""
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX_Y: 1\r\nX.Z@(: 2\r\n\r\n"
    h = head_of_limited(data, HeadLimits(ignore_invalid=False))
    assert h.headers == [("Host", "a"), ("X_Y", "1"), ("X.Z@(", "2")]
    assert h.ignored_headers == []
    bad = b"GET / HTTP/1.1\r\nHost: a\r\nX_Y: 1\x01\r\n\r\n"
    with pytest.raises(HttpError) as info:
        RequestParser(HeadLimits(ignore_invalid=False)).feed(bad)
    assert info.value.status == 400
    with pytest.raises(HttpError):
        RequestParser(HeadLimits(ignore_invalid=False)).feed(
            b"GET / HTTP/1.1\r\nHost: a\r\nX Y: 1\r\n\r\n"
        )


def test_byte_at_a_time() -> None:
    data = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    p = RequestParser()
    events: list[object] = []
    for i in range(len(data)):
        events += p.feed(data[i : i + 1])
    assert isinstance(events[0], RequestHead)
    assert body_of(events) == b"hello"
    assert isinstance(events[-1], EndOfMessage) and p.paused


def test_bare_lf_and_multiple_spaces_and_leading_empty_lines() -> None:
    h = head_of(b"\r\n\n\r\nGET   /x   HTTP/1.1  \nHost: a\n\n")
    assert (h.method, h.target, h.version, h.host) == ("GET", "/x", "1.1", "a")


def test_http09() -> None:
    ev = parse(b"GET /x\r\n")
    h = ev[0]
    assert isinstance(h, RequestHead)
    assert h.version == "0.9" and h.headers == [] and not h.keep_alive
    assert isinstance(ev[1], EndOfMessage)
    assert error_of(b"POST /x\r\n").log == "client sent invalid method in HTTP/0.9 request"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com:8080", "example.com"),
        ("example.com.", "example.com"),
        ("example.com.:80", "example.com"),
        ("[::1]:80", "[::1]"),
        ("1.2.3.4", "1.2.3.4"),
        ("", None),
        (".", None),
        ("a..b", None),
        ("a/b", None),
        ("a\\b", None),
        ("a b", None),
        ("a\x7fb", None),
        (":80", None),
        # nginx 1.29.4+ (http_host.t): the port is checked, the literal must close and end
        ("a:65535", "a"),
        ("a:65536", None),
        ("123.40.56.78:9000:80", None),
        ("example.com.:1.2", None),
        ("[abcd::1].", None),
        ("[abcd::1].:98", None),
        ("[abcd::1]x", None),
        ("extra[abcd::1]:98", None),
        ("[abcd::1", None),
        ("[v1.!$&'()*+,;=-._~az09:]", "[v1.!$&'()*+,;=-._~az09:]"),
        ("a%20b_c~d", "a%20b_c~d"),
        ("caf\xe9.example", None),
        ("a@b", None),
    ],
)
def test_normalize_host(raw: str, expected: str | None) -> None:
    assert normalize_host(raw) == expected


def test_absolute_form_overrides_host() -> None:
    h = head_of(b"GET http://Other.Org:81/p HTTP/1.1\r\nHost: a\r\n\r\n")
    assert h.host == "other.org" and h.target == "http://Other.Org:81/p"
    assert error_of(b"GET http:///p HTTP/1.1\r\nHost: a\r\n\r\n").log == (
        "client sent invalid host in request line"
    )
    assert error_of(b"GET http://a@b/ HTTP/1.1\r\nHost: a\r\n\r\n").status == 400
    assert error_of(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n").status == 400


@pytest.mark.parametrize(
    ("version", "connection", "expected"),
    [
        ("1.1", None, True),
        ("1.1", "close", False),
        ("1.1", "Keep-Alive, CLOSE", False),
        ("1.1", "upgrade", True),
        ("1.0", None, False),
        ("1.0", "keep-alive", True),
        ("1.0", "Keep-Alive", True),
        ("1.0", "foo", False),
    ],
)
def test_keep_alive(version: str, connection: str | None, expected: bool) -> None:
    conn = f"Connection: {connection}\r\n" if connection else ""
    h = head_of(f"GET / HTTP/{version}\r\nHost: a\r\n{conn}\r\n".encode())
    assert h.keep_alive is expected


def test_http10_without_host_is_fine() -> None:
    h = head_of(b"GET / HTTP/1.0\r\n\r\n")
    assert h.host is None and h.version == "1.0"


def test_expect_continue() -> None:
    assert head_of(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n").expect_continue
    assert not head_of(
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continuex\r\n\r\n"
    ).expect_continue
    assert not head_of(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue


# --- bodies ----------------------------------------------------------------------------------

CHUNKED = (
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"
    b"5\r\nhello\r\n3;ext=1\r\n, w\r\nA \r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n"
)
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


def test_chunked_body() -> None:
    ev = parse(CHUNKED)
    assert isinstance(ev[0], RequestHead) and ev[0].chunked
    assert body_of(ev) == b"hello, w0123456789"
    assert isinstance(ev[-1], EndOfMessage)


def test_chunked_split_at_every_offset() -> None:
    data = CHUNKED + NEXT
    for i in range(len(data) + 1):
        p = RequestParser()
        events = p.feed(data[:i]) + p.feed(data[i:])
        assert body_of(events) == b"hello, w0123456789", i
        assert sum(isinstance(e, EndOfMessage) for e in events) == 1, i
        assert p.paused and p.buffered == len(NEXT)
        nxt = p.next_request()
        assert isinstance(nxt[0], RequestHead) and nxt[0].target == "/next"


@pytest.mark.parametrize(
    "chunks",
    [
        b"x\r\n",
        b"5\r\nhelloXX",
        b"5\r\nhello\rX",
        b"\r\n",
        b"5x\r\n",
        b"5\rx\n",
        b"0\r\nA\rB\r\n",
        # Rejected at the first bad byte, with no line end to wait for (issue 14).
        b"5\r\nhello\r\n0\r\n\r\x08",
        b"5\r\x08",
        b"5x",
        b"0\r\nT: 1\r\x08",
        # No bare LF since nginx 1.29.4 ("Disabled bare LF in chunked transfer encoding").
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5;x\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\n\r\n",
        b"5\r\nhello\r\n0\r\n\n",
        b"5\r\nhello\r\n0\r\nT: 1\n\r\n",
    ],
)
def test_chunked_invalid(chunks: bytes) -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    # The body after its head: the error is raised by the bytes that hold the bad one.
    p = RequestParser()
    assert isinstance(p.feed(head)[0], RequestHead)
    with pytest.raises(HttpError) as info:
        p.feed(chunks)
    assert (info.value.status, info.value.log) == (400, "client sent invalid chunked body")
    # In the same bytes as its head: the head (and the good part of the body) comes first,
    # the error from ``check()``, before the caller waits for more, and from any ``feed()``.
    for call in ("check", "feed"):
        p = RequestParser()
        events = p.feed(head + chunks)
        assert isinstance(events[0], RequestHead)
        assert not any(isinstance(e, EndOfMessage) for e in events)
        with pytest.raises(HttpError) as info:
            p.check() if call == "check" else p.feed(b"more")
        assert (info.value.status, info.value.log) == (400, "client sent invalid chunked body")
    p.check()  # raised once


def test_content_length_body_split_and_pipelining() -> None:
    data = b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcd" + NEXT + NEXT
    for i in range(len(data) + 1):
        p = RequestParser()
        events = p.feed(data[:i]) + p.feed(data[i:])
        assert body_of(events) == b"abcd"
        assert isinstance(events[-1], EndOfMessage) and p.paused
        assert p.feed(b"") == [] and p.buffered == 2 * len(NEXT)
        second = p.next_request()
        assert [type(e) for e in second] == [RequestHead, EndOfMessage]
        assert p.paused and p.buffered == len(NEXT)
        third = p.next_request()
        assert isinstance(third[0], RequestHead) and p.buffered == 0


def test_bytes_fed_while_paused_are_kept_not_parsed() -> None:
    p = RequestParser()
    assert [type(e) for e in p.feed(NEXT)] == [RequestHead, EndOfMessage]
    assert p.feed(b"garbage that is not HTTP\r\n\r\n") == []
    assert p.buffered > 0
    with pytest.raises(HttpError):
        p.next_request()


def test_content_length_zero() -> None:
    ev = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert [type(e) for e in ev] == [RequestHead, EndOfMessage]


def test_upgrade_stops_after_head_and_keeps_bytes() -> None:
    req = (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    p = RequestParser()
    ev = p.feed(req + frame)
    assert [type(e) for e in ev] == [RequestHead, EndOfMessage]
    head = ev[0]
    assert isinstance(head, RequestHead) and head.upgrade == "websocket"
    assert p.paused
    assert p.take_buffered() == frame
    with pytest.raises(RuntimeError):
        p.feed(b"more")


def test_upgrade_then_non_101_continues_as_http() -> None:
    req = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    p = RequestParser()
    assert [type(e) for e in p.feed(req + NEXT)] == [RequestHead, EndOfMessage]
    nxt = p.next_request()
    assert isinstance(nxt[0], RequestHead) and nxt[0].target == "/next"


def test_upgrade_with_body_reads_body_first() -> None:
    req = (
        b"POST /u HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: upgrade\r\n"
        b"Content-Length: 2\r\n\r\n"
    )
    p = RequestParser()
    ev = p.feed(req + b"hiTUNNEL")
    assert body_of(ev) == b"hi" and isinstance(ev[-1], EndOfMessage)
    assert p.take_buffered() == b"TUNNEL"


def test_upgrade_without_connection_header_still_reported() -> None:
    h = head_of(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
    assert h.upgrade == "websocket"


def test_api_misuse() -> None:
    p = RequestParser()
    with pytest.raises(RuntimeError):
        p.next_request()
    with pytest.raises(RuntimeError):
        p.take_buffered()


# --- EOF --------------------------------------------------------------------------------------


def test_eof_between_requests_is_clean() -> None:
    p = RequestParser()
    assert p.feed_eof() == []
    p = RequestParser()
    p.feed(b"\r\n")
    assert not p.request_started
    assert p.feed_eof() == []


def test_eof_inside_head() -> None:
    p = RequestParser()
    p.feed(b"GET / HT")
    assert p.request_started
    with pytest.raises(IncompleteRequest) as info:
        p.feed_eof()
    assert info.value.status == 400
    assert info.value.log.endswith("while reading client request line")
    p = RequestParser()
    p.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
    with pytest.raises(IncompleteRequest) as info:
        p.feed_eof()
    assert info.value.log.endswith("while reading client request headers")


def test_eof_inside_body() -> None:
    p = RequestParser()
    p.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc")
    with pytest.raises(IncompleteRequest):
        p.feed_eof()


def test_eof_while_paused_with_partial_next_request() -> None:
    p = RequestParser()
    p.feed(NEXT + b"GET /partial")
    assert p.feed_eof() == []
    with pytest.raises(IncompleteRequest):
        p.next_request()


# --- limits -----------------------------------------------------------------------------------


def request_line_of(total: int) -> bytes:
    """A request line of exactly ``total`` bytes including CRLF."""
    return b"GET /" + b"a" * (total - 16) + b" HTTP/1.1\r\n"


def test_request_line_at_limit_passes_and_over_is_414() -> None:
    line = request_line_of(8192)
    assert len(line) == 8192
    assert head_of(line + b"Host: a\r\n\r\n").target.startswith("/aaa")
    err = error_of(request_line_of(8193) + b"Host: a\r\n\r\n")
    assert (err.status, err.log) == (414, "client sent too long URI")


def test_request_line_too_long_detected_before_line_end() -> None:
    p = RequestParser()
    assert p.feed(request_line_of(8192)[:8191]) == []
    with pytest.raises(HttpError) as info:
        p.feed(b"x")  # 8192 bytes and still no LF: the line will be longer than 8192
    assert info.value.status == 414


def test_header_line_at_limit_passes_and_over_is_494() -> None:
    def line(total: int) -> bytes:
        return b"X: " + b"v" * (total - 5) + b"\r\n"

    assert len(line(8192)) == 8192
    h = head_of(b"GET / HTTP/1.1\r\nHost: a\r\n" + line(8192) + b"\r\n")
    assert len(h.headers) == 2
    err = error_of(b"GET / HTTP/1.1\r\nHost: a\r\n" + line(8193) + b"\r\n")
    assert err.status == 494 and err.log.startswith('client sent too long header line: "X: vvv')


def head_of_size(total: int) -> bytes:
    """A valid head of exactly ``total`` bytes, header lines well under 8k."""
    out = b"GET / HTTP/1.1\r\nHost: a\r\n"
    while total - len(out) - 2 > 8000:
        out += b"X: " + b"v" * 7995 + b"\r\n"
    rest = total - len(out) - 2
    assert rest >= 5
    out += b"Y: " + b"v" * (rest - 5) + b"\r\n\r\n"
    assert len(out) == total
    return out


def test_whole_head_at_limit_passes_and_over_is_494() -> None:
    h = head_of(head_of_size(4 * 8192))
    assert h.head_size == 32768
    err = error_of(head_of_size(4 * 8192 + 1))
    assert (err.status, err.log) == (494, "client sent too large request")


def test_custom_limits() -> None:
    lim = HeadLimits(header_buffer_size=16, large_buffers=4, large_buffer_size=32)
    assert lim.max_line == 32 and lim.max_head == 128
    start = b"GET / HTTP/1.1\r\nHost: a\r\n"
    assert head_of_limited(start + b"X: " + b"v" * 27 + b"\r\n\r\n", lim)
    assert error_of(start + b"X: " + b"v" * 28 + b"\r\n\r\n", lim).status == 494
    assert error_of(b"GET /" + b"a" * 17 + b" HTTP/1.1\r\n", lim).status == 414
    big = start + (b"X: " + b"v" * 27 + b"\r\n") * 3
    assert head_of_limited(big + b"\r\n", HeadLimits(16, 4, 32)).head_size == 123
    assert error_of(big + b"Y: 1234\r\n\r\n", lim).log == "client sent too large request"


def test_max_headers_at_limit_passes_and_over_is_494() -> None:
    """nginx's ``max_headers``: header lines ignored as invalid (``X_Y``) do not count."""
    lim = HeadLimits(max_headers=3)
    start = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nX_Y: 1\r\nB: 2\r\n"
    assert len(head_of_limited(start + b"\r\n", lim).headers) == 3
    err = error_of(start + b"C: 3\r\n\r\n", lim)
    assert (err.status, err.log) == (494, "client sent too many header lines")
    many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 999
    assert len(head_of(many + b"\r\n").headers) == 1000
    assert error_of(many + b"X: 1\r\n\r\n").status == 494


def head_of_limited(data: bytes, lim: HeadLimits) -> RequestHead:
    ev = RequestParser(lim).feed(data)
    assert isinstance(ev[0], RequestHead)
    return ev[0]


# --- bad input --------------------------------------------------------------------------------

BAD = [
    # (request, status, log prefix)
    (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid method"),
    (b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid method"),
    (b"GE:T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid method"),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "client sent invalid version"),
    (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505, "client sent invalid version"),
    (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET / HTTP/1.1000\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET / HTTP/11\r\nHost: a\r\n\r\n", 505, "client sent invalid version"),
    (b"GET / HTTP/10.0\r\nHost: a\r\n\r\n", 505, "client sent invalid version"),
    (b"GET / HTTP/2\r\nHost: a\r\n\r\n", 505, "client sent invalid version"),
    (b"GET / HTTP/01.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET / HTTP/1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET / HTTP/1.\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET 1/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET http:/x HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET http://a b/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET http://a@b/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET /\rx HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, 'client sent HTTP/1.1 request without "Host" header'),
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400, "client sent invalid host header"),
    (b"GET / HTTP/1.1\r\nHost: a..b\r\n\r\n", 400, "client sent invalid host header"),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "client sent invalid host header"),
    (b"GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n", 400, "client sent invalid host header"),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "client sent invalid host header"),
    (b"GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n", 400, "client sent invalid header line"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "client sent duplicate host header"),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "client sent invalid header line"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400, "client sent invalid header line"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n", 400, "client sent invalid header"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400, "client sent invalid header line"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", 400, "client sent invalid header line"),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        'client sent "Content-Length" and "Transfer-Encoding" headers at the same time',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
        400,
        'client sent "Content-Length" and "Transfer-Encoding" headers at the same time',
    ),
    (
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        'client sent HTTP/1.0 request with "Transfer-Encoding" header',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        400,
        'client sent duplicate header line: "Content-Length: 1", previous value: '
        '"Content-Length: 1"',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        400,
        "client sent duplicate header line",
    ),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n", 400, "client sent invalid "),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, "client sent invalid "),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400, "client sent invalid "),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        400,
        'client sent invalid "Content-Length" header',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
        'client sent unknown "Transfer-Encoding": "gzip"',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        501,
        "client sent unknown",
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
        "client sent unknown",
    ),
    # nginx 1.29.3+: a CONNECT target is host:port only (http_method.t "connect uri")
    (b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"CONNECT localhost HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"CONNECT localhost: HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"CONNECT a:8/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"CONNECT a_b:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"CONNECT :80 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid host in request"),
    (b"CONNECT localhost:8080 HTTP/1.1\r\nHost: a\r\n\r\n", 405, "client sent CONNECT method"),
    (b"CONNECT [::1]:443 HTTP/1.0\r\nHost: a\r\n\r\n", 405, "client sent CONNECT method"),
    (b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", 405, "client sent TRACE method"),
    # nginx's unique request fields (http_headers_multi.t "duplicate ... rejected")
    (
        b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: x\r\nauthorization:y\r\n\r\n",
        400,
        'client sent duplicate header line: "authorization:y", previous value: "Authorization: x"',
    ),
    *(
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n" + f"{n}: 1\r\n{n}: 2\r\n\r\n".encode(),
            400,
            f'client sent duplicate header line: "{n}: 2", previous value: "{n}: 1"',
        )
        for n in (
            "If-Modified-Since",
            "If-Unmodified-Since",
            "If-Match",
            "If-None-Match",
            "Content-Range",
            "If-Range",
            "Expect",
            "Proxy-Authorization",
        )
    ),
]


@pytest.mark.parametrize(("data", "status", "log"), BAD)
def test_bad_input(data: bytes, status: int, log: str) -> None:
    err = error_of(data)
    assert err.status == status
    assert err.log.startswith(log), err.log


@pytest.mark.parametrize(
    ("data", "status", "log"),
    [b for b in BAD if b[2].startswith(("client sent invalid method", "client sent invalid re"))]
    + [b for b in BAD if b[2] == "client sent invalid version"],
)
def test_bad_request_line_is_refused_before_its_end(data: bytes, status: int, log: str) -> None:
    """nginx parses the request line byte by byte: a line that is already wrong is refused
    with its status at once, not after ``client_header_timeout`` waiting for its LF."""
    line = data[: data.index(b"\r\n")]
    cut_short = line.endswith((b"/1", b"/1."))  # could still become "HTTP/1.1"
    for partial in [line + b"\r"] + ([] if cut_short else [line]):
        err = error_of(partial)
        assert (err.status, err.log.startswith(log)) == (status, True), err.log


VALID_LINES = [
    b"GET / HTTP/1.1\r",
    b"GET /a?b=c#d HTTP/1.0   \r",
    b"POST  /x   HTTP/1.1",
    b"GET http://example.com:8080/p?q HTTP/1.1\r",
    b"GET https://[::1]/ HTTP/1.1",
    b"GET http://a.b HTTP/1.100",
    b"GET /0.9",
    b"FOO_BAR /%41 HTTP/1.1\r",
    b"CONNECT example.com:443 HTTP/1.1\r",
    b"CONNECT [::1]:443 HTTP/1.1",
]


@pytest.mark.parametrize("line", VALID_LINES)
def test_every_beginning_of_a_valid_request_line_waits(line: bytes) -> None:
    for end in range(len(line) + 1):
        assert RequestParser().feed(line[:end]) == [], line[:end]


def test_minor_version_up_to_three_digits() -> None:
    """nginx's ``sw_minor_digit`` refuses a digit only once the minor version is over 99."""
    assert head_of(b"GET / HTTP/1.100\r\nHost: a\r\n\r\n").version == "1.100"


def test_parser_is_dead_after_error() -> None:
    p = RequestParser()
    with pytest.raises(HttpError):
        p.feed(b"get / HTTP/1.1\r\n")
    with pytest.raises(RuntimeError):
        p.feed(b"x")


def test_repeated_fields_that_need_not_be_unique_are_kept() -> None:
    h = head_of(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Type: a\r\nContent-Type: b\r\n\r\n")
    assert [v for k, v in h.headers if k == "Content-Type"] == ["a", "b"]


def test_unknown_uppercase_method_is_accepted() -> None:
    h = head_of(b"FOO_BAR / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert h.method == "FOO_BAR"


def test_http_1_x_minor_versions() -> None:
    h = head_of(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n")
    assert h.version == "1.2" and h.keep_alive
