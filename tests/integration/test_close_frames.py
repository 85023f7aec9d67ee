"""``Tunnel.going_away`` and the message counts, in-process, between real WebSocket peers.

A tiny proxy in the test's loop relays the HTTP handshake and then hands both loopback
connections to :class:`wsgate.proxy.tunnel.Tunnel`, as ``relay.py`` does after a 101.  Peers
are the ``websockets`` library's asyncio client and server, or, where the test must decide
which byte is written when (a frame left half-sent, a Close never answered), a raw stream
driven by websockets' Sans-I/O protocol.  Every scenario runs on asyncio's loop and on uvloop.

What "never a reset" is checked by: ``connection_exc`` of a ``websockets`` connection (set
from ``connection_lost``, ``ConnectionResetError`` after a reset), or a raw stream's ``read``
ending with ``b""`` rather than ``ConnectionResetError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import pytest
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from wsgate.proxy.frames import GOING_AWAY, REASONS, SERVICE_RESTART, TRY_AGAIN_LATER
from wsgate.proxy.tunnel import Tunnel

HOST = "127.0.0.1"
#: Long enough that a test finishing well inside it proves no timeout was involved.
LONG = 30.0


@pytest.fixture(params=["asyncio", "uvloop"])
def runner(request: pytest.FixtureRequest) -> Iterator[asyncio.Runner]:
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as r:
        yield r


#: What the running scenario opened, closed by :func:`run` whether the scenario passed or not
#: (a uvloop loop closed with open transports can hang the test session).
_OPEN: list[Callable[[], Awaitable[object]]] = []


def run(runner: asyncio.Runner, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run a scenario, bounded: pytest-timeout's signal cannot interrupt a uvloop loop."""

    async def bounded() -> None:
        try:
            await asyncio.wait_for(scenario(), 30)
        finally:
            while _OPEN:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(_OPEN.pop()(), 5)

    runner.run(bounded())


def closing(server: asyncio.Server) -> asyncio.Server:
    """Close ``server`` after the scenario."""

    async def aclose() -> None:
        server.close()
        await server.wait_closed()

    _OPEN.append(aclose)
    return server


def closing_writer(writer: asyncio.StreamWriter) -> asyncio.StreamWriter:
    """Close ``writer``'s connection after the scenario."""

    async def aclose() -> None:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    _OPEN.append(aclose)
    return writer


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for ``cond`` (a counter the tunnel updates as bytes pass), polling the loop."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.002)


