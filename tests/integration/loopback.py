"""Scriptable HTTP/1.1 upstream servers on loopback for the failover and keepalive tests.

All servers of a test run on one asyncio loop in a background thread, bound to port 0.  Each
:class:`Backend` counts accepted and open connections and records every request, and answers
through ``respond(backend, request) -> bytes | None``: bytes are written as the whole response,
``None`` means "never answer" (read until the peer closes).  A request carrying ``Upgrade`` is
answered ``101`` when ``websocket`` is set, and the connection is then held until the peer
closes it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "Backend",
    "Loop",
    "Request",
    "dead_port",
    "get",
    "loop_fixture",
    "silent",
    "ok",
    "status",
    "wait_for",
    "ws_open",
]

HOST = "127.0.0.1"


@dataclass
class Request:
    method: str
    path: str
    head: bytes
    body: bytes
    conn: int  # which accepted connection (1-based) carried it


Responder = Callable[["Backend", Request], bytes | None]


def ok(backend: Backend, request: Request) -> bytes:
    """200 with the backend's name as the body."""
    body = backend.name.encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def status(code: int, reason: str = "Status") -> Responder:
    def respond(backend: Backend, request: Request) -> bytes:
        body = f"{backend.name} {code}".encode()
        return b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n%s" % (
            code,
            reason.encode(),
            len(body),
            body,
        )

    return respond


def fixed(reply: bytes) -> Responder:
    """The same ``reply`` to every request."""

    def respond(backend: Backend, request: Request) -> bytes:
        return reply

    return respond


def silent(backend: Backend, request: Request) -> None:
    return None


@dataclass
class Backend:
    name: str
    respond: Responder = ok
    websocket: bool = False
    #: Close the connection after this many requests on it, without answering the last one.
    drop_on_request: int = 0
    #: Close an idle connection after this many seconds (0: never).
    idle_close: float = 0.0
    port: int = 0
    accepted: int = 0
    open: int = 0
    requests: list[Request] = field(default_factory=list)
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.writers.add(writer)
        conn = self.accepted
        on_conn = 0
        try:
            while True:
                if self.idle_close and on_conn:
                    try:
                        head = await asyncio.wait_for(
                            reader.readuntil(b"\r\n\r\n"), self.idle_close
                        )
                    except TimeoutError:
                        return
                else:
                    head = await reader.readuntil(b"\r\n\r\n")
                lower = head.lower()
                body = b""
                if b"content-length:" in lower:
                    n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(n)
                method, path = head.split(b" ")[:2]
                on_conn += 1
                self.requests.append(Request(method.decode(), path.decode(), head, body, conn))
                if self.drop_on_request and on_conn >= self.drop_on_request:
                    return
                if self.websocket and b"\r\nupgrade:" in lower:
                    key = lower.split(b"sec-websocket-key:")[1].split(b"\r\n")[0].strip()
                    accept = base64.b64encode(
                        hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
                    )
                    writer.write(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                    )
                    await reader.read()
                    return
                reply = self.respond(self, request=self.requests[-1])
                if reply is None:
                    await reader.read()
                    return
                writer.write(reply)
                await writer.drain()
                if b"\r\nconnection: close" in reply.lower():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.close()


class Loop:
    """One asyncio loop in a thread, hosting the test's backends."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.backends: list[Backend] = []

    def backend(self, name: str, respond: Responder = ok, **options: object) -> Backend:
        backend = Backend(name, respond, **options)  # type: ignore[arg-type]

        async def start() -> None:
            backend.server = await asyncio.start_server(backend.handle, HOST, 0)
            backend.port = backend.server.sockets[0].getsockname()[1]

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(5)
        self.backends.append(backend)
        return backend

    def close(self) -> None:
        async def stop() -> None:
            for backend in self.backends:
                if backend.server is not None:
                    backend.server.close()
                for writer in list(backend.writers):
                    writer.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                await asyncio.wait(tasks, timeout=2)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def loop_fixture() -> Iterator[Loop]:
    bg = Loop()
    try:
        yield bg
    finally:
        bg.close()


def dead_port() -> int:
    """A loopback port nobody listens on (connect() is refused)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def get(
    port: int, path: str = "/", method: str = "GET", body: bytes | None = None, extra: str = ""
) -> tuple[int, bytes]:
    """One request on a new client connection; returns (status, body)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(head.encode() + b"\r\n" + (body or b""))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    return int(top.split(b" ")[1]), rest


def ws_open(port: int) -> socket.socket:
    """A WebSocket handshake through wsgate; returns the socket once the 101 arrived."""
    s, data = ws_handshake(port)
    assert data.startswith(b"HTTP/1.1 101 "), data
    return s


def ws_handshake(port: int, path: str = "/ws", host: str = "t") -> tuple[socket.socket, bytes]:
    """A WebSocket handshake for ``path`` through wsgate: the socket and what arrived up to
    the end of the response head (and perhaps more)."""
    s = socket.create_connection((HOST, port), timeout=5)
    s.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n".encode()
        + b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    return s, data


def wait_for(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
