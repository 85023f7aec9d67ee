"""wsgate.upstream.roundrobin: smooth WRR, passive failure accounting, backups, max_conns."""

from __future__ import annotations

from typing import Any

from wsgate.config.model import UpstreamServer
from wsgate.upstream.roundrobin import Peer, PeerGroup, Selection, peers_from_config


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def peer(name: str, **kw: Any) -> Peer:
    return Peer(f"{name}:80", name, 80, **kw)


def one_request(group: PeerGroup) -> str:
    sel = group.start()
    p = sel.next()
    assert p is not None
    sel.succeed(p)
    sel.release(p)
    return p.host


def picks(group: PeerGroup, n: int) -> list[str]:
    return [one_request(group) for _ in range(n)]


def pick_until(group: PeerGroup, target: Peer, limit: int = 4) -> Selection:
    """Run requests until ``target`` is picked (within ``limit``); return that selection open."""
    for _ in range(limit):
        sel = group.start()
        p = sel.next()
        assert p is not None
        if p is target:
            return sel
        sel.succeed(p)
        sel.release(p)
    raise AssertionError(f"{target} not picked in {limit} requests")


def test_smooth_weighted_sequence() -> None:
    # NGINX-SEMANTICS.md §7 [obs]: weights 5,1,1 give a a b a c a a
    group = PeerGroup("up", [peer("a", weight=5), peer("b"), peer("c")], clock=FakeClock())
    assert picks(group, 14) == list("aabacaa" * 2)


def test_equal_weights_rotate_in_config_order() -> None:
    group = PeerGroup("up", [peer("a"), peer("b"), peer("c")], clock=FakeClock())
    assert picks(group, 6) == list("abcabc")


def test_failover_within_one_request_tries_each_peer_once() -> None:
    clock = FakeClock()
    a, b, c = peer("a"), peer("b"), peer("c")
    group = PeerGroup("up", [a, b, c], clock=clock)
    sel = group.start()
    assert sel.tries == 3
    order = []
    while (p := sel.next()) is not None:
        order.append(p.host)
        assert sel.fail(p) is True  # max_fails=1: disabled at the first failure
    assert order == ["a", "b", "c"]
    assert sel.tries == 0
    assert (a.fails, a.conns, a.accessed, a.checked) == (1, 0, 1000, 1000)
    # every peer is now inside its fail_timeout: no live upstreams
    assert group.start().next() is None


def test_fail_timeout_window_in_whole_seconds() -> None:
    clock = FakeClock(100.9)
    a, b = peer("a"), peer("b")
    group = PeerGroup("up", [a, b], clock=clock)
    sel = group.start()
    first = sel.next()
    assert first is a
    assert sel.fail(a)
    assert sel.next() is b
    for t in (101.0, 105.5, 110.99):  # now - checked <= fail_timeout (10): a is skipped
        clock.now = t
        assert picks(group, 3) == ["b", "b", "b"]
    clock.now = 111.0
    sel = pick_until(group, a)  # eligible again after fail_timeout; checked moves to now
    assert a.checked == 111
    sel.succeed(a)
    sel.release(a)
    assert a.fails == 0  # accessed (100) < checked (111): the check passed


def test_probe_that_fails_disables_again() -> None:
    clock = FakeClock(0)
    a, b = peer("a"), peer("b")
    group = PeerGroup("up", [a, b], clock=clock)
    sel = group.start()
    assert sel.next() is a
    sel.fail(a)
    clock.now = 11
    sel = pick_until(group, a)
    assert sel.fail(a) is True
    assert a.fails == 2
    clock.now = 12
    assert picks(group, 2) == ["b", "b"]


