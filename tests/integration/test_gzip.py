"""Compression through a real wsgate on loopback: proxied responses, static files, error pages
and ``gzip_static``, each checked by decompressing to the exact bytes; a stream that reaches
the client before the backend has finished; what must never be compressed (a WebSocket 101, a
range, an encoded response, too short, another type, a proxied request with ``gzip_proxied
off``); ``gzip_min_length`` at and over its limit; a client gone halfway (no descriptor left)."""

from __future__ import annotations

import gzip
import os
import random
import socket
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import HOST, Backend, Loop, Request, loop_fixture, wait_for

bg = pytest.fixture(loop_fixture)

AE = "Accept-Encoding: gzip\r\n"
#: Text that compresses, but not to nothing: words drawn from a small vocabulary.
_WORDS = [b"alpha", b"beta", b"gamma", b"delta", b"socket", b"frame", b"\n"]
TEXT = b" ".join(random.Random(12).choice(_WORDS) for _ in range(40_000))


def fetch(
    port: int, path: str, extra: str = "", version: str = "1.1", method: str = "GET"
) -> tuple[str, bytes]:
    """One request on a new connection read to its close; the head and the de-chunked body."""
    raw = f"{method} {path} HTTP/{version}\r\nHost: t\r\nConnection: close\r\n{extra}\r\n"
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(raw.encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    if "\r\nTransfer-Encoding: chunked" in text:
        out = b""
        while True:
            size_line, _, body = body.partition(b"\r\n")
            if not size_line:  # cut short: what came (the caller finds it incomplete)
                break
            size = int(size_line, 16)
            if size == 0:
                assert body == b"\r\n", "the body ends with the last chunk"
                break
            out, body = out + body[:size], body[size + 2 :]
        body = out
    return text, body


def reply(body: bytes, *fields: str, status: str = "200 OK") -> bytes:
    extra = "".join(f"{f}\r\n" for f in fields)
    return f"HTTP/1.1 {status}\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body


def chunked_reply(body: bytes, ctype: str = "text/html") -> bytes:
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (body[:1000], body[1000:]))
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + chunks
        + b"0\r\n\r\n"
    )


def by_path(backend: Backend, request: Request) -> bytes:
    """The upstream of these tests: what each path answers."""
    p = request.path
    if p == "/html":
        return reply(TEXT, "Content-Type: text/html", 'ETag: "v1"')
    if p == "/chunked":
        return chunked_reply(TEXT)
    if p == "/css":
        return reply(TEXT, "Content-Type: text/css")
    if p == "/br":
        return reply(TEXT, "Content-Type: text/html", "Content-Encoding: br")
    if p == "/partial":
        return reply(TEXT[:100], "Content-Type: text/html", "Content-Range: bytes 0-99/*",
                     status="206 Partial Content")  # fmt: skip
    if p == "/nostore":
        return reply(TEXT, "Content-Type: text/html", "Cache-Control: no-store")
    if p == "/public":
        return reply(TEXT, "Content-Type: text/html", "Cache-Control: max-age=60")
    if p == "/gz":
        return reply(gzip.compress(TEXT) + gzip.compress(b"|2"), "Content-Type: text/html",
                     "Content-Encoding: gzip")  # fmt: skip
    if p == "/badgz":
        return reply(b"\x1f\x8b" + b"not really gzip" * 10, "Content-Type: text/html",
                     "Content-Encoding: gzip")  # fmt: skip
    if p.startswith("/len/"):
        n = int(p[5:])
        return reply(b"x" * n, "Content-Type: text/html")
    return reply(b"?", "Content-Type: text/plain")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "page.html").write_bytes(TEXT)
    (root / "both.html").write_bytes(b"plain version " * 10)
    (root / "both.html.gz").write_bytes(gzip.compress(b"compressed version " * 10))
    (root / "only.html.gz").write_bytes(gzip.compress(b"stored compressed"))
    os.utime(root / "both.html", (1_700_000_000, 1_700_000_000))
    os.utime(root / "both.html.gz", (1_700_000_500, 1_700_000_500))
    return root


