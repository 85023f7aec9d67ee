"""``X-Accel-Redirect`` from a proxied upstream through a real wsgate and a loopback
backend: to a static file, to a named location, an unsafe URI (404), and
``proxy_ignore_headers X-Accel-Redirect``
(https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_ignore_headers)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import HOST, Backend, Loop, Request, loop_fixture

Factory = Callable[..., WsgateProcess]

bg = pytest.fixture(loop_fixture)

pytestmark = pytest.mark.timeout(30)


def accel(backend: Backend, request: Request) -> bytes:
    """Answers with ``X-Accel-Redirect`` taken from the path after ``/app``, a body that
    must not reach the client, and fields of which some are kept."""
    target = request.path.removeprefix("/app")
    body = b"UPSTREAM-BODY"
    return (
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
        f"X-Accel-Redirect: {target}\r\nContent-Type: text/blah\r\n"
        "Set-Cookie: s=1; Domain=up.example\r\nCache-Control: no-cache\r\n"
        "Something: other\r\n\r\n"
    ).encode() + body


def conf(root: Path, port: int) -> str:
    return f"""
events {{}}
http {{
  log_format st '$status $request_method $uri';
  access_log logs/access.log st;
  server {{
    listen 127.0.0.1:0;
    proxy_read_timeout 5s;
    location /app {{
        proxy_pass http://127.0.0.1:{port};
        proxy_cookie_domain up.example front.example;
    }}
    location /raw {{
        proxy_pass http://127.0.0.1:{port}/app;
        proxy_ignore_headers X-Accel-Redirect;
    }}
    location /files/ {{ internal; root {root}; }}
    location @named {{ return 200 "named $uri\\n"; }}
  }}
}}
"""


def exchange(port: int, method: str, target: str, body: bytes = b"") -> tuple[bytes, bytes]:
    """One request on its own connection; the response head and body."""
    data = (
        f"{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    head, _, rest = out.partition(b"\r\n\r\n")
    return head, rest


@pytest.fixture
def setup(wsgate: Factory, bg: Loop, tmp_path: Path) -> tuple[WsgateProcess, Backend]:
    root = tmp_path / "root"
    (root / "files").mkdir(parents=True)
    (root / "files" / "a b.txt").write_bytes(b"static file\n")
    up = bg.backend("up", accel)
    return wsgate(conf(root, up.port)), up


def test_to_a_static_file(setup: tuple[WsgateProcess, Backend]) -> None:
    """A POST redirected to an internal location's file: the file, with the upstream's
    Content-Type and rewritten Set-Cookie, and none of its other fields or body."""
    gw, up = setup
    head, body = exchange(gw.port, "POST", "/app/files/a%20b.txt", b"request body")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"static file\n"
    lines = head.split(b"\r\n")
    assert b"Content-Type: text/blah" in lines
    assert b"Set-Cookie: s=1; Domain=front.example" in lines
    assert b"Cache-Control: no-cache" in lines
    assert not any(line.lower().startswith(b"something") for line in lines)
    assert not any(line.lower().startswith(b"x-accel-redirect") for line in lines)
    assert up.requests[0].method == "POST"
    assert gw.access_lines(1) == ["200 GET /files/a b.txt"]


def test_to_a_named_location(setup: tuple[WsgateProcess, Backend]) -> None:
    gw, _ = setup
    head, body = exchange(gw.port, "GET", "/app@named")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"named /app@named\n"


@pytest.mark.parametrize("target", ["/app/files/../x", "/app/files/.%2e/x"])
def test_unsafe_is_404(setup: tuple[WsgateProcess, Backend], target: str) -> None:
    gw, _ = setup
    head, body = exchange(gw.port, "GET", target)
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"UPSTREAM-BODY" not in body
    assert "was detected" in gw.errors()


def test_ignored(setup: tuple[WsgateProcess, Backend]) -> None:
    """``proxy_ignore_headers X-Accel-Redirect``: the upstream's response as it is."""
    gw, _ = setup
    head, body = exchange(gw.port, "GET", "/raw/files/a%20b.txt")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"UPSTREAM-BODY"
