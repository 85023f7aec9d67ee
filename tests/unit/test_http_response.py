"""Upstream response parser: framing, 101 handling, limits and nginx's 502 messages."""

from __future__ import annotations

import pytest

from wsgate.errors import HttpError
from wsgate.http.body import Body, EndOfMessage
from wsgate.http.response import (
    InvalidHeader,
    ResponseHead,
    ResponseParser,
    UpstreamPrematureClose,
)


def body_of(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Body))


def types(events: list[object]) -> list[type]:
    return [type(e) for e in events]


def test_content_length_response() -> None:
    p = ResponseParser(head_request=False)
    ev = p.feed(b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello")
    head = ev[0]
    assert isinstance(head, ResponseHead)
    assert (head.status, head.reason, head.version) == (200, "Fine Thanks", "1.1")
    assert head.headers == [("Content-Length", "5"), ("X-A", "1")]
    assert head.content_length == 5 and not head.chunked and head.keep_alive
    assert head.header("x-a") == "1"
    assert body_of(ev) == b"hello" and isinstance(ev[-1], EndOfMessage) and p.done


def test_split_at_every_offset_content_length() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    for i in range(len(data) + 1):
        p = ResponseParser(False)
        ev = p.feed(data[:i]) + p.feed(data[i:])
        assert types(ev)[0] is ResponseHead and body_of(ev) == b"hello"
        assert isinstance(ev[-1], EndOfMessage) and p.buffered == 0


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\nWiki\r\n5;x=y\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: 1\r\n\r\n"
)


def test_chunked_split_at_every_offset() -> None:
    for i in range(len(CHUNKED) + 1):
        p = ResponseParser(False)
        ev = p.feed(CHUNKED[:i]) + p.feed(CHUNKED[i:])
        head = ev[0]
        assert isinstance(head, ResponseHead) and head.chunked
        assert body_of(ev) == b"Wikipedia in\r\n\r\nchunks.", i
        assert sum(isinstance(e, EndOfMessage) for e in ev) == 1


def test_chunked_byte_at_a_time_with_trailing_bytes() -> None:
    p = ResponseParser(False)
    ev: list[object] = []
    for i in range(len(CHUNKED)):
        ev += p.feed(CHUNKED[i : i + 1])
    assert body_of(ev) == b"Wikipedia in\r\n\r\nchunks." and p.done
    assert p.feed(b"extra") == [] and p.buffered == 5
    assert p.take_buffered() == b"extra"


