"""Socket.IO behind wsgate with the nginx configuration from Socket.IO's documentation.

Issue 3, point 5: "the configuration that Socket.IO's documentation gives for nginx (hash or
ip_hash over several Node.js servers) works unchanged, so the long-polling requests and the
upgrade of one client reach the same server."

Socket.IO's "Using multiple nodes" page (https://socket.io/docs/v4/using-multiple-nodes/,
section "nginx configuration") explains why: "all requests associated with a particular session
ID [must] reach the process that originated them", because the default transports start with
HTTP long-polling (several requests per session) before upgrading to WebSocket, and "without
enabling sticky-session, you will experience HTTP 400 errors due to 'Session ID unknown'".

Set-up: three Node.js processes of ``socketio_server.js`` (the npm ``socket.io`` server), wsgate
with the documented configuration (only the addresses changed; ``events {}`` added, as in
Socket.IO's ``examples/cluster-nginx/nginx.conf``, because a whole nginx.conf needs one), and
one Node.js process of ``socketio_clients.js`` opening 60 ``socket.io-client`` clients with the
default transports from 30 loopback source addresses (all of 127.0.0.0/8 is local on Linux).
Each server logs every Engine.IO request with its session id (sid), each handshake and each
upgrade, so the test can check that one session never touched two servers.

A control test runs the same configuration with the sticky line commented out (plain round
robin) and expects exactly the failure the documentation warns about, so the checks above are
known to be able to fail.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import WsgateProcess
from tests.helpers import REPO_ROOT, Peer, require_node

__all__: list[str] = []

SERVER_JS = str(REPO_ROOT / "tests" / "interop" / "socketio_server.js")
CLIENTS_JS = str(REPO_ROOT / "tests" / "interop" / "socketio_clients.js")
SERVER_NAMES = ("app01", "app02", "app03")
PER_ADDRESS = 2

#: https://socket.io/docs/v4/using-multiple-nodes/#nginx-configuration, verbatim (source:
#: socketio/socket.io-website, docs/categories/02-Server/using-multiple-nodes.md).
DOCUMENTED = """\
http {
  server {
    listen 3000;
    server_name io.yourhost.com;

    location / {
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header Host $host;

      proxy_pass http://nodes;

      # enable WebSockets
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
    }
  }

  upstream nodes {
    # enable sticky session with either "hash" (uses the complete IP address)
    hash $remote_addr consistent;
    # or "ip_hash" (uses the first three octets of the client IPv4 address, or the entire IPv6 address)
    # ip_hash;
    # or "sticky" (needs commercial subscription)
    # sticky cookie srv_id expires=1h domain=.example.com path=/;

    server app01:3000;
    server app02:3000;
    server app03:3000;
  }
}
"""  # noqa: E501 (verbatim: the documentation's comment line is 103 characters)

#: Socket.IO's examples/cluster-nginx/nginx.conf wraps the same http block with this.
EVENTS = "events {\n  worker_connections 1024;\n}\n\n"

HASH_LINE = "    hash $remote_addr consistent;\n"
IP_HASH_LINE = "    # ip_hash;\n"

#: ``hash $remote_addr``: any distinct addresses spread (the ring depends on the servers'
#: ports, chosen by the kernel, so which address lands where changes from run to run).
HASH_ADDRESSES = tuple(f"127.0.{i // 10}.{10 + i % 10}" for i in range(30))
#: ``ip_hash`` hashes the first three octets, so these pairs share a /24 and a server; 15
#: distinct /24s land on servers 0, 1, 2, 0, 1, 2, ... under nginx's formula.
IP_HASH_ADDRESSES = tuple(f"127.0.{net}.{host}" for net in range(1, 16) for host in (1, 2))


def socketio_conf(ports: dict[str, int], method: str) -> str:
    """The documented configuration with test addresses and ``method`` as the sticky line.

    ``method`` is ``hash`` (as documented), ``ip_hash`` (the documented alternative,
    uncommented, with the hash line commented out) or ``round_robin`` (both commented out).
    """
    text = DOCUMENTED.replace("listen 3000;", "listen 127.0.0.1:0;")
    for name, port in ports.items():
        text = text.replace(f"server {name}:3000;", f"server 127.0.0.1:{port};")
    assert HASH_LINE in text and IP_HASH_LINE in text, "the documented sticky lines moved"
    if method in ("ip_hash", "round_robin"):
        text = text.replace(HASH_LINE, "    # hash $remote_addr consistent;\n")
    if method == "ip_hash":
        text = text.replace(IP_HASH_LINE, "    ip_hash;\n")
    assert "3000" not in text
    return EVENTS + text


def nginx_ip_hash_index(address: str, servers: int) -> int:
    """The server nginx's ip_hash picks for an IPv4 address among equal-weight servers.

    ``ngx_http_upstream_get_ip_hash_peer``: hash starts at 89; for each of the first three
    octets ``hash = (hash * 113 + octet) % 6271``; then ``hash % total_weight`` (all up).
    nginx 1.22.1 with this file's configuration routed IP_HASH_ADDRESSES exactly so.
    """
    value = 89
    for octet in [int(part) for part in address.split(".")][:3]:
        value = (value * 113 + octet) % 6271
    return value % servers


@dataclass
class Run:
    """What one run of the clients produced, from the clients' and the servers' reports."""

    clients: list[dict[str, Any]]
    summary: dict[str, Any]
    status: int
    events: list[dict[str, Any]]
    clients_stderr: list[str]

    def by_sid(self) -> dict[str, list[dict[str, Any]]]:
        grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in self.events:
            if event.get("sid"):
                grouped[event["sid"]].append(event)
        return grouped

    def spread(self) -> dict[str, int]:
        counts = Counter(c["server"] for c in self.clients if c["ok"])
        return {name: counts.get(name, 0) for name in SERVER_NAMES}


@pytest.fixture
def socketio_servers() -> Iterator[tuple[dict[str, int], list[Peer]]]:
    """Three socket.io servers (app01..app03) on kernel-chosen ports; stopped afterwards."""
    node = require_node("socket.io", "socket.io-client")
    peers: list[Peer] = []
    try:
        ports: dict[str, int] = {}
        for name in SERVER_NAMES:
            peer = Peer([node, SERVER_JS], env={"PORT": "0", "NAME": name})
            peers.append(peer)
            ports[name] = peer.wait_listening()
        yield ports, peers
    finally:
        for peer in peers:
            peer.stop()


def run_clients(
    proxy: WsgateProcess, servers: list[Peer], addresses: tuple[str, ...], timeout_ms: int = 8000
) -> Run:
    """Run every client to completion, then stop the servers and collect their events."""
    node = require_node("socket.io-client")
    env = {
        "URL": f"http://127.0.0.1:{proxy.port}",
        "ADDRESSES": ",".join(addresses),
        "PER_ADDRESS": str(PER_ADDRESS),
        "TIMEOUT_MS": str(timeout_ms),
    }
    with Peer([node, CLIENTS_JS], env=env) as clients:
        status = clients.wait(timeout_ms / 1000 + 10)
        lines = [json.loads(line) for line in clients.stdout_lines if line.startswith("{")]
        stderr = clients.stderr_lines
    # Every tunnel is closed by now; stopping the servers (which exit 0 on SIGTERM) joins their
    # output readers, so every event they wrote is in.
    for server in servers:
        assert server.stop() == 0, server.stderr_lines
    events = [
        json.loads(line)
        for server in servers
        for line in server.stdout_lines
        if line.startswith("{")
    ]
    summary = lines[-1] if lines and lines[-1].get("done") else {}
    return Run([c for c in lines if "index" in c], summary, status, events, stderr)


def wait_access_log(
    proxy: WsgateProcess, predicate: Callable[[list[str]], bool], timeout: float = 10.0
) -> list[str]:
    """Wait until the access log's lines satisfy ``predicate`` (tunnels log when they end)."""
    deadline = time.monotonic() + timeout
    while True:
        text = proxy.access_log.read_text() if proxy.access_log.exists() else ""
        lines = text.splitlines()
        if predicate(lines):
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"access log never satisfied the check:\n{text}")
        time.sleep(0.02)


