"""Header rewriting: upstream request heads, client response heads, dates, chunk encoding."""

from __future__ import annotations

import pytest

from wsgate.errors import HttpError
from wsgate.http.body import BodyFraming
from wsgate.http.headers import (
    LAST_CHUNK,
    build_client_response_head,
    build_upstream_request,
    connection_tokens,
    encode_chunk,
    for_version,
    http_date,
)

DATE = "Sun, 06 Nov 1994 08:49:37 GMT"


def lines(data: bytes) -> list[str]:
    text = data.decode("latin-1")
    assert text.endswith("\r\n\r\n")
    return text[:-4].split("\r\n")


def test_default_request() -> None:
    client = [("Host", "front"), ("User-Agent", "ua"), ("Accept", "*/*"), ("accept", "x")]
    out = build_upstream_request(
        "GET", "/p?q", "1.1", client, [], "backend:8080", BodyFraming.none()
    )
    assert lines(out) == [
        "GET /p?q HTTP/1.1",
        "Host: backend:8080",
        "User-Agent: ua",
        "Accept: */*",
        "accept: x",
    ]


def test_configured_headers_order_empty_and_blocking() -> None:
    client = [
        ("Host", "front"),
        ("X-Real-IP", "spoofed"),
        ("x-drop", "client"),
        ("X-Keep", "1"),
        ("X-Forwarded-For", "1.1.1.1"),
    ]
    set_headers = [
        ("X-Forwarded-For", "1.1.1.1, 10.0.0.1"),
        ("X-Real-IP", "10.0.0.1"),
        ("X-Drop", ""),
    ]
    out = build_upstream_request("GET", "/", "1.1", client, set_headers, "up", BodyFraming.none())
    assert lines(out) == [
        "GET / HTTP/1.1",
        "Host: up",
        "X-Forwarded-For: 1.1.1.1, 10.0.0.1",
        "X-Real-IP: 10.0.0.1",
        "X-Keep: 1",
    ]


def test_host_configured_goes_first_and_empty_falls_back() -> None:
    sh = [("X-A", "1"), ("Host", "$host-value")]
    out = build_upstream_request("GET", "/", "1.1", [], sh, "up", BodyFraming.none())
    assert lines(out)[1:] == ["Host: $host-value", "X-A: 1"]
    out = build_upstream_request("GET", "/", "1.1", [], [("Host", "")], "up", BodyFraming.none())
    assert lines(out)[1:] == ["Host: up"]
    out = build_upstream_request("GET", "/", "1.0", [], [("Host", "")], "up", BodyFraming.none())
    assert lines(out) == ["GET / HTTP/1.0"]


