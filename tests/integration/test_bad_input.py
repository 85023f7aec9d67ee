"""Bad input gets what nginx gives it, and nothing else is harmed.

Real sockets on loopback against a real ``wsgate`` process (``tests/conftest.py``).  The client
side is raw ``socket`` for malformed input and ``websockets.sync.client`` for WebSocket peers;
the upstreams are small asyncio servers running on a background event loop in this process
(``_Background``), bound to port 0.  Expected statuses, error pages, log lines and close
behaviour follow NGINX-SEMANTICS.md §4-§6:

* malformed request line, both Content-Length and Transfer-Encoding, HTTP/1.1 without Host:
  ``400`` and close; unknown Transfer-Encoding: ``501``; request line over
  ``large_client_header_buffers``: ``414``; a header line or the whole head over it: ``494``
  sent as ``400 Request Header Or Cookie Too Large``; all of these close the connection and the
  upstream never sees the request;
* ``client_header_timeout``: close with nothing sent (INFO "client timed out");
* upstream refused: ``502`` (keep-alive); upstream silent: ``504`` after ``proxy_read_timeout``;
* tunnels: an upstream close ends the tunnel, the idle timer is shared by both directions, and
  client bytes pipelined behind the handshake reach the upstream;
* issue 14: a bad request pipelined behind a good one, a bad byte in a chunked body or a request
  line before its end (answered at once), ``max_headers``, HTTP/0.9 (body only), a 101 nobody
  asked for (its head only), an upstream body that goes bad after its head (a close).

After every scenario the proxy must still serve a normal request, and its open file
descriptors must return to the count measured after start-up (no connection left behind).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from tests.conftest import WsgateProcess

Factory = Callable[..., WsgateProcess]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

HOST = "127.0.0.1"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
FOOTER = "wsgate/0.1.0"
TIMEOUT = 5.0


def conf(
    uport: int | str, *, main: str = "", http: str = "", server: str = "", upstream: str = ""
) -> str:
    """The test configuration; ``upstream`` replaces the single ``server`` line if given."""
    servers = upstream or f"server 127.0.0.1:{uport};"
    return f"""
{main}
events {{}}
http {{
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  {http}
  upstream up {{ {servers} }}
  server {{
    listen 127.0.0.1:0;
    client_header_timeout 1s; proxy_read_timeout 2s; proxy_connect_timeout 1s;
    {server}
    location / {{
      proxy_pass http://up;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
    }}
  }}
}}
"""


#: Sockets that keep dead ports taken for the rest of the run (see :func:`dead_port`).
_HELD: list[socket.socket] = []


def dead_port() -> int:
    """A loopback port with nothing listening: bound and kept bound, never listening (a
    connection to it is refused), so that no listener started later (wsgate's on port 0)
    can be given the same port."""
    s = socket.socket()
    s.bind((HOST, 0))
    _HELD.append(s)
    return int(s.getsockname()[1])


def page(status: str, title: str | None = None, extra: str = "") -> bytes:
    """nginx's built-in error page (``ngx_http_special_response.c``) with wsgate's footer."""
    title = title or status
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status}</h1></center>\r\n{extra}"
        f"<hr><center>{FOOTER}</center>\r\n</body>\r\n</html>\r\n"
    ).encode()


PAGE_400 = page("400 Bad Request")
PAGE_414 = page("414 Request-URI Too Large")
PAGE_494 = page(
    "400 Bad Request",
    "400 Request Header Or Cookie Too Large",
    "<center>Request Header Or Cookie Too Large</center>\r\n",
)
PAGE_501 = page("501 Not Implemented")
PAGE_505 = page("505 HTTP Version Not Supported")
PAGE_502 = page("502 Bad Gateway")
PAGE_504 = page("504 Gateway Time-out")


def test_pages_have_nginx_lengths() -> None:
    """The expected pages above are nginx's, byte for byte (NGINX-SEMANTICS.md §5 table)."""
    pages = (PAGE_400, PAGE_414, PAGE_494, PAGE_501, PAGE_502, PAGE_504, PAGE_505)
    assert [len(p) for p in pages] == [157, 177, 233, 165, 157, 167, 187]


# -- client side -----------------------------------------------------------------------------------
class Conn:
    """A raw client socket with a read buffer (bytes behind a head are kept)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bytes:
        data = self.sock.recv(65536)
        self.buf += data
        return data

    def read_until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            if not self._more():
                raise AssertionError(f"EOF before {sep!r}; got {self.buf!r}")
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise AssertionError(f"EOF after {self.buf!r}, wanted {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self) -> tuple[int, str, dict[str, str], bytes]:
        """(status, status line, headers lowercased, body by Content-Length)."""
        head = self.read_until(b"\r\n\r\n").decode("latin-1")
        lines = head.split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = self.read_exact(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), lines[0], headers, body

    def read_eof(self) -> bytes:
        """Everything until the server closes (fails on timeout)."""
        while self._more():
            pass
        out, self.buf = self.buf, b""
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def get(port: int, path: str = "/", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode()


def handshake(path: str = "/") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked, final client frame (RFC 6455 §5.2), payload < 126 bytes."""
    assert len(payload) < 126
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


def server_frame(payload: bytes, opcode: int = 1) -> bytes:
    assert len(payload) < 126
    return bytes([0x80 | opcode, len(payload)]) + payload


def read_server_frame(c: Conn) -> tuple[int, bytes]:
    b0, b1 = c.read_exact(2)
    assert not b1 & 0x80 and (b1 & 0x7F) < 126
    return b0 & 0x0F, c.read_exact(b1 & 0x7F)


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def expect_error(c: Conn, status: int, body: bytes, *, close: bool) -> dict[str, str]:
    got, line, headers, data = c.response()
    assert got == status, line
    assert data == body
    assert headers["content-type"] == "text/html"
    assert headers["server"] == FOOTER
    if close:
        assert headers["connection"] == "close"
        assert c.read_eof() == b"", "server must close after the error page"
    else:
        assert headers["connection"] == "keep-alive"
    return headers


def fd_count(h: WsgateProcess) -> int:
    """``h.open_fds()`` less the log files: wsgate opens an access log on its first line, not
    at start-up as nginx does, and that file is not a leaked connection."""
    logs = str(h.prefix / "logs") + os.sep
    return sum(not link.startswith(logs) for link in h.fd_links())


def _tcp_states() -> dict[str, str]:
    """socket inode -> "local remote state" from /proc/net/tcp (diagnostics only)."""
    states = {
        "01": "ESTABLISHED",
        "06": "TIME_WAIT",
        "07": "CLOSE",
        "08": "CLOSE_WAIT",
        "0A": "LISTEN",
        "04": "FIN_WAIT1",
        "05": "FIN_WAIT2",
        "09": "LAST_ACK",
    }
    out = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        local, remote = (str(int(a.split(":")[1], 16)) for a in (f[1], f[2]))
        out[f[9]] = f"{local}->{remote} {states.get(f[3], f[3])}"
    return out


def _connections(h: WsgateProcess) -> list[str]:
    """wsgate's TCP sockets other than listeners."""
    tcp = _tcp_states()
    out = []
    for link in h.fd_links():
        state = tcp.get(link[8:-1], "") if link.startswith("socket:") else ""
        if state and not state.endswith("LISTEN"):
            out.append(state)
    return out


def wait_fds(h: WsgateProcess, baseline: int, timeout: float = TIMEOUT) -> None:
    """No leaked connection: wsgate's open descriptors return to the start-up count."""
    deadline = time.monotonic() + timeout
    while (n := fd_count(h)) > baseline:
        if time.monotonic() > deadline:
            links = h.fd_links()
            tcp = _tcp_states()
            links = [
                f"{ln} {tcp.get(ln[8:-1], '')}" if ln.startswith("socket:") else ln for ln in links
            ]
            raise AssertionError(f"{n} fds open, baseline {baseline}: {links}\n{h.errors()}")
        time.sleep(0.01)


def wait_for(cond: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- upstream side ---------------------------------------------------------------------------------
class RawUpstream:
    """An asyncio TCP server running ``handler`` per connection; counts connections."""

    def __init__(self, bg: _Background, handler: Handler) -> None:
        self.bg = bg
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.received: list[bytes] = []  # request heads seen, in order
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.bg.writers.add(writer)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()
            self.bg.writers.discard(writer)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def read_head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.received.append(head)
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if m:
            await reader.readexactly(int(m.group(1)))
        elif re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
            await reader.readuntil(b"0\r\n\r\n")  # enough for these tests' bodies
        return head


def http_ok(up: RawUpstream) -> Handler:
    """Answer every request with ``200 ok`` (and Connection: close)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await up.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        await writer.drain()

    return handler


class WsUpstream:
    """A ``websockets`` server: ``/`` echoes, ``/sink`` only reads, ``/push`` sends a message
    every 0.4 s; a request without ``Upgrade`` gets ``200 ok``.  ``paths`` records every
    request the upstream received."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.port = 0
        self.server: object = None

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.paths.append(request.path)
        if "Upgrade" not in request.headers:
            return conn.respond(200, "ok\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        try:
            if path == "/sink":
                async for _ in ws:
                    pass
            elif path == "/push":
                while True:
                    await ws.send("tick")
                    await asyncio.sleep(0.4)
            else:
                async for msg in ws:
                    await ws.send(msg)
        except ConnectionClosed:
            pass


class _Background:
    """An event loop in a thread for the upstream servers of one test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.writers: set[asyncio.StreamWriter] = set()
        self.raw_servers: list[RawUpstream] = []
        self.ws_servers: list[object] = []

    def run(self, coro: Awaitable[object]) -> object:
        async def wrap() -> object:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(TIMEOUT)

    def raw(self, make: Callable[[RawUpstream], Handler]) -> RawUpstream:
        up = RawUpstream(self, lambda r, w: make(up)(r, w))
        self.run(up.start())
        self.raw_servers.append(up)
        return up

    def ws(self) -> WsUpstream:
        up = WsUpstream()

        async def start() -> None:
            server = await serve(
                up.handler, HOST, 0, process_request=up.process_request, ping_interval=None
            )
            up.server = server
            up.port = int(next(iter(server.sockets)).getsockname()[1])

        self.run(start())
        self.ws_servers.append(up.server)
        return up

    def call_soon(self, fn: Callable[[], object]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def close(self) -> None:
        async def shutdown() -> None:
            for raw in self.raw_servers:
                assert raw.server is not None
                raw.server.close()
            for w in list(self.writers):
                w.transport.abort()
            for server in self.ws_servers:
                server.close()  # type: ignore[attr-defined]
                await server.wait_closed()  # type: ignore[attr-defined]
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)
            self.loop.close()


@pytest.fixture
def bg() -> Iterator[_Background]:
    b = _Background()
    yield b
    b.close()


def start(wsgate: Factory, text: str, *args: str) -> tuple[WsgateProcess, int]:
    """Start wsgate; returns the handle and the descriptor count after start-up."""
    h = wsgate(text, *args)
    # The pid file appears a moment before the event loop runs for good (uvloop sets up its
    # signal socketpair when it starts running), so the count is taken once a probe connection
    # was served: accepted, closed on EOF without a request (no log line), and gone.
    with socket.create_connection((HOST, h.port), timeout=TIMEOUT) as probe:
        probe.shutdown(socket.SHUT_WR)
        assert probe.recv(1) == b""
    wait_for(lambda: not _connections(h), "the probe connection to be closed")
    return h, fd_count(h)


def assert_serving_http(h: WsgateProcess, up: RawUpstream) -> None:
    before = up.connections
    with Conn(h.port) as c:
        c.send(get(h.port))
        status, line, _, body = c.response()
        assert (status, body) == (200, b"ok\n"), line
    # At least one: a connection wsgate opened for the request before (and then closed) may
    # be accepted by the raw upstream's thread only now.
    assert up.connections >= before + 1


def assert_serving_ws(h: WsgateProcess) -> None:
    with connect(f"ws://{HOST}:{h.port}/", open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
        ws.send("still here")
        assert ws.recv(timeout=TIMEOUT) == "still here"


def info_log(h: WsgateProcess) -> Path:
    return h.prefix / "logs" / "info.log"


def wait_info(h: WsgateProcess, pattern: str) -> str:
    rx = re.compile(pattern)
    text = ""

    def found() -> bool:
        nonlocal text
        path = info_log(h)
        text = path.read_text(errors="replace") if path.exists() else ""
        return rx.search(text) is not None

    try:
        wait_for(found, f"{pattern!r} in info.log")
    except AssertionError:
        raise AssertionError(f"no {pattern!r} in info.log:\n{text}") from None
    return text


INFO = "error_log logs/info.log info;"


# -- 1. malformed request line ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "request_line",
    [
        b"BAD REQUEST LINE\r\n",
        b"get / HTTP/1.1\r\n",
        b"GET / HTTP/1.1 extra\r\n",
        b"GET\x01 / HTTP/1.1\r\n",
        b"GET nothing HTTP/1.1\r\n",
        b"GET / HTTX/1.1\r\n",
    ],
    ids=["garbage", "lowercase-method", "extra-field", "ctl-in-method", "bad-target", "bad-proto"],
)
def test_malformed_request_line(wsgate: Factory, bg: _Background, request_line: bytes) -> None:
    up = bg.raw(http_ok)
    h, fds = start(wsgate, conf(up.port))
    with Conn(h.port) as c:
        c.send(request_line + b"Host: localhost\r\n\r\n")
        expect_error(c, 400, PAGE_400, close=True)
    assert up.connections == 0
    assert_serving_http(h, up)
    wait_fds(h, fds)


# -- 2. header size limits -------------------------------------------------------------------------
def _line_of(total: int) -> bytes:
    """A request line of exactly ``total`` bytes including CRLF."""
    fixed = len(b"GET / HTTP/1.1\r\n")
    return b"GET /" + b"a" * (total - fixed) + b" HTTP/1.1\r\n"


@pytest.mark.parametrize(
    ("buffers", "limit"), [("", 8192), ("large_client_header_buffers 4 1k;", 1024)]
)
def test_request_line_limit(wsgate: Factory, bg: _Background, buffers: str, limit: int) -> None:
    up = bg.raw(http_ok)
    h, fds = start(wsgate, conf(up.port, server=buffers))
    with Conn(h.port) as c:
        line = _line_of(limit)
        assert len(line) == limit
        c.send(line + b"Host: localhost\r\n\r\n")
        status, status_line, _, body = c.response()
        assert (status, body) == (200, b"ok\n"), status_line
    assert up.received[-1].startswith(line)
    with Conn(h.port) as c:
        c.send(_line_of(limit + 1) + b"Host: localhost\r\n\r\n")
        expect_error(c, 414, PAGE_414, close=True)
    assert up.connections == 1
    assert_serving_http(h, up)
    wait_fds(h, fds)


@pytest.mark.parametrize(
    ("buffers", "size"), [("", 8192), ("large_client_header_buffers 4 1k;", 1024)]
)
def test_header_line_and_head_limits(
    wsgate: Factory, bg: _Background, buffers: str, size: int
) -> None:
    up = bg.raw(http_ok)
    h, fds = start(wsgate, conf(up.port, server=buffers, main=INFO))

    def header(total: int, name: bytes = b"X-Long") -> bytes:
        """A header line of exactly ``total`` bytes including CRLF."""
        return name + b": " + b"v" * (total - len(name) - 4) + b"\r\n"

    # One header line at the limit: proxied.
    with Conn(h.port) as c:
        c.send(get(h.port, extra=header(size).decode()))
        status, line, _, body = c.response()
        assert (status, body) == (200, b"ok\n"), line
    # One header line over the limit: 494, sent as 400 with its own title.
    with Conn(h.port) as c:
        c.send(get(h.port, extra=header(size + 1).decode()))
        expect_error(c, 400, PAGE_494, close=True)
    wait_info(h, r"\[info\] .*client sent too long header line: ")
    # The whole head over 4 buffers, every line within one: the same 400 (494).
    with Conn(h.port) as c:
        lines = b"".join(header(size - 10, b"X-H%d" % i) for i in range(5))
        c.send(get(h.port, extra=lines.decode()))
        expect_error(c, 400, PAGE_494, close=True)
    wait_info(h, r"\[info\] .*client sent too large request")
    assert up.connections == 1
    assert_serving_http(h, up)
    wait_fds(h, fds)


# -- 3. framing: request smuggling -----------------------------------------------------------------
SMUGGLE = b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        # CL 0 first, then TE: a front end honouring CL would see the GET as a second request.
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 40\r\n\r\n0\r\n\r\n" + SMUGGLE,
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
        b"Content-Length: 44\r\n\r\n" + SMUGGLE,
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLE,
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: +4\r\n\r\n" + SMUGGLE,
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=[
        "cl-te",
        "cl0-te-smuggle",
        "te-cl-smuggle",
        "dup-cl",
        "dup-te",
        "bad-cl",
        "te-space",
        "te-http10",
    ],
)
def test_ambiguous_framing_is_400(wsgate: Factory, bg: _Background, head: bytes) -> None:
    up = bg.raw(http_ok)
    h, fds = start(wsgate, conf(up.port))
    with Conn(h.port) as c:
        c.send(head)
        expect_error(c, 400, PAGE_400, close=True)
        assert c.buf == b""  # one response, nothing for the hidden request
    assert up.connections == 0 and up.received == []
    assert_serving_http(h, up)
    assert len(up.received) == 1 and b"/smuggled" not in up.received[0]
    wait_fds(h, fds)


def test_chunked_body_does_not_hide_a_request(wsgate: Factory, bg: _Background) -> None:
    """A valid chunked POST followed by a pipelined GET: the upstream sees each one once, as
    its own request (the chunked body is re-framed, never forwarded as raw bytes)."""
    up = bg.raw(http_ok)
    h, fds = start(wsgate, conf(up.port))
    with Conn(h.port) as c:
        c.send(
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLE
        )
        for _ in range(2):
            status, line, _, body = c.response()
            assert (status, body) == (200, b"ok\n"), line
    assert up.connections == 2
    assert up.received[0].startswith(b"POST / HTTP/1.1\r\n")
    assert up.received[1].startswith(b"GET /smuggled HTTP/1.1\r\n")
    wait_fds(h, fds)


# -- 4. unknown transfer coding, missing Host ------------------------------------------------------
def test_unknown_transfer_encoding_is_501(wsgate: Factory, bg: _Background) -> None:
    up = bg.raw(http_ok)
    h, fds = start(wsgate, conf(up.port))
    with Conn(h.port) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n")
        expect_error(c, 501, PAGE_501, close=True)
    with Conn(h.port) as c:
        c.send(b"GET / HTTP/1.1\r\nUser-Agent: test\r\n\r\n")
        expect_error(c, 400, PAGE_400, close=True)
    assert up.connections == 0
    assert_serving_http(h, up)
    wait_fds(h, fds)


# -- 5. client_header_timeout ----------------------------------------------------------------------
def test_client_header_timeout_closes_silently(wsgate: Factory, bg: _Background) -> None:
    up = bg.raw(http_ok)
    h, fds = start(wsgate, conf(up.port, main=INFO))
    with Conn(h.port) as c, Conn(h.port) as idle:
        t0 = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n")  # the empty line never comes
        assert c.read_eof() == b"", "nothing is sent on client_header_timeout"
        assert idle.read_eof() == b""  # no byte at all: closed as well
        elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 3.0, elapsed
    wait_info(
        h,
        r"\[info\] \d+#\d+: \*\d+ client timed out \(110: Connection timed out\) while "
        r"reading client request headers, client: 127\.0\.0\.1, server: , "
        r'request: "GET / HTTP/1\.1"',
    )
    # Access-logged as "408 0" (the request line had started); the silent one is not logged.
    lines = h.access_lines(1)
    assert len(lines) == 1 and '"GET / HTTP/1.1" 408 0 ' in lines[0], lines
    assert up.connections == 0
    assert_serving_http(h, up)
    wait_fds(h, fds)


# -- 6. client gone mid-handshake ------------------------------------------------------------------
def test_client_disconnects_mid_head(wsgate: Factory, bg: _Background) -> None:
    ws = bg.ws()
    h, fds = start(wsgate, conf(ws.port))
    with Conn(h.port) as c:
        c.send(handshake()[:30])
    wait_fds(h, fds)
    assert_serving_ws(h)
    assert ws.paths == ["/"]
    wait_fds(h, fds)


def test_client_disconnects_before_101(wsgate: Factory, bg: _Background) -> None:
    got_head = threading.Event()
    release = asyncio.Event()

    def slow_ws(up: RawUpstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await up.read_head(reader)
            got_head.set()
            await release.wait()
            key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head)
            assert key is not None
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + accept_key(key.group(1))
                + b"\r\n\r\n"
            )
            await writer.drain()
            await reader.read()  # until wsgate closes the upstream side

        return handler

    up = bg.raw(slow_ws)
    h, fds = start(wsgate, conf(up.port))
    with Conn(h.port) as c:
        c.send(handshake())
        assert got_head.wait(TIMEOUT)
    bg.call_soon(release.set)
    wait_for(lambda: up.open == 0, "wsgate to close the upstream connection")
    wait_fds(h, fds)
    # The next client is served as usual (the same upstream answers its 101 at once).
    with Conn(h.port) as c:
        c.send(handshake())
        status, line, headers, _ = c.response()
        assert status == 101, line
        assert headers["sec-websocket-accept"] == accept_key(WS_KEY.encode()).decode()
    assert up.connections == 2
    wait_fds(h, fds)


def test_client_gone_closes_waiting_upstream_at_once(wsgate: Factory, bg: _Background) -> None:
    got_head = threading.Event()

    def silent(up: RawUpstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await up.read_head(reader)
            got_head.set()
            await reader.read()

        return handler

    up = bg.raw(silent)
    h, fds = start(wsgate, conf(up.port))
    with Conn(h.port) as c:
        c.send(handshake())
        assert got_head.wait(TIMEOUT)
    # Well before proxy_read_timeout (2 s).
    wait_for(lambda: up.open == 0, "wsgate to close the upstream connection", timeout=1.0)
    lines = h.access_lines(1)
    assert '"GET / HTTP/1.1" 499 0 ' in lines[0], lines
    wait_fds(h, fds)


# -- 7. upstream refuses ---------------------------------------------------------------------------
def test_upstream_refused_is_502_keepalive(wsgate: Factory) -> None:
    port = dead_port()
    h, fds = start(wsgate, conf(port))
    with Conn(h.port) as c:
        for _ in range(2):
            c.send(get(h.port))
            expect_error(c, 502, PAGE_502, close=False)
    line = (
        r"\[error\] \d+#\d+: \*\d+ connect\(\) failed \(111: Connection refused\) while "
        r'connecting to upstream, client: 127\.0\.0\.1, server: , request: "GET / HTTP/1\.1", '
        rf'upstream: "http://127\.0\.0\.1:{port}/", host: "localhost"'
    )
    h.wait_log(line)
    assert len(re.findall(line, h.errors())) == 2  # a lone server is never disabled
    assert "[warn]" not in h.errors()
    lines = h.access_lines(2)
    assert all('"GET / HTTP/1.1" 502 157 ' in ln for ln in lines), lines
    wait_fds(h, fds)


# -- 8. upstream never answers ---------------------------------------------------------------------
def test_silent_upstream_is_504(wsgate: Factory, bg: _Background) -> None:
    def silent(up: RawUpstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await up.read_head(reader)
            await reader.read()  # never answers; returns when wsgate gives up

        return handler

    up = bg.raw(silent)
    h, fds = start(wsgate, conf(up.port))
    with Conn(h.port) as c:
        t0 = time.monotonic()
        c.send(get(h.port))
        expect_error(c, 504, PAGE_504, close=False)
        elapsed = time.monotonic() - t0
    assert 1.9 <= elapsed < 4.0, elapsed
    h.wait_log(
        r"\[error\] \d+#\d+: \*\d+ upstream timed out \(110: Connection timed out\) while "
        r"reading response header from upstream, client: 127\.0\.0\.1, server: , request: "
        rf'"GET / HTTP/1\.1", upstream: "http://127\.0\.0\.1:{up.port}/", host: "localhost"'
    )
    wait_for(lambda: up.open == 0, "wsgate to close the upstream connection")
    assert up.connections == 1
    wait_fds(h, fds)


# -- 9. upstream closes mid-tunnel -----------------------------------------------------------------
@pytest.mark.parametrize("when", ["with-101", "after-message"])
def test_upstream_closes_mid_tunnel(wsgate: Factory, bg: _Background, when: str) -> None:
    """The upstream sends one frame and closes TCP (no close frame).  The client gets the frame,
    then its connection closes; the access log keeps 101; the next tunnel works."""
    state = {"n": 0}

    def dropping(up: RawUpstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await up.read_head(reader)
            state["n"] += 1
            key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head)
            assert key is not None
            out = (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + accept_key(key.group(1))
                + b"\r\n\r\n"
            )
            if state["n"] > 1:  # later tunnels echo frames, the close frame too, and stay
                writer.write(out)
                opcode = 1
                while opcode != 8:
                    hdr = await reader.readexactly(6)
                    data = await reader.readexactly(hdr[1] & 0x7F)
                    plain = bytes(b ^ hdr[2 + i % 4] for i, b in enumerate(data))
                    opcode = hdr[0] & 0x0F
                    writer.write(server_frame(plain, opcode))
                await writer.drain()
                return  # the server closes TCP after the closing handshake (RFC 6455 §7.1.1)
            if when == "with-101":
                # The FIN right behind the 101 and the frame: wsgate may see the end of the
                # upstream before its tunnel starts.
                writer.write(out + server_frame(b"bye"))
            else:
                writer.write(out)
                await reader.readexactly(2 + 4 + 2)  # the client's masked "hi"
                writer.write(server_frame(b"bye"))
            writer.write_eof()
            await reader.read()  # until wsgate closes the upstream connection

        return handler

    up = bg.raw(dropping)
    h, fds = start(wsgate, conf(up.port))
    t0 = time.monotonic()
    with connect(f"ws://{HOST}:{h.port}/", open_timeout=TIMEOUT, ping_interval=None) as ws:
        if when == "after-message":
            ws.send("hi")
        assert ws.recv(timeout=TIMEOUT) == "bye"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT)
    # The close follows the upstream's at once, not after proxy_read_timeout (2 s).
    assert time.monotonic() - t0 < 1.5
    lines = h.access_lines(1)
    assert '"GET / HTTP/1.1" 101 ' in lines[0], lines
    wait_fds(h, fds)
    with connect(f"ws://{HOST}:{h.port}/", open_timeout=TIMEOUT, ping_interval=None) as ws:
        ws.send("again")
        assert ws.recv(timeout=TIMEOUT) == "again"
    wait_fds(h, fds)


# -- 10. idle timer shared by both directions ------------------------------------------------------
def test_idle_tunnel_closed_active_ones_kept(wsgate: Factory, bg: _Background) -> None:
    ws = bg.ws()
    h, fds = start(wsgate, conf(ws.port, main=INFO))
    url = f"ws://{HOST}:{h.port}"

    def ws_connect(path: str) -> ClientConnection:
        return connect(url + path, open_timeout=TIMEOUT, ping_interval=None)

    with (
        ws_connect("/") as idle,
        ws_connect("/") as both,
        ws_connect("/sink") as client_only,
        ws_connect("/push") as upstream_only,
    ):
        t0 = time.monotonic()
        ticks = 0
        while (now := time.monotonic() - t0) < 3.0:  # 1.5 x proxy_read_timeout
            if now < 1.8:
                assert idle.protocol.state is State.OPEN
            both.send("ping")
            assert both.recv(timeout=TIMEOUT) == "ping"
            client_only.send("data")
            # The upstream pushes every 0.4 s; the client only reads.
            assert upstream_only.recv(timeout=TIMEOUT) == "tick"
            ticks += 1
            time.sleep(0.5 - (time.monotonic() - t0) % 0.5)  # pacing, not readiness
        assert ticks >= 5
        with pytest.raises(ConnectionClosed):
            idle.recv(timeout=TIMEOUT)
        for conn in (both, client_only, upstream_only):
            assert conn.protocol.state is State.OPEN
        both.send("still")
        assert both.recv(timeout=TIMEOUT) == "still"
    wait_info(
        h,
        r"\[info\] .*upstream timed out \(110: Connection timed out\) while proxying "
        r'upgraded connection, client: 127\.0\.0\.1, server: , request: "GET / HTTP/1\.1"',
    )
    lines = h.access_lines(4)
    assert all('" 101 ' in ln for ln in lines), lines
    wait_fds(h, fds)


# -- 11. bytes pipelined behind the handshake ------------------------------------------------------
def test_frame_pipelined_with_handshake(wsgate: Factory, bg: _Background) -> None:
    ws = bg.ws()
    h, fds = start(wsgate, conf(ws.port))
    with Conn(h.port) as c:
        c.send(handshake() + client_frame(b"early bird"))
        status, line, headers, _ = c.response()
        assert status == 101, line
        assert headers["sec-websocket-accept"] == accept_key(WS_KEY.encode()).decode()
        assert read_server_frame(c) == (1, b"early bird")
        c.send(client_frame(b"", opcode=8))  # close
        opcode, _ = read_server_frame(c)
        assert opcode == 8
        assert c.read_eof() == b""
    wait_fds(h, fds)


# -- two servers, one dead: failover ---------------------------------------------------------------
@pytest.mark.parametrize("first", ["http", "ws"])
def test_round_robin_failover(wsgate: Factory, bg: _Background, first: str) -> None:
    live = bg.ws()
    dead = dead_port()
    h, fds = start(
        wsgate,
        conf(
            0,
            upstream=f"server 127.0.0.1:{dead}; server 127.0.0.1:{live.port};",
            http="log_format up '$upstream_addr $upstream_status'; access_log logs/up.log up;",
        ),
    )
    statuses: list[str] = []
    order = [first, "http", "ws", "http"] if first == "ws" else [first, "ws", "http", "ws"]
    for kind in order:
        if kind == "ws":
            assert_serving_ws(h)
            statuses.append("101")
        else:
            with Conn(h.port) as c:
                c.send(get(h.port))
                status, line, _, body = c.response()
                assert (status, body) == (200, b"ok\n"), line
            statuses.append("200")
    h.wait_log(
        r"\[error\] .*connect\(\) failed \(111: Connection refused\) while connecting to "
        rf'upstream, .*upstream: "http://127\.0\.0\.1:{dead}/"'
    )
    log = h.prefix / "logs" / "up.log"
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 4, "4 up.log lines")
    lines = log.read_text().splitlines()
    assert lines[0] == f"127.0.0.1:{dead}, 127.0.0.1:{live.port} 502, {statuses[0]}"
    # max_fails=1 fail_timeout=10s: the dead server is left alone for the other requests.
    assert lines[1:] == [f"127.0.0.1:{live.port} {s}" for s in statuses[1:]]
    assert len(live.paths) == 4
    wait_fds(h, fds)


def test_upstream_gone_before_tunnel_starts(wsgate: Factory, bg: _Background) -> None:
    """The upstream's 101, a frame and its FIN all reach wsgate before the tunnel starts (sent
    on accept, ahead of the request): the client still gets both, then the end, at once."""

    def eager(up: RawUpstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + accept_key(WS_KEY.encode())
                + b"\r\n\r\n"
                + server_frame(b"bye")
            )
            writer.write_eof()
            await up.read_head(reader)
            await reader.read()

        return handler

    up = bg.raw(eager)
    h, fds = start(wsgate, conf(up.port))
    for _ in range(3):
        with Conn(h.port) as c:
            t0 = time.monotonic()
            c.send(handshake())
            status, line, _, _ = c.response()
            assert status == 101, line
            assert read_server_frame(c) == (1, b"bye")
            assert c.read_eof() == b""
            assert time.monotonic() - t0 < 1.5, "closed only by proxy_read_timeout"
        wait_fds(h, fds)
    lines = h.access_lines(3)
    assert all('"GET / HTTP/1.1" 101 ' in ln for ln in lines), lines


# -- 7. a bad request pipelined behind a good one (issue 14) -------------------------------------
@pytest.mark.parametrize(
    "second",
    [b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n"],
    ids=["invalid-method", "no-host"],
)
def test_bad_pipelined_request_is_400(wsgate: Factory, bg: _Background, second: bytes) -> None:
    """The second request's parse error is answered as a first request's would be: the first
    gets its response, the second nginx's 400 and a close, logged at ``info`` (the fixture
    fails the test on any ``[alert]``)."""

    def keepalive_ok(up: RawUpstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await up.read_head(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                await writer.drain()

        return handler

    up = bg.raw(keepalive_ok)
    h, fds = start(wsgate, conf(up.port, main=INFO))
    with Conn(h.port) as c:
        c.send(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n" + second)
        status, line, _, body = c.response()
        assert (status, body) == (200, b"ok\n"), line
        expect_error(c, 400, PAGE_400, close=True)
    assert len(up.received) == 1
    reason = "invalid method" if b"@" in second else 'HTTP/1.1 request without "Host" header'
    wait_info(h, rf"\[info\] \d+#\d+: \*\d+ client sent {re.escape(reason)}")
    assert_serving_http(h, up)
    wait_fds(h, fds)


def test_bad_last_chunk_trailer_is_400_at_once(wsgate: Factory, bg: _Background) -> None:
    """``\\r`` then ``\\x08`` where the body's final CRLF belongs: nginx's chunked parser
    refuses the byte when it comes, so the client gets 400 now, not after
    ``client_body_timeout``, logged with the request, and no upstream connection is held."""
    up = bg.raw(http_ok)
    h, fds = start(wsgate, conf(up.port, main=INFO))
    with Conn(h.port) as c:
        c.send(
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\x08"
        )
        expect_error(c, 400, PAGE_400, close=True)
    wait_info(
        h,
        r"\[info\] \d+#\d+: \*\d+ client sent invalid chunked body, client: 127\.0\.0\.1, "
        r'server: , request: "POST /x HTTP/1\.1"',
    )
    wait_for(lambda: up.open == 0, "the upstream connection to be closed")
    assert_serving_http(h, up)
    wait_fds(h, fds)


# -- client_body_timeout ---------------------------------------------------------------------------
def _body_stops(h: WsgateProcess, path: str) -> float:
    """A POST whose body stops after 3 of its 10 bytes; returns the seconds until wsgate
    closes the connection, having sent nothing."""
    with Conn(h.port) as c:
        t0 = time.monotonic()
        c.send(f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc".encode())
        assert c.read_eof() == b"", "nothing is sent on client_body_timeout"
        return time.monotonic() - t0


def _no_body_timeout_line(h: WsgateProcess) -> None:
    """nginx logs nothing for a body's timeout (ngx_http_read_client_request_body_handler and
    ngx_http_upstream_read_request_handler finalize with 408 and no log call)."""
    text = info_log(h).read_text(errors="replace") if info_log(h).exists() else ""
    assert "client request body" not in text and "[error]" not in text, text


def test_client_body_timeout_from_http_ends_the_request(wsgate: Factory, bg: _Background) -> None:
    """``client_body_timeout 1s`` set in ``http`` reaches the location: a body that stops is
    ended after about 1 s (not nginx's default 60 s) with no response and the connection
    closed, ``408 0`` in the access log, no error-log line, and the upstream connection that
    had part of the body is closed."""
    up = bg.raw(http_ok)
    h, fds = start(wsgate, conf(up.port, main=INFO, http="client_body_timeout 1s;"))
    elapsed = _body_stops(h, "/")
    assert 0.9 <= elapsed < 4.0, elapsed
    (entry,) = h.access_lines(1)
    assert '"POST / HTTP/1.1" 408 0 ' in entry, entry
    _no_body_timeout_line(h)
    wait_for(lambda: up.open == 0, "the upstream connection to be closed")
    assert_serving_http(h, up)
    wait_fds(h, fds)


def test_client_body_timeout_of_the_location(wsgate: Factory, bg: _Background) -> None:
    """The body is read after the location is chosen, so the location's value applies: 1 s in
    ``location /short`` over the server's 30 s."""
    up = bg.raw(http_ok)
    server = (
        "client_body_timeout 30s; location /short { client_body_timeout 1s; proxy_pass http://up; }"
    )
    h, fds = start(wsgate, conf(up.port, main=INFO, server=server))
    elapsed = _body_stops(h, "/short")
    assert 0.9 <= elapsed < 4.0, elapsed
    (entry,) = h.access_lines(1)
    assert '"POST /short HTTP/1.1" 408 0 ' in entry, entry
    _no_body_timeout_line(h)
    assert_serving_http(h, up)
    wait_fds(h, fds)


def test_client_body_timeout_is_between_reads(wsgate: Factory, bg: _Background) -> None:
    """The timer runs "only for a period between two successive read operations, not for the
    transmission of the whole request body": a body sent in six pieces 0.4 s apart (2 s in
    all) under ``client_body_timeout 1s`` reaches the upstream whole, and the client gets
    its response."""
    up = bg.raw(http_ok)
    h, fds = start(wsgate, conf(up.port, http="client_body_timeout 1s;"))
    with Conn(h.port) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n")
        for piece in (b"ab", b"cd", b"ef", b"gh", b"ij", b"kl"):
            time.sleep(0.4)
            c.send(piece)
        status, line, _, body = c.response()
        assert (status, body) == (200, b"ok\n"), line
    (entry,) = h.access_lines(1)
    assert '"POST / HTTP/1.1" 200 ' in entry, entry
    assert len(up.received) == 1
    wait_fds(h, fds)


def test_101_nobody_asked_for_gets_no_bytes(wsgate: Factory, bg: _Background) -> None:
    """nginx-tests ``proxy_upgrade.t`` "handshake noupgrade": the client sends no ``Upgrade``,
    the upstream answers 101 and goes on sending (12 bytes) on an open connection.  The client
    gets the 101's head and none of those bytes ("log - bytes noupgrade": body bytes 0), then
    the connection closes, and so does the upstream's."""

    def pusher(up: RawUpstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await up.read_head(reader)
            writer.write(
                b"HTTP/1.1 101 Switching\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n"
                b"handshaked\r\n"
            )
            await reader.read()  # held open until wsgate closes it

        return handler

    up = bg.raw(pusher)
    h, fds = start(wsgate, conf(up.port))
    with Conn(h.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\r\n")
        status, line, headers, _ = c.response()
        assert status == 101 and headers["upgrade"] == "foo", line
        assert c.read_eof() == b""
    wait_for(lambda: up.open == 0, "the upstream connection to be closed")
    (entry,) = h.access_lines(1)
    assert '"GET / HTTP/1.1" 101 0 ' in entry, entry
    wait_fds(h, fds)


@pytest.mark.parametrize(
    ("sent", "status", "body"),
    [
        (b"G@T / HTT", 400, PAGE_400),  # no line end yet: the bad byte is enough
        (b"GET /a HTTP/1.1\rX", 400, PAGE_400),
        (b"GET / HTTP/11", 505, PAGE_505),
        (b"GET / HTTP/11\r\nHost: a\r\n\r\n", 505, PAGE_505),
    ],
    ids=["bad-method-incomplete", "cr-without-lf", "http11-incomplete", "http11"],
)
def test_bad_request_line_answered_before_its_end(
    wsgate: Factory, bg: _Background, sent: bytes, status: int, body: bytes
) -> None:
    """nginx reads the request line byte by byte: a byte that cannot belong to a valid one is
    answered at once (``client_header_timeout`` would close silently), and ``HTTP/11`` is a
    major version above 1: 505, as ``HTTP/2.0``."""
    up = bg.raw(http_ok)
    h, fds = start(wsgate, conf(up.port))
    with Conn(h.port) as c:
        c.send(sent)
        expect_error(c, status, body, close=True)
    assert up.connections == 0
    assert_serving_http(h, up)
    wait_fds(h, fds)


@pytest.mark.parametrize(("directive", "limit"), [("", 1000), ("max_headers 5;", 5)])
def test_too_many_header_lines_is_494(
    wsgate: Factory, bg: _Background, directive: str, limit: int
) -> None:
    """nginx's ``max_headers`` (1000 by default): one header line more is 494, sent as
    ``400 Request Header Or Cookie Too Large``, and a close; at the limit it is served."""
    up = bg.raw(http_ok)
    h, fds = start(wsgate, conf(up.port, main=INFO, server=directive))
    lines = b"Host: localhost\r\n" + b"X-N: 1\r\n" * (limit - 1)
    with Conn(h.port) as c:
        c.send(b"GET / HTTP/1.1\r\n" + lines + b"\r\n")
        status, line, _, _ = c.response()
        assert status == 200, line
    with Conn(h.port) as c:
        c.send(b"GET / HTTP/1.1\r\n" + lines + b"X-N: 1\r\n\r\n")
        expect_error(c, 400, PAGE_494, close=True)
    wait_info(h, r"\[info\] \d+#\d+: \*\d+ client sent too many header lines")
    assert up.connections == 1
    wait_fds(h, fds)


def test_http09_request_gets_the_body_only(wsgate: Factory, bg: _Background) -> None:
    """nginx answers an HTTP/0.9 request (``GET /``, no version) with the body alone, no
    status line and no headers, then closes: proxied, returned, or an error page."""
    up = bg.raw(http_ok)
    location = "location = /r { return 200 hi; } location = /no { return 404; }"
    h, fds = start(wsgate, conf(up.port, server=location))
    for path, body in ((b"/", b"ok\n"), (b"/r", b"hi"), (b"/no", page("404 Not Found"))):
        with Conn(h.port) as c:
            c.send(b"GET " + path + b"\r\n")
            assert c.read_eof() == body, path
    assert up.connections == 1 and up.received[0].startswith(b"GET / HTTP/1.1\r\n")
    lines = h.access_lines(3)
    assert [ln.split('"')[1] for ln in lines] == ["GET /", "GET /r", "GET /no"], lines
    wait_fds(h, fds)


@pytest.mark.parametrize("together", [False, True], ids=["later", "with-the-head"])
def test_invalid_chunk_mid_response_closes_without_error_page(
    wsgate: Factory, bg: _Background, together: bool
) -> None:
    """The upstream's chunked body goes bad after its head and first chunk, sent later or in
    the same bytes as the head: nginx sends the head, logs "upstream sent invalid chunked
    response" and closes the connection; no 502 page is written into the middle of the 200,
    nor instead of it (the access log keeps 200)."""
    go_on = asyncio.Event()

    def bad_chunks(up: RawUpstream) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await up.read_head(reader)
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
            if together:
                writer.write(head + b"zz\r\n")
            else:
                writer.write(head)
                await go_on.wait()
                writer.write(b"zz\r\n")
            await reader.read()

        return handler

    up = bg.raw(bad_chunks)
    h, fds = start(wsgate, conf(up.port))
    with Conn(h.port) as c:
        c.send(get(h.port))
        head = c.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"chunked" in head
        if together:  # the chunk before the bad bytes may be sent or not, but nothing else
            assert c.read_eof() in (b"", b"5\r\nhello\r\n")
        else:
            assert c.read_until(b"hello\r\n") == b"5\r\nhello\r\n"
            bg.call_soon(go_on.set)
            assert c.read_eof() == b""
    h.wait_log(r"\[error\] .*upstream sent invalid chunked response")
    (entry,) = h.access_lines(1)
    assert '"GET / HTTP/1.1" 200 ' in entry, entry
    wait_for(lambda: up.open == 0, "the upstream connection to be closed")
    wait_fds(h, fds)