def conf(site: Path, port: int, extra: str = "") -> str:
    return f"""
events {{}}
http {{
  include mime.types;
  log_format g "$request_uri $gzip_ratio $body_bytes_sent";
  access_log logs/gzip.log g;
  server {{
    listen 127.0.0.1:0;
    root {site};
    gzip on;
    gzip_vary on;
    location /up/ {{ proxy_pass http://127.0.0.1:{port}/; }}
    location /any/ {{ gzip_proxied any; proxy_pass http://127.0.0.1:{port}/; }}
    location /nocache/ {{ gzip_proxied no-store; proxy_pass http://127.0.0.1:{port}/; }}
    location /min/ {{ gzip_min_length 100; proxy_pass http://127.0.0.1:{port}/len/; }}
    location /ws {{
      gzip_types *;
      proxy_pass http://127.0.0.1:{port};
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection upgrade;
    }}
    location /nobot/ {{ gzip_disable msie6 "bad.?bot"; alias {site}/; }}
    location /gun/ {{ gunzip on; proxy_pass http://127.0.0.1:{port}/; }}
    location /old/ {{ gzip_http_version 1.0; alias {site}/; }}
    location /st/ {{ gzip_static on; alias {site}/; }}
    location /always/ {{ gzip_static always; alias {site}/; }}
    {extra}
  }}
}}
"""


def test_proxied_response_compressed_exactly(
    wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path
) -> None:
    gw = wsgate(conf(site, bg.backend("b", by_path).port))
    for path in ("/up/html", "/up/chunked"):
        head, body = fetch(gw.port, path, AE)
        assert head.startswith("HTTP/1.1 200 OK"), head
        assert "\r\nContent-Encoding: gzip" in head and "Content-Length" not in head, head
        assert "\r\nTransfer-Encoding: chunked" in head and "\r\nVary: Accept-Encoding" in head
        assert gzip.decompress(body) == TEXT, path
    head, _ = fetch(gw.port, "/up/html", AE)
    assert '\r\nETag: W/"v1"' in head  # made weak
    # Without Accept-Encoding: the upstream's bytes and length, with Vary.
    head, body = fetch(gw.port, "/up/html")
    assert body == TEXT and f"Content-Length: {len(TEXT)}" in head and 'ETag: "v1"' in head
    assert "Content-Encoding" not in head and "Vary: Accept-Encoding" in head
    # $gzip_ratio and $body_bytes_sent (compressed bytes) in the access log.
    path = gw.prefix / "logs" / "gzip.log"
    wait_for(lambda: len(path.read_text().splitlines()) == 4, "four access-log lines")
    log = path.read_text().splitlines()
    uri, ratio, sent = log[0].split()
    assert uri == "/up/html" and float(ratio) > 1.5 and int(sent) < len(TEXT)
    assert log[-1].split()[1] == "-"  # not compressed: empty, logged as "-"
    assert "[alert]" not in gw.errors()


def test_http10_close_delimited(wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path) -> None:
    gw = wsgate(conf(site, bg.backend("b", by_path).port))
    head, body = fetch(gw.port, "/old/page.html", AE, version="1.0")
    assert "Content-Encoding: gzip" in head and "Connection: close" in head
    assert "Transfer-Encoding" not in head and "Content-Length" not in head
    assert gzip.decompress(body) == TEXT
    # gzip_http_version 1.1 (the default): an HTTP/1.0 client gets the file as it is.
    head, body = fetch(gw.port, "/page.html", AE, version="1.0")
    assert "Content-Encoding" not in head and body == TEXT


class _SlowBackend:
    """An upstream that sends its head and a first part, then waits for the test to say the
    client has it (``release``) before sending the rest: a relay that held the response
    whole would never let the client see the first part, and the backend's wait would time
    out."""

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.release = threading.Event()
        self.events: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            first, rest = b"first part " * 50, b"rest of it " * 50
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n%b\r\n" % (len(first), first)
            )
            released = self.release.wait(10)
            self.events.append("rest sent" if released else "rest sent after timeout")
            conn.sendall(b"%x\r\n%b\r\n0\r\n\r\n" % (len(rest), rest))

    def close(self) -> None:
        self.release.set()
        self.thread.join(10)
        self.sock.close()


def test_streaming_first_bytes_before_backend_finished(
    wsgate: Callable[..., WsgateProcess], site: Path
) -> None:
    slow = _SlowBackend()
    try:
        gw = wsgate(conf(site, slow.port))
        s = socket.create_connection((HOST, gw.port), timeout=15)
        s.sendall(f"GET /up/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{AE}\r\n".encode())
        data = b""
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        plain = b""
        while b"first part" not in plain:
            chunk = s.recv(65536)
            assert chunk, "closed before the first part"
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                assert b"Content-Encoding: gzip" in head
                # Chunks as they came: decompress what arrived so far.
                raw, rest = b"", body
                while b"\r\n" in rest:
                    size_line, _, after = rest.partition(b"\r\n")
                    size = int(size_line, 16)
                    if len(after) < size + 2:
                        break
                    raw, rest = raw + after[:size], after[size + 2 :]
                plain = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw)
        slow.events.append("client has first part")
        slow.release.set()
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        slow.thread.join(10)
        assert slow.events == ["client has first part", "rest sent"]
        body = data.partition(b"\r\n\r\n")[2]
        out, rest = b"", body
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if not size:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        assert inflate.decompress(out) == b"first part " * 50 + b"rest of it " * 50
    finally:
        slow.close()


