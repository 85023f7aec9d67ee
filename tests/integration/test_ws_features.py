"""wsgate's WebSocket features through a real wsgate: keepalive pings with dead-peer
detection, message limits, and that the features left off change no byte on the wire.

Peers are the ``websockets`` library (its frames observed through its debug logger, so that
a test awaits the Pings it received instead of sleeping) and raw sockets where the bytes
matter or a peer must stop answering.  Nothing waits for a timer by sleeping: each test
awaits the event that the timer causes (a Ping, a Close, a log line)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode

from tests.conftest import WsgateProcess, start_wsgate
from tests.helpers import REPO_ROOT, require_node
from tests.integration.loopback import wait_for
from tests.integration.test_http2 import tls_files  # noqa: F401 - a fixture
from tests.integration.test_websocket import CONF, SWITCH, handshake, start_raw
from wsgate.proxy.frames import unmask

pytestmark = pytest.mark.timeout(60)

#: Error log at info in the server (the dead-client line is an info one).
LOG = "error_log logs/error.log info;"
#: Pings every 200 ms, answered within 2 s.
PINGS = "websocket_ping_interval 200ms {side}; websocket_ping_timeout 2s;"


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 45))  # type: ignore[arg-type]


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    head = bytes((b0, 0x80 | n)) if n < 126 else bytes((b0, 0xFE)) + n.to_bytes(2, "big")
    key = os.urandom(4)
    return head + key + unmask(payload, key)


def unmasked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    head = bytes((b0, n)) if n < 126 else bytes((b0, 126)) + n.to_bytes(2, "big")
    return head + payload


class RawClient:
    """A client socket after the handshake, reading frames from wsgate (unmasked)."""

    def __init__(self, port: int, path: str = "/") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(handshake(path))
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "closed during the handshake"
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head

    def _need(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def frame(self) -> tuple[int, bytes] | None:
        """The next frame ``(opcode, payload)``, or ``None`` at EOF."""
        if not self._need(2):
            return None
        n, head = self.buf[1] & 0x7F, 2
        if n == 126:
            assert self._need(4)
            n, head = int.from_bytes(self.buf[2:4], "big"), 4
        assert self.buf[1] & 0x80 == 0, "frames to the client are not masked"
        assert self._need(head + n)
        op, payload = self.buf[0] & 0x0F, self.buf[head : head + n]
        self.buf = self.buf[head + n :]
        return op, payload

    def close(self) -> None:
        self.sock.close()


def close_code(payload: bytes) -> int:
    return int.from_bytes(payload[:2], "big")


class FrameLog(logging.Handler):
    """Counts the Ping frames a ``websockets`` connection received (its ``< PING`` lines)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.DEBUG)
        self.loop = loop
        self.pings = 0
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "< %s" and getattr(record.args[0], "opcode", None) is Opcode.PING:  # type: ignore[index]
            self.pings += 1
            self.loop.call_soon_threadsafe(self.event.set)

    async def wait_pings(self, n: int) -> None:
        while self.pings < n:
            self.event.clear()
            await self.event.wait()


