"""``limit_req``/``limit_conn`` accounting (:mod:`wsgate.limits`) and their configuration.

The arithmetic is nginx's ``ngx_http_limit_req_module.c`` with a millisecond clock passed in:
``excess = lr->excess - ctx->rate * ms / 1000 + 1000``, refused when ``excess > burst``,
delayed by ``(excess - delay) * 1000 / rate`` ms.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.model import Config
from wsgate.config.variables import RequestContext
from wsgate.errors import ConfigError
from wsgate.limits import ConnZone, LimitRegistry, ReqZone, check_requests

NODELAY = (2**63 - 1) // 1000 * 1000


def one(zone: ReqZone, now: int, burst: int = 0, delay: int = 0, key: str = "k") -> tuple:
    d = check_requests([(zone, key, burst * 1000, delay * 1000)], now)
    return d.rejected, d.excess, d.delay_ms


# -- limit_req ------------------------------------------------------------------------------
def test_rate_without_burst_allows_one_request_per_interval() -> None:
    zone = ReqZone("z", 1000)  # 1r/s
    assert one(zone, 0) == (None, 0, 0)
    assert one(zone, 10) == ("z", 990, 0)  # 0 - 1*10 + 1000 = 990 > burst 0
    assert one(zone, 999) == ("z", 1, 0)
    assert one(zone, 1000) == (None, 0, 0)  # exactly one interval later: at the limit
    assert one(zone, 1500) == ("z", 500, 0)


def test_burst_delays_each_excess_request_until_the_burst_is_used() -> None:
    zone = ReqZone("z", 1000)
    assert one(zone, 0, burst=2) == (None, 0, 0)
    assert one(zone, 0, burst=2) == (None, 1000, 1000)
    assert one(zone, 0, burst=2) == (None, 2000, 2000)  # at the burst: delayed, not refused
    assert one(zone, 0, burst=2) == ("z", 3000, 0)  # over it
    assert one(zone, 1000, burst=2) == (None, 2000, 2000)  # one interval drained one request


def test_nodelay_passes_the_burst_at_once() -> None:
    zone = ReqZone("z", 1000)
    results = [check_requests([(zone, "k", 2000, NODELAY)], 0) for _ in range(4)]
    assert [(r.rejected, r.delay_ms) for r in results] == [
        (None, 0),
        (None, 0),
        (None, 0),
        ("z", 0),
    ]


def test_delay_parameter_delays_only_beyond_it() -> None:
    zone = ReqZone("z", 2000)  # 2r/s
    got = [one(zone, 0, burst=4, delay=2) for _ in range(6)]
    # excess 0, 1000, 2000 are within delay=2; 3000 and 4000 wait (excess-2000)*1000/2000 ms.
    assert got == [
        (None, 0, 0),
        (None, 1000, 0),
        (None, 2000, 0),
        (None, 3000, 500),
        (None, 4000, 1000),
        ("z", 5000, 0),
    ]


def test_rate_per_minute_uses_nginx_integer_milli_rate() -> None:
    zone = ReqZone("z", 30 * 1000 // 60)  # rate=30r/m: 500 milli-requests per second
    assert one(zone, 0) == (None, 0, 0)
    assert one(zone, 1999)[0] == "z"
    assert one(zone, 2000) == (None, 0, 0)


def test_keys_are_independent_and_refusal_does_not_account() -> None:
    zone = ReqZone("z", 1000)
    assert one(zone, 0, key="a")[0] is None
    assert one(zone, 0, key="b")[0] is None
    assert one(zone, 0, key="a")[0] == "z"
    assert one(zone, 0, key="a") == ("z", 1000, 0)  # the refused request left excess at 0


def test_several_limits_first_refusal_wins_and_longest_delay_is_kept() -> None:
    slow, fast = ReqZone("slow", 1000), ReqZone("fast", 10000)
    limits = [(slow, "k", 5000, 0), (fast, "k", 5000, 0)]
    assert check_requests(limits, 0).delay_ms == 0
    d = check_requests(limits, 0)
    assert (d.zone, d.delay_ms, d.excess) == ("slow", 1000, 1000)  # fast would wait 100 ms
    tight = [(ReqZone("t", 1000), "k", 0, 0), (slow, "k", 5000, 0)]
    assert check_requests(tight, 0).rejected is None
    assert check_requests(tight, 0).rejected == "t"


def test_clock_going_backwards_is_clamped() -> None:
    zone = ReqZone("z", 1000)
    one(zone, 100_000, burst=5)
    assert one(zone, 99_000, burst=5) == (None, 1000, 1000)  # ms < 0 counts as 0


def test_idle_drained_keys_are_forgotten_after_a_minute() -> None:
    zone = ReqZone("z", 1000)
    one(zone, 0, key="a")
    one(zone, 70_000, key="b")
    assert set(zone.nodes) == {"b"}


def test_empty_limit_list_decides_nothing() -> None:
    assert check_requests([], 0).rejected is None


# -- limit_conn -----------------------------------------------------------------------------
def test_conn_zone_at_and_over_the_limit() -> None:
    zone = ConnZone("perip")
    assert zone.acquire("a", 2) and zone.acquire("a", 2)
    assert not zone.acquire("a", 2)  # over: "node->conn >= limit->conn"
    assert zone.acquire("b", 2)
    zone.release("a")
    assert zone.held("a") == 1 and zone.acquire("a", 2)
    zone.release("a")
    zone.release("a")
    assert "a" not in zone.counts


def test_registry_keeps_state_by_name_and_updates_rate() -> None:
    reg = LimitRegistry()
    z = reg.req_zone("one", 1000)
    assert reg.req_zone("one", 2000) is z and z.rate == 2000
    assert reg.conn_zone("perip") is reg.conn_zone("perip")


def test_binary_remote_addr() -> None:
    assert RequestContext(remote_addr="127.0.0.1").lookup("binary_remote_addr") == "\x7f\0\0\x01"
    assert len(RequestContext(remote_addr="::1").lookup("binary_remote_addr")) == 16
    assert RequestContext(remote_addr="unix:").lookup("binary_remote_addr") == ""


# -- configuration --------------------------------------------------------------------------
def conf(tmp_path: Path, http: str) -> Config:
    (tmp_path / "nginx.conf").write_text(f"events {{}}\nhttp {{\n{http}\n}}\n")
    return load("nginx.conf", prefix=str(tmp_path))


def error(tmp_path: Path, http: str) -> str:
    with pytest.raises(ConfigError) as info:
        conf(tmp_path, http)
    return str(info.value)


def test_zones_limits_and_inheritance(tmp_path: Path) -> None:
    cfg = conf(
        tmp_path,
        """
        limit_conn perip 10;
        limit_req zone=one burst=5 nodelay;
        limit_req_status 429;
        server {
          listen 127.0.0.1:0;
          location /a { proxy_pass http://127.0.0.1:1; }
          location /b { proxy_pass http://127.0.0.1:1; limit_conn perip 1; limit_conn persrv 2;
                        limit_req zone=one burst=2 delay=1; limit_conn_log_level warn; }
        }
        limit_conn_zone $binary_remote_addr zone=perip:10m;
        limit_conn_zone $server_name zone=persrv:1m;
        limit_req_zone $binary_remote_addr zone=one:10m rate=30r/m;
        """,
    )
    http = cfg.http
    assert http.limit_req_zones["one"].rate == 500 and http.limit_req_zones["one"].size == 10 << 20
    a, b = (loc.settings for loc in http.servers[0].locations)
    assert [(lc.zone.name, lc.conn) for lc in a.limit_conn] == [("perip", 10)]
    assert [(lr.zone.name, lr.burst, lr.delay) for lr in a.limit_req] == [("one", 5000, NODELAY)]
    assert a.limit_req_status == 429 and a.limit_conn_status == 503
    assert [(lc.zone.name, lc.conn) for lc in b.limit_conn] == [("perip", 1), ("persrv", 2)]
    assert [(lr.burst, lr.delay) for lr in b.limit_req] == [(2000, 1000)]
    assert b.limit_conn_log_level == "warn" and a.limit_conn_log_level == "error"
    assert b.limit_req_status == 429


@pytest.mark.parametrize(
    ("http", "message"),
    [
        ("server { limit_conn nope 1; }", 'zero size shared memory zone "nope"'),
        ("server { limit_req zone=nope; }", 'zero size shared memory zone "nope"'),
        ("limit_conn_zone $remote_addr zone=z;", 'invalid zone size "zone=z"'),
        ("limit_conn_zone $remote_addr zone=z:1k;", 'zone "zone=z:1k" is too small'),
        ("limit_conn_zone $remote_addr size=1m;", 'invalid parameter "size=1m"'),
        ("limit_req_zone $remote_addr zone=z:1m rate=0r/s;", 'invalid rate "rate=0r/s"'),
        ("limit_req_zone $remote_addr zone=z:1m rate=xr/m;", 'invalid rate "rate=xr/m"'),
        (
            "limit_conn_zone $remote_addr zone=z:1m; limit_conn_zone $host zone=z:1m;",
            'limit_conn_zone "z" is already bound to key "$remote_addr"',
        ),
        ("limit_conn_zone $nope zone=z:1m;", 'unknown "nope" variable'),
        (
            "limit_conn_zone $remote_addr zone=z:1m; server { limit_conn z 0; }",
            'invalid number of connections "0"',
        ),
        (
            "limit_conn_zone $remote_addr zone=z:1m; server { limit_conn z 65536; }",
            "connection limit must be less 65536",
        ),
        (
            "limit_conn_zone $remote_addr zone=z:1m; server { limit_conn z 1; limit_conn z 2; }",
            '"limit_conn" directive is duplicate',
        ),
        (
            "limit_req_zone $remote_addr zone=z:1m rate=1r/s; server { limit_req zone=z burst=0; }",
            'invalid burst value "burst=0"',
        ),
        (
            "limit_req_zone $remote_addr zone=z:1m rate=1r/s; server { limit_req burst=1; }",
            '"limit_req" must have "zone" parameter',
        ),
        ("server { limit_req_status 302; }", "value must be between 400 and 599"),
        ("server { limit_conn_log_level crit; }", 'invalid value "crit"'),
        ("server { limit_conn_dry_run maybe; }", 'invalid value "maybe"'),
        ("server { limit_conn_zone $remote_addr zone=z:1m; }", "is not allowed here"),
    ],
)
def test_limit_errors_name_the_line(tmp_path: Path, http: str, message: str) -> None:
    text = error(tmp_path, http)
    assert message in text and "nginx.conf:" in text, text
