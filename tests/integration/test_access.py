"""``allow``/``deny`` and ``proxy_upgrade_protocols`` through a real wsgate.

Upstreams are scripted servers on loopback (:mod:`tests.integration.loopback`).  Access rules
follow https://nginx.org/en/docs/http/ngx_http_access_module.html (checked after ``return``,
before proxying); the upgrade allow-list is wsgate's own (:mod:`wsgate.access`).
"""

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
    get,
    loop_fixture,
    wait_for,
    ws_open,
)

Factory = Callable[..., WsgateProcess]

bg = pytest.fixture(loop_fixture)

WS_HEADERS = (
    "proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $connection_upgrade;"
)


def conf(port: int, server: str = "", location: str = "", extra: str = "") -> str:
    return f"""
error_log logs/info.log info;
events {{}}
http {{
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  log_format t '$status|$http_upgrade|$upstream_status';
  access_log logs/access.log t;
  server {{
    listen 127.0.0.1:0;
    {server}
    location / {{ proxy_pass http://127.0.0.1:{port}; {location} }}
    {extra}
  }}
}}
"""


def info_log(gw: WsgateProcess) -> str:
    path = gw.prefix / "logs" / "info.log"
    return path.read_text() if path.exists() else ""


# -- allow / deny -----------------------------------------------------------------------------
def test_deny_then_allow_all_is_403_without_upstream(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, "deny 127.0.0.1; allow all;"))
    code, body = get(gw.port, "/x?y=1")
    assert code == 403 and b"<title>403 Forbidden</title>" in body
    assert b.accepted == 0
    m = gw.wait_log(r"\[error\] .*access forbidden by rule.*")
    assert m.group(0).endswith(
        'access forbidden by rule, client: 127.0.0.1, server: , request: "GET /x?y=1 HTTP/1.1",'
        ' host: "t"'
    )
    assert gw.access_lines(1) == ["403|-|-"]


def test_allow_loopback_deny_all_proxies(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, "allow 127.0.0.0/8; deny all;"))
    assert get(gw.port) == (200, b"b")
    assert b.accepted == 1


def test_deny_keeps_the_connection_alive(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, location="deny all;", extra="location /open { allow all; }"))
    with socket.create_connection((HOST, gw.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET /open HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"</html>\r\n"):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    # 403 from the access phase, then 404: access passed, no content handler.
    assert data.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"HTTP/1.1 404 Not Found\r\n" in data
    assert b.accepted == 0


def test_location_rules_replace_server_rules(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(
        conf(
            b.port,
            "deny all;",
            extra=f"location /open {{ allow 127.0.0.1; proxy_pass http://127.0.0.1:{b.port}; }}\n"
            f"    location /v6 {{ allow ::1; proxy_pass http://127.0.0.1:{b.port}; }}",
        )
    )
    assert get(gw.port, "/")[0] == 403
    assert get(gw.port, "/open") == (200, b"b")
    # /v6 has only an IPv6 rule: an IPv4 client matches no rule, so it is allowed (nginx).
    assert get(gw.port, "/v6") == (200, b"b")
    assert b.paths == ["/open", "/v6"]


def test_location_deny_replaces_server_allow(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, "allow 127.0.0.1;", location="deny 127.0.0.0/8;"))
    assert get(gw.port)[0] == 403
    assert b.accepted == 0


def test_return_answers_before_access_rules(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, "deny all;", extra='location /r { return 200 "hi"; }'))
    assert get(gw.port, "/r") == (200, b"hi")
    assert get(gw.port, "/")[0] == 403
    gw2 = wsgate(conf(b.port, 'deny all; return 301 "http://example.org/";'))
    assert get(gw2.port)[0] == 301
    assert b.accepted == 0


# -- proxy_upgrade_protocols ------------------------------------------------------------------
def switching(protocol: str) -> Callable[[Backend, Request], bytes]:
    """An upstream that switches protocols whenever asked (and answers 200 otherwise)."""

    def respond(backend: Backend, request: Request) -> bytes:
        if b"\r\nupgrade:" in request.head.lower():
            return (
                f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {protocol}\r\n"
                "Connection: Upgrade\r\n\r\n"
            ).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain"

    return respond