def test_never_compressed(wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path) -> None:
    b = bg.backend("b", by_path, websocket=True)
    gw = wsgate(conf(site, b.port))
    for path, why in (
        ("/up/br", "already encoded"),
        ("/up/partial", "a 206"),
        ("/up/css", "a type not in gzip_types"),
        ("/up/len/19", "shorter than gzip_min_length 20"),
    ):
        head, body = fetch(gw.port, path, AE)
        assert "Content-Encoding: gzip" not in head, why
        assert "Content-Length" in head, why
    assert fetch(gw.port, "/up/br", AE)[1] == TEXT
    assert fetch(gw.port, "/up/partial", AE)[1] == TEXT[:100]
    # A WebSocket handshake through a location with gzip_types *: the 101 as it is.
    s = socket.create_connection((HOST, gw.port), timeout=5)
    s.sendall(
        f"GET /ws HTTP/1.1\r\nHost: t\r\n{AE}Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 101 ") and b"Content-Encoding" not in data
    assert b"Transfer-Encoding" not in data
    # A range of a static file, without Accept-Encoding: the 206.
    head, body = fetch(gw.port, "/page.html", "Range: bytes=0-9\r\n")
    assert head.startswith("HTTP/1.1 206") and body == TEXT[:10]
    # With it, gzip runs before the range filter: the whole file, compressed, a 200.
    head, body = fetch(gw.port, "/page.html", AE + "Range: bytes=0-9\r\n")
    assert head.startswith("HTTP/1.1 200") and "Content-Range" not in head
    assert "Accept-Ranges" not in head and gzip.decompress(body) == TEXT
    assert "[alert]" not in gw.errors()


def test_gzip_min_length_at_and_over(
    wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path
) -> None:
    gw = wsgate(conf(site, bg.backend("b", by_path).port))
    head, body = fetch(gw.port, "/up/len/20", AE)  # the default, 20: at it
    assert "Content-Encoding: gzip" in head and gzip.decompress(body) == b"x" * 20
    head, body = fetch(gw.port, "/min/99", AE)
    assert "Content-Encoding" not in head and body == b"x" * 99
    head, body = fetch(gw.port, "/min/100", AE)
    assert "Content-Encoding: gzip" in head and gzip.decompress(body) == b"x" * 100
    head, body = fetch(gw.port, "/min/101", AE)
    assert "Content-Encoding: gzip" in head and gzip.decompress(body) == b"x" * 101


def test_gzip_proxied_with_via(wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path) -> None:
    gw = wsgate(conf(site, bg.backend("b", by_path).port))
    via = AE + "Via: 1.1 cdn\r\n"
    head, body = fetch(gw.port, "/up/html", via)  # gzip_proxied off (the default)
    assert "Content-Encoding" not in head and body == TEXT
    assert "Vary: Accept-Encoding" in head  # the response was one gzip would take
    head, body = fetch(gw.port, "/any/html", via)
    assert "Content-Encoding: gzip" in head and gzip.decompress(body) == TEXT
    # no-store: a response with Cache-Control must say so; one without any passes on to the
    # no_last_modified/no_etag checks, which are not asked for here (ngx_http_gzip_ok).
    assert "Content-Encoding: gzip" in fetch(gw.port, "/nocache/nostore", via)[0]
    assert "Content-Encoding" not in fetch(gw.port, "/nocache/public", via)[0]
    assert "Content-Encoding: gzip" in fetch(gw.port, "/nocache/html", via)[0]
    # The same without Via: compressed.
    assert "Content-Encoding: gzip" in fetch(gw.port, "/nocache/public", AE)[0]


def test_static_file_and_error_page(
    wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path
) -> None:
    gw = wsgate(conf(site, bg.backend("b", by_path).port, "sendfile on;"))
    head, body = fetch(gw.port, "/page.html", AE)
    assert "Content-Encoding: gzip" in head and gzip.decompress(body) == TEXT
    assert 'ETag: W/"' in head
    head, body = fetch(gw.port, "/page.html", AE, method="HEAD")
    assert "Content-Encoding: gzip" in head and body == b""
    assert "Content-Length" not in head and "Transfer-Encoding" not in head
    head, body = fetch(gw.port, "/missing.html", AE)
    assert head.startswith("HTTP/1.1 404") and "Content-Encoding: gzip" in head
    assert b"<center><h1>404 Not Found</h1></center>" in gzip.decompress(body)


