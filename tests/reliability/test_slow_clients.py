"""Slowloris and silent-connection floods, with a legitimate client measured alongside.

``SLOW`` clients send a request head one byte every half second and never finish it;
``SILENT`` clients connect and send nothing.  ``client_header_timeout`` bounds the whole head
(nginx: "if a client does not transmit the entire header within this time, the request is
terminated"), so every flood connection must be closed by the proxy within that timer plus
slack, whatever it trickles.  Meanwhile a legitimate client runs plain requests and WebSocket
echoes on fresh connections; none may fail, and its latency is printed (not asserted).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.reliability.common import (
    HOST,
    TARGETS,
    BgLoop,
    conf,
    echo_backend,
    http_get,
    percentile,
    record,
    scaled,
    start_target,
    ws_close,
    ws_echo,
    ws_open,
)

HEADER_TIMEOUT = 2
SLOW = scaled(150, 1500)
SILENT = scaled(150, 1500)
#: The flood comes in waves; each wave's connections must all be closed by the proxy.
WAVES = scaled(1, 5)
#: The longest a flood connection may stay open: the header timer plus slack.
CLOSED_WITHIN = HEADER_TIMEOUT + 8.0
TRICKLE = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 4000


async def flood_client(port: int, slow: bool, closed_after: list[float]) -> None:
    """Connect, trickle (or keep silent) until the proxy closes; record how long that took."""
    began = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        closed_after.append(-1.0)
        return
    try:
        i = 0
        while time.monotonic() - began < CLOSED_WITHIN + 5:
            if slow and i < len(TRICKLE):
                writer.write(TRICKLE[i : i + 1])
                i += 1
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.5)
            except TimeoutError:
                continue
            if not data:
                break
        closed_after.append(time.monotonic() - began)
    except ConnectionError:
        closed_after.append(time.monotonic() - began)
    finally:
        writer.close()


async def legitimate(port: int, stop: asyncio.Event) -> tuple[list[float], int]:
    """Alternate a GET and a WebSocket echo on fresh connections until ``stop``."""
    latencies: list[float] = []
    failures = 0
    while not stop.is_set():
        began = time.monotonic()
        try:
            assert await http_get(port, "/legit") == 200
            reader, writer = await ws_open(port)
            try:
                await asyncio.wait_for(ws_echo(reader, writer, b"legit"), 10)
            finally:
                await ws_close(reader, writer)
            latencies.append((time.monotonic() - began) * 1000)
        except (OSError, AssertionError, asyncio.IncompleteReadError, TimeoutError):
            failures += 1
        await asyncio.sleep(0.05)
    return latencies, failures


async def flood(port: int) -> tuple[list[float], list[float], int]:
    closed_after: list[float] = []
    stop = asyncio.Event()
    legit = asyncio.create_task(legitimate(port, stop))
    for _ in range(WAVES):
        await asyncio.gather(
            *(flood_client(port, True, closed_after) for _ in range(SLOW)),
            *(flood_client(port, False, closed_after) for _ in range(SILENT)),
        )
    stop.set()
    latencies, failures = await legit
    return closed_after, latencies, failures


@pytest.mark.timeout(scaled(60, 300))
@pytest.mark.parametrize("kind", TARGETS)
def test_slowloris_and_silent_flood(kind: str, tmp_path: Path, bg: BgLoop) -> None:
    upstream = bg.serve(echo_backend())
    text = conf(
        upstream,
        events="worker_connections 4096;",
        server=f"client_header_timeout {HEADER_TIMEOUT}s;",
    )
    target = start_target(kind, tmp_path / kind, text)
    try:
        closed_after, latencies, failures = asyncio.run(flood(target.port))
    finally:
        target.stop()
    record(
        "slow_flood",
        kind,
        flood_connections=len(closed_after),
        closed_by_proxy_max_s=max(closed_after),
        legit_exchanges=len(latencies),
        legit_failures=failures,
        legit_p50_ms=percentile(latencies, 50),
        legit_p99_ms=percentile(latencies, 99),
    )
    assert len(closed_after) == (SLOW + SILENT) * WAVES
    assert all(0 <= t < CLOSED_WITHIN for t in closed_after), sorted(closed_after)[-5:]
    assert latencies and failures == 0
    assert not target.alerts(), target.alerts()
