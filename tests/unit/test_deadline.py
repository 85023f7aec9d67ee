"""wsgate.proxy.deadline.Deadline behaves as ``asyncio.timeout`` (CPython 3.11's
``asyncio.timeouts``)."""

from __future__ import annotations

import asyncio

import pytest

from wsgate.proxy.deadline import Deadline


def test_in_time_nothing_happens() -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        d = Deadline(loop, 5)
        async with d:
            await asyncio.sleep(0)
        assert d.handle is None and not d.expired
        return "done"

    assert asyncio.run(main()) == "done"


def test_over_time_is_a_timeout_error() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        event = asyncio.Event()  # never set
        with pytest.raises(TimeoutError):
            async with Deadline(loop, 0.01):
                await event.wait()
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the cancel was taken back

    asyncio.run(main())


def test_another_cancel_is_not_turned_into_a_timeout() -> None:
    """A task cancelled from outside inside the block ends cancelled, not timed out,
    whether or not the deadline also passed before it ran again, as asyncio.timeout."""

    async def main(expire_too: bool) -> list[str]:
        loop = asyncio.get_running_loop()
        seen: list[str] = []
        deadline = Deadline(loop, 60)

        async def body() -> None:
            try:
                async with deadline:
                    await asyncio.Event().wait()
            except TimeoutError:
                seen.append("timeout")
                raise

        task = asyncio.create_task(body())
        await asyncio.sleep(0)  # inside the block now
        if expire_too:
            assert deadline.handle is not None
            deadline.handle.cancel()
            deadline._expire()  # the deadline passes ...
        task.cancel()  # ... and the outside cancel comes before the task runs again
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    assert asyncio.run(main(expire_too=False)) == []
    assert asyncio.run(main(expire_too=True)) == []


def test_outside_a_task_is_an_error() -> None:
    loop = asyncio.new_event_loop()
    try:

        async def enter() -> None:
            async with Deadline(loop, 1):
                pass

        coro = enter()
        with pytest.raises(RuntimeError):
            coro.send(None)
        coro.close()
    finally:
        loop.close()
