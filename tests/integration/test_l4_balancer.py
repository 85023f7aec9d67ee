"""Two wsgate nodes behind HAProxy in TCP mode with ``send-proxy-v2`` (issue 17): every
per-client feature sees the real client, and ``hash $remote_addr consistent`` routes each
client to the same backend on every node, and moves only the keys of a removed backend.

Clients connect from distinct loopback addresses (127.0.0.2 ...) so that the address the
nodes see is the client's only if the PROXY header was read.  HAProxy round-robins the
connections over the two nodes, so each client's requests reach both.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import Loop, loop_fixture, wait_for
from tests.integration.test_resolver import Factory

HAPROXY = shutil.which("haproxy")
pytestmark = [
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (make debs installs it)"),
    pytest.mark.timeout(90),
]

bg = pytest.fixture(loop_fixture)

#: The client addresses (the fourth is denied by the nodes).
CLIENTS = [f"127.0.0.{i}" for i in range(2, 18)]
DENIED = "127.0.0.5"


def node_conf(ports: list[int]) -> str:
    servers = " ".join(f"server 127.0.0.1:{p};" for p in ports)
    return f"""
worker_processes 2;
error_log logs/error.log notice;
events {{}}
http {{
  log_format real '$remote_addr|$proxy_protocol_addr|$realip_remote_addr|$status';
  access_log logs/access.log real;
  upstream app {{ hash $remote_addr consistent; {servers} }}
  server {{
    listen 127.0.0.1:0 proxy_protocol;
    set_real_ip_from 127.0.0.1;
    real_ip_header proxy_protocol;
    deny {DENIED};
    allow all;
    location / {{ proxy_pass http://app; proxy_http_version 1.1;
                 proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade; }}
  }}
}}
"""


def free_port() -> int:
    # HAProxy cannot bind port 0 and report it: a port is taken from the kernel and released.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HAProxy:
    """HAProxy in TCP mode in front of ``nodes`` (ports), with ``send-proxy-v2``."""

    def __init__(self, tmp_path: Path, nodes: list[int]) -> None:
        self.port = free_port()
        servers = "".join(
            f"  server n{i} 127.0.0.1:{p} send-proxy-v2\n" for i, p in enumerate(nodes)
        )
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n"
            "  timeout server 30s\n  timeout tunnel 30s\n"
            f"frontend fe\n  bind 127.0.0.1:{self.port}\n  default_backend be\n"
            f"backend be\n  balance roundrobin\n{servers}"
        )
        assert HAPROXY is not None
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_for(self.listening, "haproxy listening", timeout=15)

    def listening(self) -> bool:
        assert self.proc.poll() is None, self.proc.communicate()[1]
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=10)


def request(port: int, source: str, path: str = "/", upgrade: bool = False) -> tuple[int, bytes]:
    """One request from ``source``; (status, body), the body of a 101 being empty."""
    extra = ""
    if upgrade:
        extra = (
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        )
    head = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(head.encode())
        data = b""
        # A 101 is read to the end of its head (the tunnel stays open); else to the close.
        while not (upgrade and b"\r\n\r\n" in data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    return int(top.split(b" ")[1]), rest


def routes(port: int, tries: int = 4) -> dict[str, set[bytes]]:
    """The backend names each allowed client reached, over ``tries`` requests each."""
    found: dict[str, set[bytes]] = {}
    for source in CLIENTS:
        if source == DENIED:
            continue
        for _ in range(tries):
            status, body = request(port, source)
            assert status == 200, (source, status, body)
            found.setdefault(source, set()).add(body)
    return found


def test_real_client_and_consistent_hash_across_nodes(
    bg: Loop, wsgate: Factory, tmp_path: Path
) -> None:
    backends = [bg.backend(f"b{i}", websocket=True) for i in range(3)]
    text = node_conf([b.port for b in backends])
    nodes: list[WsgateProcess] = [wsgate(text), wsgate(text)]
    lb = HAProxy(tmp_path, [n.port for n in nodes])
    try:
        # Every client lands on one backend whichever node (round robin) took it.
        before = routes(lb.port)
        assert all(len(names) == 1 for names in before.values()), before
        used = {next(iter(n)) for n in before.values()}
        assert len(used) >= 2, before  # 15 keys on a ring of three spread over them
        # allow/deny sees the client, not the balancer.
        assert request(lb.port, DENIED)[0] == 403
        # A WebSocket through the balancer.
        assert request(lb.port, CLIENTS[0], "/ws", upgrade=True)[0] == 101
        # The logs of both nodes hold the clients' addresses, never the balancer's.
        lines = [line for n in nodes for line in n.access_log.read_text().splitlines()]
        assert lines and {line.split("|")[0] for line in lines} <= set(CLIENTS), lines
        assert all(line.split("|")[2] == "127.0.0.1" for line in lines), lines
        assert {line.split("|")[0] for line in lines if line.endswith("|403")} == {DENIED}
        # Remove the backend with the most keys from every node (a reload each): only its
        # keys move, each to where the ring without it puts it, the same on both nodes.
        gone = max(backends, key=lambda b: sum(n == {b.name.encode()} for n in before.values()))
        text2 = node_conf([b.port for b in backends if b is not gone])
        for n in nodes:
            n.conf.write_text(text2)
            mark = len(n.errors())
            n.signal(signal.SIGHUP)
            n.wait_log(r"reconfiguring", start=mark)
        after = _settled(lb.port, gone.name.encode())
        moved = {c for c in after if after[c] != before[c]}
        assert moved and moved == {c for c in before if before[c] == {gone.name.encode()}}, (
            before,
            after,
        )
    finally:
        lb.stop()


def _settled(port: int, gone: bytes) -> dict[str, set[bytes]]:
    """The routes once no answer comes from the removed backend any more (old workers of
    the reloads may still answer a request or two)."""
    found: dict[str, set[bytes]] = {}

    def check() -> bool:
        found.clear()
        found.update(routes(port))
        return all(len(n) == 1 and gone not in n for n in found.values())

    wait_for(check, "every node routing without the removed backend", timeout=30)
    return found