def frame_logger(name: str, loop: asyncio.AbstractEventLoop) -> tuple[logging.Logger, FrameLog]:
    logger = logging.getLogger(f"test_ws_features.{name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = FrameLog(loop)
    logger.handlers = [handler]
    return logger, handler


async def start_ws(
    tmp: Path, extra: str, handler: Callable[[ServerConnection], Awaitable[None]]
) -> tuple[object, WsgateProcess]:
    server = await serve(handler, "127.0.0.1", 0, max_size=None, ping_interval=None)
    port = server.sockets[0].getsockname()[1]
    gw = await asyncio.to_thread(start_wsgate, tmp, CONF.format(port=port, extra=LOG + extra))
    return server, gw


async def echo(ws: ServerConnection) -> None:
    async for msg in ws:
        await ws.send(msg)


# features off: not a byte changed --------------------------------------------------------------
FROM_CLIENT = (
    masked(0x1, b"hello")
    + masked(0x9, b"client ping")
    + masked(0x2, os.urandom(300), fin=False)
    + masked(0xA, b"client pong")
    + masked(0x0, os.urandom(1000))
    + masked(0x1, b"")
)
FROM_UPSTREAM = (
    unmasked(0x9, b"upstream ping")
    + unmasked(0x2, os.urandom(200))
    + unmasked(0xA, b"upstream pong")
    + unmasked(0x1, b"bye")
)

OFF = (
    "websocket_ping_interval off; websocket_ping_timeout 5s; websocket_max_message_size 0; "
    "websocket_max_frame_size 0 both; websocket_message_rate off;"
)
#: On, with limits the traffic stays within and pings too rare to be sent in the test.
ON_QUIET = (
    "websocket_ping_interval 1h both; websocket_max_message_size 1m both; "
    "websocket_max_frame_size 64k both; websocket_message_rate 100r/s burst=100 both;"
)


@pytest.mark.parametrize(
    "extra",
    [
        "",
        OFF,
        ON_QUIET,
        "websocket_metrics off;",
        "websocket_metrics on;",
        "websocket_metrics on; " + ON_QUIET,
    ],
    ids=["absent", "off", "on-quiet", "metrics-off", "metrics-on", "metrics-on-features"],
)
def test_bytes_on_the_wire_unchanged(tmp_path: Path, extra: str) -> None:
    """What each end receives is byte for byte what the other sent: with the directives
    absent, present but off, and on (end Pings and Pongs pass untouched), and with
    ``websocket_metrics`` (the message-size histogram) off, on, and on with the features."""

    async def scenario() -> None:
        received: list[bytes] = []

        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(SWITCH)
            received.append(await reader.readexactly(len(FROM_CLIENT)))
            writer.write(FROM_UPSTREAM)
            await writer.drain()
            await reader.read()

        server, gw = await start_raw(tmp_path / "gw", upstream, extra=extra)
        try:

            def client() -> bytes:
                c = RawClient(gw.port)
                try:
                    # Split across writes, headers included, as a real stack may send it.
                    for i in range(0, len(FROM_CLIENT), 97):
                        c.sock.sendall(FROM_CLIENT[i : i + 97])
                    assert c._need(len(FROM_UPSTREAM))
                    return c.buf
                finally:
                    c.close()

            got = await asyncio.to_thread(client)
            assert got == FROM_UPSTREAM
            assert received == [FROM_CLIENT]
        finally:
            gw.stop()
            server.close()
        assert "[alert]" not in gw.errors()

    run(scenario())


# keepalive pings -------------------------------------------------------------------------------
def test_pings_reach_a_real_client_and_their_pongs_are_consumed(tmp_path: Path) -> None:
    """A ``websockets`` client answers wsgate's Pings; the upstream sees none of the Pongs,
    the tunnel outlives several interval + timeout periods, and the client's own Ping is
    relayed (and answered by the upstream)."""

    async def scenario() -> None:
        seen: list[bytes] = []

        async def upstream(ws: ServerConnection) -> None:
            async for msg in ws:
                seen.append(msg if isinstance(msg, bytes) else msg.encode())
                await ws.send(msg)

        server, gw = await start_ws(tmp_path / "gw", PINGS.format(side="client"), upstream)
        logger, frames = frame_logger("client", asyncio.get_running_loop())
        try:
            async with connect(
                f"ws://127.0.0.1:{gw.port}/",
                ping_interval=None,
                compression=None,
                logger=logger,
            ) as ws:
                await frames.wait_pings(4)
                pong = await ws.ping(b"mine")  # the client's own: answered by the upstream
                await asyncio.wait_for(pong, 10)
                await ws.send("still here")
                assert await ws.recv() == "still here"
            assert seen == [b"still here"]
        finally:
            gw.stop()
            server.close()
        assert "[alert]" not in gw.errors() and "timed out" not in gw.errors()

    run(scenario())


def test_pings_over_tls_and_their_pongs_consumed(
    tmp_path: Path,
    tls_files: tuple[trustme.CA, str, str],  # noqa: F811
) -> None:
    """The same over ``listen ... ssl`` (a TLS transport under the tunnel's client side): a
    ``websockets`` client over wss answers several rounds of Pings; what the upstream got
    (``$ws_bytes_in``) is its text and its Close, not one Pong."""
    ca, crt, key = tls_files
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)

    async def scenario() -> None:
        server = await serve(echo, "127.0.0.1", 0, ping_interval=None)
        port = server.sockets[0].getsockname()[1]
        conf = (
            CONF.format(port=port, extra=LOG + PINGS.format(side="client"))
            .replace(
                "listen 127.0.0.1:0;",
                f"listen 127.0.0.1:0 ssl; ssl_certificate {crt}; ssl_certificate_key {key};"
                " access_log logs/ws.log wsb;",
            )
            .replace("http {", "http { log_format wsb '$ws_bytes_in $ws_messages_in';", 1)
        )
        gw = await asyncio.to_thread(start_wsgate, tmp_path / "gw", conf)
        logger, frames = frame_logger("client-tls", asyncio.get_running_loop())
        try:
            async with connect(
                f"wss://127.0.0.1:{gw.port}/",
                ssl=ctx,
                server_hostname="localhost",
                ping_interval=None,
                compression=None,
                logger=logger,
            ) as ws:
                await frames.wait_pings(4)
                await ws.send("still here")  # a text frame of 2 + 4 + 10 bytes
                assert await ws.recv() == "still here"
            # ... and its Close 1000 of 2 + 4 + 2.
            log = tmp_path / "gw" / "logs" / "ws.log"
            await asyncio.to_thread(
                wait_for, lambda: log.exists() and log.read_text() != "", "the log line"
            )
            assert log.read_text().split() == ["24", "1"]
        finally:
            gw.stop()
            server.close()
        assert "[alert]" not in gw.errors() and "timed out" not in gw.errors()

    run(scenario())


