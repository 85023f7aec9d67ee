"""Endpoint.wait_data_or: what the upstream response-head read waits on (data, the client
going away, or the timeout), each outcome and their order when several hold."""

from __future__ import annotations

import asyncio

import pytest

from wsgate.proxy.endpoint import Endpoint, Ready


def _run(coro_fn):  # type: ignore[no-untyped-def]
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro_fn(loop))
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("event", "expected"),
    [("data", 1), ("eof", 1), ("other", 2), ("nothing", 0)],
)
def test_wakes_for_each_outcome(event: str, expected: int) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> tuple[int, int, bool]:
        ep = Endpoint(loop)
        other: asyncio.Future[None] = loop.create_future()
        if event == "data":
            loop.call_soon(ep.data_received, b"HTTP/1.1 101")
        elif event == "eof":
            loop.call_soon(ep.eof_received)
        elif event == "other":
            loop.call_soon(other.set_result, None)
        ready = await ep.wait_data_or(other, 0.05 if event == "nothing" else 10.0)
        # Nothing is left registered: no callback on ``other``, no read waiter.
        left = other._callbacks  # type: ignore[attr-defined]  # None when there is none
        callbacks = len(left or ())
        return ready, callbacks, ep._read_waiter is None

    ready, callbacks, cleared = _run(body)
    assert ready == expected
    assert callbacks == 0
    assert cleared


def test_outcomes_are_named() -> None:
    assert (Ready.TIMEOUT, Ready.DATA, Ready.OTHER) == (0, 1, 2)
    assert not Ready.TIMEOUT and Ready.DATA and Ready.OTHER


def test_data_already_there_wins_over_other_done() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> tuple[int, int]:
        ep = Endpoint(loop)
        other: asyncio.Future[None] = loop.create_future()
        other.set_result(None)
        first = await ep.wait_data_or(other, 10.0)  # only ``other`` holds
        ep.data_received(b"x")
        second = await ep.wait_data_or(other, 10.0)  # both hold: data first
        return first, second

    assert _run(body) == (2, 1)
