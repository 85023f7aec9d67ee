"""The benchmark's load generator: raw WebSocket clients on uvloop, four kinds of load.

Every connection opens with a real handshake (GET + Upgrade, a 101 expected) and then sends
fixed-size binary frames built once (:mod:`bench.wsproto`); echoes are counted by bytes, so
a read costs the client the same whatever number of messages it holds. Client sockets are
bound to source addresses 127.0.0.2, 127.0.0.3, ... in turn (``IP_BIND_ADDRESS_NO_PORT``:
the port is chosen at ``connect``, per destination), so that no (source, destination) pair
runs out of its 28,232 ephemeral ports.

Modes (each prints one JSON object on stdout; ``idle`` prints one per command):

``throughput``
    ``--conns`` connections each keep ``--window`` messages of ``--size`` bytes in flight
    (window 1 is a ping-pong per connection: every read in the proxy holds one message).
    After ``--warmup`` seconds, counts the echoes received for ``--duration`` seconds.
``latency``
    ``--conns`` connections send one message each ``--conns / --rate`` seconds (a paced
    ping-pong, ``--rate`` round trips a second in all) and record every round-trip time.
``h2throughput``
    ``throughput`` over HTTP/2: ``--conns`` connections of ``--streams`` RFC 8441 WebSocket
    streams each (:mod:`bench.h2wsload`).
``handshake``
    ``--concurrency`` sessions run back to back: connect, upgrade, one 64-byte message and
    its echo, a Close and its reply, the server's TCP close. Counts complete sessions.
``idle``
    Reads commands on stdin: ``OPEN N`` opens connections (upgraded, then silent) until N
    are open; ``ECHO`` sends one message on every open connection and counts the echoes;
    ``CLOSE`` closes them all; ``QUIT`` exits. Lets the benchmark hold 100,000 tunnels from
    several processes.

``--watch NAME=PID[,PID...]`` (repeatable) samples those processes' CPU time (see
:mod:`bench.procstat`) at the start and end of the measurement window, together with this
process's own, so the counts and the CPU times cover the same interval exactly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import uvloop
from bench.backend import raise_nofile
from bench.procstat import CpuSample, cpu_sample, kernel_threads, system_busy
from bench.wsproto import (
    CLIENT_CLOSE,
    SERVER_CLOSE,
    client_frame,
    handshake_request,
    server_frame,
)

__all__ = ["main"]

_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class Target:
    """Where to connect, and the source addresses to connect from (round robin)."""

    def __init__(self, host: str, port: int, sources: list[str]) -> None:
        self.addr = (host, port)
        self.request = handshake_request(f"{host}:{port}")
        self.sources = sources or ["127.0.0.1"]
        self.next = 0

    def socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        src = self.sources[self.next % len(self.sources)]
        self.next += 1
        sock.bind((src, 0))
        return sock

    async def connect(
        self, factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        loop = asyncio.get_running_loop()
        sock = self.socket()
        try:
            await loop.sock_connect(sock, self.addr)
            transport, protocol = await loop.create_connection(factory, sock=sock)
        except BaseException:
            sock.close()
            raise
        return transport, protocol


class Upgrading(asyncio.Protocol):
    """Sends the handshake, waits for the 101, then hands bytes to :meth:`ws_data`."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.upgraded = False
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.ws_data(data)
            return
        head = self.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self.head = head
            return
        self.head = b""
        if not head.startswith((b"HTTP/1.1 101 ", b"HTTP/1.0 101 ")):
            self._fail(ConnectionError(head.split(b"\r\n", 1)[0].decode()))
            assert self.transport is not None
            self.transport.abort()
            return
        self.upgraded = True
        if not self.ready.done():
            self.ready.set_result(True)
        self.on_upgraded()
        rest = head[end + 4 :]
        if rest:
            self.ws_data(rest)

    def on_upgraded(self) -> None:
        pass

    def ws_data(self, data: bytes) -> None:
        pass

    def _fail(self, exc: BaseException) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # retrieved: a caller that does not wait logs nothing

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("closed before the 101"))


U = TypeVar("U", bound=Upgrading)


# --- measurement window ------------------------------------------------------------------


