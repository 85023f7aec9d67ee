"""What the reliability probes share: the soak knob, the figures report, wsgate or nginx as the
proxy under test, raw asyncio backends and clients, and process accounting from ``/proc``.

* **The knob.** ``WSGATE_SOAK=1`` (``make soak``) scales every count and duration up through
  :func:`scaled`; without it (``make test``) each probe runs its bounded form.  Every loop is
  bounded in count *and* time either way.
* **The report.** :func:`record` prints one line per figure and keeps it for the terminal
  summary (``tests/reliability/conftest.py``), so ``make test`` shows the figures without
  ``-s``: probe, target (``wsgate`` or ``nginx``) and what was measured.
* **The proxy.** :func:`start_target` runs wsgate (``tests/conftest.py``'s ``start_wsgate``)
  or, where it is installed, nginx on the same configuration text.  nginx cannot report the
  port it bound for ``listen 127.0.0.1:0``, so the test binds the listener itself and nginx
  inherits it (the ``NGINX`` environment variable of its binary upgrade): no guessed port.
* **Peers.** Backends are asyncio servers on a loop in a background thread (:class:`BgLoop`);
  the behaviour is a coroutine per connection (see ``test_backend_faults.py``).  The default
  :func:`echo_backend` answers plain requests ``200 ok`` (httptools parses them, so any
  framing the proxy forwards is read right) and upgrades to a WebSocket echo.

Traffic goes to 127.0.0.1 only.  Readiness is a pid file or a log line, never a sleep.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import shutil
import signal as _signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httptools
import pytest

from tests.conftest import WsgateProcess, start_wsgate
from tests.helpers import distinct_sockets

T = TypeVar("T")

HOST = "127.0.0.1"
SOAK = os.environ.get("WSGATE_SOAK", "") not in ("", "0")
NGINX: str | None = shutil.which("nginx") or (
    "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
)
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + WS_KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
)

#: Every figure recorded this session: (probe, target, figure, value).
REPORT: list[tuple[str, str, str, str]] = []


def scaled(bounded: T, soak: T) -> T:
    """``bounded`` under ``make test``, ``soak`` under ``make soak`` (``WSGATE_SOAK=1``)."""
    return soak if SOAK else bounded


def record(probe: str, target: str, **figures: object) -> None:
    """Print and keep the figures one probe measured on one target."""
    for name, value in figures.items():
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
        REPORT.append((probe, target, name, text))
        print(f"[reliability] {probe} {target}: {name} = {text}")


TARGETS = [
    "wsgate",
    pytest.param(
        "nginx",
        marks=pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make debs)"),
    ),
]


# -- configuration ---------------------------------------------------------------------------------
def conf(
    upstream: int,
    *,
    main: str = "",
    events: str = "",
    http: str = "",
    server: str = "",
    location: str = "",
) -> str:
    """One configuration that both wsgate and nginx read: a proxy to ``upstream`` with the
    WebSocket headers set.  ``listen 127.0.0.1:0`` is rewritten for nginx by
    :func:`start_target`."""
    return f"""
{main}
events {{ {events} }}
http {{
  access_log off;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  {http}
  upstream up {{ server 127.0.0.1:{upstream}; }}
  server {{
    listen 127.0.0.1:0;
    {server}
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      {location}
    }}
  }}
}}
"""


# -- the proxy under test --------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return sorted(int(p) for p in text.split())


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class Target:
    """wsgate or nginx, running from ``prefix`` with the error log in ``logs/error.log``."""

    kind: str
    proc: subprocess.Popen[bytes]
    prefix: Path
    port: int
    handle: WsgateProcess | None = None
    _listener: socket.socket | None = None
    stopped: bool = False

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    @property
    def conf_path(self) -> Path:
        return self.prefix / "nginx.conf"

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def stderr(self) -> str:
        path = self.prefix / "stderr.txt"
        return path.read_text(errors="replace") if path.exists() else ""

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def worker(self, timeout: float = 10.0) -> int:
        """The newest worker; waits for one to exist."""
        deadline = time.monotonic() + timeout
        while not (pids := self.workers()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} has no worker\n{self.errors()}")
            time.sleep(0.01)
        return pids[-1]

    def fds(self) -> int:
        """Descriptors of the master and its workers together."""
        return sum(fd_count(p) for p in [self.proc.pid, *self.workers()])

    def sockets(self) -> int:
        """Sockets open in the workers (listeners included), each counted once."""
        return distinct_sockets(self.workers())

    def rss_kib(self) -> int:
        """Resident memory of the workers together."""
        return sum(rss_kib(p) for p in self.workers())

    def wait_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while (m := rx.search(self.errors()[start:])) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in {self.kind}'s error log:\n{self.errors()}")
            time.sleep(0.01)
        return m

    def alerts(self) -> list[str]:
        """``[alert]`` and ``[emerg]`` lines and tracebacks: what no probe may provoke."""
        lines = [
            line
            for line in self.errors().splitlines()
            if "[alert]" in line or "[emerg]" in line or "Traceback" in line
        ]
        return lines + (["Traceback on stderr"] if "Traceback" in self.stderr() else [])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = _signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Stop the master; ``None`` if it had to be killed after ``timeout``."""
        self.stopped = True
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in self.workers():
                    try:
                        os.kill(pid, _signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def _start_nginx(prefix: Path, conf_text: str, timeout: float = 15.0) -> Target:
    assert NGINX is not None
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(511)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    os.set_inheritable(fd, True)
    temp = " ".join(
        f"{d}_temp_path {prefix}/tmp/{d};"
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # The one listener, with or without parameters (``listen 127.0.0.1:0 ssl http2;``).
    text = re.sub(r"listen 127\.0\.0\.1:0\b", f"listen 127.0.0.1:{port}", conf_text)
    text = text.replace("http {", "http {\n  " + temp, 1)
    head = (
        f"user root; daemon off; master_process on; pid {prefix}/logs/nginx.pid;\n"
        f"error_log {prefix}/logs/error.log notice;\n"
    )
    (prefix / "nginx.conf").write_text(head + text)
    with open(prefix / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", "nginx.conf", "-e", f"{prefix}/logs/error.log"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            pass_fds=(fd,),
            env={**os.environ, "NGINX": f"{fd};"},
        )
    target = Target("nginx", proc, prefix, port, _listener=listener)
    deadline = time.monotonic() + timeout
    while not (prefix / "logs" / "nginx.pid").exists() or not target.workers():
        if proc.poll() is not None or time.monotonic() > deadline:
            target.stop()
            raise AssertionError(f"nginx did not start:\n{target.stderr()}{target.errors()}")
        time.sleep(0.01)
    return target


def start_target(kind: str, prefix: Path, conf_text: str) -> Target:
    if kind == "nginx":
        if NGINX is None:
            pytest.skip("nginx is not installed (make debs)")
        return _start_nginx(prefix, conf_text)
    handle = start_wsgate(prefix, conf_text)
    return Target("wsgate", handle.proc, prefix, handle.port, handle=handle)


# -- background backends ---------------------------------------------------------------------------
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Stats:
    accepted: int = 0
    open: int = 0
    upgrades: int = 0
    requests: int = 0
    writers: set[asyncio.StreamWriter] = field(default_factory=set)


class BgLoop:
    """An asyncio loop in a thread for the backends, so the test's own loop (clients) and the
    proxy's never share a thread with them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[asyncio.Server] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def serve(self, handler: Handler, stats: Stats | None = None) -> int:
        """Start a server whose connections run ``handler``; returns its port."""
        st = stats if stats is not None else Stats()

        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            st.accepted += 1
            st.open += 1
            st.writers.add(writer)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                pass
            finally:
                st.open -= 1
                st.writers.discard(writer)
                writer.close()

        async def start() -> asyncio.Server:
            return await asyncio.start_server(wrapped, HOST, 0, backlog=1024)

        server = self.call(start())
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5)

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key.strip() + WS_GUID).digest())


def switching(key: bytes) -> bytes:
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
    )


def frame(payload: bytes, opcode: int = 2, mask: bool = True) -> bytes:
    """One final WebSocket frame; masked as a client sends it (RFC 6455 §5.2)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + unmask(payload, key)


def unmask(data: bytes, key: bytes) -> bytes:
    if not data:
        return data
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One frame, unmasked: (opcode, payload)."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4) if b1 & 0x80 else b""
    payload = await reader.readexactly(n)
    return b0 & 0x0F, unmask(payload, key) if key else payload


class _Requests:
    """httptools callbacks: counts complete requests."""

    def __init__(self) -> None:
        self.done = 0

    def on_message_complete(self) -> None:
        self.done += 1


def header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` in a request or response head, or None."""
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return None


async def ws_echo_frames(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo every frame back unmasked until the client's close, which is echoed too."""
    while True:
        opcode, payload = await read_frame(reader)
        writer.write(frame(payload, opcode, mask=False))
        if opcode == 8:
            await writer.drain()
            return
        if writer.transport.get_write_buffer_size() > 1 << 20:
            await writer.drain()


def echo_backend(stats: Stats | None = None) -> Handler:
    """A first request with ``Upgrade``: ``101``, then a WebSocket echo.  Otherwise every
    request (httptools reads the framing) gets ``200 ok`` on a keep-alive connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = header(head, b"sec-websocket-key")
        if header(head, b"upgrade") is not None and key is not None:
            if stats is not None:
                stats.upgrades += 1
            writer.write(switching(key))
            await ws_echo_frames(reader, writer)
            return
        calls = _Requests()
        parser = httptools.HttpRequestParser(calls)
        data = head
        while data:
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                pass
            except httptools.HttpParserError:
                return
            for _ in range(calls.done):
                if stats is not None:
                    stats.requests += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            calls.done = 0
            await writer.drain()
            data = await reader.read(65536)

    return handle


# -- clients ---------------------------------------------------------------------------------------
class Refused(Exception):
    """The proxy answered the handshake with something other than 101 (``status``), or closed
    the connection with no answer (``status`` 0)."""

    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(f"{status}: {head[:200]!r}")
        self.status = status
        self.head = head


async def ws_open(
    port: int, path: str = "/ws", timeout: float = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake through the proxy; the streams once the 101 arrived."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    writer.write(HANDSHAKE.replace(b"/ws", path.encode(), 1))
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError as exc:
        writer.close()
        raise Refused(0, exc.partial) from None
    except (ConnectionError, TimeoutError):
        writer.close()
        raise
    if not head.startswith(b"HTTP/1.1 101 "):
        writer.close()
        raise Refused(int(head.split()[1]), head)
    return reader, writer


async def ws_echo(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> None:
    writer.write(frame(payload))
    opcode, got = await read_frame(reader)
    assert (opcode, got) == (2, payload), (opcode, got[:50])


async def ws_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send a close frame, read the echoed one, close the socket."""
    try:
        writer.write(frame(struct.pack("!H", 1000), 8))
        await asyncio.wait_for(read_frame(reader), 10)
    except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
        pass
    finally:
        writer.close()


async def http_get(port: int, path: str = "/", timeout: float = 10.0) -> int:
    """One ``GET`` on a new connection (``Connection: close``); returns the status."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    if not data:
        return 0
    return int(data.split()[1])


def tcp_held(port: int) -> int:
    """Sockets on loopback whose local port is ``port`` and that still hold a descriptor
    (every state but LISTEN and TIME_WAIT): the proxy's side of its client connections."""
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state not in ("0A", "06"):
                held += 1
    return held


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