# the proxy ------------------------------------------------------------------------------------
class _Held(asyncio.Protocol):
    """A connection before its tunnel: collects bytes until an HTTP head is complete."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.changed.set()

    async def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            self.changed.clear()
            await self.changed.wait()
        end = self.buf.index(b"\r\n\r\n") + 4
        head = bytes(self.buf[:end])
        del self.buf[:end]
        return head


@dataclass
class Proxy:
    """Relays the handshake, then tunnels; ``opened`` yields each :class:`Tunnel`."""

    upstream_port: int
    websocket: bool = True
    close_timeout: float = LONG
    server: asyncio.Server | None = None
    opened: asyncio.Queue[Tunnel] = field(default_factory=asyncio.Queue)
    ends: dict[Tunnel, asyncio.Event] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"ws://{HOST}:{self.server.sockets[0].getsockname()[1]}/"

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def _accepted(self) -> _Held:
        held = _Held()
        task = asyncio.get_running_loop().create_task(self._connect(held))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return held

    async def _connect(self, client: _Held) -> None:
        loop = asyncio.get_running_loop()
        head = await client.head()
        up_transport, up = await loop.create_connection(_Held, HOST, self.upstream_port)
        up_transport.write(head)
        client_transport = client.transport
        assert client_transport is not None
        client_transport.write(await up.head())
        ended = asyncio.Event()
        tunnel = Tunnel(
            loop,
            client_transport,
            up_transport,
            read_timeout=LONG,
            send_timeout_upstream=LONG,
            send_timeout_client=LONG,
            on_close=lambda t: ended.set(),
            websocket=self.websocket,
            close_timeout=self.close_timeout,
        )
        self.ends[tunnel] = ended
        tunnel.start(bytes(up.buf), bytes(client.buf), False, False)
        self.opened.put_nowait(tunnel)

    async def tunnel(self) -> Tunnel:
        return await asyncio.wait_for(self.opened.get(), 5)

    async def ended(self, tunnel: Tunnel, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.ends[tunnel].wait(), timeout)

    async def aclose(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        for tunnel, ended in self.ends.items():
            if not ended.is_set():
                tunnel.abort()
        await self.server.wait_closed()


async def start_proxy(upstream_port: int, **options: object) -> Proxy:
    proxy = Proxy(upstream_port, **options)  # type: ignore[arg-type]
    proxy.server = await asyncio.get_running_loop().create_server(proxy._accepted, HOST, 0)
    _OPEN.append(proxy.aclose)
    return proxy


# raw peers ------------------------------------------------------------------------------------
class Raw:
    """A WebSocket endpoint on asyncio streams, driven by websockets' Sans-I/O protocol: the
    test decides when each byte is written."""

    def __init__(
        self, proto: Protocol, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proto = proto
        self.reader = reader
        self.writer = writer
        self.frames: list[Frame] = []
        self.raw = bytearray()  # every byte received after the handshake
        _OPEN.append(self.aclose)

    def flush(self) -> None:
        """Write what the protocol has queued (its replies included)."""
        for data in self.proto.data_to_send():
            if data:
                self.writer.write(data)
            elif self.writer.can_write_eof():
                self.writer.write_eof()

    async def receive(self, count: int = 1, timeout: float = 5.0) -> list[Frame]:
        """Read until ``count`` more frames have been received; returns them."""
        start = len(self.frames)
        async with asyncio.timeout(timeout):
            while len(self.frames) < start + count:
                data = await self.reader.read(65536)
                if not data:
                    raise AssertionError(f"EOF after {self.frames[start:]}")
                self.raw += data
                self.proto.receive_data(data)
                self.frames += [e for e in self.proto.events_received() if isinstance(e, Frame)]
        return self.frames[start:]

    async def eof(self, timeout: float = 5.0) -> bytes:
        """Read to the end of the stream (a reset raises): what came before the FIN."""
        async with asyncio.timeout(timeout):
            rest = await self.reader.read()
        self.raw += rest
        return rest

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def raw_client(url: str) -> Raw:
    proto = ClientProtocol(parse_uri(url))
    reader, writer = await asyncio.open_connection(HOST, parse_uri(url).port)
    raw = Raw(proto, reader, writer)
    proto.send_request(proto.connect())
    raw.flush()
    async with asyncio.timeout(10):
        while not any(isinstance(e, Response) for e in proto.events_received()):
            proto.receive_data(await reader.read(65536))
    return raw


async def raw_server() -> tuple[asyncio.Server, asyncio.Queue[Raw]]:
    """An upstream that completes the handshake and hands each connection to the test."""
    accepted: asyncio.Queue[Raw] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proto = ServerProtocol()
        raw = Raw(proto, reader, writer)
        while True:
            proto.receive_data(await reader.read(65536))
            requests = [e for e in proto.events_received() if isinstance(e, Request)]
            if requests:
                break
        proto.send_response(proto.accept(requests[0]))
        raw.flush()
        accepted.put_nowait(raw)

    return closing(await asyncio.start_server(handle, HOST, 0)), accepted


def port_of(server: object) -> int:
    return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]


@dataclass
class Ended:
    """How the ``websockets`` server's connection ended."""

    messages: list[str | bytes]
    rcvd: Close | None
    sent: Close | None
    exc: BaseException | None