def test_pings_both_ways_between_real_peers(tmp_path: Path) -> None:
    """``both``: the ``websockets`` server behind wsgate (which fails a connection on an
    unmasked frame from its client) and the client each get and answer wsgate's Pings."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        up_logger, up_frames = frame_logger("upstream-both", loop)
        logger, frames = frame_logger("client-both", loop)
        server = await serve(echo, "127.0.0.1", 0, ping_interval=None, logger=up_logger)
        port = server.sockets[0].getsockname()[1]
        conf = CONF.format(port=port, extra=LOG + PINGS.format(side="both"))
        gw = await asyncio.to_thread(start_wsgate, tmp_path / "gw", conf)
        try:
            async with connect(
                f"ws://127.0.0.1:{gw.port}/", ping_interval=None, logger=logger
            ) as ws:
                await frames.wait_pings(3)
                await up_frames.wait_pings(3)
                await ws.send("both alive")
                assert await ws.recv() == "both alive"
        finally:
            await asyncio.to_thread(_stop, gw)
            server.close()
        assert "timed out" not in gw.errors() and "[alert]" not in gw.errors()

    run(scenario())


def test_proxy_pongs_consumed_end_pongs_relayed(tmp_path: Path) -> None:
    """Byte level: the upstream receives the client's Ping and Pong and text, never the
    Pongs answering wsgate."""

    async def scenario() -> None:
        received: list[bytes] = []
        tail = masked(0xA, b"unsolicited") + masked(0x9, b"mine") + masked(0x1, b"after")

        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(SWITCH)
            received.append(await reader.readexactly(len(tail)))
            await reader.read()

        server, gw = await start_raw(
            tmp_path / "gw", upstream, extra=LOG + PINGS.format(side="client")
        )
        try:

            def client() -> list[bytes]:
                c = RawClient(gw.port)
                pings = []
                try:
                    while len(pings) < 3:
                        f = c.frame()
                        assert f is not None and f[0] == 0x9, f
                        pings.append(f[1])
                        # Answer as a real client does, split to test the held Pong.
                        pong = masked(0xA, f[1])
                        c.sock.sendall(pong[:3])
                        c.sock.sendall(pong[3:])
                    c.sock.sendall(tail)
                    return pings
                finally:
                    # Keep the socket until the upstream has what it waits for.
                    deadline = time.monotonic() + 10
                    while not received and time.monotonic() < deadline:
                        time.sleep(0.01)
                    c.close()

            pings = await asyncio.to_thread(client)
            assert len(set(pings)) == 1 and pings[0].startswith(b"wsgate:")
            assert received == [tail]
        finally:
            gw.stop()
            server.close()

    run(scenario())


def test_client_that_stops_answering_is_closed(tmp_path: Path) -> None:
    """A client that never reads nor answers: after interval + timeout the upstream gets a
    Close 1001 and the error log nginx's kind of timeout line, at info."""

    async def scenario() -> None:
        codes: list[int | None] = []
        done = asyncio.Event()

        async def upstream(ws: ServerConnection) -> None:
            await ws.wait_closed()
            codes.append(ws.close_code)
            done.set()

        server, gw = await start_ws(tmp_path / "gw", PINGS.format(side="client"), upstream)
        try:
            sock = socket.create_connection(("127.0.0.1", gw.port))
            sock.sendall(handshake())  # and never reads or answers again
            try:
                await asyncio.wait_for(done.wait(), 20)
            finally:
                sock.close()
            assert codes == [1001]
            await asyncio.to_thread(
                gw.wait_log,
                r"\[info\] .*client timed out \(110: Connection timed out\) waiting for "
                r"websocket pong while proxying upgraded connection",
            )
        finally:
            gw.stop()
            server.close()

    run(scenario())


