"""Upstream keepalive through a real wsgate: ``keepalive``, ``keepalive_requests``,
``keepalive_timeout`` in an ``upstream`` block
(https://nginx.org/en/docs/http/ngx_http_upstream_module.html#keepalive).

The test upstreams (:mod:`tests.integration.loopback`) count the connections they accept, so
reuse is measured, not inferred.  Every client request uses its own client connection: only
the upstream side is pooled.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import Loop, get, loop_fixture, wait_for, ws_open

Factory = Callable[..., WsgateProcess]

bg = pytest.fixture(loop_fixture)


def conf(servers: str, upstream: str = "keepalive 4;", location: str = "") -> str:
    return f"""
events {{}}
http {{
  upstream backend {{ {servers} {upstream} }}
  server {{
    listen 127.0.0.1:0;
    location / {{
      proxy_pass http://backend;
      proxy_connect_timeout 1s;
      proxy_read_timeout 1s;
      {location}
    }}
  }}
}}
"""


def test_sequential_requests_reuse_one_connection(wsgate: Factory, bg: Loop) -> None:
    up = bg.backend("up")
    gw = wsgate(conf(f"server 127.0.0.1:{up.port};"))
    for _ in range(5):
        assert get(gw.port) == (200, b"up")
    assert (up.accepted, len(up.requests), up.open) == (1, 5, 1)
    assert b"connection:" not in up.requests[0].head.lower()


def test_without_keepalive_every_request_opens_a_connection(wsgate: Factory, bg: Loop) -> None:
    up = bg.backend("up")
    gw = wsgate(conf(f"server 127.0.0.1:{up.port};", upstream=""))
    for _ in range(3):
        assert get(gw.port) == (200, b"up")
    assert up.accepted == 3
    wait_for(lambda: up.open == 0, "upstream connections closed")


def test_keepalive_requests_caps_a_connection(wsgate: Factory, bg: Loop) -> None:
    up = bg.backend("up")
    gw = wsgate(conf(f"server 127.0.0.1:{up.port};", "keepalive 4; keepalive_requests 2;"))
    for _ in range(5):
        assert get(gw.port) == (200, b"up")
    assert up.accepted == 3
    assert [r.conn for r in up.requests] == [1, 1, 2, 2, 3]


def test_keepalive_timeout_closes_idle_connections(wsgate: Factory, bg: Loop) -> None:
    up = bg.backend("up")
    gw = wsgate(conf(f"server 127.0.0.1:{up.port};", "keepalive 4; keepalive_timeout 1s;"))
    assert get(gw.port) == (200, b"up")
    t0 = time.monotonic()
    wait_for(lambda: up.open == 0, "the idle connection to be closed", timeout=3)
    assert 0.8 < time.monotonic() - t0 < 2


def test_least_recently_used_is_closed_over_the_cap(wsgate: Factory, bg: Loop) -> None:
    a, b = bg.backend("a"), bg.backend("b")
    gw = wsgate(conf(f"server 127.0.0.1:{a.port}; server 127.0.0.1:{b.port};", "keepalive 1;"))
    assert get(gw.port) == (200, b"a")
    assert get(gw.port) == (200, b"b")
    wait_for(lambda: a.open == 0, "a's idle connection to be closed")
    assert b.open == 1
    assert get(gw.port) == (200, b"a")  # a new connection, which pushes b's out
    wait_for(lambda: b.open == 0, "b's idle connection to be closed")
    assert (a.accepted, b.accepted, a.open) == (2, 1, 1)


def test_upgrade_connections_are_never_reused(wsgate: Factory, bg: Loop) -> None:
    up = bg.backend("up", websocket=True)
    gw = wsgate(
        conf(
            f"server 127.0.0.1:{up.port};",
            location="proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $c;",
        ).replace("http {", "http {\n  map $http_upgrade $c { default upgrade; '' ''; }", 1)
    )
    ws_open(gw.port).close()
    wait_for(lambda: up.open == 0, "the tunnel's upstream connection to be closed")
    assert get(gw.port) == (200, b"up")
    assert up.accepted == 2
    # A request with Upgrade that got no 101 does not go back to the pool either.
    plain = bg.backend("plain")
    gw2 = wsgate(
        conf(
            f"server 127.0.0.1:{plain.port};",
            location="proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection '';",
        )
    )
    assert get(gw2.port, extra="Upgrade: websocket\r\n") == (200, b"plain")
    assert get(gw2.port) == (200, b"plain")
    assert get(gw2.port) == (200, b"plain")
    assert plain.accepted == 2


def test_upstream_closing_a_kept_connection_is_no_client_error(wsgate: Factory, bg: Loop) -> None:
    # Reads the second request on a connection and closes it unanswered: the race of an upstream
    # that closes an idle connection just as wsgate reuses it.
    racy = bg.backend("racy", drop_on_request=2)
    gw = wsgate(conf(f"server 127.0.0.1:{racy.port};"))
    for _ in range(4):
        assert get(gw.port) == (200, b"racy")
    # Requests 2-4 each meet a dropped kept connection and go out again on a new one.
    assert (racy.accepted, len(racy.requests)) == (4, 7)
    assert "[error]" not in gw.errors() and "[warn]" not in gw.errors()
    # An upstream that closes idle connections on its own: wsgate notices and drops them.
    idle = bg.backend("idle", idle_close=0.1)
    gw2 = wsgate(conf(f"server 127.0.0.1:{idle.port};"))
    assert get(gw2.port) == (200, b"idle")
    wait_for(lambda: idle.open == 0, "the upstream to close its idle connection")
    assert get(gw2.port) == (200, b"idle")
    assert idle.accepted == 2
    assert "[error]" not in gw2.errors()


def test_a_post_on_a_kept_connection_is_not_replayed(wsgate: Factory, bg: Loop) -> None:
    racy = bg.backend("racy", drop_on_request=2)
    gw = wsgate(conf(f"server 127.0.0.1:{racy.port};"))
    assert get(gw.port) == (200, b"racy")
    assert get(gw.port, method="POST", body=b"")[0] == 502
    assert len(racy.requests) == 2
