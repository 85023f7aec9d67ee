"""Churn soak: WebSocket clients connect, shake hands, exchange one message and close, again
and again; the proxy's descriptors must come back to where they were and its memory must not
grow with the number of connections served.

The baseline is taken after a warm-up (the first connections fill the allocator's pools and
the proxy's caches); then ``CYCLES`` more run, ``CONCURRENCY`` at a time.  A leak of one
descriptor per cycle shows in the fd count; a leak of even a few hundred bytes per cycle shows
in the soak's RSS (60,000 cycles).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.reliability.common import (
    TARGETS,
    BgLoop,
    Stats,
    Target,
    conf,
    echo_backend,
    record,
    scaled,
    start_target,
    tcp_held,
    wait_until,
    ws_close,
    ws_echo,
    ws_open,
)

WARMUP = 200
CYCLES = scaled(1500, 60000)
CONCURRENCY = 20
#: Every loop stops after this many seconds even if it has not done its count.
BUDGET = scaled(20.0, 300.0)
#: Worker RSS may grow by this much from the warmed-up baseline (allocator slack), not more.
RSS_SLACK_KIB = 24 * 1024


async def churn(port: int, cycles: int, budget: float) -> tuple[int, int]:
    """Run up to ``cycles`` connect-handshake-message-close cycles; (done, failed)."""
    done = failed = 0
    deadline = time.monotonic() + budget
    todo = iter(range(cycles))

    async def client() -> None:
        nonlocal done, failed
        for i in todo:
            if time.monotonic() > deadline:
                return
            try:
                reader, writer = await ws_open(port)
                try:
                    await asyncio.wait_for(ws_echo(reader, writer, b"m%d" % i), 10)
                finally:
                    await ws_close(reader, writer)
                done += 1
            except (OSError, AssertionError, asyncio.IncompleteReadError, TimeoutError):
                failed += 1

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return done, failed


def settle(target: Target, stats: Stats) -> None:
    """Wait until the proxy holds no client connection and the backend no upstream one."""
    wait_until(lambda: tcp_held(target.port) == 0 and stats.open == 0, "connections to close")


@pytest.mark.timeout(scaled(90, 600))
@pytest.mark.parametrize("kind", TARGETS)
def test_churn_returns_fds_and_memory(kind: str, tmp_path: Path, bg: BgLoop) -> None:
    stats = Stats()
    upstream = bg.serve(echo_backend(stats), stats)
    target = start_target(kind, tmp_path / kind, conf(upstream))
    try:
        done, failed = asyncio.run(churn(target.port, WARMUP, BUDGET))
        assert (done, failed) == (WARMUP, 0)
        worker = target.worker()
        settle(target, stats)
        fds0, rss0 = target.fds(), target.rss_kib()
        began = time.monotonic()
        done, failed = asyncio.run(churn(target.port, CYCLES, BUDGET))
        elapsed = time.monotonic() - began
        # Every cycle's descriptors are released once its close is through.
        settle(target, stats)
        wait_until(lambda: target.fds() <= fds0, f"fds back to {fds0} (now {target.fds()})")
        fds1, rss1 = target.fds(), target.rss_kib()
        record(
            "churn",
            kind,
            cycles=done,
            failed=failed,
            cycles_per_s=done / elapsed,
            fds_before_after=f"{fds0}/{fds1}",
            worker_rss_kib_before_after=f"{rss0}/{rss1}",
        )
        assert target.workers() == [worker], "the worker was replaced during the churn"
        if kind == "wsgate":
            assert failed == 0
            assert done >= min(CYCLES, 500), "too few cycles ran to measure anything"
            assert rss1 - rss0 < RSS_SLACK_KIB, f"worker RSS grew {rss1 - rss0} KiB"
    finally:
        target.stop()
    assert not target.alerts(), target.alerts()
