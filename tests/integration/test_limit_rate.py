"""``limit_rate`` on proxied responses through a real wsgate (limit_rate.t's cases): the rate
the response was sent at is ``$limit_rate`` in the log, ``X-Accel-Limit-Rate`` wins over the
directive, ``proxy_buffering off`` and ``X-Accel-Buffering: no`` turn it off, a variable that
is not a size logs nginx's ``invalid size``, and the body always arrives whole.  Pacing itself
(slices and pauses) is checked without a clock in tests/unit/test_rate.py."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import HOST, Backend, Loop, Request, loop_fixture

bg = pytest.fixture(loop_fixture)
BODY = b"X" * 3000


def answer(backend: Backend, request: Request) -> bytes:
    extra = b""
    if "xal=" in request.path:
        extra += b"X-Accel-Limit-Rate: " + request.path.split("xal=")[1].encode() + b"\r\n"
    if "nobuf" in request.path:
        extra += b"X-Accel-Buffering: no\r\n"
    return b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n" + extra + b"\r\n" + BODY


def get(port: int, path: str) -> bytes:
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_limit_rate_on_proxied_responses(wsgate: Callable[..., WsgateProcess], bg: Loop) -> None:
    up = bg.backend("up", answer)
    gw = wsgate(f"""
events {{}}
http {{
  log_format rate '$uri $limit_rate';
  access_log logs/access.log rate;
  limit_rate 100k;
  limit_rate_after 1k;
  server {{
    listen 127.0.0.1:0;
    location / {{ proxy_pass http://127.0.0.1:{up.port}; }}
    location /off {{ proxy_buffering off; proxy_pass http://127.0.0.1:{up.port}; }}
    location /var {{ limit_rate $arg_l; proxy_pass http://127.0.0.1:{up.port}; }}
    location /zero {{ limit_rate 0; proxy_pass http://127.0.0.1:{up.port}; }}
  }}
}}
""")
    paths = ["/plain", "/xal?xal=13000", "/nobuf", "/off", "/var?l=2k", "/var?l=fast", "/zero"]
    for path in paths:
        data = get(gw.port, path)
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n" + BODY), path
        assert b"X-Accel" not in data, data[:300]
    lines = gw.access_lines(len(paths))
    assert lines == [
        "/plain 102400",
        "/xal 13000",
        "/nobuf 0",
        "/off 0",
        "/var 2048",
        "/var 0",
        "/zero 0",
    ], lines
    gw.wait_log(r'\[error\] .*invalid size "fast"')
    assert "[alert]" not in gw.errors()


def test_proxy_ignore_headers_x_accel(wsgate: Callable[..., WsgateProcess], bg: Loop) -> None:
    """``proxy_ignore_headers X-Accel-Limit-Rate X-Accel-Buffering``: the upstream's fields
    no longer set the rate (ngx_http_upstream_process_limit_rate and _buffering return
    early), and are still hidden."""
    up = bg.backend("up", answer)
    gw = wsgate(f"""
events {{}}
http {{
  log_format rate '$uri $limit_rate';
  access_log logs/access.log rate;
  limit_rate 100k;
  server {{
    listen 127.0.0.1:0;
    location / {{
      proxy_ignore_headers X-Accel-Limit-Rate;
      proxy_ignore_headers X-Accel-Buffering Expires;
      proxy_pass http://127.0.0.1:{up.port};
    }}
    location /rate {{
      proxy_ignore_headers X-Accel-Limit-Rate;
      proxy_pass http://127.0.0.1:{up.port};
    }}
  }}
}}
""")
    paths = ["/xal?xal=13000", "/nobuf", "/rate/nobuf", "/rate/xal?xal=13000"]
    for path in paths:
        data = get(gw.port, path)
        assert data.endswith(b"\r\n\r\n" + BODY) and b"X-Accel" not in data, path
    assert gw.access_lines(len(paths)) == [
        "/xal 102400",
        "/nobuf 102400",
        "/rate/nobuf 0",  # this level's list names only X-Accel-Limit-Rate
        "/rate/xal 102400",
    ]


def stub(port: int) -> dict[str, int]:
    text = get(port, "/stub").split(b"\r\n\r\n", 1)[1].decode()
    words = text.split()
    return {
        "active": int(words[2]),
        "reading": int(words[words.index("Reading:") + 1]),
        "writing": int(words[words.index("Writing:") + 1]),
    }


def test_own_pages_are_paced_and_a_client_gone_ends_them(
    wsgate: Callable[..., WsgateProcess],
) -> None:
    """A 404, a ``return`` text and a redirect pass through the write filter's pacing as in
    nginx (stub_status.t's "writing state"): while one trickles out at ``limit_rate 15`` its
    connection is Writing; a client that closes meanwhile ends it (that the pause is cut
    short at once is tests/unit/test_rate.py's), logged with the rate."""
    gw = wsgate("""
events {}
http {
  log_format rate '$uri $status $limit_rate';
  access_log logs/access.log rate;
  server {
    listen 127.0.0.1:0;
    location /stub { stub_status; }
    location /rate { limit_rate 15; }
    location /text { limit_rate 15; return 200 "0123456789012345678901234567890123456789"; }
    location /moved { limit_rate 15; return 302 /elsewhere; }
  }
}
""")
    for path in ("/rate", "/text", "/moved"):
        s = socket.create_connection((HOST, gw.port), timeout=10)
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        first = s.recv(65536)
        # The first slice is the second's allowance (15 bytes), not the whole response.
        assert 0 < len(first) < 60, first
        assert stub(gw.port)["writing"] == 2, path  # this one and the /stub request
        s.close()
        # Awaited, not timed: unpaced to the end, the page would take 12 s and more.
        deadline = time.monotonic() + 8
        while stub(gw.port)["writing"] != 1:
            assert time.monotonic() < deadline, f"{path}: still writing after the client closed"
    text = gw.access_log.read_text()
    assert [line for line in text.splitlines() if not line.startswith("/stub")] == [
        "/rate 404 15",
        "/text 200 15",
        "/moved 302 15",
    ], text
    assert "[alert]" not in gw.errors()
