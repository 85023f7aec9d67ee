"""A node leaving a layer-4 balancer's pool: ``readiness`` and ``shutdown_grace`` (wsgate's).

On QUIT with ``shutdown_grace T`` every worker goes on accepting and serving for ``T`` while
``readiness`` answers 503, then stops listening and closes its tunnels with 1001 spread over
``close_spread_time``.  Real wsgate processes with two workers, ``websockets`` echo backends
and clients on loopback; every wait is for an event, never a sleep for a timer.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import start_wsgate
from tests.integration.test_drain import until
from tests.integration.test_process_model import (
    Backend,
    Client,
    conf,
    in_thread,
    open_clients,
    run,
)

pytestmark = pytest.mark.timeout(90)


async def ask(port: int, path: str = "/ready", method: str = "GET") -> tuple[int, bytes] | None:
    """Status and body of one request, or None when the connection is refused or cut."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return None
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    try:
        data = await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return None
    finally:
        writer.close()
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def node_conf(backend: Backend, main: str) -> str:
    return conf([backend], workers=2, main=main).replace(
        "location = /gen", "location = /ready { readiness; } location = /gen"
    )


def test_readiness_turns_503_during_the_grace_then_tunnels_get_1001(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = await Backend("a").start()
        text = node_conf(a, "shutdown_grace 2s; close_spread_time 1s;")
        gw = await in_thread(start_wsgate, tmp_path / "gw", text)
        try:
            assert await ask(gw.port) == (200, b"ready\n")
            assert (await ask(gw.port, method="HEAD") or (0,))[0] == 200
            assert (await ask(gw.port, method="POST") or (0,))[0] == 405
            clients = await open_clients(gw.port, 20)
            for c in clients:
                await c.exchange()
            gw.signal(signal.SIGQUIT)

            async def draining() -> bool:
                # both workers: ten answers in a row, whichever worker takes each
                answers = [await ask(gw.port) for _ in range(10)]
                return all(x == (503, b"draining\n") for x in answers)

            await until(draining, "readiness to answer 503 on every worker")
            # Still within the grace: the tunnels relay, and a new client is served.
            for c in clients:
                await c.exchange()
            late = await open_clients(gw.port, 3, prefix="late")
            for c in late:
                await c.exchange()

            async def code(c: Client) -> int | None:
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(c.ws.recv(), 30)
                return info.value.rcvd.code if info.value.rcvd is not None else None

            codes = await asyncio.gather(*(code(c) for c in clients + late))
            assert codes == [1001] * len(codes)
            assert await in_thread(gw.proc.wait, 30) == 0
            assert await ask(gw.port) is None  # nothing listens any more
            errors = gw.errors()
            assert "shutdown grace: stopping in 2s" in errors
            assert "[alert]" not in errors and "[emerg]" not in errors, errors
            assert set(a.closes.values()) == {1001}
        finally:
            gw.stop()
            a.close()

    run(scenario())


def test_terminate_during_the_grace_stops_at_once(tmp_path: Path) -> None:
    """TERM is the fast stop whatever QUIT started: a 60 s grace does not hold it."""

    async def scenario() -> None:
        a = await Backend("a").start()
        text = node_conf(a, "shutdown_grace 60s;")
        gw = await in_thread(start_wsgate, tmp_path / "gw", text)
        try:
            clients = await open_clients(gw.port, 5)
            gw.signal(signal.SIGQUIT)
            await until(lambda: answers(gw.port, (503, b"draining\n")), "the 503")
            gw.signal(signal.SIGTERM)
            assert await in_thread(gw.proc.wait, 20) == 0
            for c in clients:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(c.ws.recv(), 10)
            assert "[alert]" not in gw.errors(), gw.errors()
        finally:
            gw.stop()
            a.close()

    run(scenario())


def test_no_grace_stops_listening_at_once(tmp_path: Path) -> None:
    """Without ``shutdown_grace`` QUIT is nginx's: the listeners close at once, and
    ``readiness`` is never seen answering 503 by a new connection."""

    async def scenario() -> None:
        a = await Backend("a").start()
        text = node_conf(a, "close_spread_time 3s;")
        gw = await in_thread(start_wsgate, tmp_path / "gw", text)
        try:
            clients = await open_clients(gw.port, 3)
            gw.signal(signal.SIGQUIT)
            await until(lambda: answers(gw.port, None), "the listeners to close")
            for c in clients:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(c.ws.recv(), 10)
            assert await in_thread(gw.proc.wait, 20) == 0
        finally:
            gw.stop()
            a.close()

    run(scenario())


async def answers(port: int, want: tuple[int, bytes] | None) -> bool:
    return await ask(port) == want
