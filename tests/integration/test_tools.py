"""wsgate-echo and wsgate-cat against real peers: websockets, Node.js ws/wscat, each other.

The walk-through (nginx.com "NGINX as a WebSocket Proxy") fixes the exact lines both sides print:
the backend ``Server started`` / ``Received from client: Hello``, the client
``Connected (press CTRL+C to quit)`` / ``< Server received from client: Hello``.  These tests
pin those lines for the Python tools and check that they interoperate with the Node.js
originals (tests/interop/server.js, npm ``wscat``), so the later proxy tests can use either.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve
from websockets.typing import Subprotocol

from tests.helpers import REPO_ROOT, Peer, PtyPeer, python_tool, require_node

__all__: list[str] = []

CONNECTED = "Connected (press CTRL+C to quit)"
DISCONNECTED_1000 = 'Disconnected (code: 1000, reason: "")'
WSCAT = str(REPO_ROOT / "node_modules" / "wscat" / "bin" / "wscat")
SERVER_JS = str(REPO_ROOT / "tests" / "interop" / "server.js")

StartEcho = Callable[..., tuple[Peer, int]]


@pytest.fixture
def start_echo() -> Iterator[StartEcho]:
    """Factory: start ``wsgate-echo --port 0 ARGS``, wait for its address, return (peer, port)."""
    peers: list[Peer] = []

    def start(*args: str) -> tuple[Peer, int]:
        peer = Peer(python_tool("wsgate.tools.echo", "--port", "0", *args))
        peers.append(peer)
        assert peer.wait_for(r".") == "Server started"
        return peer, peer.wait_listening()

    yield start
    for peer in peers:
        peer.stop()


@pytest.fixture
def echo(start_echo: StartEcho) -> tuple[Peer, int]:
    """``wsgate-echo`` in the walk-through's mode."""
    return start_echo()


@pytest.fixture
def node_server() -> Iterator[tuple[Peer, int]]:
    """tests/interop/server.js on a kernel-chosen port."""
    node = require_node("ws")
    peer = Peer([node, SERVER_JS], env={"PORT": "0"})
    try:
        assert peer.wait_for(r".") == "Server started"
        yield peer, peer.wait_listening()
    finally:
        peer.stop()


def cat(*args: str, stdin: str | None = None, timeout: float = 5.0) -> Peer:
    """Run ``wsgate-cat ARGS`` with ``stdin`` piped and closed; return it after it exited."""
    peer = Peer(python_tool("wsgate.tools.cat", *args), stdin=True)
    try:
        if stdin is not None:
            peer.write(stdin)
        peer.close_stdin()
        peer.wait(timeout)
    finally:
        peer.stop()
    return peer


@contextmanager
def python_server(handler: Callable[[ServerConnection], None]) -> Iterator[int]:
    """A ``websockets`` sync server in a thread, for behaviour the echo server lacks."""
    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.socket.getsockname()[1]
        finally:
            server.shutdown()
            thread.join(5)


# --- wsgate-echo ------------------------------------------------------------------------------


def test_echo_walkthrough_exchange(echo: tuple[Peer, int]) -> None:
    server, port = echo
    with connect(f"ws://127.0.0.1:{port}") as ws:
        ws.send("Hello")
        assert ws.recv(timeout=5) == "Server received from client: Hello"
    assert server.wait_for("Received") == "Received from client: Hello"
    assert server.stdout_lines[:2] == ["Server started", f"Listening on 127.0.0.1:{port}"]


def test_echo_mode_returns_text_and_binary_unchanged(start_echo: StartEcho) -> None:
    server, port = start_echo("--echo")
    with connect(f"ws://127.0.0.1:{port}") as ws:
        ws.send("Hello")
        assert ws.recv(timeout=5) == "Hello"
        ws.send(b"\x00\xffbinary")
        assert ws.recv(timeout=5) == b"\x00\xffbinary"
    server.stop()
    assert server.stdout_lines == ["Server started", f"Listening on 127.0.0.1:{port}"]


def test_echo_accepts_messages_over_websockets_default_limit(start_echo: StartEcho) -> None:
    _, port = start_echo("--echo")
    big = b"x" * (4 * 1024 * 1024)  # websockets' own default limit is 1 MiB
    with connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
        ws.send(big)
        assert ws.recv(timeout=5) == big


