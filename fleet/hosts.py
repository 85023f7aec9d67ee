"""Starting the programs of the simulated hosts, each in its namespace, and reading HAProxy.

Each function starts one program with its configuration in the run's directory and returns
once it listens (or raises): dnsmasq, Redis, a backend, a wsgate node, HAProxy, the client
host. :class:`Balancer` also reads HAProxy's view of the nodes (``show stat`` on its stats
socket, a unix socket in the run's directory, so the runner reads it from outside the
namespaces) and records every change of a node's state with the time it was seen.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from fleet import conf
from fleet.net import Host, host
from fleet.procs import NsProcess, wait_until

__all__ = [
    "REPO",
    "Balancer",
    "Node",
    "detect_features",
    "find_tool",
    "start_backend",
    "start_client",
    "start_dns",
    "start_redis",
    "write_dns",
]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def find_tool(name: str) -> str | None:
    """The path of a program (also in /usr/sbin, which a non-login PATH may lack)."""
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = str(REPO)
    return env


def detect_features(workdir: Path) -> conf.Features:
    """Which of the new directives the installed wsgate accepts (``wsgate -t``)."""
    probes = {
        "shutdown_grace": "shutdown_grace 1s; events {} http {}",
        "readiness": "events {} http { server { listen 127.0.0.1:1; "
        "location = /r { readiness; } } }",
        "redis": "events {} http { limit_conn_zone $arg_u zone=u:1m "
        "redis=127.0.0.1:6379 redis_fail=open; }",
    }
    found: dict[str, bool] = {}
    workdir.mkdir(parents=True, exist_ok=True)
    for name, text in probes.items():
        path = workdir / f"{name}.conf"
        path.write_text(text + "\n")
        proc = subprocess.run(
            [str(BIN / "wsgate"), "-t", "-q", "-p", str(workdir), "-c", str(path)],
            capture_output=True,
            timeout=30,
            env=_env(),
        )
        found[name] = proc.returncode == 0
    return conf.Features(**found)


def _start_tool(
    h: Host, tool: str, args: list[str], log: Path, port: int, name: str = ""
) -> NsProcess:
    """``tool`` (:func:`find_tool`) with ``args`` in ``h``'s namespace, its output in ``log``,
    once it listens on ``h``'s address at ``port``; ``name`` (the tool's by default) names
    it in errors."""
    path = find_tool(tool)
    assert path is not None
    proc = NsProcess(name or tool, h.ns, [path, *args], log)
    proc.wait_listening(h.addr, port)
    return proc


# -- DNS and Redis ------------------------------------------------------------------------------
def write_dns(path: Path, backends: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(conf.dns_hosts(backends))
    tmp.replace(path)  # dnsmasq never reads half a file


def start_dns(run: Path, backends: list[str]) -> tuple[NsProcess, Path]:
    """dnsmasq answering ``*.fleet.test`` from a hosts file, nothing else (no upstream
    servers, no /etc/hosts); the TTL of its answers is 1 s. SIGHUP makes it read the file
    again."""
    hosts = run / "dns.hosts"
    write_dns(hosts, backends)
    h = host("dns")
    proc = _start_tool(
        h,
        "dnsmasq",
        [
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            f"--addn-hosts={hosts}",
            "--local-ttl=1",
            f"--listen-address={h.addr}",
            "--bind-interfaces",
            f"--local=/{conf.ZONE}/",
            "--user=root",
            "--group=root",
            f"--pid-file={run / 'dnsmasq.pid'}",
            "--log-facility=-",
            "--log-queries",
        ],
        run / "dnsmasq.log",
        53,
    )
    return proc, hosts


def start_redis(run: Path) -> NsProcess:
    """An empty Redis that keeps nothing on disk (a restart starts it empty again)."""
    h = host("redis")
    return _start_tool(
        h,
        "redis-server",
        [
            "--bind",
            h.addr,
            "--port",
            str(conf.REDIS_PORT),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(run),
        ],
        run / "redis.log",
        conf.REDIS_PORT,
        name="redis",
    )


def start_backend(run: Path, name: str) -> NsProcess:
    h = host(name)
    proc = NsProcess(
        name,
        h.ns,
        [sys.executable, "-m", "fleet.backend", name, h.addr, str(conf.BACKEND_PORT)],
        run / f"{name}.log",
        env=_env(),
    )
    proc.wait_listening(h.addr, conf.BACKEND_PORT)
    return proc


# -- the nodes ------------------------------------------------------------------------------------
class Node:
    """One wsgate node: its prefix directory (configuration, ``logs/``), its master."""

    def __init__(self, run: Path, name: str, features: conf.Features, workers: int) -> None:
        self.name = name
        self.host = host(name)
        self.prefix = run / name
        (self.prefix / "logs").mkdir(parents=True, exist_ok=True)
        self.conf = self.prefix / "node.conf"
        self.conf.write_text(conf.node_conf(name, features, workers))
        self.proc: NsProcess | None = None
        self.starts = 0

    def _wsgate(self, *args: str) -> list[str]:
        return [str(BIN / "wsgate"), "-p", str(self.prefix), "-c", str(self.conf), *args]

    def start(self) -> None:
        """Start the master in the foreground (``daemon off``) and wait for its listeners."""
        self.starts += 1
        self.proc = NsProcess(
            self.name,
            self.host.ns,
            self._wsgate("-g", "daemon off;"),
            self.prefix / "logs" / f"stderr.{self.starts}.log",
            env=_env(),
        )
        self.proc.wait_listening(self.host.addr, conf.NODE_PORT, timeout=20)
        self.proc.wait_listening(self.host.addr, conf.READY_PORT, timeout=20)

    def quit(self) -> None:
        """``wsgate -s quit``, as an operator would (the master's pid from its pid file)."""
        subprocess.run(
            ["ip", "netns", "exec", self.host.ns, *self._wsgate("-s", "quit")],
            check=True,
            timeout=10,
            capture_output=True,
            env=_env(),
        )

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> list[int]:
        """SIGKILL the master and its workers at once: a node that dies."""
        assert self.proc is not None
        return self.proc.kill_all()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=8.0)

    def logs(self, name: str) -> str:
        path = self.prefix / "logs" / name
        return path.read_text(errors="replace") if path.exists() else ""


