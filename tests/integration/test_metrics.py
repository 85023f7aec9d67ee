"""``prometheus`` through a real wsgate: every value checked against the traffic the test made.

Known traffic: WebSocket clients (the ``websockets`` library, no compression, no pings) send
messages of known sizes through wsgate to a ``websockets`` echo server, so the bytes each way
are the frames' bytes, computed here from RFC 6455 §5.2 (a client's frames carry a 4-byte
mask); requests that get a 404, a 405 and a 502 from a refused upstream; and the scrapes
themselves, counted, so the request counters are exact.  Where wsgate must first notice
something (a tunnel that closed), the test polls the page and counts the polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import WsgateProcess, start_wsgate
from tests.prometheus_text import Page, parse

CONF = """
events {{}}
http {{
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream u {{ server 127.0.0.1:{port}; }}
  upstream dead {{ server 127.0.0.1:{dead}; }}
  server {{ listen 127.0.0.1:0; server_name metrics.test;
    location = /metrics {{ prometheus; }}
    location /ws {{ proxy_pass http://u; proxy_set_header Upgrade $http_upgrade;
                   proxy_set_header Connection $connection_upgrade; }}
    location ~ ^/dead {{ proxy_pass http://dead; proxy_set_header Upgrade $http_upgrade;
                   proxy_set_header Connection $connection_upgrade; }} }}
}}
"""

#: Payload sizes around each length encoding: 7-bit, 16-bit (126..65535), 64-bit.
SIZES = (0, 5, 125, 126, 1000, 65535, 65536, 70000)


def frame_len(payload: int, masked: bool) -> int:
    """RFC 6455 §5.2: 2 header bytes, 2 or 8 more for lengths over 125 or 65535, 4 for a mask."""
    extra = 0 if payload < 126 else 2 if payload < 65536 else 8
    return 2 + extra + (4 if masked else 0) + payload


#: A Close frame with status 1000 and no reason: 2 bytes of payload.
CLOSE_PAYLOAD = 2


async def echo(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):  # a killed worker resets the upstream side
        async for msg in ws:
            await ws.send(msg)


class Scraper:
    """One keep-alive HTTP/1.1 connection; counts the scrapes it made."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.scrapes = 0

    @classmethod
    async def open(cls, port: int) -> Scraper:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, method: str, path: str) -> tuple[bytes, bytes]:
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: metrics.test\r\n\r\n".encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        m = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
        assert m is not None, head
        length = 0 if method == "HEAD" else int(m.group(1))
        return head, await asyncio.wait_for(self.reader.readexactly(length), 10)

    async def page(self) -> Page:
        head, body = await self.request("GET", "/metrics")
        self.scrapes += 1
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        assert b"\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n" in head
        return parse(body.decode())

    async def until(self, name: str, value: float, **labels: str) -> Page:
        """Poll until ``name{labels}`` is ``value`` (wsgate noticed something)."""
        for _ in range(500):
            page = await self.page()
            if page.value(name, **labels) == value:
                return page
            await asyncio.sleep(0.01)
        raise AssertionError(f"{name}{labels} never became {value}: {page.series(name)}")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def refused_port() -> socket.socket:
    """A bound port nobody listens on: connecting to it is refused (ECONNREFUSED)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def start(tmp: Path, dead: int) -> tuple[Server, WsgateProcess]:
    server = await serve(echo, "127.0.0.1", 0, compression=None, ping_interval=None)
    port = server.sockets[0].getsockname()[1]
    gw = await asyncio.to_thread(start_wsgate, tmp, CONF.format(port=port, dead=dead))
    return server, gw


def test_values_match_known_traffic(tmp_path: Path) -> None:
    async def scenario() -> None:
        hole = refused_port()
        dead = hole.getsockname()[1]
        server, gw = await start(tmp_path / "gw", dead)
        peer = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        scraper = await Scraper.open(gw.port)
        tunnel = dict(server="metrics.test", location="/ws", upstream="u", peer=peer)
        ws_where = dict(server="metrics.test", location="/ws")
        me = dict(server="metrics.test", location="= /metrics")
        clients: list[ClientConnection] = []
        try:
            empty = await scraper.page()
            # Before any traffic: the families are declared, no series yet.
            assert empty.series("wsgate_tunnels_open") == {}
            assert empty.series("wsgate_http_requests_total") == {}

            n = 3
            for i in range(n):
                ws = await connect(
                    f"ws://127.0.0.1:{gw.port}/ws/{i}",
                    compression=None,
                    ping_interval=None,
                    max_size=None,
                )
                clients.append(ws)
            for ws in clients:
                for size in SIZES:
                    await ws.send(b"x" * size)  # binary
                    assert await ws.recv() == b"x" * size
                await ws.send("héllo")  # text: 6 bytes of UTF-8
                assert await ws.recv() == "héllo"
            messages = len(SIZES) + 1
            up = sum(frame_len(s, True) for s in SIZES) + frame_len(6, True)
            down = sum(frame_len(s, False) for s in SIZES) + frame_len(6, False)

            # Open tunnels: the scrape flushes this worker's live tunnels first.
            page = await scraper.page()
            assert page.value("wsgate_tunnels_open", **tunnel) == n
            assert page.value("wsgate_tunnel_bytes_total", **tunnel, direction="to_upstream") == (
                n * up
            )
            assert page.value("wsgate_tunnel_bytes_total", **tunnel, direction="to_client") == (
                n * down
            )
            for direction in ("to_upstream", "to_client"):
                assert (
                    page.value("wsgate_tunnel_messages_total", **tunnel, direction=direction)
                    == n * messages
                )
            assert page.value("wsgate_handshakes_total", **ws_where, status="101") == n
            assert page.value("wsgate_http_requests_total", **ws_where, status_class="1xx") == n
            assert page.value("wsgate_handshake_duration_seconds_count", **ws_where) == n
            assert 0 < page.value("wsgate_handshake_duration_seconds_sum", **ws_where) < 10
            # Tunnels are not in the request-latency histogram.
            assert page.value("wsgate_request_duration_seconds_count", **ws_where) == 0
            # Earlier scrapes are counted (this one ends after its page is made).
            before = scraper.scrapes - 1
            assert page.value("wsgate_http_requests_total", **me, status_class="2xx") == before
            assert page.value("wsgate_request_duration_seconds_count", **me) == before

            # Closed: each client sent a Close (masked) and got one back; the gauge drops.
            for ws in clients:
                await ws.close()
            page = await scraper.until("wsgate_tunnels_open", 0, **tunnel)
            close_up, close_down = frame_len(CLOSE_PAYLOAD, True), frame_len(CLOSE_PAYLOAD, False)
            assert page.value("wsgate_tunnel_bytes_total", **tunnel, direction="to_upstream") == (
                n * (up + close_up)
            )
            assert page.value("wsgate_tunnel_bytes_total", **tunnel, direction="to_client") == (
                n * (down + close_down)
            )
            for direction in ("to_upstream", "to_client"):  # a Close is no data message
                assert (
                    page.value("wsgate_tunnel_messages_total", **tunnel, direction=direction)
                    == n * messages
                )

            # 404 (no location matches), 405 on the page, 502 from a refused upstream.
            head, _ = await scraper.request("GET", "/nothing")
            assert head.startswith(b"HTTP/1.1 404 ")
            head, _ = await scraper.request("POST", "/metrics")
            assert head.startswith(b"HTTP/1.1 405 ")
            head, _ = await scraper.request("HEAD", "/metrics")
            assert head.startswith(b"HTTP/1.1 200 ")
            for _ in range(2):
                head, _ = await scraper.request("GET", "/dead")
                assert head.startswith(b"HTTP/1.1 502 ")
            with pytest.raises(InvalidStatus):  # a handshake that gets a 502
                async with connect(f"ws://127.0.0.1:{gw.port}/dead", compression=None):
                    pass
            page = await scraper.page()
            scraped = scraper.scrapes - 1
            nowhere = dict(server="metrics.test", location="")
            dead_where = dict(server="metrics.test", location="~ ^/dead")
            assert page.value("wsgate_http_requests_total", **nowhere, status_class="4xx") == 1
            assert page.value("wsgate_http_requests_total", **me, status_class="4xx") == 1
            assert page.value("wsgate_http_requests_total", **me, status_class="2xx") == (
                scraped + 1  # the HEAD
            )
            assert page.value("wsgate_http_requests_total", **dead_where, status_class="5xx") == 3
            assert page.value("wsgate_handshakes_total", **dead_where, status="502") == 1
            assert page.series("wsgate_handshakes_total") == {
                tuple(sorted({**ws_where, "status": "101"}.items())): n,
                tuple(sorted({**dead_where, "status": "502"}.items())): 1,
            }
            assert page.series("wsgate_upstream_failures_total") == {
                (("peer", f"127.0.0.1:{dead}"), ("type", "error"), ("upstream", "dead")): 3
            }
            assert page.value("wsgate_request_duration_seconds_count", **dead_where) == 3
            assert page.value("wsgate_metrics_series_dropped_total") == 0
        finally:
            for ws in clients:
                await ws.close()
            await scraper.close()
            gw.stop()
            server.close()
            hole.close()

    asyncio.run(scenario())


def test_a_scrape_shows_a_live_tunnel(tmp_path: Path) -> None:
    """Bytes of a tunnel that is still open appear at each scrape, not only at its end."""

    async def scenario() -> None:
        hole = refused_port()
        server, gw = await start(tmp_path / "gw", hole.getsockname()[1])
        peer = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        tunnel = dict(server="metrics.test", location="/ws", upstream="u", peer=peer)
        scraper = await Scraper.open(gw.port)
        try:
            async with connect(
                f"ws://127.0.0.1:{gw.port}/ws", compression=None, ping_interval=None
            ) as ws:
                await ws.send("a" * 10)
                assert await ws.recv() == "a" * 10
                page = await scraper.page()
                assert page.value("wsgate_tunnels_open", **tunnel) == 1
                sent = page.value("wsgate_tunnel_bytes_total", **tunnel, direction="to_upstream")
                assert sent == frame_len(10, True)
                await ws.send("b" * 200)
                assert await ws.recv() == "b" * 200
                page = await scraper.page()
                sent = page.value("wsgate_tunnel_bytes_total", **tunnel, direction="to_upstream")
                assert sent == frame_len(10, True) + frame_len(200, True)
        finally:
            await scraper.close()
            gw.stop()
            server.close()
            hole.close()

    asyncio.run(scenario())


def _shared_metrics() -> bool:
    """Whether the master shares one store with its workers (``Shared.metrics``)."""
    from wsgate.server.shared import Shared

    return hasattr(Shared(1), "metrics")


WORKERS_CONF = "worker_processes 3;\n" + CONF.replace(
    "location = /metrics", 'location = /pid {{ return 200 "$pid"; }}\n    location = /metrics'
)


async def scrape(port: int) -> tuple[str, Page]:
    """A scrape on a new connection (so on any worker), and that worker's pid."""
    scraper = await Scraper.open(port)
    try:
        page = await scraper.page()
        _, pid = await scraper.request("GET", "/pid")
        return pid.decode(), page
    finally:
        await scraper.close()