def test_echo_max_size_flag_closes_with_1009(start_echo: StartEcho) -> None:
    _, port = start_echo("--echo", "--max-size", "1024")
    with connect(f"ws://127.0.0.1:{port}") as ws:
        ws.send(b"x" * 1024)
        assert ws.recv(timeout=5) == b"x" * 1024
        ws.send(b"x" * 1025)
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009  # message too big


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_echo_signal_exits_zero_and_closes_1001(
    start_echo: StartEcho, signum: signal.Signals
) -> None:
    server, port = start_echo()
    with connect(f"ws://127.0.0.1:{port}") as ws:
        server.proc.send_signal(signum)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001  # going away
    assert server.wait() == 0
    assert server.stderr_lines == []


# --- wsgate-cat -------------------------------------------------------------------------------


def test_cat_piped_stdin_walkthrough(echo: tuple[Peer, int]) -> None:
    server, port = echo
    client = cat("--connect", f"ws://127.0.0.1:{port}", stdin="Hello\n")
    assert client.proc.returncode == 0
    assert client.stdout_lines == [
        CONNECTED,
        "< Server received from client: Hello",
        DISCONNECTED_1000,
    ]
    assert client.stderr_lines == []
    assert server.wait_for("Received") == "Received from client: Hello"


def test_cat_waits_for_every_reply_in_order(start_echo: StartEcho) -> None:
    _, port = start_echo("--echo")
    client = cat("-c", f"127.0.0.1:{port}", stdin="one\ntwo\r\nthree")  # no scheme, no final EOL
    assert client.stdout_lines == [CONNECTED, "< one", "< two", "< three", DISCONNECTED_1000]


def test_cat_execute_prints_bare_reply(echo: tuple[Peer, int]) -> None:
    started = time.monotonic()
    client = cat("-c", f"ws://127.0.0.1:{echo[1]}", "-x", "Hello", "--wait", "30")
    assert client.proc.returncode == 0
    assert client.stdout_lines == ["Server received from client: Hello"]
    assert time.monotonic() - started < 5.0  # done at the reply, not after --wait seconds


def test_cat_gives_up_waiting_after_wait_seconds() -> None:
    def silent(ws: ServerConnection) -> None:
        for _ in ws:
            pass

    with python_server(silent) as port:
        started = time.monotonic()
        client = cat("-c", f"ws://127.0.0.1:{port}", "--wait", "0.3", stdin="Hello\n")
        elapsed = time.monotonic() - started
    assert client.proc.returncode == 0
    assert client.stdout_lines == [CONNECTED, DISCONNECTED_1000]
    assert 0.3 <= elapsed < 3.0


def test_cat_reports_server_close_while_stdin_open() -> None:
    def goodbye(ws: ServerConnection) -> None:
        ws.send("bye soon")
        ws.close(1001, "bye")

    with python_server(goodbye) as port:
        client = Peer(python_tool("wsgate.tools.cat", "-c", f"ws://127.0.0.1:{port}"), stdin=True)
        try:
            assert client.wait() == 0  # stdin still open: the server's close ends the session
        finally:
            client.stop()
    assert client.stdout_lines == [
        CONNECTED,
        "< bye soon",
        'Disconnected (code: 1001, reason: "bye")',
    ]


def test_cat_sends_headers_subprotocol_and_origin() -> None:
    def report(ws: ServerConnection) -> None:
        assert ws.request is not None
        headers = ws.request.headers
        # One message: wsgate-cat stops waiting once it has as many messages as it sent.
        ws.send(
            f"{headers['X-Test']}|{headers['Authorization']}|{headers['Origin']}|{ws.subprotocol}"
        )
        for _ in ws:
            pass

    with serve(report, "127.0.0.1", 0, subprotocols=[Subprotocol("chat.v2")]) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.socket.getsockname()[1]
        try:
            client = cat(
                *("-c", f"ws://127.0.0.1:{port}", "-x", "hi"),
                *("-H", "X-Test: one two", "-H", "Authorization:Bearer t"),
                *("-s", "chat.v1", "-s", "chat.v2", "-o", "http://example.test"),
            )
        finally:
            server.shutdown()
            thread.join(5)
    assert client.stdout_lines == ["one two|Bearer t|http://example.test|chat.v2"]


