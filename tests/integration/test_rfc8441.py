"""RFC 8441 WebSockets over HTTP/2 (extended CONNECT) through a real wsgate: the ``h2``
library as the client over a real socket (cleartext prior knowledge and TLS ALPN), the
``websockets`` library as the echoing backend behind ``proxy_pass``.

https://www.rfc-editor.org/rfc/rfc8441
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from h2.events import DataReceived
from hyperframe.frame import DataFrame, GoAwayFrame
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect as ws_connect

from tests.conftest import WsgateProcess
from tests.integration.loopback import Loop, loop_fixture, status, wait_for
from tests.integration.test_http2 import (
    LOG,
    Client,
    _client_ctx,
    access_lines,
    raw_frames,
    tls_files,  # noqa: F401 - a fixture
)

Factory = Callable[..., WsgateProcess]
bg = pytest.fixture(loop_fixture)
pytestmark = pytest.mark.timeout(30)

UPGRADE = (
    "proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade;"
    ' proxy_set_header Connection "upgrade";'
)


class Echo:
    """A ``websockets`` echo server on the background loop, recording the Close frame each of
    its connections received (``None``: none came)."""

    def __init__(self, bg: Loop) -> None:
        self.bg = bg
        self.closes: list[tuple[int, str] | None] = []

        async def start() -> Server:
            return await serve(self.handler, "127.0.0.1", 0, max_size=None, compression=None)

        self.server = asyncio.run_coroutine_threadsafe(start(), bg.loop).result(5)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def handler(self, ws: ServerConnection) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        finally:
            rcvd = ws.protocol.close_rcvd
            self.closes.append(None if rcvd is None else (rcvd.code, rcvd.reason))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.bg.loop).result(5)


@pytest.fixture
def echo_server(bg: Loop) -> Iterator[Echo]:
    server = Echo(bg)
    yield server
    server.close()


@pytest.fixture
def echo(echo_server: Echo) -> int:
    """The echo server's port."""
    return echo_server.port


def conf(server: str, tls: str = "", http: str = "") -> str:
    return (
        "error_log logs/error.log info;\nevents {}\n"
        f"http {{ {LOG} {http}\n server {{ listen 127.0.0.1:0{tls}; http2 on; {server} }}\n}}\n"
    )


