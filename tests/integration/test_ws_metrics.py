"""Per-message WebSocket figures through a real wsgate: the ``$ws_*`` access-log variables,
the close-code, duration and message-size series of the ``prometheus`` page (summed over two
workers), and that ``websocket_metrics`` changes no byte on the wire.

Peers are the ``websockets`` library (no compression, no pings, so every frame's size is
known: RFC 6455 §5.2, a client's frames carry a 4-byte mask) and raw sockets where the bytes
themselves are compared.  "in" is what the client sent, "out" what it was sent."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.conftest import start_wsgate
from tests.integration import test_rfc8441 as h2ws
from tests.integration.loopback import wait_for
from tests.integration.test_http2 import Client
from tests.integration.test_metrics import (
    Scraper,
    close_all,
    frame_len,
    on_two_workers,
    scrape,
)
from tests.integration.test_websocket import SWITCH
from tests.integration.test_ws_features import RawClient
from tests.prometheus_text import Page

pytestmark = pytest.mark.timeout(90)

FORMAT = (
    "$request_uri $status in=$ws_messages_in out=$ws_messages_out bin=$ws_bytes_in "
    "bout=$ws_bytes_out cc=$ws_close_code_client cu=$ws_close_code_upstream "
    "d=$ws_duration body=$body_bytes_sent"
)

CONF = """
{main}
events {{}}
http {{
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  log_format wsm '{format}';
  access_log logs/access.log wsm;
  upstream u {{ server 127.0.0.1:{port}; }}
  server {{ listen 127.0.0.1:0; server_name wsm.test;
    location = /metrics {{ prometheus; access_log off; }}
    location = /pid {{ return 200 "$pid"; access_log off; }}
    location = /plain {{ return 200 "plain"; }}
    location /ws {{ proxy_pass http://u; proxy_set_header Upgrade $http_upgrade;
                   proxy_set_header Connection $connection_upgrade; {extra} }} }}
}}
"""


async def upstream_handler(ws: ServerConnection) -> None:
    """Echo; ``bye`` makes the upstream close first, with 4002."""
    with contextlib.suppress(ConnectionClosed):
        async for msg in ws:
            if msg == "bye":
                await ws.close(4002, "later")
                return
            await ws.send(msg)


async def start(tmp: Path, extra: str = "", main: str = "") -> tuple[object, object, int]:
    server = await serve(
        upstream_handler, "127.0.0.1", 0, compression=None, ping_interval=None, max_size=None
    )
    port = server.sockets[0].getsockname()[1]
    conf = CONF.format(main=main, format=FORMAT, port=port, extra=extra)
    gw = await asyncio.to_thread(start_wsgate, tmp, conf)
    return server, gw, port


def fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


async def client(port: int, path: str) -> ClientConnection:
    return await connect(
        f"ws://127.0.0.1:{port}{path}", compression=None, ping_interval=None, max_size=None
    )


def test_log_variables_count_both_ways_and_name_each_sides_close(tmp_path: Path) -> None:
    async def scenario() -> None:
        server, gw, _ = await start(tmp_path / "gw")
        try:
            # 1: the client closes (4001); a fragmented message counts once.
            ws = await client(gw.port, "/ws/one")
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(["ab", "cd", "ef"])  # one text message in three frames
            assert await ws.recv() == "abcdef"
            await ws.close(4001, "done")
            # 2: the upstream closes (4002) after one message from the client.
            ws = await client(gw.port, "/ws/two")
            await ws.send("bye")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4002
            # 3: the client goes without a Close; then a request that is no tunnel.
            raw = await asyncio.to_thread(RawClient, gw.port, "/ws/three")
            raw.sock.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(b"GET /plain HTTP/1.1\r\nHost: wsm.test\r\nConnection: close\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 200 ")
            writer.close()
            lines = await asyncio.to_thread(gw.access_lines, 4)
        finally:
            gw.stop()
            server.close()  # type: ignore[attr-defined]
        by_path = {line.split()[0]: line for line in lines}
        one = fields(by_path["/ws/one"])
        close_in, close_out = frame_len(6, True), frame_len(6, False)  # 4001 + "done"
        assert one == {
            "in": "2",
            "out": "2",
            # websockets ends a fragmented message with an empty final continuation frame.
            "bin": str(frame_len(5, True) + 3 * frame_len(2, True) + frame_len(0, True) + close_in),
            "bout": str(frame_len(5, False) + frame_len(6, False) + close_out),
            "cc": "4001",
            "cu": "4001",  # websockets echoes the code it got (RFC 6455 §5.5.1)
            "d": one["d"],
            "body": one["bout"],  # out is what $body_bytes_sent counts for a tunnel
        }
        assert 0 <= float(one["d"]) < 30
        two = fields(by_path["/ws/two"])
        assert (two["in"], two["out"], two["cc"], two["cu"]) == ("1", "0", "4002", "4002")
        assert two["bout"] == str(frame_len(7, False))  # 4002 + "later": the Close alone
        three = fields(by_path["/ws/three"])
        assert (three["in"], three["out"], three["cc"], three["cu"]) == ("0", "0", "none", "none")
        plain = by_path["/plain"].split()
        assert plain[2:9] == ["in=-", "out=-", "bin=-", "bout=-", "cc=-", "cu=-", "d=-"]
        assert "[alert]" not in gw.errors()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def _raw_conf_test(tmp_path: Path, close: bytes, expect: str) -> None:
    async def scenario() -> None:
        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(SWITCH)
            await reader.readexactly(len(close))
            writer.close()

        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conf = CONF.format(main="", format=FORMAT, port=port, extra="")
        gw = await asyncio.to_thread(start_wsgate, tmp_path / "gw", conf)
        try:

            def run_client() -> None:
                c = RawClient(gw.port, "/ws/raw")
                # Split through the code bytes: the scanner carries the header over.
                for i in range(len(close)):
                    c.sock.sendall(close[i : i + 1])
                c.sock.settimeout(10)
                while c.sock.recv(65536):
                    pass
                c.close()

            await asyncio.to_thread(run_client)
            lines = await asyncio.to_thread(gw.access_lines, 1)
        finally:
            gw.stop()
            server.close()
        got = fields(lines[0])
        assert (got["cc"], got["cu"]) == (expect, "none")

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.mark.parametrize(
    ("close", "expect"),
    [
        (b"\x88\x80" + b"\x01\x02\x03\x04", "1005"),  # masked, no payload: no code
        (b"\x88\x82" + b"\x01\x02\x03\x04" + bytes((0x03 ^ 1, 0xE8 ^ 2)), "1000"),
        (b"\x88\x86" + b"\x00\x00\x00\x00" + (3001).to_bytes(2, "big") + b"abcd", "3001"),
    ],
    ids=["no-code", "1000-byte-by-byte", "3001"],
)
def test_client_close_code_read_byte_by_byte(tmp_path: Path, close: bytes, expect: str) -> None:
    _raw_conf_test(tmp_path, close, expect)


def sizes_expected(n: int) -> list[tuple[float, float]]:
    """The cumulative buckets after ``n`` clients each sent 10, 100 and 5000 bytes."""
    bounds = [64 * 4**i for i in range(10)]
    out = []
    for b in bounds:
        out.append((float(b), float(n * sum(1 for s in (10, 100, 5000) if s <= b))))
    out.append((float("inf"), float(3 * n)))
    return out


@pytest.mark.timeout(120)
def test_prometheus_series_summed_over_two_workers(tmp_path: Path) -> None:
    """With ``websocket_metrics on``: message sizes per direction (a fragmented message
    once, at its total size), close codes per side, durations; a scrape on either of two
    workers sees every tunnel's."""

    async def scenario() -> None:
        server, gw, port = await start(
            tmp_path / "gw", extra="websocket_metrics on;", main="worker_processes 2;"
        )
        peer = f"127.0.0.1:{port}"
        tunnel = dict(server="wsm.test", location="/ws", upstream="u", peer=peer)
        clients: list[ClientConnection] = []
        try:
            n = 8
            for i in range(n):
                ws = await client(gw.port, f"/ws/{i}")
                clients.append(ws)
                await ws.send(b"a" * 10)
                assert await ws.recv() == b"a" * 10
                await ws.send("b" * 100)
                assert await ws.recv() == "b" * 100
                await ws.send([b"c" * 2500, b"c" * 2500])  # one message, two frames
                assert await ws.recv() == b"c" * 5000
            await close_all(gw.port, clients, tunnel)
            total = 3 * n
            expect = {
                "wsgate_tunnels_open": 0,
                "wsgate_tunnel_messages_total/to_upstream": total,
                "wsgate_tunnel_messages_total/to_client": total,
                "wsgate_tunnel_message_size_bytes_count/to_upstream": total,
                "wsgate_tunnel_message_size_bytes_count/to_client": total,
                "wsgate_tunnel_message_size_bytes_sum/to_upstream": n * 5110,
                "wsgate_tunnel_message_size_bytes_sum/to_client": n * 5110,
                "wsgate_tunnel_duration_seconds_count": n,
            }
            await on_two_workers(gw.port, expect, **tunnel)
            pages: list[Page] = []
            pids: set[str] = set()
            for _ in range(200):
                pid, page = await scrape(gw.port)
                if pid not in pids:
                    pids.add(pid)
                    pages.append(page)
                if len(pids) == 2:
                    break
            assert len(pages) == 2
            for page in pages:
                for direction in ("to_upstream", "to_client"):
                    got = page.buckets(
                        "wsgate_tunnel_message_size_bytes", **tunnel, direction=direction
                    )
                    assert got == sizes_expected(n), direction
                for side in ("client", "upstream"):
                    codes = {
                        dict(labels)["code"]: v
                        for labels, v in page.series("wsgate_tunnel_close_codes_total").items()
                        if dict(labels)["side"] == side
                    }
                    assert codes == {"1000": n}, side
                assert 0 < page.value("wsgate_tunnel_duration_seconds_sum", **tunnel) < 60 * n
        finally:
            for ws in clients:
                with contextlib.suppress(Exception):
                    await ws.close()
            gw.stop()
            server.close()  # type: ignore[attr-defined]
        assert "[alert]" not in gw.errors()

    asyncio.run(asyncio.wait_for(scenario(), 100))


