"""Active ``health_check`` through a real wsgate: dead servers leave rotation before a client is
sent to them, come back after ``passes`` good probes, websocket-type and status checks, Unix
sockets, and no task or descriptor leaks across reloads and stops.

Upstreams are small asyncio servers in a background thread (:class:`Backend`) that count the
requests per path and can stop and resume listening on the same address.  Every wait is for a
log line or a counter with a deadline; nothing sleeps for readiness.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.conftest import WsgateProcess
from wsgate.config.loader import load
from wsgate.observability.logs import ErrorLogger
from wsgate.proxy import fdrelay
from wsgate.server.health import HealthChecks, upstream_target
from wsgate.upstream.roundrobin import PeerGroup, peers_from_config

UNHEALTHY = 'peer is unhealthy while {phase}, health check "" of peer {peer} in upstream "u"'
HEALTHY = 'peer is healthy while {phase}, health check "" of peer {peer} in upstream "u"'


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Backend:
    """An HTTP/1.1 server on 127.0.0.1 (or a Unix socket) answering every request with
    ``status`` and a body naming ``tag``; ``hits`` counts requests per path."""

    def __init__(self, tag: str, status: int = 200, unix_path: str | None = None) -> None:
        self.tag = tag
        self.status = status
        self.unix_path = unix_path
        self.hits: Counter[str] = Counter()
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.listen()

    @property
    def address(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path else f"127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.hits[path] += 1
            body = self.tag.encode()
            writer.write(
                f"HTTP/1.1 {self.status} X\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _listen(self) -> None:
        if self.unix_path:
            self.server = await asyncio.start_unix_server(self._handle, self.unix_path)
        else:
            self.server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self.server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def listen(self) -> None:
        """Start listening (again, on the same address)."""
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(5)

    def stop_listening(self) -> None:
        """Close the listening socket: connections are refused from now on."""
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(5)

    def shutdown(self) -> None:
        self.stop_listening()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def backend() -> Iterator[Callable[..., Backend]]:
    made: list[Backend] = []

    def factory(tag: str, status: int = 200, unix_path: str | None = None) -> Backend:
        b = Backend(tag, status, unix_path)
        made.append(b)
        return b

    yield factory
    for b in made:
        b.shutdown()


def conf(servers: list[str], check: str) -> str:
    lines = "".join(f"server {s}; " for s in servers)
    return f"""
