"""``limit_conn`` and ``limit_req`` through a real wsgate.

https://nginx.org/en/docs/http/ngx_http_limit_conn_module.html ("A connection is counted only if
it has a request being processed by the server"; a WebSocket tunnel's request lasts until the
tunnel closes) and https://nginx.org/en/docs/http/ngx_http_limit_req_module.html (burst,
nodelay, delay).
"""

from __future__ import annotations

import os
import signal
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


# -- across workers ------------------------------------------------------------------------------
def _pid_of_tunnel(sock_port: int, pids: list[int]) -> int:
    """The worker whose socket is the server end of the client connection from ``sock_port``."""
    inodes = {}
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            f = line.split()
            if int(f[2].split(":")[1], 16) == sock_port:
                inodes[f[9]] = True
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return pid
    raise AssertionError(f"no worker holds the connection from port {sock_port}")


def test_limit_conn_is_shared_by_workers_and_a_killed_worker_frees_its_slots(
    bg: Loop, wsgate: Factory
) -> None:
    """Four workers, ``limit_conn perip 3``: whichever workers carry the three tunnels, a
    fourth request is refused on any worker; a SIGKILLed worker's slots come back."""
    b = bg.backend("b", websocket=True)
    gw = wsgate(
        "worker_processes 4;\n"
        + conf(b.port, "limit_conn_zone $binary_remote_addr zone=perip:1m;", "limit_conn perip 3;")
    )
    wait_for(lambda: len(gw.worker_pids()) == 4, "four workers")
    tunnels = [ws_open(gw.port) for _ in range(3)]  # at the limit
    try:
        owners = [_pid_of_tunnel(t.getsockname()[1], gw.worker_pids()) for t in tunnels]
        # Over the limit, whichever worker takes the request (each on a new connection).
        assert [get(gw.port)[0] for _ in range(12)] == [503] * 12
        victim = owners[0]
        held = owners.count(victim)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in gw.worker_pids(), "the worker to die")
        # Its tunnels are gone and so are their slots: exactly `held` requests fit again.
        for _ in range(held):
            tunnels.append(ws_open(gw.port))
        assert get(gw.port)[0] == 503
    finally:
        for t in tunnels:
            t.close()
    gw.wait_log(rf"worker process {victim} exited on signal 9")
    # The fixture fails on [alert]: this one was expected.
    log = gw.error_log.read_text().replace("[alert]", "[ALERT-expected]")
    gw.error_log.write_text(log)


def test_limit_req_burst_is_shared_by_workers(bg: Loop, wsgate: Factory) -> None:
    """rate=1r/m burst=2 nodelay over four workers: exactly three requests of twelve pass."""
    b = bg.backend("b")
    gw = wsgate(
        "worker_processes 4;\n"
        + conf(
            b.port,
            "limit_req_zone $binary_remote_addr zone=r:1m rate=1r/m;",
            "limit_req zone=r burst=2 nodelay;",
        )
    )
    wait_for(lambda: len(gw.worker_pids()) == 4, "four workers")
    statuses = [get(gw.port)[0] for _ in range(12)]
    assert statuses == [200] * 3 + [503] * 9
    assert len(b.paths) == 3
