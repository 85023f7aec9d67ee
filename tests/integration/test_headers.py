"""``add_header`` through a real wsgate, with real upstreams on loopback: inheritance per
level, nginx's status list and ``always``, variables, empty values, and every kind of
response (proxied, ``return``, redirects, error pages, ``stub_status``, a WebSocket 101).

The cases follow nginx-tests ``headers.t`` ("good/bad add_header", "add_header always empty").
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import HOST, Backend, Loop, Request, loop_fixture

bg = pytest.fixture(loop_fixture)


def by_path(backend: Backend, request: Request) -> bytes:
    """404 for /missing..., 200 otherwise, with a header of its own and an ETag."""
    code = b"404 Not Found" if "missing" in request.path else b"200 OK"
    return b'HTTP/1.1 %s\r\nContent-Length: 2\r\nX-Up: 1\r\nETag: "up"\r\n\r\nok' % code


def head_of(port: int, path: str, extra: str = "") -> str:
    """The response head for GET ``path`` on a new connection."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    return data.split(b"\r\n\r\n")[0].decode()


def fields(head: str) -> list[str]:
    return head.split("\r\n")[1:]


WS = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def test_add_header_levels_statuses_and_responses(
    wsgate: Callable[..., WsgateProcess], bg: Loop
) -> None:
    up = bg.backend("up", by_path, websocket=True)
    gw = wsgate(f"""
events {{}}
http {{
  add_header X-Http http;
  upstream backend {{ server 127.0.0.1:{up.port}; }}
  server {{
    listen 127.0.0.1:0;
    add_header X-URI $uri;
    add_header X-Always $uri always;
    add_header ETag foo always;
    add_header ETag '' always;
    location / {{ proxy_pass http://backend; }}
    location /own {{
      add_header X-Own own;
      add_header X-Empty '';
      add_header X-Var $arg_none;
      add_header ETag '"mine"';
      proxy_pass http://backend;
    }}
    location /ret {{ return 200 hi; }}
    location /redir {{ return 302 /x; }}
    location /gone {{ return 404; }}
    location /status {{ stub_status; }}
    location /ws {{
      add_header X-WS ws;
      add_header X-WS-Always $uri always;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection upgrade;
      proxy_pass http://backend;
    }}
  }}
}}
""")
    port = gw.port
    # Proxied 200: the server's list (not http's: a level with any replaces it all), the
    # ETag set and then emptied is gone, and so is the upstream's (headers.t).
    h = fields(head_of(port, "/a"))
    assert h[-3:] == ["X-Up: 1", "X-URI: /a", "X-Always: /a"], h
    assert not any(x.startswith(("X-Http", "ETag")) for x in h), h
    # Proxied 404: only ``always``.
    h = fields(head_of(port, "/missing"))
    assert "X-Always: /missing" in h and not any(x.startswith("X-URI") for x in h), h
    # A location with its own list inherits none; empty values add nothing; ETag replaces
    # the upstream's where it stands.
    h = fields(head_of(port, "/own"))
    assert 'ETag: "mine"' in h and h.index('ETag: "mine"') == h.index("X-Up: 1") + 1, h
    assert h[-1] == "X-Own: own", h
    assert not any(x.startswith(("X-URI", "X-Always", "X-Http", "X-Empty", "X-Var")) for x in h)
    # return 200, a redirect, an error page, stub_status.
    h = fields(head_of(port, "/ret"))
    assert h[-2:] == ["X-URI: /ret", "X-Always: /ret"], h
    h = fields(head_of(port, "/redir"))
    assert "X-URI: /redir" in h and h[-1] == "X-Always: /redir", h
    h = fields(head_of(port, "/gone"))
    assert h[-2:] == ["Connection: close", "X-Always: /gone"], h
    h = fields(head_of(port, "/status"))
    assert h[-2:] == ["X-URI: /status", "X-Always: /status"], h
    # A 101 is not in nginx's list: only ``always`` reaches the handshake response.
    h = fields(head_of(port, "/ws", WS))
    assert h[-1] == "X-WS-Always: /ws" and not any(x.startswith("X-WS:") for x in h), h
    assert any(x.startswith("Sec-WebSocket-Accept") for x in h), h


def test_add_header_from_http_level_and_bad_request(
    wsgate: Callable[..., WsgateProcess], bg: Loop
) -> None:
    up = bg.backend("up", by_path)
    gw = wsgate(f"""
events {{}}
http {{
  add_header X-Http $request_method;
  add_header X-Http-Always yes always;
  server {{
    listen 127.0.0.1:0;
    location / {{ proxy_pass http://127.0.0.1:{up.port}; }}
  }}
}}
""")
    h = fields(head_of(gw.port, "/a"))
    assert h[-2:] == ["X-Http: GET", "X-Http-Always: yes"], h
    with socket.create_connection((HOST, gw.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
        data = s.recv(65536).decode()
    assert data.startswith("HTTP/1.1 400 ") and "\r\nX-Http-Always: yes\r\n" in data, data
    assert "X-Http:" not in data


def upstream_fields(backend: Backend, request: Request) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: up\r\nDate: then\r\nX-Pad: p\r\n"
        b"X-Accel-Redirect: /in\r\nX-Accel-Other: o\r\nX-Secret: s\r\nX-Up: 1\r\n\r\nok"
    )


def test_proxy_hide_header_and_proxy_pass_header(
    wsgate: Callable[..., WsgateProcess], bg: Loop
) -> None:
    up = bg.backend("up", upstream_fields)
    gw = wsgate(f"""
events {{}}
http {{
  proxy_hide_header X-Secret;
  server {{
    listen 127.0.0.1:0;
    location / {{ proxy_pass http://127.0.0.1:{up.port}; }}
    location /pass {{
      proxy_pass_header Server;
      proxy_pass_header X-Accel-Redirect;
      proxy_pass http://127.0.0.1:{up.port};
    }}
    location /own {{
      proxy_hide_header X-Up;
      proxy_pass http://127.0.0.1:{up.port};
    }}
  }}
}}
""")
    h = fields(head_of(gw.port, "/"))
    assert h[0].startswith("Server: wsgate") and h[1] != "Date: then", h
    assert h[-2:] == ["X-Accel-Other: o", "X-Up: 1"], h
    h = fields(head_of(gw.port, "/pass"))
    assert h[0].startswith("Date: ") and h[0] != "Date: then", h
    assert h[-4:] == ["Server: up", "X-Accel-Redirect: /in", "X-Accel-Other: o", "X-Up: 1"], h
    # A level's own proxy_hide_header list replaces the outer one: X-Secret passes here.
    h = fields(head_of(gw.port, "/own"))
    assert h[-2:] == ["X-Accel-Other: o", "X-Secret: s"], h