def test_upstream_that_stops_answering_is_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(SWITCH)
            await writer.drain()
            await asyncio.sleep(3600)  # alive, never answering: a frozen backend

        server, gw = await start_raw(
            tmp_path / "gw", upstream, extra=LOG + PINGS.format(side="upstream")
        )
        try:

            def client() -> list[tuple[int, bytes] | None]:
                c = RawClient(gw.port)
                try:
                    return [c.frame(), c.frame()]
                finally:
                    c.close()

            close, eof = await asyncio.to_thread(client)
            assert close is not None and close[0] == 0x8 and close_code(close[1]) == 1001
            assert eof is None
            await asyncio.to_thread(
                gw.wait_log, r"\[error\] .*upstream timed out \(110: Connection timed out\) "
            )
        finally:
            gw.stop()
            server.close()

    run(scenario())


# message limits ---------------------------------------------------------------------------------
async def limited(
    tmp: Path, extra: str, send: Callable[[object], Awaitable[None]]
) -> tuple[int | None, list[int | None], WsgateProcess]:
    """Run ``send(ws)`` against an echo upstream; the close code the client got (``None``:
    still open) and the ones the upstream got."""
    codes: list[int | None] = []

    async def upstream(ws: ServerConnection) -> None:
        try:
            await echo(ws)
        finally:
            codes.append(ws.close_code)

    server, gw = await start_ws(tmp, extra, upstream)
    try:
        async with connect(
            f"ws://127.0.0.1:{gw.port}/", compression=None, max_size=None, ping_interval=None
        ) as ws:
            try:
                await send(ws)
            except ConnectionClosed:
                pass
            if ws.close_code is None:
                return None, codes, gw
            rcvd = ws.protocol.close_rcvd
        async with asyncio.timeout(10):  # the upstream's handler ends after its Close
            while not codes:
                await asyncio.sleep(0.01)
        return rcvd.code if rcvd else None, codes, gw
    finally:
        await asyncio.to_thread(_stop, gw)
        server.close()


