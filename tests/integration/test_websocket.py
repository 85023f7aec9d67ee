"""The WebSocket tunnel through a real wsgate, with the ``websockets`` library on both ends
and raw sockets where the bytes matter (early data, half-close, back-pressure)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve

from tests.conftest import WsgateProcess, start_wsgate

CONF = """
events {{}}
http {{
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  log_format ws '$request $status $bytes_sent $body_bytes_sent $upstream_addr';
  access_log logs/access.log ws;
  upstream u {{ server 127.0.0.1:{port}; }}
  server {{ listen 127.0.0.1:0; {extra}
    location / {{ proxy_pass http://u; proxy_set_header Upgrade $http_upgrade;
                 proxy_set_header Connection $connection_upgrade; }} }}
}}
"""


async def echo(ws: ServerConnection) -> None:
    async for msg in ws:
        await ws.send(msg)


async def start(
    tmp: Path,
    extra: str = "",
    handler: Callable[[ServerConnection], object] = echo,
) -> tuple[Server, WsgateProcess]:
    server = await serve(handler, "127.0.0.1", 0, max_size=None)  # type: ignore[arg-type]
    port = server.sockets[0].getsockname()[1]
    gw = await asyncio.to_thread(start_wsgate, tmp, CONF.format(port=port, extra=extra))
    return server, gw


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_echo_text_binary_and_large(tmp_path: Path) -> None:
    async def scenario() -> None:
        server, gw = await start(tmp_path / "gw")
        try:
            async with connect(f"ws://127.0.0.1:{gw.port}/chat", max_size=None) as ws:
                await ws.send("Hello")
                assert await ws.recv() == "Hello"
                await ws.send(b"\x00\x01\xff")
                assert await ws.recv() == b"\x00\x01\xff"
                big = os.urandom(5 * 1024 * 1024)
                await ws.send(big)
                assert await ws.recv() == big
            (line,) = await asyncio.to_thread(gw.access_lines, 1)
            request, status, sent, body_sent, addr = line.rsplit(" ", 4)
            assert request == "GET /chat HTTP/1.1" and status == "101"
            assert int(body_sent) > len(big) and int(sent) > int(body_sent)
            assert addr == f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            gw.stop()
            server.close()

    run(scenario())


def test_many_concurrent_tunnels(tmp_path: Path) -> None:
    async def scenario() -> None:
        server, gw = await start(tmp_path / "gw")
        try:

            async def client(i: int) -> None:
                async with connect(f"ws://127.0.0.1:{gw.port}/") as ws:
                    for j in range(5):
                        await ws.send(f"{i}-{j}")
                        assert await ws.recv() == f"{i}-{j}"

            await asyncio.gather(*(client(i) for i in range(200)))
            assert len(await asyncio.to_thread(gw.access_lines, 200)) == 200
        finally:
            gw.stop()
            server.close()

    run(scenario())


def handshake(path: str = "/", extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def masked_text(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


def read_until(s: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    buf = b""
    while marker not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def test_101_head_and_pipelined_frame(tmp_path: Path) -> None:
    async def scenario() -> None:
        server, gw = await start(tmp_path / "gw")
        try:

            def talk() -> bytes:
                with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
                    # The first frame rides in the same write as the handshake.
                    s.sendall(handshake() + masked_text("early"))
                    return read_until(s, b"early")

            data = await asyncio.to_thread(talk)
            head = data.split(b"\r\n\r\n")[0].decode()
            assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n")
            assert "Server: wsgate/0.1.0" in head and "Connection: upgrade" in head
            assert "Upgrade: websocket" in head and "Sec-WebSocket-Accept:" in head
            assert data.endswith(b"\x81\x05early")
        finally:
            gw.stop()
            server.close()

    run(scenario())


async def raw_upstream(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    """A raw TCP upstream; each connection's writer is closed however the handler ends."""

    async def run_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(run_handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def start_raw(
    tmp: Path,
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    extra: str = "",
    main: str = "",
) -> tuple[asyncio.Server, WsgateProcess]:
    """A raw upstream and a wsgate in front of it (``main``: main-context directives)."""
    server, port = await raw_upstream(handler)
    conf = main + CONF.format(port=port, extra=extra)
    gw = await asyncio.to_thread(start_wsgate, tmp, conf)
    return server, gw


SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"X-Custom: yes\r\n\r\n"
)


def test_half_close_propagates_both_ways(tmp_path: Path) -> None:
    """Client shuts down its sending side: the upstream sees EOF, and can still answer."""

    async def scenario() -> None:
        got_eof = asyncio.Event()

        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(SWITCH)
            data = await reader.read()  # until EOF from the client's half-close
            got_eof.set()
            writer.write(b"reply-after-eof:" + data)
            await writer.drain()
            writer.close()

        server, gw = await start_raw(tmp_path / "gw", upstream)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(handshake())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ") and b"X-Custom: yes" in head
            writer.write(b"tunnel-bytes")
            writer.write_eof()
            await asyncio.wait_for(got_eof.wait(), 5)
            rest = await asyncio.wait_for(reader.read(), 5)
            assert rest == b"reply-after-eof:tunnel-bytes"
            writer.close()
            (line,) = await asyncio.to_thread(gw.access_lines, 1)
            assert " 101 " in line
        finally:
            gw.stop()
            server.close()

    run(scenario())


