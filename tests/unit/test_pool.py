"""The keepalive pool as a pure data structure: fake clock, fake connections."""

from __future__ import annotations

from wsgate.upstream.pool import KeepalivePool


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(size: int = 2, **limits: float) -> tuple[KeepalivePool[str], Clock, list[str]]:
    clock = Clock()
    closed: list[str] = []
    pool: KeepalivePool[str] = KeepalivePool(size, clock=clock, close=closed.append, **limits)  # type: ignore[arg-type]
    return pool, clock, closed


def test_take_returns_the_most_recent_connection_to_that_peer() -> None:
    pool, clock, closed = make(size=4)
    for name, key in (("a1", "a"), ("b1", "b"), ("a2", "a")):
        kept = pool.new(key, name)
        kept.requests = 1
        assert pool.put(kept)
    assert pool.take("c") is None
    first = pool.take("a")
    assert first is not None and first.conn == "a2" and first.reused
    assert [k.conn for k in (pool.take("a"), pool.take("b")) if k] == ["a1", "b1"]
    assert len(pool) == 0 and closed == []


def test_over_the_cap_the_least_recently_used_is_closed() -> None:
    pool, clock, closed = make(size=2)
    for name in ("x", "y", "z"):
        kept = pool.new(name, name)
        kept.requests = 1
        pool.put(kept)
    assert closed == ["x"] and len(pool) == 2 and pool.idle("x") == 0


def test_keepalive_requests_and_time_refuse_put() -> None:
    pool, clock, closed = make(requests=2, lifetime=10.0)
    kept = pool.new("a", "c")
    kept.requests = 2
    assert not pool.put(kept)  # "after the maximum number of requests is made"
    kept = pool.new("a", "d")
    kept.requests = 1
    clock.now += 10.5
    assert not pool.put(kept)  # past keepalive_time
    assert len(pool) == 0 and closed == []  # refused ones are the caller's to close


def test_idle_timeout_expiry_and_deadline() -> None:
    pool, clock, closed = make(size=4, timeout=60.0)
    assert pool.next_deadline() is None
    first = pool.new("a", "old")
    first.requests = 1
    pool.put(first)
    clock.now += 30
    second = pool.new("a", "new")
    second.requests = 1
    pool.put(second)
    assert pool.next_deadline() == 160.0
    clock.now = 160.0
    pool.expire()
    assert closed == ["old"] and pool.next_deadline() == 190.0
    clock.now = 200.0
    assert pool.take("a") is None  # a late timer: take() still refuses an expired one
    assert closed == ["old", "new"]


def test_discard_and_close_all() -> None:
    pool, clock, closed = make(size=4)
    kept = [pool.new("a", f"c{i}") for i in range(3)]
    for k in kept:
        k.requests = 1
        pool.put(k)
    assert pool.discard(kept[1]) and not pool.discard(kept[1])
    pool.close_all()
    assert sorted(closed) == ["c0", "c2"] and len(pool) == 0
