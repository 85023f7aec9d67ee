"""Static files through a real wsgate on loopback: the bytes (``sendfile`` on and off, ranges,
HEAD, conditional requests), index/autoindex/try_files with a proxied fallback, nginx's log
lines, path traversal attempts, symbolic links, a client that goes away halfway through a
large file and a file truncated while it is sent (no descriptor leaks, no ``[alert]``)."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import HOST, Loop, loop_fixture, ok

bg = pytest.fixture(loop_fixture)

BIG = 3 * 1024 * 1024


def request(port: int, raw: str, *, read_body: bool = True) -> tuple[str, bytes]:
    """Send ``raw`` (a whole request) on a new connection; the head and the body."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(raw.encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"\r\nContent-Length: (\d+)", head)
        if read_body and m is not None:
            while len(body) < int(m.group(1)):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                body += chunk
    return head.decode("latin-1"), body


def get(port: int, path: str, extra: str = "", method: str = "GET") -> tuple[str, bytes]:
    return request(port, f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<p>index</p>")
    (root / "a.txt").write_bytes(b"0123456789")
    (root / "dir" / "b.css").write_text("b{}")
    (root / "big.bin").write_bytes(os.urandom(BIG))
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    return root


def conf(site: Path, extra: str = "", http: str = "") -> str:
    return f"""
events {{}}
http {{
  include mime.types;
  {http}
  server {{
    listen 127.0.0.1:0;
    root {site};
    location / {{ }}
    location /sf/ {{ alias {site}/; sendfile on; sendfile_max_chunk 256k; }}
    location /nosf/ {{ alias {site}/; sendfile off; }}
    location /safe/ {{ alias {site}/; disable_symlinks on; }}
    location /ai/ {{ alias {site}/dir/; autoindex on; }}
    location /exp/ {{ alias {site}/; expires 1h; add_header X-A a; }}
    {extra}
  }}
}}
"""


@pytest.mark.parametrize("prefix", ["/", "/sf/", "/nosf/"])
def test_file_bytes_with_and_without_sendfile(
    wsgate: Callable[..., WsgateProcess], site: Path, prefix: str
) -> None:
    gw = wsgate(conf(site))
    head, body = get(gw.port, prefix + "big.bin")
    assert head.startswith("HTTP/1.1 200 OK"), head
    assert f"\r\nContent-Length: {BIG}\r\n" in head and "Accept-Ranges: bytes" in head
    assert body == (site / "big.bin").read_bytes()
    head, body = get(gw.port, prefix + "a.txt", method="HEAD")
    assert "Content-Length: 10" in head and "Content-Type: text/plain" in head and body == b""
    assert re.search(r'\r\nETag: "[0-9a-f]+-a"', head), head
    assert "[alert]" not in gw.errors()


def test_keep_alive_after_a_file(wsgate: Callable[..., WsgateProcess], site: Path) -> None:
    gw = wsgate(conf(site))
    with socket.create_connection((HOST, gw.port), timeout=10) as s:
        s.sendall(
            b"GET /sf/a.txt HTTP/1.1\r\nHost: t\r\n\r\nGET /dir/b.css HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"b{}"):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert b"0123456789HTTP/1.1 200 OK" in data and b"Content-Type: text/css" in data


def test_index_autoindex_directories_and_errors(
    wsgate: Callable[..., WsgateProcess], site: Path
) -> None:
    gw = wsgate(conf(site))
    head, body = get(gw.port, "/")
    assert head.startswith("HTTP/1.1 200") and body == b"<p>index</p>"
    head, _ = get(gw.port, "/dir?x=1")
    assert head.startswith("HTTP/1.1 301") and f"Location: http://t:{gw.port}/dir/?x=1" in head
    head, _ = get(gw.port, "/dir/")
    assert head.startswith("HTTP/1.1 403")
    assert re.search(r'\[error\] .*directory index of ".*/site/dir/" is forbidden', gw.errors())
    head, body = get(gw.port, "/ai/")
    assert head.startswith("HTTP/1.1 200") and b'<a href="sub/">sub/</a>' in body
    assert b'<a href="b.css">b.css</a>' in body
    head, _ = get(gw.port, "/missing.txt")
    assert head.startswith("HTTP/1.1 404")
    gw.wait_log(
        r'\[error\] \d+#0: \*\d+ open\(\) ".*/site/missing.txt" failed '
        r"\(2: No such file or directory\), client: 127\.0\.0\.1"
    )
    head, _ = get(gw.port, "/a.txt", method="DELETE")
    assert head.startswith("HTTP/1.1 405")


def test_ranges_conditions_and_expires(wsgate: Callable[..., WsgateProcess], site: Path) -> None:
    gw = wsgate(conf(site))
    head, body = get(gw.port, "/sf/a.txt", "Range: bytes=2-4\r\n")
    assert head.startswith("HTTP/1.1 206") and body == b"234"
    assert "Content-Range: bytes 2-4/10" in head
    head, body = get(gw.port, "/sf/big.bin", "Range: bytes=0-1,-2\r\n")
    big = (site / "big.bin").read_bytes()
    assert head.startswith("HTTP/1.1 206") and "multipart/byteranges; boundary=" in head
    assert big[:2] in body and big[-2:] in body and body.endswith(b"--\r\n")
    head, _ = get(gw.port, "/a.txt", "Range: bytes=20-\r\n")
    assert head.startswith("HTTP/1.1 416") and "Content-Range: bytes */10" in head
    etag = re.search(r'ETag: ("[^"]+")', get(gw.port, "/a.txt")[0])
    assert etag is not None
    head, body = get(gw.port, "/a.txt", f"If-None-Match: {etag.group(1)}\r\n")
    assert head.startswith("HTTP/1.1 304") and body == b"" and "Content-Length" not in head
    head, _ = get(gw.port, "/a.txt", 'If-Match: "nope"\r\n')
    assert head.startswith("HTTP/1.1 412")
    head, _ = get(gw.port, "/exp/a.txt")
    assert "Cache-Control: max-age=3600" in head and "X-A: a" in head


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/../secret.txt", 400),
        ("/%2e%2e/secret.txt", 400),
        ("/dir/%2e%2e/%2e%2e/secret.txt", 400),
        ("/dir%2f..%2f..%2fsecret.txt", 400),
        ("/a.txt%00.html", 400),
        ("/safe/link.txt", 403),
        ("/dir/..%2fsecret.txt", 404),  # resolves inside the root: /secret.txt is not there
    ],
)
def test_path_traversal_never_leaves_the_root(
    wsgate: Callable[..., WsgateProcess], site: Path, target: str, status: int
) -> None:
    gw = wsgate(conf(site))
    head, body = request(gw.port, f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}"), head
    assert b"secret" not in body
    # disable_symlinks off (the default) follows the link, as nginx does.
    assert get(gw.port, "/link.txt")[1] == b"secret"