def test_slow_client_back_pressure_is_bounded(tmp_path: Path) -> None:
    """An upstream that floods a client that does not read gets blocked: wsgate does not
    buffer without bound (its RSS stays flat while the upstream is stuck in drain())."""

    async def scenario() -> None:
        written = 0
        blocked = asyncio.Event()

        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal written
            await reader.readuntil(b"\r\n\r\n")
            writer.write(SWITCH)
            chunk = b"x" * 65536
            while written < 512 * 1024 * 1024:
                writer.write(chunk)
                written += len(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), 1.0)
                except TimeoutError:
                    blocked.set()
                    await writer.drain()

        server, gw = await start_raw(tmp_path / "gw", upstream)
        try:
            sock = socket.create_connection(("127.0.0.1", gw.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(handshake())
            await asyncio.wait_for(blocked.wait(), 20)
            stuck_at = written
            rss = _rss_kib(gw.worker_pid)
            # Everything written so far sits in kernel buffers and wsgate's bounded buffers.
            assert stuck_at < 64 * 1024 * 1024
            assert rss < 200 * 1024
            sock.close()
        finally:
            gw.stop()
            server.close()

    run(scenario())


def _log_with(path: Path, text: str, timeout: float = 10.0) -> str:
    """The file's text once it contains ``text``."""
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text() if path.exists() else ""
        if text in content or time.monotonic() > deadline:
            return content
        time.sleep(0.01)


def test_send_timeout_closes_a_tunnel_blocked_on_the_client(tmp_path: Path) -> None:
    """``send_timeout`` runs only while writing to the client is blocked: a client that stops
    reading while the upstream floods it is cut after that long, with nginx's INFO line;
    ``proxy_read_timeout`` (longer here) does not fire because bytes keep moving."""

    async def scenario() -> None:
        closed = asyncio.Event()

        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(SWITCH)
            chunk = b"x" * 65536
            try:
                while True:
                    writer.write(chunk)
                    await writer.drain()
            except ConnectionError:
                closed.set()

        server, gw = await start_raw(
            tmp_path / "gw",
            upstream,
            "send_timeout 1s; proxy_read_timeout 30s;",
            "error_log logs/info.log info;\n",
        )
        try:
            sock = socket.create_connection(("127.0.0.1", gw.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(handshake())
            # Never read: wsgate's writes to this client block, the send timer runs.
            await asyncio.wait_for(closed.wait(), 15)
            # The upstream sees the close a moment before wsgate writes its line.
            info = await asyncio.to_thread(
                _log_with, gw.prefix / "logs" / "info.log", "client timed out"
            )
            assert "client timed out (110: Connection timed out) while proxying upgraded" in info
            (line,) = await asyncio.to_thread(gw.access_lines, 1)
            assert " 101 " in line
            sock.close()
        finally:
            gw.stop()
            server.close()

    run(scenario())


def test_proxy_send_timeout_closes_a_tunnel_blocked_on_the_upstream(tmp_path: Path) -> None:
    """``proxy_send_timeout``: an upstream that stops reading while the client floods it."""

    async def scenario() -> None:
        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(SWITCH)
            await writer.drain()
            await asyncio.sleep(30)  # never reads again

        server, gw = await start_raw(
            tmp_path / "gw",
            upstream,
            "proxy_send_timeout 1s; proxy_read_timeout 30s;",
            "error_log logs/info.log info;\n",
        )
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(handshake())
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")

            async def flood() -> None:
                chunk = b"y" * 65536
                while True:
                    writer.write(chunk)
                    await writer.drain()

            task = asyncio.create_task(flood())
            # The tunnel ends: the client sees the close while its writes are blocked (a reset,
            # since wsgate closes with the client's unread bytes in its receive buffer).
            try:
                assert await asyncio.wait_for(reader.read(), 15) == b""
            except ConnectionResetError:
                pass
            task.cancel()
            info = await asyncio.to_thread(
                _log_with, gw.prefix / "logs" / "info.log", "upstream timed out"
            )
            assert "upstream timed out (110: Connection timed out) while proxying upgraded" in info
            writer.close()
        finally:
            gw.stop()
            server.close()

    run(scenario())


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_upgrade_refused_by_upstream_is_a_normal_response(tmp_path: Path) -> None:
    """Client asks to upgrade, upstream answers 200: relayed as-is, connection kept alive."""

    async def scenario() -> None:
        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
                await writer.drain()
            writer.close()

        server, gw = await start_raw(tmp_path / "gw", upstream)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(handshake())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK") and await reader.readexactly(2) == b"no"
            writer.write(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK") and await reader.readexactly(2) == b"no"
            writer.close()
        finally:
            gw.stop()
            server.close()

    run(scenario())


def test_idle_tunnel_times_out_active_one_does_not(tmp_path: Path) -> None:
    async def scenario() -> None:
        server, gw = await start(tmp_path / "gw", extra="proxy_read_timeout 1s;")
        try:
            async with (
                connect(f"ws://127.0.0.1:{gw.port}/", ping_interval=None) as idle,
                connect(f"ws://127.0.0.1:{gw.port}/", ping_interval=None) as active,
            ):
                t0 = time.monotonic()
                for i in range(8):  # 2 s of traffic, a message every 0.25 s
                    await active.send(str(i))
                    assert await active.recv() == str(i)
                    await asyncio.sleep(0.25)
                assert time.monotonic() - t0 > 1.5
                with pytest.raises(Exception) as info:
                    await asyncio.wait_for(idle.recv(), 5)
                assert "ConnectionClosed" in type(info.value).__name__
                await active.send("still open")
                assert await active.recv() == "still open"
        finally:
            gw.stop()
            server.close()

    run(scenario())
