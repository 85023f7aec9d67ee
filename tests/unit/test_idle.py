"""Shared idle timers (wsgate.proxy.idle): never early, at most one slot late, one loop timer."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable
from typing import Any, cast

from wsgate.proxy.idle import RESOLUTION, IdleTimers, idle_timers

#: At most one slot late (and float rounding).
SLACK = RESOLUTION + 1e-6


class FakeLoop:
    """``time()`` and ``call_at()`` with a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, cb: Callable[..., None], *args: Any) -> None:
        self.timers.append((when, cb, args))

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        raise AssertionError(context)

    def advance(self, seconds: float) -> None:
        """Move the clock, running due timers in order (as the loop would)."""
        end = self.now + seconds
        while True:
            due = sorted((t for t in self.timers if t[0] <= end), key=lambda t: t[0])
            if not due:
                break
            when, cb, args = due[0]
            self.timers.remove(due[0])
            self.now = max(self.now, when)
            cb(*args)
        self.now = end


class Item:
    """A tunnel's idle timer: ``deadline`` moves with traffic; it times out once passed."""

    def __init__(self, timers: IdleTimers, loop: FakeLoop, deadline: float) -> None:
        self.timers, self.loop, self.deadline = timers, loop, deadline
        self.expired_at: float | None = None
        self.slot = timers.add(self, deadline)

    def idle_check(self) -> None:
        if self.loop.now >= self.deadline - 0.001:
            self.expired_at = self.loop.now
        else:
            self.slot = self.timers.add(self, self.deadline)


def make() -> tuple[FakeLoop, IdleTimers]:
    loop = FakeLoop()
    return loop, IdleTimers(cast(asyncio.AbstractEventLoop, loop))


def test_fires_after_the_deadline_within_one_slot() -> None:
    loop, timers = make()
    item = Item(timers, loop, 1001.23)
    loop.advance(1.2)
    assert item.expired_at is None
    loop.advance(0.1)
    assert item.expired_at is not None
    assert 1001.23 <= item.expired_at <= 1001.23 + SLACK
    assert len(timers) == 0 and not loop.timers


def test_a_moved_deadline_is_filed_again() -> None:
    loop, timers = make()
    item = Item(timers, loop, 1001.0)
    loop.advance(0.9)
    item.deadline = 1002.0  # traffic: the tunnel's ``last`` moved
    loop.advance(0.5)
    assert item.expired_at is None and len(timers) == 1
    loop.advance(0.7)
    assert item.expired_at is not None and 1002.0 <= item.expired_at <= 1002.0 + SLACK


def test_removed_items_are_not_checked_nor_kept() -> None:
    loop, timers = make()
    gone = Item(timers, loop, 1000.5)
    stays = Item(timers, loop, 1000.5)
    timers.remove(gone, gone.slot)
    timers.remove(gone, gone.slot)  # twice: nothing
    assert len(timers) == 1
    loop.advance(1)
    assert gone.expired_at is None and stays.expired_at is not None


def test_one_loop_timer_for_many_items_and_an_earlier_one_arms_earlier() -> None:
    loop, timers = make()
    late = [Item(timers, loop, 1060.0 + i / 1000) for i in range(100)]
    assert len(loop.timers) == 1
    early = Item(timers, loop, 1001.0)
    assert len(loop.timers) == 2
    loop.advance(1.1)
    assert early.expired_at is not None and all(i.expired_at is None for i in late)
    loop.advance(60)
    assert all(i.expired_at is not None and i.expired_at >= i.deadline for i in late)
    assert not loop.timers


def test_one_instance_per_loop_which_it_does_not_keep_alive() -> None:
    loop = asyncio.new_event_loop()
    timers = idle_timers(loop)
    assert idle_timers(loop) is timers
    ref = weakref.ref(loop)
    loop.close()
    del loop
    gc.collect()
    assert ref() is None