async def close_all(port: int, clients: list[ClientConnection], tunnel: dict[str, str]) -> None:
    """Close ``clients`` and poll any worker's page until none of ``tunnel``'s is open."""
    for ws in clients:
        await ws.close()
    clients.clear()
    for _ in range(500):
        if (await scrape(port))[1].value("wsgate_tunnels_open", **tunnel) == 0:
            return
        await asyncio.sleep(0.01)


async def on_two_workers(port: int, expect: dict[str, float], **labels: str) -> None:
    """Scrape until two different workers answered; on each page, ``name{labels}`` is
    ``expect[name]`` (``name`` may end in ``/direction`` for the tunnel counters)."""
    seen: set[str] = set()
    for _ in range(200):
        pid, page = await scrape(port)
        got = {}
        for key in expect:
            name, _, direction = key.partition("/")
            extra = {"direction": direction} if direction else {}
            got[key] = page.value(name, **labels, **extra)
        assert got == expect, f"worker {pid}"
        seen.add(pid)
        if len(seen) >= 2:
            return
    raise AssertionError("every scrape landed on one worker")


@pytest.mark.timeout(120)
@pytest.mark.skipif(
    not _shared_metrics(),
    reason="the master does not share a MetricsStore with its workers yet (Shared.metrics)",
)
def test_counters_are_summed_over_workers_and_a_killed_worker(tmp_path: Path) -> None:
    """A scrape on any worker sees every worker's tunnels; a SIGKILLed worker's gauges drop
    (the master's ``worker_exited``) and its counters stay."""

    async def scenario() -> None:
        hole = refused_port()
        server = await serve(echo, "127.0.0.1", 0, compression=None, ping_interval=None)
        port = server.sockets[0].getsockname()[1]
        conf_text = WORKERS_CONF.format(port=port, dead=hole.getsockname()[1])
        gw = await asyncio.to_thread(start_wsgate, tmp_path / "gw", conf_text)
        tunnel = dict(server="metrics.test", location="/ws", upstream="u", peer=f"127.0.0.1:{port}")
        ws_where = dict(server="metrics.test", location="/ws")
        clients: list[ClientConnection] = []
        try:
            n = 12
            for i in range(n):
                ws = await connect(
                    f"ws://127.0.0.1:{gw.port}/ws/{i}", compression=None, ping_interval=None
                )
                clients.append(ws)
                await ws.send(b"y" * 300)
                assert await ws.recv() == b"y" * 300
            await on_two_workers(gw.port, {"wsgate_tunnels_open": n}, **tunnel)
            handshakes = {"wsgate_handshakes_total": n}
            await on_two_workers(gw.port, handshakes, **ws_where, status="101")
            await close_all(gw.port, clients, tunnel)
            up = n * (frame_len(300, True) + frame_len(CLOSE_PAYLOAD, True))
            down = n * (frame_len(300, False) + frame_len(CLOSE_PAYLOAD, False))
            relayed = {
                "wsgate_tunnels_open": 0,
                "wsgate_tunnel_bytes_total/to_upstream": up,
                "wsgate_tunnel_bytes_total/to_client": down,
                "wsgate_tunnel_messages_total/to_upstream": n,
                "wsgate_tunnel_messages_total/to_client": n,
            }
            await on_two_workers(gw.port, relayed, **tunnel)

            # Tunnels open on workers that are then SIGKILLed: nobody closes them in the
            # store; the master's worker_exited does.  Counters of the dead stay.
            for i in range(4):
                clients.append(await connect(f"ws://127.0.0.1:{gw.port}/ws/k{i}", compression=None))
            # A worker counts a tunnel just after it sends the 101: wait until every one has.
            for _ in range(500):
                if (await scrape(gw.port))[1].value("wsgate_tunnels_open", **tunnel) == 4:
                    break
                await asyncio.sleep(0.01)
            for pid in gw.worker_pids():
                os.kill(pid, signal.SIGKILL)
            for _ in range(1000):
                with contextlib.suppress(OSError, AssertionError, asyncio.IncompleteReadError):
                    page = (await scrape(gw.port))[1]
                    if page.value("wsgate_tunnels_open", **tunnel) == 0:
                        break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the killed workers' tunnels are still counted")
            # The dead workers' counters stay: 4 more handshakes, no message (none was sent).
            await on_two_workers(gw.port, {**relayed, "wsgate_tunnels_open": 0}, **tunnel)
            handshakes = {"wsgate_handshakes_total": n + 4}
            await on_two_workers(gw.port, handshakes, **ws_where, status="101")
        finally:
            for ws in clients:
                with contextlib.suppress(Exception):
                    await ws.close()
            gw.stop()
            server.close()
            hole.close()

    asyncio.run(scenario())
