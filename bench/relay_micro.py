"""CPU per relayed WebSocket message of :class:`wsgate.proxy.tunnel.Tunnel`, on loopback.

The relay runs in a process of its own (uvloop, as wsgate does); this process is the load: C
client connections that each send M masked frames and wait for each echo (``--window`` frames
in flight), and one upstream server that answers every frame with an unmasked frame of the
same size.  Both peers count bytes only, so their cost stays out of the relay's numbers.  The
relay process reports its own CPU time (user + system, ``getrusage``) from the first accepted
connection to the end of the last tunnel; that divided by the messages it relayed (both ways)
is the figure.

Modes of the relay:

* ``old``:  the ``_Side.data_received`` before frame tracking (kept verbatim below).
* ``raw``:  today's byte-stream side (a non-WebSocket upgrade).
* ``ws``:   today's WebSocket side (frame boundaries and message counts tracked).
* ``feat``: the WebSocket side with every ``websocket_*`` feature on (:data:`FEATURES`: pings
  every 30 s, limits the load stays within), which reads every frame header.
* ``wsm``:  ``ws`` with ``websocket_metrics on`` (the message-size histogram).
* ``featm``: ``feat`` with ``websocket_metrics on``.

Run ``.venv/bin/python bench/relay_micro.py`` (``--help`` for the options).  Modes are
interleaved run by run, and the median and the minimum of ``--repeat`` runs are shown,
because a loaded machine drifts (the minimum is the least disturbed run).

``--calls`` measures the Python work alone: ``data_received`` called in a loop with the
chunks a message arrives in (one per message up to 4 KiB; 64 KiB + the rest for a 64 KiB
message, as loopback reads deliver it), against a transport whose ``write`` is a C no-op.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import cast

from wsgate.loop import new_event_loop
from wsgate.proxy.tunnel import Tunnel, WsFeatures, _Side

HOST = "127.0.0.1"
MODES = ("old", "raw", "ws", "feat", "wsm", "featm")
#: Modes whose tunnel is a WebSocket one, those with features on, those with the histogram.
_WS, _FEAT, _SIZED = ("ws", "feat", "wsm", "featm"), ("feat", "featm"), ("wsm", "featm")
#: ``feat`` mode: keepalive pings both ways and every limit, none reached by the load.
FEATURES = WsFeatures(
    ping_interval=30.0,
    ping_client=True,
    ping_upstream=True,
    max_message_client=1 << 20,
    max_message_upstream=1 << 20,
    max_frame_client=1 << 20,
    max_frame_upstream=1 << 20,
    rate_client=10**9,
    rate_upstream=10**9,
    burst=10**9,
)
#: Messages each way per run, by payload size: a few seconds of relay CPU each.
DEFAULT_MESSAGES = {64: 100_000, 4096: 50_000, 65536: 5_000}


class OldSide(_Side):
    """The relay before frame tracking: ``data_received`` as it was."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)
        self.nbytes += len(data)
        self.tunnel.last = self.tunnel.clock()


def frame(size: int, masked: bool) -> bytes:
    """A FIN binary frame with ``size`` payload bytes (RFC 6455 §5.2)."""
    m = 0x80 if masked else 0
    if size < 126:
        head = bytes((0x82, m | size))
    elif size < 65536:
        head = bytes((0x82, m | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x82, m | 127)) + size.to_bytes(8, "big")
    return head + (os.urandom(4) if masked else b"") + os.urandom(size)


# the relay process -----------------------------------------------------------------------
class _Pending(asyncio.Protocol):
    """A connection until its tunnel starts; what it reads meanwhile is sent early."""

    def __init__(self, relay: Relay | None = None) -> None:
        self.relay = relay
        self.early = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.relay is not None:
            self.relay.accepted(cast(asyncio.Transport, transport), self)

    def data_received(self, data: bytes) -> None:
        self.early += data


