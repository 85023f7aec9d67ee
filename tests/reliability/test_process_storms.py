"""Reload and worker-kill storms under traffic, then QUIT.

``TUNNELS`` WebSocket tunnels exchange a message every 100 ms while newcomers keep
connecting (a handshake, an echo, a close; and a plain GET), on a proxy with two workers:

1. a reload storm (``RELOADS`` HUPs, each awaited until its new workers run): no tunnel may
   lose a message and no newcomer may fail (nginx: old workers keep their connections and
   "new worker processes" take the new ones; nothing accepted is dropped);
2. a kill storm (``KILLS`` times SIGKILL of a worker, each awaited until the master replaced
   it): the tunnels of a killed worker die with it, but a newcomer after each replacement
   must be served;
3. QUIT: every tunnel still open, on current and retired workers alike, gets a close frame
   ``1001`` (going away) from wsgate, and the master exits within
   ``worker_shutdown_timeout`` plus slack.

nginx runs the same storms where installed; its figures are printed, never asserted (it
closes tunnels at QUIT without a close frame).
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.reliability.common import (
    NGINX,
    BgLoop,
    Refused,
    Target,
    conf,
    echo_backend,
    frame,
    http_get,
    read_frame,
    record,
    scaled,
    start_target,
    until,
    ws_close,
    ws_echo,
    ws_open,
)

TUNNELS = scaled(30, 200)
RELOADS = scaled(5, 40)
KILLS = scaled(3, 20)
#: worker_shutdown_timeout: long enough that retired workers still hold their tunnels when
#: QUIT comes (the storms stop after half of it), short enough for nginx's half to end.
SHUTDOWN = scaled(12, 120)
STORM_BUDGET = SHUTDOWN / 2
EXIT_WITHIN = SHUTDOWN + 10.0


@dataclass
class Tunnel:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sent: int = 0
    error: str | None = None
    close_code: int | None = None
    gone: bool = False


@dataclass
class Traffic:
    tunnels: list[Tunnel] = field(default_factory=list)
    newcomers: Counter[str] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    phase: str = "reload"


async def chatter(t: Tunnel, traffic: Traffic) -> None:
    """Echo a numbered message every 100 ms until stopped or the tunnel fails."""
    while not traffic.stop.is_set() and t.error is None:
        try:
            await asyncio.wait_for(ws_echo(t.reader, t.writer, b"n%d" % t.sent), 10)
            t.sent += 1
        except (ConnectionError, AssertionError, asyncio.IncompleteReadError, TimeoutError) as e:
            t.error = f"{traffic.phase}: {type(e).__name__}"
            return
        await asyncio.sleep(0.1)


async def newcomers(port: int, traffic: Traffic) -> None:
    """New clients one after another until stopped; outcomes counted per phase."""
    i = 0
    while not traffic.stop.is_set():
        i += 1
        phase = traffic.phase
        try:
            reader, writer = await ws_open(port, f"/new{i}")
            try:
                await asyncio.wait_for(ws_echo(reader, writer, b"hello"), 10)
            finally:
                await ws_close(reader, writer)
            status = await http_get(port, "/new")
            outcome = "ok" if status == 200 else f"GET {status or 'closed unanswered'}"
        except Refused as exc:
            outcome = f"handshake {exc.status or 'closed unanswered'}"
        except (OSError, AssertionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            outcome = type(exc).__name__
        traffic.newcomers[f"{phase} {outcome}"] += 1


async def wait_close(t: Tunnel) -> None:
    """After QUIT: read until the proxy's close frame (code kept) or the end of the stream."""
    try:
        while True:
            opcode, payload = await asyncio.wait_for(read_frame(t.reader), EXIT_WITHIN)
            if opcode == 8:
                t.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 0
                t.writer.write(frame(payload[:2], 8))
                break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    except TimeoutError:
        return
    t.gone = True
    t.writer.close()


