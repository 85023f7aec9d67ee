"""The real client address (nginx's realip module) through a real wsgate, and later the
PROXY protocol, on loopback; the cases follow nginx-tests' realip.t."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import HOST, Loop, get, loop_fixture

Factory = Callable[..., WsgateProcess]

bg = pytest.fixture(loop_fixture)


def conf(port: int, server: str = "", location: str = "", listen: str = "") -> str:
    return f"""
error_log logs/info.log info;
events {{}}
http {{
  log_format t '$remote_addr:$remote_port|$realip_remote_addr|$status';
  access_log logs/access.log t;
  server {{
    listen 127.0.0.1:0 {listen};
    {server}
    location / {{
      proxy_pass http://127.0.0.1:{port};
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Addr "$remote_addr|$remote_port|$realip_remote_addr";
      {location}
    }}
  }}
}}
"""


def test_x_forwarded_for_recursive(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    server = (
        "set_real_ip_from 127.0.0.1; set_real_ip_from 10.0.0.0/8;"
        " real_ip_header X-Forwarded-For; real_ip_recursive on;"
    )
    gw = wsgate(conf(b.port, server))
    xff = "X-Forwarded-For: 198.51.100.1, 192.0.2.1:7000, 10.0.0.1\r\n"
    assert get(gw.port, extra=xff) == (200, b"b")
    head = b.requests[0].head.decode()
    assert "x-addr: 192.0.2.1|7000|127.0.0.1\r\n" in head.lower()
    # $proxy_add_x_forwarded_for appends the new $remote_addr
    assert "X-Forwarded-For: 198.51.100.1, 192.0.2.1:7000, 10.0.0.1, 192.0.2.1\r\n" in head
    assert gw.access_lines(1) == ["192.0.2.1:7000|127.0.0.1|200"]


def test_untrusted_or_absent_header_keeps_address(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, "set_real_ip_from 10.0.0.0/8;"))
    assert get(gw.port, extra="X-Real-IP: 192.0.2.1\r\n")[0] == 200
    gw2 = wsgate(conf(b.port, "set_real_ip_from 127.0.0.1;"))
    assert get(gw2.port)[0] == 200
    heads = [r.head.decode().lower() for r in b.requests]
    assert all("x-addr: 127.0.0.1|" in h for h in heads)


def test_deny_and_error_log_see_real_address(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, "set_real_ip_from 127.0.0.1;", "deny 192.0.2.1;"))
    assert get(gw.port, extra="X-Real-IP: 192.0.2.1\r\n")[0] == 403
    assert get(gw.port, extra="X-Real-IP: 192.0.2.2\r\n")[0] == 200
    gw.wait_log(r"\[error\] .*access forbidden by rule, client: 192\.0\.2\.1, ")
    assert b.accepted == 1


def test_next_request_on_connection_starts_from_peer(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, "set_real_ip_from 127.0.0.1;"))
    with socket.create_connection((HOST, gw.port), timeout=5) as s:
        s.sendall(
            b"GET /1 HTTP/1.1\r\nHost: t\r\nX-Real-IP: 192.0.2.1\r\n\r\n"
            b"GET /2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2
    lines = gw.access_lines(2)
    assert lines[0] == "192.0.2.1:-|127.0.0.1|200"
    assert lines[1].startswith("127.0.0.1:") and lines[1].endswith("|127.0.0.1|200")


def test_limit_req_key_is_real_address(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    text = conf(b.port, "set_real_ip_from 127.0.0.1;", "limit_req zone=r;").replace(
        "log_format", "limit_req_zone $binary_remote_addr zone=r:1m rate=1r/m;\n  log_format"
    )
    gw = wsgate(text)
    assert get(gw.port, extra="X-Real-IP: 192.0.2.1\r\n")[0] == 200
    assert get(gw.port, extra="X-Real-IP: 192.0.2.1\r\n")[0] == 503
    assert get(gw.port, extra="X-Real-IP: 192.0.2.2\r\n")[0] == 200
    gw.wait_log(r"limiting requests, excess: .* client: 192\.0\.2\.1, ")
