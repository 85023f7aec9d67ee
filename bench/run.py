"""``make bench``: wsgate, nginx and HAProxy measured side by side in one run, on loopback.

What runs where (2 cores: CPU 0 and CPU 1):

* 1-worker figures: the proxy under test is pinned to CPU 0 (``taskset -c 0``), the load
  generator (:mod:`bench.loadgen`) and the echo backend (:mod:`bench.backend`) to CPU 1;
* "one worker per core": the proxy gets one worker per CPU, pinned to all of them, and the
  load generator and backend share those CPUs with it (there are no others);
* "direct" rows run the same load with no proxy (load generator to backend, both on CPU 1).
  They show how fast the load side alone is, which is the first part of the bottleneck check.
  The second part is every run's CPU utilisation: the proxy's and the load side's.

Figures (each for all three proxies, and as a ratio to nginx; see :mod:`bench.report`):

1. proxy CPU time per relayed message (a message through the proxy in one direction, so an
   echo is two) for 64 B, 4 KiB and 64 KiB messages over 100 connections, each connection
   keeping one message in flight: every read in the proxy holds one message (or part of one);
2. relayed messages per second at saturation (64 B, 100 connections × ``--window`` messages
   in flight), with 1 worker and with one worker per core;
3. proxy CPU time per WebSocket handshake (connect, upgrade, one message, close) and
   handshakes per second, ``--hs-concurrency`` sessions at a time;
4. proxy memory (PSS) per idle WebSocket connection at ``--idle`` open connections;
5. added latency: round-trip percentiles of a paced ping-pong (``--lat-rate`` round trips a
   second) through the proxy, minus the same without a proxy;
6. wsgate holding ``--hold`` connections at once: its total memory, and one echo on each;
7. static files (``--parts static``, :mod:`bench.static`): throughput and CPU per request of
   wsgate and nginx serving a small, a 1 MiB and a 100 MiB file, and the worker's memory
   while it serves a 1 GiB file to 50 slow clients;
8. HTTP/2 (``--parts h2``, :mod:`bench.http2`): requests/s and CPU per request of wsgate and
   nginx under ``h2load`` (a small file and a proxied request), and wsgate's CPU per relayed
   WebSocket message over RFC 8441 streams against HTTP/1.1;
9. what the WebSocket features cost (``--parts features``, :mod:`bench.feature_ab`): CPU per
   relayed message with keepalive pings, the message limits and both on against none, in
   paired slices that cancel the machine's drift;
10. system calls per handshake and per relayed message of each proxy's worker
    (``--parts syscalls``, :mod:`bench.syscalls`, ``strace -c``).

wsgate runs twice in every figure: as installed (its compiled frame scanner and tunnel sides)
and as ``wsgate-pure`` (``WSGATE_PURE=1``, the pure-Python fallback a machine without a
compiler gets).

CPU time comes from the proxy processes' own accounting (:mod:`bench.procstat`), sampled by
the load generator at the start and end of its counting window. Before measuring, each proxy
is checked with a real WebSocket client (the ``websockets`` library, random mask keys): every
message size must come back byte for byte.

Writes ``results.json``, ``results.md`` and ``chart.png`` (if matplotlib is installed) into
``--out`` (default ``bench/results``). ``--smoke`` runs everything with tiny counts in seconds.
Every count and duration is a flag, with an environment variable as its default
(``BENCH_DURATION``, ``BENCH_IDLE``, ...; see ``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import platform
import random
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import report
from bench.procstat import memory_kib, system_busy
from bench.proxies import (
    PROXIES,
    REPO,
    WS_FEATURES,
    WSGATE_EXTRA,
    Proxy,
    Running,
    haproxy_binary,
    nginx_binary,
    version_of,
)

__all__ = ["Settings", "main", "run"]

PY = sys.executable
#: Connections one process may hold, leaving room for its other descriptors.
_FD_MARGIN = 200
#: Handshakes in flight at once while opening idle connections, in all client processes:
#: below the proxies' listen backlogs, so that no SYN is dropped and no client waits for a
#: SYN retransmission (that would measure the accept queue, not memory). nginx and HAProxy
#: listen with a backlog of 511 (HAProxy: its maxconn); wsgate's master does too, but its
#: workers' ``create_server(sock=...)`` listen again with asyncio's default of 100.
IDLE_PARALLEL = 64
#: Idle figures: connections per proxy worker opened and closed before the baseline is read.
WARMUP_PER_WORKER = 100
#: Runs of one load at most when other work disturbs them (1 in a smoke run: no retries).
ATTEMPTS = 3


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.replace(" ", "").split(",") if x)


@dataclass
class Settings:
    """Every parameter of a run (written into results.json)."""

    proxies: tuple[str, ...] = PROXIES
    duration: float = 4.0
    warmup: float = 1.0
    conns: int = 100
    sizes: tuple[int, ...] = (64, 4096, 65536)
    window: int = 16
    hs_concurrency: int = 32
    lat_conns: int = 50
    lat_rate: float = 1000.0
    lat_duration: float = 5.0
    idle: tuple[int, ...] = (10000, 50000)
    hold: int = 100000
    hold_seconds: float = 10.0
    backend: str = "raw"
    profile_duration: float = 5.0
    #: Which figures to run (a subset of PARTS); the others are left out of the results.
    parts: tuple[str, ...] = (
        "relay",
        "saturation",
        "handshake",
        "latency",
        "idle",
        "hold",
        "profile",
        "static",
        "h2",
        "features",
        "syscalls",
    )
    #: features (bench/feature_ab.py): rounds of paired slices, and the slice's seconds.
    feature_rounds: int = 40
    feature_slice: float = 1.0
    #: syscalls (bench/syscalls.py): handshake sessions and echoes counted under strace.
    syscall_handshakes: int = 200
    syscall_messages: int = 1000
    #: h2 (bench/http2.py): h2load's connections and concurrent streams per connection, and
    #: how many times each HTTP/2 figure is measured (the least CPU is kept).
    h2_clients: int = 10
    h2_streams: int = 10
    h2_sets: int = 3
    #: static: seconds the slow clients read the 1 GiB file while memory is sampled.
    static_slow: float = 20.0
    smoke: bool = False
    out: Path = field(default_factory=lambda: REPO / "bench" / "results")

    @classmethod
    def smoke_settings(cls, **overrides: Any) -> Settings:
        base = cls(
            duration=0.3,
            warmup=0.1,
            conns=10,
            window=4,
            hs_concurrency=4,
            lat_conns=5,
            lat_rate=200.0,
            lat_duration=0.3,
            idle=(50, 150),
            hold=200,
            hold_seconds=0.2,
            parts=tuple(p for p in cls.parts if p != "profile"),
            feature_rounds=2,
            feature_slice=0.2,
            syscall_handshakes=5,
            syscall_messages=10,
            static_slow=1.0,
            h2_sets=1,
            smoke=True,
        )
        for k, v in overrides.items():
            setattr(base, k, v)
        return base


# --- processes -----------------------------------------------------------------------------


class Processes:
    """Every helper process this run started, so that all of them are stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.proxies: list[Running] = []

    def spawn(self, cmd: list[str], cpus: str, **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["taskset", "-c", cpus, *cmd],
            cwd=REPO,
            stdin=kw.pop("stdin", subprocess.DEVNULL),
            bufsize=0,  # unbuffered: select() in _readline sees every line
            **kw,
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def start_proxy(self, proxy: Proxy) -> Running:
        running = proxy.start()
        self.proxies.append(running)
        return running

    def stop_proxy(self, running: Running) -> None:
        running.stop()
        if running in self.proxies:
            self.proxies.remove(running)

    def stop_all(self) -> None:
        for running in list(self.proxies):
            self.stop_proxy(running)
        for proc in list(self.procs):
            self.stop(proc)


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of ``proc``'s stdout, or an error after ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"no output from {proc.args!r} in {timeout:.0f} s")
    line = proc.stdout.readline().decode()
    if not line:
        raise RuntimeError(f"{proc.args!r} exited with {proc.wait()}")
    return line.strip()


class Backends:
    """``count`` echo backend processes, one listening port each."""

    def __init__(self, procs: Processes, count: int, cpus: str, impl: str = "raw") -> None:
        self.procs = procs
        self.list: list[subprocess.Popen[bytes]] = []
        self.addrs: list[tuple[str, int]] = []
        for _ in range(count):
            p = procs.spawn(
                [PY, "-m", "bench.backend", "--impl", impl], cpus, stdout=subprocess.PIPE
            )
            self.list.append(p)
        for p in self.list:
            while (line := _readline(p, 20)) != "READY":
                host, _, port = line.removeprefix("Listening on ").rpartition(":")
                self.addrs.append((host, int(port)))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.list]

    def stop(self) -> None:
        for p in self.list:
            self.procs.stop(p)