class Relay:
    def __init__(self, mode: str, upstream_port: int, conns: int) -> None:
        self.mode = mode
        self.upstream_port = upstream_port
        self.left = conns
        self.cpu0: resource.struct_rusage | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.messages = [0, 0]
        self.tasks: set[asyncio.Task[None]] = set()

    def accepted(self, client: asyncio.Transport, pending: _Pending) -> None:
        if self.cpu0 is None:
            self.cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        task = asyncio.get_running_loop().create_task(self.connect(client, pending))
        self.tasks.add(task)

    async def connect(self, client: asyncio.Transport, pending: _Pending) -> None:
        loop = asyncio.get_running_loop()
        upstream, up = await loop.create_connection(_Pending, HOST, self.upstream_port)
        tunnel = Tunnel(
            loop,
            client,
            upstream,
            read_timeout=600,
            send_timeout_upstream=600,
            send_timeout_client=600,
            on_close=self.closed,
            websocket=self.mode in _WS,
            features=FEATURES if self.mode in _FEAT else None,
            sizes=self.mode in _SIZED,
        )
        if self.mode == "old":
            tunnel.client.__class__ = OldSide
            tunnel.upstream.__class__ = OldSide
        tunnel.start(bytes(up.early), bytes(pending.early), False, False)

    def closed(self, tunnel: Tunnel) -> None:
        self.messages[0] += tunnel.messages_to_upstream
        self.messages[1] += tunnel.messages_to_client
        self.left -= 1
        if self.left == 0:
            self.done.set_result(None)


