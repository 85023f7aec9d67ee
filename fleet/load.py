"""The client host: a few thousand WebSocket clients in one asyncio process, and the probes.

Run inside the client's namespace (``python -m fleet.load``, parameters as JSON on the first
line of stdin). It talks to the runner (:mod:`fleet.run`) in JSON lines: commands on stdin,
events on stdout (``{"ev": "sample", ...}`` every second, the answers to probes, and the
final report).

**The clients.** User ``u<i>`` has :data:`PER_USER` clients, each connecting through the
balancer to ``/ws?user=u<i>&c=<j>`` from one of the host's source addresses. More clients
than the cap, so the cap bites: the extra ones get 503 and try again 3 to 6 s later. An
open client (the 101 received and then the backend's first message, which names the backend
and the node) sends a numbered message every second and checks that the echoes come back
in order. When its tunnel ends (a Close 1001 from a stopping node, 1012 from a drain, 1013
from a node closing a user's tunnels over the cap after Redis came back, no Close at all from
a killed node) it reconnects with a small jittered backoff and first sends again what had not
been echoed (so a message is lost only if it is never echoed by the end). Every close with a
Close frame counts as clean ("clean" below), every other one as abnormal.

**Counting tunnels per user.** All clients of every user are in this process, so the number
of a user's open tunnels is one counter, changed when a tunnel opens or ends: the maximum is
taken at every opening (exact, not sampled) and a snapshot every second. The interval in
which a client counts a tunnel is inside the interval in which the fleet counts it: a node
takes its ``limit_conn`` slot before it asks the backend, so before the 101 reaches the
client, and gives it back when the tunnel has ended on its side, so after the client has
seen the Close (or, for a killed node, never: its slot stays until the shared count forgets
it). A client-side count above the cap therefore means the fleet let that many tunnels of
one user exist at the same moment.

**Probes.** ``probe``: for each key, one connection straight to each node (with a PROXY v2
header made here, as HAProxy would send it) on a location without a limit; the backend's
first message says where the key went. ``realclient``: connections through HAProxy from
each source address, to the locations whose features depend on the client address.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import resource
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

__all__ = ["PER_USER", "proxy_v2_header", "main"]

#: Clients per user (the cap is 5: two of them are always refused or waiting).
PER_USER = 7
#: Seconds between two messages of one client.
INTERVAL = 1.0
#: Backoff after a 503 (the cap): uniform in this range.
BACKOFF_CAP = (3.0, 6.0)
#: Backoff after a tunnel ends (1001, 1012, 1013, or abnormally): uniform in this range. A
#: 1013 "try again later" (a user over the cap after a Redis restart) is no different: the
#: next try gets the cap's 503 and its longer backoff.
BACKOFF_CLOSED = (0.05, 0.5)
#: Backoff after any other failure (refused, 502, timeout), doubled up to the last value.
BACKOFF_ERROR = (0.3, 1.0, 4.0)

_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2_header(src: str, sport: int, dst: str, dport: int) -> bytes:
    """A PROXY protocol v2 header, ``PROXY`` command over TCP/IPv4 (haproxy's
    doc/proxy-protocol.txt, section 2.2): the signature, version 2 and command 1, family
    0x11, 12 bytes of addresses and ports."""
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return _SIG + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


@dataclass(slots=True)
class Params:
    lb: str
    lb_port: int
    sources: list[str]
    users: int
    cap: int
    ramp: float
    node_port: int


@dataclass(slots=True)
class Client:
    cid: int
    user: int
    src: str
    seq: int = 0
    #: Sequence numbers to send again (not echoed on the tunnel before).
    resend: collections.deque[int] = field(default_factory=collections.deque)
    #: Sent on the current tunnel, not yet echoed, in order, with when they were sent.
    pending: collections.deque[tuple[int, float]] = field(default_factory=collections.deque)
    #: Why a message is being sent again: "clean" (its tunnel ended with a Close frame) or
    #: "abnormal" (without one: a killed node), until it is echoed.
    origin: dict[int, str] = field(default_factory=dict)
    ws: ClientConnection | None = None
    node: str = ""
    backend: str = ""
    opened_at: float = 0.0
    tunnels: int = 0


class Fleet:
    """Every client, their counters and the per-second samples."""

    def __init__(self, p: Params) -> None:
        self.p = p
        self.clients = [
            Client(cid, cid // PER_USER, p.sources[cid % len(p.sources)])
            for cid in range(p.users * PER_USER)
        ]
        self.user_open = [0] * p.users
        self.peak = 0  # the largest per-user count since the last sample (at openings)
        self.stopping = False
        #: Tunnels of one user opened after this moment must all be on one backend.
        self.settled_at = 0.0
        self.opens: list[tuple[float, int, str, str, int]] = []  # t, cid, node, backend, nth
        #: t, cid, node, backend, code (1006: no Close), unechoed, seconds open, and the age
        #: of the oldest unechoed message (ms; 0 when none)
        self.closes: list[tuple[float, int, str, str, int, int, float, float]] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.real_ip_mismatch: list[tuple[str, str]] = []
        self.rejects: collections.Counter[str] = collections.Counter()
        #: Round trips (ms) of the messages echoed since the last sample.
        self.rtt: list[float] = []

    # -- one client -----------------------------------------------------------------------------
    async def run_client(self, c: Client) -> None:
        await asyncio.sleep(random.uniform(0, self.p.ramp))
        uri = f"ws://{self.p.lb}:{self.p.lb_port}/ws?user=u{c.user}&c={c.cid % PER_USER}"
        errors = 0
        while not self.stopping:
            try:
                ws = await connect(
                    uri,
                    proxy=None,
                    local_addr=(c.src, 0),
                    open_timeout=10,
                    ping_interval=None,
                    close_timeout=3,
                    compression=None,
                    max_queue=None,
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                self.rejects[str(status)] += 1
                if status == 503:
                    errors = 0
                    await asyncio.sleep(random.uniform(*BACKOFF_CAP))
                else:
                    errors += 1
                    await asyncio.sleep(_error_backoff(errors))
                continue
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                self.rejects[type(exc).__name__] += 1
                errors += 1
                await asyncio.sleep(_error_backoff(errors))
                continue
            errors = 0
            await self._session(c, ws)
            if not self.stopping:
                await asyncio.sleep(random.uniform(*BACKOFF_CLOSED))

    async def _session(self, c: Client, ws: ClientConnection) -> None:
        try:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        except (ConnectionClosed, TimeoutError, ValueError):
            self.rejects["no-hello"] += 1
            await ws.close()
            return
        c.ws, c.node, c.backend = ws, hello["node"], hello["backend"]
        if hello["real_ip"] != c.src:
            self.real_ip_mismatch.append((c.src, hello["real_ip"]))
        now = time.monotonic()
        c.opened_at = now
        self.opens.append((now, c.cid, c.node, c.backend, c.tunnels))
        c.tunnels += 1
        self.user_open[c.user] += 1
        self.peak = max(self.peak, self.user_open[c.user])
        if self.user_open[c.user] > self.p.cap:
            self.counts["over_cap_opens"] += 1
        sender = asyncio.create_task(self._send(c, ws))
        code = 1006
        try:
            async for message in ws:
                self._echo(c, message)
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            self.user_open[c.user] -= 1
            if ws.close_exc is not None and ws.close_exc.rcvd is not None:
                code = ws.close_exc.rcvd.code
            end = time.monotonic()
            unechoed = len(c.pending)
            age = 1000 * (end - c.pending[0][1]) if c.pending else 0.0
            self.closes.append(
                (end, c.cid, c.node, c.backend, code, unechoed, end - c.opened_at, round(age, 1))
            )
            why = "abnormal" if code == 1006 else "clean"
            for seq, _ in c.pending:
                c.resend.append(seq)
                c.origin.setdefault(seq, why)
            c.pending.clear()
            c.ws = None

    async def _send(self, c: Client, ws: ClientConnection) -> None:
        await asyncio.sleep(random.uniform(0, INTERVAL))
        try:
            while True:
                while c.resend:  # first what the last tunnel did not echo (even when stopping)
                    seq = c.resend.popleft()
                    c.pending.append((seq, time.monotonic()))
                    self.counts["resent"] += 1
                    await ws.send(f"{c.cid} {seq}")
                if not self.stopping:
                    c.seq += 1
                    c.pending.append((c.seq, time.monotonic()))
                    self.counts["sent"] += 1
                    await ws.send(f"{c.cid} {c.seq}")
                await asyncio.sleep(INTERVAL)
        except ConnectionClosed:
            # Not sent: it goes with the rest of what was not echoed.
            pass

    def _echo(self, c: Client, message: str | bytes) -> None:
        seq = int(str(message).split()[1])
        if c.pending and c.pending[0][0] == seq:
            self.rtt.append(1000 * (time.monotonic() - c.pending.popleft()[1]))
        elif any(s == seq for s, _ in c.pending):
            # Something before it was skipped: the tunnel lost or reordered a message.
            self.counts["order_errors"] += 1
            while c.pending and c.pending[0][0] != seq:
                c.pending.popleft()
            c.pending.popleft()
        else:
            self.counts["unexpected"] += 1
            return
        self.counts["echoed"] += 1
        why = c.origin.pop(seq, None)
        if why is not None:
            self.counts[f"recovered_{why}"] += 1

    # -- sampling -------------------------------------------------------------------------------
    async def sample_forever(self) -> None:
        last = dict(self.counts)
        last_rej = dict(self.rejects)
        n_opens = n_closes = 0
        while True:
            await asyncio.sleep(1.0 - (time.monotonic() % 1.0))
            now = time.monotonic()
            per_node: collections.Counter[str] = collections.Counter()
            per_backend: collections.Counter[str] = collections.Counter()
            seen: dict[int, set[str]] = {}
            via: dict[int, set[str]] = {}
            for c in self.clients:
                if c.ws is None:
                    continue
                per_node[c.node] += 1
                per_backend[c.backend] += 1
                if c.opened_at >= self.settled_at:
                    seen.setdefault(c.user, set()).add(c.backend)
                    via.setdefault(c.user, set()).add(c.node)
            opens = self.opens[n_opens:]
            closes = self.closes[n_closes:]
            n_opens, n_closes = len(self.opens), len(self.closes)
            counts = dict(self.counts)
            rej = dict(self.rejects)
            rtt, self.rtt = sorted(self.rtt), []
            _emit(
                {
                    "ev": "sample",
                    "t": now,
                    "open": sum(per_node.values()),
                    "per_node": dict(per_node),
                    "per_backend": dict(per_backend),
                    "max_user": max(self.user_open, default=0),
                    "peak_user": self.peak,
                    "over_cap": sum(1 for n in self.user_open if n > self.p.cap),
                    "opens": len(opens),
                    "reconnects": sum(1 for o in opens if o[4] > 0),
                    "closes": len(closes),
                    "users_checked": sum(1 for s in seen.values() if s),
                    "users_split": sum(1 for s in seen.values() if len(s) > 1),
                    # Users whose agreeing tunnels came through more than one node.
                    "users_multi_node": sum(1 for n in via.values() if len(n) > 1),
                    "delta": {k: v - last.get(k, 0) for k, v in counts.items()},
                    "rejects": {k: v - last_rej.get(k, 0) for k, v in rej.items()},
                    "rtt_ms": [_pct(rtt, 0.5), _pct(rtt, 0.99), rtt[-1] if rtt else 0.0],
                }
            )
            last, last_rej = counts, rej
            self.peak = max(self.user_open, default=0)

    # -- the end --------------------------------------------------------------------------------
    async def finish(self, wait: float) -> dict[str, Any]:
        """Stop sending, wait up to ``wait`` s for the echoes, close every tunnel (1000)."""
        self.stopping = True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not any(c.pending or c.resend for c in self.clients if c.ws is not None):
                break
            await asyncio.sleep(0.1)
        # What was never echoed: on a tunnel open at the end (lost), or still waiting in a
        # client that has no tunnel (refused by the cap since: not a loss of the fleet's);
        # by why it was being sent again, if it was.
        never: collections.Counter[str] = collections.Counter()
        for c in self.clients:
            where = "open" if c.ws is not None else "waiting"
            for seq in [s for s, _ in c.pending] + list(c.resend):
                never[f"{where}_{c.origin.get(seq, 'first')}"] += 1
        open_ws = [c.ws for c in self.clients if c.ws is not None]
        if open_ws:
            await asyncio.wait([asyncio.create_task(ws.close()) for ws in open_ws], timeout=10)
        return {
            "ev": "final",
            "counts": dict(self.counts),
            "never_echoed": sum(never.values()),
            "never_echoed_by": dict(never),
            "opens": self.opens,
            "closes": self.closes,
            "rejects": dict(self.rejects),
            "real_ip_mismatch": self.real_ip_mismatch[:20],
            "real_ip_mismatches": len(self.real_ip_mismatch),
            "clients": len(self.clients),
        }

    # -- probes ---------------------------------------------------------------------------------
    async def probe(
        self, keys: list[str], nodes: dict[str, str], path: str, tries: int = 1
    ) -> dict[str, dict[str, list[str]]]:
        """Where each key goes through each node: ``{key: {node: [backend, ...]}}`` (one
        backend per try; ``"!..."`` for a failure)."""
        sem = asyncio.Semaphore(64)
        out: dict[str, dict[str, list[str]]] = {k: {n: [] for n in nodes} for k in keys}
        src = self.p.sources[0]

        async def one(key: str, node: str) -> None:
            async with sem:
                for _ in range(tries):
                    hello = await direct(nodes[node], self.p.node_port, src, f"{path}?user={key}")
                    out[key][node].append(str(hello.get("backend", hello.get("error"))))

        await asyncio.gather(*(one(k, n) for k in keys for n in nodes))
        return out

    async def realclient(self, sources: list[str], tries: int, cap: int) -> dict[str, Any]:
        """Connections through the balancer from each source address, to the locations
        whose features read the client address: ``{location: {source: [hello, ...]}}``,
        and ``/percap``: how many of ``cap + 1`` tunnels held at once from one source."""
        out: dict[str, Any] = {}
        for path in ("/byip", "/iphash", "/deny"):
            per: dict[str, list[dict[str, Any]]] = {}
            for src in sources:
                per[src] = [
                    await via_lb(self.p.lb, self.p.lb_port, src, path) for _ in range(tries)
                ]
            out[path] = per
        held: list[ClientConnection] = []
        statuses: list[int] = []
        src = sources[-1]
        for i in range(cap + 1):
            try:
                ws = await connect(
                    f"ws://{self.p.lb}:{self.p.lb_port}/percap?i={i}",
                    proxy=None,
                    local_addr=(src, 0),
                    open_timeout=5,
                    ping_interval=None,
                    compression=None,
                )
                await asyncio.wait_for(ws.recv(), 5)
                held.append(ws)
                statuses.append(101)
            except InvalidStatus as exc:
                statuses.append(exc.response.status_code)
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed):
                statuses.append(0)
        for ws in held:
            await ws.close()
        out["/percap"] = {"source": src, "statuses": statuses}
        # limit_req by address, no burst: three handshakes in a row from one address (through
        # the balancer, so on different nodes): the first passes, the others are refused.
        src = sources[-2]
        rate = [await via_lb(self.p.lb, self.p.lb_port, src, "/rate") for _ in range(3)]
        out["/rate"] = {
            "source": src,
            "statuses": [h.get("status") for h in rate],
            "nodes": [h.get("node") for h in rate],
        }
        return out


def _pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values`` (0 when empty), in whole tenths."""
    return round(values[int(q * (len(values) - 1))], 1) if values else 0.0