def recording_server(
    ended: asyncio.Future[Ended], echo: bool = True
) -> Callable[[ServerConnection], Awaitable[None]]:
    async def handler(ws: ServerConnection) -> None:
        messages: list[str | bytes] = []
        try:
            async for msg in ws:
                messages.append(msg)
                if echo:
                    await ws.send(msg)
        except ConnectionClosedError:
            pass
        await ws.wait_closed()
        proto = ws.protocol
        ended.set_result(Ended(messages, proto.close_rcvd, proto.close_sent, ws.connection_exc))

    return handler


def close_of(frame: Frame) -> Close:
    assert frame.opcode is Opcode.CLOSE, frame
    return Close.parse(frame.data)


# tests ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [GOING_AWAY, SERVICE_RESTART, TRY_AGAIN_LATER])
def test_going_away_sends_the_code_to_both_peers(runner: asyncio.Runner, code: int) -> None:
    reason = REASONS[code].decode()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[Ended] = loop.create_future()
        async with serve(recording_server(ended), HOST, 0, close_timeout=1) as server:
            proxy = await start_proxy(port_of(server))
            async with connect(proxy.url, close_timeout=1) as ws:
                tunnel = await proxy.tunnel()
                await ws.send("hello")
                assert await ws.recv() == "hello"
                started = loop.time()
                tunnel.going_away(code)
                # websockets reports 1000 and 1001 as ConnectionClosedOK, others as Error.
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
                await ws.wait_closed()
            assert isinstance(info.value, ConnectionClosedOK) == (code == GOING_AWAY)
            assert info.value.rcvd == Close(code, reason)
            assert info.value.sent == Close(code, reason)  # the client's reply (swallowed)
            assert ws.connection_exc is None
            up = await asyncio.wait_for(ended, 5)
            assert up.rcvd == Close(code, reason)
            assert up.sent == Close(code, reason) and up.exc is None
            assert up.messages == ["hello"]
            await proxy.ended(tunnel)
            assert loop.time() - started < 5  # by the closing handshakes, not the timeout
            assert tunnel.timeout_reason is None
            assert (tunnel.messages_to_upstream, tunnel.messages_to_client) == (1, 1)

    run(runner, scenario)


def test_a_frame_in_flight_is_completed_before_the_close(runner: asyncio.Runner) -> None:
    """A 4 MiB message being sent slowly: the upstream gets it whole, then the Close; the
    client gets its Close at once (that direction was at a boundary)."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[Ended] = loop.create_future()
        big = os.urandom(4 * 1024 * 1024)
        async with serve(
            recording_server(ended, echo=False), HOST, 0, max_size=None, close_timeout=1
        ) as server:
            proxy = await start_proxy(port_of(server))
            client = await raw_client(proxy.url)
            tunnel = await proxy.tunnel()
            client.proto.send_binary(big)
            (frame,) = client.proto.data_to_send()
            piece = 64 * 1024
            client.writer.write(frame[: 16 * piece])
            await until(lambda: tunnel.bytes_to_upstream >= 16 * piece)
            tunnel.going_away(GOING_AWAY)
            # The client's Close arrives while its own frame is still half-sent.
            (close,) = await client.receive()
            assert close_of(close) == Close(1001, "going away")
            for at in range(16 * piece, len(frame), piece):
                client.writer.write(frame[at : at + piece])
                await client.writer.drain()
            client.flush()  # the client's Close reply, after the frame
            assert await client.eof() == b""  # closed after the reply, and no second Close
            assert len(client.frames) == 1
            up = await asyncio.wait_for(ended, 5)
            assert up.messages == [big]
            assert up.rcvd == Close(1001, "going away") and up.exc is None
            await proxy.ended(tunnel)
            assert tunnel.messages_to_upstream == 1 and tunnel.messages_to_client == 0

    run(runner, scenario)


def test_a_side_that_already_sent_close_gets_no_second_one(runner: asyncio.Runner) -> None:
    """The client started the closing handshake; the upstream has not answered yet.  The
    upstream must not get a second Close (RFC 6455 §5.5.1); the client gets 1001 as the
    answer, and the upstream's own answer is swallowed."""

    async def scenario() -> None:
        server, accepted = await raw_server()
        proxy = await start_proxy(port_of(server))
        async with connect(proxy.url, close_timeout=1) as ws:
            tunnel = await proxy.tunnel()
            upstream = await asyncio.wait_for(accepted.get(), 5)
            closing = asyncio.create_task(ws.close(1000, "bye"))
            (close,) = await upstream.receive()
            assert close_of(close) == Close(1000, "bye")
            tunnel.going_away(GOING_AWAY)
            await asyncio.wait_for(closing, 5)
            assert ws.protocol.close_rcvd == Close(1001, "going away")
            assert ws.connection_exc is None
            # The upstream answers, Close(1000, "bye"): swallowed, the client has its Close.
            answer, eof = upstream.proto.data_to_send()
            assert eof == b"" and close_of(Frame(Opcode.CLOSE, answer[2:])) == Close(1000, "bye")
            upstream.writer.write(answer)
            await until(lambda: tunnel.upstream.close_seen and tunnel.upstream.skip == 0)
            # Towards the upstream wsgate is the client: the server closes first (§7.1.1).
            assert not tunnel.upstream.finished and not tunnel.upstream.lost
            upstream.writer.write_eof()
            assert await upstream.eof() == b""  # nothing after the client's Close
        await proxy.ended(tunnel)

    run(runner, scenario)


