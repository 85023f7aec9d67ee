"""HTTP/2 on the front (``http2 on``, ``listen ... http2``) through a real wsgate, with real
peers: the python-hyper ``h2`` library as a client over a real socket (cleartext prior
knowledge and TLS with ALPN), and ``curl --http2-prior-knowledge`` / ``--http2`` when curl
is installed.

https://nginx.org/en/docs/http/ngx_http_v2_module.html
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame

from tests.conftest import WsgateProcess
from tests.integration.loopback import Loop, loop_fixture, silent, wait_for

Factory = Callable[..., WsgateProcess]
bg = pytest.fixture(loop_fixture)
pytestmark = pytest.mark.timeout(30)

LOG = "log_format h2 '$request $server_protocol [$http2] $status'; access_log logs/access.log h2;"
CURL = shutil.which("curl")


class Client:
    """A blocking HTTP/2 client on one connection (h2 as the protocol, a real socket)."""

    def __init__(self, port: int, ctx: ssl.SSLContext | None = None) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock: socket.socket = raw
        if ctx is not None:
            self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        # Sends what it is told (a connection-specific field too: nginx's refusal is tested).
        config = H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = H2Connection(config)
        self.h2.initiate_connection()
        self.send()
        self.headers: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaway: ConnectionTerminated | None = None

    def send(self) -> None:
        out = self.h2.data_to_send()
        if out:
            self.sock.sendall(out)

    def request(
        self,
        path: str,
        method: str = "GET",
        body: bytes | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> int:
        sid = self.h2.get_next_available_stream_id()
        fields = [
            (":method", method),
            (":scheme", "http"),
            (":authority", "localhost"),
            (":path", path),
            *extra,
        ]
        if body is not None:
            fields.append(("content-length", str(len(body))))
        self.h2.send_headers(sid, fields, end_stream=body is None)
        self.send()
        while body is not None:
            window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if not window:
                assert self.read(), "connection closed"
                continue
            piece, body = body[:window], body[window:]
            self.h2.send_data(sid, piece, end_stream=not body)
            self.send()
            if not body:
                break
        return sid

    def read(self) -> bool:
        """One read; False at EOF."""
        data = self.sock.recv(65536)
        if not data:
            return False
        for ev in self.h2.receive_data(data):
            if isinstance(ev, ResponseReceived):
                self.headers[ev.stream_id] = dict(ev.headers)
            elif isinstance(ev, DataReceived):
                self.bodies.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, StreamEnded):
                self.ended.add(ev.stream_id)
            elif isinstance(ev, StreamReset):
                self.resets[ev.stream_id] = ev.error_code
            elif isinstance(ev, ConnectionTerminated):
                self.goaway = ev
        self.send()
        return True

    def wait(self, *sids: int) -> None:
        while not all(s in self.ended or s in self.resets for s in sids):
            assert self.read(), "connection closed"

    def get(self, path: str, **kw: object) -> tuple[int, bytes]:
        sid = self.request(path, **kw)  # type: ignore[arg-type]
        self.wait(sid)
        return int(self.headers[sid][b":status"]), bytes(self.bodies.get(sid, b""))

    def close(self) -> None:
        self.sock.close()


def conf(server: str, http: str = "") -> str:
    return (
        "error_log logs/error.log info;\nevents {}\n"
        f"http {{ {LOG} {http}\n server {{ listen 127.0.0.1:0; http2 on; {server} }}\n}}\n"
    )


def access_lines(gw: WsgateProcess) -> list[str]:
    return (gw.prefix / "logs" / "access.log").read_text().splitlines()


def test_prior_knowledge_variables_and_access_log(wsgate: Factory) -> None:
    gw = wsgate(conf('location / { return 200 "$http2 $server_protocol $host $http_cookie"; }'))
    c = Client(gw.port)
    sid = c.request("/x", extra=(("cookie", "a=1"), ("cookie", "b=2")))
    c.wait(sid)
    assert c.headers[sid][b":status"] == b"200"
    assert bytes(c.bodies[sid]) == b"h2c HTTP/2.0 localhost a=1; b=2"
    assert b"connection" not in c.headers[sid]
    c.close()
    wait_for(lambda: access_lines(gw) == ["GET /x HTTP/2.0 HTTP/2.0 [h2c] 200"], "the log line")


def test_http11_on_the_same_listener(wsgate: Factory) -> None:
    gw = wsgate(conf('location / { return 200 "[$http2] $server_protocol"; }'))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"\r\n\r\n[] HTTP/1.1")


def test_http2_off_speaks_only_http11(wsgate: Factory) -> None:
    gw = wsgate(
        "events {}\nhttp { server { listen 127.0.0.1:0; http2 off; location / { return 200; } } }"
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 ")  # no SETTINGS frame: the preface is an HTTP/1 line


def test_proxied_get_and_post_to_an_http11_backend(wsgate: Factory, bg: Loop) -> None:
    backend = bg.backend("b1")
    gw = wsgate(conf(f"location / {{ proxy_pass http://127.0.0.1:{backend.port}; }}"))
    c = Client(gw.port)
    assert c.get("/get") == (200, b"b1")
    body = b"x" * 100_000  # more than the initial stream window (64k): flow control
    assert c.get("/post", method="POST", body=body) == (200, b"b1")
    c.close()
    got = {r.path: r for r in backend.requests}
    assert got["/get"].method == "GET"
    assert got["/post"].method == "POST" and got["/post"].body == body
    assert (
        b"\r\nhost: localhost" in got["/get"].head.lower() or b"Host: 127.0.0.1" in got["/get"].head
    )


def test_static_file_error_page_and_chunk_size(wsgate: Factory, tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    data = bytes(range(256)) * 1200  # 300 KiB: many DATA frames, window updates
    (root / "big").write_bytes(data)
    gw = wsgate(conf(f"root {root}; http2_chunk_size 1k; location / {{ }}"))
    c = Client(gw.port)
    status, got = c.get("/big")
    assert status == 200 and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    status, page = c.get("/missing")
    assert status == 404 and b"<title>404 Not Found</title>" in page
    c.close()


def test_many_concurrent_streams(wsgate: Factory) -> None:
    gw = wsgate(conf('location / { return 200 "$request_uri"; }'))
    c = Client(gw.port)
    sids = [c.request(f"/n{i}") for i in range(100)]
    c.wait(*sids)
    assert [bytes(c.bodies[s]) for s in sids] == [f"/n{i}".encode() for i in range(100)]
    c.close()


def test_max_concurrent_streams_at_and_over_the_limit(wsgate: Factory, bg: Loop) -> None:
    slow = bg.backend("slow", respond=silent)
    gw = wsgate(
        conf(
            "http2_max_concurrent_streams 2; location / {"
            f" proxy_pass http://127.0.0.1:{slow.port}; proxy_read_timeout 2s; }}"
        )
    )
    c = Client(gw.port)
    c.h2.update_settings({})  # our SETTINGS ack arrives with the first read
    first, second = c.request("/a"), c.request("/b")
    wait_for(lambda: len(slow.requests) == 2, "two proxied requests")
    third = c.request("/c")
    c.wait(third)
    assert c.resets.get(third) == 7  # REFUSED_STREAM
    c.wait(first, second)  # the two within the limit: 504 after proxy_read_timeout
    assert first not in c.resets and second not in c.resets
    assert c.headers[first][b":status"] == b"504"
    # What the first SETTINGS announced (ngx_http_v2_send_settings).
    settings = c.h2.remote_settings
    assert settings.max_concurrent_streams == 2
    assert settings.initial_window_size == 65536 and settings.max_frame_size == (1 << 24) - 1
    c.close()


def test_upgrade_over_http2_is_refused(wsgate: Factory) -> None:
    gw = wsgate(conf("location / { return 200; }"))
    c = Client(gw.port)
    status, _ = c.get("/", extra=(("upgrade", "websocket"),))
    assert status == 400
    assert c.get("/")[0] == 200  # the connection goes on
    c.close()
    wait_for(lambda: 'client sent "Upgrade" header' in gw.errors(), "the info line")


def raw_frames(sock: socket.socket) -> list[Frame]:
    """Every frame until the server closes, parsed without h2's state machine (h2 takes a
    GOAWAY as the end of the connection; nginx, and wsgate, send it before the last
    stream's response)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


