"""A drain of one of three servers under open tunnels: the reconnect rate the other servers see.

Not a test: a measurement for docs/benchmark.md ("Draining one of three servers").

Three ``websockets`` echo servers (a child process) behind wsgate (``least_conn``; one
worker by default); ``--tunnels`` clients (this process, ``websockets``) connect and each
sends a numbered message every ``--interval`` seconds and waits for its echo.  Once all are
open, the script drains the first server through ``upstream_control``
(``websocket_drain_time --window``).  A client whose tunnel gets the Close 1012 reconnects
at once; a message it sent whose echo had not come back is sent again on the new tunnel
(what a client with an application-level acknowledgement does).  The servers record the
moment of every new connection; the script prints the histogram of new connections per
second on the two remaining servers, and the message accounting: every message echoed once
at least, none lost.

    .venv/bin/python -m bench.drain [--tunnels 3000] [--window 30] [--interval 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


# -- the servers (a child process) -----------------------------------------------------------------
def _servers(ready: Any, done: Any, results: Any) -> None:
    async def main() -> None:
        accepted: dict[str, list[float]] = {"s0": [], "s1": [], "s2": [], "closed0": []}

        def handler_for(name: str) -> Any:
            async def handler(ws: ServerConnection) -> None:
                accepted[name].append(time.time())
                try:
                    async for msg in ws:
                        await ws.send(msg)
                except ConnectionClosed:
                    pass
                if name == "s0":
                    accepted["closed0"].append(time.time())  # wsgate's Close reached s0

            return handler

        # No keepalive pings of the library's own: only the measured traffic.
        servers = [
            await serve(handler_for(n), "127.0.0.1", 0, ping_interval=None)
            for n in ("s0", "s1", "s2")
        ]
        ready.send([s.sockets[0].getsockname()[1] for s in servers])
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, done.recv)
        results.send(accepted)
        for s in servers:
            s.close()

    asyncio.run(main())


# -- the clients -----------------------------------------------------------------------------------
@dataclass
class Client:
    port: int
    cid: int
    interval: float
    seq: int = 0
    echoed: set[int] = field(default_factory=set)
    resent: int = 0
    closes: list[int | None] = field(default_factory=list)
    closed_at: list[float] = field(default_factory=list)
    ws: ClientConnection | None = None

    async def open(self) -> None:
        self.ws = await connect(
            f"ws://127.0.0.1:{self.port}/c{self.cid}", open_timeout=60, ping_interval=None
        )

    async def run(self, stop: asyncio.Event) -> None:
        pending: int | None = None
        while not stop.is_set():
            assert self.ws is not None
            try:
                if pending is None:
                    self.seq += 1
                    pending = self.seq
                await self.ws.send(f"{self.cid}#{pending}")
                reply = await self.ws.recv()
                assert reply == f"{self.cid}#{pending}", (reply, pending)
                self.echoed.add(pending)
                pending = None
                try:
                    # Waiting in recv (nothing comes unasked) so that a Close is seen at once.
                    extra = await asyncio.wait_for(self.ws.recv(), self.interval)
                    raise AssertionError(f"unexpected message {extra!r}")
                except TimeoutError:
                    pass
            except ConnectionClosed as exc:
                self.closes.append(exc.rcvd.code if exc.rcvd is not None else None)
                self.closed_at.append(time.time())
                if pending is not None:
                    self.resent += 1  # sent again on the new tunnel
                if stop.is_set():
                    return
                await self.open()
        if self.ws is not None:
            await self.ws.close()


def _start_wsgate(prefix: Path, ports: list[int], window: float, workers: int) -> Any:
    servers = " ".join(f"server 127.0.0.1:{p};" for p in ports)
    (prefix / "logs").mkdir(parents=True)
    (prefix / "nginx.conf").write_text(
        f"""
