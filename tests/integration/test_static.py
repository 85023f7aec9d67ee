"""Static files through a real wsgate on loopback: the bytes (``sendfile`` on and off, ranges,
HEAD, conditional requests), index/autoindex/try_files with a proxied fallback, nginx's log
lines, path traversal attempts under ``root``, ``alias`` and regex aliases with captures,
symbolic links under each ``disable_symlinks`` mode, a client that goes away halfway through a
large file (the worker's descriptors counted before and after), a file removed or truncated
while it is sent, ``limit_rate`` on files (bytes, never durations), the accepted
``open_file_cache*``/``aio``/``directio``, and ``examples/app.conf`` (``make run``): its page
and the WebSocket the page opens, through one server."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.conftest import WsgateProcess
from tests.helpers import Peer, python_tool
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


ALIASES = """
    location /al {{ alias {site}/; }}
    location ~ ^/re/(.*)$ {{ alias {site}/dir/$1; }}
    location ~ ^/rx(.*)$ {{ alias {site}/$1; }}
"""


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/sf/../../secret.txt", 400),
        ("/sf/..%2f..%2fsecret.txt", 400),
        ("/sf/%2e%2e/%2E%2E/secret.txt", 400),
        ("/sf%2f..%2f..%2fsecret.txt", 400),
        ("/re/..%2f..%2f..%2fsecret.txt", 400),
        ("/re/%2e%2e/%2e%2e/%2e%2e/secret.txt", 400),
        # The alias without its slash: nginx opens SITE/../secret.txt; wsgate does not.
        ("/al../secret.txt", 403),
        ("/al..%2fsecret.txt", 403),
        ("/al%2e%2e/secret.txt", 403),
        # A capture that starts with "..": the same, through a regular expression's alias.
        ("/rx../secret.txt", 403),
        ("/rx..%2fsecret.txt", 403),
        ("/re/sub/..%2f..%2f..%2fsecret.txt", 400),
        ("/re/sub/%2e%2e/b.css", 200),  # stays inside the alias
    ],
)
def test_path_traversal_never_leaves_an_alias(
    wsgate: Callable[..., WsgateProcess], site: Path, target: str, status: int
) -> None:
    gw = wsgate(conf(site, ALIASES.format(site=site)))
    head, body = request(gw.port, f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}"), head
    assert b"secret" not in body
    if status == 403:
        gw.wait_log(r'\[error\] .*/secret\.txt" failed \(13: the name leaves ".*/site"\)')
    # The same locations serve what is inside them.
    assert get(gw.port, "/al/a.txt")[1] == b"0123456789"
    assert get(gw.port, "/re/b.css")[1] == b"b{}"
    assert get(gw.port, "/rx/dir/b.css")[1] == b"b{}"
    assert "[alert]" not in gw.errors()


def test_symlinks_per_disable_symlinks(wsgate: Callable[..., WsgateProcess], site: Path) -> None:
    """A link out of the root (a file and a directory), under each ``disable_symlinks``
    mode, and a root that is itself reached through a link (``from=$document_root``)."""
    tmp = site.parent
    os.symlink(tmp, site / "out")  # a directory link leaving the root
    os.symlink(site, tmp / "via")  # the root reached through a link
    gw = wsgate(
        conf(
            site,
            f"""
    location /off/ {{ alias {site}/; disable_symlinks off; }}
    location /on/ {{ alias {site}/; disable_symlinks on; }}
    location /owner/ {{ alias {site}/; disable_symlinks if_not_owner; }}
    location /via/ {{ alias {tmp}/via/; disable_symlinks on; }}
    location /from/ {{ alias {tmp}/via/; disable_symlinks on from=$document_root; }}