def test_metrics_off_keeps_no_size_histogram(tmp_path: Path) -> None:
    """Without ``websocket_metrics``: no size series (the family is declared, empty); the
    close codes and the duration are kept (they cost nothing per message)."""

    async def scenario() -> None:
        server, gw, port = await start(tmp_path / "gw")
        tunnel = dict(server="wsm.test", location="/ws", upstream="u", peer=f"127.0.0.1:{port}")
        scraper = await Scraper.open(gw.port)
        try:
            ws = await client(gw.port, "/ws/x")
            await ws.send("hi")
            assert await ws.recv() == "hi"
            await ws.close(1001)
            page = await scraper.until("wsgate_tunnel_duration_seconds_count", 1, **tunnel)
            assert page.series("wsgate_tunnel_message_size_bytes_count") == {}
            assert page.families["wsgate_tunnel_message_size_bytes"].type == "histogram"
            codes = page.series("wsgate_tunnel_close_codes_total")
            assert {dict(k)["side"]: dict(k)["code"] for k in codes} == {
                "client": "1001",
                "upstream": "1001",
            }
        finally:
            await scraper.close()
            gw.stop()
            server.close()  # type: ignore[attr-defined]

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_rfc8441_stream_tunnel_logs_the_same_figures(tmp_path: Path) -> None:
    """A WebSocket over an HTTP/2 stream is the same tunnel: its line has the figures."""

    async def scenario() -> None:
        server = await serve(upstream_handler, "127.0.0.1", 0, compression=None)
        port = server.sockets[0].getsockname()[1]
        http = f"log_format wsm '{FORMAT}';"
        location = (
            f"location /ws {{ proxy_pass http://127.0.0.1:{port}; {h2ws.UPGRADE}"
            " access_log logs/ws.log wsm; websocket_metrics on; }"
        )
        gw = await asyncio.to_thread(start_wsgate, tmp_path / "gw", h2ws.conf(location, http=http))
        log = gw.prefix / "logs" / "ws.log"
        try:

            def run_client() -> None:
                c = Client(gw.port)
                c.read()
                sid = h2ws.connect(c)
                h2ws.send(c, sid, h2ws.frame(b"hello", opcode=1))
                assert h2ws.receive(c, sid, 1) == [(1, b"hello")]
                h2ws.send(c, sid, h2ws.frame(b"\x0f\xa1", opcode=8), end=True)  # Close 4001
                c.wait(sid)
                c.close()
                wait_for(lambda: log.exists() and log.read_text().count("\n") == 1, "the line")

            await asyncio.to_thread(run_client)
        finally:
            gw.stop()
            server.close()
        got = fields(log.read_text())
        assert (got["in"], got["out"], got["cc"], got["cu"]) == ("1", "1", "4001", "4001")
        assert got["bin"] == str(h2ws_len(5) + h2ws_len(2))
        assert got["bout"] == got["body"]

    asyncio.run(asyncio.wait_for(scenario(), 60))


def h2ws_len(payload: int) -> int:
    """A client frame of test_rfc8441.frame (masked, payload under 126 bytes)."""
    return 2 + 4 + payload
