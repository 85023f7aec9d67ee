"""``async with asyncio.timeout(delay)`` for a task on a known loop, at fewer system calls.

On CPython 3.11 ``asyncio.timeout`` looks the running loop up three times (entering, at
``reschedule`` and through ``current_task``), and each look-up is a ``getpid()`` system call
(the running-loop check compares the process id, against a loop inherited across ``fork``).
A connection to an upstream is bounded by ``proxy_connect_timeout`` on every proxied request
and WebSocket handshake, so those are three of the handshake's system calls.  The caller here
knows its loop, so nothing needs looking up: :class:`Deadline` does what ``asyncio.Timeout``
does (cancel the task when the time is up, turn that cancellation into ``TimeoutError`` on
the way out, leave other cancellations alone) with one timer handle and no look-up.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Deadline"]


class Deadline:
    """``async with Deadline(loop, seconds):`` raises ``TimeoutError`` out of the block when
    it runs longer than ``seconds``, as ``asyncio.timeout(seconds)`` does."""

    __slots__ = ("loop", "delay", "task", "handle", "cancelling", "expired")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.task: asyncio.Task[object] | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.cancelling = 0
        self.expired = False

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task(self.loop)  # with the loop given: no look-up
        if task is None:
            raise RuntimeError("Deadline should be used inside a task")
        self.task = task
        self.cancelling = task.cancelling()
        self.handle = self.loop.call_later(self.delay, self._expire)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.expired:
            assert self.task is not None
            # As asyncio.Timeout: our cancel is taken back; if no other is pending, the
            # CancelledError it caused becomes the TimeoutError.
            if self.task.uncancel() <= self.cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def _expire(self) -> None:
        self.handle = None
        assert self.task is not None
        self.task.cancel()
        self.expired = True
