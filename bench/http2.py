"""``make bench``'s ``h2`` part: HTTP/2 through wsgate and nginx, one worker each (issue 13).

Both figures use cleartext HTTP/2 with prior knowledge (``h2c``: the client starts with the
connection preface, no TLS, no ALPN), on ``listen ... http2``, which nginx 1.22 and wsgate
both accept, so that TLS costs do not hide the HTTP/2 work. Pinned as the other figures: the
server under test on CPU 0 (``taskset``), load generators and backends on CPU 1.

1. **Requests over HTTP/2** (:func:`h2load_runs`): Debian's ``h2load`` (``nghttp2-client``)
   with ``Settings.h2_clients`` connections of ``Settings.h2_streams`` concurrent streams
   each (and, for comparison, over HTTP/1.1: ``h2load --h1`` with as many connections, one
   request at a time each, on a second ``listen`` without ``http2``, as nginx 1.22 serves
   only HTTP/2 on a cleartext ``http2`` one), against wsgate and nginx with the same
   configuration (:func:`front_conf`): ``worker_processes 1``,
   ``access_log off``, ``sendfile on``, a 1 KiB file from ``root``, and ``/proxy/`` passed to
   an HTTP/1.1 backend (``proxy_http_version 1.1``, ``keepalive 16``) that serves the same
   file. The backend is nginx, pinned to CPU 1 beside ``h2load`` (wsgate when nginx is not
   installed). Each measurement is a warm-up run of ``--warmup`` seconds, then a run of as
   many requests as the warm-up rate gives in ``--duration`` seconds; *CPU per request* is
   the server's ``utime + stime`` (master and worker, ``/proc/PID/stat``) over that whole
   run divided by the requests ``h2load`` saw succeed; *requests/s* is ``h2load``'s own.
   The two servers run side by side and are measured in turn, ``--h2-sets`` times, and the
   set with the least CPU per request is kept for each (the machine is shared).
2. **WebSocket messages over HTTP/2 streams (RFC 8441) against HTTP/1.1, in wsgate alone**
   (:func:`websocket_runs`; nginx has no RFC 8441): one wsgate with the relay figure's
   configuration (:mod:`bench.proxies`) plus ``http2`` on its ``listen``, in front of the
   relay figure's echo backend. The same ping-pong load (one message in flight per
   WebSocket, 64 B and 4 KiB) from :mod:`bench.loadgen` over HTTP/1.1 Upgrade connections
   and from :mod:`bench.h2wsload` over extended CONNECT streams: as many HTTP/2 connections
   as HTTP/1.1 ones with one stream each, and a tenth of them with ten streams each. CPU per
   relayed message is wsgate's CPU over the window divided by the messages relayed (an echo
   is two), ``--h2-sets`` times in turn, the least kept.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

from bench.procstat import cpu_sample, system_busy
from bench.proxies import free_port, nginx_binary, version_of
from bench.static import SMALL, Server, Spawner, make_files

__all__ = ["front_conf", "h2load_binary", "markdown", "parse_h2load", "run_h2"]

#: What each request asks for: the static file, and the same file through the backend, each
#: over HTTP/2 and, for comparison, over HTTP/1.1 (``h2load --h1``: as many connections as
#: HTTP/2 has streams, one request at a time on each, as HTTP/1.1 without pipelining).
LOADS = {
    "static": ("/small", "h2"),
    "proxy": ("/proxy/small", "h2"),
    "static-h1": ("/small", "h1"),
    "proxy-h1": ("/proxy/small", "h1"),
}
_LABELS = {
    "static": "1 KiB file, HTTP/2",
    "proxy": "1 KiB proxied, HTTP/2",
    "static-h1": "1 KiB file, HTTP/1.1",
    "proxy-h1": "1 KiB proxied, HTTP/1.1",
}
WS_SIZES = (64, 4096)


class Timing(Protocol):
    """What this part reads of ``bench.run.Settings``."""

    warmup: float
    duration: float
    conns: int
    smoke: bool
    h2_clients: int
    h2_streams: int
    h2_sets: int


def h2load_binary() -> str | None:
    for path in ("/usr/bin/h2load", "/usr/local/bin/h2load"):
        if os.access(path, os.X_OK):
            return path
    return None


def front_conf(root: Path, backend_port: int, h1_port: int) -> Any:
    """The configuration both servers run, for a given HTTP/2 port (cleartext HTTP/2 with
    prior knowledge; nginx 1.22 serves nothing else there) and ``h1_port`` for HTTP/1.1."""

    def conf(port: int) -> str:
        return f"""
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        listen 127.0.0.1:{h1_port};
        root {root};
        location /proxy/ {{
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

    return conf


_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded")
_STATUS = re.compile(r"status codes: (\d+) 2xx")


def parse_h2load(text: str) -> dict[str, Any]:
    """The figures of ``h2load``'s summary."""
    fin, req, st = _FINISHED.search(text), _REQUESTS.search(text), _STATUS.search(text)
    if not (fin and req and st):
        raise RuntimeError(f"unexpected h2load output: {text[-600:]}")
    seconds = float(fin.group(1)) / (1000 if fin.group(2) == "ms" else 1)
    return {
        "seconds": seconds,
        "requests_per_s": float(fin.group(3)),
        "requests": int(req.group(1)),
        "succeeded": int(req.group(3)),
        "ok_2xx": int(st.group(1)),
    }


def _h2load(
    cpus: str, url: str, clients: int, streams: int, how: list[str], watch: dict[str, list[int]]
) -> dict[str, Any]:
    """One ``h2load`` run with the CPU of the ``watch`` groups and of h2load over it."""
    binary = h2load_binary()
    assert binary is not None
    cmd = ["taskset", "-c", cpus, binary, "-c", str(clients), "-m", str(streams), "-t", "1"]
    before = {name: cpu_sample(pids) for name, pids in watch.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = system_busy()
    t0 = time.perf_counter()
    out = subprocess.run([*cmd, *how, url], capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    used = {name: cpu_sample(pids) - before[name] for name, pids in watch.items()}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_s = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed ({out.returncode}): {out.stderr[-600:]}")
    r = parse_h2load(out.stdout)
    other = system_busy() - busy0 - load_s - sum(c.total for c in used.values())
    r["cpu"] = {
        name: {
            "user_s": round(c.user, 3),
            "system_s": round(c.system, 3),
            "total_s": round(c.total, 3),
            "utilisation": round(c.total / elapsed, 3),
        }
        for name, c in used.items()
    }
    r["cpu"]["loadgen"] = {"total_s": round(load_s, 3), "utilisation": round(load_s / elapsed, 3)}
    r["elapsed_s"] = round(elapsed, 3)
    r["other_cpu"] = round(max(0.0, other) / elapsed, 3)
    return r


def _measure(
    server: Server, port: int, backend: Server, cpus: str, path: str, proto: str, s: Timing
) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}{path}"
    watch = {"server": [server.proc.pid], "backend": [backend.proc.pid]}
    # HTTP/1.1 has no concurrent streams: --h1 with as many connections as HTTP/2 streams.
    clients, streams, h1 = s.h2_clients, s.h2_streams, []
    if proto == "h1":
        clients, streams, h1 = s.h2_clients * s.h2_streams, 1, ["--h1"]
    warm_for = f"{max(1, round(s.warmup * 1000))}ms"
    warm = _h2load(cpus, url, clients, streams, [*h1, "-D", warm_for], watch)
    count = max(clients * streams * 4, int(warm["requests_per_s"] * s.duration))
    r = _h2load(cpus, url, clients, streams, [*h1, "-n", str(count)], watch)
    if r["succeeded"] != count or r["ok_2xx"] != count:
        raise RuntimeError(f"h2load: {r['succeeded']} of {count} succeeded, {r['ok_2xx']} 2xx")
    r["cpu_per_request_us"] = round(r["cpu"]["server"]["total_s"] / count * 1e6, 1)
    return r


def h2load_runs(
    procs: Spawner, work: Path, cpus: tuple[str, str], s: Timing, log: Any
) -> dict[str, Any]:
    """Figure 1 for wsgate and (when installed) nginx."""
    proxy_cpus, load_cpus = cpus
    root = work / "root"
    make_files(root, {"small": SMALL})
    servers = ["wsgate"] + (["nginx"] if nginx_binary() else [])
    back_name = "nginx" if nginx_binary() else "wsgate"
    out: dict[str, Any] = {
        "clients": s.h2_clients,
        "streams": s.h2_streams,
        "backend": back_name,
        "h2load": version_of_h2load(),
        "sets": {},
        "best": {},
    }
    backend = Server(procs, back_name, work / "backend", root, load_cpus, sendfile=True)
    running: dict[str, Server] = {}
    h1_ports = {name: free_port() for name in servers}
    try:
        for name in servers:
            running[name] = Server(
                procs,
                name,
                work / name,
                root,
                proxy_cpus,
                sendfile=True,
                conf=front_conf(root, backend.port, h1_ports[name]),
            )
        for n in range(s.h2_sets):
            for name, server in running.items():
                for what, (path, proto) in LOADS.items():
                    log(f"h2: {name}, {what} ({proto}), set {n + 1} of {s.h2_sets}")
                    port = server.port if proto == "h2" else h1_ports[name]
                    r = _measure(server, port, backend, load_cpus, path, proto, s)
                    out["sets"].setdefault(name, {}).setdefault(what, []).append(r)
    finally:
        for server in running.values():
            server.stop()
        backend.stop()
    for name, runs in out["sets"].items():
        for what, rs in runs.items():
            out["best"].setdefault(name, {})[what] = min(rs, key=lambda r: r["cpu_per_request_us"])
    return out


def version_of_h2load() -> str | None:
    binary = h2load_binary()
    if binary is None:
        return None
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return done.stdout.strip() or None


def websocket_runs(procs: Any, work: Path, cpus: tuple[str, str], s: Timing, log: Any) -> Any:
    """Figure 2: wsgate relaying WebSocket messages over HTTP/1.1 and over HTTP/2 streams."""
    from bench.proxies import Proxy
    from bench.run import Backends, check_proxy, loadgen

    proxy_cpus, load_cpus = cpus
    conns = s.conns
    shapes = [("h1", conns, 1), ("h2", conns, 1), ("h2", max(1, conns // 10), 10)]
    out: dict[str, Any] = {"conns": conns, "sets": {}, "best": {}}
    backend = Backends(procs, 1, load_cpus, "raw")
    try:
        proxy = procs.start_proxy(
            Proxy("wsgate", 1, proxy_cpus, backend.addrs, work / "ws", http2=True)
        )
        try:
            out["check"] = check_proxy(proxy.port)
            if out["check"] != "ok":
                raise RuntimeError(f"wsgate failed its check: {out['check']}")
            watch = {"proxy": proxy.roots, "backend": backend.pids}
            for n in range(s.h2_sets):
                for size in WS_SIZES:
                    for proto, c, streams in shapes:
                        key = f"{proto}-{c}x{streams}-{size}"
                        log(f"h2: wsgate, {size} B ping-pong, {key}, set {n + 1} of {s.h2_sets}")
                        args = ["--conns", str(c), "--size", str(size), "--window", "1"]
                        args += ["--warmup", str(s.warmup), "--duration", str(s.duration)]
                        mode = "throughput"
                        if proto == "h2":
                            mode, args = "h2throughput", [*args, "--streams", str(streams)]
                        r = loadgen(mode, ("127.0.0.1", proxy.port), load_cpus, args, watch, 120, 1)
                        cpu = r["cpu"]["proxy"]["total_s"]
                        r["cpu_per_message_us"] = (
                            round(cpu / r["relayed"] * 1e6, 2) if r["relayed"] else None
                        )
                        out["sets"].setdefault(key, []).append(r)
        finally:
            procs.stop_proxy(proxy)
    finally:
        backend.stop()
    for key, rs in out["sets"].items():
        measured = [r for r in rs if r["cpu_per_message_us"] is not None]
        if measured:
            out["best"][key] = min(measured, key=lambda r: r["cpu_per_message_us"])
    return out


def run_h2(procs: Any, work: Path, cpus: tuple[str, str], s: Timing, log: Any) -> dict[str, Any]:
    """Both figures; ``h2load`` ones only when h2load is installed."""
    out: dict[str, Any] = {"versions": {"wsgate": version_of("wsgate")}}
    if nginx_binary():
        out["versions"]["nginx"] = version_of("nginx")
    if h2load_binary() is None:
        out["requests"] = None
        out["skipped"] = "h2load is not installed (make bench installs nghttp2-client as root)"
    else:
        out["requests"] = h2load_runs(procs, work / "requests", cpus, s, log)
    out["websocket"] = websocket_runs(procs, work / "websocket", cpus, s, log)
    return out


def _n(count: str, word: str) -> str:
    return f"{count} {word}{'s' * (count != '1')}"


def _size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def _range(rs: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in rs if r.get(key) is not None]
    return f"{min(values):g}–{max(values):g}" if values else "–"


def markdown(h2: dict[str, Any]) -> str:
    """The ``h2`` part of results.md."""
    lines = ["## HTTP/2 (one worker each, cleartext h2c with prior knowledge)\n"]
    req = h2.get("requests")
    if req:
        lines += [
            f"`{req['h2load']}`, {req['clients']} connections × {req['streams']} concurrent "
            f"streams (HTTP/1.1: `--h1`, {req['clients'] * req['streams']} connections, one "
            f"request at a time each); `/proxy/` goes to an HTTP/1.1 backend "
            f"({req['backend']}, keep-alive) serving the same {SMALL}-byte file. "
            "The least CPU per request of "
            f"{len(next(iter(next(iter(req['sets'].values())).values())))} sets; the range "
            "over the sets beside it.\n",
            "| request | server | requests/s | server CPU per request | range over sets "
            "| wsgate / nginx | server CPU | load CPU | other CPU |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for what in LOADS:
            nginx = (req["best"].get("nginx") or {}).get(what)
            for name, best in req["best"].items():
                r = best.get(what)
                if r is None:
                    continue
                ratio = ""
                if name == "wsgate" and nginx:
                    ratio = f"{r['cpu_per_request_us'] / nginx['cpu_per_request_us']:.1f}×"
                label = _LABELS[what]
                lines.append(
                    f"| {label} | {name} | {r['requests_per_s']:,.0f} "
                    f"| {r['cpu_per_request_us']} µs "
                    f"| {_range(req['sets'][name][what], 'cpu_per_request_us')} µs | {ratio} "
                    f"| {r['cpu']['server']['utilisation']:.2f} "
                    f"| {r['cpu']['loadgen']['utilisation']:.2f} | {r['other_cpu']:.2f} |"
                )
    else:
        lines.append(f"Requests over HTTP/2: skipped ({h2.get('skipped')}).\n")
    ws = h2.get("websocket") or {}
    if ws.get("best"):
        lines += [
            "",
            "WebSocket messages relayed by wsgate (ping-pong, one message in flight per "
            "WebSocket), over HTTP/1.1 Upgrade connections and over RFC 8441 streams, on the "
            "same listener and backend:\n",
            "| message | transport | relayed/s | wsgate CPU per relayed message "
            "| range over sets | / HTTP/1.1 | wsgate CPU | load CPU | other CPU |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for size in WS_SIZES:
            base = None
            for key, r in ws["best"].items():
                if not key.endswith(f"-{size}"):
                    continue
                proto, shape, _ = key.split("-")
                c, streams = shape.split("x")
                if proto == "h1":
                    base = r["cpu_per_message_us"]
                    how = f"HTTP/1.1, {_n(c, 'connection')}"
                else:
                    how = f"HTTP/2, {_n(c, 'connection')} × {_n(streams, 'stream')}"
                ratio = f"{r['cpu_per_message_us'] / base:.2f}×" if base else ""
                load = r["cpu"]["loadgen"]["utilisation"] + r["cpu"]["backend"]["utilisation"]
                lines.append(
                    f"| {_size(size)} | {how} | {r['relayed_per_s']:,.0f} "
                    f"| {r['cpu_per_message_us']} µs "
                    f"| {_range(ws['sets'][key], 'cpu_per_message_us')} µs | {ratio} "
                    f"| {r['cpu']['proxy']['utilisation']:.2f} | {load:.2f} "
                    f"| {r['other_cpu']:.2f} |"
                )
    return "\n".join(lines) + "\n"