def _stop(gw: WsgateProcess) -> None:
    gw.stop()


async def until_closed(ws: object) -> None:
    await ws.recv()  # type: ignore[attr-defined]
    await ws.recv()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("size", "code"), [(1000, None), (1001, 1009)])
def test_max_message_size(tmp_path: Path, size: int, code: int | None) -> None:
    async def send(ws: object) -> None:
        await ws.send(b"a" * size)  # type: ignore[attr-defined]
        assert await ws.recv() == b"a" * size  # type: ignore[attr-defined]
        # Fragmented: summed.
        await ws.send([b"b" * 600, b"c" * 400])  # type: ignore[attr-defined]
        assert await ws.recv() == b"b" * 600 + b"c" * 400  # type: ignore[attr-defined]

    async def scenario() -> None:
        got, upstream_codes, gw = await limited(
            tmp_path / "gw", "websocket_max_message_size 1000;", send
        )
        assert got == code
        if code is not None:
            assert upstream_codes == [1001]
            assert f"client intended to send too large websocket message: {size} bytes" in (
                gw.errors()
            )

    run(scenario())


@pytest.mark.parametrize(("last", "code"), [(400, None), (401, 1009)])
def test_max_message_size_fragmented(tmp_path: Path, last: int, code: int | None) -> None:
    async def send(ws: object) -> None:
        await ws.send([b"b" * 600, b"c" * last])  # type: ignore[attr-defined]
        assert len(await ws.recv()) == 600 + last  # type: ignore[attr-defined]

    async def scenario() -> None:
        got, upstream_codes, _ = await limited(
            tmp_path / "gw", "websocket_max_message_size 1000 both;", send
        )
        assert got == code
        if code:
            assert upstream_codes == [1001]

    run(scenario())


@pytest.mark.parametrize(("size", "code"), [(500, None), (501, 1009)])
def test_max_frame_size(tmp_path: Path, size: int, code: int | None) -> None:
    async def send(ws: object) -> None:
        await ws.send([b"x" * 500, b"y" * size])  # type: ignore[attr-defined]
        assert len(await ws.recv()) == 500 + size  # type: ignore[attr-defined]

    async def scenario() -> None:
        got, _, gw = await limited(tmp_path / "gw", "websocket_max_frame_size 500;", send)
        assert got == code
        if code:
            assert "too large websocket frame: 501 bytes" in gw.errors()

    run(scenario())


@pytest.mark.parametrize(("count", "code"), [(3, None), (4, 1008)])
def test_message_rate_with_burst(tmp_path: Path, count: int, code: int | None) -> None:
    """1 message a minute with a burst of 2: three at once pass, the fourth closes."""

    async def send(ws: object) -> None:
        for i in range(count):
            await ws.send(f"m{i}")  # type: ignore[attr-defined]
        for i in range(count):
            assert await ws.recv() == f"m{i}"  # type: ignore[attr-defined]

    async def scenario() -> None:
        got, upstream_codes, gw = await limited(
            tmp_path / "gw", "websocket_message_rate 1r/m burst=2;", send
        )
        assert got == code
        if code:
            assert upstream_codes == [1001]
            assert "limiting websocket messages from client, excess: 3.000" in gw.errors()

    run(scenario())


