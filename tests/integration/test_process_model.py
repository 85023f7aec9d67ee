"""Master and workers through real processes: reload under load, graceful stop, a killed
worker, ``worker_connections``.

The backends are ``websockets`` echo servers in the test's event loop.  wsgate passes its
worker's pid to them (``proxy_set_header X-Worker $pid``), so a test knows which worker
carries which tunnel, and each backend connection records the close code it received.
Clients number their messages; a lost, repeated or reordered message fails the test.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.conftest import start_wsgate

T = TypeVar("T")

#: Open tunnels for the reload and stop tests (the issue asks for 500).
TUNNELS = 500


def setup_module() -> None:
    # 500 clients and 500 backend connections in this process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))


@dataclass
class Backend:
    """An echo server that remembers, per client id, the worker pid and the close code."""

    name: str
    server: Server | None = None
    worker: dict[str, str] = field(default_factory=dict)
    closes: dict[str, int | None] = field(default_factory=dict)
    hits: int = 0

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        cid = ws.request.path
        self.hits += 1
        self.worker[cid] = ws.request.headers.get("X-Worker", "")
        try:
            async for msg in ws:
                await ws.send(f"{self.name}:{msg}" if msg == "who" else msg)
        except ConnectionClosed:
            pass
        rcvd = ws.protocol.close_rcvd
        self.closes[cid] = rcvd.code if rcvd is not None else None

    async def start(self) -> Backend:
        self.server = await serve(self.handler, "127.0.0.1", 0, max_size=None)
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def conf(
    backends: list[Backend],
    *,
    workers: int = 2,
    gen: int = 0,
    listeners: int = 1,
    main: str = "",
    events: str = "",
) -> str:
    servers = " ".join(f"server 127.0.0.1:{b.port};" for b in backends)
    listens = " ".join("listen 127.0.0.1:0;" for _ in range(listeners))
    return f"""