def loadgen(
    mode: str,
    connect: tuple[str, int],
    cpus: str,
    args: list[str],
    watch: dict[str, list[int]],
    timeout: float = 120.0,
    attempts: int | None = None,
) -> dict[str, Any]:
    """Run :mod:`bench.loadgen` and return its JSON result. A run during which other work
    used more than :data:`bench.report.DISTURBED` CPUs is repeated (``attempts`` runs at
    most, by default :data:`ATTEMPTS`), and the least disturbed one is kept."""
    attempts = attempts or ATTEMPTS
    best: dict[str, Any] | None = None
    for attempt in range(1, attempts + 1):
        result = _loadgen_once(mode, connect, cpus, args, watch, timeout)
        result["attempts"] = attempt
        if best is None or result.get("other_cpu", 0.0) < best.get("other_cpu", 0.0):
            best = result
        if best.get("other_cpu", 0.0) <= report.DISTURBED or attempt == attempts:
            break
        _log(f"other work used {result.get('other_cpu')} CPUs during that run: again")
        time.sleep(2.0)
    assert best is not None
    return best


def _loadgen_once(
    mode: str,
    connect: tuple[str, int],
    cpus: str,
    args: list[str],
    watch: dict[str, list[int]],
    timeout: float,
) -> dict[str, Any]:
    cmd = ["taskset", "-c", cpus, PY, "-m", "bench.loadgen", mode]
    cmd += ["--connect", f"{connect[0]}:{connect[1]}", *args]
    for name, pids in watch.items():
        cmd += ["--watch", f"{name}={','.join(map(str, pids))}"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"loadgen {mode} failed ({out.returncode}): {out.stderr[-1500:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


class IdleClients:
    """Several ``loadgen idle`` processes, driven together over their stdin."""

    def __init__(
        self, procs: Processes, count: int, connect: tuple[str, int], cpus: str, parallel: int
    ) -> None:
        self.procs = procs
        self.list = [
            procs.spawn(
                [PY, "-m", "bench.loadgen", "idle", "--connect", f"{connect[0]}:{connect[1]}"]
                + ["--concurrency", str(max(1, parallel // count))],
                cpus,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            for _ in range(count)
        ]
        for p in self.list:
            json.loads(_readline(p, 20))

    def _all(self, command: str, timeout: float) -> list[dict[str, Any]]:
        for p in self.list:
            assert p.stdin is not None
            p.stdin.write(command.encode() + b"\n")
            p.stdin.flush()
        return [json.loads(_readline(p, timeout)) for p in self.list]

    def open(self, total: int, timeout: float = 600.0) -> dict[str, Any]:
        """Open connections until ``total`` are open in all (split evenly)."""
        share = math.ceil(total / len(self.list))
        t0 = time.perf_counter()
        parts = self._all(f"OPEN {share}", timeout)
        errors: dict[str, int] = {}
        for part in parts:
            for reason, n in part.get("errors", {}).items():
                errors[reason] = errors.get(reason, 0) + n
        return {
            "open": sum(p["open"] for p in parts),
            "failed": sum(p["failed"] for p in parts),
            "errors": errors,
            "lost": sum(p["lost"] for p in parts),
            "seconds": round(time.perf_counter() - t0, 2),
        }

    def close(self) -> int:
        """Close every open connection and wait for the proxy to close them too."""
        return sum(p["closed"] for p in self._all("CLOSE", 60))

    def echo(self) -> dict[str, Any]:
        parts = self._all("ECHO", 120)
        return {"echoed": sum(p["echoed"] for p in parts), "lost": sum(p["lost"] for p in parts)}

    def stop(self) -> None:
        for p in self.list:
            with contextlib.suppress(OSError):
                assert p.stdin is not None
                p.stdin.write(b"QUIT\n")
                p.stdin.flush()
        for p in self.list:
            self.procs.stop(p, timeout=30)


# --- the steps -----------------------------------------------------------------------------


def check_proxy(port: int) -> str:
    """A real WebSocket client through the proxy: text, binary of every size, ping, close.
    Returns "ok" or what went wrong."""
    from websockets.sync.client import connect

    try:
        with connect(f"ws://127.0.0.1:{port}/", max_size=None, open_timeout=10) as ws:
            ws.send("hello")
            if ws.recv(timeout=10) != "hello":
                return "text message not echoed"
            for size in (64, 4096, 65536, 200000):
                data = random.randbytes(size)
                ws.send(data)
                if ws.recv(timeout=10) != data:
                    return f"{size}-byte message not echoed byte for byte"
            ws.ping(b"p").wait(10)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - any failure is reported, not raised
        return f"{type(exc).__name__}: {exc}"


def _throughput_args(s: Settings, size: int, window: int) -> list[str]:
    return [
        "--conns",
        str(s.conns),
        "--size",
        str(size),
        "--window",
        str(window),
        "--warmup",
        str(s.warmup),
        "--duration",
        str(s.duration),
    ]


def _handshake_args(s: Settings) -> list[str]:
    return [
        "--concurrency",
        str(s.hs_concurrency),
        "--warmup",
        str(s.warmup),
        "--duration",
        str(s.duration),
    ]


def _latency_args(s: Settings) -> list[str]:
    return [
        "--conns",
        str(s.lat_conns),
        "--rate",
        str(s.lat_rate),
        "--warmup",
        str(s.warmup),
        "--duration",
        str(s.lat_duration),
    ]


def _cpus() -> tuple[str, str, str, int]:
    """(proxy CPUs for 1 worker, load CPUs then, all CPUs, number of CPUs)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        c = str(cpus[0])
        return c, c, c, 1
    return str(cpus[0]), ",".join(map(str, cpus[1:])), ",".join(map(str, cpus)), len(cpus)


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def direct_runs(s: Settings, procs: Processes, load_cpus: str) -> dict[str, Any]:
    """The load side alone: load generator → backend, no proxy, all on the load CPUs."""
    backend = Backends(procs, 1, load_cpus, s.backend)
    addr = backend.addrs[0]
    watch = {"backend": backend.pids}
    out: dict[str, Any] = {"throughput": {}}
    try:
        for size in s.sizes if "relay" in s.parts else ():
            _log(f"direct: {size} B ping-pong")
            out["throughput"][str(size)] = loadgen(
                "throughput", addr, load_cpus, _throughput_args(s, size, 1), watch
            )
        if "saturation" in s.parts:
            _log("direct: 64 B pipelined")
            out["saturation"] = loadgen(
                "throughput", addr, load_cpus, _throughput_args(s, 64, s.window), watch
            )
        if "handshake" in s.parts:
            _log("direct: handshakes")
            out["handshake"] = loadgen("handshake", addr, load_cpus, _handshake_args(s), watch)
        if "latency" in s.parts:
            _log("direct: latency")
            out["latency"] = loadgen("latency", addr, load_cpus, _latency_args(s), watch)
    finally:
        backend.stop()
    return out


def _step(out: dict[str, Any], key: str, fn: Callable[[], dict[str, Any]]) -> Any:
    """Run one measurement; a failure is recorded under ``errors`` (and shown in results.md)
    instead of ending the whole benchmark."""
    try:
        return fn()
    except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
        _log(f"{key} failed: {exc}")
        out.setdefault("errors", {})[key] = str(exc)[-600:]
        return None


def proxy_runs(s: Settings, procs: Processes, name: str, workdir: Path) -> dict[str, Any]:
    """Every figure but idle memory for one proxy."""
    proxy_cpus, load_cpus, all_cpus, ncpu = _cpus()
    out: dict[str, Any] = {"version": version_of(name), "throughput": {}}
    backend = Backends(procs, 1, load_cpus, s.backend)
    try:
        proxy = procs.start_proxy(Proxy(name, 1, proxy_cpus, backend.addrs, workdir / "w1"))
        addr = ("127.0.0.1", proxy.port)
        watch = {"proxy": proxy.roots, "backend": backend.pids}
        try:
            out["check"] = check_proxy(proxy.port)
            if out["check"] != "ok":
                _log(f"{name}: check failed: {out['check']}")
                return out
            for size in s.sizes if "relay" in s.parts else ():
                _log(f"{name}: {size} B ping-pong, 1 worker")
                out["throughput"][str(size)] = loadgen(
                    "throughput", addr, load_cpus, _throughput_args(s, size, 1), watch
                )
            if "saturation" in s.parts:
                _log(f"{name}: 64 B pipelined, 1 worker")
                out["saturation_1"] = loadgen(
                    "throughput", addr, load_cpus, _throughput_args(s, 64, s.window), watch
                )
            if "handshake" in s.parts:
                _log(f"{name}: handshakes")
                out["handshake"] = loadgen("handshake", addr, load_cpus, _handshake_args(s), watch)
            if "latency" in s.parts:
                _log(f"{name}: latency")
                out["latency"] = loadgen("latency", addr, load_cpus, _latency_args(s), watch)
        finally:
            procs.stop_proxy(proxy)
        if ncpu > 1 and "saturation" in s.parts:
            proxy = procs.start_proxy(
                Proxy(name, ncpu, all_cpus, backend.addrs, workdir / f"w{ncpu}")
            )
            try:
                _log(f"{name}: 64 B pipelined, {ncpu} workers (cores shared with the load)")
                watch = {"proxy": proxy.roots, "backend": backend.pids}
                port = proxy.port
                out["saturation_n"] = _step(
                    out,
                    f"saturation, {ncpu} workers",
                    lambda: loadgen(
                        "throughput",
                        ("127.0.0.1", port),
                        all_cpus,
                        _throughput_args(s, 64, s.window),
                        watch,
                    ),
                )
                if out["saturation_n"]:
                    out["saturation_n"]["workers"] = ncpu
            finally:
                procs.stop_proxy(proxy)
    finally:
        backend.stop()
    return out


def _fd_cap() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1] - _FD_MARGIN


def idle_plan(peak: int, headroom: float = 1.25) -> dict[str, int]:
    """How many proxy workers, backends and client processes hold ``peak`` tunnels when one
    process may hold :func:`_fd_cap` descriptors (a tunnel takes two in the proxy)."""
    cap = _fd_cap()
    return {
        "fd_limit": cap + _FD_MARGIN,
        "workers": max(1, math.ceil(2 * peak * headroom / cap)),
        "backends": max(1, math.ceil(peak * 1.2 / cap)),
        "clients": max(1, math.ceil(peak * 1.05 / cap)),
        "worker_connections": cap,
    }


def idle_runs(
    s: Settings,
    procs: Processes,
    name: str,
    workdir: Path,
    stages: tuple[int, ...],
    hold_seconds: float = 0.0,
    headroom: float = 1.25,
) -> dict[str, Any]:
    """Open ``stages`` idle tunnels in turn and read the proxy's PSS at each."""
    proxy_cpus, load_cpus, _, _ = _cpus()
    plan = idle_plan(max(stages), headroom)
    out: dict[str, Any] = {"plan": plan, "stages": []}
    backends = Backends(procs, plan["backends"], load_cpus, "raw")
    proxy = procs.start_proxy(
        Proxy(
            name,
            plan["workers"],
            proxy_cpus,
            backends.addrs,
            workdir,
            spread=True,
            worker_connections=plan["worker_connections"],
        )
    )
    clients: IdleClients | None = None
    try:
        clients = IdleClients(
            procs, plan["clients"], ("127.0.0.1", proxy.port), load_cpus, IDLE_PARALLEL
        )
        time.sleep(0.5)
        out["cold_pss_kib"] = memory_kib(proxy.roots, "Pss")
        # Warm-up, the same for every proxy: open and close WARMUP_PER_WORKER connections
        # per worker, so that what a worker allocates once, on its first connections
        # (lazily built state and, for wsgate, the pages of the master's heap it copies on
        # write once it runs the request code), is in the baseline, not in the figure.
        warm = clients.open(WARMUP_PER_WORKER * plan["workers"])
        clients.close()
        time.sleep(0.5)
        out["warmup"] = warm["open"]
        out["base_pss_kib"] = memory_kib(proxy.roots, "Pss")
        out["base_rss_kib"] = memory_kib(proxy.roots, "Rss")
        for n in stages:
            _log(f"{name}: opening {n} idle WebSocket connections")
            opened = clients.open(n)
            time.sleep(1.0)
            pss = memory_kib(proxy.roots, "Pss")
            rss = memory_kib(proxy.roots, "Rss")
            stage = {
                "target": n,
                **opened,
                "pss_kib": pss,
                "rss_kib": rss,
                "pss_per_conn_kib": round((pss - out["base_pss_kib"]) / max(1, opened["open"]), 3),
                "cold_pss_per_conn_kib": round(
                    (pss - out["cold_pss_kib"]) / max(1, opened["open"]), 3
                ),
            }
            out["stages"].append(stage)
            _log(
                f"{name}: {opened['open']} open ({opened['failed']} failed "
                f"{opened['errors'] or ''}) in {opened['seconds']} s, PSS {pss / 1024:.0f} MiB"
            )
            if opened["open"] < n:
                break
        if hold_seconds:
            time.sleep(hold_seconds)
            out["pss_after_hold_kib"] = memory_kib(proxy.roots, "Pss")
        out["echo"] = clients.echo()
    finally:
        # The proxy first (fast stop), so that clients and backends see their peers close.
        procs.stop_proxy(proxy)
        if clients is not None:
            clients.stop()
        backends.stop()
    return out


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        kib = int(f.readline().split()[1])  # MemTotal: N kB
        mem = f"{kib / 2**20:.0f} GiB"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "src"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": importlib.metadata.version("uvloop"),
        "wsgate": version_of("wsgate"),
        "nginx": version_of("nginx"),
        "haproxy": version_of("haproxy"),
        "nofile_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "commit": commit + ("+changes in src/" if dirty else ""),
    }


def available(names: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
    """The proxies that are installed, and why the others are skipped."""
    skipped: dict[str, str] = {}
    found = []
    for name in names:
        if name == "nginx" and nginx_binary() is None:
            skipped[name] = "nginx is not installed (make bench installs it as root)"
        elif name == "haproxy" and haproxy_binary() is None:
            skipped[name] = "haproxy is not installed (make bench installs it as root)"
        else:
            found.append(name)
    return tuple(found), skipped


@contextlib.contextmanager
def _workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wsgate-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def _busy_elsewhere(seconds: float = 1.0) -> float:
    """CPUs kept busy by other work over ``seconds`` before the run starts."""
    before = system_busy()
    time.sleep(seconds)
    return round((system_busy() - before) / seconds, 2)


def wait_quiet(limit: float) -> float:
    """Wait up to ``limit`` seconds for the machine to be idle (other work below 0.1 CPU);
    returns the busy CPUs last seen."""
    deadline = time.monotonic() + limit
    busy = _busy_elsewhere()
    while busy > 0.1 and time.monotonic() < deadline:
        _log(f"{busy:.2f} CPUs busy with other work: waiting for a quiet machine")
        time.sleep(4.0)
        busy = _busy_elsewhere()
    return busy


def run(s: Settings, keep: bool = False, quiet_wait: float = 0.0) -> dict[str, Any]:
    """The whole benchmark; returns the results (also written to ``s.out``)."""
    global ATTEMPTS
    ATTEMPTS = 1 if s.smoke else 3
    if quiet_wait:
        wait_quiet(quiet_wait)
    t0 = time.monotonic()
    proxies, skipped = available(s.proxies)
    _, load_cpus, _, _ = _cpus()
    results: dict[str, Any] = {
        "schema": 1,
        "generated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
        "skipped": skipped,
        "runs": {},
    }
    busy = _busy_elsewhere()
    results["busy_at_start"] = busy
    if busy > 0.2:
        _log(f"warning: {busy:.2f} CPUs busy before the run: the figures may be disturbed")
    procs = Processes()
    with _workdir(keep) as work:
        if keep:
            _log(f"working directories in {work}")
        try:
            results["direct"] = direct_runs(s, procs, load_cpus)
            for name in proxies:
                results["runs"][name] = proxy_runs(s, procs, name, work / name)
            for name in proxies:
                if results["runs"][name].get("check") != "ok" or "idle" not in s.parts:
                    continue
                run = results["runs"][name]
                run["idle"] = _step(
                    run,
                    "idle",
                    lambda name=name: idle_runs(  # type: ignore[misc]
                        s, procs, name, work / f"{name}-idle", s.idle
                    ),
                )
            if "wsgate" in proxies and s.hold and "hold" in s.parts:
                _log(f"wsgate: holding {s.hold} connections")
                results["hold"] = _step(
                    results,
                    "hold",
                    lambda: idle_runs(
                        s, procs, "wsgate", work / "wsgate-hold", (s.hold,), s.hold_seconds, 1.1
                    ),
                )
            if "wsgate" in proxies and "profile" in s.parts:
                from bench.profile import run_profile

                _log("wsgate: profiling (py-spy)")
                profiled = _step(
                    results,
                    "profile",
                    lambda: {
                        "text": run_profile(procs, s.out, work / "profile", s.profile_duration)
                    },
                )
                results["profile"] = (
                    "profile.md" if profiled and profiled["text"] else "not run (see errors)"
                )
            if "static" in s.parts:
                from bench.static import run_static

                proxy_cpus, load_cpus, _, _ = _cpus()
                results["static"] = _step(
                    results,
                    "static",
                    lambda: run_static(procs, work / "static", (proxy_cpus, load_cpus), s, _log),
                )
            if "h2" in s.parts:
                from bench.http2 import run_h2

                proxy_cpus, load_cpus, _, _ = _cpus()
                results["h2"] = _step(
                    results,
                    "h2",
                    lambda: run_h2(procs, work / "h2", (proxy_cpus, load_cpus), s, _log),
                )
            if "wsgate" in proxies and "features" in s.parts:
                from bench.feature_ab import run as run_features

                results["features"] = _step(
                    results,
                    "features",
                    lambda: run_features(
                        (64, 4096), s.conns, s.feature_rounds, seconds=s.feature_slice
                    ),
                )
            if "syscalls" in s.parts:
                from bench.syscalls import run as run_syscalls

                proxy_cpus, load_cpus, _, _ = _cpus()
                _log("system calls per handshake and per message (strace)")
                results["syscalls"] = _step(
                    results,
                    "syscalls",
                    lambda: run_syscalls(
                        proxies,
                        procs,
                        work / "syscalls",
                        (proxy_cpus, load_cpus),
                        s.syscall_handshakes,
                        s.syscall_messages,
                    ),
                )
        finally:
            procs.stop_all()
    results["seconds"] = round(time.monotonic() - t0, 1)
    results["metrics"] = report.metrics(results)
    results["bottleneck"] = report.bottleneck(results)
    s.out.mkdir(parents=True, exist_ok=True)
    (s.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (s.out / "results.md").write_text(report.markdown(results))
    default_out = Settings().out.resolve()
    if not s.smoke and s.out.resolve() == default_out and set(s.parts) >= set(Settings().parts):
        # A full run into bench/results: docs/benchmark.md shows its table and chart.
        if report.update_readme(results, REPO / "docs" / "benchmark.md"):
            _log("updated the results in docs/benchmark.md")
    if report.chart(results, s.out / "chart.png"):
        _log(f"wrote {s.out}/results.json, results.md, chart.png")
    else:
        _log(f"wrote {s.out}/results.json, results.md (no chart: matplotlib is not installed)")
    return results


def parse_args(argv: list[str] | None = None) -> tuple[Settings, bool, float]:
    d = Settings()
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny counts, about 30 s in all")
    p.add_argument(
        "--proxies",
        default=_env("BENCH_PROXIES", ",".join(d.proxies)),
        help="BENCH_PROXIES; default wsgate,wsgate-pure,nginx,haproxy (missing ones are skipped)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=float(_env("BENCH_DURATION", "0")) or None,
        help=f"BENCH_DURATION: seconds counted per load run (default {d.duration:g})",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=float(_env("BENCH_WARMUP", "0")) or None,
        help=f"BENCH_WARMUP: seconds of load before counting (default {d.warmup:g})",
    )
    p.add_argument(
        "--conns",
        type=int,
        default=int(_env("BENCH_CONNS", "0")) or None,
        help=f"BENCH_CONNS: connections of the message runs (default {d.conns})",
    )
    p.add_argument(
        "--window",
        type=int,
        default=int(_env("BENCH_WINDOW", "0")) or None,
        help=f"BENCH_WINDOW: messages in flight per connection at saturation (default {d.window})",
    )
    p.add_argument(
        "--idle",
        default=_env("BENCH_IDLE", ""),
        help="BENCH_IDLE: idle connections at which memory is read (default "
        + ",".join(map(str, d.idle))
        + ")",
    )
    p.add_argument(
        "--hold",
        type=int,
        default=int(_env("BENCH_HOLD", "-1")),
        help=f"BENCH_HOLD: connections wsgate must hold at once (default {d.hold}; 0 skips)",
    )
    p.add_argument(
        "--backend",
        choices=["raw", "picows"],
        default=_env("BENCH_BACKEND", "raw"),
        help="BENCH_BACKEND: the echo backend of the message runs (default raw)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(_env("BENCH_OUT", "")) if _env("BENCH_OUT", "") else None,
        help="BENCH_OUT: where results go (default bench/results; a --smoke run: "
        "bench/results/smoke, so that it never replaces the published results)",
    )
    p.add_argument(
        "--parts",
        default=_env("BENCH_PARTS", ""),
        help="BENCH_PARTS: figures to run (default all; --smoke: all but profile): "
        + ",".join(d.parts),
    )
    p.add_argument(
        "--wsgate-extra",
        default=_env(WSGATE_EXTRA, ""),
        help=f"{WSGATE_EXTRA}: location directives for wsgate alone ('features': every "
        "WebSocket feature on, limits not reached), to measure their cost",
    )
    p.add_argument(
        "--h2-sets",
        type=int,
        default=int(_env("BENCH_H2_SETS", "0")) or None,
        help=f"BENCH_H2_SETS: times each HTTP/2 figure is measured (default {d.h2_sets})",
    )
    p.add_argument("--keep", action="store_true", help="keep the proxies' working directories")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=float(_env("BENCH_WAIT_QUIET", "0")),
        help="BENCH_WAIT_QUIET: first wait up to this many seconds for other work to stop",
    )
    a = p.parse_args(argv)
    if a.wsgate_extra:
        extra = WS_FEATURES if a.wsgate_extra == "features" else a.wsgate_extra
        os.environ[WSGATE_EXTRA] = extra  # read by Proxy.nginx_conf, in any process
    s = Settings.smoke_settings() if a.smoke else Settings()
    s.proxies = tuple(x for x in a.proxies.split(",") if x)
    unknown = set(s.proxies) - set(PROXIES)
    if unknown:
        p.error(f"unknown proxies: {', '.join(sorted(unknown))}")
    for name in ("duration", "warmup", "conns", "window", "h2_sets"):
        if getattr(a, name):
            setattr(s, name, getattr(a, name))
    if a.idle:
        s.idle = _ints(a.idle)
    if a.hold >= 0:
        s.hold = a.hold
    s.backend = a.backend
    s.out = a.out if a.out is not None else (d.out / "smoke" if a.smoke else d.out)
    if a.parts:
        s.parts = tuple(x for x in a.parts.split(",") if x)
    if set(s.parts) - set(d.parts):
        p.error(f"unknown parts: {', '.join(sorted(set(s.parts) - set(d.parts)))}")
    return s, a.keep, a.wait_quiet


def main(argv: list[str] | None = None) -> int:
    settings, keep, quiet_wait = parse_args(argv)
    results = run(settings, keep, quiet_wait)
    print((settings.out / "results.md").read_text())
    _log(f"done in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