def test_limit_on_what_the_upstream_sends(tmp_path: Path) -> None:
    """``upstream``: the upstream's 101-byte message closes it with 1009, the client 1001."""

    async def scenario() -> None:
        codes: list[int | None] = []

        async def upstream(ws: ServerConnection) -> None:
            await ws.send(b"u" * 100)
            await ws.send(b"u" * 101)
            await ws.wait_closed()
            codes.append(ws.close_code)

        server, gw = await start_ws(
            tmp_path / "gw", "websocket_max_message_size 100 upstream;", upstream
        )
        try:
            async with connect(f"ws://127.0.0.1:{gw.port}/", compression=None) as ws:
                assert await ws.recv() == b"u" * 100
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1001
            async with asyncio.timeout(10):
                while not codes:
                    await asyncio.sleep(0.01)
            assert codes == [1009]
        finally:
            await asyncio.to_thread(_stop, gw)
            server.close()

    run(scenario())


def test_compressed_tunnel_counts_wire_size_and_pings(tmp_path: Path) -> None:
    """permessage-deflate on: 100 KB of zeros is a few hundred bytes on the wire, so a 1000
    byte limit lets it through; wsgate's Pings work (control frames are never compressed)."""

    async def scenario() -> None:
        extra = "websocket_max_message_size 1000; " + PINGS.format(side="client")
        server, gw = await start_ws(tmp_path / "gw", extra, echo)
        logger, frames = frame_logger("deflate", asyncio.get_running_loop())
        try:
            async with connect(
                f"ws://127.0.0.1:{gw.port}/", ping_interval=None, logger=logger, max_size=None
            ) as ws:
                assert ws.response.headers.get("Sec-WebSocket-Extensions", "").startswith(
                    "permessage-deflate"
                )
                await ws.send(b"\0" * 100_000)
                assert await ws.recv() == b"\0" * 100_000
                await frames.wait_pings(2)
                await ws.send(os.urandom(2000))  # incompressible: over on the wire
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1009
        finally:
            await asyncio.to_thread(_stop, gw)
            server.close()

    run(scenario())


# faults -----------------------------------------------------------------------------------------
def test_peer_gone_mid_frame_with_a_ping_pending_leaks_nothing(tmp_path: Path) -> None:
    """The client stops in the middle of a frame while wsgate's Ping to the (silent)
    upstream is unanswered, then closes: the tunnel ends, logs its line, no [alert], and
    wsgate's descriptors come back to what they were."""

    async def scenario() -> None:
        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(SWITCH)
            await reader.read()

        server, gw = await start_raw(
            tmp_path / "gw",
            upstream,
            extra=LOG + "websocket_ping_interval 100ms both; websocket_ping_timeout 30s;",
        )
        try:

            def client() -> None:
                c = RawClient(gw.port)
                c.sock.sendall(masked(0x2, b"z" * 5000)[:1000])  # mid-frame, for ever
                f = c.frame()  # wsgate's Ping to the client: pings are pending
                assert f is not None and f[0] == 0x9
                c.close()

            async def once(n: int) -> None:
                await asyncio.to_thread(client)
                lines = await asyncio.to_thread(gw.access_lines, n)
                assert " 101 " in lines[n - 1]

            await once(1)  # the first tunnel also opens what a worker keeps (its loop's)
            before = await asyncio.to_thread(gw.open_fds)
            for n in range(2, 5):
                await once(n)
            deadline = time.monotonic() + 10
            while await asyncio.to_thread(gw.open_fds) != before:
                assert time.monotonic() < deadline, "\n".join(gw.fd_links())
                await asyncio.sleep(0.05)
        finally:
            gw.stop()
            server.close()
        assert "[alert]" not in gw.errors()

    run(scenario())


NODE_CLIENT = """
const WebSocket = require('ws');
const [url, limit] = [process.argv[1], Number(process.argv[2])];
const ws = new WebSocket(url, { perMessageDeflate: false });
let pings = 0;
const out = {};
ws.on('ping', () => { pings += 1; if (pings === 3) ws.send(Buffer.alloc(limit, 97)); });
ws.on('message', (data) => { out.echo = data.length; ws.send(Buffer.alloc(limit + 1, 98)); });
ws.on('close', (code) => {
  out.pings = pings; out.close = code; console.log(JSON.stringify(out)); process.exit(0);
});
ws.on('error', (e) => { console.log(JSON.stringify({ error: String(e) })); process.exit(1); });
"""


