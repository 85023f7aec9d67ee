"""The static-file benchmark's load generator: raw HTTP/1.1 clients on uvloop, two kinds of load.

``throughput``
    ``--conns`` keep-alive connections each send ``GET --path``, read the response to the end
    of its ``Content-Length`` and send the next (one request in flight per connection, no
    pipelining). After ``--warmup`` seconds, counts the responses completed and the bytes
    received for ``--duration`` seconds. Bodies are counted, never copied: the protocol reads
    into one preallocated buffer (:class:`asyncio.BufferedProtocol`).
``slow``
    ``--conns`` connections each ask for ``--path`` once and read it slowly: ``--chunk`` bytes,
    then a pause of ``--pause`` seconds, with a small receive buffer, so the server always has
    most of the file still to send. Every ``--sample`` seconds for ``--duration`` seconds it
    reads the memory of the ``--watch`` processes (``VmRSS`` and ``Pss``), and prints the
    samples with the bytes the clients received.

``--watch NAME=PID[,PID...]`` as in :mod:`bench.loadgen`: CPU time of those processes at the
start and end of the counting window (``throughput``), memory (``slow``). Prints one JSON
object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from typing import Any

import uvloop
from bench.loadgen import Watch, _watch_groups
from bench.procstat import memory_kib

__all__ = ["main"]

_BUF = 256 * 1024


class Getter(asyncio.BufferedProtocol):
    """One keep-alive connection asking for the same file again and again."""

    def __init__(self, request: bytes, gen: Throughput) -> None:
        self.request = request
        self.gen = gen
        self.buf = bytearray(_BUF)
        self.head = bytearray()
        self.left = -1  # body bytes still to come; -1: reading the head
        self.transport: asyncio.Transport | None = None
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        self.transport.write(self.request)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        gen = self.gen
        gen.bytes += nbytes
        if self.left < 0:
            self.head += self.buf[:nbytes]
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.head[:end]).lower()
            if not head.startswith(b"http/1.1 200"):
                self._fail(f"unexpected response: {bytes(self.head[:80])!r}")
                return
            at = head.find(b"\r\ncontent-length:")
            eol = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : eol if eol > 0 else len(head)])
            self.left = length - (len(self.head) - end - 4)
            self.head.clear()
        else:
            self.left -= nbytes
        if self.left == 0:
            self.left = -1
            gen.done += 1
            assert self.transport is not None
            self.transport.write(self.request)
        elif self.left < -1:
            self._fail("more bytes than Content-Length")

    def _fail(self, why: str) -> None:
        self.error = why
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = str(exc) if exc else "closed by the server"
        self.gen.lost += 1


class Throughput:
    def __init__(self) -> None:
        self.done = 0
        self.bytes = 0
        self.lost = 0


async def run_throughput(args: argparse.Namespace, watch: Watch) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    gen = Throughput()
    request = f"GET {args.path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    conns = []
    for _ in range(args.conns):
        _, proto = await loop.create_connection(lambda: Getter(request, gen), args.host, args.port)
        conns.append(proto)
    await asyncio.sleep(args.warmup)
    done0, bytes0 = gen.done, gen.bytes
    watch.begin()
    await asyncio.sleep(args.duration)
    window = watch.end()
    done, received = gen.done - done0, gen.bytes - bytes0
    errors = sorted({c.error for c in conns if c.error})
    for c in conns:
        if c.transport is not None:
            c.transport.abort()
    elapsed = window["elapsed_s"]
    return {
        "requests": done,
        "bytes": received,
        "requests_per_s": round(done / elapsed, 1),
        "mib_per_s": round(received / elapsed / 2**20, 1),
        "lost": gen.lost,
        "errors": errors[:5],
        **window,
    }


def _rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


async def run_slow(args: argparse.Namespace, groups: dict[str, list[int]]) -> dict[str, Any]:
    received = [0] * args.conns
    heads: list[bytes] = []

    async def client(i: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (args.host, args.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=args.chunk)
        writer.write(f"GET {args.path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        try:
            while data := await reader.read(args.chunk):
                received[i] += len(data)
                await asyncio.sleep(args.pause)
        finally:
            writer.transport.abort()

    tasks = [asyncio.create_task(client(i)) for i in range(args.conns)]
    samples = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.duration:
        await asyncio.sleep(args.sample)
        samples.append(
            {
                "t": round(time.monotonic() - t0, 1),
                "received": sum(received),
                **{f"{name}_rss_kib": _rss_kib(pids) for name, pids in groups.items()},
                **{f"{name}_pss_kib": memory_kib(pids) for name, pids in groups.items()},
            }
        )
    failed = [t for t in tasks if t.done() and t.exception() is not None]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "clients": args.conns,
        "ok_heads": sum(1 for h in heads if h.startswith(b"HTTP/1.1 200")),
        "failed": len(failed),
        "received": sum(received),
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["throughput", "slow"])
    parser.add_argument("--connect", required=True, help="HOST:PORT of the server")
    parser.add_argument("--path", required=True)
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--chunk", type=int, default=16384, help="slow: bytes per read")
    parser.add_argument("--pause", type=float, default=0.02, help="slow: seconds between reads")
    parser.add_argument("--sample", type=float, default=1.0, help="slow: seconds between samples")
    parser.add_argument("--watch", action="append", default=[], help="NAME=PID[,PID...]")
    args = parser.parse_args(argv)
    host, _, port = args.connect.rpartition(":")
    args.host, args.port = host, int(port)
    groups = _watch_groups(args.watch)

    async def run() -> None:
        if args.mode == "throughput":
            result = await run_throughput(args, Watch(groups))
        else:
            result = await run_slow(args, groups)
        print(json.dumps(result), flush=True)

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