def test_keepalive_requests_goaway(wsgate: Factory) -> None:
    gw = wsgate(conf("keepalive_requests 2; location / { return 204; }"))
    c = Client(gw.port)
    assert c.get("/")[0] == 204
    c.request("/")
    frames = raw_frames(c.sock)
    c.close()
    goaway = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert [(g.last_stream_id, g.error_code) for g in goaway] == [(3, 0)]
    last = [f for f in frames if isinstance(f, HeadersFrame) and f.stream_id == 3]
    assert len(last) == 1 and "END_STREAM" in last[0].flags  # 204: HEADERS only


def test_graceful_stop_sends_goaway_and_finishes_streams(wsgate: Factory, bg: Loop) -> None:
    answer: list[bytes] = []

    def later(backend: object, request: object) -> bytes | None:  # noqa: ARG001
        wait_for(lambda: bool(answer), "the test to answer", timeout=10)
        return answer[0]

    backend = bg.backend("late", respond=later)
    gw = wsgate(conf(f"location / {{ proxy_pass http://127.0.0.1:{backend.port}; }}"))
    c = Client(gw.port)
    sid = c.request("/slow")
    wait_for(lambda: len(backend.requests) == 1, "the proxied request")
    gw.proc.send_signal(signal.SIGQUIT)
    wait_for(lambda: "gracefully shutting down" in gw.errors(), "the graceful stop")
    answer.append(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
    frames = raw_frames(c.sock)  # until the connection closes
    c.close()
    goaway = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert [(g.last_stream_id, g.error_code) for g in goaway] == [(sid, 0)]
    data = [f for f in frames if isinstance(f, DataFrame) and f.stream_id == sid]
    assert b"".join(f.data for f in data) == b"done" and "END_STREAM" in data[-1].flags


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[trustme.CA, str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    crt, key = tmp_path / "l.crt", tmp_path / "l.key"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    return ca, str(crt), str(key)


def _tls_conf(crt: str, key: str, listen: str = "ssl", http2: str = "") -> str:
    return (
        "error_log logs/error.log info;\nevents {}\n"
        f"http {{ {LOG} server {{ listen 127.0.0.1:0 {listen}; {http2}"
        f" ssl_certificate {crt}; ssl_certificate_key {key};"
        ' location / { return 200 "[$http2] $scheme $server_protocol"; } } }\n'
    )


def _client_ctx(ca: trustme.CA, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(alpn)
    return ctx


def test_tls_alpn_h2_and_http11_fallback(
    wsgate: Factory, tls_files: tuple[trustme.CA, str, str]
) -> None:
    ca, crt, key = tls_files
    gw = wsgate(_tls_conf(crt, key, http2="http2 on;"))
    c = Client(gw.port, _client_ctx(ca, ["h2", "http/1.1"]))
    assert isinstance(c.sock, ssl.SSLSocket) and c.sock.selected_alpn_protocol() == "h2"
    assert c.get("/") == (200, b"[h2] https HTTP/2.0")
    c.close()
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    with _client_ctx(ca, ["http/1.1"]).wrap_socket(raw, server_hostname="localhost") as s:
        assert s.selected_alpn_protocol() == "http/1.1"
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"[] https HTTP/1.1")


def test_tls_listen_http2_deprecated_form(
    wsgate: Factory, tls_files: tuple[trustme.CA, str, str]
) -> None:
    ca, crt, key = tls_files
    gw = wsgate(_tls_conf(crt, key, listen="ssl http2"))
    assert 'the "listen ... http2" directive is deprecated' in gw.errors() + gw.stderr
    c = Client(gw.port, _client_ctx(ca, ["h2", "http/1.1"]))
    assert c.get("/") == (200, b"[h2] https HTTP/2.0")
    c.close()


def test_tls_without_http2_offers_only_http11(
    wsgate: Factory, tls_files: tuple[trustme.CA, str, str]
) -> None:
    ca, crt, key = tls_files
    gw = wsgate(_tls_conf(crt, key))
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    with _client_ctx(ca, ["h2", "http/1.1"]).wrap_socket(raw, server_hostname="localhost") as s:
        assert s.selected_alpn_protocol() == "http/1.1"


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_prior_knowledge_and_tls(
    wsgate: Factory, tls_files: tuple[trustme.CA, str, str], tmp_path: Path
) -> None:
    assert CURL is not None
    gw = wsgate(conf('location / { return 200 "$http2 $server_protocol"; }'))
    out = subprocess.run(
        [
            CURL,
            "-sS",
            "--http2-prior-knowledge",
            f"http://127.0.0.1:{gw.port}/",
            "-w",
            " %{http_version}",
        ],
        capture_output=True,
        timeout=10,
        check=True,
    ).stdout
    assert out == b"h2c HTTP/2.0 2"
    ca, crt, key = tls_files
    gw2 = wsgate(_tls_conf(crt, key, http2="http2 on;"))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    out = subprocess.run(
        [
            CURL,
            "-sS",
            "--http2",
            "--cacert",
            str(ca_file),
            "--resolve",
            f"localhost:{gw2.port}:127.0.0.1",
            f"https://localhost:{gw2.port}/",
            "-w",
            " %{http_version}",
        ],
        capture_output=True,
        timeout=10,
        check=True,
    ).stdout
    assert out == b"[h2] https HTTP/2.0 2"


def test_header_block_limits_at_and_over(wsgate: Factory) -> None:
    """large_client_header_buffers 1 512: the decoded fields of a block may total 512 bytes
    (nginx's header_limit); one more byte is GOAWAY ENHANCE_YOUR_CALM naming the stream."""
    gw = wsgate(conf("large_client_header_buffers 1 512; location / { return 204; }"))
    base = len(":methodGET:schemehttp:authoritylocalhost:path/") + len("x-long")
    c = Client(gw.port)
    assert c.get("/", extra=(("x-long", "v" * (512 - base)),))[0] == 204
    sid = c.request("/", extra=(("x-long", "v" * (513 - base)),))
    frames = raw_frames(c.sock)
    c.close()
    goaway = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert [(g.last_stream_id, g.error_code) for g in goaway] == [(sid, 11)]
    assert "client sent too large header" in gw.errors()
