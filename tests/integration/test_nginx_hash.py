"""wsgate's ``hash``, ``hash consistent`` and ``ip_hash`` choose the same servers as nginx.

A real nginx and a real wsgate proxy the same ``upstream`` blocks to three tiny HTTP servers
that answer with their own name; 200 keys (``$arg_k``) and 200 client /24 networks (loopback
source addresses ``127.X.Y.1``, all of 127/8 reaching ``lo`` on Linux) are sent through each,
and the key→server maps must be equal.  Skipped when nginx is not installed
(``apt-get install nginx-light``).
"""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import WsgateProcess

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")

KEYS = [f"key{i}" for i in range(150)] + [f"user-{i * 7919}@example.test" for i in range(50)]
SOURCES = [f"127.{1 + i // 50}.{i % 50 * 5}.1" for i in range(200)]


class _Named(BaseHTTPRequestHandler):
    server_name_text = ""

    def do_GET(self) -> None:
        body = self.server_name_text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def backends() -> Iterator[list[int]]:
    """Three HTTP servers on loopback answering ``b0``, ``b1``, ``b2``; their ports."""
    servers: list[ThreadingHTTPServer] = []
    threads: list[threading.Thread] = []
    for i in range(3):
        handler = type(f"Named{i}", (_Named,), {"server_name_text": f"b{i}"})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.daemon_threads = True
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        servers.append(srv)
        threads.append(t)
    yield [s.server_address[1] for s in servers]
    for srv, t in zip(servers, threads, strict=True):
        srv.shutdown()
        srv.server_close()
        t.join()


def upstreams(p: list[int]) -> str:
    a, b, c = (f"127.0.0.1:{x}" for x in p)
    return f"""
  upstream ch {{ hash $arg_k consistent; server {a}; server {b} weight=2; server {c}; }}
  upstream h {{ hash $arg_k; server {a}; server {b} weight=2; server {c}; }}
  upstream ip {{ ip_hash; server {a}; server {b} weight=2; server {c}; }}
  upstream chd {{ hash $arg_k consistent; server {a} down; server {b}; server {c} weight=3; }}
  upstream hd {{ hash $arg_k; server {a}; server {b} down; server {c} weight=3; }}
  upstream ipd {{ ip_hash; server {a}; server {b} down; server {c}; }}
"""


LOCATIONS = " ".join(
    f"location /{u} {{ proxy_pass http://{u}; }}" for u in ("ch", "h", "ip", "chd", "hd", "ipd")
)


def free_port() -> int:
    # nginx cannot bind port 0 and report the port it got, so (only here) a port is taken
    # from the kernel, released, and handed to nginx.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[str], int]]:
    """Factory: start nginx with an ``http { }`` body; returns its port."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(http_body: str) -> int:
        assert NGINX is not None
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        port = free_port()
        temps = " ".join(
            f"{kind}_temp_path {prefix}/{kind}_temp;"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (prefix / "nginx.conf").write_text(
            f"""
error_log {prefix}/error.log;
pid {prefix}/nginx.pid;
events {{}}
http {{
  access_log off;
  {temps}
  {http_body}
  server {{ listen 127.0.0.1:{port}; {LOCATIONS} }}
}}
"""
        )
        proc = subprocess.Popen(
            [
                NGINX,
                "-p",
                str(prefix),
                "-c",
                "nginx.conf",
                "-g",
                "daemon off; master_process off;",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        deadline = time.monotonic() + 15
        while not (prefix / "nginx.pid").exists():  # written once the listener is open
            if proc.poll() is not None:
                assert proc.stderr is not None
                err = proc.stderr.read().decode(errors="replace")
                log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
                raise AssertionError(f"nginx exited ({proc.returncode}):\n{err}{log}")
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.01)
        return port

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def get(port: int, path: str, source: str = "127.0.0.1") -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, (path, resp.status, body)
        return body
    finally:
        conn.close()


def key_map(port: int, upstream: str) -> dict[str, str]:
    return {k: get(port, f"/{upstream}?k={k}") for k in KEYS}


def address_map(port: int, upstream: str) -> dict[str, str]:
    return {src: get(port, f"/{upstream}", src) for src in SOURCES}


def test_hash_and_ip_hash_choices_equal_nginx(
    backends: list[int],
    nginx: Callable[[str], int],
    wsgate: Callable[..., WsgateProcess],
) -> None:
    body = upstreams(backends)
    ngx_port = nginx(body)
    gw = wsgate(f"events {{}}\nhttp {{ {body} server {{ listen 127.0.0.1:0; {LOCATIONS} }} }}\n")
    for upstream in ("ch", "h", "chd", "hd"):
        theirs, ours = key_map(ngx_port, upstream), key_map(gw.port, upstream)
        diff = {k: (theirs[k], ours[k]) for k in KEYS if theirs[k] != ours[k]}
        assert not diff, f"{upstream}: nginx vs wsgate differ for {len(diff)} keys: {diff}"
        assert len(set(ours.values())) > 1, f"{upstream}: every key went to one server"
    for upstream in ("ip", "ipd"):
        theirs, ours = address_map(ngx_port, upstream), address_map(gw.port, upstream)
        diff = {a: (theirs[a], ours[a]) for a in SOURCES if theirs[a] != ours[a]}
        assert not diff, f"{upstream}: nginx vs wsgate differ for {len(diff)} clients: {diff}"
        assert len(set(ours.values())) > 1, f"{upstream}: every client went to one server"