def test_a_peer_that_never_answers_is_closed_after_the_timeout(runner: asyncio.Runner) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server, accepted = await raw_server()
        proxy = await start_proxy(port_of(server), close_timeout=0.5)
        async with connect(proxy.url, close_timeout=1) as ws:
            tunnel = await proxy.tunnel()
            upstream = await asyncio.wait_for(accepted.get(), 5)
            started = loop.time()
            tunnel.going_away(GOING_AWAY)
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()
            await ws.wait_closed()
            # The client answered: it is closed at once, not at the timeout.
            assert loop.time() - started < 0.4
            assert ws.connection_exc is None
            (close,) = await upstream.receive()
            assert close_of(close) == Close(1001, "going away")
            # The upstream never answers: a clean close (FIN, not a reset) after the timeout.
            assert await upstream.eof() == b""
            assert loop.time() - started >= 0.45
        await proxy.ended(tunnel)

    run(runner, scenario)


def test_a_peer_stuck_mid_frame_is_closed_after_the_timeout(runner: asyncio.Runner) -> None:
    """No Close can be put into a stream whose frame never ends: the upstream gets no Close,
    and both connections are closed (FIN) when the timeout passes."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[Ended] = loop.create_future()
        async with serve(recording_server(ended), HOST, 0, close_timeout=1) as server:
            proxy = await start_proxy(port_of(server), close_timeout=0.5)
            client = await raw_client(proxy.url)
            tunnel = await proxy.tunnel()
            client.proto.send_text(b"x" * 1000)
            (frame,) = client.proto.data_to_send()
            client.writer.write(frame[:500])
            await until(lambda: tunnel.bytes_to_upstream >= 500)
            started = loop.time()
            tunnel.going_away(GOING_AWAY)
            (close,) = await client.receive()
            assert close_of(close) == Close(1001, "going away")
            assert loop.time() - started < 0.4
            # The client cannot answer in the middle of its frame; it is closed at the timeout.
            assert await client.eof() == b""
            assert loop.time() - started >= 0.45
            up = await asyncio.wait_for(ended, 5)
            assert up.rcvd is None and up.messages == [] and up.exc is None
            await proxy.ended(tunnel)

    run(runner, scenario)


def test_close_waits_for_a_paused_direction(runner: asyncio.Runner) -> None:
    """The client does not read, so the upstream's stream stops mid-frame (flow control).  When
    the client reads again it gets whole messages only, then the Close."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        flooding = asyncio.Event()

        async def flood(ws: ServerConnection) -> None:
            flooding.set()
            try:
                while True:
                    await ws.send(os.urandom(100_000))
            except ConnectionClosed:
                pass

        async with serve(flood, HOST, 0, compression=None, close_timeout=1) as server:
            proxy = await start_proxy(port_of(server))
            client = await raw_client(proxy.url)
            tunnel = await proxy.tunnel()
            await flooding.wait()
            # Blocked: the tunnel's write buffer towards the client is full.
            await until(lambda: tunnel.client.blocked_since is not None)
            tunnel.going_away(GOING_AWAY)
            while True:
                await client.receive()
                if client.frames[-1].opcode is Opcode.CLOSE:
                    break
            data = [f for f in client.frames if f.opcode is Opcode.BINARY]
            assert data and all(len(f.data) == 100_000 for f in data)
            assert close_of(client.frames[-1]) == Close(1001, "going away")
            assert tunnel.messages_to_client == len(data)
            client.flush()
            assert await client.eof() == b""
            await proxy.ended(tunnel, timeout=10)
            assert tunnel.timeout_reason is None
            assert loop.time() > 0

    run(runner, scenario)