def test_failures_inside_window_add_up_across_successes() -> None:
    clock = FakeClock(0)
    a, b = peer("a", max_fails=2), peer("b", max_fails=2)
    group = PeerGroup("up", [a, b], clock=clock)
    sel = group.start()
    assert sel.next() is a
    assert sel.fail(a) is False  # 1 of 2: still eligible
    assert a.fails == 1
    clock.now = 5
    sel = group.start()
    p = sel.next()
    assert p is b
    sel = group.start()
    assert sel.next() is a
    sel.succeed(a)  # accessed == checked == 0: no reset
    sel.release(a)
    assert a.fails == 1
    clock.now = 6
    sel = group.start()
    assert sel.next() is b  # b's turn
    sel.release(b)
    sel = group.start()
    assert sel.next() is a
    assert sel.fail(a) is True
    assert a.fails == 2
    clock.now = 17
    sel = pick_until(group, a)  # 17 - 6 > 10: probe
    sel.succeed(a)
    assert a.fails == 0


def test_effective_weight_drops_on_failure_and_recovers() -> None:
    clock = FakeClock()
    a, b = peer("a", weight=4, max_fails=2), peer("b", weight=4, max_fails=2)
    group = PeerGroup("up", [a, b], clock=clock)
    sel = group.start()
    assert sel.next() is a
    sel.fail(a)
    assert a.effective_weight == 2
    assert sel.next() is b
    sel.succeed(b)
    for _ in range(4):
        one_request(group)
    assert a.effective_weight == 4  # +1 each time it takes part in a selection


def test_effective_weight_not_below_zero_and_max_fails_zero() -> None:
    clock = FakeClock()
    a = peer("a", weight=1, max_fails=0)
    b = peer("b", weight=3, max_fails=1)
    group = PeerGroup("up", [a, b], clock=clock)
    sel = group.start()
    first = sel.next()
    assert first is b
    assert sel.fail(b) is True
    assert b.effective_weight == 0
    assert sel.next() is a
    assert sel.fail(a) is False  # max_fails=0 never disables
    assert a.effective_weight == 1
    assert group.start().next() is a


def test_single_server_ignores_failures_and_has_no_retry() -> None:
    clock = FakeClock()
    only = peer("only")
    group = PeerGroup("up", [only], clock=clock)
    assert group.single
    sel = group.start()
    assert sel.tries == 1
    assert sel.next() is only
    assert sel.fail(only) is False
    assert sel.tries == 0
    assert (only.fails, only.conns, only.effective_weight) == (0, 0, 1)
    for _ in range(3):
        s = group.start()
        p = s.next()
        assert p is only
        s.fail(p)
    assert group.start().next() is only


def test_single_server_down_or_full() -> None:
    only = peer("only", down=True)
    group = PeerGroup("up", [only], clock=FakeClock())
    sel = group.start()
    assert sel.tries == 0
    assert sel.next() is None
    only.down = False
    only.max_conns = 1
    first = group.start()
    assert first.next() is only
    assert group.start().next() is None
    first.release(only)
    assert group.start().next() is only


def test_one_primary_with_backup_is_not_single() -> None:
    clock = FakeClock()
    a, bk = peer("a"), peer("bk")
    group = PeerGroup("up", [a], backups=[bk], clock=clock)
    assert not group.single
    sel = group.start()
    assert sel.tries == 2
    assert sel.next() is a
    assert sel.fail(a) is True
    assert sel.next() is bk
    assert sel.on_backups
    sel.succeed(bk)
    # the next request also goes to the backup while a is disabled
    assert picks(group, 2) == ["bk", "bk"]
    clock.now += 11
    assert picks(group, 1) == ["a"]


def test_backups_only_when_no_primary_is_eligible() -> None:
    clock = FakeClock()
    a, b = peer("a"), peer("b")
    x, y = peer("x", weight=2), peer("y")
    group = PeerGroup("up", [a, b], backups=[x, y], clock=clock)
    assert picks(group, 4) == ["a", "b", "a", "b"]
    sel = group.start()
    assert sel.tries == 4
    order = []
    while (p := sel.next()) is not None:
        order.append(p.host)
        sel.fail(p)
    assert order == ["a", "b", "x", "y"]
    assert sel.next() is None


