"""``error_page``, named locations, ``internal`` and ``proxy_intercept_errors`` through a
real wsgate and real upstreams on loopback
(https://nginx.org/en/docs/http/ngx_http_core_module.html#error_page,
https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_intercept_errors)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import (
    HOST,
    Backend,
    Loop,
    Request,
    dead_port,
    get,
    loop_fixture,
    status,
    wait_for,
    ws_open,
)

Factory = Callable[..., WsgateProcess]

bg = pytest.fixture(loop_fixture)


def conf(body: str, http: str = "") -> str:
    return f"""
events {{}}
http {{
  log_format st '$status $request_method $uri $upstream_status';
  access_log logs/access.log st;
  {http}
  server {{
    listen 127.0.0.1:0;
    proxy_connect_timeout 1s;
    proxy_read_timeout 2s;
    {body}
  }}
}}
"""


def raw(port: int, data: bytes) -> bytes:
    """``data`` on a new client connection; everything until the server closes it."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def reply(code: int, body: bytes, extra: str = "") -> Callable[[Backend, Request], bytes]:
    def respond(backend: Backend, request: Request) -> bytes:
        head = f"HTTP/1.1 {code} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        return head.encode() + body

    return respond


def test_error_page_for_a_dead_upstream(wsgate: Factory) -> None:
    """A 502 answered by ``error_page 502 /down``: the page's text with the 502 status, the
    connect() line in the error log, ``$status`` 502 in the access log."""
    gw = wsgate(
        conf(
            f"""
            location / {{ proxy_pass http://127.0.0.1:{dead_port()}; error_page 502 /down; }}
            location = /down {{ return 200 "down $status\\n"; }}
            """
        )
    )
    assert get(gw.port, "/x?a=1") == (502, b"down 502\n")
    assert gw.access_lines(1) == ["502 GET /down 502"]
    assert "connect() failed (111: Connection refused)" in gw.errors()


def test_error_page_to_a_proxied_location(wsgate: Factory, bg: Loop) -> None:
    """A POST that ends in 404 is redirected to ``/fallback``, which proxies: the upstream
    gets GET with ``$uri`` and the error page's args, and the unread body; the client gets
    the upstream's body with the 404."""
    up = bg.backend("up")
    gw = wsgate(
        conf(
            f"""
            location /gone {{ error_page 404 /fallback?via=gone; }}
            location /fallback {{ proxy_pass http://127.0.0.1:{up.port}; }}
            """
        )
    )
    assert get(gw.port, "/gone/x?a=1", method="POST", body=b"hello") == (404, b"up")
    (seen,) = up.requests
    assert (seen.method, seen.path, seen.body) == ("GET", "/fallback?via=gone", b"hello")


def test_named_location_fallback_keeps_the_request_target(wsgate: Factory, bg: Loop) -> None:
    """``error_page 404 = @fallback``: the named location proxies the request as the client
    sent it, and the upstream's own status goes to the client."""
    first = bg.backend("first", status(404))
    second = bg.backend("second")
    gw = wsgate(
        conf(
            f"""
            location / {{
                proxy_pass http://127.0.0.1:{first.port};
                proxy_intercept_errors on;
                error_page 404 = @fallback;
            }}
            location @fallback {{ proxy_pass http://127.0.0.1:{second.port}; }}
            """
        )
    )
    assert get(gw.port, "/a%20b?q=1") == (200, b"second")
    assert first.paths == ["/a%20b?q=1"] and second.paths == ["/a%20b?q=1"]
    assert gw.access_lines(1) == ["200 GET /a b 404, 200"]


