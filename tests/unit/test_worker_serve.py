"""``server.worker.serve``: a worker's loop runs once from its first accept to its stop.

uvloop opens a socketpair for signals when a run of the loop starts and closes it when the run
ends.  A worker that served in one run and waited for its stop in a second had, between the
two, two descriptors fewer than for the rest of its life, after its first clients could have
been served (CI's descriptor-counting test read it as a leak under load)."""

from __future__ import annotations

import asyncio
import os
import threading
from types import SimpleNamespace

import pytest

from wsgate.loop import new_event_loop
from wsgate.server.worker import serve


def _fds() -> set[str]:
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{name}:{os.readlink(f'/proc/self/fd/{name}')}")
        except OSError:  # the listing's own descriptor, gone already
            pass
    return out


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="the loop sets up its signal socketpair in the main thread only",
)
def test_started_is_told_inside_the_run_that_serves_until_the_stop() -> None:
    loop = new_event_loop()
    seen: dict[str, object] = {}
    stopped: asyncio.Future[None] = loop.create_future()

    async def serve_groups(groups: object) -> None:
        seen["serving"] = _fds()

    def started() -> None:
        seen["running"] = loop.is_running()
        seen["started"] = _fds()
        # The stop comes later, from inside the run (as QUIT's handler sets it).
        loop.call_soon(lambda: (seen.__setitem__("stopping", _fds()), stopped.set_result(None)))

    gw = SimpleNamespace(
        loop=loop,
        serve=serve_groups,
        stopped=stopped,
        tasks=[],
        limits=SimpleNamespace(remote=None),
    )
    try:
        serve(gw, {}, started)  # type: ignore[arg-type]
    finally:
        loop.close()
    assert seen["running"] is True
    # The descriptors the loop holds while serving are the ones it holds when it stops.
    assert seen["serving"] == seen["started"] == seen["stopping"]