worker_processes {workers};
worker_rlimit_nofile 8192;
{main}
events {{ {events} }}
http {{
  access_log off;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream u {{ {servers} }}
  server {{ {listens}
    location = /gen {{ return 200 "{gen} $pid"; }}
    location / {{ proxy_pass http://u; proxy_set_header Upgrade $http_upgrade;
                 proxy_set_header Connection $connection_upgrade;
                 proxy_set_header X-Worker $pid; }} }}
}}
"""


async def http_get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    return body.decode()


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    return await asyncio.to_thread(fn, *args)


@dataclass
class Client:
    """A tunnel that sends numbered messages and checks each echo."""

    cid: str
    ws: ClientConnection
    sent: int = 0
    received: int = 0
    error: BaseException | None = None

    async def exchange(self) -> None:
        self.sent += 1
        msg = f"{self.cid}#{self.sent}"
        await self.ws.send(msg)
        reply = await self.ws.recv()
        assert reply == msg, (reply, msg)
        self.received += 1


async def open_clients(port: int, n: int, prefix: str = "c") -> list[Client]:
    async def one(i: int) -> Client:
        cid = f"/{prefix}{i}"
        ws = await connect(f"ws://127.0.0.1:{port}{cid}", open_timeout=30, max_size=None)
        return Client(cid, ws)

    clients: list[Client] = []
    for start in range(0, n, 100):  # in batches: the backlog is 511
        clients += await asyncio.gather(*(one(i) for i in range(start, min(n, start + 100))))
    return clients


async def chatter(clients: list[Client], stop: asyncio.Event) -> None:
    """Every client exchanges a message about every 200 ms until ``stop``."""

    async def loop(c: Client) -> None:
        try:
            while not stop.is_set():
                await c.exchange()
                try:
                    await asyncio.wait_for(stop.wait(), 0.2)
                except TimeoutError:
                    pass
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            c.error = exc

    await asyncio.gather(*(loop(c) for c in clients))


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- reload under load -----------------------------------------------------------------------------
@pytest.mark.timeout(240)
def test_twenty_reloads_under_load_drop_nothing(tmp_path: Path) -> None:
    """500 tunnels keep exchanging messages through 20 reloads that add an upstream server,
    change a location and add listeners; new connections follow each new configuration;
    old workers exit once their tunnels end."""

    async def scenario() -> None:
        a, b = await Backend("a").start(), await Backend("b").start()
        gw = await in_thread(start_wsgate, tmp_path / "gw", conf([a]))
        try:
            clients = await open_clients(gw.port, TUNNELS)
            stop = asyncio.Event()
            began = time.monotonic()
            talks = [asyncio.create_task(chatter(clients, stop))]
            listeners = 1
            for gen in range(1, 21):
                backends = [a, b] if gen >= 1 else [a]
                if gen % 5 == 0:
                    listeners += 1  # a listener added (ports already bound stay)
                gw.conf.write_text(conf(backends, gen=gen, listeners=listeners))
                mark = len(gw.errors())
                retired_before = gw.errors().count("gracefully shutting down")
                gw.signal(signal.SIGHUP)
                await in_thread(gw.wait_log, r"reconfiguring", 10.0, mark)
                # The old generation retires only once the new one accepts.
                want = retired_before + 2
                await in_thread(
                    wait_until,
                    lambda: gw.errors().count("gracefully shutting down") >= want,  # noqa: B023
                    "old workers to retire",
                )
                if gen % 5 == 0:
                    m = await in_thread(gw.wait_log, r"listening on 127\.0\.0\.1:(\d+)", 10.0, mark)
                    new_port = int(m.group(1))
                    assert (await http_get(new_port, "/gen")).split()[0] == str(gen)
                # New connections get the new configuration, on the old port too.
                assert (await http_get(gw.port, "/gen")).split()[0] == str(gen)
                # Every tunnel opened so far still carries messages after this reload.
                marks = [c.received for c in clients]
                while any(
                    c.received <= m and c.error is None for c, m in zip(clients, marks, strict=True)
                ):
                    await asyncio.sleep(0.02)
                # Each generation gets tunnels of its own, which keep talking through the
                # later reloads.
                batch = await open_clients(gw.port, 10, prefix=f"g{gen}-")
                talks.append(asyncio.create_task(chatter(batch, stop)))
                clients += batch
            # The added upstream server takes new tunnels.
            fresh = await open_clients(gw.port, 4, prefix="new")
            for c in fresh:
                await c.ws.send("who")
                assert (await c.ws.recv()) in ("a:who", "b:who")
            assert b.hits > 0
            stop.set()
            await asyncio.gather(*talks)
            errors = [(c.cid, c.error) for c in clients if c.error is not None]
            assert not errors, errors[:5]
            assert all(c.sent == c.received and c.sent >= 1 for c in clients)
            assert sum(c.sent for c in clients) > 2 * TUNNELS
            # Old workers of every generation still carry tunnels; they exit once those close.
            carriers = {int(p) for p in set(a.worker.values()) | set(b.worker.values())}
            assert len(carriers) >= 21, carriers  # at least one worker of each generation
            assert carriers <= set(gw.worker_pids())
            # The figures the notes quote (shown with ``pytest -s``).
            print(
                f"\nreload under load: {len(clients)} tunnels, "
                f"{sum(c.received for c in clients)} messages echoed, 20 reloads in "
                f"{time.monotonic() - began:.1f} s, {len(carriers)} workers carrying tunnels"
            )
            for c in clients + fresh:
                await c.ws.close()
            await in_thread(wait_until, lambda: len(gw.worker_pids()) == 2, "old workers to exit")
            assert gw.errors().count("exited with code 0") == 40
            # Every tunnel was closed by its client (1000), none by wsgate.
            assert set(a.closes.values()) | set(b.closes.values()) == {1000}
        finally:
            assert gw.stop() == 0
            a.close()
            b.close()
        assert "[alert]" not in gw.errors(), gw.errors()

    run(scenario())


# -- graceful stop ---------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_quit_sends_1001_to_every_client_and_backend(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = await Backend("a").start()
        gw = await in_thread(start_wsgate, tmp_path / "gw", conf([a]))
        try:
            clients = await open_clients(gw.port, TUNNELS)
            for c in clients[:50]:
                await c.exchange()
            gw.signal(signal.SIGQUIT)

            async def closed(c: Client) -> tuple[int | None, bool]:
                try:
                    await asyncio.wait_for(c.ws.recv(), 10)
                except ConnectionClosed as exc:
                    clean = exc.rcvd is not None and exc.sent is not None
                    return (exc.rcvd.code if exc.rcvd else None), clean
                raise AssertionError("a message instead of a close")

            results = await asyncio.gather(*(closed(c) for c in clients))
            assert {code for code, _ in results} == {1001}
            assert all(clean for _, clean in results)
            assert await in_thread(gw.proc.wait, 10) == 0
            await in_thread(wait_until, lambda: len(a.closes) == TUNNELS, "backend closes", 10.0)
            assert set(a.closes.values()) == {1001}
        finally:
            gw.stop()
            a.close()
        assert "[alert]" not in gw.errors(), gw.errors()

    run(scenario())


def test_quit_lets_http_requests_finish(tmp_path: Path) -> None:
    """A plain request in flight when QUIT arrives gets its whole response."""

    async def scenario() -> None:
        release, arrived = asyncio.Event(), asyncio.Event()

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            arrived.set()
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
            await writer.drain()
            writer.close()

        up = await asyncio.start_server(slow, "127.0.0.1", 0)
        port = up.sockets[0].getsockname()[1]
        gw = await in_thread(
            start_wsgate,
            tmp_path / "gw",
            f"events {{}} http {{ server {{ listen 127.0.0.1:0; "
            f"location / {{ proxy_pass http://127.0.0.1:{port}; }} }} }}",
        )
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            await asyncio.wait_for(arrived.wait(), 10)  # in flight (not in the backlog)
            mark = len(gw.errors())
            gw.signal(signal.SIGQUIT)
            await in_thread(gw.wait_log, r"gracefully shutting down", 10.0, mark)
            assert gw.proc.poll() is None  # still serving the request
            release.set()
            data = await asyncio.wait_for(reader.read(), 10)
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"slow")
            # (nginx decides keep-alive when the request starts, then closes after the response:
            # the read above ended at wsgate's FIN.)
            writer.close()
            assert await in_thread(gw.proc.wait, 10) == 0
        finally:
            gw.stop()
            up.close()

    run(scenario())


@pytest.mark.timeout(120)
def test_worker_shutdown_timeout_after_reload_sends_1012(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = await Backend("a").start()
        text = conf([a], workers=1, main="worker_shutdown_timeout 1s;")
        gw = await in_thread(start_wsgate, tmp_path / "gw", text)
        try:
            clients = await open_clients(gw.port, 50)
            old = gw.worker_pid
            gw.conf.write_text(conf([a], workers=1, gen=1, main="worker_shutdown_timeout 1s;"))
            gw.signal(signal.SIGHUP)
            codes = []
            for c in clients:
                try:
                    await asyncio.wait_for(c.ws.recv(), 15)
                except ConnectionClosed as exc:
                    assert exc.sent is not None
                    codes.append(exc.rcvd.code if exc.rcvd else None)
            assert codes == [1012] * 50
            await in_thread(
                wait_until, lambda: old not in gw.worker_pids(), "the old worker to exit", 10.0
            )
            await in_thread(wait_until, lambda: len(a.closes) == 50, "backend closes", 10.0)
            assert set(a.closes.values()) == {1012}
            # The new worker serves.
            assert (await http_get(gw.port, "/gen")).split()[0] == "1"
        finally:
            gw.stop()
            a.close()

    run(scenario())


@pytest.mark.timeout(60)
def test_close_spread_time_spreads_the_closes(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = await Backend("a").start()
        text = conf([a], workers=1, main="close_spread_time 3s;")
        gw = await in_thread(start_wsgate, tmp_path / "gw", text)
        try:
            clients = await open_clients(gw.port, 30)
            gw.signal(signal.SIGQUIT)
            loop = asyncio.get_running_loop()

            async def when(c: Client) -> float:
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(c.ws.recv(), 15)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1001
                return loop.time()

            times = await asyncio.gather(*(when(c) for c in clients))
            # 30 closes at uniform random points of a 3 s window: not all in one second.
            assert max(times) - min(times) > 1.0
            assert await in_thread(gw.proc.wait, 10) == 0
        finally:
            gw.stop()
            a.close()

    run(scenario())


# -- a worker killed -------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_killed_worker_is_replaced_and_others_untouched(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = await Backend("a").start()
        gw = await in_thread(start_wsgate, tmp_path / "gw", conf([a], workers=2))
        try:
            await in_thread(wait_until, lambda: len(gw.worker_pids()) == 2, "two workers")
            clients: list[Client] = []
            # Open tunnels until both workers carry some.
            for batch in range(20):
                clients += await open_clients(gw.port, 10, prefix=f"b{batch}-")
                for c in clients[-10:]:
                    await c.exchange()
                if len(set(a.worker.values())) == 2:
                    break
            owners = {c.cid: a.worker[c.cid] for c in clients}
            assert len(set(owners.values())) == 2, "one worker took every connection"
            victim = int(owners[clients[0].cid])
            mark = len(gw.errors())
            os.kill(victim, signal.SIGKILL)
            await in_thread(
                gw.wait_log,
                rf"\[alert\] \d+#0: worker process {victim} exited on signal 9",
                10.0,
                mark,
            )
            await in_thread(gw.wait_log, r"start worker process \d+", 10.0, mark)
            await in_thread(
                wait_until,
                lambda: len(gw.worker_pids()) == 2 and victim not in gw.worker_pids(),
                "a replacement",
            )
            for c in clients:
                if owners[c.cid] == str(victim):
                    with pytest.raises(ConnectionClosed):
                        await c.exchange()
                else:
                    await c.exchange()  # untouched
                    await c.exchange()
            # The replacement and the survivor both serve new connections.
            pids = set()
            for _ in range(40):
                pids.add((await http_get(gw.port, "/gen")).split()[1])
            assert str(victim) not in pids
            for c in clients:
                await c.ws.close()
        finally:
            gw.stop()
            a.close()

    run(scenario())


# -- worker_connections ----------------------------------------------------------------------------
def test_worker_connections_full_worker_stops_accepting(tmp_path: Path) -> None:
    """``worker_connections 6``: three tunnels (client + upstream each) fill the worker; a
    fourth client is not refused but waits in the backlog until a tunnel closes."""

    async def scenario() -> None:
        a = await Backend("a").start()
        text = conf([a], workers=1, events="worker_connections 6;")
        gw = await in_thread(start_wsgate, tmp_path / "gw", text)
        try:
            clients = await open_clients(gw.port, 3)  # at the limit: all served
            for c in clients:
                await c.exchange()

            async def late_client() -> ClientConnection:
                return await connect(f"ws://127.0.0.1:{gw.port}/late", open_timeout=30)

            waiting = asyncio.create_task(late_client())
            done, _ = await asyncio.wait({waiting}, timeout=1.0)
            assert not done, "a full worker must not accept"
            # Said once a client is kept waiting.
            await in_thread(gw.wait_log, r"6 worker_connections are not enough")
            await clients[0].ws.close()
            late = await asyncio.wait_for(waiting, 10)  # over the limit: served once one left
            await late.send("x")
            assert await late.recv() == "x"
            await late.close()
            for c in clients[1:]:
                await c.ws.close()
        finally:
            gw.stop()
            a.close()
        assert "[alert]" not in gw.errors()

    run(scenario())


def test_worker_processes_and_cpu_affinity(tmp_path: Path) -> None:
    gw = start_wsgate(
        tmp_path / "gw",
        "worker_processes 2; worker_cpu_affinity auto; worker_rlimit_nofile 4096;\n"
        "events {} http { server { listen 127.0.0.1:0; return 200 $pid; } }",
    )
    try:
        wait_until(lambda: len(gw.worker_pids()) == 2, "two workers")
        allowed = sorted(os.sched_getaffinity(0))
        want = [{allowed[0]}, {allowed[1 % len(allowed)]}]

        def masks() -> list[set[int]]:
            return [os.sched_getaffinity(p) for p in gw.worker_pids()]

        # A worker binds itself right after the fork: wait for it, then check.
        wait_until(lambda: masks() == want, "the workers to bind to their CPUs", 10.0)
        assert masks() == want
        for p in gw.worker_pids():
            limits = Path(f"/proc/{p}/limits").read_text()
            assert re.search(r"Max open files\s+4096", limits), limits
    finally:
        assert gw.stop() == 0


def test_master_process_off_runs_one_process(tmp_path: Path) -> None:
    gw = start_wsgate(
        tmp_path / "gw",
        "master_process off; events {} http { server { listen 127.0.0.1:0; return 200 $pid; } }",
    )
    try:
        body = asyncio.run(http_get(gw.port, "/"))
        assert body == str(gw.proc.pid)
        assert gw.worker_pids() == []
    finally:
        assert gw.stop() == 0


ZERO_WORKERS = "worker_processes 0; events {} http {}"


def test_worker_processes_must_be_positive(tmp_path: Path) -> None:
    from tests.integration.test_cli import run as cli

    (tmp_path / "n.conf").write_text(ZERO_WORKERS)
    res = cli("-t", "-p", str(tmp_path), "-c", "n.conf")
    assert res.returncode == 1
    assert 'invalid value "0" in' in res.stderr and "n.conf:1" in res.stderr


def test_workers_keep_the_listen_backlog(tmp_path: Path) -> None:
    """A worker's accept loop must not shrink the master's listen(511) to asyncio's 100:
    ``ss`` shows a listening socket's backlog as its Send-Q."""
    import shutil
    import subprocess

    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    gw = start_wsgate(
        tmp_path / "gw",
        "worker_processes 2; events {} http { server { listen 127.0.0.1:0; return 200 ok; } }",
    )
    try:
        wait_until(lambda: len(gw.worker_pids()) == 2, "two workers")
        assert asyncio.run(http_get(gw.port, "/")) == "ok"  # the workers accept
        out = subprocess.run(
            ["ss", "-ltnH", f"sport = :{gw.port}"], capture_output=True, text=True, check=True
        ).stdout
        assert out.split()[2] == "511", out
    finally:
        assert gw.stop() == 0