def test_hop_by_hop_and_proxy_headers_dropped() -> None:
    client = [
        ("Host", "h"),
        ("Connection", "keep-alive, X-Secret"),
        ("Keep-Alive", "timeout=5"),
        ("Upgrade", "websocket"),
        ("TE", "trailers"),
        ("Trailer", "X"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "5"),
        ("Expect", "100-continue"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic x"),
        ("x-secret", "s"),
        ("Via", "1.1 a"),
        ("Sec-WebSocket-Key", "k"),
    ]
    out = build_upstream_request("POST", "/", "1.1", client, [], "up", BodyFraming.none())
    assert lines(out) == ["POST / HTTP/1.1", "Host: up", "Via: 1.1 a", "Sec-WebSocket-Key: k"]


def test_websocket_recipe() -> None:
    client = [("Host", "h"), ("Upgrade", "websocket"), ("Connection", "Upgrade")]
    sh = [("Upgrade", "websocket"), ("Connection", "upgrade")]
    out = build_upstream_request("GET", "/ws", "1.1", client, sh, "up", BodyFraming.none())
    assert lines(out) == [
        "GET /ws HTTP/1.1",
        "Host: up",
        "Upgrade: websocket",
        "Connection: upgrade",
    ]
    # No client Upgrade: $http_upgrade is empty, so Upgrade is dropped, Connection stays.
    sh = [("Upgrade", ""), ("Connection", "upgrade")]
    out = build_upstream_request("GET", "/ws", "1.1", [("Host", "h")], sh, "up", BodyFraming.none())
    assert lines(out) == ["GET /ws HTTP/1.1", "Host: up", "Connection: upgrade"]


def test_body_framing() -> None:
    client = [("Content-Length", "999")]
    out = build_upstream_request(
        "POST", "/", "1.1", client, [], "up", BodyFraming.content_length(7)
    )
    assert lines(out) == ["POST / HTTP/1.1", "Host: up", "Content-Length: 7"]
    out = build_upstream_request("POST", "/", "1.0", [], [], "up", BodyFraming.content_length(0))
    assert lines(out) == ["POST / HTTP/1.0", "Host: up", "Content-Length: 0"]
    out = build_upstream_request("POST", "/", "1.1", [], [], "up", BodyFraming.chunked())
    assert lines(out) == ["POST / HTTP/1.1", "Host: up", "Transfer-Encoding: chunked"]
    with pytest.raises(ValueError):
        build_upstream_request("POST", "/", "1.0", [], [], "up", BodyFraming.chunked())
    with pytest.raises(ValueError):
        build_upstream_request("POST", "/", "1.1", [], [], "up", BodyFraming.close())
    with pytest.raises(ValueError):
        BodyFraming.content_length(-1)
    sh = [("Content-Length", "")]
    out = build_upstream_request("POST", "/", "1.1", [], sh, "up", BodyFraming.content_length(7))
    assert lines(out) == ["POST / HTTP/1.1", "Host: up"]


def test_zero_length_uri() -> None:
    with pytest.raises(HttpError) as info:
        build_upstream_request("GET", "", "1.1", [], [], "up", BodyFraming.none())
    assert (info.value.status, info.value.log) == (500, "zero length URI to proxy")


def test_connection_tokens() -> None:
    hs = [("Connection", "close, X-A ,, x-b"), ("connection", "Upgrade"), ("X", "y")]
    assert connection_tokens(hs) == {"close", "x-a", "x-b", "upgrade"}


UPSTREAM = [
    ("Server", "gunicorn"),
    ("Date", "Mon, 01 Jan 2001 00:00:00 GMT"),
    ("X-Pad", "avoid browser bug"),
    ("X-Accel-Redirect", "/internal"),
    ("X-Accel-Buffering", "no"),
    ("Connection", "keep-alive"),
    ("Keep-Alive", "timeout=5"),
    ("Transfer-Encoding", "chunked"),
    ("Content-Length", "10"),
    ("Set-Cookie", "a=1"),
    ("Content-Type", "text/plain"),
    ("Set-Cookie", "b=2"),
    ("Upgrade", "h2c"),
]


def test_client_response_head_order() -> None:
    out = build_client_response_head(
        200,
        "Okay Then",
        UPSTREAM,
        server_tokens=True,
        date=DATE,
        framing=BodyFraming.content_length(10),
        keep_alive=True,
        keepalive_header=None,
    )
    assert lines(out) == [
        "HTTP/1.1 200 Okay Then",
        "Server: wsgate/0.1.0",
        f"Date: {DATE}",
        "Content-Type: text/plain",
        "Content-Length: 10",
        "Connection: keep-alive",
        "Set-Cookie: a=1",
        "Set-Cookie: b=2",
        "Upgrade: h2c",
    ]


def test_client_response_head_chunked_close_tokens_off() -> None:
    out = build_client_response_head(
        404,
        "Not Found",
        [("X-A", "1")],
        server_tokens=False,
        date=DATE,
        framing=BodyFraming.chunked(),
        keep_alive=False,
        keepalive_header=None,
    )
    assert lines(out) == [
        "HTTP/1.1 404 Not Found",
        "Server: wsgate",
        f"Date: {DATE}",
        "Transfer-Encoding: chunked",
        "Connection: close",
        "X-A: 1",
    ]


def test_client_response_head_keepalive_header_and_close_delimited() -> None:
    out = build_client_response_head(
        200,
        "OK",
        [],
        server_tokens=True,
        date=DATE,
        framing=BodyFraming.close(),
        keep_alive=True,
        keepalive_header=30.0,
    )
    assert lines(out)[3:] == ["Connection: keep-alive", "Keep-Alive: timeout=30"]


def test_client_response_head_101() -> None:
    upstream = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ("Sec-WebSocket-Protocol", "chat"),
    ]
    out = build_client_response_head(
        101,
        "Switching Protocols",
        upstream,
        server_tokens=True,
        date=DATE,
        framing=BodyFraming.none(),
        keep_alive=False,
        keepalive_header=10,
        upgrade=True,
    )
    assert lines(out) == [
        "HTTP/1.1 101 Switching Protocols",
        "Server: wsgate/0.1.0",
        f"Date: {DATE}",
        "Connection: upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        "Sec-WebSocket-Protocol: chat",
    ]


def test_empty_reason() -> None:
    out = build_client_response_head(
        299,
        "",
        [],
        server_tokens=True,
        date=DATE,
        framing=BodyFraming.none(),
        keep_alive=True,
    )
    assert out.startswith(b"HTTP/1.1 299 \r\n")


def test_http_date() -> None:
    assert http_date(784111777) == DATE
    assert http_date(784111777.9) == DATE
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert len(http_date()) == 29


def test_encode_chunk() -> None:
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert encode_chunk(b"") == b""
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_http09_gets_the_body_only() -> None:
    """nginx's header filter writes nothing for HTTP/0.9: no status line, no headers."""
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"
    assert for_version("0.9", response) == b"body"
    assert for_version("0.9", b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n") == b""
    assert for_version("1.0", response) is response
    assert for_version("1.1", response) is response