@pytest.mark.parametrize("then", ["check", "feed", "feed_eof"])
def test_invalid_chunked(then: str) -> None:
    """A body bad in the bytes of its head: the head comes first (nginx sends it before it
    reads the body), the error from ``check()`` or whatever is called next."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    p = ResponseParser(False)
    (resp,) = p.feed(head + b"2\r\nab\r\nzz\r\n")[:1]
    assert isinstance(resp, ResponseHead) and resp.status == 200
    with pytest.raises(HttpError) as info:
        p.check() if then == "check" else p.feed(b"x") if then == "feed" else p.feed_eof()
    assert (info.value.status, info.value.log) == (502, "upstream sent invalid chunked response")
    p = ResponseParser(False)
    p.feed(head)
    with pytest.raises(HttpError):
        p.feed(b"zz\r\n")


def test_close_delimited() -> None:
    p = ResponseParser(False)
    ev = p.feed(b"HTTP/1.0 200 OK\r\n\r\nab")
    head = ev[0]
    assert isinstance(head, ResponseHead) and not head.keep_alive
    assert p.feed(b"cd") == [Body(b"cd")]
    assert p.feed_eof() == [EndOfMessage()]
    assert body_of(ev) == b"ab"


@pytest.mark.parametrize("status", [100, 103, 204, 304])
def test_no_body_statuses(status: int) -> None:
    p = ResponseParser(False)
    ev = p.feed(f"HTTP/1.1 {status} X\r\nContent-Length: 5\r\n\r\nNEXT".encode())
    assert types(ev) == [ResponseHead, EndOfMessage]
    assert p.take_buffered() == b"NEXT"


def test_head_request_has_no_body() -> None:
    p = ResponseParser(head_request=True)
    ev = p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n")
    assert types(ev) == [ResponseHead, EndOfMessage]
    assert isinstance(ev[0], ResponseHead) and ev[0].content_length == 500
    assert ev[0].keep_alive


def test_101_take_buffered_for_tunnel() -> None:
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
    early = b"\x81\x02hi"
    for i in range(len(head) + len(early) + 1):
        data = head + early
        p = ResponseParser(False)
        ev = p.feed(data[:i]) + p.feed(data[i:])
        assert types(ev) == [ResponseHead]
        assert isinstance(ev[0], ResponseHead) and ev[0].status == 101 and not ev[0].keep_alive
        assert p.take_buffered() == early
    with pytest.raises(RuntimeError):
        p.feed(b"x")


def test_101_without_upgrade_headers_stops_too() -> None:
    p = ResponseParser(False)
    ev = p.feed(b"HTTP/1.1 101 Switching\r\n\r\nrest")
    assert types(ev) == [ResponseHead]
    assert p.take_buffered() == b"rest"


@pytest.mark.parametrize(
    ("conn", "version", "keep"),
    [
        (None, "1.1", True),
        ("close", "1.1", False),
        ("Keep-Alive", "1.0", False),
        ("x", "1.1", True),
    ],
)
def test_keep_alive(conn: str | None, version: str, keep: bool) -> None:
    c = f"Connection: {conn}\r\n" if conn else ""
    ev = ResponseParser(False).feed(
        f"HTTP/{version} 200 OK\r\n{c}Content-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(ev[0], ResponseHead) and ev[0].keep_alive is keep
    assert isinstance(ev[-1], EndOfMessage)


def test_bare_lf_and_empty_reason() -> None:
    ev = ResponseParser(False).feed(b"HTTP/1.1 404\nContent-Length: 0\n\n")
    assert isinstance(ev[0], ResponseHead) and ev[0].reason == "" and ev[0].status == 404


def test_max_head_at_limit_passes_and_over_fails() -> None:
    def head(total: int) -> bytes:
        start = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: "
        return start + b"v" * (total - len(start) - 4) + b"\r\n\r\n"

    assert len(head(4096)) == 4096
    ev = ResponseParser(False).feed(head(4096) + b"next")
    assert isinstance(ev[0], ResponseHead) and ev[0].head_size == 4096
    with pytest.raises(HttpError) as info:
        ResponseParser(False).feed(head(4097))
    assert (info.value.status, info.value.log) == (502, "upstream sent too big header")
    p = ResponseParser(False, max_head=100)
    with pytest.raises(HttpError):
        p.feed(b"HTTP/1.1 200 OK\r\nX: " + b"v" * 90)


def test_premature_close_in_head() -> None:
    for data in (b"", b"HTTP/1.1 200 OK\r\n"):
        p = ResponseParser(False)
        p.feed(data)
        with pytest.raises(HttpError) as info:
            p.feed_eof()
        assert info.value.status == 502
        assert not isinstance(info.value, UpstreamPrematureClose)
        assert info.value.log == (
            "upstream prematurely closed connection while reading response header from upstream"
        )


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ],
)
def test_premature_close_in_body(data: bytes) -> None:
    p = ResponseParser(False)
    p.feed(data)
    with pytest.raises(UpstreamPrematureClose) as info:
        p.feed_eof()
    assert info.value.log == "upstream prematurely closed connection while reading upstream"


BAD = [
    (b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", 'upstream sent invalid header: "Bad Header: x"'),
    (b"HTTP/1.1 200 OK\r\nX: a\x00\r\n\r\n", "upstream sent invalid header"),
    (b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", "upstream sent invalid header"),
    (b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n", "upstream sent invalid header"),
    (b"ICE/1.0 200 OK\r\n\r\n", "upstream sent no valid HTTP/1.0 header"),
    (b"garbage\r\n\r\n", "upstream sent no valid HTTP/1.0 header"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "upstream sent no valid HTTP/1.0 header"),
    (b"HTTP/1.1 099 OK\r\n\r\n", "upstream sent no valid HTTP/1.0 header"),
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        'upstream sent "Content-Length" and "Transfer-Encoding" headers at the same time',
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        'upstream sent unknown "Transfer-Encoding": "gzip"',
    ),
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        'upstream sent duplicate header line: "Content-Length: 2", previous value: '
        '"Content-Length: 1"',
    ),
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        'upstream sent invalid "Content-Length" header: "Content-Length: x"',
    ),
]


@pytest.mark.parametrize(("data", "log"), BAD)
def test_bad_responses(data: bytes, log: str) -> None:
    with pytest.raises(HttpError) as info:
        ResponseParser(False).feed(data)
    assert info.value.status == 502
    assert info.value.log.startswith(log), info.value.log


def test_non_http_detected_early() -> None:
    with pytest.raises(HttpError):
        ResponseParser(False).feed(b"SSH-2.0-OpenSSH")


def test_underscore_headers_pass_from_upstream() -> None:
    ev = ResponseParser(False).feed(b"HTTP/1.1 200 OK\r\nX_Y: 1\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(ev[0], ResponseHead) and ev[0].headers[0] == ("X_Y", "1")


def test_misuse() -> None:
    p = ResponseParser(False)
    with pytest.raises(RuntimeError):
        p.take_buffered()


@pytest.mark.parametrize(("data", "log"), BAD)
def test_bad_responses_name_their_failure_kind(data: bytes, log: str) -> None:
    """``proxy_next_upstream invalid_header`` is told by the exception's type, not by its
    text: every bad head is :class:`InvalidHeader` (nginx's ``NGX_HTTP_UPSTREAM_INVALID_HEADER``,
    duplicate ``Content-Length``, both framings and an unknown coding included) but a status
    line that is no HTTP, a plain 502 (``error``)."""
    with pytest.raises(HttpError) as info:
        ResponseParser(False).feed(data)
    expected = "no valid HTTP/1.0 header" not in log
    assert isinstance(info.value, InvalidHeader) is expected, log


def test_too_big_and_bad_chunk_are_invalid_header() -> None:
    with pytest.raises(InvalidHeader):
        ResponseParser(False, max_head=100).feed(b"HTTP/1.1 200 OK\r\nX: " + b"v" * 120)
    p = ResponseParser(False)
    p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(InvalidHeader):
        p.feed(b"zz\r\n")
