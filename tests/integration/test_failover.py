"""Passive health and failover through a real wsgate: ``proxy_next_upstream`` and the
``server`` parameters ``max_fails``, ``fail_timeout``, ``backup`` and ``max_conns``.

Upstreams are scripted servers on loopback (:mod:`tests.integration.loopback`): one that
refuses (a closed port), one that accepts and never answers, ones that answer a given status.
Expected behaviour is nginx's (NGINX-SEMANTICS.md §7-§8,
https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_next_upstream).  The access log
records ``$status|$upstream_addr|$upstream_status`` for each request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import (
    Loop,
    dead_port,
    get,
    loop_fixture,
    silent,
    status,
    ws_open,
)

Factory = Callable[..., WsgateProcess]

bg = pytest.fixture(loop_fixture)

WS_HEADERS = " proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade;"


def conf(servers: str, location: str = "") -> str:
    return f"""
events {{}}
http {{
  log_format up '$status|$upstream_addr|$upstream_status';
  access_log logs/access.log up;
  upstream backend {{ {servers} }}
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


def addr(port: int) -> str:
    return f"127.0.0.1:{port}"


def last_line(gw: WsgateProcess, count: int) -> str:
    return gw.access_lines(count)[count - 1]


def test_refused_server_passes_to_the_next(wsgate: Factory, bg: Loop) -> None:
    dead = dead_port()
    live = bg.backend("live")
    gw = wsgate(conf(f"server {addr(dead)}; server {addr(live.port)};"))
    assert get(gw.port) == (200, b"live")
    assert last_line(gw, 1) == f"200|{addr(dead)}, {addr(live.port)}|502, 200"
    assert "connect() failed (111: Connection refused) while connecting to upstream" in gw.errors()


def test_upstream_response_time_lists_every_try(wsgate: Factory, bg: Loop) -> None:
    mute = bg.backend("mute", silent)
    live = bg.backend("live")
    gw = wsgate(
        conf(f"server {addr(mute.port)}; server {addr(live.port)};").replace(
            "'$status|$upstream_addr|$upstream_status'",
            "'$upstream_status|$upstream_response_time'",
        )
    )
    assert get(gw.port) == (200, b"live")
    statuses, times = last_line(gw, 1).split("|")
    assert statuses == "504, 200"
    first, second = (float(t) for t in times.split(", "))
    # The silent server held the try for proxy_read_timeout (1 s); the live one answered.
    assert 0.9 < first < 3 and 0 <= second < first


def test_silent_server_times_out_to_the_next(wsgate: Factory, bg: Loop) -> None:
    mute = bg.backend("mute", silent)
    live = bg.backend("live")
    gw = wsgate(conf(f"server {addr(mute.port)}; server {addr(live.port)};"))
    t0 = time.monotonic()
    assert get(gw.port) == (200, b"live")
    assert 0.9 < time.monotonic() - t0 < 3
    assert last_line(gw, 1) == f"200|{addr(mute.port)}, {addr(live.port)}|504, 200"
    assert "upstream timed out (110: Connection timed out) while reading response header" in (
        gw.errors()
    )


def test_every_try_timing_out_is_504(wsgate: Factory, bg: Loop) -> None:
    a, b = bg.backend("a", silent), bg.backend("b", silent)
    gw = wsgate(conf(f"server {addr(a.port)}; server {addr(b.port)};"))
    assert get(gw.port)[0] == 504
    assert last_line(gw, 1) == f"504|{addr(a.port)}, {addr(b.port)}|504, 504"


def test_next_upstream_timeout_stops_retrying(wsgate: Factory, bg: Loop) -> None:
    mute = bg.backend("mute", silent)
    live = bg.backend("live")
    gw = wsgate(
        conf(
            f"server {addr(mute.port)}; server {addr(live.port)};",
            "proxy_next_upstream_timeout 1s;",
        )
    )
    assert get(gw.port)[0] == 504
    assert last_line(gw, 1) == f"504|{addr(mute.port)}|504"
    assert live.requests == []


@pytest.mark.parametrize("listed", [True, False])
def test_http_502_next_only_when_listed(wsgate: Factory, bg: Loop, listed: bool) -> None:
    bad = bg.backend("bad", status(502, "Bad Gateway"))
    live = bg.backend("live")
    nu = "proxy_next_upstream error timeout http_502;" if listed else ""
    gw = wsgate(conf(f"server {addr(bad.port)}; server {addr(live.port)};", nu))
    if listed:
        assert get(gw.port) == (200, b"live")
        assert last_line(gw, 1) == f"200|{addr(bad.port)}, {addr(live.port)}|502, 200"
        # Listed and retried: a failure (max_fails=1), so the next requests skip it.
        assert "upstream server temporarily disabled" in gw.errors()
        assert [get(gw.port)[1] for _ in range(3)] == [b"live"] * 3
        assert len(bad.requests) == 1
    else:
        # The upstream's own 502 reaches the client, and it is no failure.
        assert get(gw.port) == (502, b"bad 502")
        assert last_line(gw, 1) == f"502|{addr(bad.port)}|502"
        assert [get(gw.port)[1] for _ in range(3)] == [b"live", b"bad 502", b"live"]


def test_last_listed_response_passes_through(wsgate: Factory, bg: Loop) -> None:
    a, b = bg.backend("a", status(503)), bg.backend("b", status(503))
    gw = wsgate(
        conf(
            f"server {addr(a.port)}; server {addr(b.port)};",
            "proxy_next_upstream error timeout http_503;",
        )
    )
    assert get(gw.port) == (503, b"b 503")
    assert last_line(gw, 1) == f"503|{addr(a.port)}, {addr(b.port)}|503, 503"


def test_404_is_retried_but_never_counts(wsgate: Factory, bg: Loop) -> None:
    missing = bg.backend("missing", status(404, "Not Found"))
    live = bg.backend("live")
    gw = wsgate(
        conf(
            f"server {addr(missing.port)}; server {addr(live.port)};",
            "proxy_next_upstream error timeout http_404;",
        )
    )
    assert [get(gw.port)[1] for _ in range(3)] == [b"live"] * 3
    # Round robin keeps sending every other request to it: 404 is no failure (max_fails=1).
    assert len(missing.requests) == 2
    assert "temporarily disabled" not in gw.errors()
    assert gw.access_lines(3)[2] == f"200|{addr(missing.port)}, {addr(live.port)}|404, 200"


def test_invalid_header_is_an_error_only_retried_when_listed(wsgate: Factory, bg: Loop) -> None:
    def broken(backend: object, request: object) -> bytes:
        return b"HTTP/1.1 200 OK\r\nBad Header\r\nContent-Length: 0\r\n\r\n"

    bad = bg.backend("bad", broken)
    live = bg.backend("live")
    servers = f"server {addr(bad.port)}; server {addr(live.port)};"
    gw = wsgate(conf(servers))
    assert get(gw.port)[0] == 502
    assert last_line(gw, 1) == f"502|{addr(bad.port)}|502"
    assert "upstream sent invalid header" in gw.errors()
    gw2 = wsgate(conf(servers, "proxy_next_upstream error invalid_header;"))
    assert get(gw2.port) == (200, b"live")
    assert last_line(gw2, 1) == f"200|{addr(bad.port)}, {addr(live.port)}|502, 200"


@pytest.mark.parametrize(
    ("head", "log"),
    [
        (
            b"Content-Length: 1\r\nContent-Length: 2",
            'upstream sent duplicate header line: "Content-Length: 2"',
        ),
        (
            b"Content-Length: 1\r\nTransfer-Encoding: chunked",
            'upstream sent "Content-Length" and "Transfer-Encoding" headers at the same time',
        ),
        (b"Transfer-Encoding: gzip", 'upstream sent unknown "Transfer-Encoding": "gzip"'),
    ],
)
def test_bad_framing_headers_are_invalid_header(
    wsgate: Factory, bg: Loop, head: bytes, log: str
) -> None:
    """nginx returns ``NGX_HTTP_UPSTREAM_INVALID_HEADER`` for these (ngx_http_upstream.c,
    ``ngx_http_upstream_process_content_length``/``_transfer_encoding``): with the default
    ``proxy_next_upstream error timeout`` the next server is not tried."""

    def broken(backend: object, request: object) -> bytes:
        return b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\n"

    bad = bg.backend("bad", broken)
    live = bg.backend("live")
    servers = f"server {addr(bad.port)}; server {addr(live.port)};"
    gw = wsgate(conf(servers))
    assert get(gw.port)[0] == 502
    assert last_line(gw, 1) == f"502|{addr(bad.port)}|502"
    assert log in gw.errors()
    gw2 = wsgate(conf(servers, "proxy_next_upstream error invalid_header;"))
    assert get(gw2.port) == (200, b"live")
    assert last_line(gw2, 1) == f"200|{addr(bad.port)}, {addr(live.port)}|502, 200"


def test_max_fails_window_then_probe(wsgate: Factory, bg: Loop) -> None:
    dead = dead_port()
    live = bg.backend("live")
    gw = wsgate(conf(f"server {addr(dead)} max_fails=2 fail_timeout=1s; server {addr(live.port)};"))

    def tried_dead(start: int, count: int) -> int:
        lines = gw.access_lines(start + count)[start : start + count]
        assert all(line.startswith("200|") for line in lines), lines
        return sum(addr(dead) in line for line in lines)

    for _ in range(6):
        assert get(gw.port) == (200, b"live")
    # Round robin reaches the dead server every other request until its second failure; then
    # it is skipped for fail_timeout.
    assert tried_dead(0, 6) == 2
    assert gw.errors().count("upstream server temporarily disabled") == 1
    time.sleep(2.1)  # whole seconds, as nginx: now - checked > fail_timeout
    for _ in range(2):
        assert get(gw.port) == (200, b"live")
    assert tried_dead(6, 2) == 1  # one probe after the window


def test_every_server_down_is_502_then_no_live_upstreams(wsgate: Factory) -> None:
    d1, d2 = dead_port(), dead_port()
    gw = wsgate(conf(f"server {addr(d1)}; server {addr(d2)};"))
    assert get(gw.port)[0] == 502
    assert last_line(gw, 1) == f"502|{addr(d1)}, {addr(d2)}|502, 502"
    assert get(gw.port)[0] == 502
    assert last_line(gw, 2) == "502|backend|502"
    assert "no live upstreams while connecting to upstream" in gw.errors()
    assert 'upstream: "http://backend/"' in gw.errors()


def test_backup_only_when_primaries_are_down(wsgate: Factory, bg: Loop) -> None:
    live, spare = bg.backend("live"), bg.backend("spare")
    dead = dead_port()
    gw = wsgate(
        conf(f"server {addr(live.port)}; server {addr(dead)}; server {addr(spare.port)} backup;")
    )
    assert [get(gw.port)[1] for _ in range(4)] == [b"live"] * 4
    assert spare.requests == []
    gw2 = wsgate(conf(f"server {addr(dead)}; server {addr(spare.port)} backup;"))
    assert get(gw2.port) == (200, b"spare")
    assert last_line(gw2, 1) == f"200|{addr(dead)}, {addr(spare.port)}|502, 200"


def test_max_conns_counts_open_tunnels(wsgate: Factory, bg: Loop) -> None:
    big = bg.backend("big", websocket=True)
    small = bg.backend("small", websocket=True)
    # Without max_conns, weight 10 would send both handshakes to "big".
    gw = wsgate(
        conf(
            f"server {addr(big.port)} weight=10 max_conns=1; server {addr(small.port)};",
            WS_HEADERS,
        )
    )
    first = ws_open(gw.port)
    second = ws_open(gw.port)
    assert (len(big.requests), len(small.requests)) == (1, 1)
    first.close()
    gw.access_lines(1)  # the first tunnel has ended and released its slot
    third = ws_open(gw.port)
    assert (len(big.requests), len(small.requests)) == (2, 1)
    second.close()
    third.close()
    gw.access_lines(3)


def test_websocket_handshake_is_retried_before_the_101(wsgate: Factory, bg: Loop) -> None:
    bad = bg.backend("bad", status(502, "Bad Gateway"))
    good = bg.backend("good", websocket=True)
    dead = dead_port()
    gw = wsgate(
        conf(
            f"server {addr(dead)}; server {addr(bad.port)}; server {addr(good.port)};",
            "proxy_next_upstream error timeout http_502;" + WS_HEADERS,
        )
    )
    ws_open(gw.port).close()
    assert last_line(gw, 1) == (
        f"101|{addr(dead)}, {addr(bad.port)}, {addr(good.port)}|502, 502, 101"
    )


@pytest.mark.parametrize("listed", [True, False])
def test_post_sent_is_retried_only_with_non_idempotent(
    wsgate: Factory, bg: Loop, listed: bool
) -> None:
    dropper = bg.backend("dropper", drop_on_request=1)  # reads the request, closes unanswered
    live = bg.backend("live")
    nu = "proxy_next_upstream error timeout non_idempotent;" if listed else ""
    gw = wsgate(conf(f"server {addr(dropper.port)}; server {addr(live.port)};", nu))
    code, _ = get(gw.port, method="POST", body=b"")
    assert code == (200 if listed else 502)
    assert len(live.requests) == (1 if listed else 0)
    assert "upstream prematurely closed connection while reading response header" in gw.errors()
    # A GET is retried after it was sent either way.
    gw2 = wsgate(conf(f"server {addr(dropper.port)}; server {addr(live.port)};"))
    assert get(gw2.port) == (200, b"live")


def test_post_not_yet_sent_is_retried(wsgate: Factory, bg: Loop) -> None:
    live = bg.backend("live")
    gw = wsgate(conf(f"server {addr(dead_port())}; server {addr(live.port)};"))
    assert get(gw.port, method="POST", body=b"hello") == (200, b"live")
    assert live.requests[0].body == b"hello"


def test_post_with_streamed_body_is_never_retried(wsgate: Factory, bg: Loop) -> None:
    dropper = bg.backend("dropper", drop_on_request=1)
    live = bg.backend("live")
    gw = wsgate(
        conf(
            f"server {addr(dropper.port)}; server {addr(live.port)};",
            "proxy_next_upstream error timeout non_idempotent; proxy_request_buffering off;",
        )
    )
    assert get(gw.port, method="PUT", body=b"data")[0] == 502
    assert live.requests == []


def test_next_upstream_tries_and_off(wsgate: Factory, bg: Loop) -> None:
    d1, d2, d3 = dead_port(), dead_port(), dead_port()
    live = bg.backend("live")
    servers = f"server {addr(d1)}; server {addr(d2)}; server {addr(d3)}; server {addr(live.port)};"
    gw = wsgate(conf(servers, "proxy_next_upstream_tries 2;"))
    assert get(gw.port)[0] == 502
    assert last_line(gw, 1) == f"502|{addr(d1)}, {addr(d2)}|502, 502"
    gw2 = wsgate(conf(servers, "proxy_next_upstream off;"))
    assert get(gw2.port)[0] == 502
    assert last_line(gw2, 1) == f"502|{addr(d1)}|502"
    gw3 = wsgate(conf(servers))  # 0: as many tries as servers
    assert get(gw3.port) == (200, b"live")
    assert last_line(gw3, 1).endswith("|502, 502, 502, 200")
