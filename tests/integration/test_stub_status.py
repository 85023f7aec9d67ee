"""``stub_status`` through a real wsgate: every number checked against known traffic.

Connections are raw sockets so their state is known exactly: a keep-alive connection that
has finished a request (Waiting), one that sent nothing (Waiting), one in the middle of a head
(Reading), a WebSocket tunnel (Writing for its whole life) and the monitoring connection that
asks for the page (Writing while it does).  Where wsgate must first notice something (an
accept, a few bytes, a close), the test polls the page on the monitoring connection and counts
the polls, so the expected ``requests`` stays exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve

from tests.conftest import WsgateProcess, start_wsgate

CONF = """
events {{}}
http {{
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream u {{ server 127.0.0.1:{port}; }}
  server {{ listen 127.0.0.1:0;
    location = /status {{ stub_status; }}
    location = /old {{ stub_status on; }}
    location = /ok {{ return 200 "ok"; }}
    location = /vars {{
  return 200 "$connections_active $connections_reading $connections_writing $connections_waiting";
    }}
    location / {{ proxy_pass http://u; proxy_set_header Upgrade $http_upgrade;
                 proxy_set_header Connection $connection_upgrade; }} }}
}}
"""

PAGE = re.compile(
    rb"Active connections: (\d+) \n"
    rb"server accepts handled requests\n"
    rb" (\d+) (\d+) (\d+) \n"
    rb"Reading: (\d+) Writing: (\d+) Waiting: (\d+) \n"
)


async def echo(ws: ServerConnection) -> None:
    async for msg in ws:
        await ws.send(msg)


async def start(tmp: Path) -> tuple[Server, WsgateProcess]:
    server = await serve(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw = await asyncio.to_thread(start_wsgate, tmp, CONF.format(port=port))
    return server, gw


class Client:
    """One raw keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[bytes, bytes]:
        """Send one request; return the response head and body (Content-Length framed)."""
        extra = f"Content-Length: {len(body)}\r\n" if body else ""
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode() + body)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        m = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
        assert m is not None, head
        length = 0 if method == "HEAD" else int(m.group(1))
        data = await asyncio.wait_for(self.reader.readexactly(length), 10)
        return head, data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class Monitor:
    """The connection that reads the page; counts its own requests."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.requests = 0

    async def page(self) -> tuple[int, ...]:
        head, body = await self.client.request("GET", "/status")
        self.requests += 1
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        assert b"\r\nContent-Type: text/plain\r\n" in head
        m = PAGE.fullmatch(body)
        assert m is not None, body
        return tuple(int(x) for x in m.groups())

    async def until(self, index: int, value: int) -> tuple[int, ...]:
        """Poll until field ``index`` of the page is ``value`` (wsgate noticed something)."""
        for _ in range(500):
            numbers = await self.page()
            if numbers[index] == value:
                return numbers
            await asyncio.sleep(0.01)
        raise AssertionError(f"field {index} never became {value}: {numbers}")


ACTIVE, ACCEPTS, HANDLED, REQUESTS, READING, WRITING, WAITING = range(7)


def test_every_number_with_known_traffic(tmp_path: Path) -> None:
    async def scenario() -> None:
        server, gw = await start(tmp_path / "gw")
        opened: list[Client] = []
        try:
            mon = Monitor(await Client.open(gw.port))
            opened.append(mon.client)
            # The exact page bytes for the first request: only the monitor exists.
            head, body = await mon.client.request("GET", "/status")
            mon.requests += 1
            assert body == b"Active connections: 1 \nserver accepts handled requests\n" + (
                b" 1 1 1 \nReading: 0 Writing: 1 Waiting: 0 \n"
            )
            assert f"Content-Length: {len(body)}\r\n".encode() in head

            idle = await Client.open(gw.port)  # one finished request, then keep-alive
            opened.append(idle)
            assert (await idle.request("GET", "/ok"))[1] == b"ok"
            silent = await Client.open(gw.port)  # connected, not a byte sent
            opened.append(silent)
            await mon.until(ACTIVE, 3)
            partial = await Client.open(gw.port)  # in the middle of a head
            opened.append(partial)
            partial.writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n")
            await mon.until(READING, 1)

            async with connect(f"ws://127.0.0.1:{gw.port}/chat") as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
                numbers = await mon.page()
                # monitor, idle, silent, partial, tunnel; requests: idle 1, partial 1,
                # tunnel 1 and every page the monitor asked for (this one included).
                assert numbers == (5, 5, 5, 3 + mon.requests, 1, 2, 2)
                # The variables read the same counters (this request is Writing too).
                assert (await mon.client.request("GET", "/vars"))[1] == b"5 1 2 2"
                mon.requests += 1
            # The tunnel closed: it leaves Writing and Active, nothing else moves.
            numbers = await mon.until(ACTIVE, 4)
            assert numbers == (4, 5, 5, 3 + mon.requests, 1, 1, 2)

            # The partial head completes: Reading -> Writing -> Waiting, same request.
            partial.writer.write(b"\r\n")
            await partial.reader.readuntil(b"\r\n\r\n")
            assert await partial.reader.readexactly(2) == b"ok"
            numbers = await mon.page()
            assert numbers == (4, 5, 5, 3 + mon.requests, 0, 1, 3)

            # Closed connections leave Active (and Waiting); accepts keep counting.
            await idle.close()
            await silent.close()
            numbers = await mon.until(ACTIVE, 2)
            assert numbers == (2, 5, 5, 3 + mon.requests, 0, 1, 1)
        finally:
            for c in opened:
                await c.close()
            gw.stop()
            server.close()

    asyncio.run(scenario())


def test_methods_head_and_old_syntax(tmp_path: Path) -> None:
    async def scenario() -> None:
        server, gw = await start(tmp_path / "gw")
        c = await Client.open(gw.port)
        try:
            # nginx: "if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) return
            # NGX_HTTP_NOT_ALLOWED;" -- the body is discarded, the connection kept.
            head, body = await c.request("POST", "/status", b"hello")
            assert head.startswith(b"HTTP/1.1 405 Not Allowed\r\n"), head
            assert b"<center><h1>405 Not Allowed</h1></center>" in body
            assert b"Connection: keep-alive\r\n" in head
            head, body = await c.request("HEAD", "/status")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b""
            assert b"Content-Type: text/plain\r\n" in head
            m = re.search(rb"Content-Length: (\d+)\r\n", head)
            assert m is not None and int(m.group(1)) == len(
                b"Active connections: 1 \nserver accepts handled requests\n"
                b" 1 1 2 \nReading: 0 Writing: 1 Waiting: 0 \n"
            )
            _, body = await c.request("GET", "/old")  # "stub_status on;" (before 1.7.5)
            assert body == (
                b"Active connections: 1 \nserver accepts handled requests\n"
                b" 1 1 3 \nReading: 0 Writing: 1 Waiting: 0 \n"
            )
            # Two pipelined requests: the second is counted when wsgate starts on it.
            c.writer.write(b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n" * 2)
            for n in (4, 5):
                await c.reader.readuntil(b"\r\n\r\n")
                page = await c.reader.readuntil(b"Waiting: 0 \n")
                assert f" 1 1 {n} \nReading: 0 Writing: 1 ".encode() in page
            await c.close()
            lines = await asyncio.to_thread(gw.access_lines, 5)
            assert [(ln.split('"')[1], ln.split('"')[2].split()[0]) for ln in lines] == [
                ("POST /status HTTP/1.1", "405"),
                ("HEAD /status HTTP/1.1", "200"),
                ("GET /old HTTP/1.1", "200"),
                ("GET /status HTTP/1.1", "200"),
                ("GET /status HTTP/1.1", "200"),
            ]
        finally:
            await c.close()
            gw.stop()
            server.close()

    asyncio.run(scenario())


def test_counters_survive_a_reload(tmp_path: Path) -> None:
    """The counters are in shared memory: the new workers continue them, and the tunnel the
    retired worker still carries keeps counting as Active and Writing."""

    async def scenario() -> None:
        server, gw = await start(tmp_path / "gw")
        mon = Monitor(await Client.open(gw.port))
        try:
            async with connect(f"ws://127.0.0.1:{gw.port}/") as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
                assert await mon.page() == (2, 2, 2, 2, 0, 2, 0)
                mark = len(gw.errors())
                gw.signal(signal.SIGHUP)
                # The old worker retires: it closes the monitor's idle keep-alive connection
                # (as nginx's old workers do) and keeps the tunnel.
                await asyncio.to_thread(gw.wait_log, r"gracefully shutting down", 10.0, mark)
                assert await asyncio.wait_for(mon.client.reader.read(), 10) == b""
                await mon.client.close()
                fresh = Monitor(await Client.open(gw.port))
                # accepts 3; Active: the tunnel and this one; Writing: both.
                assert await fresh.until(ACTIVE, 2) == (2, 3, 3, 2 + fresh.requests, 0, 2, 0)
                await ws.send("still")
                assert await ws.recv() == "still"
            # The tunnel is gone; its worker too.
            numbers = await fresh.until(ACTIVE, 1)
            assert numbers == (1, 3, 3, 2 + fresh.requests, 0, 1, 0)
            await fresh.client.close()
        finally:
            gw.stop()
            server.close()

    asyncio.run(scenario())


def test_counters_are_shared_by_workers(tmp_path: Path) -> None:
    """Four workers: whichever answers the page, it counts every worker's connections."""

    async def scenario() -> None:
        server = await serve(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        gw = await asyncio.to_thread(
            start_wsgate, tmp_path / "gw", "worker_processes 4;\n" + CONF.format(port=port)
        )
        tunnels = []
        try:
            for _ in range(12):
                ws = await connect(f"ws://127.0.0.1:{gw.port}/")
                await ws.send("x")
                assert await ws.recv() == "x"
                tunnels.append(ws)
            for _ in range(8):  # each on a new connection: any worker may answer
                mon = Monitor(await Client.open(gw.port))
                numbers = await mon.page()
                await mon.client.close()
                assert numbers[ACTIVE] >= 13 and numbers[WRITING] >= 13, numbers
                assert numbers[ACCEPTS] == numbers[HANDLED] >= 13
            for ws in tunnels:
                await ws.close()
            mon = Monitor(await Client.open(gw.port))
            numbers = await mon.until(ACTIVE, 1)
            # 12 tunnels + 8 monitors + this one, each one request and one connection.
            assert numbers == (1, 21, 21, 21 + mon.requests - 1, 0, 1, 0)
            await mon.client.close()
        finally:
            gw.stop()
            server.close()

    asyncio.run(scenario())


def test_access_rules_guard_the_page(tmp_path: Path) -> None:
    """The usual set-up: ``allow``/``deny`` (access phase) run before the content handler."""

    async def scenario() -> None:
        gw = await asyncio.to_thread(
            start_wsgate,
            tmp_path / "gw",
            "events {}\nhttp { server { listen 127.0.0.1:0;\n"
            "  location = /open { stub_status; allow 127.0.0.1; deny all; }\n"
            "  location = /closed { stub_status; deny all; } } }\n",
        )
        c = await Client.open(gw.port)
        try:
            head, _ = await c.request("GET", "/closed")
            assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n"), head
            head, body = await c.request("GET", "/open")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
            assert b" 1 1 2 \n" in body
        finally:
            await c.close()
            gw.stop()

    asyncio.run(scenario())