events {{}}
http {{
  upstream u {{ {lines} health_check {check}; }}
  server {{
    listen 127.0.0.1:0;
    location / {{ proxy_pass http://u; proxy_next_upstream off; }}
  }}
}}
"""


def get(port: int, path: str = "/x") -> tuple[int, bytes]:
    """One request with ``Connection: close``; status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: front\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def client_connect_errors(gw: WsgateProcess) -> list[str]:
    """Error-log lines about connecting to an upstream on behalf of a client."""
    return [
        line
        for line in gw.errors().splitlines()
        if "while connecting to upstream" in line and "client:" in line
    ]


def test_dead_server_leaves_rotation_before_a_client_hits_it(
    wsgate: Callable[..., WsgateProcess], backend: Callable[..., Backend]
) -> None:
    live, dead = backend("live"), backend("dead")
    dead.stop_listening()
    gw = wsgate(conf([live.address, dead.address], "interval=300ms fails=3 passes=2 uri=/hc"))
    # fails=3, yet the first failed probe takes a peer of unknown health out of rotation.
    gw.wait_log(re.escape(UNHEALTHY.format(phase="connecting to upstream", peer=dead.address)))
    assert re.search(
        r"\[error\] \d+#0: connect\(\) failed \(111: Connection refused\) while connecting to "
        + re.escape(f'upstream, health check "" of peer {dead.address} in upstream "u"'),
        gw.errors(),
    )
    replies = [get(gw.port) for _ in range(20)]
    assert replies == [(200, b"live")] * 20
    assert live.hits["/x"] == 20 and dead.hits["/x"] == 0
    assert client_connect_errors(gw) == []
    wait_until(lambda: live.hits["/hc"] >= 2, what="a second probe of the live server")
    assert HEALTHY.format(phase="checking status code", peer=live.address) not in gw.errors()


def test_server_that_comes_back_returns_after_passes_good_probes(
    wsgate: Callable[..., WsgateProcess], backend: Callable[..., Backend]
) -> None:
    live, flaky = backend("live"), backend("flaky")
    flaky.stop_listening()
    gw = wsgate(conf([live.address, flaky.address], "interval=200ms fails=1 passes=3 uri=/hc"))
    gw.wait_log(re.escape(UNHEALTHY.format(phase="connecting to upstream", peer=flaky.address)))
    assert [get(gw.port)[1] for _ in range(4)] == [b"live"] * 4
    flaky.listen()
    healthy = re.escape(HEALTHY.format(phase="checking status code", peer=flaky.address))
    gw.wait_log(healthy)
    # It came back only after three good probes (the log line follows the third).
    assert flaky.hits["/hc"] >= 3
    bodies = Counter(get(gw.port)[1] for _ in range(10))
    assert bodies == {b"live": 5, b"flaky": 5}  # round robin over both again
    # Down again: out after one failure (fails=1), and the clients never notice.
    start = len(gw.errors())
    flaky.stop_listening()
    gw.wait_log(
        re.escape(UNHEALTHY.format(phase="connecting to upstream", peer=flaky.address)),
        start=start,
    )
    assert [get(gw.port)[1] for _ in range(4)] == [b"live"] * 4
    assert client_connect_errors(gw) == []


class WebSocketBackend:
    """A ``websockets`` server in a thread that records each connection's close code."""

    def __init__(self) -> None:
        self.close_codes: list[int | None] = []
        self.paths: list[str] = []
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop: asyncio.Future[None] | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(5)

    async def _handler(self, ws: ServerConnection) -> None:
        self.paths.append(ws.request.path if ws.request else "")
        async for _ in ws:
            pass
        self.close_codes.append(ws.close_code)

    def _run(self) -> None:
        async def main() -> None:
            self.stop = asyncio.get_running_loop().create_future()
            async with serve(self._handler, "127.0.0.1", 0) as server:
                self.port = next(iter(server.sockets)).getsockname()[1]
                self.ready.set()
                await self.stop

        self.loop.run_until_complete(main())
        self.loop.close()

    def shutdown(self) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set_result, None)
        self.thread.join(5)


def test_websocket_check_against_a_websockets_server(
    wsgate: Callable[..., WsgateProcess], backend: Callable[..., Backend]
) -> None:
    ws = WebSocketBackend()
    try:
        plain = backend("plain")  # answers 200 to the upgrade: not a websocket server
        gw = wsgate(
            conf(
                [f"127.0.0.1:{ws.port}", plain.address],
                "interval=200ms timeout=1s fails=2 passes=2 uri=/live type=websocket",
            )
        )
        gw.wait_log(re.escape(UNHEALTHY.format(phase="checking status code", peer=plain.address)))
        wait_until(lambda: len(ws.close_codes) >= 3, what="three websocket probes")
        # Each probe was a full handshake on uri= and ended with a clean close, code 1000.
        assert set(ws.paths) == {"/live"}
        assert set(ws.close_codes[:3]) == {1000}
        assert f"of peer 127.0.0.1:{ws.port} " not in gw.errors()
        assert plain.hits["/live"] >= 1
    finally:
        ws.shutdown()


def test_status_mismatch_is_unhealthy_and_unix_socket_peers_are_checked(
    wsgate: Callable[..., WsgateProcess], backend: Callable[..., Backend], tmp_path: Path
) -> None:
    wrong = backend("wrong", status=200)
    right = backend("right", status=204, unix_path=str(tmp_path / "up.sock"))
    gw = wsgate(conf([wrong.address, right.address], "interval=200ms uri=/s status=204"))
    gw.wait_log(re.escape(UNHEALTHY.format(phase="checking status code", peer=wrong.address)))
    wait_until(lambda: right.hits["/s"] >= 3, what="three probes over the Unix socket")
    assert f"of peer {right.address} " not in gw.errors()
    assert [get(gw.port)[0] for _ in range(4)] == [204] * 4
    assert wrong.hits["/x"] == 0 and right.hits["/x"] == 4


def test_no_leaks_across_reloads(
    wsgate: Callable[..., WsgateProcess], backend: Callable[..., Backend]
) -> None:
    live, dead = backend("live"), backend("dead")
    dead.stop_listening()
    gw = wsgate(conf([live.address, dead.address], "interval=100ms uri=/hc"))
    line = re.escape(UNHEALTHY.format(phase="connecting to upstream", peer=dead.address))
    gw.wait_log(line)
    wait_until(lambda: live.hits["/hc"] >= 3, what="probes")

    def fds(samples: int = 40) -> list[int]:
        out = []
        for _ in range(samples):
            out.append(gw.open_fds())
            time.sleep(0.005)
        return out

    before = fds()
    for _ in range(5):
        start = len(gw.errors())
        gw.signal(signal.SIGHUP)
        # New peer groups start unknown; the restarted checker finds the dead one at once.
        gw.wait_log(line, start=start)
    # Each reload forked a new worker; the retired ones exit (they carry no connection).
    wait_until(lambda: len(gw.worker_pids()) == 1, what="the old workers to exit")
    after = fds()
    # At most one probe connection per peer is ever open, before and after the reloads.
    assert max(after) <= min(before) + 2, (before, after)
    assert min(after) == min(before), (before, after)
    # Old checkers are gone: ten probes still take about ten intervals, not a sixth of that.
    count = live.hits["/hc"]
    t0 = time.monotonic()
    wait_until(lambda: live.hits["/hc"] >= count + 10, what="ten more probes")
    assert time.monotonic() - t0 > 0.7
    # A graceful stop (QUIT) cancels the probes and exits cleanly, with nothing left pending.
    assert gw.stop(signal.SIGQUIT) == 0
    assert "destroyed but it is pending" not in gw.stderr


def test_checkers_cancel_cleanly_in_process(
    tmp_path: Path, backend: Callable[..., Backend]
) -> None:
    """The asyncio half on its own: probes in flight when stopped leave no task or fd.

    The third peer listens but never answers, so its probe is always waiting for a response
    head (with an open connection) when the checkers are stopped."""
    live, dead = backend("live"), backend("dead")
    dead.stop_listening()
    silent = socket.create_server(("127.0.0.1", 0))
    silent_address = f"127.0.0.1:{silent.getsockname()[1]}"
    servers = [live.address, dead.address, silent_address]
    (tmp_path / "nginx.conf").write_text(conf(servers, "interval=50ms timeout=5s uri=/hc"))
    config = load("nginx.conf", prefix=str(tmp_path))

    async def main() -> tuple[int, int, int, PeerGroup]:
        loop = asyncio.get_running_loop()
        group = PeerGroup("u", peers_from_config(config.http.upstreams["u"].servers))
        # The compiled transports' epoll set is opened once per loop, at a worker's start.
        fdrelay.prepare(loop)
        baseline = len(os.listdir("/proc/self/fd"))
        registry: set[asyncio.Task[None]] = set()
        checks = HealthChecks(loop, ErrorLogger(stderr_fallback=False), registry)
        checks.start(config, lambda name: group)
        assert len(registry) == 3
        while live.hits["/hc"] < 3 or group.peers[1].healthy:
            await asyncio.sleep(0.01)
        during = len(os.listdir("/proc/self/fd"))
        checks.stop()
        await checks.wait_stopped()
        assert not registry and not checks.tasks
        others = asyncio.all_tasks() - {asyncio.current_task()}
        return baseline, during, len(os.listdir("/proc/self/fd")) - baseline + len(others), group

    try:
        baseline, during, leaked, group = asyncio.run(main())
    finally:
        silent.close()
    assert during > baseline  # the silent peer's probe connection was open
    assert leaked == 0
    assert group.peers[0].healthy and not group.peers[1].healthy and group.peers[2].healthy
    assert upstream_target("u").upstream == "u"