async def storm(target: Target) -> tuple[Traffic, dict[str, object]]:
    traffic = Traffic()
    figures: dict[str, object] = {}
    for i in range(TUNNELS):
        reader, writer = await ws_open(target.port, f"/t{i}")
        traffic.tunnels.append(Tunnel(reader, writer))
    talks = [asyncio.create_task(chatter(t, traffic)) for t in traffic.tunnels]
    comers = asyncio.create_task(newcomers(target.port, traffic))
    await until(lambda: traffic.newcomers["reload ok"] >= 3, "newcomers served", 30)

    storm_began = time.monotonic()
    reloads = kills = 0
    for _ in range(RELOADS):
        if time.monotonic() - storm_began > STORM_BUDGET:
            break
        reloads += 1
        before = set(target.workers())
        mark = len(target.errors())
        target.conf_path.write_text(target.conf_path.read_text())
        target.signal(signal.SIGHUP)
        await until(lambda: "reconfiguring" in target.errors()[mark:], "the reload", 20)  # noqa: B023
        await until(lambda: len(set(target.workers()) - before) >= 2, "new workers", 20)  # noqa: B023
        await asyncio.sleep(0.3)  # traffic runs between the reloads; readiness was awaited
    lost_in_reload = sum(t.error is not None for t in traffic.tunnels)
    figures["reloads"] = reloads

    traffic.phase = "kill"
    # A newcomer counts under the phase it started in: let the last one of the reload phase
    # finish before the first kill, so that a kill never lands on a "reload" newcomer.
    await until(
        lambda: any(k.startswith("kill ") for k in traffic.newcomers), "a kill-phase newcomer", 20
    )
    replaced = 0
    for _ in range(KILLS):
        if time.monotonic() - storm_began > STORM_BUDGET and kills:
            break
        kills += 1
        before = set(target.workers())
        victim = max(before)
        os.kill(victim, signal.SIGKILL)
        await until(lambda: victim not in target.workers(), "the worker to die", 10)  # noqa: B023
        await until(lambda: len(set(target.workers()) - before) >= 1, "a new worker", 20)  # noqa: B023
        replaced += 1
        served = traffic.newcomers["kill ok"]
        await until(lambda: traffic.newcomers["kill ok"] > served, "a newcomer served", 20)  # noqa: B023
    figures["kills_replaced"] = f"{replaced}/{kills}"

    traffic.phase = "quit"
    traffic.stop.set()
    await asyncio.gather(*talks, comers)
    alive = [t for t in traffic.tunnels if t.error is None]
    began = time.monotonic()
    target.signal(signal.SIGQUIT)
    await asyncio.gather(*(wait_close(t) for t in alive))
    exited = await asyncio.to_thread(wait_exit, target)
    for t in traffic.tunnels:
        t.writer.close()
    figures.update(
        tunnels=TUNNELS,
        tunnels_lost_in_reloads=lost_in_reload,
        tunnels_lost_in_kills=sum(t.error is not None for t in traffic.tunnels) - lost_in_reload,
        messages=sum(t.sent for t in traffic.tunnels),
        quit_tunnels_closed=f"{sum(t.gone for t in alive)}/{len(alive)}",
        quit_close_codes=" ".join(
            f"{k}x{v}" for k, v in sorted(Counter(str(t.close_code) for t in alive).items())
        ),
        quit_exit_s=(time.monotonic() - began) if exited else "did not exit",
        newcomers=" ".join(
            f"{k.replace(' ', ':')}={v}" for k, v in sorted(traffic.newcomers.items())
        ),
    )
    return traffic, figures


def wait_exit(target: Target) -> bool:
    try:
        target.proc.wait(EXIT_WITHIN)
        return True
    except Exception:
        return False


def run_storm(kind: str, tmp_path: Path, bg: BgLoop) -> tuple[Traffic, dict[str, object], Target]:
    upstream = bg.serve(echo_backend())
    text = conf(upstream, main=f"worker_processes 2; worker_shutdown_timeout {SHUTDOWN}s;")
    target = start_target(kind, tmp_path / kind, text)
    try:
        traffic, figures = asyncio.run(storm(target))
    finally:
        code = target.stop()
    figures["exit_status"] = code if code is not None else "killed"
    record("storms", kind, **figures)
    return traffic, figures, target


@pytest.mark.timeout(scaled(150, 900))
def test_reload_and_kill_storms_then_quit(tmp_path: Path, bg: BgLoop) -> None:
    traffic, figures, target = run_storm("wsgate", tmp_path, bg)
    if NGINX is None:
        record("storms", "nginx", skipped="nginx is not installed")
    else:
        try:
            run_storm("nginx", tmp_path, bg)
        except AssertionError as exc:  # nginx's figures are printed, never asserted
            record("storms", "nginx", failed=str(exc).splitlines()[0][:60])
    reload_failures = {
        k: v
        for k, v in traffic.newcomers.items()
        if k.startswith("reload ") and not k.endswith(" ok")
    }
    assert figures["tunnels_lost_in_reloads"] == 0, [t.error for t in traffic.tunnels if t.error]
    assert not reload_failures, reload_failures
    alive = [t for t in traffic.tunnels if t.error is None]
    assert alive, "the kill storm took every tunnel: nothing left to check QUIT with"
    assert [t.close_code for t in alive] == [1001] * len(alive)
    assert figures["quit_exit_s"] != "did not exit"
    assert figures["exit_status"] == 0
    assert not [a for a in target.alerts() if "exited on signal 9" not in a], target.alerts()