def test_intercepted_401_keeps_www_authenticate(wsgate: Factory, bg: Loop) -> None:
    up = bg.backend(
        "up",
        reply(401, b"upstream body", "WWW-Authenticate: Basic realm=a\r\nWWW-Authenticate: b\r\n"),
    )
    gw = wsgate(
        conf(
            f"""
            location / {{
                proxy_pass http://127.0.0.1:{up.port};
                proxy_intercept_errors on;
                error_page 401 /auth;
            }}
            location = /auth {{ return 200 "log in\\n"; }}
            """
        )
    )
    out = raw(gw.port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"\r\nWWW-Authenticate: Basic realm=a\r\nWWW-Authenticate: b" in head
    assert body == b"log in\n"


def test_not_intercepted_without_error_page_or_when_off(wsgate: Factory, bg: Loop) -> None:
    up = bg.backend("up", reply(404, b"SEE-THIS"))
    gw = wsgate(
        conf(
            f"""
            location /on {{
                proxy_pass http://127.0.0.1:{up.port};
                proxy_intercept_errors on;
                error_page 500 /x;
            }}
            location /off {{ proxy_pass http://127.0.0.1:{up.port}; error_page 404 /x; }}
            location = /x {{ return 200 intercepted; }}
            """
        )
    )
    assert get(gw.port, "/on") == (404, b"SEE-THIS")
    assert get(gw.port, "/off") == (404, b"SEE-THIS")


def test_intercepted_response_and_upstream_keepalive(wsgate: Factory, bg: Loop) -> None:
    """The upstream's body is never relayed; its connection goes back to the pool only when
    the response was all read (here: whole with its head), else it is closed."""
    whole = bg.backend("whole", reply(404, b"NOT-FOUND"))

    def short(backend: Backend, request: Request) -> bytes:
        return b"HTTP/1.1 404 X\r\nContent-Length: 100\r\n\r\nonly part"

    partial = bg.backend("partial", short)
    gw = wsgate(
        conf(
            """
            location /whole {
                proxy_pass http://whole;
                proxy_intercept_errors on;
                error_page 404 /page;
            }
            location /partial {
                proxy_pass http://partial;
                proxy_intercept_errors on;
                error_page 404 /page;
            }
            location = /page { return 200 page; }
            """,
            f"""
            upstream whole {{ server 127.0.0.1:{whole.port}; keepalive 4; }}
            upstream partial {{ server 127.0.0.1:{partial.port}; keepalive 4; }}
            """,
        )
    )
    for _ in range(3):
        assert get(gw.port, "/whole") == (404, b"page")
        assert get(gw.port, "/partial") == (404, b"page")
    assert whole.accepted == 1 and len(whole.requests) == 3
    assert partial.accepted == 3
    wait_for(lambda: partial.open == 0, "the partly read connections closed")


def test_intercepted_after_the_body_was_sent(wsgate: Factory, bg: Loop) -> None:
    """The body went to the first upstream; the error page's upstream gets the request
    without it (wsgate streams bodies and cannot send one twice), and the client
    connection stays usable."""
    first = bg.backend("first", status(500))
    second = bg.backend("second")
    gw = wsgate(
        conf(
            f"""
            location / {{
                proxy_pass http://127.0.0.1:{first.port};
                proxy_intercept_errors on;
                error_page 500 /sorry;
            }}
            location /sorry {{ proxy_pass http://127.0.0.1:{second.port}; }}
            """
        )
    )
    request = b"POST /form HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    out = raw(gw.port, request + b"GET /sorry HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    # A 500 closes the client connection, error page or not (nginx does the same).
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert out.count(b"HTTP/1.1 ") == 1 and out.endswith(b"second")
    assert first.requests[0].body == b"hello"
    (seen,) = second.requests
    assert (seen.method, seen.path, seen.body) == ("GET", "/sorry", b"")
    assert b"content-length" not in seen.head.lower()


def test_websocket_101_is_never_intercepted(wsgate: Factory, bg: Loop) -> None:
    up = bg.backend("up", websocket=True)
    gw = wsgate(
        conf(
            f"""
            location / {{
                proxy_pass http://127.0.0.1:{up.port};
                proxy_set_header Upgrade $http_upgrade;
                proxy_set_header Connection upgrade;
                proxy_intercept_errors on;
                error_page 300 301 302 400 404 500 502 /x;
            }}
            location = /x {{ return 200 x; }}
            """
        )
    )
    ws_open(gw.port).close()


def test_internal_location_and_redirect_form(wsgate: Factory) -> None:
    gw = wsgate(
        conf(
            """
            error_page 404 /404.html;
            location = /404.html { internal; return 200 "custom 404\\n"; }
            location /old { error_page 410 =301 https://example.org/new; return 410; }
            location /ok { return 200 ok; }
            """
        )
    )
    assert get(gw.port, "/404.html") == (404, b"custom 404\n")
    assert get(gw.port, "/nothing") == (404, b"custom 404\n")
    out = raw(gw.port, b"GET /old HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 301 Moved Permanently\r\n")
    assert b"\r\nLocation: https://example.org/new\r\n" in out


def test_error_page_loop_is_a_500(wsgate: Factory) -> None:
    """An internal ``/404.html`` that is itself missing, with ``recursive_error_pages``: the
    eleventh internal redirect is nginx's 500 and its [error] line."""
    gw = wsgate(
        conf(
            """
            recursive_error_pages on;
            error_page 404 /404.html;
            location = /404.html { internal; }
            """
        )
    )
    status_code, body = get(gw.port, "/nothing")
    assert status_code == 500 and b"500 Internal Server Error" in body
    gw.wait_log(
        r"\[error\] .*rewrite or internal redirection cycle while internally redirecting "
        r'to "/404.html"'
    )


def test_the_error_status_on_the_page_and_the_redirect_it_replaced(wsgate: Factory) -> None:
    """nginx-tests rewrite.t's error-page cases: ``return 204`` as an error page is sent as
    the 405 with a Content-Length; ``return 302 text`` taken over by an error page keeps its
    ``Location`` on the page (it stays in nginx's ``headers_out``), unless the page
    redirects again."""
    gw = wsgate(
        conf(
            """
            location /e405to204 { error_page 405 /r204; return 405; }
            location = /r204 { return 204; }
            location /e302to200 { error_page 302 /r200; return 302 "text"; }
            location = /r200 { return 200 "text"; }
            location /e405to302 { error_page 405 /r302; return 405; }
            location = /r302 { return 302 "elsewhere"; }
            """
        )
    )
    req = b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    out = raw(gw.port, req % b"/e405to204")
    assert out.startswith(b"HTTP/1.1 405 Not Allowed\r\n") and b"\r\nContent-Length: 0\r\n" in out
    out = raw(gw.port, req % b"/e302to200")
    assert out.startswith(b"HTTP/1.1 302 Moved Temporarily\r\n")
    assert b"\r\nLocation: text\r\n" in out and out.endswith(b"\r\n\r\ntext")
    out = raw(gw.port, req % b"/e405to302")
    assert out.startswith(b"HTTP/1.1 302 Moved Temporarily\r\n")
    assert out.count(b"Location:") == 1 and b"\r\nLocation: elsewhere\r\n" in out


def test_413_error_page_proxied_without_the_body(wsgate: Factory, bg: Loop) -> None:
    up = bg.backend("up")
    gw = wsgate(
        conf(
            f"""
            client_max_body_size 10;
            error_page 413 /big;
            location / {{ proxy_pass http://127.0.0.1:{up.port}; }}
            """
        )
    )
    assert get(gw.port, "/upload", method="POST", body=b"x" * 100) == (413, b"up")
    (seen,) = up.requests
    assert (seen.method, seen.path, seen.body) == ("GET", "/big", b"")
    assert b"content-length" not in seen.head.lower()


def test_error_page_for_an_unreadable_head(wsgate: Factory) -> None:
    """nginx applies the server's ``error_page`` to a request whose head it could not read
    (here a header line without a colon: 400); the page is made as for a GET with no URI,
    and the connection closes.  Without an error page for the status: nginx's page."""
    gw = wsgate(
        conf(
            """
            error_page 400 /bad;
            location = /bad { return 200 "bad request: $request_method $uri\\n"; }
            """
        )
    )
    out = raw(gw.port, b"POST /x HTTP/1.1\r\nHost: t\r\nBroken\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nConnection: close\r\n" in out
    assert out.endswith(b"\r\n\r\nbad request: GET /bad\n") and out.count(b"HTTP/1.1") == 1
    assert gw.access_lines(1) == ["400 GET /bad -"]
    status_code, body = get(gw.port, "/" + "x" * 70000)
    assert status_code == 414 and b"414 Request-URI Too Large" in body
