"""nginx error pages, byte for byte (lengths checked against nginx 1.22.1's, NGINX-SEMANTICS §5)."""

from __future__ import annotations

import pytest

from wsgate.http.pages import (
    closes_connection,
    error_page_body,
    error_response,
    status_line,
    wants_padding,
)

DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"


@pytest.mark.parametrize(
    ("status", "tokens_on", "tokens_off"),
    [
        (400, 157, 150),
        (404, 153, 146),
        (413, 183, 176),
        (414, 177, 170),
        (494, 233, 226),
        (500, 177, 170),
        (501, 165, 158),
        (502, 157, 150),
        (503, 197, 190),
        (504, 167, 160),
        (505, 187, 180),
    ],
)
def test_lengths_match_nginx(status: int, tokens_on: int, tokens_off: int) -> None:
    assert len(error_page_body(status, token="nginx/1.22.1")) == tokens_on
    assert len(error_page_body(status, token="nginx")) == tokens_off


def test_404_response_byte_exact() -> None:
    body = (
        b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
        b"<center><h1>404 Not Found</h1></center>\r\n"
        b"<hr><center>wsgate/0.1.0</center>\r\n</body>\r\n</html>\r\n"
    )
    head = (
        b"HTTP/1.1 404 Not Found\r\nServer: wsgate/0.1.0\r\nDate: " + DATE.encode() + b"\r\n"
        b"Content-Type: text/html\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: keep-alive\r\n\r\n"
    )
    assert error_response(404, keep_alive=True, date=DATE) == head + body


def test_494_sent_as_400() -> None:
    out = error_response(494, server_tokens=False, keep_alive=False, date=DATE)
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\nServer: wsgate\r\n")
    assert b"Connection: close\r\n" in out
    assert out.endswith(
        b"<html>\r\n<head><title>400 Request Header Or Cookie Too Large</title></head>\r\n"
        b"<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
        b"<center>Request Header Or Cookie Too Large</center>\r\n"
        b"<hr><center>wsgate</center>\r\n</body>\r\n</html>\r\n"
    )


def test_status_lines() -> None:
    assert status_line(405) == "405 Not Allowed"
    assert status_line(408) == "408 Request Time-out"
    assert status_line(302) == "302 Moved Temporarily"
    assert status_line(501) == "501 Not Implemented"
    assert status_line(503) == "503 Service Temporarily Unavailable"
    assert status_line(494) == "400 Bad Request"
    assert status_line(599) == "599 "


def test_page_titles_that_differ_from_status_line() -> None:
    assert b"<title>302 Found</title>" in error_page_body(302)
    assert b"<h1>401 Authorization Required</h1>" in error_page_body(401)
    assert b"<h1>404 Not Found</h1>" in error_page_body(498)
    assert error_page_body(204) == b"" and error_page_body(499) == b""


def test_padding_for_msie_and_chrome_only() -> None:
    assert wants_padding(CHROME)
    assert wants_padding("Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)")
    assert not wants_padding(FIREFOX)
    assert not wants_padding("Opera/9.80 (MSIE 6.0)")
    assert not wants_padding("curl/8.0")
    assert not wants_padding(None)
    plain = error_page_body(404, token="nginx/1.22.1")
    padded = error_page_body(404, token="nginx/1.22.1", padding=True)
    assert len(padded) - len(plain) == 402
    assert padded.endswith(b"<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n")
    assert error_page_body(301, padding=True) == error_page_body(301)
    out = error_response(502, user_agent=CHROME, keep_alive=True, date=DATE)
    assert b"Content-Length: 559\r\n" in out  # 157 + 402


def test_redirect_location() -> None:
    out = error_response(301, keep_alive=True, date=DATE, location="http://h/ws/")
    assert out.startswith(
        b"HTTP/1.1 301 Moved Permanently\r\nServer: wsgate/0.1.0\r\nDate: "
        + DATE.encode()
        + b"\r\nContent-Type: text/html\r\nContent-Length: 169\r\n"
        b"Location: http://h/ws/\r\nConnection: keep-alive\r\n\r\n<html>"
    )


def test_head_only_and_keepalive_header() -> None:
    out = error_response(404, keep_alive=True, date=DATE, head_only=True, keepalive_header=20)
    assert out.endswith(
        b"Content-Length: 153\r\nConnection: keep-alive\r\nKeep-Alive: timeout=20\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("status", "closes"),
    [
        (400, True),
        (404, False),
        (405, False),
        (413, True),
        (414, True),
        (494, True),
        (495, True),
        (497, True),
        (500, True),
        (501, True),
        (502, False),
        (503, False),
        (504, False),
    ],
)
def test_closes_connection(status: int, closes: bool) -> None:
    assert closes_connection(status) is closes
