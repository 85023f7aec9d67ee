"""``wsgate.proxy._relay.FdTransport``: the compiled transport a tunnel's sockets move to
after the 101 (src/wsgate/proxy/_relay.c, src/wsgate/proxy/fdrelay.py), held to asyncio's
transport semantics with real loopback TCP peers: data both ways, flow control at the
water marks, EOF and half-close, close after the queue, abort, resets, errors in the
protocol, and no descriptor left behind.

The tunnel tests (test_tunnel*, test_websocket*, test_reload*, ...) run every tunnel through
it where it is built; ``make pytest-pure`` runs them on the event loop's transports.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import recv_exactly, tcp_pair
from wsgate.loop import new_event_loop
from wsgate.proxy import fdrelay

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not fdrelay.AVAILABLE, reason="wsgate.proxy._relay is not built here"),
]


class Recorder(asyncio.Protocol):
    """Every callback, in order; data joined; ``eof_answer`` is what eof_received says."""

    def __init__(self, eof_answer: bool | None = True) -> None:
        self.events: list[tuple[str, Any]] = []
        self.data = bytearray()
        self.eof_answer = eof_answer
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.got = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()

    def eof_received(self) -> bool | None:
        self.events.append(("eof", None))
        self.got.set()
        return self.eof_answer

    def pause_writing(self) -> None:
        self.events.append(("pause", None))

    def resume_writing(self) -> None:
        self.events.append(("resume", None))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append(("lost", exc))
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = new_event_loop()
    try:
        yield lp
    finally:
        lp.close()


def _pair(small: bool = False) -> tuple[socket.socket, socket.socket]:
    """(the outside peer, blocking; the proxy's end, non-blocking) over loopback TCP;
    ``small``: socket buffers of a few KiB, so that a write of 100 KiB is queued."""
    peer, mine = tcp_pair()
    if small:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.settimeout(10)
    mine.setblocking(False)
    return peer, mine


def _transport(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, proto: asyncio.Protocol
) -> Any:
    """An FdTransport on ``sock``'s descriptor (``sock`` gives it up), reading."""
    fd = sock.detach()
    t = fdrelay.FdTransport(fdrelay._poller(loop), fd, proto)
    t.resume_reading()
    return t


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


async def _until(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


def test_data_both_ways_and_close(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        peer, mine = _pair()
        proto = Recorder()
        t = _transport(loop, mine, proto)
        fd = t.fileno()
        peer.sendall(b"hello from outside")
        await _until(lambda: bytes(proto.data) == b"hello from outside")
        t.write(b"and back")
        t.write(bytearray(b" (a bytearray)"))
        t.write(memoryview(b" (a view)"))
        assert recv_exactly(peer, 31) == b"and back (a bytearray) (a view)"
        assert t.get_write_buffer_size() == 0 and t.is_reading() and not t.is_closing()
        t.close()
        assert t.is_closing() and proto.events == []  # connection_lost comes from the loop
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert peer.recv(1) == b""  # FIN
        assert proto.events == [("lost", None)]
        assert t.fileno() == -1 and _closed(fd)
        t.write(b"dropped")  # after the connection is lost: dropped, as asyncio does
        peer.close()

    loop.run_until_complete(main())


def test_flow_control_at_the_water_marks(loop: asyncio.AbstractEventLoop) -> None:
    """A peer that does not read: the queue grows past 64 KiB, pause_writing once; once it
    has drained to 16 KiB, resume_writing once; every byte arrives, in order."""

    async def main() -> None:
        peer, mine = _pair(small=True)
        proto = Recorder()
        t = _transport(loop, mine, proto)
        assert t.get_write_buffer_limits() == (16384, 65536)
        blob = bytes(range(256)) * 4096  # 1 MiB
        for i in range(0, len(blob), 8192):
            t.write(blob[i : i + 8192])
        assert proto.events == [("pause", None)]
        assert t.get_write_buffer_size() > 65536
        got = await loop.run_in_executor(None, recv_exactly, peer, len(blob))
        assert got == blob
        await _until(lambda: t.get_write_buffer_size() == 0)
        assert proto.events == [("pause", None), ("resume", None)]
        t.abort()
        await asyncio.wait_for(proto.lost, 5)
        peer.close()

    loop.run_until_complete(main())


def test_set_write_buffer_limits(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        peer, mine = _pair()
        t = _transport(loop, mine, Recorder())
        t.set_write_buffer_limits(high=1000)
        assert t.get_write_buffer_limits() == (250, 1000)
        t.set_write_buffer_limits(low=100)
        assert t.get_write_buffer_limits() == (100, 400)
        with pytest.raises(ValueError):
            t.set_write_buffer_limits(high=10, low=20)
        t.abort()
        peer.close()

    loop.run_until_complete(main())


def test_eof_kept_open_then_write_eof(loop: asyncio.AbstractEventLoop) -> None:
    """Half-close both ways: the peer's FIN is eof_received (answered True: the transport
    stays open and can still write); write_eof sends ours after what is queued."""

    async def main() -> None:
        peer, mine = _pair(small=True)
        proto = Recorder(eof_answer=True)
        t = _transport(loop, mine, proto)
        peer.sendall(b"last words")
        peer.shutdown(socket.SHUT_WR)
        await _until(lambda: ("eof", None) in proto.events)
        assert bytes(proto.data) == b"last words" and not t.is_reading()
        assert t.can_write_eof()
        t.write(b"x" * 120_000)  # more than the socket takes at once: queued
        t.write_eof()
        with pytest.raises(RuntimeError):
            t.write(b"more")
        got = await loop.run_in_executor(None, recv_exactly, peer, 120_000)
        assert got == b"x" * 120_000
        assert await loop.run_in_executor(None, peer.recv, 1) == b""  # our FIN after it
        assert not proto.lost.done()
        t.close()
        assert await asyncio.wait_for(proto.lost, 5) is None
        peer.close()

    loop.run_until_complete(main())


@pytest.mark.parametrize("answer", [False, None])
def test_eof_answered_false_closes(loop: asyncio.AbstractEventLoop, answer: bool | None) -> None:
    async def main() -> None:
        peer, mine = _pair()
        proto = Recorder(eof_answer=answer)
        _transport(loop, mine, proto)
        peer.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert proto.events == [("eof", None), ("lost", None)]
        assert peer.recv(1) == b""
        peer.close()

    loop.run_until_complete(main())


def test_close_sends_the_queue_first_and_abort_drops_it(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        peer, mine = _pair(small=True)
        proto = Recorder()
        t = _transport(loop, mine, proto)
        t.write(b"y" * 200_000)
        assert t.get_write_buffer_size() > 0
        t.close()
        t.close()  # twice: nothing more
        assert not proto.lost.done()
        got = await loop.run_in_executor(None, recv_exactly, peer, 200_000)
        assert got == b"y" * 200_000
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert [e for e, _ in proto.events] == ["pause", "resume", "lost"]
        peer.close()

        peer, mine = _pair(small=True)
        proto = Recorder()
        t = _transport(loop, mine, proto)
        fd = t.fileno()
        t.write(b"z" * 5_000_000)
        t.abort()
        assert t.get_write_buffer_size() == 0 and t.fileno() == -1 and _closed(fd)
        assert await asyncio.wait_for(proto.lost, 5) is None
        received = 0
        try:
            while chunk := peer.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < 5_000_000  # the queue was dropped
        peer.close()

    loop.run_until_complete(main())


def test_a_reset_is_connection_lost_with_the_error(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        peer, mine = _pair()
        proto = Recorder()
        t = _transport(loop, mine, proto)
        t.write(b"unread")  # so that the peer's close is a reset
        await asyncio.sleep(0.05)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, ConnectionResetError), exc
        assert t.fileno() == -1

    loop.run_until_complete(main())


def test_writing_to_a_reset_peer(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        peer, mine = _pair()
        proto = Recorder()
        t = _transport(loop, mine, proto)
        t.pause_reading()  # the reset is seen by a write, not a read
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        await asyncio.sleep(0.05)
        for _ in range(3):
            t.write(b"into the void")
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), exc

    loop.run_until_complete(main())


def test_a_reset_while_data_is_queued_and_nothing_is_read(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Not reading, with a queue the peer does not take: its reset is seen by the poll of
    the queue (no further write needed), and ends the transport with the error."""

    async def main() -> None:
        peer, mine = _pair(small=True)
        proto = Recorder()
        t = _transport(loop, mine, proto)
        t.pause_reading()
        t.write(b"q" * 1_000_000)
        assert t.get_write_buffer_size() > 0
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), exc
        assert t.get_write_buffer_size() == 0 and t.fileno() == -1

    loop.run_until_complete(main())


def test_pause_reading_and_a_hang_up_while_paused(loop: asyncio.AbstractEventLoop) -> None:
    """Paused, the socket leaves the epoll set (a hung-up socket would be reported on every
    poll) and nothing is delivered, even when the peer closes meanwhile; resuming reads
    what was sent, then the EOF."""

    async def main() -> None:
        peer, mine = _pair()
        proto = Recorder(eof_answer=False)
        t = _transport(loop, mine, proto)
        poller = fdrelay._poller(loop)
        t.pause_reading()
        assert not t.is_reading()
        peer.sendall(b"while paused")
        peer.close()
        await asyncio.sleep(0.1)
        assert proto.data == b"" and proto.events == []
        assert poller.count == 0
        t.resume_reading()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert bytes(proto.data) == b"while paused"
        assert proto.events == [("eof", None), ("lost", None)]

    loop.run_until_complete(main())


def test_an_error_in_data_received_closes_and_is_reported(
    loop: asyncio.AbstractEventLoop,
) -> None:
    class Failing(Recorder):
        def data_received(self, data: bytes) -> None:
            raise ValueError("the protocol failed")

    async def main() -> None:
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        peer, mine = _pair()
        proto = Failing()
        t = _transport(loop, mine, proto)
        peer.sendall(b"boom")
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert t.is_closing() and t.fileno() == -1
        (ctx,) = reported
        assert "data_received" in ctx["message"]
        assert isinstance(ctx["exception"], ValueError) and ctx["protocol"] is proto
        peer.close()

    loop.run_until_complete(main())


def test_set_protocol_and_extra_info(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        peer, mine = _pair()
        local, remote = mine.getsockname(), mine.getpeername()
        first, second = Recorder(), Recorder()
        t = _transport(loop, mine, first)
        assert t.get_protocol() is first
        assert t.get_extra_info("peername") == remote
        assert t.get_extra_info("sockname") == local
        assert t.get_extra_info("sslcontext") is None
        view = t.get_extra_info("socket")
        assert view.fileno() == t.fileno() and view.family == mine.family
        view.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        assert view.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        view.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert view.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert t.fileno() >= 0  # the view never closes the socket
        t.set_protocol(second)
        peer.sendall(b"to the second")
        await _until(lambda: bytes(second.data) == b"to the second")
        assert first.data == b""
        t.abort()
        await asyncio.wait_for(second.lost, 5)
        # Kept once read, as asyncio's and uvloop's transports keep theirs after the close.
        assert t.get_extra_info("peername") == remote
        assert t.get_extra_info("socket") is None
        peer.close()

    loop.run_until_complete(main())


def test_many_transports_in_one_poll(loop: asyncio.AbstractEventLoop) -> None:
    """200 sockets at once, every one echoed through its transport, then all closed: none
    left in the epoll set, every descriptor closed."""

    async def main() -> None:
        pairs = [_pair() for _ in range(200)]
        protos, transports = [], []
        for _, mine in pairs:
            proto = Recorder()
            protos.append(proto)
            transports.append(_transport(loop, mine, proto))
        fds = [t.fileno() for t in transports]
        for i, (peer, _) in enumerate(pairs):
            peer.sendall(b"%d" % i)
        await _until(lambda: all(bytes(p.data) == b"%d" % i for i, p in enumerate(protos)))
        for t in transports:
            t.close()
        await asyncio.wait_for(asyncio.gather(*(p.lost for p in protos)), 5)
        assert fdrelay._poller(loop).count == 0
        assert all(_closed(fd) for fd in fds)
        for peer, _ in pairs:
            peer.close()

    loop.run_until_complete(main())


# -- connections on the compiled transport from the start (accept, connect) -----------------


class Made(Recorder):
    """A Recorder that also records ``connection_made``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append(("made", transport))


def _nodelay(fd: int) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.detach()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_open_connection_then_data_both_ways(loop: asyncio.AbstractEventLoop, host: str) -> None:
    """open_connection: connection_made with the transport once connected (nothing before),
    reading at once, TCP_NODELAY set, the peer's address asked of the socket."""

    async def main() -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.bind((host, 0))
            listener.listen()
            port = listener.getsockname()[1]
            proto = Made()
            assert await fdrelay.open_connection(loop, host, port, proto)
            assert [e for e, _ in proto.events] == ["made"]
            t = proto.events[0][1]
            assert isinstance(t, fdrelay.FdTransport) and t.is_reading()
            assert t.get_extra_info("peername")[:2] == (host, port)
            assert _nodelay(t.fileno()) != 0
            peer, _ = listener.accept()
            with peer:
                peer.settimeout(10)
                peer.sendall(b"from the server")
                await _until(lambda: bytes(proto.data) == b"from the server")
                t.write(b"to the server")
                assert recv_exactly(peer, 13) == b"to the server"
                t.close()
                await asyncio.wait_for(proto.lost, 5)
                assert peer.recv(1) == b""
        assert fdrelay._poller(loop).count == 0

    loop.run_until_complete(main())


def test_open_connection_refused(loop: asyncio.AbstractEventLoop) -> None:
    """A refused connect raises OSError(ECONNREFUSED); the protocol hears nothing and no
    descriptor stays open."""

    async def main() -> None:
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]  # bound, not listening: refused
            fdrelay._poller(loop)  # its epoll descriptor is made on first use
            before = len(os.listdir("/proc/self/fd"))
            proto = Made()
            with pytest.raises(OSError) as info:
                await fdrelay.open_connection(loop, "127.0.0.1", port, proto)
            assert info.value.errno == errno.ECONNREFUSED
            await asyncio.sleep(0.01)
            assert proto.events == [] and not proto.lost.done()
            assert len(os.listdir("/proc/self/fd")) == before
            assert fdrelay._poller(loop).count == 0

    loop.run_until_complete(main())


def test_open_connection_cancelled_while_connecting(loop: asyncio.AbstractEventLoop) -> None:
    """A connect cancelled before it completes (proxy_connect_timeout) closes the socket;
    the protocol hears nothing.  The backlog is filled so that the SYN goes unanswered."""

    async def main() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            fillers = []
            for _ in range(8):  # the backlog full: later SYNs are dropped
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                fillers.append(s)
            fdrelay._poller(loop)  # its epoll descriptor is made on first use
            before = len(os.listdir("/proc/self/fd"))
            proto = Made()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await fdrelay.open_connection(loop, "127.0.0.1", port, proto)
            await asyncio.sleep(0.01)
            assert proto.events == [] and not proto.lost.done()
            assert len(os.listdir("/proc/self/fd")) == before
            assert fdrelay._poller(loop).count == 0
            for s in fillers:
                s.close()

    loop.run_until_complete(main())


def test_open_connection_to_a_name_is_left_to_the_loop(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        proto = Made()
        assert not await fdrelay.open_connection(loop, "localhost", 9, proto)
        assert not await fdrelay.open_connection(loop, "fe80::1%lo", 9, proto)
        assert proto.events == []

    loop.run_until_complete(main())


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_accept_gives_the_peer_address_and_a_ready_socket(host: str) -> None:
    """accept(): the socket non-blocking, close-on-exec, TCP_NODELAY; the peer's address as
    the socket module gives it; BlockingIOError when nobody waits."""
    assert fdrelay.accept is not None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen()
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            fdrelay.accept(listener.fileno())
        with socket.create_connection((host, listener.getsockname()[1])) as client:
            fd, peer = fdrelay.accept(listener.fileno())
            try:
                assert peer == client.getsockname()
                assert not os.get_blocking(fd) and not os.get_inheritable(fd)
                assert _nodelay(fd) != 0
                os.write(fd, b"hi")
                assert recv_exactly(client, 2) == b"hi"
            finally:
                os.close(fd)


def test_an_upstream_named_by_a_name_connects_through_the_loop_with_one_protocol(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """``UpstreamOpen`` to ``localhost``: the compiled connect leaves a name to the loop,
    which connects the protocol the factory made (made once, on the loop's transport)."""
    from wsgate.proxy.connect import UpstreamOpen
    from wsgate.proxy.endpoint import Endpoint
    from wsgate.upstream.roundrobin import Peer

    made: list[Endpoint] = []

    def factory() -> Endpoint:
        made.append(Endpoint(loop))
        return made[-1]

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        async def main() -> Endpoint:
            return await UpstreamOpen(
                loop, Peer(f"localhost:{port}", "localhost", port), factory=factory
            ).run()

        ep = loop.run_until_complete(main())
        try:
            assert made == [ep]
            assert ep.transport is not None
            assert not isinstance(ep.transport, fdrelay.FdTransport)
            conn, _ = listener.accept()
            conn.close()
        finally:
            ep.abort()
            loop.run_until_complete(asyncio.sleep(0))  # the transport's close callbacks