def test_request_stays_on_backups_once_there() -> None:
    clock = FakeClock()
    a, b, x = peer("a"), peer("b", max_conns=1), peer("x")
    group = PeerGroup("up", [a, b], backups=[x], clock=clock)
    holder = group.start()
    assert holder.next() is a
    assert holder.next() is b  # holds b's only slot
    sel = group.start()
    assert sel.next() is a
    sel.fail(a)
    assert sel.next() is x  # b is full, a failed: backups
    holder.release(b)
    sel.fail(x)
    assert sel.next() is None  # no return to the primaries within this request


def test_backup_flag_in_peers_list_moves_to_backups() -> None:
    a, x = peer("a"), peer("x", backup=True)
    group = PeerGroup("up", [a, x], clock=FakeClock())
    assert group.peers == (a,)
    assert group.backups == (x,)
    assert not group.single


def test_all_down_is_no_live_upstreams() -> None:
    group = PeerGroup(
        "up", [peer("a", down=True), peer("b", down=True)], [peer("x", down=True)], FakeClock()
    )
    sel = group.start()
    assert sel.tries == 0
    assert sel.next() is None


def test_down_peers_are_skipped_and_not_counted() -> None:
    group = PeerGroup("up", [peer("a"), peer("b", down=True), peer("c")], clock=FakeClock())
    assert group.start().tries == 2
    assert picks(group, 4) == ["a", "c", "a", "c"]


def test_max_conns_limits_concurrent_picks() -> None:
    a, b = peer("a", max_conns=1), peer("b", max_conns=1)
    group = PeerGroup("up", [a, b], clock=FakeClock())
    s1, s2, s3 = group.start(), group.start(), group.start()
    assert s1.next() is a
    assert s2.next() is b
    assert (a.conns, b.conns) == (1, 1)
    assert s3.next() is None
    s1.release(a)
    assert a.conns == 0
    assert group.start().next() is a


def test_release_is_once_per_pick_and_fail_releases() -> None:
    a, b = peer("a"), peer("b")
    group = PeerGroup("up", [a, b], clock=FakeClock())
    sel = group.start()
    assert sel.next() is a
    assert a.conns == 1
    sel.succeed(a)
    assert a.conns == 1  # still in use (a tunnel, say)
    sel.release(a)
    sel.release(a)
    assert a.conns == 0
    other: Selection = group.start()
    p = other.next()
    assert p is b
    other.fail(b)
    other.release(b)
    assert b.conns == 0


def test_tries_count_down_on_each_outcome() -> None:
    group = PeerGroup("up", [peer("a"), peer("b"), peer("c")], clock=FakeClock())
    sel = group.start()
    p = sel.next()
    assert p is not None
    sel.fail(p)
    assert sel.tries == 2
    p = sel.next()
    assert p is not None
    sel.succeed(p)
    assert sel.tries == 1


def test_peers_from_config() -> None:
    peers = peers_from_config(
        [
            UpstreamServer("127.0.0.1:8010", "127.0.0.1", 8010, weight=3),
            UpstreamServer("localhost:8011", "::1", 8011),
        ]
    )
    assert [(p.address, p.weight, p.effective_weight) for p in peers] == [
        ("127.0.0.1:8010", 3, 3),
        ("[::1]:8011", 1, 1),
    ]
    assert str(peers[0]) == "127.0.0.1:8010"


def test_recovered_peer_ramps_up_through_effective_weight() -> None:
    # After a failure effective_weight is weight - weight//max_fails (0 here) and grows by 1
    # per selection, so the recovered peer comes back gradually, as in nginx.
    clock = FakeClock(0)
    a, b = peer("a"), peer("b")
    group = PeerGroup("up", [a, b], clock=clock)
    sel = group.start()
    assert sel.next() is a
    sel.fail(a)
    assert a.effective_weight == 0
    assert sel.next() is b
    sel.succeed(b)
    sel.release(b)
    clock.now = 11
    assert picks(group, 5) == ["b", "b", "a", "b", "a"]