""",
        )
    )
    for prefix in ("/off/", "/on/", "/owner/", "/from/"):
        assert get(gw.port, prefix + "a.txt")[1] == b"0123456789", prefix
    # off (the default) follows links wherever they go, as nginx does.
    assert get(gw.port, "/off/link.txt")[1] == b"secret"
    assert get(gw.port, "/off/out/secret.txt")[1] == b"secret"
    for target in ("/on/link.txt", "/on/out/secret.txt", "/from/link.txt", "/via/a.txt"):
        head, body = get(gw.port, target)
        assert head.startswith("HTTP/1.1 403"), (target, head)
        assert b"secret" not in body
    assert re.search(r'\[error\] .*open\(\) ".*/site/link\.txt" failed \(40: ', gw.errors())
    # if_not_owner: followed while the link and its target have one owner.
    assert get(gw.port, "/owner/link.txt")[1] == b"secret"
    if os.geteuid() == 0:
        os.lchown(site / "link.txt", 65534, 65534)
        os.lchown(site / "out", 65534, 65534)
        for target in ("/owner/link.txt", "/owner/out/secret.txt"):
            head, body = get(gw.port, target)
            assert head.startswith("HTTP/1.1 403"), (target, head)
            assert b"secret" not in body
    assert "[alert]" not in gw.errors()


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


def _worker_fds(gw: WsgateProcess) -> int:
    return len(os.listdir(f"/proc/{gw.worker_pid}/fd"))


def _await_fds(gw: WsgateProcess, want: int, path: Path | None = None) -> int:
    """Wait (bounded) until the worker holds ``want`` descriptors and none on ``path``;
    returns the count last seen."""
    deadline = time.monotonic() + 10
    while True:
        now = _worker_fds(gw)
        if (now == want and (path is None or _file_fds(gw, path) == 0)) or (
            time.monotonic() > deadline
        ):
            return now
        time.sleep(0.02)


def test_client_gone_halfway_leaks_nothing(
    wsgate: Callable[..., WsgateProcess], site: Path
) -> None:
    big = site / "huge.bin"
    with open(big, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)  # sparse: 64 MiB the kernel cannot buffer at once
    gw = wsgate(
        conf(site, f"location /rate/ {{ alias {site}/; limit_rate 100k; limit_rate_after 1m; }}")
    )
    assert get(gw.port, "/a.txt")[0].startswith("HTTP/1.1 200")  # logs open, then the count
    gw.access_lines(1)
    before = _await_fds(gw, _worker_fds(gw))
    targets = ["/sf/huge.bin", "/nosf/huge.bin", "/rate/huge.bin", "/sf/huge.bin"]
    for i, target in enumerate(targets):
        s = socket.create_connection((HOST, gw.port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        extra = "Range: bytes=0-9,100-33554431\r\n" if i == 3 else ""  # multipart too
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 20")
        deadline = time.monotonic() + 5
        while _file_fds(gw, big) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _file_fds(gw, big) == 1
        assert _worker_fds(gw) >= before + 2  # the client's socket, the file (a dup)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # reset
        assert _await_fds(gw, before, big) == before, target
        assert _file_fds(gw, big) == 0
    # Each cut response logs the body bytes that went (combined format: ... "GET ..." STATUS
    # BYTES ...), never the whole file; 0 when the reset came before any body byte left.
    for line in gw.access_lines(1 + len(targets))[1:]:
        sent = int(line.split('"')[2].split()[1])
        assert 0 <= sent < 64 * 1024 * 1024, line
    assert "[alert]" not in gw.errors()
    head, _ = get(gw.port, "/a.txt")  # the worker goes on serving
    assert head.startswith("HTTP/1.1 200")


def test_file_removed_while_sent(wsgate: Callable[..., WsgateProcess], site: Path) -> None:
    """A file removed while it is sent: the open descriptor still reads it, so the client
    gets every byte (as from nginx), the removed file's descriptor is closed at the end,
    and the next request is a 404."""
    size = 64 * 1024 * 1024
    gw = wsgate(conf(site))
    for prefix in ("/sf/", "/nosf/"):
        gone = site / "gone.bin"
        with open(gone, "wb") as fh:
            fh.truncate(size)
        s = socket.create_connection((HOST, gw.port), timeout=10)
        s.sendall(f"GET {prefix}gone.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        gone.unlink()
        head, _, body = data.partition(b"\r\n\r\n")
        got = len(body)
        while chunk := s.recv(1 << 20):
            got += len(chunk)
        s.close()
        assert f"Content-Length: {size}".encode() in head and got == size
        deadline = time.monotonic() + 10
        while any(link.endswith("gone.bin (deleted)") for link in gw.fd_links()):
            assert time.monotonic() < deadline, gw.fd_links()
            time.sleep(0.02)
        assert get(gw.port, prefix + "gone.bin")[0].startswith("HTTP/1.1 404")
    assert "[alert]" not in gw.errors() and "truncated" not in gw.errors()


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
    wsgate: Callable[..., WsgateProcess],
) -> None:
    """examples/app.conf (``make run``, the README's walk-through as applications deploy it)
    in front of the walk-through's echo server: the page from ``root`` (any other route
    falls back to it), then the WebSocket the page's script opens, through the same server."""
    repo = Path(__file__).resolve().parents[2]
    with Peer(python_tool("wsgate.tools.echo", "--port", "0")) as echo:
        echo_port = echo.wait_listening()
        text = (repo / "examples" / "app.conf").read_text()
        text = text.replace("listen 8020;", "listen 127.0.0.1:0;")
        text = text.replace("server 127.0.0.1:8010;", f"server 127.0.0.1:{echo_port};")
        text = text.replace("root   examples/html;", f"root {repo}/examples/html;")
        text = re.sub(r"\n(pid|error_log) .*", "", text).replace(
            "run/access.log", "logs/access.log"
        )
        gw = wsgate(text)
        page = (repo / "examples" / "html" / "index.html").read_bytes()
        head, body = get(gw.port, "/")
        assert head.startswith("HTTP/1.1 200") and "Content-Type: text/html" in head
        assert body == page and "Cache-Control: max-age=3600" in head
        assert get(gw.port, "/some/route")[1] == page
        # The address the page's script connects to: ws://<the page's host>/ws/.
        m = re.search(rb"new WebSocket\(`ws://\$\{location\.host\}(/[^`]*)`\)", body)
        assert m is not None, body
        url = f"ws://{HOST}:{gw.port}{m.group(1).decode()}"
        with connect(url, origin=Origin(f"http://{HOST}:{gw.port}"), open_timeout=10) as ws:
            ws.send("Hello")
            assert ws.recv(timeout=10) == "Server received from client: Hello"
        echo.wait_for("Received from client: Hello")
    lines = gw.access_lines(3)
    assert '"GET / HTTP/1.1" 200 ' in lines[0] and '"GET /ws/ HTTP/1.1" 101 ' in lines[2]
    assert "[alert]" not in gw.errors()


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


