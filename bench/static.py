"""``make bench``'s ``static`` part: wsgate and nginx serving files, one worker each.

Both servers get the same configuration (:func:`server_conf`): ``worker_processes 1``,
``access_log off``, ``sendfile on``, ``root`` on a directory of three files of random bytes
(a small one, 1 MiB and 100 MiB; in a smoke run 1 MiB and 8 MiB), ``keepalive_requests``
high enough that no connection is closed during a window. Pinned as the message figures are:
the server on CPU 0 (``taskset``), the load generator (:mod:`bench.httpload`) on CPU 1.

1. **Throughput and CPU per request**, per file: ``conns`` keep-alive connections, one request
   in flight each; requests and bytes a second over the window, and the server's CPU time
   (master and worker, ``/proc/PID/stat``) divided by the requests completed in the same
   window. The load generator's own CPU utilisation is recorded: near 1.0 it, not the
   server, set the rate (the CPU per request stays a fair comparison either way).
2. **Memory while serving a 1 GiB file to 50 slow clients** (a sparse file: its pages are
   zeros in the page cache, which changes nothing in the server's own memory): each client
   reads 16 KiB every 20 ms through a 16 KiB receive buffer, so each response stays far from
   its end. The worker's ``VmRSS`` (and the server's PSS) is sampled every second; the figure
   is the highest sample against the worker's RSS before the clients came. wsgate is measured
   with ``sendfile on`` (the kernel sends the file) and ``sendfile off`` (``pread`` of one
   chunk at a time into the transport), nginx with ``sendfile on``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bench.proxies import free_port, nginx_binary, version_of, wsgate_binary

__all__ = ["markdown", "run_static"]

PY = sys.executable
SMALL = 1024
FILES = {"small": SMALL, "1m": 2**20, "100m": 100 * 2**20}
SMOKE_FILES = {"small": SMALL, "1m": 2**20, "8m": 8 * 2**20}
#: Connections per file size (one request in flight each).
CONNS = {"small": 50, "1m": 10, "100m": 2, "8m": 2}
BIG = 2**30
SLOW_CLIENTS = 50


class Spawner(Protocol):
    def spawn(self, cmd: list[str], cpus: str, **kw: Any) -> subprocess.Popen[bytes]: ...

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None: ...


def server_conf(root: Path, port: int, sendfile: bool = True) -> str:
    return f"""
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    access_log off;
    sendfile {"on" if sendfile else "off"};
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def make_files(root: Path, sizes: dict[str, int]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    block = os.urandom(2**20)
    for name, size in sizes.items():
        path = root / name
        if path.exists() and path.stat().st_size == size:
            continue
        with open(path, "wb") as fh:
            left = size
            while left:
                fh.write(block[: min(left, len(block))])
                left -= min(left, len(block))
    with open(root / "1g", "wb") as fh:
        fh.truncate(BIG)  # sparse


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            time.sleep(0.05)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Server:
    """One server (wsgate or nginx) with one worker, pinned to ``cpus``."""

    def __init__(
        self,
        procs: Spawner,
        name: str,
        work: Path,
        root: Path,
        cpus: str,
        sendfile: bool,
        conf: Callable[[int], str] | None = None,
    ) -> None:
        """``conf``: the configuration for a listening port (default :func:`server_conf`)."""
        self.procs = procs
        self.port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        (work / "logs").mkdir(exist_ok=True)
        path = work / "nginx.conf"
        path.write_text(conf(self.port) if conf else server_conf(root, self.port, sendfile))
        if name == "nginx":
            binary = nginx_binary()
            assert binary is not None
            cmd = [binary, "-p", str(work), "-c", str(path), "-g", "daemon off; user root;"]
        else:
            cmd = [wsgate_binary(), "-p", str(work), "-c", str(path), "-g", "daemon off;"]
        self.proc = procs.spawn(cmd, cpus, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_port(self.port, self.proc)
        deadline = time.monotonic() + 10
        while not (workers := _children(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not workers:
            raise RuntimeError(f"{name} has no worker")
        self.worker = workers[-1]

    def stop(self) -> None:
        self.procs.stop(self.proc)


def _httpload(procs: Spawner, cpus: str, args: list[str], timeout: float) -> dict[str, Any]:
    proc = procs.spawn(
        [PY, "-m", "bench.httpload", *args], cpus, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        procs.stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"httpload failed: {err.decode(errors='replace')[-500:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def _throughput(
    procs: Spawner,
    server: Server,
    load_cpus: str,
    name: str,
    conns: int,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    args = [
        "throughput",
        "--connect",
        f"127.0.0.1:{server.port}",
        "--path",
        f"/{name}",
        "--conns",
        str(conns),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
        "--watch",
        f"server={server.proc.pid}",
    ]
    r = _httpload(procs, load_cpus, args, warmup + duration + 60)
    cpu = r["cpu"]["server"]["total_s"]
    r["conns"] = conns
    r["cpu_per_request_us"] = round(cpu / r["requests"] * 1e6, 1) if r["requests"] else None
    return r


def _slow(
    procs: Spawner, server: Server, load_cpus: str, duration: float, clients: int
) -> dict[str, Any]:
    before_rss = _rss_kib(server.worker)
    args = [
        "slow",
        "--connect",
        f"127.0.0.1:{server.port}",
        "--path",
        "/1g",
        "--conns",
        str(clients),
        "--duration",
        str(duration),
        "--sample",
        str(max(0.2, duration / 20)),
        "--watch",
        f"worker={server.worker}",
    ]
    r = _httpload(procs, load_cpus, args, duration + 60)
    peak = max((s["worker_rss_kib"] for s in r["samples"]), default=0)
    last = r["samples"][-1]["worker_rss_kib"] if r["samples"] else 0
    r.update(
        worker_rss_before_kib=before_rss,
        worker_rss_peak_kib=peak,
        worker_rss_last_kib=last,
        worker_rss_growth_kib=peak - before_rss,
    )
    return r


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Timing(Protocol):
    """What this part reads of ``bench.run.Settings``."""

    warmup: float
    duration: float
    static_slow: float
    smoke: bool


def run_static(
    procs: Spawner, work: Path, cpus: tuple[str, str], s: Timing, log: Any = print
) -> dict[str, Any]:
    """Both figures for wsgate and (when installed) nginx; ``cpus``: the server's CPUs and
    the load generator's."""
    proxy_cpus, load_cpus = cpus
    warmup, duration, slow_seconds, smoke = s.warmup, s.duration, s.static_slow, s.smoke
    root = work / "root"
    sizes = SMOKE_FILES if smoke else FILES
    make_files(root, sizes)
    servers = ["wsgate"] + (["nginx"] if nginx_binary() else [])
    out: dict[str, Any] = {
        "files": sizes,
        "versions": {n: version_of(n) for n in servers},
        "throughput": {},
        "memory": {},
    }
    clients = 5 if smoke else SLOW_CLIENTS
    for name in servers:
        server = Server(procs, name, work / name, root, proxy_cpus, sendfile=True)
        try:
            out["throughput"][name] = {}
            for fname in sizes:
                log(f"static: {name}, {fname}")
                out["throughput"][name][fname] = _throughput(
                    procs, server, load_cpus, fname, CONNS[fname], warmup, duration
                )
            log(f"static: {name}, 1 GiB to {clients} slow clients")
            out["memory"][name] = _slow(procs, server, load_cpus, slow_seconds, clients)
        finally:
            server.stop()
    server = Server(procs, "wsgate", work / "wsgate-nosf", root, proxy_cpus, sendfile=False)
    try:
        log(f"static: wsgate (sendfile off), 1 GiB to {clients} slow clients")
        out["memory"]["wsgate-sendfile-off"] = _slow(
            procs, server, load_cpus, slow_seconds, clients
        )
    finally:
        server.stop()
    return out


def _label(name: str, size: int) -> str:
    return f"{size // 2**20} MiB" if size >= 2**20 else f"{size} B"


def markdown(st: dict[str, Any]) -> str:
    """The static part of results.md."""
    lines = [
        "## Static files (one worker each, `sendfile on`)\n",
        "| file | server | conns | requests/s | MiB/s | server CPU/request | server CPU "
        "| load CPU | other CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for fname, size in st["files"].items():
        for name, runs in st["throughput"].items():
            r = runs.get(fname)
            if not r:
                continue
            cpu = r["cpu"]
            lines.append(
                f"| {_label(fname, size)} | {name} | {r['conns']} | {r['requests_per_s']:,.0f} "
                f"| {r['mib_per_s']:,.0f} | {r['cpu_per_request_us']} µs "
                f"| {cpu['server']['utilisation']:.2f} | {cpu['loadgen']['utilisation']:.2f} "
                f"| {r['other_cpu']:.2f} |"
            )
    lines += [
        "",
        "Memory while serving a 1 GiB file to slow clients (worker RSS):\n",
        "| server | clients | before | peak | growth | received in all |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in st["memory"].items():
        lines.append(
            f"| {name} | {m['clients']} ({m['ok_heads']} answered) "
            f"| {m['worker_rss_before_kib'] / 1024:.1f} MiB "
            f"| {m['worker_rss_peak_kib'] / 1024:.1f} MiB "
            f"| {m['worker_rss_growth_kib'] / 1024:.1f} MiB | {m['received'] / 2**20:.0f} MiB |"
        )
    lines.append(
        "\nCPU columns: the fraction of one CPU used over the window (server: master and "
        "worker; load: the load generator; other: the rest of the machine, /proc/stat). "
        "A load CPU near 1.00 means the load generator, not the server, set the rate; other "
        "CPU well above 0 means other work shared the machine.\n"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.static``: the ``static`` part of ``bench.run`` on its own."""
    from bench.run import main as run_main

    return run_main(["--parts", "static", *(argv or sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
