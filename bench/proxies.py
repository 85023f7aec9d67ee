"""The three proxies under test (wsgate, nginx, HAProxy): equivalent configurations, and their
processes started pinned to given CPUs and stopped again.

Each proxy listens on 127.0.0.1 and relays WebSocket connections to the benchmark's echo
backends (round robin when there are several), with the settings that matter made the same
and everything else left at its default (buffer sizes included):

* wsgate and nginx get the same nginx configuration: ``proxy_http_version 1.1``, the
  ``Upgrade``/``Connection`` headers of nginx's WebSocket proxying page
  (https://nginx.org/en/docs/http/websocket.html), ``access_log off``, ``worker_processes N``
  and one-hour ``proxy_read_timeout``/``proxy_send_timeout`` so idle tunnels stay open;
* HAProxy 2.6 gets a ``mode http`` frontend and backend with ``timeout tunnel 1h``
  (https://docs.haproxy.org/2.6/configuration.html#4-timeout%20tunnel) and ``nbthread N``:
  its workers are threads of one process, where nginx's and wsgate's are processes.

For the idle-connection runs (``spread=True``) each proxy must hold tens of thousands of
connections while one process may not open more than ``RLIMIT_NOFILE`` files (a hard limit
that only CAP_SYS_RESOURCE can raise). The connections are then spread over ``workers``
processes: nginx with ``listen ... reuseport`` (the kernel hashes connections over one socket
per worker), HAProxy as that many single-threaded processes on one port (HAProxy sets
SO_REUSEPORT on its listeners by default), and wsgate with its shared listening socket and
``worker_connections``, at which a full worker stops accepting and leaves the rest to the others.

Every proxy is started under ``taskset -c CPUS``; its workers inherit the affinity.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "NGINX",
    "PROXIES",
    "WSGATE_PURE",
    "is_wsgate",
    "Proxy",
    "Running",
    "free_port",
    "haproxy_binary",
    "nginx_binary",
    "version_of",
]

REPO = Path(__file__).resolve().parent.parent
NGINX = "nginx"
HAPROXY = "haproxy"
WSGATE = "wsgate"
#: wsgate on its pure-Python fallback (``WSGATE_PURE=1``: the compiled frame scanner and tunnel
#: sides left unused), measured in the same run as the compiled build.
WSGATE_PURE = "wsgate-pure"
#: Environment variables each proxy name runs with.
PROXY_ENV = {WSGATE_PURE: {"WSGATE_PURE": "1"}}
#: The environment variable with location directives for wsgate alone (``--wsgate-extra``).
WSGATE_EXTRA = "BENCH_WSGATE_EXTRA"
#: ``--wsgate-extra features``: every WebSocket feature on, with limits the load stays within.
WS_FEATURES = (
    "websocket_ping_interval 30s both; websocket_ping_timeout 30s; "
    "websocket_max_message_size 1m both; websocket_max_frame_size 1m both; "
    "websocket_message_rate 1000000r/s burst=1000000 both;"
)
PROXIES = (WSGATE, WSGATE_PURE, NGINX, HAPROXY)
#: Idle tunnels are open for the whole run: timeouts far longer than any run.
_LONG = "3600s"


def is_wsgate(name: str) -> bool:
    """Whether ``name`` is a build of wsgate (compiled or pure)."""
    return name in (WSGATE, WSGATE_PURE)


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def haproxy_binary() -> str | None:
    found = shutil.which("haproxy")
    if found:
        return found
    return "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None


def wsgate_binary() -> str:
    local = Path(sys.executable).parent / "wsgate"
    return str(local) if local.exists() else (shutil.which("wsgate") or "wsgate")


def version_of(name: str) -> str | None:
    """The proxy's version line, or None when it is not installed."""
    try:
        if name == NGINX:
            binary = nginx_binary()
            if binary is None:
                return None
            out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
            return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")
        if name == HAPROXY:
            binary = haproxy_binary()
            if binary is None:
                return None
            out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
            words = out.stdout.split()  # HAProxy version 2.6.12-1+deb12u4 2026/10/17 - ...
            return f"HAProxy {words[2]}" if len(words) > 2 else None
        env = {**os.environ, **PROXY_ENV.get(name, {})}
        out = subprocess.run(
            [wsgate_binary(), "-V"], capture_output=True, text=True, timeout=10, env=env
        )
        lines = (out.stderr or out.stdout).strip().splitlines()
        version = lines[0].removeprefix("wsgate version: ") if lines else ""
        scanner = [x.removeprefix("frame scanner: ") for x in lines if "frame scanner" in x]
        return f"{version} ({scanner[0]})" if scanner else version
    except (OSError, subprocess.SubprocessError):
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port that binds now, below the ephemeral range (32768-60999), so that no outgoing
    connection of the benchmark can take it before the proxy binds it."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def _nofile_hard() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _raise_nofile() -> None:
    """In the child before exec: soft open-file limit up to the hard one."""
    hard = _nofile_hard()
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Proxy:
    """How to run one proxy: ``workers`` workers pinned to ``cpus``, in front of ``backends``."""

    name: str
    workers: int
    cpus: str
    backends: list[tuple[str, int]]
    workdir: Path
    #: Spread many idle connections over the workers (see the module docstring).
    spread: bool = False
    #: Connections (client + upstream) one worker may hold; None: a default of 4096.
    worker_connections: int | None = None
    #: ``listen ... http2``: HTTP/2 with prior knowledge beside HTTP/1.1 on the same port
    #: (wsgate and nginx; RFC 8441 WebSockets over it in wsgate).
    http2: bool = False
    #: Location directives for wsgate alone; None: those of BENCH_WSGATE_EXTRA.
    extra: str | None = None
    #: Environment variables set for the proxy's processes (e.g. WSGATE_PURE=1).
    env: dict[str, str] = field(default_factory=dict)

    def nginx_conf(self, port: int, for_wsgate: bool) -> str:
        nofile = _nofile_hard()
        conns = self.worker_connections or 4096
        servers = "\n".join(f"        server {h}:{p};" for h, p in self.backends)
        listen = f"127.0.0.1:{port}" + (" reuseport" if self.spread and not for_wsgate else "")
        listen += " http2" if self.http2 else ""
        # BENCH_WSGATE_EXTRA (run.py's --wsgate-extra): location directives for wsgate alone,
        # e.g. its WebSocket features, to measure what they cost.
        features = ""
        if for_wsgate:
            features = self.extra if self.extra is not None else os.environ.get(WSGATE_EXTRA, "")
        # nginx-only lines: run workers as root like wsgate, temp files inside the prefix.
        extra = "" if for_wsgate else "user root;\n" if os.geteuid() == 0 else ""
        temps = (
            ""
            if for_wsgate
            else "".join(
                f"    {d}_temp_path tmp/{d};\n"
                for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
        )
        return f"""{extra}worker_processes {self.workers};
worker_rlimit_nofile {nofile};
pid {self.workdir}/proxy.pid;
error_log {self.workdir}/error.log warn;
events {{
    worker_connections {conns};
}}
http {{
    access_log off;
{temps}    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream backend {{
{servers}
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout {_LONG};
            proxy_send_timeout {_LONG};
            {features}
        }}
    }}
}}
"""

    def haproxy_conf(self, port: int, threads: int, maxconn: int) -> str:
        servers = "\n".join(f"    server s{i} {h}:{p}" for i, (h, p) in enumerate(self.backends))
        return f"""global
    nbthread {threads}
    maxconn {maxconn}

defaults
    mode http
    maxconn {maxconn}
    timeout connect 5s
    timeout client {_LONG}
    timeout server {_LONG}
    timeout tunnel {_LONG}

frontend websocket
    bind 127.0.0.1:{port}
    default_backend echo

backend echo
    balance roundrobin
{servers}
"""

    def start(self, timeout: float = 20.0) -> Running:
        """Start the proxy and wait until its port accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for d in ("tmp", "logs"):
            (self.workdir / d).mkdir(exist_ok=True)
        port = free_port()
        taskset = ["taskset", "-c", self.cpus]
        commands: list[list[str]] = []
        if self.name == HAPROXY:
            binary = haproxy_binary()
            if binary is None:
                raise RuntimeError("haproxy is not installed")
            # Each HAProxy process needs two descriptors per tunnel, plus a few of its own.
            per_process = self.worker_connections or 4096
            if self.spread:
                conf = self.haproxy_conf(port, 1, per_process // 2)
                copies = self.workers
            else:
                conf = self.haproxy_conf(port, self.workers, per_process // 2)
                copies = 1
            path = self.workdir / "haproxy.cfg"
            path.write_text(conf)
            commands = [[*taskset, binary, "-db", "-f", str(path)] for _ in range(copies)]
        else:
            path = self.workdir / "nginx.conf"
            path.write_text(self.nginx_conf(port, for_wsgate=is_wsgate(self.name)))
            if self.name == NGINX:
                binary = nginx_binary()
                if binary is None:
                    raise RuntimeError("nginx is not installed")
            else:
                binary = wsgate_binary()
            commands = [
                [*taskset, binary, "-p", str(self.workdir), "-c", str(path), "-g", "daemon off;"]
            ]
        stderr = open(self.workdir / "stderr.txt", "ab")
        procs = [
            subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                preexec_fn=_raise_nofile,
                cwd=self.workdir,
                env={**os.environ, **PROXY_ENV.get(self.name, {}), **self.env},
            )
            for cmd in commands
        ]
        running = Running(self, port, procs)
        running.wait_ready(timeout)
        return running


@dataclass
class Running:
    """A started proxy: its port and its root processes (master, or HAProxy's processes)."""

    proxy: Proxy
    port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def roots(self) -> list[int]:
        return [p.pid for p in self.procs]

    def log_tail(self, limit: int = 2000) -> str:
        text = ""
        for name in ("stderr.txt", "error.log"):
            path = self.proxy.workdir / name
            if path.exists():
                text += path.read_text(errors="replace")[-limit:]
        return text

    def wait_ready(self, timeout: float) -> None:
        """Until the port accepts and every expected worker exists."""
        deadline = time.monotonic() + timeout
        want_children = 0 if self.proxy.name == HAPROXY else self.proxy.workers
        while True:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{self.proxy.name} exited with {p.returncode}:\n{self.log_tail()}"
                    )
            if _accepts(self.port) and all(_children(p.pid) >= want_children for p in self.procs):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.proxy.name} did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (fast stop for all three), then SIGKILL what is left."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _children(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return len(f.read().split())
    except OSError:
        return 0


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
    return True