async def relay_main(mode: str, upstream_port: int, conns: int) -> None:
    loop = asyncio.get_running_loop()
    relay = Relay(mode, upstream_port, conns)
    server = await loop.create_server(lambda: _Pending(relay), HOST, 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await relay.done
    end = resource.getrusage(resource.RUSAGE_SELF)
    assert relay.cpu0 is not None
    user = end.ru_utime - relay.cpu0.ru_utime
    system = end.ru_stime - relay.cpu0.ru_stime
    print(json.dumps({"user": user, "sys": system, "messages": relay.messages}), flush=True)
    server.close()


# the load -----------------------------------------------------------------------------------
class Upstream(asyncio.Protocol):
    """Answers each complete frame from the relay with one frame of the same size."""

    def __init__(self, size: int) -> None:
        self.up_len = len(frame(size, True))
        self.reply = frame(size, False)
        self.got = 0
        self.answered = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        complete = self.got // self.up_len
        if complete > self.answered:
            assert self.transport is not None
            self.transport.write(self.reply * (complete - self.answered))
            self.answered = complete


class Client(asyncio.Protocol):
    """Sends ``count`` frames, ``window`` at a time, and waits for each echo."""

    def __init__(self, size: int, count: int, window: int) -> None:
        self.out = frame(size, True)
        self.in_len = len(frame(size, False))
        self.count = count
        self.window = window
        self.sent = 0
        self.got = 0
        self.transport: asyncio.Transport | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._send(min(self.window, self.count))

    def _send(self, k: int) -> None:
        assert self.transport is not None
        for _ in range(k):  # one write per frame: one message per chunk when unloaded
            self.transport.write(self.out)
        self.sent += k

    def data_received(self, data: bytes) -> None:
        before = self.got // self.in_len
        self.got += len(data)
        done = self.got // self.in_len
        more = min(done - before, self.count - self.sent)
        if more > 0:
            self._send(more)
        if done >= self.count and not self.finished.done():
            self.finished.set_result(None)


async def one_run(mode: str, size: int, total: int, conns: int, window: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(lambda: Upstream(size), HOST, 0)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--relay",
        mode,
        "--upstream",
        str(upstream.sockets[0].getsockname()[1]),
        "--conns",
        str(conns),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    port = int(await proc.stdout.readline())
    per_conn = total // conns
    clients = []
    for _ in range(conns):
        _, client = await loop.create_connection(lambda: Client(size, per_conn, window), HOST, port)
        clients.append(client)
    await asyncio.gather(*(c.finished for c in clients))
    for c in clients:
        assert c.transport is not None
        c.transport.close()
    report = json.loads(await proc.stdout.readline())
    await proc.wait()
    upstream.close()
    relayed = 2 * per_conn * conns
    if mode == "ws":
        assert report["messages"] == [per_conn * conns] * 2, report
    cpu = report["user"] + report["sys"]
    return {"cpu_us": cpu / relayed * 1e6, "user_us": report["user"] / relayed * 1e6}


async def load_main(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    print(
        f"relay CPU per message (µs, user+sys, median / min of {args.repeat}); "
        f"{args.conns} connections, window {args.window}"
    )
    print(f"{'size':>6}  " + "  ".join(f"{m:>13}" for m in modes) + "   ws vs old")
    for size in sizes:
        total = args.messages or DEFAULT_MESSAGES.get(size, 20_000)
        runs: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            for mode in modes:
                result = await one_run(mode, size, total, args.conns, args.window)
                runs[mode].append(result["cpu_us"])
        med = {m: statistics.median(v) for m, v in runs.items()}
        low = {m: min(v) for m, v in runs.items()}
        line = f"{size:>6}  " + "  ".join(f"{med[m]:6.2f} {low[m]:6.2f}" for m in modes)
        if "old" in med and "ws" in med:
            line += f"   {100 * (med['ws'] / med['old'] - 1):+.1f}%"
            line += f" / {100 * (low['ws'] / low['old'] - 1):+.1f}%"
        print(line, flush=True)
        if args.verbose:
            for m, v in runs.items():
                print(f"        {m}: " + " ".join(f"{x:.2f}" for x in v))


# the Python work alone ------------------------------------------------------------------------
class _NullTransport:
    """``write`` is a C no-op, so only the protocol's own Python code is timed."""

    def __init__(self) -> None:
        sink: collections.deque[bytes] = collections.deque(maxlen=0)
        self.write: Callable[[bytes], None] = sink.append

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def set_protocol(self, protocol: object) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abort(self) -> None:
        pass


def calls(mode: str, size: int, count: int) -> float:
    """Nanoseconds of ``data_received`` per message of ``size`` bytes."""
    loop = new_event_loop()
    client = cast(asyncio.Transport, _NullTransport())
    upstream = cast(asyncio.Transport, _NullTransport())
    tunnel = Tunnel(
        loop,
        client,
        upstream,
        read_timeout=600,
        send_timeout_upstream=600,
        send_timeout_client=600,
        on_close=lambda t: None,
        websocket=mode in _WS,
        features=FEATURES if mode in _FEAT else None,
        sizes=mode in _SIZED,
    )
    if mode == "old":
        tunnel.client.__class__ = OldSide
    tunnel.start(b"", b"", False, False)
    message = frame(size, True)
    chunks = [message[i : i + 65536] for i in range(0, len(message), 65536)]
    received = tunnel.client.data_received
    start = time.perf_counter_ns()
    for _ in range(count):
        for chunk in chunks:
            received(chunk)
    elapsed = time.perf_counter_ns() - start
    if mode in _WS:
        assert tunnel.messages_to_upstream == count
    if mode in _SIZED:
        taken = tunnel.take_sizes()
        assert taken is not None and sum(taken[0][:-1]) == count
    tunnel.abort()
    loop.close()
    return elapsed / count


def calls_main(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    print(f"data_received alone, ns per message (median / min of {args.repeat})")
    print(f"{'size':>6}  " + "  ".join(f"{m:>13}" for m in modes) + "   ws - old")
    for size in sizes:
        runs: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            for mode in modes:
                runs[mode].append(calls(mode, size, 50_000))
        med = {m: statistics.median(v) for m, v in runs.items()}
        low = {m: min(v) for m, v in runs.items()}
        line = f"{size:>6}  " + "  ".join(f"{med[m]:6.1f} {low[m]:6.1f}" for m in modes)
        if "old" in med and "ws" in med:
            line += f"   {med['ws'] - med['old']:+.1f} / {low['ws'] - low['old']:+.1f} ns"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,4096,65536", help="payload sizes, comma-separated")
    parser.add_argument("--modes", default="old,raw,ws", help=f"relay modes among {MODES}")
    parser.add_argument("--messages", type=int, default=0, help="messages each way per run")
    parser.add_argument("--conns", type=int, default=32, help="concurrent tunnels")
    parser.add_argument("--window", type=int, default=1, help="messages in flight per tunnel")
    parser.add_argument("--repeat", type=int, default=5, help="runs per mode and size")
    parser.add_argument("--verbose", action="store_true", help="show every run")
    parser.add_argument("--calls", action="store_true", help="time data_received alone")
    parser.add_argument("--relay", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.calls:
        calls_main(args)
        return
    loop = new_event_loop()
    try:
        if args.relay:
            loop.run_until_complete(relay_main(args.relay, args.upstream, args.conns))
        else:
            loop.run_until_complete(load_main(args))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
