"""Backend faults: whatever an upstream does, the client gets nginx's answer or a clean end of
its tunnel, the proxy logs no ``[alert]``, and every descriptor comes back.

Each fault is a backend behaviour (one coroutine per connection):

* ``reset_in_handshake``: the upstream reads the handshake and resets the connection: 502;
* ``silent``: it reads the handshake and never answers: 504 after ``proxy_read_timeout``;
* ``garbage``: it answers bytes that are not HTTP: 502;
* ``101_then_close``: it switches protocols and closes: the client's tunnel ends (EOF);
* ``reset_mid_stream``: it switches, echoes one frame, then resets: the tunnel ends;
* ``101_without_upgrade``: it answers ``101`` (and more bytes) to a request that asked for no
  upgrade: nginx treats that as a response without a body and relays nothing after its head,
  so the bytes behind it never reach the client.

The same faults run against nginx where it is installed; its outcomes are the reference the
expectations were written from.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.reliability.common import (
    HANDSHAKE,
    HOST,
    TARGETS,
    BgLoop,
    Stats,
    conf,
    frame,
    header,
    read_frame,
    record,
    start_target,
    switching,
    tcp_held,
    wait_until,
    ws_echo_frames,
)

READ_TIMEOUT = 1.0
#: No answer may wait longer than the timer that bounds it, plus slack for a loaded machine.
DEADLINE = READ_TIMEOUT + 9.0
LEAK = b"LEAKED-AFTER-101"

Fault = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def reset_in_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    reset(writer)


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await reader.read()


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"\x00\x01\x02 this is not HTTP \xff\r\n\r\n")
    await writer.drain()


async def switch_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    writer.write(switching(header(head, b"sec-websocket-key") or b""))
    await writer.drain()


async def reset_mid_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    writer.write(switching(header(head, b"sec-websocket-key") or b""))
    opcode, payload = await read_frame(reader)
    writer.write(frame(payload, opcode, mask=False))
    await writer.drain()
    reset(writer)


async def switch_without_upgrade(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n" + LEAK)
    await writer.drain()
    await ws_echo_frames(reader, writer)


PLAIN = b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n"
#: fault -> (backend, request, what the client must see)
FAULTS: dict[str, tuple[Fault, bytes, tuple[str, ...]]] = {
    "reset_in_handshake": (reset_in_handshake, HANDSHAKE, ("502",)),
    "silent": (silent, HANDSHAKE, ("504",)),
    # nginx 1.22 relays an answer that is not HTTP as an HTTP/0.9 body; wsgate answers 502.
    "garbage": (garbage, HANDSHAKE, ("502", "relayed-raw")),
    "101_then_close": (switch_then_close, HANDSHAKE, ("101+eof",)),
    "reset_mid_stream": (reset_mid_stream, HANDSHAKE, ("101+echo+eof",)),
    "101_without_upgrade": (switch_without_upgrade, PLAIN, ("no-leak",)),
}


def complete_error_page(raw: bytes) -> bool:
    """Whether ``raw`` holds a whole non-101 response with a Content-Length body."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/") or head.startswith(b"HTTP/1.1 101 "):
        return False
    length = header(head, b"content-length")
    return length is not None and len(body) >= int(length)


def outcome(port: int, request: bytes, expect: str) -> tuple[str, bytes]:
    """Run the client side; returns what it saw, in the vocabulary of :data:`FAULTS`."""
    with socket.create_connection((HOST, port), timeout=DEADLINE) as s:
        s.sendall(request)
        raw = b""
        sent_frame = False
        try:
            while True:
                if expect == "101+echo+eof" and raw.startswith(b"HTTP/1.1 101 ") and not sent_frame:
                    if b"\r\n\r\n" in raw:
                        s.sendall(frame(b"ping-1"))
                        sent_frame = True
                chunk = s.recv(65536)
                if not chunk:
                    break
                raw += chunk
                if expect == "no-leak" and LEAK in raw:
                    break
                if len(raw) >= 5 and not raw.startswith(b"HTTP/"):
                    break  # not an HTTP answer: nginx relays the upstream's bytes as HTTP/0.9
                if complete_error_page(raw):
                    break  # the connection may stay open for the next request
        except TimeoutError:
            return "hung", raw
        except ConnectionResetError:
            pass
    if raw and not raw.startswith(b"HTTP/"):
        return "relayed-raw", raw
    status = raw.split(b" ", 2)[1].decode() if raw.startswith(b"HTTP/") else "none"
    if expect == "no-leak":
        return ("leak" if LEAK in raw else "no-leak"), raw
    if status == "101":
        body = raw.partition(b"\r\n\r\n")[2]
        return ("101+echo+eof" if b"ping-1" in body else "101+eof"), raw
    return status, raw


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", TARGETS)
def test_backend_faults(kind: str, tmp_path: Path, bg: BgLoop) -> None:
    failures = []
    for name, (fault, request, allowed) in FAULTS.items():
        expect = allowed[0]
        stats = Stats()
        upstream = bg.serve(fault, stats)
        text = conf(
            upstream,
            server=f"proxy_read_timeout {READ_TIMEOUT:.0f}s; proxy_connect_timeout 1s;",
        )
        target = start_target(kind, tmp_path / f"{kind}-{name}", text)
        try:
            began = time.monotonic()
            seen, raw = outcome(target.port, request, expect)
            seconds = time.monotonic() - began
            # The client's connection and the upstream's are both released.
            wait_until(lambda: tcp_held(target.port) == 0, "client connections closed")  # noqa: B023
            wait_until(lambda: stats.open == 0, "upstream connections closed")  # noqa: B023
            record(f"fault.{name}", kind, outcome=seen, seconds=seconds)
            if seen not in allowed:
                failures.append((name, seen, raw[:300]))
        finally:
            target.stop()
        alerts = target.alerts()
        if alerts:
            failures.append((name, "alerts", alerts))
    assert not failures, failures
