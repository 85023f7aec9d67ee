"""The rewrite module through a real wsgate, with a real upstream on loopback: a rewrite
loop (500 after 10 URI changes and nginx's error line), what ``proxy_pass`` sends after
``rewrite ... last`` and ``break``, ``if`` choosing an upstream, ``set`` variables reaching
``proxy_set_header`` and the access log, ``rewrite_log``, ``return 444``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import HOST, Backend, Loop, Request, loop_fixture

bg = pytest.fixture(loop_fixture)


def echo(backend: Backend, request: Request) -> bytes:
    """200 with ``NAME PATH`` and the request head's X-Var as the body."""
    var = next(
        (line[7:] for line in request.head.decode().split("\r\n") if line.startswith("X-Var: ")),
        "",
    )
    body = f"{backend.name} {request.path} {var}".encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def get(port: int, path: str) -> bytes:
    """The whole response to GET ``path`` on a new connection (closed after it)."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_rewrite_loop_is_500_after_ten_changes(wsgate: Callable[..., WsgateProcess]) -> None:
    gw = wsgate("""
events {}
http {
  server {
    listen 127.0.0.1:0;
    location /loop { rewrite ^ /loop2 last; }
    location /loop2 { rewrite ^ /loop last; }
    location /ten { rewrite ^/ten(x*)$ /ten$1x last; }
    location /tenxxxxxxxxxx { return 200 "ok $uri"; }
  }
}
""")
    data = get(gw.port, "/loop")
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), data
    gw.wait_log(
        r'\[error\] .*rewrite or internal redirection cycle while processing "/loop2?", '
        r'client: 127\.0\.0\.1, server: , request: "GET /loop HTTP/1\.1", host: "t"'
    )
    # At the limit: ten changes (/ten → /tenx → ... → /tenxxxxxxxxxx) are allowed.
    assert get(gw.port, "/ten").endswith(b"ok /tenxxxxxxxxxx")


def test_proxy_pass_after_rewrite(wsgate: Callable[..., WsgateProcess], bg: Loop) -> None:
    a = bg.backend("a", echo)
    b = bg.backend("b", echo)
    gw = wsgate(f"""
events {{}}
http {{
  log_format vars '$uri $args $who';
  server {{
    listen 127.0.0.1:0;
    access_log logs/access.log vars;
    rewrite_log on;
    rewrite ^/old/(.*)$ /api/$1 last;
    location /api/ {{
      set $who "api-$arg_u";
      proxy_set_header X-Var $who;
      proxy_pass http://127.0.0.1:{a.port}/v1/;
      if ($arg_b) {{ proxy_pass http://127.0.0.1:{b.port}; }}
    }}
    location /brk/ {{
      rewrite ^/brk/(.*)$ /raw/$1 break;
      proxy_pass http://127.0.0.1:{a.port}/ignored/;
    }}
    location /gone {{ return 444; }}
    location /moved/ {{ rewrite ^/moved/(.*)$ /api/$1 permanent; }}
  }}
}}
""")
    port = gw.port
    assert get(port, "/old/x%20y?u=1").endswith(b"a /v1/x%20y?u=1 api-1")
    # proxy_pass inside if: no URI part, the (rewritten) URI is sent as it is now.
    assert get(port, "/api/z?b=1").endswith(b"b /api/z?b=1 api-")
    # break: proxy_pass's URI part is ignored, the whole changed URI is sent.
    assert get(port, "/brk/q?k=v").endswith(b"a /raw/q?k=v ")
    # return 444 closes without a byte.
    assert get(port, "/gone") == b""
    # A redirect's Location is made absolute when it is sent; the arguments follow.
    moved = get(port, "/moved/m?k=1")
    assert moved.startswith(b"HTTP/1.1 301 Moved Permanently\r\n"), moved
    assert f"\r\nLocation: http://t:{port}/api/m?k=1\r\n".encode() in moved, moved
    lines = gw.access_lines(5)
    assert lines[:3] == ["/api/x y u=1 api-1", "/api/z b=1 api-", "/raw/q k=v -"]
    gw.wait_log(r'\[notice\] .*"\^/old/\(\.\*\)\$" matches "/old/x y"')
    gw.wait_log(r'\[notice\] .*rewritten data: "/api/x y", args: "u=1"')
    gw.wait_log(r'\[warn\] .*using uninitialized "who" variable while logging request, ')
    assert a.paths == ["/v1/x%20y?u=1", "/raw/q?k=v"] and b.paths == ["/api/z?b=1"]
