"""Zero downtime: new connections through reload storms, a graceful stop after a reload.

A *churning* client does what a reconnecting WebSocket client does: connect, handshake, one
message, close, again.  Every connection it makes ends one of three ways:

* ``ok``: the 101 came, the message echoed;
* ``dropped``: the connection was accepted (``connect()`` succeeded) and then ended before
  any status line: what issue 18 counts, and what must never happen;
* ``going away``: the 101 came, then a 1001 close frame instead of the echo: answered, as a
  stopping worker answers its tunnels;
* anything else (a status other than 101, a refused connect) is recorded by name.

The clients are raw sockets, so that nothing in a client library hides a drop.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import start_wsgate
from tests.integration.test_process_model import (
    Backend,
    conf,
    in_thread,
    open_clients,
    run,
    wait_until,
)

#: Clients churning at once (the issue's probe used 20).
CHURNERS = 20


async def churn_once(port: int, path: str = "/churn") -> str:
    """One connect, handshake, message, close; returns how it ended (see the module doc)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return f"connect: {exc.strerror}"
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return "dropped"
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if not status.startswith("HTTP/1.1 101"):
            return status
        mask = os.urandom(4)
        payload = b"hi"
        writer.write(b"\x81\x82" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        try:
            echo = await reader.readexactly(4)
        except (asyncio.IncompleteReadError, ConnectionError):
            return "no echo"
        if echo[:1] == b"\x88" and echo[2:4] == b"\x03\xe9":
            return "going away"
        return "ok" if echo == b"\x81\x02hi" else f"bad echo {echo!r}"
    finally:
        writer.close()


@dataclass
class Churn:
    """``CHURNERS`` clients churning until stopped; ``outcomes`` counts how each connection
    ended."""

    port: int
    outcomes: Counter[str] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> Churn:
        self.tasks = [asyncio.create_task(self._loop()) for _ in range(CHURNERS)]
        return self

    async def _loop(self) -> None:
        while not self.stop.is_set():
            self.outcomes[await churn_once(self.port)] += 1

    async def finish(self) -> Counter[str]:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        return self.outcomes


@pytest.mark.timeout(180)
def test_new_connections_through_thirty_reloads_none_dropped(tmp_path: Path) -> None:
    """Issue 18: 20 clients connect, handshake, send a message and close in a loop while the
    configuration is reloaded 30 times at 1 s intervals (2 workers): every connection is
    served, none accepted and then closed unanswered."""

    async def scenario() -> None:
        backend = await Backend("a").start()
        gw = await in_thread(start_wsgate, tmp_path / "gw", conf([backend]))
        try:
            churn = Churn(gw.port).start()
            for gen in range(1, 31):
                gw.conf.write_text(conf([backend], gen=gen))
                mark = len(gw.errors())
                gw.signal(signal.SIGHUP)
                await in_thread(gw.wait_log, r"reconfiguring", 10.0, mark)
                await asyncio.sleep(1.0)  # the reload interval under test, not a readiness wait
            outcomes = await churn.finish()
            reloads = gw.errors().count("reconfiguring")
            print(f"\nreload storm: {reloads} reloads, {dict(outcomes)}")
            assert reloads == 30
            assert outcomes["ok"] > 30 * CHURNERS, outcomes
            assert set(outcomes) == {"ok"}, outcomes
        finally:
            assert gw.stop() == 0
            backend.close()
        assert "[alert]" not in gw.errors(), gw.errors()

    run(scenario())


@pytest.mark.timeout(120)
def test_quit_after_a_reload_closes_every_tunnel_with_1001(tmp_path: Path) -> None:
    """Issue 14, defect 4: tunnels opened before a reload live on the retired workers; a QUIT
    after the reload still gives each a 1001 close frame both ways, and the master exits."""

    async def scenario() -> None:
        backend = await Backend("a").start()
        gw = await in_thread(start_wsgate, tmp_path / "gw", conf([backend]))
        try:
            clients = await open_clients(gw.port, 20)
            old = set(gw.worker_pids())
            mark = len(gw.errors())
            gw.signal(signal.SIGHUP)
            await in_thread(gw.wait_log, r"gracefully shutting down", 10.0, mark)
            await in_thread(
                wait_until,
                lambda: gw.errors().count("gracefully shutting down") >= 2,
                "both old workers to retire",
            )
            # The tunnels still echo on the retired workers.
            for c in clients:
                await c.exchange()
            assert {int(w) for w in backend.worker.values()} <= old
            gw.signal(signal.SIGQUIT)
            codes = []
            for c in clients:
                await asyncio.wait_for(c.ws.wait_closed(), 30)
                rcvd = c.ws.protocol.close_rcvd
                codes.append(rcvd.code if rcvd is not None else None)
            assert codes == [1001] * len(clients), codes
            began = time.monotonic()
            code = await in_thread(gw.proc.wait, 30)
            assert code == 0, gw.stderr
            print(f"\nquit after reload: master exited {time.monotonic() - began:.2f} s after")
            await in_thread(wait_until, lambda: len(backend.closes) == 20, "backend closes")
            assert set(backend.closes.values()) == {1001}, backend.closes
        finally:
            if gw.proc.poll() is None:
                gw.stop()
            backend.close()
        assert "[alert]" not in gw.errors(), gw.errors()

    run(scenario())