def check_sticky(run: Run, proxy: WsgateProcess, addresses: tuple[str, ...]) -> None:
    """Every session's handshake, polls and upgrade reached one server, and messages flowed."""
    total = len(addresses) * PER_ADDRESS
    failed = [c for c in run.clients if not c["ok"]]
    assert run.status == 0 and not failed, (failed, run.summary, run.clients_stderr)
    assert run.summary == {"done": True, "ok": total, "failed": 0}
    assert len(run.clients) == total

    # Engine.IO refused nothing: no "Session ID unknown" (code 1), no 400 on any server.
    assert [e for e in run.events if e["event"] in ("error", "status")] == []

    grouped = run.by_sid()
    handshakes = [e for e in run.events if e["event"] == "handshake"]
    assert len(handshakes) == total
    # The handshake is the one request without a sid; one per session, on its server.
    assert Counter(
        e["server"] for e in run.events if e["event"] == "request" and e["sid"] is None
    ) == Counter(e["server"] for e in handshakes)

    for client in run.clients:
        sid = client["sid"]
        events = grouped[sid]
        servers = {e["server"] for e in events}
        assert servers == {client["server"]}, (client, events)
        kinds = Counter(e["event"] for e in events)
        assert kinds["handshake"] == 1 and kinds["upgrade"] == 1, (client, events)
        requests = [e for e in events if e["event"] == "request"]
        transports = Counter(e["transport"] for e in requests)
        assert transports["polling"] >= 1 and transports["websocket"] == 1, (client, events)
        # The server saw the client's own address in X-Forwarded-For, so the source address
        # was bound as asked and wsgate's $remote_addr (the hash key) is that address.
        assert {e["forwardedFor"] for e in requests} == {client["address"]}, (client, requests)
        assert client["transport"] == client["echoTransport"] == "websocket"
        assert client["echoSid"] == sid

    # A hash of the client address: the same address always reaches the same server.
    per_address: dict[str, set[str]] = defaultdict(set)
    for client in run.clients:
        per_address[client["address"]].add(client["server"])
    assert all(len(servers) == 1 for servers in per_address.values()), per_address
    spread = run.spread()
    assert sum(1 for count in spread.values() if count) >= 2, spread

    # wsgate logs each tunnel when it ends: one 101 per session, from the client's address.
    upgrade = re.compile(r'^(\S+) .*"GET /socket\.io/\?\S*sid=([^&\s]+)\S* HTTP/1\.1" 101 ')

    def upgrades(lines: list[str]) -> dict[str, str]:
        found = {}
        for line in lines:
            match = upgrade.match(line)
            if match:
                found[match[2]] = match[1]
        return found

    lines = wait_access_log(proxy, lambda lines: len(upgrades(lines)) >= total)
    assert upgrades(lines) == {c["sid"]: c["address"] for c in run.clients}
    assert [line for line in lines if re.search(r'HTTP/1\.1" (?:4\d\d|5\d\d) ', line)] == []