class Watch:
    """CPU samples of named process groups (and of this process) at two instants."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {"loadgen": [os.getpid()], **groups, "ksoftirqd": kernel_threads()}
        self.start: dict[str, CpuSample] = {}
        self.t0 = 0.0
        self.busy0 = 0.0

    def begin(self) -> None:
        self.t0 = time.perf_counter()
        self.start = {name: cpu_sample(pids) for name, pids in self.groups.items()}
        self.busy0 = system_busy()

    def end(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.t0
        cpu = {}
        for name, pids in self.groups.items():
            used = cpu_sample(pids) - self.start[name]
            cpu[name] = {
                "user_s": round(used.user, 3),
                "system_s": round(used.system, 3),
                "total_s": round(used.total, 3),
                "utilisation": round(used.total / elapsed, 3) if elapsed else 0.0,
            }
        # Busy CPU time of the whole machine that none of the watched processes used: other
        # work on the machine during the window (a disturbed measurement when it is large).
        other = system_busy() - self.busy0 - sum(c["total_s"] for c in cpu.values())
        return {
            "elapsed_s": round(elapsed, 4),
            "cpu": cpu,
            "other_cpu": round(max(0.0, other) / elapsed, 3) if elapsed else 0.0,
        }


def _reason(exc: BaseException) -> str:
    """A short name for why a connection failed, to count failures by kind."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


async def _open_all(
    target: Target,
    count: int,
    factory: Callable[[], U],
    parallel: int = 200,
    errors: dict[str, int] | None = None,
) -> tuple[list[U], int]:
    """Open ``count`` upgraded connections, ``parallel`` handshakes at a time; failures are
    counted by kind into ``errors``."""
    opened: list[U] = []
    failed = 0
    todo = count

    async def one() -> None:
        nonlocal todo, failed
        while todo > 0:
            todo -= 1
            try:
                _, proto = await target.connect(factory)
                await asyncio.wait_for(cast(U, proto).ready, 30)
                opened.append(cast(U, proto))
            except (TimeoutError, OSError, ConnectionError) as exc:
                failed += 1
                if errors is not None:
                    reason = _reason(exc)
                    errors[reason] = errors.get(reason, 0) + 1

    await asyncio.gather(*(one() for _ in range(min(parallel, count))))
    return opened, failed


# --- throughput ----------------------------------------------------------------------------


class Flow(Upgrading):
    """Keeps ``window`` messages in flight; every echo received sends a new message."""

    def __init__(self, request: bytes, gen: Throughput) -> None:
        super().__init__(request)
        self.gen = gen
        self.rx = 0
        self.done = 0
        self.sent = 0

    def start(self) -> None:
        gen = self.gen
        if self.transport is None or self.transport.is_closing():
            return  # closed by the proxy after its 101: reported as lost
        self.transport.write(gen.frames[gen.window])
        self.sent = gen.window

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.gen.sending:
            self.gen.lost += 1

    def ws_data(self, data: bytes) -> None:
        gen = self.gen
        self.rx += len(data)
        done = self.rx // gen.reply_len
        new = done - self.done
        if new:
            self.done = done
            gen.count += new
            if gen.sending:
                assert self.transport is not None
                self.transport.write(gen.frames[new])
                self.sent += new


class Throughput:
    def __init__(self, size: int, window: int) -> None:
        frame = client_frame(size)
        self.frames = [frame * k for k in range(window + 1)]
        self.reply_len = len(server_frame(size))
        self.window = window
        self.count = 0
        self.lost = 0  # connections closed while the load ran
        self.sending = True


async def run_throughput(args: argparse.Namespace, target: Target, watch: Watch) -> dict[str, Any]:
    gen = Throughput(args.size, args.window)
    flows, failed = await _open_all(target, args.conns, lambda: Flow(target.request, gen))
    if failed:
        raise SystemExit(f"{failed} of {args.conns} connections failed to upgrade")
    for flow in flows:
        flow.start()
    await asyncio.sleep(args.warmup)
    c0 = gen.count
    watch.begin()
    await asyncio.sleep(args.duration)
    c1 = gen.count
    window = watch.end()
    gen.sending = False
    deadline = time.monotonic() + 10
    while any(f.done < f.sent for f in flows) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    for flow in flows:
        assert flow.transport is not None
        flow.transport.abort()
    echoed = c1 - c0
    return {
        "mode": "throughput",
        "size": args.size,
        "conns": args.conns,
        "window": args.window,
        "echoes": echoed,
        "relayed": 2 * echoed,
        "relayed_per_s": round(2 * echoed / window["elapsed_s"], 1),
        "lost_conns": gen.lost,
        **window,
    }


# --- latency -------------------------------------------------------------------------------


