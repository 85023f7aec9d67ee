"""An open tunnel outlives its request's task: no task or coroutine waits for it, and its close
ends the request (access log, ``limit_conn`` slot, ``stub_status``, metrics) and then the
connection (``Active``, ``worker_connections``, a graceful stop waiting for it), exactly once.

Runs wsgate's Gateway in this process, so the test can look at its tasks and counters.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from wsgate.config.loader import load
from wsgate.observability.logs import AccessLogs, ErrorLogger, access_log_paths
from wsgate.server.gateway import Gateway

HANDSHAKE = (
    b"GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)

CONF = """
events {{ worker_connections 3; }}
http {{
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  limit_conn_zone $remote_addr zone=perip:1m;
  log_format t '$request $status $bytes_sent $http_sec_websocket_version $host $upstream_status '
               '$upstream_addr $upstream_response_time';
  access_log {log} t;
  server {{
    listen 127.0.0.1:0;
    location / {{
      proxy_pass http://127.0.0.1:{port};
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      limit_conn perip 5;
    }}
  }}
}}
"""

Scenario = Callable[[Gateway, int, Path], Awaitable[None]]


async def _backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers 101, then echoes until the proxy closes."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
    while data := await reader.read(65536):
        writer.write(data)
    writer.close()


def in_process(tmp_path: Path, scenario: Scenario) -> None:
    async def main() -> None:
        backend = await asyncio.start_server(_backend, "127.0.0.1", 0)
        log = tmp_path / "access.log"
        conf = tmp_path / "nginx.conf"
        conf.write_text(CONF.format(log=log, port=backend.sockets[0].getsockname()[1]))
        config = load(str(conf), prefix=str(tmp_path))
        access = AccessLogs()
        access.open(access_log_paths(config))
        gw = Gateway(config, asyncio.get_running_loop(), ErrorLogger(), access)
        groups = gw.bind(config)
        await gw.serve(groups)
        try:
            await scenario(gw, next(iter(groups.values())).port, log)
        finally:
            gw.stop_now()
            await asyncio.sleep(0)
            gw.access_logs.close()
            backend.close()

    asyncio.run(main())


async def open_tunnel(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HANDSHAKE)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
    writer.write(b"\x81\x80\x00\x00\x00\x00")  # an empty text frame, zero mask
    assert await reader.readexactly(6) == b"\x81\x80\x00\x00\x00\x00"  # echoed back
    return reader, writer


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def tunnels_open(gw: Gateway) -> int:
    text = gw.metrics.exposition().decode()
    return sum(int(v) for v in re.findall(r"^wsgate_tunnels_open\{.*\} (\d+)$", text, re.M))


def test_a_tunnel_holds_no_task_and_its_close_ends_request_and_connection(
    tmp_path: Path,
) -> None:
    async def scenario(gw: Gateway, port: int, log: Path) -> None:
        zone = gw.limits.conn_zone("perip")
        reader, writer = await open_tunnel(port)
        assert not gw.tasks  # the request's task ended at the 101
        assert len(gw.connections) == 1 and len(gw.tunnels) == 1
        stats = gw.stub_status.snapshot()
        assert (stats.active, stats.writing) == (1, 1)
        assert zone.held("127.0.0.1") == 1
        assert tunnels_open(gw) == 1
        assert log.read_text() == ""  # written when the tunnel closes

        writer.close()
        await until(lambda: not gw.connections, "the connection to end")
        stats = gw.stub_status.snapshot()
        assert (stats.active, stats.reading, stats.writing) == (0, 0, 0)
        assert zone.held("127.0.0.1") == 0 and not gw.tunnels
        assert tunnels_open(gw) == 0
        await until(lambda: log.read_text() != "", "the access-log line")
        # Read when the tunnel closes, from what the open tunnel kept of its request.
        assert re.fullmatch(
            r"GET /chat HTTP/1\.1 101 \d+ 13 t 101 127\.0\.0\.1:\d+ \d+\.\d{3}\n",
            log.read_text(),
        )

    in_process(tmp_path, scenario)


def test_worker_connections_counts_a_tunnel_until_it_closes(tmp_path: Path) -> None:
    """``worker_connections 3``: a tunnel is two connections, so a second client (which
    would need two more) is not accepted: it waits in the backlog and is served once the
    first tunnel closes."""

    async def scenario(gw: Gateway, port: int, log: Path) -> None:
        first = await open_tunnel(port)
        assert gw._load() == 2
        second = asyncio.create_task(open_tunnel(port))
        done, _ = await asyncio.wait({second}, timeout=0.5)
        assert not done, "a full worker must not accept"
        assert gw.accept_paused and len(gw.connections) == 1 and gw._load() == 2
        first[1].close()
        reader, writer = await asyncio.wait_for(second, 10)
        assert len(gw.connections) == 1  # and the worker is full again
        writer.close()
        await until(lambda: not gw.connections, "the second tunnel to end")
        assert gw._load() == 0

    in_process(tmp_path, scenario)


def test_retire_waits_for_an_open_tunnel(tmp_path: Path) -> None:
    async def scenario(gw: Gateway, port: int, log: Path) -> None:
        reader, writer = await open_tunnel(port)
        gw.retire()
        await asyncio.sleep(0.1)
        assert not gw.stopped.done()  # the tunnel is still open
        writer.write(b"\x81\x80\x00\x00\x00\x00")
        assert await reader.readexactly(6) == b"\x81\x80\x00\x00\x00\x00"
        writer.close()
        await asyncio.wait_for(gw.stopped, 5)
        assert not gw.connections and gw.stub_status.snapshot().active == 0

    in_process(tmp_path, scenario)


def test_fast_stop_releases_what_an_open_tunnel_holds_at_once(tmp_path: Path) -> None:
    """TERM: the process may exit before the tunnel's close is reported, so its slot, gauge
    and connection are released by ``stop_now`` itself, and no access-log line is written
    (a cancelled request is not logged)."""

    async def scenario(gw: Gateway, port: int, log: Path) -> None:
        zone = gw.limits.conn_zone("perip")
        reader, writer = await open_tunnel(port)
        gw.stop_now()
        assert zone.held("127.0.0.1") == 0 and tunnels_open(gw) == 0
        assert not gw.connections and not gw.tunnels
        stats = gw.stub_status.snapshot()
        assert (stats.active, stats.writing) == (0, 0)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the tunnel was aborted
        await asyncio.sleep(0.05)  # its close is reported now, and changes nothing
        assert gw.stub_status.snapshot().active == 0 and zone.held("127.0.0.1") == 0
        assert log.read_text() == ""
        writer.close()

    in_process(tmp_path, scenario)
