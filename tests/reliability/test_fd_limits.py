"""Descriptor exhaustion and ``worker_connections`` under bursts of WebSocket handshakes.

* ``worker_rlimit_nofile 256`` and a burst of ``BURST`` handshakes: the worker cannot hold
  them all, but it must keep serving what it can hold (tunnels), answer or keep waiting the
  rest, never accept a client only to close it unanswered, and serve the waiting ones once
  tunnels close.
* ``worker_connections 64`` and a burst of ``3 x 64``: the worker never holds more
  connections than the limit (client plus upstream, as nginx counts a tunnel), and the
  clients over it wait in the backlog (docs/operations.md, Processes) rather than being closed.

Each test measures nginx on the same configuration too, where it is installed, and prints its
figures beside wsgate's; only wsgate's are asserted (nginx closes connections it has no room
for, and answers 500 when ``socket()`` fails for the upstream).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.reliability.common import (
    NGINX,
    BgLoop,
    Refused,
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

BURST = scaled(600, 2000)
#: How long the burst's clients wait for an answer while the tunnels are held.
HOLD = 5.0
#: How long the waiting clients get once the tunnels are closed.
DRAIN = 20.0


@dataclass
class Burst:
    outcomes: Counter[str] = field(default_factory=Counter)
    peak_connections: int = 0


async def burst(
    target: Target, stats: Stats, count: int, watch: bool, upgrades0: int
) -> tuple[Burst, list[asyncio.Task[str]]]:
    """``count`` handshakes at once.  Tunnels are held until every client has an outcome or
    ``HOLD`` passed, then closed; clients still waiting then get ``DRAIN`` more seconds."""
    result = Burst()
    release = asyncio.Event()
    holding = 0
    sockets0 = target.sockets()

    async def client(i: int) -> str:
        try:
            reader, writer = await ws_open(target.port, f"/b{i}", timeout=HOLD + DRAIN)
        except Refused as exc:
            return "closed unanswered" if exc.status == 0 else f"status {exc.status}"
        except (ConnectionError, TimeoutError, OSError) as exc:
            return f"error {type(exc).__name__}"
        try:
            await asyncio.wait_for(ws_echo(reader, writer, b"x%d" % i), 10)
        except (ConnectionError, AssertionError, asyncio.IncompleteReadError, TimeoutError):
            writer.close()
            return "tunnel broken"
        nonlocal holding
        holding += 1
        await release.wait()
        await ws_close(reader, writer)
        return "tunnel"

    tasks = [asyncio.create_task(client(i)) for i in range(count)]
    began = time.monotonic()
    # Hold until every client holds a tunnel or has its outcome, or HOLD passed.
    while True:
        if watch:
            result.peak_connections = max(result.peak_connections, target.sockets() - sockets0)
        if time.monotonic() - began > HOLD or holding + sum(t.done() for t in tasks) >= count:
            break
        await asyncio.sleep(0.02)
    result.outcomes["tunnels held"] = stats.upgrades - upgrades0
    release.set()
    await asyncio.wait(tasks, timeout=DRAIN + 15)
    for task in tasks:
        result.outcomes[task.result() if task.done() else "still waiting"] += 1
    return result, tasks


def measure(
    kind: str, tmp_path: Path, bg: BgLoop, main: str, events: str, count: int, watch: bool = False
) -> tuple[Burst, Target, int, int]:
    """Start ``kind``, run the burst, check a fresh client afterwards; (burst, target, fds
    before, fds after)."""
    stats = Stats()
    upstream = bg.serve(echo_backend(stats), stats)
    target = start_target(kind, tmp_path / kind, conf(upstream, main=main, events=events))

    async def fresh() -> None:
        reader, writer = await ws_open(target.port)
        await ws_echo(reader, writer, b"one")
        await ws_close(reader, writer)

    def settled() -> None:
        wait_until(
            lambda: tcp_held(target.port) == 0 and stats.open == 0, "connections to close", 30
        )

    try:
        asyncio.run(fresh())  # the baseline is a worker that has served one tunnel
        settled()
        fds0 = target.fds()
        upgrades0 = stats.upgrades
        result, _ = asyncio.run(burst(target, stats, count, watch, upgrades0))
        settled()
        wait_until(lambda: target.fds() <= fds0, f"fds back to {fds0}", 10)
        fds1 = target.fds()
        asyncio.run(fresh())  # and it serves a new client afterwards
    finally:
        target.stop()
    return result, target, fds0, fds1


def report(probe: str, kind: str, result: Burst, fds0: int, fds1: int, watch: bool) -> None:
    figures: dict[str, object] = {
        name.replace(" ", "_"): n for name, n in sorted(result.outcomes.items())
    }
    figures["fds_before_after"] = f"{fds0}/{fds1}"
    if watch:
        figures["peak_connections"] = result.peak_connections
    record(probe, kind, **figures)


def nginx_half(probe: str, tmp_path: Path, bg: BgLoop, *args: object, watch: bool) -> None:
    if NGINX is None:
        record(probe, "nginx", skipped="nginx is not installed")
        return
    try:
        result, _, fds0, fds1 = measure("nginx", tmp_path, bg, *args, watch=watch)  # type: ignore[arg-type]
    except AssertionError as exc:  # nginx's figures are printed, never asserted
        record(probe, "nginx", failed=str(exc).splitlines()[0][:60])
        return
    report(probe, "nginx", result, fds0, fds1, watch)


@pytest.mark.timeout(180)
def test_fd_exhaustion_burst(tmp_path: Path, bg: BgLoop) -> None:
    args = ("worker_rlimit_nofile 256;", "worker_connections 4096;", BURST)
    result, target, fds0, fds1 = measure("wsgate", tmp_path, bg, *args)
    report("fd_exhaustion", "wsgate", result, fds0, fds1, False)
    nginx_half("fd_exhaustion", tmp_path, bg, *args, watch=False)
    out = result.outcomes
    # With 256 descriptors a worker holds at least a hundred tunnels (two fds each).
    assert out["tunnels held"] >= 100, out
    assert out["closed unanswered"] == 0, out
    assert out["tunnel broken"] == 0, out
    # Every client is served in the end: the waiting ones once the tunnels closed.
    assert out["tunnel"] == BURST, out
    assert fds1 <= fds0
    assert not target.alerts(), target.alerts()


@pytest.mark.timeout(180)
def test_worker_connections_burst(tmp_path: Path, bg: BgLoop) -> None:
    limit = 64
    args = ("", f"worker_connections {limit};", 3 * limit)
    result, target, fds0, fds1 = measure("wsgate", tmp_path, bg, *args, watch=True)
    report("worker_connections", "wsgate", result, fds0, fds1, True)
    nginx_half("worker_connections", tmp_path, bg, *args, watch=True)
    out = result.outcomes
    assert result.peak_connections <= limit, result.peak_connections
    assert out["tunnels held"] >= limit // 2 - 2, out
    assert out["closed unanswered"] == 0, out
    assert out["tunnel"] == 3 * limit, out
    assert not target.alerts(), target.alerts()
