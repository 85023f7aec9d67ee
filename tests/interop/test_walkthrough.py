"""The article's walk-through end to end: Node.js server.js <- wsgate <- npm wscat.

nginx.com's "NGINX as a WebSocket Proxy" runs ``node server.js`` on 8010, nginx with the full
example configuration on 8020 and ``wscat --connect ws://PROXY:8020``, then shows this
exchange.  Here examples/websocket.conf is used as shipped except for what a test must change:
ports (the backend's kernel-chosen port, ``listen 127.0.0.1:0``) and file paths (the fixture's
prefix owns ``logs/``, including the pid file it waits for).

wscat prints ``Connected ...`` and ``< MSG`` only on a terminal and quits as soon as a piped
stdin ends, so it runs on a pseudo-terminal and the screen is compared line by line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import REPO_ROOT, Peer, PtyPeer, require_node

__all__: list[str] = []

EXAMPLE = REPO_ROOT / "examples" / "websocket.conf"
WSCAT = str(REPO_ROOT / "node_modules" / "wscat" / "bin" / "wscat")
SERVER_JS = str(REPO_ROOT / "tests" / "interop" / "server.js")


def walkthrough_conf(backend_port: int) -> str:
    """examples/websocket.conf with test ports and the fixture's log layout."""
    text = EXAMPLE.read_text()
    text, backends = re.subn(
        r"server\s+127\.0\.0\.1:8010;", f"server 127.0.0.1:{backend_port};", text
    )
    text, listens = re.subn(r"listen\s+8020;", "listen 127.0.0.1:0;", text)
    assert backends == 1 and listens == 1, "examples/websocket.conf no longer has 8010/8020"
    text = re.sub(r"(?m)^\s*pid\s+[^;]*;\n", "", text)  # the fixture waits for logs/nginx.pid
    return text.replace("run/", "logs/")


@pytest.fixture
def node_server() -> Iterator[tuple[Peer, int]]:
    """tests/interop/server.js, the article's backend, on a kernel-chosen port."""
    node = require_node("ws", "wscat")
    peer = Peer([node, SERVER_JS], env={"PORT": "0"})
    try:
        assert peer.wait_for(r".") == "Server started"
        yield peer, peer.wait_listening()
    finally:
        peer.stop()


@pytest.mark.interop
def test_walkthrough_wscat_through_wsgate_to_server_js(
    node_server: tuple[Peer, int], wsgate: Callable[[str], Any]
) -> None:
    server, backend_port = node_server
    proxy = wsgate(walkthrough_conf(backend_port))
    node = require_node("wscat")

    with PtyPeer([node, WSCAT, "--connect", f"ws://127.0.0.1:{proxy.ports[0]}"]) as client:
        assert client.wait_for("Connected") == "Connected (press CTRL+C to quit)"
        client.wait_prompt()
        client.write("Hello\r")
        assert client.wait_for("^< ") == "< Server received from client: Hello"
        assert client.lines[:3] == [
            "Connected (press CTRL+C to quit)",
            "> Hello",
            "< Server received from client: Hello",
        ]

    assert server.wait_for("Received") == "Received from client: Hello"
    # Logged when the tunnel ends (wscat was stopped above), like nginx: status 101.
    assert re.search(r'"GET / HTTP/1\.1" 101 ', proxy.access_lines(1)[0])
    assert server.stdout_lines == [
        "Server started",
        f"Listening on 127.0.0.1:{backend_port}",
        "Received from client: Hello",
    ]