def always_101(backend: Backend, request: Request) -> bytes:
    """A broken upstream: 101 to anything."""
    return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"


H2C = "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"


def test_h2c_is_proxied_as_a_plain_request(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b", switching("h2c"))
    gw = wsgate(conf(b.port, location=WS_HEADERS))
    assert get(gw.port, extra=H2C) == (200, b"plain")
    (req,) = b.requests
    low = req.head.lower()
    assert b"upgrade" not in low and b"http2-settings" not in low
    assert b"\r\nconnection: close\r\n" in low  # $connection_upgrade saw no $http_upgrade
    assert 'client sent disallowed upgrade protocol "h2c", client: 127.0.0.1' in info_log(gw)
    assert gw.access_lines(1) == ["200|-|200"]


def test_configured_upgrade_headers_are_dropped(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b", always_101)
    gw = wsgate(
        conf(
            b.port,
            location="proxy_set_header Upgrade websocket; "
            'proxy_set_header Connection "keep-alive, Upgrade"; proxy_set_header X-A 1;',
        )
    )
    code, _ = get(gw.port, extra=H2C)
    assert code == 502  # the upstream's 101 is never tunnelled
    (req,) = b.requests
    low = req.head.lower()
    assert b"upgrade" not in low
    assert b"\r\nconnection: keep-alive\r\n" in low and b"\r\nx-a: 1\r\n" in low
    gw.wait_log(r"\[error\] .*upstream sent 101 to \"h2c\", which proxy_upgrade_protocols")
    assert gw.access_lines(1) == ["502|-|101"]
    wait_for(lambda: b.open == 0, "the upstream connection to close")


def test_no_upgrade_header_at_all_is_unchanged(bg: Loop, wsgate: Factory) -> None:
    # A 101 to a request without Upgrade is relayed, not tunnelled, as before (nginx).
    b = bg.backend("b", switching("h2c"))
    gw = wsgate(conf(b.port, location=WS_HEADERS))
    assert get(gw.port) == (200, b"plain")
    assert "disallowed" not in info_log(gw)


def test_websocket_still_works(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b", websocket=True)
    gw = wsgate(conf(b.port, "deny 10.0.0.0/8;", location=WS_HEADERS))
    s = ws_open(gw.port)
    s.close()
    assert b"upgrade: websocket" in b.requests[0].head.lower()


def test_upstream_must_not_pick_a_refused_protocol(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b", switching("h2c"))
    gw = wsgate(conf(b.port, location=WS_HEADERS))
    code, _ = get(gw.port, extra="Upgrade: h2c, websocket\r\nConnection: Upgrade\r\n")
    assert code == 502
    assert b"upgrade: h2c, websocket" in b.requests[0].head.lower()


def test_h2c_allowed_when_listed(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b", switching("h2c"))
    gw = wsgate(conf(b.port, location=f"{WS_HEADERS} proxy_upgrade_protocols websocket h2c;"))
    with socket.create_connection((HOST, gw.port), timeout=5) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: t\r\n{H2C}\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 101 "), data
        # Through the tunnel: the upstream reads these bytes as sent (Host: raw).
        s.sendall(b"GET /after HTTP/1.1\r\nHost: raw\r\n\r\n")
        data = b""
        while not data.endswith(b"plain"):
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    first, after = b.requests
    assert b"upgrade: h2c" in first.head.lower()
    assert after.conn == first.conn and b"\r\nHost: raw\r\n" in after.head


def test_off_refuses_websocket(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b", websocket=True)
    gw = wsgate(conf(b.port, "proxy_upgrade_protocols off;", location=WS_HEADERS))
    with socket.create_connection((HOST, gw.port), timeout=5) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        data = b""
        while not data.endswith(b"b"):
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"upgrade" not in b.requests[0].head.lower()
    assert 'disallowed upgrade protocol "websocket"' in info_log(gw)