class Pinger(Upgrading):
    """One message every ``interval`` seconds, the next only after the echo."""

    def __init__(self, request: bytes, gen: Latency) -> None:
        super().__init__(request)
        self.gen = gen
        self.rx = 0
        self.sent_ns = 0
        self.next_at = 0.0

    def on_upgraded(self) -> None:
        loop = asyncio.get_running_loop()
        self.next_at = loop.time() + random.random() * self.gen.interval
        loop.call_at(self.next_at, self.send)

    def send(self) -> None:
        if not self.gen.running or self.transport is None or self.transport.is_closing():
            return
        self.sent_ns = time.perf_counter_ns()
        self.transport.write(self.gen.frame)

    def ws_data(self, data: bytes) -> None:
        gen = self.gen
        self.rx += len(data)
        if self.rx < gen.reply_len:
            return
        self.rx -= gen.reply_len
        now = time.perf_counter_ns()
        if gen.recording:
            gen.samples.append(now - self.sent_ns)
        loop = asyncio.get_running_loop()
        self.next_at = max(self.next_at + gen.interval, loop.time())
        loop.call_at(self.next_at, self.send)


class Latency:
    def __init__(self, size: int, interval: float) -> None:
        self.frame = client_frame(size)
        self.reply_len = len(server_frame(size))
        self.interval = interval
        self.samples: list[int] = []
        self.recording = False
        self.running = True


def _percentile(sorted_ns: list[int], q: float) -> float:
    """The ``q`` quantile (nearest rank) in microseconds."""
    if not sorted_ns:
        return 0.0
    rank = min(len(sorted_ns) - 1, max(0, int(round(q * len(sorted_ns))) - 1))
    return round(sorted_ns[rank] / 1000, 1)


async def run_latency(args: argparse.Namespace, target: Target, watch: Watch) -> dict[str, Any]:
    gen = Latency(args.size, args.conns / args.rate)
    pingers, failed = await _open_all(target, args.conns, lambda: Pinger(target.request, gen))
    if failed:
        raise SystemExit(f"{failed} of {args.conns} connections failed to upgrade")
    await asyncio.sleep(args.warmup)
    gen.recording = True
    watch.begin()
    await asyncio.sleep(args.duration)
    gen.recording = False
    window = watch.end()
    gen.running = False
    for p in pingers:
        assert p.transport is not None
        p.transport.abort()
    samples = sorted(gen.samples)
    return {
        "mode": "latency",
        "size": args.size,
        "conns": args.conns,
        "rate": args.rate,
        "samples": len(samples),
        "p50_us": _percentile(samples, 0.50),
        "p90_us": _percentile(samples, 0.90),
        "p99_us": _percentile(samples, 0.99),
        "max_us": _percentile(samples, 1.0),
        **window,
    }


# --- handshakes ----------------------------------------------------------------------------


class Session(Upgrading):
    """Upgrade, one message and its echo, Close and its reply, then the server's close."""

    def __init__(self, request: bytes, frame: bytes, reply_len: int) -> None:
        super().__init__(request)
        self.frame = frame
        self.expect = reply_len + len(SERVER_CLOSE)
        self.reply_len = reply_len
        self.rx = 0
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_upgraded(self) -> None:
        assert self.transport is not None
        self.transport.write(self.frame)

    def ws_data(self, data: bytes) -> None:
        before = self.rx
        self.rx += len(data)
        if before < self.reply_len <= self.rx:
            assert self.transport is not None
            self.transport.write(CLIENT_CLOSE)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.done.done():
            self.done.set_result(self.upgraded and self.rx == self.expect)