def _pids_of_connections(port: int, count: int) -> list[str]:
    """Open ``count`` keep-alive connections one after another, each answered with its
    worker's pid; all are held open until the last is answered."""
    held = []
    pids = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(s)
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().split(b"\r\n")[-1].isdigit():
                chunk = s.recv(4096)
                assert chunk, data
                data += chunk
            pids.append(data.rstrip().split(b"\r\n")[-1].decode())
    finally:
        for s in held:
            s.close()
    return pids


@pytest.mark.parametrize("multi_accept", ["off", "on"])
def test_connections_spread_over_the_workers(tmp_path: Path, multi_accept: str) -> None:
    """Two workers, ``multi_accept`` off and on: 40 connections opened one after another and
    held reach both workers, a quarter at least.  On a quiet machine they spread without the
    balance check too (both workers are idle when each arrives); the check matters when the
    workers are busy (the benchmark's 100 tunnels went 89/11 with batches, 100/0 with one
    accept per event, 53/47 with it), and tests/unit/test_listener_balance.py holds its
    decisions."""
    gw = start_wsgate(
        tmp_path / "gw",
        f"worker_processes 2; events {{ multi_accept {multi_accept}; }}\n"
        "http { server { listen 127.0.0.1:0; return 200 $pid; } }",
    )
    try:
        wait_until(lambda: len(gw.worker_pids()) == 2, "two workers")
        workers = {str(p) for p in gw.worker_pids()}
        pids = _pids_of_connections(gw.port, 40)
        assert set(pids) <= workers
        counts = sorted(pids.count(p) for p in workers)
        assert counts[0] >= 10, counts  # a quarter at least; half when nothing else runs
    finally:
        assert gw.stop() == 0
    assert "[alert]" not in gw.errors()