def frame(payload: bytes, opcode: int = 2) -> bytes:
    """A client frame (masked with the all-zero key: the payload is unchanged)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """The complete server frames in ``data`` (unmasked)."""
    out, i = [], 0
    while i + 2 <= len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        j = i + 2
        if n == 126:
            n, j = int.from_bytes(data[j : j + 2], "big"), j + 2
        elif n == 127:
            n, j = int.from_bytes(data[j : j + 8], "big"), j + 8
        if j + n > len(data):
            break
        out.append((opcode, data[j : j + n]))
        i = j + n
    return out


def connect(c: Client, path: str = "/ws", protocol: str = "websocket") -> int:
    sid = c.h2.get_next_available_stream_id()
    fields = [
        (":method", "CONNECT"),
        (":protocol", protocol),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("sec-websocket-version", "13"),
    ]
    c.h2.send_headers(sid, fields, end_stream=False)
    c.send()
    while sid not in c.headers and sid not in c.resets:
        assert c.read(), "connection closed"
    return sid


def send(c: Client, sid: int, data: bytes, end: bool = False) -> None:
    while data:
        window = min(c.h2.local_flow_control_window(sid), c.h2.max_outbound_frame_size)
        if not window:
            assert c.read(), "connection closed"
            continue
        piece, data = data[:window], data[window:]
        c.h2.send_data(sid, piece, end_stream=end and not data)
        c.send()


def receive(c: Client, sid: int, count: int) -> list[tuple[int, bytes]]:
    """Read until ``count`` frames have come on ``sid``."""
    while len(got := frames(bytes(c.bodies.get(sid, b"")))) < count:
        assert c.read(), "connection closed"
    return got


def test_echo_text_and_1mib_binary_cleartext(wsgate: Factory, bg: Loop, echo: int) -> None:
    gw = wsgate(conf(f"location /ws {{ proxy_pass http://127.0.0.1:{echo}; {UPGRADE} }}"))
    c = Client(gw.port)
    c.read()
    assert c.h2.remote_settings.enable_connect_protocol == 1
    sid = connect(c)
    head = c.headers[sid]
    assert head[b":status"] == b"200"
    assert b"sec-websocket-accept" not in head and b"upgrade" not in head
    send(c, sid, frame(b"hello", opcode=1))
    assert receive(c, sid, 1) == [(1, b"hello")]
    big = bytes(range(256)) * 4096  # 1 MiB: many DATA frames, flow control both ways
    send(c, sid, frame(big))
    got = receive(c, sid, 2)
    assert got[1][0] == 2 and got[1][1] == big
    send(c, sid, frame(b"\x03\xe8", opcode=8), end=True)  # Close 1000, then END_STREAM
    c.wait(sid)
    assert receive(c, sid, 3)[2] == (8, b"\x03\xe8")
    assert sid not in c.resets
    c.close()
    wait_for(
        lambda: access_lines(gw) == ["CONNECT /ws HTTP/2.0 HTTP/2.0 [h2c] 200"], "the log line"
    )


def test_echo_over_tls_alpn(
    wsgate: Factory,
    echo: int,
    tls_files: tuple[trustme.CA, str, str],  # noqa: F811
) -> None:
    ca, crt, key = tls_files
    gw = wsgate(
        conf(
            f"ssl_certificate {crt}; ssl_certificate_key {key};"
            f" location /ws {{ proxy_pass http://127.0.0.1:{echo}; {UPGRADE} }}",
            tls=" ssl",
        )
    )
    c = Client(gw.port, _client_ctx(ca, ["h2"]))
    sid = connect(c)
    assert c.headers[sid][b":status"] == b"200"
    send(c, sid, frame(b"over tls", opcode=1))
    assert receive(c, sid, 1) == [(1, b"over tls")]
    c.close()


def test_two_tunnels_and_a_get_on_one_connection(wsgate: Factory, bg: Loop, echo: int) -> None:
    gw = wsgate(
        conf(
            f"location /ws {{ proxy_pass http://127.0.0.1:{echo}; {UPGRADE} }}"
            ' location / { return 200 "plain"; }'
        )
    )
    c = Client(gw.port)
    one, two = connect(c), connect(c)
    send(c, two, frame(b"second", opcode=1))
    send(c, one, frame(b"first", opcode=1))
    assert c.get("/") == (200, b"plain")
    assert receive(c, one, 1) == [(1, b"first")]
    assert receive(c, two, 1) == [(1, b"second")]
    c.h2.reset_stream(one)  # RST_STREAM aborts that tunnel only
    c.send()
    send(c, two, frame(b"still", opcode=1))
    assert receive(c, two, 2)[1] == (1, b"still")
    c.close()


def test_quit_sends_1001_inside_data(wsgate: Factory, bg: Loop, echo: int) -> None:
    gw = wsgate(conf(f"location /ws {{ proxy_pass http://127.0.0.1:{echo}; {UPGRADE} }}"))
    c = Client(gw.port)
    sid = connect(c)
    send(c, sid, frame(b"x", opcode=1))
    assert receive(c, sid, 1) == [(1, b"x")]
    gw.signal(signal.SIGQUIT)
    # Read without h2's state machine: the GOAWAY comes first, the tunnel's Close after it.
    # The client never answers the Close: wsgate ends the stream after close_timeout.
    got = raw_frames(c.sock)
    c.close()
    data = b"".join(f.data for f in got if isinstance(f, DataFrame) and f.stream_id == sid)
    assert frames(data) == [(8, (1001).to_bytes(2, "big") + b"going away")]
    assert any(isinstance(f, GoAwayFrame) for f in got)


def test_keepalive_pings_on_a_stream_and_their_pongs_consumed(
    wsgate: Factory, bg: Loop, echo: int
) -> None:
    """issue 15's pings on an RFC 8441 tunnel: wsgate's Pings come inside the stream's DATA,
    each answered Pong is consumed (the bytes the upstream got, ``$ws_bytes_in``, are the
    text and the Close only), and the tunnel lives on through several ping rounds."""
    gw = wsgate(
        conf(
            f"location /ws {{ proxy_pass http://127.0.0.1:{echo}; {UPGRADE}"
            " websocket_ping_interval 200ms client; websocket_ping_timeout 2s;"
            " access_log logs/ws.log ws; }",
            http="log_format ws '$status $ws_bytes_in $ws_messages_in';",
        )
    )
    c = Client(gw.port)
    sid = connect(c)
    assert c.headers[sid][b":status"] == b"200"
    pings = 0
    while pings < 3:
        got = receive(c, sid, pings + 1)
        opcode, payload = got[pings]
        assert opcode == 9 and payload.startswith(b"wsgate:"), got
        pings += 1
        send(c, sid, frame(payload, opcode=10))  # the Pong a client owes
    text, close = frame(b"still here", opcode=1), frame(b"\x03\xe8", opcode=8)
    send(c, sid, text)
    # Pings may come between: the echo is the first text frame from here on.
    while (1, b"still here") not in receive(c, sid, pings + 1):
        pings += 1
    send(c, sid, close, end=True)
    c.wait(sid)
    c.close()
    log = gw.prefix / "logs" / "ws.log"
    wait_for(lambda: log.exists() and log.read_text().strip() != "", "the log line")
    assert log.read_text().split() == ["200", str(len(text) + len(close)), "1"]
    assert "timed out" not in gw.errors() and "[alert]" not in gw.errors()


def test_upstream_refusal_and_other_refusals_are_stream_level(
    wsgate: Factory, bg: Loop, echo: int
) -> None:
    refusing = bg.backend("r", respond=status(403, "Forbidden"))
    gw = wsgate(
        conf(
            f"location /refuse {{ proxy_pass http://127.0.0.1:{refusing.port}; {UPGRADE} }}"
            f" location /ws {{ proxy_pass http://127.0.0.1:{echo}; {UPGRADE}"
            "  proxy_upgrade_protocols foo; }"
            ' location / { return 200 "plain"; }'
        )
    )
    c = Client(gw.port)
    sid = connect(c, "/refuse")
    c.wait(sid)
    assert c.headers[sid][b":status"] == b"403" and bytes(c.bodies[sid]) == b"r 403"
    assert b"upgrade: websocket" in refusing.requests[0].head.lower()
    assert b"sec-websocket-key:" in refusing.requests[0].head.lower()
    # The allow-list: refused before the upstream is asked.
    sid = connect(c, "/ws")
    c.wait(sid)
    assert c.headers[sid][b":status"] == b"501"
    # A location that cannot tunnel: no 2xx (it would mean the tunnel is open).
    sid = connect(c, "/other")
    c.wait(sid)
    assert c.headers[sid][b":status"] == b"501"
    # CONNECT without :protocol: 405, as nginx.
    assert c.get("/", method="CONNECT")[0] == 405
    # :protocol without CONNECT: malformed (RFC 8441 §4).
    assert c.get("/", extra=((":protocol", "websocket"),))[0] == 400
    assert c.get("/") == (200, b"plain")  # the connection goes on
    assert c.goaway is None
    c.close()
    wait_for(lambda: 'disallowed protocol "websocket"' in gw.errors(), "the info line")
    wait_for(
        lambda: "CONNECT /other HTTP/2.0 HTTP/2.0 [h2c] 501" in access_lines(gw), "the log line"
    )


def test_http2_websocket_off_on_the_server_authority_chooses(wsgate: Factory, echo: int) -> None:
    ws = f"location /ws {{ proxy_pass http://127.0.0.1:{echo}; {UPGRADE} }}"
    gw = wsgate(
        "error_log logs/error.log info;\nevents {}\n"
        f"http {{ {LOG}\n server {{ listen 127.0.0.1:0; http2 on; {ws} }}\n"
        f" server {{ listen 127.0.0.1:0; server_name off.test; http2 on; http2_websocket off;"
        f" {ws} }}\n}}\n"
    )
    c = Client(gw.port)
    c.read()
    assert c.h2.remote_settings.enable_connect_protocol == 1  # the default server's
    sid = c.h2.get_next_available_stream_id()
    c.h2.send_headers(
        sid,
        [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "http"),
            (":path", "/ws"),
            (":authority", "off.test"),
        ],
    )
    c.send()
    c.wait(sid)
    assert c.headers[sid][b":status"] == b"400"
    assert c.headers[connect(c)][b":status"] == b"200"  # the default server tunnels
    c.close()


def test_http2_websocket_off(wsgate: Factory, bg: Loop, echo: int) -> None:
    gw = wsgate(
        conf(
            f"http2_websocket off; location /ws {{ proxy_pass http://127.0.0.1:{echo}; {UPGRADE} }}"
        )
    )
    c = Client(gw.port)
    c.read()
    assert c.h2.remote_settings.enable_connect_protocol == 0
    sid = connect(c)
    c.wait(sid)
    assert c.headers[sid][b":status"] == b"400"
    assert c.get("/ws")[0] in (400, 403, 404, 426)  # the connection goes on
    c.close()
    wait_for(lambda: 'unknown pseudo-header ":protocol"' in gw.errors(), "the info line")


def test_not_advertised_without_a_proxying_location(wsgate: Factory) -> None:
    gw = wsgate(conf('location / { return 200 "x"; }'))
    c = Client(gw.port)
    c.read()
    assert c.h2.remote_settings.enable_connect_protocol == 0
    c.close()


def test_end_stream_half_closes_and_rst_stream_aborts(wsgate: Factory, bg: Loop) -> None:
    backend = bg.backend("ws", websocket=True)
    gw = wsgate(conf(f"location / {{ proxy_pass http://127.0.0.1:{backend.port}; {UPGRADE} }}"))
    c = Client(gw.port)
    # END_STREAM: the upstream gets a FIN; its close then ends the stream (no reset: both
    # sides have ended).
    sid = connect(c)
    assert c.headers[sid][b":status"] == b"200"
    c.h2.end_stream(sid)
    c.send()
    c.wait(sid)
    assert sid in c.ended and sid not in c.resets
    wait_for(lambda: backend.open == 0, "the upstream connection closed")
    # RST_STREAM: the upstream connection is closed, the HTTP/2 connection goes on.
    sid = connect(c)
    wait_for(lambda: backend.open == 1, "the upstream connection")
    c.h2.reset_stream(sid)
    c.send()
    wait_for(lambda: backend.open == 0, "the upstream connection closed")
    assert connect(c) and backend.accepted == 3
    c.close()


def test_limit_conn_slot_held_by_the_stream_tunnel(wsgate: Factory, bg: Loop) -> None:
    backend = bg.backend("ws", websocket=True)
    gw = wsgate(
        conf(
            f"location / {{ proxy_pass http://127.0.0.1:{backend.port}; {UPGRADE}"
            " limit_conn a 1; }",
            http="limit_conn_zone $binary_remote_addr zone=a:1m;",
        )
    )
    c = Client(gw.port)
    first = connect(c)
    assert c.headers[first][b":status"] == b"200"
    second = connect(c)  # at the limit: the tunnel holds the slot
    c.wait(second)
    assert c.headers[second][b":status"] == b"503"
    c.h2.reset_stream(first)
    c.send()
    # The slot is released when the tunnel's request ends (its access-log line).
    wait_for(lambda: len(access_lines(gw)) == 2, "the tunnel's log line")
    third = connect(c)
    assert c.headers[third][b":status"] == b"200"
    c.close()


HAPROXY = shutil.which("haproxy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (make debs installs it)")
@pytest.mark.timeout(60)  # 4 to 17 s seen on the loaded 2-core machine (1 MiB each way)
def test_haproxy_ws_h2_to_wsgate(
    wsgate: Factory, bg: Loop, echo_server: Echo, tmp_path: Path
) -> None:
    """Interop: HAProxy (``server ... proto h2 ws h2``) turns a client's HTTP/1.1 WebSocket into
    RFC 8441 towards wsgate, which tunnels it to the echo backend.  Text and a 1 MiB binary
    message go both ways; then a QUIT to wsgate gives both ends a 1001 Close frame: the client
    behind HAProxy (wsgate's Close in the stream's DATA, relayed by HAProxy) and the backend."""
    gw = wsgate(
        conf(f"location /ws {{ proxy_pass http://127.0.0.1:{echo_server.port}; {UPGRADE} }}")
    )
    port = _free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "global\n  log stderr local0 info\n"
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n"
        "  timeout server 10s\n  timeout tunnel 10s\n"
        f"frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n"
        f"backend be\n  server gw 127.0.0.1:{gw.port} proto h2 ws h2\n"
    )
    assert HAPROXY is not None
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_for(listening, "haproxy listening", timeout=15)
        big = bytes(range(256)) * 4096  # 1 MiB
        with ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10, max_size=None) as ws:
            ws.send("through haproxy \u2713")
            assert ws.recv(timeout=10) == "through haproxy \u2713"
            ws.send(big)
            assert ws.recv(timeout=10) == big
            gw.signal(signal.SIGQUIT)
            with pytest.raises(ConnectionClosedOK):
                ws.recv(timeout=10)
            rcvd = ws.protocol.close_rcvd
            assert rcvd is not None and (rcvd.code, rcvd.reason) == (1001, "going away"), rcvd
        assert gw.proc.wait(15) == 0
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    wait_for(lambda: bool(echo_server.closes), "the backend's connection to end", timeout=15)
    assert echo_server.closes == [(1001, "going away")], echo_server.closes
    lines = access_lines(gw)
    assert lines == ["CONNECT /ws HTTP/2.0 HTTP/2.0 [h2c] 200"], lines


def test_worker_shutdown_timeout_after_reload_sends_1012(
    wsgate: Factory, bg: Loop, echo: int
) -> None:
    server = f"location /ws {{ proxy_pass http://127.0.0.1:{echo}; {UPGRADE} }}"
    gw = wsgate("worker_shutdown_timeout 1s;\n" + conf(server))
    c = Client(gw.port)
    sid = connect(c)
    other = c.request("/slow-not-there")  # an ordinary stream finishes before the reload
    c.wait(other)
    send(c, sid, frame(b"x", opcode=1))
    assert receive(c, sid, 1) == [(1, b"x")]
    gw.signal(signal.SIGHUP)
    # The retired worker keeps the connection for its tunnel, then sends 1012 in DATA.
    got = raw_frames(c.sock)
    c.close()
    data = b"".join(f.data for f in got if isinstance(f, DataFrame) and f.stream_id == sid)
    assert frames(data) == [(8, (1012).to_bytes(2, "big") + b"service restart")]


def test_fast_stop_during_a_tunnel(wsgate: Factory, bg: Loop) -> None:
    backend = bg.backend("ws", websocket=True)
    gw = wsgate(conf(f"location / {{ proxy_pass http://127.0.0.1:{backend.port}; {UPGRADE} }}"))
    c = Client(gw.port)
    sid = connect(c)
    assert c.headers[sid][b":status"] == b"200"
    wait_for(lambda: backend.open == 1, "the upstream connection")
    gw.signal(signal.SIGTERM)
    assert gw.proc.wait(10) == 0
    wait_for(lambda: backend.open == 0, "the upstream connection closed")
    c.close()
    assert "[alert]" not in gw.errors()


class _Pushing:
    """An upstream that answers the upgrade, then sends ``total`` bytes of binary frames
    without reading, until ``read`` is set; then reads everything, counting it."""

    def __init__(self, bg: Loop, total: int) -> None:
        self.total = total
        self.written = 0
        self.received = 0
        self.read = asyncio.Event()
        self.bg = bg

        async def start() -> asyncio.Server:
            return await asyncio.start_server(self.handle, "127.0.0.1", 0)

        self.server = asyncio.run_coroutine_threadsafe(start(), bg.loop).result(5)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
        piece = bytes([0x82, 126]) + (65000).to_bytes(2, "big") + bytes(65000)

        async def reading() -> None:
            await self.read.wait()
            while chunk := await reader.read(1 << 20):
                self.received += len(chunk)

        task = asyncio.create_task(reading())
        while self.written < self.total:
            writer.write(piece)
            await writer.drain()
            self.written += len(piece)
        await task
        writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.bg.loop).result(5)


def test_flow_control_is_the_back_pressure_both_ways(wsgate: Factory, bg: Loop) -> None:
    """A client that does not read holds the upstream back (wsgate stops reading it), and an
    upstream that does not read holds the client back (its stream window stays shut); both
    resume, nothing lost."""
    total = 24 << 20
    up = _Pushing(bg, total)
    try:
        gw = wsgate(conf(f"location / {{ proxy_pass http://127.0.0.1:{up.port}; {UPGRADE} }}"))
        c = Client(gw.port)
        sid = connect(c)
        data = frame(bytes(65000)) * (total // 65000)
        sent = unacked = 0
        c.sock.settimeout(1.0)
        while sent < len(data):  # sending, never acknowledging what comes
            h2 = c.h2
            window = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
            if window:
                piece = data[sent : sent + window]
                h2.send_data(sid, piece)
                c.send()
                sent += len(piece)
                continue
            try:
                chunk = c.sock.recv(1 << 16)
            except TimeoutError:
                break  # both directions are stalled
            for ev in h2.receive_data(chunk):
                if isinstance(ev, DataReceived):
                    c.bodies.setdefault(sid, bytearray()).extend(ev.data)
                    unacked += ev.flow_controlled_length
            c.send()
        assert sent < len(data) and up.written < total  # held back both ways
        # Both resume: the client reads, the upstream reads.
        c.sock.settimeout(10)
        bg.loop.call_soon_threadsafe(up.read.set)
        c.h2.acknowledge_received_data(unacked, sid)
        c.send()
        send(c, sid, data[sent:])
        while len(c.bodies.get(sid, b"")) < up.written or up.written < total:
            assert c.read(), "connection closed"
        wait_for(lambda: up.received == len(data), "the upstream has every byte")
        got = frames(bytes(c.bodies[sid]))
        assert len(got) == -(-total // 65004) and all(p == bytes(65000) for _, p in got)
        c.close()
    finally:
        up.close()