def test_cat_connection_refused_is_an_error_line() -> None:
    # A bound socket that never listens refuses connections and keeps the port ours.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        client = cat("--connect", f"ws://127.0.0.1:{port}", stdin="Hello\n")
    assert client.proc.returncode != 0
    assert client.stdout_lines == []
    assert client.stderr_lines == [f"error: connect ECONNREFUSED 127.0.0.1:{port}"]


def test_cat_non_101_response_is_an_error_line() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_502() -> None:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request and (chunk := conn.recv(4096)):
                request += chunk
            conn.sendall(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 11\r\nConnection: close\r\n\r\nBad Gateway"
            )

    thread = threading.Thread(target=answer_502, daemon=True)
    with listener:
        thread.start()
        client = cat("-c", f"ws://127.0.0.1:{listener.getsockname()[1]}", stdin="Hello\n")
        thread.join(5)
    assert client.proc.returncode != 0
    assert client.stderr_lines == ["error: Unexpected server response: 502"]


def test_cat_invalid_url_is_an_error_line() -> None:
    client = cat("--connect", "ws://[::1")
    assert client.proc.returncode != 0
    assert client.stderr_lines == ["error: Invalid URL: ws://[::1"]


def test_cat_sigint_closes_with_1000(start_echo: StartEcho) -> None:
    _, port = start_echo("--echo")
    client = Peer(python_tool("wsgate.tools.cat", "-c", f"ws://127.0.0.1:{port}"), stdin=True)
    try:
        assert client.wait_for(".") == CONNECTED
        client.proc.send_signal(signal.SIGINT)
        assert client.wait() == 0
    finally:
        client.stop()
    assert client.stdout_lines == [CONNECTED, DISCONNECTED_1000]
    assert client.stderr_lines == []


def test_cat_on_a_terminal_shows_the_walkthrough_screen(echo: tuple[Peer, int]) -> None:
    with PtyPeer(python_tool("wsgate.tools.cat", "--connect", f"ws://127.0.0.1:{echo[1]}")) as tty:
        assert tty.wait_for("Connected") == CONNECTED
        tty.wait_prompt()
        tty.write("Hello\r")
        assert tty.wait_for("^< ") == "< Server received from client: Hello"
        tty.write("\x04")  # CTRL+D: end of input
        assert tty.wait_for("Disconnected") == DISCONNECTED_1000
        assert tty.wait() == 0
        assert tty.lines[:4] == [
            CONNECTED,
            "> Hello",
            "< Server received from client: Hello",
            DISCONNECTED_1000,
        ]


# --- Node.js interop --------------------------------------------------------------------------


@pytest.mark.interop
def test_wscat_execute_against_echo(echo: tuple[Peer, int]) -> None:
    node = require_node("wscat", "ws")
    server, port = echo
    # wscat quits the moment its stdin ends, even with -x: keep the pipe open until it exits.
    client = Peer(
        [node, WSCAT, "--connect", f"ws://127.0.0.1:{port}", "-x", "Hello", "-w", "1.5"], stdin=True
    )
    try:
        assert client.wait() == 0
    finally:
        client.stop()
    assert client.stdout_lines == ["Server received from client: Hello"]
    assert server.wait_for("Received") == "Received from client: Hello"


@pytest.mark.interop
def test_wscat_interactive_against_echo(echo: tuple[Peer, int]) -> None:
    node = require_node("wscat", "ws")
    server, port = echo
    with PtyPeer([node, WSCAT, "--connect", f"ws://127.0.0.1:{port}"]) as tty:
        assert tty.wait_for("Connected") == CONNECTED
        tty.wait_prompt()
        tty.write("Hello\r")
        assert tty.wait_for("^< ") == "< Server received from client: Hello"
        assert tty.lines[:3] == [CONNECTED, "> Hello", "< Server received from client: Hello"]
    assert server.wait_for("Received") == "Received from client: Hello"


@pytest.mark.interop
def test_cat_against_node_server_js(node_server: tuple[Peer, int]) -> None:
    server, port = node_server
    client = cat("--connect", f"ws://127.0.0.1:{port}", stdin="Hello\n")
    assert client.proc.returncode == 0
    assert client.stdout_lines == [
        CONNECTED,
        "< Server received from client: Hello",
        DISCONNECTED_1000,
    ]
    assert server.wait_for("Received") == "Received from client: Hello"
    assert server.stdout_lines == [
        "Server started",
        f"Listening on 127.0.0.1:{port}",
        "Received from client: Hello",
    ]