worker_processes {workers};
worker_rlimit_nofile 16384;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  websocket_drain_time {window:g}s;
  upstream u {{ least_conn; {servers} }}
  server {{ listen 127.0.0.1:0 backlog=4096;
    location = /upstreams {{ upstream_control; allow 127.0.0.1; deny all; }}
    location / {{ proxy_pass http://u; proxy_http_version 1.1;
                 proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade;
                 proxy_read_timeout 1h; }} }}
}}
"""
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wsgate.cli",
            "-p",
            str(prefix),
            "-c",
            "nginx.conf",
            "-g",
            "daemon off; error_log logs/error.log notice;",
        ],
        stdin=subprocess.DEVNULL,
    )
    log = prefix / "logs" / "error.log"
    deadline = time.monotonic() + 30
    while True:
        text = log.read_text() if log.exists() else ""
        m = LISTENING.search(text)
        if m is not None and (prefix / "logs" / "nginx.pid").exists():
            return proc, int(m.group(1)), log
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"wsgate did not start:\n{text}")
        time.sleep(0.05)


async def _post(port: int, query: str) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /upstreams?{query} HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    result: dict[str, Any] = json.loads(body)
    return result


async def _scenario(args: argparse.Namespace, port: int, ports: list[int]) -> dict[str, Any]:
    clients = [Client(port, i, args.interval) for i in range(args.tunnels)]
    gc.freeze()  # thousands of long-lived objects: no full collections scanning them
    for start in range(0, len(clients), 200):
        await asyncio.gather(*(c.open() for c in clients[start : start + 200]))
    stop = asyncio.Event()
    runs = [asyncio.create_task(c.run(stop)) for c in clients]
    await asyncio.sleep(args.interval + 1)  # every client has exchanged a message
    before = await _post(port, "upstream=u")
    t0 = time.time()
    await _post(port, f"action=drain&upstream=u&server=127.0.0.1:{ports[0]}")
    await asyncio.sleep(args.window + args.settle)
    after = await _post(port, "upstream=u")
    stop.set()
    await asyncio.gather(*runs)
    sent = sum(c.seq for c in clients)
    echoed = sum(len(c.echoed) for c in clients)
    lost = sum(c.seq - len(c.echoed) for c in clients)
    codes: dict[str, int] = {}
    for c in clients:
        for code in c.closes:
            codes[str(code)] = codes.get(str(code), 0) + 1
    return {
        "t0": t0,
        "client_closes": [t for c in clients for t in c.closed_at],
        "before": {s["server"]: s["tunnels"] for s in before["upstreams"]["u"]["servers"]},
        "after": {s["server"]: s["tunnels"] for s in after["upstreams"]["u"]["servers"]},
        "sent": sent,
        "echoed": echoed,
        "lost": lost,
        "resent": sum(c.resent for c in clients),
        "reconnected": sum(1 for c in clients if c.closes),
        "close_codes": codes,
    }


def histogram(times: list[float], t0: float, seconds: int) -> list[int]:
    counts = [0] * seconds
    for t in times:
        i = int(t - t0)
        if 0 <= i < seconds:
            counts[i] += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunnels", type=int, default=3000)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between messages")
    ap.add_argument("--settle", type=float, default=8.0, help="seconds after the window")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default="bench/results/drain.json")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = mp.get_context("fork")
    ready_r, ready_w = ctx.Pipe(False)
    done_r, done_w = ctx.Pipe(False)
    res_r, res_w = ctx.Pipe(False)
    child = ctx.Process(target=_servers, args=(ready_w, done_r, res_w))
    child.start()
    ports: list[int] = ready_r.recv()
    prefix = Path(tempfile.mkdtemp(prefix="wsgate-drain-"))
    proc, port, log = _start_wsgate(prefix, ports, args.window, args.workers)
    try:
        result = asyncio.run(_scenario(args, port, ports))
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        done_w.send(True)
        accepted: dict[str, list[float]] = res_r.recv()
        child.join(10)
    t0 = result.pop("t0")
    seconds = int(args.window + args.settle)
    result["reconnects_per_second"] = {
        name: histogram(accepted[name], t0, seconds) for name in ("s1", "s2")
    }
    # When the drained server saw each Close, and when each client got its 1012.
    result["closes_at_drained_server"] = histogram(accepted["closed0"], t0, seconds)
    result["closes_at_clients"] = histogram(result.pop("client_closes"), t0, seconds)
    result["args"] = vars(args)
    result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    alerts = [line for line in log.read_text().splitlines() if "[alert]" in line]
    result["alerts"] = len(alerts)
    shutil.rmtree(prefix, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    both = [a + b for a, b in zip(*result["reconnects_per_second"].values(), strict=True)]
    peak = max(both) or 1
    print(f"drained 1 of 3 servers holding {args.tunnels} tunnels over {args.window:g} s")
    print(f"tunnels before: {result['before']}\ntunnels after:  {result['after']}")
    print("second | 1012 at s0 | 1012 at clients | new connections on the two other servers")
    rows = zip(result["closes_at_drained_server"], result["closes_at_clients"], both, strict=True)
    for i, (c0, cc, n) in enumerate(rows):
        print(f"{i:6d} | {c0:10d} | {cc:15d} | {n:4d} {'#' * round(40 * n / peak)}")
    window = int(args.window)
    for name, series in (
        ("1012 at s0", result["closes_at_drained_server"]),
        ("1012 at clients", result["closes_at_clients"]),
        ("reconnects", both),
    ):
        inside = series[:window]
        print(
            f"{name}: {sum(series)} in all, {sum(inside)} in the window; per second in the "
            f"window mean {sum(inside) / window:.1f}, max {max(inside)}, "
            f"seconds with none {inside.count(0)}"
        )
    keys = ("sent", "echoed", "lost", "resent", "reconnected", "close_codes", "alerts", "loadavg")
    print({k: result[k] for k in keys})
    os.sync()


if __name__ == "__main__":
    main()