@pytest.mark.parametrize("compression", ["deflate", None])
def test_messages_are_counted_each_way(runner: asyncio.Runner, compression: str | None) -> None:
    async def scenario() -> None:
        async def fragments(ws: ClientConnection | ServerConnection) -> AsyncIterator[str]:
            for i in range(4):
                yield f"part {i} "
                await ws.ping()  # a control frame between two fragments

        async def handler(ws: ServerConnection) -> None:
            async for msg in ws:
                await ws.send(msg)
                if msg == "fragments please":
                    await ws.send(fragments(ws))

        async with serve(handler, HOST, 0, compression=compression, close_timeout=1) as server:
            proxy = await start_proxy(port_of(server))
            async with connect(proxy.url, compression=compression, close_timeout=1) as ws:
                tunnel = await proxy.tunnel()
                negotiated = ws.response.headers.get("Sec-WebSocket-Extensions")  # type: ignore[union-attr]
                assert (negotiated is not None) == (compression is not None)
                sent = 0
                for i in range(20):
                    await ws.send(f"text {i}" * (i * 10))
                    await ws.send(os.urandom(i * 700))
                    sent += 2
                for _ in range(3):
                    await ws.send(fragments(ws))
                    sent += 1
                await ws.send("fragments please")
                sent += 1
                received = 0
                for _ in range(sent + 1):
                    await ws.recv()
                    received += 1
                assert tunnel.messages_to_upstream == sent == 44
                assert tunnel.messages_to_client == received == 45
            await proxy.ended(tunnel)

    run(runner, scenario)


def test_going_away_closes_a_non_websocket_tunnel(runner: asyncio.Runner) -> None:
    """Another upgrade is an opaque byte stream: no frames are injected, it is just closed."""

    async def scenario() -> None:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            closing_writer(writer)
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n\r\n")
            got.set_result(await reader.read())

        server = closing(await asyncio.start_server(upstream, HOST, 0))
        proxy = await start_proxy(port_of(server), websocket=False)
        reader, writer = await asyncio.open_connection(HOST, proxy.port)
        closing_writer(writer)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        tunnel = await proxy.tunnel()
        writer.write(b"\x81\x05hello")
        await until(lambda: tunnel.bytes_to_upstream == 7)
        tunnel.going_away(GOING_AWAY)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert await asyncio.wait_for(got, 5) == b"\x81\x05hello"
        assert tunnel.messages_to_upstream == 0
        await proxy.ended(tunnel)

    run(runner, scenario)