def test_node_ws_client_answers_pings_and_meets_the_limit(tmp_path: Path) -> None:
    """Node's ``ws``: it answers wsgate's Pings by itself (3 awaited), its message at the
    limit is echoed, the next one, a byte over, closes it with 1009."""
    node = require_node("ws")

    async def scenario() -> None:
        extra = "websocket_max_message_size 1000; " + PINGS.format(side="client")
        server, gw = await start_ws(tmp_path / "gw", extra, echo)
        try:
            proc = await asyncio.create_subprocess_exec(
                node,
                "-e",
                NODE_CLIENT,
                f"ws://127.0.0.1:{gw.port}/",
                "1000",
                cwd=REPO_ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            result = json.loads(out)
            assert result["pings"] >= 3  # a fourth may come before the close
            assert (result["echo"], result["close"]) == (1000, 1009)
        finally:
            await asyncio.to_thread(_stop, gw)
            server.close()
        assert "timed out" not in gw.errors()

    run(scenario())


FROZEN_CLIENT = """
import asyncio, sys
from websockets.asyncio.client import connect

async def main():
    async with connect(sys.argv[1], ping_interval=None) as ws:
        await ws.send("hi")
        await ws.recv()
        print("open", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_frozen_client_process_is_detected(tmp_path: Path) -> None:
    """A real client process stopped with SIGSTOP (its kernel still acknowledges TCP, so only
    a Ping can tell): the upstream gets a Close 1001 after interval + timeout."""

    async def scenario() -> None:
        codes: list[int | None] = []
        done = asyncio.Event()

        async def upstream(ws: ServerConnection) -> None:
            try:
                await echo(ws)
            finally:
                codes.append(ws.close_code)
                done.set()

        extra = "websocket_ping_interval 300ms client; websocket_ping_timeout 700ms;"
        server, gw = await start_ws(tmp_path / "gw", extra, upstream)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            FROZEN_CLIENT,
            f"ws://127.0.0.1:{gw.port}/",
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"open\n"
            proc.send_signal(signal.SIGSTOP)
            started = time.monotonic()
            await asyncio.wait_for(done.wait(), 20)
            # Reported, not asserted (the machine is shared): interval + timeout is 1 s.
            print(f"frozen client detected after {time.monotonic() - started:.2f} s")
            assert codes == [1001]
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            await proc.wait()
            await asyncio.to_thread(_stop, gw)
            server.close()

    run(scenario())


def test_graceful_stop_of_a_feature_tunnel_sends_1001_both_ways(tmp_path: Path) -> None:
    """QUIT with pings and limits on: the client and the upstream each get a Close 1001, as a
    plain tunnel's ends do, and wsgate exits."""

    async def scenario() -> None:
        codes: list[int | None] = []

        async def upstream(ws: ServerConnection) -> None:
            try:
                await echo(ws)
            finally:
                codes.append(ws.close_code)

        extra = PINGS.format(side="both") + " websocket_max_message_size 1m both;"
        server, gw = await start_ws(tmp_path / "gw", extra, upstream)
        try:
            async with connect(f"ws://127.0.0.1:{gw.port}/", ping_interval=None) as ws:
                await ws.send("before")
                assert await ws.recv() == "before"
                gw.signal(signal.SIGQUIT)
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 20)
                rcvd = ws.protocol.close_rcvd
                assert rcvd is not None and rcvd.code == 1001
            assert await asyncio.to_thread(gw.proc.wait, 20) == 0
            async with asyncio.timeout(10):
                while not codes:
                    await asyncio.sleep(0.01)
            assert codes == [1001]
        finally:
            await asyncio.to_thread(_stop, gw)
            server.close()
        assert "[alert]" not in gw.errors()

    run(scenario())