def _error_backoff(errors: int) -> float:
    low, high, top = BACKOFF_ERROR
    return min(top, random.uniform(low, high) * 2.0 ** min(errors - 1, 4))


async def direct(node: str, port: int, src: str, path: str) -> dict[str, Any]:
    """One WebSocket straight to a node, with the PROXY v2 header HAProxy would send for a
    client at ``src``: the backend's first message (or ``{"error": ...}``)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (node, port)), 5)
        await loop.sock_sendall(sock, proxy_v2_header(src, random.randint(1024, 65535), node, port))
        ws = await connect(
            f"ws://{node}:{port}{path}",
            sock=sock,
            proxy=None,
            open_timeout=5,
            ping_interval=None,
            compression=None,
        )
    except InvalidStatus as exc:
        sock.close()
        return {"error": f"!{exc.response.status_code}"}
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        sock.close()
        return {"error": f"!{type(exc).__name__}"}
    try:
        hello: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
        return hello
    except (ConnectionClosed, TimeoutError, ValueError) as exc:
        return {"error": f"!{type(exc).__name__}"}
    finally:
        await ws.close()


async def via_lb(lb: str, port: int, src: str, path: str) -> dict[str, Any]:
    """One WebSocket through the balancer from ``src``: the backend's first message, or
    ``{"status": N}`` when the handshake was refused."""
    try:
        ws = await connect(
            f"ws://{lb}:{port}{path}",
            proxy=None,
            local_addr=(src, 0),
            open_timeout=5,
            ping_interval=None,
            compression=None,
        )
    except InvalidStatus as exc:
        return {"status": exc.response.status_code}
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        return {"status": 0, "error": type(exc).__name__}
    try:
        hello: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
        hello["status"] = 101
        return hello
    except (ConnectionClosed, TimeoutError, ValueError) as exc:
        return {"status": 101, "error": type(exc).__name__}
    finally:
        await ws.close()


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _commands(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[dict[str, Any]]) -> None:
    """Read stdin in a thread; each JSON line goes to ``queue`` (EOF: a ``stop``)."""
    for line in sys.stdin:
        if line.strip():
            loop.call_soon_threadsafe(queue.put_nowait, json.loads(line))
    loop.call_soon_threadsafe(queue.put_nowait, {"cmd": "stop", "wait": 0})


async def _main(p: Params) -> None:
    fleet = Fleet(p)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    threading.Thread(target=_commands, args=(loop, queue), daemon=True).start()
    tasks = [asyncio.create_task(fleet.run_client(c)) for c in fleet.clients]
    sampler = asyncio.create_task(fleet.sample_forever())
    _emit({"ev": "ready", "clients": len(fleet.clients)})
    background: set[asyncio.Task[None]] = set()
    while True:
        cmd = await queue.get()
        what = cmd["cmd"]
        if what == "stop":
            sampler.cancel()
            final = await fleet.finish(float(cmd.get("wait", 5)))
            for t in tasks:
                t.cancel()
            _emit(final)
            return
        if what == "settled":
            # From now on a user's new tunnels must agree (off: a DNS change under way).
            fleet.settled_at = time.monotonic() if cmd.get("on", True) else float("inf")
        elif what in ("probe", "realclient"):
            task = asyncio.create_task(_answer(fleet, cmd))
            background.add(task)
            task.add_done_callback(background.discard)


async def _answer(fleet: Fleet, cmd: dict[str, Any]) -> None:
    start = time.monotonic()
    result: Any
    if cmd["cmd"] == "probe":
        result = await fleet.probe(cmd["keys"], cmd["nodes"], cmd["path"], cmd.get("tries", 1))
    else:
        result = await fleet.realclient(cmd["sources"], cmd["tries"], cmd["cap"])
    _emit({"ev": "answer", "id": cmd["id"], "t0": start, "t1": time.monotonic(), "result": result})


def _raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (max(want, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return
        except (ValueError, OSError):
            continue


def main() -> None:
    params = json.loads(sys.stdin.readline())
    p = Params(**params)
    _raise_nofile(4 * p.users * PER_USER + 1024)
    uvloop.run(_main(p))


if __name__ == "__main__":
    main()