@pytest.mark.interop
def test_socketio_documented_hash_remote_addr_consistent(
    socketio_servers: tuple[dict[str, int], list[Peer]],
    wsgate: Callable[[str], WsgateProcess],
) -> None:
    ports, servers = socketio_servers
    proxy = wsgate(socketio_conf(ports, "hash"))
    run = run_clients(proxy, servers, HASH_ADDRESSES)
    check_sticky(run, proxy, HASH_ADDRESSES)
    print("hash $remote_addr consistent: clients per server", run.spread())


@pytest.mark.interop
def test_socketio_documented_ip_hash(
    socketio_servers: tuple[dict[str, int], list[Peer]],
    wsgate: Callable[[str], WsgateProcess],
) -> None:
    ports, servers = socketio_servers
    proxy = wsgate(socketio_conf(ports, "ip_hash"))
    run = run_clients(proxy, servers, IP_HASH_ADDRESSES)
    check_sticky(run, proxy, IP_HASH_ADDRESSES)
    # ip_hash keys on the first three octets, with nginx's formula; these /24s cover all three.
    expected = {
        c["index"]: SERVER_NAMES[nginx_ip_hash_index(c["address"], len(SERVER_NAMES))]
        for c in run.clients
    }
    assert {c["index"]: c["server"] for c in run.clients} == expected
    spread = run.spread()
    assert spread == {name: 20 for name in SERVER_NAMES}, spread
    print("ip_hash: clients per server", spread)


@pytest.mark.interop
def test_socketio_without_sticky_sessions_gets_session_id_unknown(
    socketio_servers: tuple[dict[str, int], list[Peer]],
    wsgate: Callable[[str], WsgateProcess],
) -> None:
    """The control: the same configuration with the sticky line commented out (round robin).

    Socket.IO's documentation: "without enabling sticky-session, you will experience HTTP 400
    errors due to 'Session ID unknown'".  This shows the checks above can see a misrouted poll.
    """
    ports, servers = socketio_servers
    proxy = wsgate(socketio_conf(ports, "round_robin"))
    run = run_clients(proxy, servers, HASH_ADDRESSES)
    assert run.status == 1
    assert any(not c["ok"] for c in run.clients)
    assert any(
        e["event"] == "error" and e["message"] == "Session ID unknown" for e in run.events
    ), run.events
    assert any(e["event"] == "status" and e["status"] == 400 for e in run.events)
    assert any(len({e["server"] for e in events}) > 1 for events in run.by_sid().values())
