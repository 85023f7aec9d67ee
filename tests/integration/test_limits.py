"""``limit_conn`` and ``limit_req`` through a real wsgate.

https://nginx.org/en/docs/http/ngx_http_limit_conn_module.html ("A connection is counted only if
it has a request being processed by the server"; a WebSocket tunnel's request lasts until the
tunnel closes) and https://nginx.org/en/docs/http/ngx_http_limit_req_module.html (burst,
nodelay, delay).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import Loop, get, loop_fixture, wait_for, ws_open

Factory = Callable[..., WsgateProcess]

bg = pytest.fixture(loop_fixture)


def conf(port: int, zones: str, location: str) -> str:
    return f"""
events {{}}
http {{
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  {zones}
  server {{
    listen 127.0.0.1:0;
    location / {{
      proxy_pass http://127.0.0.1:{port};
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      {location}
    }}
  }}
}}
"""


def test_limit_conn_counts_websocket_tunnels_for_their_whole_life(
    bg: Loop, wsgate: Factory
) -> None:
    b = bg.backend("b", websocket=True)
    gw = wsgate(
        conf(b.port, "limit_conn_zone $binary_remote_addr zone=perip:10m;", "limit_conn perip 2;")
    )
    first, second = ws_open(gw.port), ws_open(gw.port)
    try:
        assert get(gw.port)[0] == 503  # over the limit while both tunnels are open
        gw.wait_log(r'\[error\] .*limiting connections by zone "perip", client: 127\.0\.0\.1')
        first.close()
        wait_for(lambda: b.open == 1, "the first tunnel to close")
        status = 0
        for _ in range(200):  # wsgate sees the close a moment after the backend does
            status = get(gw.port)[0]
            if status == 200:
                break
            time.sleep(0.02)
        assert status == 200  # at the limit again: one tunnel plus this request
    finally:
        first.close()
        second.close()


def test_limit_conn_status_and_plain_requests_release_their_slot(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b", websocket=True)
    gw = wsgate(
        conf(
            b.port,
            "limit_conn_zone $remote_addr zone=one:1m;",
            "limit_conn one 1; limit_conn_status 429;",
        )
    )
    assert [get(gw.port)[0] for _ in range(3)] == [200, 200, 200]  # each ended: slot freed
    tunnel = ws_open(gw.port)
    try:
        assert get(gw.port)[0] == 429
    finally:
        tunnel.close()


@pytest.mark.parametrize("status", [None, 429])
def test_limit_req_nodelay_burst_then_status(bg: Loop, wsgate: Factory, status: int | None) -> None:
    b = bg.backend("b")
    extra = f"limit_req_status {status};" if status else ""
    gw = wsgate(
        conf(
            b.port,
            "limit_req_zone $binary_remote_addr zone=one:10m rate=1r/s;",
            f"limit_req zone=one burst=2 nodelay; {extra}",
        )
    )
    codes = [get(gw.port)[0] for _ in range(4)]
    assert codes == [200, 200, 200, status or 503]
    assert len(b.requests) == 3
    gw.wait_log(r'\[error\] .*limiting requests, excess: [23]\.\d{3} by zone "one"')


def test_limit_req_burst_without_nodelay_delays_the_request(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(
        conf(
            b.port,
            "limit_req_zone $binary_remote_addr zone=one:10m rate=5r/s;",
            "limit_req zone=one burst=1;",
        )
    )
    assert get(gw.port)[0] == 200
    started = time.monotonic()
    assert get(gw.port)[0] == 200  # excess 1 of burst 1: delayed ~200 ms, then served
    assert time.monotonic() - started >= 0.1
    gw.wait_log(r'\[warn\] .*delaying request, excess: 0\.\d{3}, by zone "one"')


def test_limit_req_dry_run_only_logs(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(
        conf(
            b.port,
            "limit_req_zone $remote_addr zone=one:1m rate=1r/m;",
            "limit_req zone=one; limit_req_dry_run on; limit_req_log_level notice;",
        )
    )
    assert [get(gw.port)[0] for _ in range(2)] == [200, 200]
    gw.wait_log(r'\[notice\] .*limiting requests, dry run, excess: 1\.000 by zone "one"')