def test_gzip_static(wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path) -> None:
    gw = wsgate(conf(site, bg.backend("b", by_path).port))
    gz = (site / "both.html.gz").read_bytes()
    head, body = fetch(gw.port, "/st/both.html", AE)
    assert body == gz, "the .gz file's bytes as they are"
    assert "Content-Encoding: gzip" in head and f"Content-Length: {len(gz)}" in head
    assert "Vary: Accept-Encoding" in head
    # Validators are the .gz file's.
    assert "Last-Modified: Tue, 14 Nov 2023 22:21:40 GMT" in head, head
    assert f'ETag: "{1_700_000_500:x}-{len(gz):x}"' in head
    # A client that does not accept gzip: the plain file, with Vary.
    head, body = fetch(gw.port, "/st/both.html")
    assert body == b"plain version " * 10 and "Content-Encoding" not in head
    assert "Vary: Accept-Encoding" in head
    # always: the .gz to everyone; a file that exists only compressed.
    head, body = fetch(gw.port, "/always/both.html")
    assert body == gz and "Content-Encoding: gzip" in head
    head, body = fetch(gw.port, "/always/only.html")
    assert gzip.decompress(body) == b"stored compressed"
    assert fetch(gw.port, "/st/only.html")[0].startswith("HTTP/1.1 404")
    # No .gz beside it: the file (compressed by gzip on, as the location has it).
    head, body = fetch(gw.port, "/st/page.html", AE)
    assert gzip.decompress(body) == TEXT
    # A range of the .gz file: ranges apply to the stored bytes (current nginx).
    head, body = fetch(gw.port, "/st/both.html", AE + "Range: bytes=0-9\r\n")
    assert head.startswith("HTTP/1.1 206") and body == gz[:10]
    assert "[alert]" not in gw.errors()


def _file_fds(gw: WsgateProcess, path: Path) -> int:
    return sum(1 for link in gw.fd_links() if link == str(path))


def test_client_gone_halfway_leaks_nothing(
    wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path
) -> None:
    big = site / "big.html"
    big.write_bytes(random.Random(3).randbytes(16 * 1024 * 1024))  # incompressible
    gw = wsgate(conf(site, bg.backend("b", by_path).port))
    s = socket.create_connection((HOST, gw.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(f"GET /big.html HTTP/1.1\r\nHost: t\r\n{AE}\r\n".encode())
    first = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 200") and b"Content-Encoding: gzip" in first
    deadline = time.monotonic() + 5
    while _file_fds(gw, big) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _file_fds(gw, big) == 1, "the file is open while it is sent"
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()  # reset
    deadline = time.monotonic() + 10
    while _file_fds(gw, big) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _file_fds(gw, big) == 0
    assert "[alert]" not in gw.errors()
    head, body = fetch(gw.port, "/page.html", AE)  # the worker goes on serving
    assert gzip.decompress(body) == TEXT


def test_gunzip(wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path) -> None:
    gw = wsgate(conf(site, bg.backend("b", by_path).port))
    # A client that does not accept gzip: decompressed as it streams, both members.
    head, body = fetch(gw.port, "/gun/gz")
    assert body == TEXT + b"|2"
    assert "Content-Encoding" not in head and "Content-Length" not in head
    assert "Transfer-Encoding: chunked" in head and "Vary: Accept-Encoding" in head
    # One that does: the upstream's bytes as they are.
    head, body = fetch(gw.port, "/gun/gz", AE)
    assert "Content-Encoding: gzip" in head and gzip.decompress(body) == TEXT + b"|2"
    assert "Content-Length" in head
    # Not gzip after all: an [error] line and the connection closed, never an [alert].
    head, _ = fetch(gw.port, "/gun/badgz")
    assert head.startswith("HTTP/1.1 200")
    gw.wait_log(r"\[error\] .*inflate\(\) failed")
    assert "[alert]" not in gw.errors()


def test_gzip_disable(wsgate: Callable[..., WsgateProcess], bg: Loop, site: Path) -> None:
    gw = wsgate(conf(site, bg.backend("b", by_path).port))
    for agent, compressed in (
        ("curl/8.0", True),
        ("Mozilla/5.0 BadBot/2", False),  # the expression, caseless
        ("Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)", False),  # msie6
        ("Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1; SV1)", True),  # SV1: not msie6
    ):
        head, body = fetch(gw.port, "/nobot/page.html", f"{AE}User-Agent: {agent}\r\n")
        assert ("Content-Encoding: gzip" in head) is compressed, agent
        assert (gzip.decompress(body) if compressed else body) == TEXT
