"""A burst of WebSocket handshakes against a worker's limits (issue 14, defects 2 and 3).

``worker_rlimit_nofile``: the worker accepts only clients it has descriptors for, with the
upstream connection each one needs, and leaves the rest in the listen backlog (libuv's own
accept path accepted and closed them).  ``worker_connections``: client and upstream
connections together never exceed it, at any moment of the burst.  Every client is either
served (101), or waits and is served once tunnels close; none is accepted and closed unanswered.
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Callable

from tests.conftest import WsgateProcess
from tests.helpers import distinct_sockets

HANDSHAKE = (
    b"GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)

#: Clients in a burst: more than either limit below lets through.
BURST = 320

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def setup_module() -> None:
    # BURST clients and as many backend connections in this process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))


def conf(port: int, main: str, events: str) -> str:
    return f"""
worker_processes 1;
{main}
events {{ {events} }}
http {{
  access_log off;
  server {{ listen 127.0.0.1:0;
    location = /ready {{ return 200; }}
    location / {{ proxy_pass http://127.0.0.1:{port};
      proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade; }} }}
}}
"""


async def _backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers 101 and holds the connection until the proxy closes it."""
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        )
        while await reader.read(65536):
            pass
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def ready(gw: WsgateProcess) -> int:
    """Wait until the worker answers a request; its pid (its descriptors are all open now)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200 ")
    writer.close()
    await writer.wait_closed()
    return gw.worker_pid


def sockets(pid: int) -> int:
    return distinct_sockets([pid])


async def status(stream: Stream, timeout: float) -> str:
    """The status code the client got, "closed" (no response), or "waiting"."""
    try:
        line = await asyncio.wait_for(stream[0].readline(), timeout)
    except TimeoutError:
        return "waiting"
    except ConnectionError:
        return "closed"
    return line.split()[1].decode() if line else "closed"


async def burst(gw: WsgateProcess, limit: Callable[[int], None]) -> dict[str, int]:
    """``BURST`` handshakes at once; ``limit(connections)`` checks the worker's connection
    count, sampled throughout.  Tunnels are closed at the end, and every client that waited
    must then be served.  Returns how many clients got each outcome at first."""
    pid = await ready(gw)
    listening = sockets(pid)  # the listening socket and the channel to the master
    sampling = True

    async def sample() -> None:
        while sampling:
            limit(sockets(pid) - listening)
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())

    async def client() -> Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(HANDSHAKE)
        return reader, writer

    streams = await asyncio.gather(*(client() for _ in range(BURST)))
    first = await asyncio.gather(*(status(s, 2.0) for s in streams))
    outcomes = {k: first.count(k) for k in set(first)}
    assert "closed" not in outcomes, outcomes  # accepted and closed with no response
    for s, k in zip(streams, first, strict=True):
        if k != "waiting":
            s[1].close()
    # The clients left waiting are served as the tunnels close: each one closes at once.
    reads = {
        asyncio.ensure_future(s[0].readline()): s
        for s, k in zip(streams, first, strict=True)
        if k == "waiting"
    }
    while reads:
        done, _ = await asyncio.wait(reads, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        assert done, f"{len(reads)} clients still waiting"
        for task in done:
            assert task.result().startswith(b"HTTP/1.1 101 "), task.result()
            reads.pop(task)[1].close()
    sampling = False
    await sampler
    return outcomes


def test_descriptor_limit_keeps_the_burst_in_the_backlog(
    wsgate: Callable[..., WsgateProcess],
) -> None:
    """``worker_rlimit_nofile 256``: each tunnel takes two descriptors, so about
    (256 - the worker's own) / 2 tunnels open; the others wait, none is refused or dropped."""
    nofile = 256

    async def scenario() -> None:
        backend = await asyncio.start_server(_backend, "127.0.0.1", 0, backlog=1024)
        port = backend.sockets[0].getsockname()[1]
        try:
            gw = wsgate(conf(port, f"worker_rlimit_nofile {nofile};", "worker_connections 1024;"))
            pid = await ready(gw)
            own = len(os.listdir(f"/proc/{pid}/fd"))
            # The worker's own descriptors, one spare, and two per tunnel.
            expected = (nofile - own - 1) // 2

            def within(connections: int) -> None:
                assert connections + own <= nofile

            outcomes = await burst(gw, within)
            assert outcomes.get("101", 0) >= expected - 1, (outcomes, own)
            assert set(outcomes) <= {"101", "waiting"}, outcomes
            assert outcomes.get("waiting", 0) > 0, outcomes
            log = gw.errors()
            assert "open files (worker_rlimit_nofile) are not enough" in log
            assert "Too many open files) while connecting to upstream" not in log, log
            for line in log.splitlines():
                if "accept4() failed" in line:
                    assert "[crit] " in line and "(24: Too many open files)" in line
        finally:
            backend.close()

    asyncio.run(scenario())


def test_worker_connections_hold_through_a_burst(wsgate: Callable[..., WsgateProcess]) -> None:
    """``worker_connections 230``: at most 115 tunnels (230 connections) at any moment; the
    others wait in the backlog and are served as tunnels close."""
    limit = 230

    async def scenario() -> None:
        backend = await asyncio.start_server(_backend, "127.0.0.1", 0, backlog=1024)
        port = backend.sockets[0].getsockname()[1]
        seen = [0]

        def within(connections: int) -> None:
            seen[0] = max(seen[0], connections)
            assert connections <= limit

        try:
            gw = wsgate(conf(port, "worker_rlimit_nofile 4096;", f"worker_connections {limit};"))
            outcomes = await burst(gw, within)
            assert outcomes.get("101", 0) == limit // 2, outcomes  # at the limit, not over
            assert set(outcomes) == {"101", "waiting"}, outcomes
            assert seen[0] >= limit - 2, seen  # the sampler saw the worker full
            assert f"{limit} worker_connections are not enough" in gw.errors()
        finally:
            backend.close()

    asyncio.run(scenario())