async def run_handshake(args: argparse.Namespace, target: Target, watch: Watch) -> dict[str, Any]:
    frame = client_frame(64)
    reply_len = len(server_frame(64))
    state = {"ok": 0, "failed": 0, "recording": False, "running": True}
    times: list[int] = []

    async def loop_sessions() -> None:
        while state["running"]:
            t0 = time.perf_counter_ns()
            try:
                _, proto = await target.connect(lambda: Session(target.request, frame, reply_len))
                assert isinstance(proto, Session)
                ok = await asyncio.wait_for(proto.done, 10)
            except (TimeoutError, OSError, ConnectionError):
                ok = False
            if state["recording"]:
                if ok:
                    state["ok"] += 1
                    times.append(time.perf_counter_ns() - t0)
                else:
                    state["failed"] += 1

    tasks = [asyncio.create_task(loop_sessions()) for _ in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    state["recording"] = True
    watch.begin()
    await asyncio.sleep(args.duration)
    state["recording"] = False
    window = watch.end()
    state["running"] = False
    await asyncio.wait(tasks, timeout=15)
    times.sort()
    ok = int(state["ok"])
    return {
        "mode": "handshake",
        "concurrency": args.concurrency,
        "handshakes": ok,
        "failed": state["failed"],
        "handshakes_per_s": round(ok / window["elapsed_s"], 1),
        "session_p50_us": _percentile(times, 0.5),
        "session_p99_us": _percentile(times, 0.99),
        **window,
    }


# --- idle connections ----------------------------------------------------------------------


class Idle(Upgrading):
    def __init__(self, request: bytes, gen: IdleSet) -> None:
        super().__init__(request)
        self.gen = gen
        self.rx = 0
        self.closed = False

    def ws_data(self, data: bytes) -> None:
        before = self.rx
        self.rx += len(data)
        if before < self.gen.reply_len <= self.rx:
            self.gen.echoed += 1

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.closed = True
        if self.upgraded:
            self.gen.lost += 1


class IdleSet:
    def __init__(self) -> None:
        self.reply_len = len(server_frame(64))
        self.echoed = 0
        self.lost = 0


async def run_idle(args: argparse.Namespace, target: Target) -> None:
    gen = IdleSet()
    conns: list[Idle] = []
    errors: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] == "QUIT":
            break
        if line[0] == "OPEN":
            want = int(line[1])
            t0 = time.perf_counter()
            new, failed = await _open_all(
                target,
                want - len(conns),
                lambda: Idle(target.request, gen),
                args.concurrency,
                errors,
            )
            conns.extend(new)
            out = {"open": len(conns), "failed": failed, "lost": gen.lost, "errors": errors}
            out["seconds"] = round(time.perf_counter() - t0, 2)
            print(json.dumps(out), flush=True)
        elif line[0] == "CLOSE":
            # Close every open connection (a clean TCP close) and wait until the proxy has
            # closed its side of each: the benchmark's warm-up before the memory baseline.
            for c in conns:
                if c.transport is not None and not c.transport.is_closing():
                    c.transport.close()
            deadline = time.monotonic() + 30
            while any(c.transport is not None and not c.closed for c in conns) and (
                time.monotonic() < deadline
            ):
                await asyncio.sleep(0.05)
            gen.lost = 0
            closed = len(conns)
            conns.clear()
            print(json.dumps({"closed": closed}), flush=True)
        elif line[0] == "ECHO":
            frame = client_frame(64)
            gen.echoed = 0
            for c in conns:
                c.rx = 0
                if c.transport is not None and not c.transport.is_closing():
                    c.transport.write(frame)
            deadline = time.monotonic() + 60
            while gen.echoed + gen.lost < len(conns) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            print(json.dumps({"echoed": gen.echoed, "lost": gen.lost}), flush=True)
    for c in conns:
        if c.transport is not None:
            c.transport.abort()


# --- command line --------------------------------------------------------------------------


def _sources(spec: str) -> list[str]:
    """``127.0.0.2-20`` → 127.0.0.2 ... 127.0.0.20; or a comma-separated list."""
    if "-" in spec:
        first, last = spec.rsplit("-", 1)
        base, _, start = first.rpartition(".")
        return [f"{base}.{i}" for i in range(int(start), int(last) + 1)]
    return [s for s in spec.split(",") if s]


def _watch_groups(specs: list[str]) -> dict[str, list[int]]:
    groups = {}
    for spec in specs:
        name, _, pids = spec.partition("=")
        groups[name] = [int(p) for p in pids.split(",") if p]
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "mode", choices=["throughput", "h2throughput", "latency", "handshake", "idle"]
    )
    parser.add_argument("--connect", required=True, help="HOST:PORT of the proxy or backend")
    parser.add_argument("--sources", default="127.0.0.2-20", help="client source addresses")
    parser.add_argument("--conns", type=int, default=100)
    parser.add_argument("--size", type=int, default=64, help="message payload bytes")
    parser.add_argument("--window", type=int, default=1, help="messages in flight per conn")
    parser.add_argument(
        "--streams", type=int, default=1, help="h2throughput: WebSocket streams per connection"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="latency: round trips/s")
    parser.add_argument("--concurrency", type=int, default=32, help="sessions in parallel")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--watch", action="append", default=[], help="NAME=PID[,PID...]")
    args = parser.parse_args(argv)
    raise_nofile()
    host, _, port = args.connect.rpartition(":")
    target = Target(host, int(port), _sources(args.sources))
    watch = Watch(_watch_groups(args.watch))

    async def run() -> None:
        if args.mode == "idle":
            await run_idle(args, target)
            return
        from bench.h2wsload import run_h2_throughput

        runner = {
            "throughput": run_throughput,
            "h2throughput": run_h2_throughput,
            "latency": run_latency,
            "handshake": run_handshake,
        }[args.mode]
        result = await runner(args, target, watch)
        print(json.dumps(result), flush=True)

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
