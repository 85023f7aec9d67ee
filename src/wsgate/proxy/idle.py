"""Idle timers of many tunnels on one event-loop timer.

Every tunnel has an idle timer (``proxy_read_timeout``).  One loop timer each is, with
uvloop, a ``TimerHandle``, a libuv timer, a bound method and a context copy: about 640 bytes,
the largest part of an idle tunnel after its two transports.  Here a tunnel is instead filed
under the ``RESOLUTION``-second slot its deadline falls in, and one loop timer waits for the
earliest slot.  When a slot's end passes, each tunnel in it is checked
(:meth:`Idle.idle_check`): it closes, or files itself again under its new deadline when
traffic has moved it (the timer is re-armed lazily, as nginx's ``ngx_event_add_timer`` does,
not on every read).

A check therefore runs no earlier than the deadline and at most ``RESOLUTION`` after it;
nginx's own timers are lazy by up to 300 ms (``NGX_TIMER_LAZY_DELAY``).  A tunnel that closes
is removed from its slot at once, so nothing keeps a closed tunnel alive.
"""

from __future__ import annotations

import asyncio
import heapq
import weakref
from typing import Protocol

__all__ = ["RESOLUTION", "Idle", "IdleTimers", "idle_timers"]

#: Seconds per slot: how late after its deadline an idle timer may fire.
RESOLUTION = 0.05


class Idle(Protocol):
    """What :class:`IdleTimers` holds: an object to check once its deadline has passed."""

    def idle_check(self) -> None: ...


class IdleTimers:
    """Deadlines of many :class:`Idle` objects, on one loop timer (see the module docstring).

    Uses only ``loop.time()`` and ``loop.call_at()``, so tests can drive it with a fake loop.
    It keeps no reference to the loop (nor to a timer handle, which has one): the loop's
    pending timers reference it, not the other way round, so a closed loop can be freed.
    """

    __slots__ = ("_loop", "_slots", "_heap", "_armed", "_firing")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        #: Slot number (``int(deadline / RESOLUTION)``) -> the objects due in it, in the order
        #: they were added.
        self._slots: dict[int, dict[Idle, None]] = {}
        #: Slot numbers with a slot, earliest first (may hold numbers of removed slots).
        self._heap: list[int] = []
        #: Slot numbers a loop timer is pending for (one, or a few after earlier slots came).
        self._armed: set[int] = set()
        self._firing = False

    def add(self, item: Idle, deadline: float) -> int:
        """Check ``item`` once ``deadline`` (loop time) has passed; returns the slot number
        :meth:`remove` takes."""
        n = int(deadline / RESOLUTION)
        slot = self._slots.get(n)
        if slot is None:
            slot = self._slots[n] = {}
            heapq.heappush(self._heap, n)
            if not self._firing and (not self._armed or n < min(self._armed)):
                self._arm(n)
        slot[item] = None
        return n

    def remove(self, item: Idle, n: int) -> None:
        """Forget ``item`` filed under slot ``n`` (nothing if it is not there)."""
        slot = self._slots.get(n)
        if slot is not None:
            slot.pop(item, None)
            if not slot:
                del self._slots[n]

    def __len__(self) -> int:
        return sum(len(slot) for slot in self._slots.values())

    def _arm(self, n: int) -> None:
        loop = self._loop()
        if loop is not None:
            self._armed.add(n)
            loop.call_at((n + 1) * RESOLUTION, self._fire, n)

    def _fire(self, armed: int) -> None:
        self._armed.discard(armed)
        loop = self._loop()
        if loop is None:
            return
        heap, slots = self._heap, self._slots
        # The loop may run a timer a little early (its clock resolution); a slot is due once
        # the time is within a millisecond of its end.
        now = loop.time() + 0.001
        self._firing = True
        try:
            while heap and (heap[0] + 1) * RESOLUTION <= now:
                slot = slots.pop(heapq.heappop(heap), None)
                if slot is None:
                    continue
                for item in slot:
                    try:
                        item.idle_check()  # closes, or adds it again (to a later slot)
                    except Exception as exc:  # one failing check must not stop the others
                        loop.call_exception_handler(
                            {"message": "idle timer check failed", "exception": exc}
                        )
        finally:
            self._firing = False
        while heap and heap[0] not in slots:
            heapq.heappop(heap)
        if heap and (not self._armed or heap[0] < min(self._armed)):
            self._arm(heap[0])


#: One :class:`IdleTimers` per event loop.
_TIMERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, IdleTimers] = (
    weakref.WeakKeyDictionary()
)


def idle_timers(loop: asyncio.AbstractEventLoop) -> IdleTimers:
    """The :class:`IdleTimers` of ``loop`` (made on first use)."""
    timers = _TIMERS.get(loop)
    if timers is None:
        timers = _TIMERS[loop] = IdleTimers(loop)
    return timers
