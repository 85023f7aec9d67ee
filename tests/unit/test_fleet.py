"""The pure parts of ``make fleet`` (fleet/, docs/fleet.md), which ``make test`` does not run:
the configurations it writes must load, the PROXY v2 header its probes send must parse as
wsgate reads it, and the ring and the figures must say what they claim."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fleet import conf, figures, report, ring
from fleet.hosts import find_tool
from fleet.load import proxy_v2_header

from wsgate.config.loader import load
from wsgate.http.proxy_protocol import ProxyHeader, parse

KEYS = [f"u{i}" for i in range(1000)]


def test_proxy_v2_header_is_what_wsgate_reads() -> None:
    data = proxy_v2_header("198.18.3.100", 40000, "198.18.0.11", 8080)
    header, used = parse(data + b"GET / HTTP/1.1\r\n")
    assert used == len(data)
    assert header == ProxyHeader("198.18.3.100", "198.18.0.11", 40000, 8080)


@pytest.mark.parametrize("on", [True, False])
def test_node_conf_loads(tmp_path: Path, on: bool) -> None:
    features = conf.Features(shutdown_grace=on, readiness=on, redis=on)
    path = tmp_path / "node.conf"
    path.write_text(conf.node_conf("node1", features, workers=2))
    config = load(str(path), prefix=str(tmp_path))
    assert set(config.http.upstreams) == {"app", "byip", "iphash", "single"}
    assert config.shutdown_grace == (conf.SHUTDOWN_GRACE if on else 0)


@pytest.mark.skipif(find_tool("haproxy") is None, reason="HAProxy is not installed")
def test_haproxy_cfg_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(conf.haproxy_cfg(str(tmp_path / "haproxy.sock")))
    proc = subprocess.run(
        [str(find_tool("haproxy")), "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dns_hosts_names_each_backend_and_the_shared_name() -> None:
    text = conf.dns_hosts(["backend2", "backend3"])
    assert text.splitlines() == [
        "198.18.0.22 backend2.fleet.test backends.fleet.test",
        "198.18.0.23 backend3.fleet.test backends.fleet.test",
    ]


def test_ring_moves_only_the_keys_of_the_backend_that_came_or_went() -> None:
    two = ring.owners(KEYS, ["backend1", "backend2"])
    three = ring.owners(KEYS, ["backend1", "backend2", "backend3"])
    added = ring.moved(two, three)
    assert added and all(three[k] == "backend3" for k in added)
    assert all(three[k] == two[k] for k in KEYS if k not in added)
    after = ring.owners(KEYS, ["backend2", "backend3"])
    removed = ring.moved(three, after)
    assert removed == {k for k in KEYS if three[k] == "backend1"}
    # About a third of the keys each time (ketama: 160 points per server).
    assert 200 < len(added) < 500 and 200 < len(removed) < 500


def _probe(owner: dict[str, str], odd: dict[str, str] | None = None) -> figures.Probe:
    odd = odd or {}
    return {
        k: {n: [odd.get(k, b) if n == "node2" else b] for n in conf.NODES} for k, b in owner.items()
    }


def test_routing_snapshot_and_dns_change() -> None:
    keys = KEYS[:200]
    before = ring.owners(keys, ["backend1", "backend2"])
    after = ring.owners(keys, ["backend1", "backend2", "backend3"])
    snap = figures.routing_snapshot(_probe(before), before)
    assert snap["ok"] and snap["agree"] == snap["match_ring"] == 200
    converged = {"node1": 1.0, "node2": 1.5, "node3": 2.0}
    good = figures.dns_change(
        "dns_add", [], [], _probe(before), _probe(after), before, after, converged
    )
    assert good["ok"] and good["convergence_spread_s"] == 1.0
    assert {n["moved"] for n in good["nodes"].values()} == {len(ring.moved(before, after))}
    # node2 still sends one key that should have stayed somewhere else: caught on node2 only.
    stay = next(k for k in keys if before[k] == after[k])
    other = "backend2" if after[stay] == "backend1" else "backend1"
    bad = figures.dns_change(
        "dns_add",
        [],
        [],
        _probe(before),
        _probe(after, {stay: other}),
        before,
        after,
        converged,
    )
    assert not bad["ok"]
    assert bad["nodes"]["node2"]["unexpected_moves"] == 1
    assert bad["nodes"]["node1"]["same_as_expected"]


def test_access_logs_must_show_the_client_never_the_balancer() -> None:
    clients = {"198.18.0.100", "198.18.1.100"}
    good = '198.18.1.100 198.18.0.2 "/ws?user=u1&c=0" 101 198.18.0.22:9000 1000/1000\n'
    assert figures.access_logs([good], clients, "198.18.0.2")["ok"]
    bad = good + '198.18.0.2 198.18.0.2 "/ws?user=u2&c=0" 101 198.18.0.22:9000 1000/1000\n'
    summary = figures.access_logs([bad], clients, "198.18.0.2")
    assert not summary["ok"] and summary["remote_addr_is_the_balancer"] == 1


def _sample(t: float, max_user: int, over: int, over_opens: int) -> dict[str, object]:
    return {
        "t": t,
        "max_user": max_user,
        "peak_user": max_user,
        "over_cap": over,
        "open": 1500,
        "delta": {"over_cap_opens": over_opens},
    }


def test_redis_recovery_tells_admission_from_holding() -> None:
    raw = {"events": {"redis_down": 100.0, "redis_up": 101.0}}
    # Openings over the cap stop 1 s after Redis is back, and the excess ends 3 s later.
    samples = [_sample(99.5, 5, 0, 0)]
    samples += [
        _sample(100.5 + i, 7 if i < 5 else 5, 9 if i < 5 else 0, 4 if i < 3 else 0)
        for i in range(12)
    ]
    # The excess closed with 1013 (t, cid, node, backend, code, ...); a 1001 is not counted.
    closes = [
        [t, 0, "node1", "backend1", code, 0, 1.0, 0.0]
        for t, code in ((102.5, 1013), (103.0, 1013), (103.25, 1001), (99.0, 1013))
    ]
    got = report._redis(raw, samples, closes)
    assert got["admission_back_after_s"] == 1.5 and got["holding_back_after_s"] == 4.5
    assert got["ok"]
    assert got["closed_over_cap"] == 2 and got["closed_over_cap_from_to_s"] == [1.5, 2.0]
    # The excess never ends: admission recovers, holding does not, and the check fails.
    stuck = [_sample(100.5 + i, 7, 9, 4 if i < 3 else 0) for i in range(12)]
    got = report._redis(raw, stuck, [])
    assert got["holding_back_after_s"] is None and not got["ok"]
    assert got["closed_over_cap"] == 0 and got["closed_over_cap_from_to_s"] is None


def test_the_committed_result_renders() -> None:
    result = json.loads((Path(__file__).parents[2] / "fleet/results/last.json").read_text())
    text = report.render(result)
    assert "checks:" in text and text.count("[PASS]") + text.count("[FAIL]") == len(
        result["checks"]
    )