def test_try_files_falls_back_to_a_proxied_location(
    wsgate: Callable[..., WsgateProcess], site: Path, bg: Loop
) -> None:
    up = bg.backend("app", ok)
    gw = wsgate(
        conf(
            site,
            f"""
    location /spa/ {{ alias {site}/; try_files $uri $uri/ /app?from=spa; }}
    location /app {{ proxy_pass http://127.0.0.1:{up.port}; }}
""",
        )
    )
    assert get(gw.port, "/spa/a.txt")[1] == b"0123456789"
    head, body = get(gw.port, "/spa/route/x")
    assert head.startswith("HTTP/1.1 200") and body == b"app"
    assert up.requests[-1].path == "/app?from=spa"


def test_error_log_of_a_location(wsgate: Callable[..., WsgateProcess], site: Path) -> None:
    gw = wsgate(
        conf(
            site,
            f"""
    location /quiet/ {{ alias {site}/; error_log {site}/../quiet.log; }}
""",
        )
    )
    get(gw.port, "/quiet/none")
    log = site.parent / "quiet.log"
    deadline = time.monotonic() + 5
    while "open()" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 'open() "' in log.read_text() and "quiet/none" not in gw.errors()


def _file_fds(gw: WsgateProcess, path: Path) -> int:
    return sum(1 for link in gw.fd_links() if link == str(path))