def test_limit_rate_on_a_static_file(wsgate: Callable[..., WsgateProcess], site: Path) -> None:
    """``limit_rate``/``limit_rate_after`` on files (both sending paths): the first
    ``limit_rate_after`` bytes (the head counts, as nginx's ``c->sent``) come at once, then
    no more than the rate allows; a faster rate delivers every byte, ranges included, and
    ``$limit_rate`` is logged.  Bytes are asserted, never durations."""
    after = 64 * 1024
    gw = wsgate(
        conf(
            site,
            f"""
    location /slow/ {{ alias {site}/; limit_rate 1; limit_rate_after {after}; }}
    location /slowsf/ {{ alias {site}/; sendfile on; limit_rate 1; limit_rate_after 64k; }}
    location /fast/ {{ alias {site}/; sendfile on; limit_rate 16m; }}
    location /var/ {{ alias {site}/; set $limit_rate 8m; }}
""",
            http="log_format rate '$uri $limit_rate $body_bytes_sent'; "
            "access_log logs/access.log rate;",
        )
    )
    for prefix in ("/slow/", "/slowsf/"):
        with socket.create_connection((HOST, gw.port), timeout=10) as s:
            s.sendall(f"GET {prefix}big.bin HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            got = 0
            while got < after:  # arrives without waiting for the rate
                chunk = s.recv(1 << 20)
                assert chunk, got
                got += len(chunk)
            s.settimeout(0.5)
            try:
                while chunk := s.recv(1 << 20):
                    got += len(chunk)
            except TimeoutError:
                pass
            # At 1 byte a second, a few bytes beyond limit_rate_after at most.
            assert after <= got <= after + 64, (prefix, got)
    big = (site / "big.bin").read_bytes()
    assert get(gw.port, "/fast/big.bin")[1] == big
    assert get(gw.port, "/var/big.bin")[1] == big
    head, body = get(gw.port, "/fast/big.bin", "Range: bytes=1000-1999\r\n")
    assert head.startswith("HTTP/1.1 206") and body == big[1000:2000]
    lines = gw.access_lines(5)  # the slow ones are logged when their client is gone
    assert sorted(line for line in lines if not line.startswith("/slow")) == [
        "/fast/big.bin 16777216 1000",
        f"/fast/big.bin 16777216 {BIG}",
        f"/var/big.bin 8388608 {BIG}",
    ], lines
    assert sorted(line.rsplit(" ", 1)[0] for line in lines if line.startswith("/slow")) == [
        "/slow/big.bin 1",
        "/slowsf/big.bin 1",
    ], lines
    assert "[alert]" not in gw.errors()


def test_file_cache_and_io_directives_are_accepted(
    wsgate: Callable[..., WsgateProcess], site: Path
) -> None:
    """``open_file_cache*``, ``aio`` and ``directio`` are accepted with a ``[warn]`` and
    the reason docs/directives.md gives: every request opens and stats its file (a changed
    or removed file is seen at once), files go through the page cache and ``sendfile``."""
    gw = wsgate(
        conf(
            site,
            http="open_file_cache max=100 inactive=60s; open_file_cache_valid 60s; "
            "open_file_cache_min_uses 1; open_file_cache_errors on; "
            "aio threads; directio 4k; directio_alignment 512; sendfile on;",
        )
    )
    for name in (
        "open_file_cache",
        "open_file_cache_valid",
        "open_file_cache_min_uses",
        "open_file_cache_errors",
        "aio",
        "directio",
        "directio_alignment",
    ):
        assert f'[warn] "{name}" directive has no effect in wsgate and is ignored' in gw.stderr
    assert get(gw.port, "/big.bin")[1] == (site / "big.bin").read_bytes()  # over directio
    assert get(gw.port, "/a.txt")[1] == b"0123456789"
    (site / "a.txt").write_bytes(b"changed")
    assert get(gw.port, "/a.txt")[1] == b"changed"
    (site / "a.txt").unlink()
    assert get(gw.port, "/a.txt")[0].startswith("HTTP/1.1 404")
    table = (Path(__file__).resolve().parents[2] / "docs" / "directives.md").read_text()
    for reason in (
        "every request opens and stats its file",
        "files are sent by `sendfile` or `pread` on the loop's thread",
        "no O_DIRECT: files go through the page cache",
    ):
        assert reason in table
