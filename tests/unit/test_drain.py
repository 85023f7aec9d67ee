"""Drains and rebalancing without sockets: the arithmetic (:mod:`wsgate.upstream.drain`), a
draining peer under every balancing method, the directives, and the shared state a reload
writes (:class:`wsgate.server.control.SharedControl`)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.unit.test_methods import KEYS, FakeClock, every_method, peer, pick, three
from wsgate.config.loader import load
from wsgate.config.upstream import per_minute
from wsgate.errors import ConfigError
from wsgate.server.control import SharedControl
from wsgate.upstream.drain import drained, excess, key, moments, rebalance_window
from wsgate.upstream.methods import ConsistentHash, IpHash, LeastConn
from wsgate.upstream.roundrobin import Selection


# -- arithmetic -----------------------------------------------------------------------------------
def test_moments_are_spread_over_the_window() -> None:
    got = moments(300, 30.0, random.Random(1))
    assert len(got) == 300 and all(0 <= m < 30.0 for m in got)
    # One per slice of 0.1 s: every second of the window gets exactly 10.
    per_second = [0] * 30
    for m in got:
        per_second[int(m)] += 1
    assert per_second == [10] * 30
    assert got != sorted(got)  # dealt in a random order
    assert moments(0, 30.0) == []
    assert moments(3, 0.0) == [0.0, 0.0, 0.0]


def test_drained_configuration_then_commands() -> None:
    assert drained(["u|a"], {}) == {"u|a"}
    assert drained(["u|a"], {"u|a": False, "u|b": True}) == {"u|b"}
    assert key("u", "127.0.0.1:80") == "u|127.0.0.1:80"


def test_excess_by_weight() -> None:
    # 20 on a, a new b of the same weight: a keeps 10.
    assert excess({"a": 20}, {"a": 1, "b": 1}) == {"a": 10}
    # Odd totals round the share up: nobody gives up more than needed.
    assert excess({"a": 11}, {"a": 1, "b": 1}) == {"a": 5}
    # Weights 2:1:1 over 40: shares 20, 10, 10.
    assert excess({"a": 30, "b": 10}, {"a": 2, "b": 1, "c": 1}) == {"a": 10}
    # A server no longer in the group (removed, draining) gives up everything.
    assert excess({"a": 5, "gone": 3}, {"a": 1}) == {"gone": 3}
    assert excess({"a": 5, "b": 5}, {"a": 1, "b": 1}) == {}
    assert excess({}, {"a": 1}) == {}


def test_rebalance_window_bounds_the_rate() -> None:
    # Moving 10 of 20 at half the group a minute: 10 closes over 60 s.
    assert rebalance_window(10, 20, 0.5) == pytest.approx(60.0)
    assert rebalance_window(10, 20, 30.0) == pytest.approx(1.0)
    assert rebalance_window(0, 20, 0.5) == 0.0


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.1/m", 0.1),
        ("10%/m", 0.1),
        ("1/m", 1.0),
        ("100%/m", 1.0),
        ("30/m", 30.0),
        ("0.001/m", 0.001),
        ("0/m", None),
        ("0%/m", None),
        ("-1/m", None),
        ("1/s", None),
        ("%/m", None),
        ("1.2.3/m", None),
        ("1e3/m", None),
        ("/m", None),
    ],
)
def test_per_minute_at_and_over_its_limits(text: str, value: float | None) -> None:
    assert per_minute(text) == value


# -- balancing -------------------------------------------------------------------------------
def test_every_method_skips_a_draining_server() -> None:
    clock = FakeClock()
    for group in every_method(three(), clock):
        group.peers[1].drain = True
        keys = [f"10.0.{i}.1" for i in range(300)] if isinstance(group, IpHash) else KEYS[:300]
        got = {pick(group, k).host for k in keys}
        assert got == {"a", "c"}, type(group).__name__
        # A draining server is not counted in the tries (nginx: ``tries += (down == 0)``).
        assert group.start(keys[0]).tries == 2


def test_a_single_draining_server_gives_none() -> None:
    group = LeastConn("u", [peer("a", drain=True)], clock=FakeClock())
    assert Selection(group).next() is None


def test_consistent_hash_drain_moves_only_its_keys() -> None:
    group = ConsistentHash("u", three(), clock=FakeClock())
    before = {k: pick(group, k).host for k in KEYS[:3000]}
    group.peers[1].drain = True
    after = {k: pick(group, k).host for k in KEYS[:3000]}
    moved = {k for k in before if before[k] != after[k]}
    assert moved == {k for k in before if before[k] == "b"}
    group.peers[1].drain = False
    assert {k: pick(group, k).host for k in KEYS[:3000]} == before


def test_least_conn_counts_drop_as_drained_tunnels_close() -> None:
    group = LeastConn("u", three(), clock=FakeClock())
    held = [pick(group, release=False) for _ in range(9)]
    assert [p.conns for p in group.peers] == [3, 3, 3]
    group.peers[0].drain = True
    for p in held:
        if p is group.peers[0]:
            p.connection_closed()  # the drained tunnels end
    assert [p.conns for p in group.peers] == [0, 3, 3]
    assert {pick(group).host for _ in range(6)} == {"b", "c"}


# -- configuration --------------------------------------------------------------------------------
def write(tmp_path: Path, http: str, upstream: str = "") -> Path:
    f = tmp_path / "nginx.conf"
    f.write_text(
        f"events {{}} http {{ {http} upstream u {{ server 127.0.0.1:1; server 127.0.0.1:2 drain;"
        f" {upstream} }} upstream v {{ server 127.0.0.1:3; }} server {{ listen 127.0.0.1:0;"
        " location /c { upstream_control; } } }"
    )
    return f


def test_directives_and_inheritance(tmp_path: Path) -> None:
    c = load(str(write(tmp_path, "", "")))
    u, v = c.http.upstreams["u"], c.http.upstreams["v"]
    assert [s.drain for s in u.servers] == [False, True]
    assert (u.drain_time, u.rebalance, v.drain_time, v.rebalance) == (30.0, 0.0, 30.0, 0.0)
    c = load(
        str(
            write(
                tmp_path,
                "websocket_drain_time 10s; websocket_rebalance 20%/m;",
                "websocket_drain_time 0; websocket_rebalance off;",
            )
        )
    )
    u, v = c.http.upstreams["u"], c.http.upstreams["v"]
    assert (u.drain_time, u.rebalance, v.drain_time, v.rebalance) == (0.0, 0.0, 10.0, 0.2)


@pytest.mark.parametrize(
    ("http", "upstream", "error"),
    [
        ("websocket_rebalance 2;", "", 'invalid value "2" in "websocket_rebalance" directive'),
        ("", "websocket_drain_time soon;", '"websocket_drain_time" directive invalid value'),
        ("upstream_control;", "", '"upstream_control" directive is not allowed here'),
        ("", "websocket_drain_time 1s; websocket_drain_time 2s;", "is duplicate"),
        ("", "server 127.0.0.1:5 drain=1;", 'invalid parameter "drain=1"'),
    ],
)
def test_bad_directives(tmp_path: Path, http: str, upstream: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load(str(write(tmp_path, http, upstream)))


# -- the shared state a (re)load writes ------------------------------------------------------
def test_reload_replaces_drains_and_asks_for_a_rebalance_when_a_group_grows(
    tmp_path: Path,
) -> None:
    store = SharedControl(size=4096)
    one = tmp_path / "one"
    one.mkdir()
    store.configure(load(str(write(one, "websocket_rebalance 1/m;"))))
    data = store.doc.read()
    assert data["config"] == ["u|127.0.0.1:2"] and data["rebalance"] == {}
    store.command(["u|127.0.0.1:1"], True)
    assert store.doc.read()["runtime"] == {"u|127.0.0.1:1": True}
    # v grows by one server; u is unchanged; the run-time drain is forgotten.
    f = one / "nginx.conf"
    f.write_text(
        f.read_text().replace("server 127.0.0.1:3;", "server 127.0.0.1:3; server 127.0.0.1:4;")
    )
    store.configure(load(str(f)))
    data = store.doc.read()
    assert data["runtime"] == {}
    assert data["rebalance"] == {"v": [1, {"127.0.0.1:3": 1, "127.0.0.1:4": 1}, 1.0]}
    store.publish(1, {"u|127.0.0.1:1": 3})
    store.publish(1, None)
    assert store.doc.read()["tunnels"] == {}