def test_client_gone_halfway_leaks_nothing(
    wsgate: Callable[..., WsgateProcess], site: Path
) -> None:
    big = site / "huge.bin"
    with open(big, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)  # sparse: 64 MiB the kernel cannot buffer at once
    gw = wsgate(conf(site))
    for prefix in ("/sf/", "/nosf/"):
        s = socket.create_connection((HOST, gw.port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET {prefix}huge.bin HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 5
        while _file_fds(gw, big) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _file_fds(gw, big) == 1
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # reset
        deadline = time.monotonic() + 10
        while _file_fds(gw, big) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _file_fds(gw, big) == 0
    assert "[alert]" not in gw.errors()
    head, _ = get(gw.port, "/a.txt")  # the worker goes on serving
    assert head.startswith("HTTP/1.1 200")


def test_file_truncated_while_sent(wsgate: Callable[..., WsgateProcess], site: Path) -> None:
    big = site / "shrinks.bin"
    size = 256 * 1024 * 1024  # sparse: far more than the socket buffers hold
    big.touch()
    os.truncate(big, size)
    gw = wsgate(conf(site))
    for prefix in ("/sf/", "/nosf/"):
        s = socket.create_connection((HOST, gw.port), timeout=10)
        s.sendall(f"GET {prefix}shrinks.bin HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        got = len(s.recv(65536))
        os.truncate(big, 1024 * 1024)
        while chunk := s.recv(1 << 20):  # the server closes: fewer bytes than announced
            got += len(chunk)
        s.close()
        assert got < size
        os.truncate(big, size)
    gw.wait_log(r'\[error\] .*shrinks\.bin" was truncated while it was sent')
    assert "[alert]" not in gw.errors() and _file_fds(gw, big) == 0


def test_the_app_example_page_beside_its_websocket(
    wsgate: Callable[..., WsgateProcess], bg: Loop
) -> None:
    """examples/app.conf (the README's walk-through as applications deploy it): the page from
    ``root``, any other route falls back to it, the WebSocket on /ws/ beside it."""
    repo = Path(__file__).resolve().parents[2]
    up = bg.backend("echo", ok, websocket=True)
    text = (repo / "examples" / "app.conf").read_text()
    text = text.replace("listen 8020;", "listen 127.0.0.1:0;")
    text = text.replace("server 127.0.0.1:8010;", f"server 127.0.0.1:{up.port};")
    text = text.replace("root   examples/html;", f"root {repo}/examples/html;")
    text = re.sub(r"\n(pid|error_log) .*", "", text).replace("run/access.log", "logs/access.log")
    gw = wsgate(text)
    page = (repo / "examples" / "html" / "index.html").read_bytes()
    head, body = get(gw.port, "/")
    assert head.startswith("HTTP/1.1 200") and "Content-Type: text/html" in head
    assert body == page and "Cache-Control: max-age=3600" in head
    assert get(gw.port, "/some/route")[1] == page
    head, _ = get(
        gw.port,
        "/ws/",
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    )
    assert head.startswith("HTTP/1.1 101"), head


def test_send_timeout_closes_a_client_that_reads_nothing(
    wsgate: Callable[..., WsgateProcess], site: Path
) -> None:
    big = site / "huge.bin"
    big.touch()
    os.truncate(big, 64 * 1024 * 1024)
    gw = wsgate(conf(site, http="send_timeout 1s; error_log logs/error.log info;"))
    for prefix in ("/sf/", "/nosf/"):
        s = socket.create_connection((HOST, gw.port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET {prefix}huge.bin HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        mark = len(gw.errors())
        gw.wait_log(
            r"\[info\] .*client timed out \(110: Connection timed out\) while sending "
            r"response to client",
            start=mark,
        )
        s.close()
    deadline = time.monotonic() + 5
    while _file_fds(gw, big) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _file_fds(gw, big) == 0


def test_add_trailer_chunks_a_file(wsgate: Callable[..., WsgateProcess], site: Path) -> None:
    gw = wsgate(conf(site, f"location /tr/ {{ alias {site}/; add_trailer X-T $sent_http_etag; }}"))
    with socket.create_connection((HOST, gw.port), timeout=10) as s:
        s.sendall(b"GET /tr/a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head
    etag = re.search(rb'ETag: ("[^"]+")', head)
    assert etag is not None
    assert body == b"a\r\n0123456789\r\n0\r\nX-T: " + etag.group(1) + b"\r\n\r\n"
    # HTTP/1.0 gets the file as it is, with its length and no trailer.
    head10, body10 = request(gw.port, "GET /tr/a.txt HTTP/1.0\r\n\r\n")
    assert "Content-Length: 10" in head10 and body10 == b"0123456789"