# -- the balancer ---------------------------------------------------------------------------------
class Balancer:
    """HAProxy, and a thread that records its view of each node every 100 ms."""

    def __init__(self, run: Path) -> None:
        self.sock = str(run / "haproxy.sock")
        cfg = run / "haproxy.cfg"
        cfg.write_text(conf.haproxy_cfg(self.sock))
        self.proc = _start_tool(
            host("lb"), "haproxy", ["-db", "-f", str(cfg)], run / "haproxy.log", conf.LB_PORT
        )
        wait_until("haproxy stats socket", lambda: os.path.exists(self.sock), 10)
        #: (monotonic time, node, status) for every change seen.
        self.changes: list[tuple[float, str, str]] = []
        self.state: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def stat(self) -> dict[str, str]:
        """``{node: status}`` (``UP``, ``DOWN``, ``UP 1/2``...) from ``show stat``."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(self.sock)
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        text = data.decode().lstrip("# ")
        out = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("pxname") == "nodes" and row.get("svname") in conf.NODES:
                out[row["svname"]] = row["status"]
        return out

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                now = self.stat()
            except OSError:
                now = {}
            t = time.monotonic()
            for node, status in now.items():
                if self.state.get(node) != status:
                    self.changes.append((t, node, status))
                    self.state[node] = status
            self._stop.wait(0.1)

    def wait_status(self, node: str, status: str, timeout: float) -> float:
        return wait_until(
            f"haproxy sees {node} {status}", lambda: self.state.get(node) == status, timeout
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.proc.stop()


def start_client(run: Path, params: dict[str, object]) -> NsProcess:
    """The client host's process (:mod:`fleet.load`), its parameters on the first line."""
    proc = NsProcess(
        "client",
        host("client").ns,
        [sys.executable, "-m", "fleet.load"],
        run / "client.log",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(),
    )
    assert proc.proc.stdin is not None
    proc.proc.stdin.write((json.dumps(params) + "\n").encode())
    proc.proc.stdin.flush()
    return proc
