"""Core and listen directives through a real wsgate on loopback: ``listen unix:``,
``reuseport`` with two workers, ``so_keepalive``, lingering close, ``underscores_in_headers``
and ``ignore_invalid_headers``, ``error_log`` per location, ``merge_slashes``."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import unix_connect
from websockets.asyncio.server import ServerConnection, serve

from tests.conftest import WsgateProcess, start_wsgate
from tests.integration.loopback import HOST, Loop, get, loop_fixture, wait_for
from tests.integration.test_upgrade import children, gone
from wsgate.config.loader import load
from wsgate.server.listening import open_groups

Factory = Callable[..., WsgateProcess]

bg = pytest.fixture(loop_fixture)


def conf(port: int, server: str = "", location: str = "", http: str = "", main: str = "") -> str:
    return f"""
{main}
events {{}}
http {{
  log_format t '$remote_addr|$remote_port|$server_addr|$server_port|$uri|$status|$pid';
  access_log logs/access.log t;
  {http}
  server {{
    listen 127.0.0.1:0;
    {server}
    location / {{
      proxy_pass http://127.0.0.1:{port};
      {location}
    }}
  }}
}}
"""


# -- listen unix: ------------------------------------------------------------------------------
async def _echo(ws: ServerConnection) -> None:
    async for msg in ws:
        await ws.send(msg)


def test_unix_listener_serves_a_websocket_tunnel(tmp_path: Path) -> None:
    """nginx: ``$remote_addr`` of a UNIX-domain client is ``unix:``, ``$server_addr`` the
    listener's ``unix:/path``, neither has a port; the socket file is removed at exit."""
    path = tmp_path / "gw.sock"

    async def scenario() -> None:
        server = await serve(_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        text = conf(
            port,
            server=f"listen unix:{path};",
            location="proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade;",
        )
        gw = await asyncio.to_thread(start_wsgate, tmp_path / "gw", text)
        try:
            assert path.exists() and oct(path.stat().st_mode & 0o777) == oct(0o666)
            async with unix_connect(str(path), "ws://t/chat") as ws:
                await ws.send("over a unix socket")
                assert await ws.recv() == "over a unix socket"
            (line,) = await asyncio.to_thread(gw.access_lines, 1)
            assert line.startswith(f"unix:|-|unix:{path}|-|/chat|101|"), line
        finally:
            gw.stop()
            server.close()
        assert not path.exists(), "the socket file is removed at exit"

    asyncio.run(scenario())


def test_stale_unix_socket_file_is_not_removed_at_start(tmp_path: Path) -> None:
    """nginx removes the file when it exits, never at start: a stale one is ``bind()
    ... failed (98: Address already in use)``."""
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    with pytest.raises(AssertionError, match=r"bind\(\) to unix:.*stale\.sock failed \(98: "):
        start_wsgate(tmp_path / "gw", conf(1, server=f"listen unix:{path};"))
    assert path.exists()


# -- reuseport -------------------------------------------------------------------------------
def test_reuseport_gives_each_worker_its_socket(bg: Loop, wsgate: Factory) -> None:
    """``listen ... reuseport`` with two workers: one SO_REUSEPORT socket per worker, so the
    kernel spreads new connections over both (a connection is served by the worker whose
    socket took it), before and after a reload."""
    b = bg.backend("b")
    text = conf(b.port, main="worker_processes 2;").replace(
        "listen 127.0.0.1:0;", "listen 127.0.0.1:0 reuseport;"
    )
    gw = wsgate(text)
    wait_for(lambda: len(gw.worker_pids()) == 2, "two workers")

    def pids(count: int, start: int) -> set[str]:
        for _ in range(count):
            assert get(gw.port) == (200, b"b")
        lines = gw.access_lines(start + count)[start:]
        return {line.rsplit("|", 1)[1] for line in lines}

    # 64 connections from distinct ports all hashed to one socket: about 1 chance in 2**63.
    assert pids(64, 0) == {str(p) for p in gw.worker_pids()}
    old = set(gw.worker_pids())
    gw.signal(signal.SIGHUP)
    wait_for(lambda: not old & set(gw.worker_pids()), "the old workers to go", timeout=15)
    wait_for(lambda: len(gw.worker_pids()) == 2, "two new workers")
    assert pids(64, 64) == {str(p) for p in gw.worker_pids()}


# -- socket options --------------------------------------------------------------------------
def test_listen_socket_options_are_set(tmp_path: Path) -> None:
    """``so_keepalive=30m:15:7``, ``rcvbuf=``, ``sndbuf=``, ``backlog=``, ``deferred``,
    ``fastopen=`` on the listening socket; an accepted connection inherits the keep-alive
    probes."""
    (tmp_path / "nginx.conf").write_text(
        "events {} http { server { listen 127.0.0.1:0 so_keepalive=30m:15:7 rcvbuf=64k"
        " sndbuf=32k backlog=17 deferred fastopen=5; client_header_timeout 9s; } }"
    )
    config = load("nginx.conf", str(tmp_path))
    (group,) = open_groups(config, {}).values()
    sock = group.sock
    assert sock is not None
    try:
        tcp, sol = socket.IPPROTO_TCP, socket.SOL_SOCKET
        assert sock.getsockopt(sol, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(tcp, socket.TCP_KEEPIDLE) == 1800
        assert sock.getsockopt(tcp, socket.TCP_KEEPINTVL) == 15
        assert sock.getsockopt(tcp, socket.TCP_KEEPCNT) == 7
        assert sock.getsockopt(sol, socket.SO_RCVBUF) >= 64 * 1024  # Linux doubles it
        assert sock.getsockopt(sol, socket.SO_SNDBUF) >= 32 * 1024
        assert sock.getsockopt(tcp, socket.TCP_DEFER_ACCEPT) > 0
        assert sock.getsockopt(tcp, socket.TCP_FASTOPEN) == 5
        sock.setblocking(True)
        with socket.create_connection(sock.getsockname(), timeout=5) as client:
            client.sendall(b"x")  # deferred: accept() waits for data
            conn, _ = sock.accept()
            with conn:
                assert conn.getsockopt(sol, socket.SO_KEEPALIVE) == 1
                assert conn.getsockopt(tcp, socket.TCP_KEEPIDLE) == 1800
    finally:
        sock.close()
    (tmp_path / "nginx.conf").write_text(
        "events {} http { server { listen 127.0.0.1:0 so_keepalive=off; } }"
    )
    (group,) = open_groups(load("nginx.conf", str(tmp_path)), {}).values()
    assert group.sock is not None
    with group.sock:
        assert group.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


# -- lingering close -------------------------------------------------------------------------
def _refused_body(port: int) -> socket.socket:
    """A POST whose 20 MB body is refused with 413 after its first bytes."""
    s = socket.create_connection((HOST, port), timeout=10)
    s.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 20000000\r\n\r\n" + b"x" * 1000)
    data = b""
    while b"</html>" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 413 "), data
    return s


def test_lingering_close_drains_a_refused_body(bg: Loop, wsgate: Factory) -> None:
    """After the 413, wsgate shuts its side and reads what the client still sends, so the
    client can finish sending without a reset and then sees a clean end."""
    b = bg.backend("b")
    gw = wsgate(conf(b.port, server="client_max_body_size 1k;"))
    with _refused_body(gw.port) as s:
        for _ in range(200):  # 6.4 MB, far more than the socket buffers hold
            s.sendall(b"y" * 32768)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""  # EOF: no reset
    assert b.accepted == 0


def test_lingering_timeout_ends_a_silent_client(bg: Loop, wsgate: Factory) -> None:
    """A client that stops sending is closed after ``lingering_timeout``."""
    b = bg.backend("b")
    gw = wsgate(conf(b.port, server="client_max_body_size 1k; lingering_timeout 1s;"))
    with _refused_body(gw.port) as s:
        s.settimeout(20)
        assert s.recv(100) == b""


def test_lingering_close_off_closes_at_once(bg: Loop, wsgate: Factory) -> None:
    """``lingering_close off``: the connection is closed with the body's bytes unread, so
    the client's further sending meets a reset (nginx's documented risk)."""
    b = bg.backend("b")
    gw = wsgate(conf(b.port, server="client_max_body_size 1k; lingering_close off;"))
    with _refused_body(gw.port) as s:
        with pytest.raises(OSError):
            for _ in range(2000):
                s.sendall(b"y" * 32768)
            s.recv(100)
            raise AssertionError("no reset")


def test_discarded_body_keeps_the_connection(bg: Loop, wsgate: Factory) -> None:
    """A body nobody reads (``return``) is discarded and the next request is served."""
    b = bg.backend("b")
    gw = wsgate(conf(b.port, server="location = /r { return 200 r; }"))
    with socket.create_connection((HOST, gw.port), timeout=10) as s:
        s.sendall(b"POST /r HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
        data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 200 "), data
        s.sendall(b"hello" + b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"b"), rest


# -- header names ----------------------------------------------------------------------------
def _sent(bg_backend_requests: list[object]) -> str:
    return bg_backend_requests[-1].head.decode().lower()  # type: ignore[attr-defined]


def test_underscores_in_headers(bg: Loop, wsgate: Factory) -> None:
    """Off (default): a name with ``_`` is dropped and logged at info as nginx's "client
    sent invalid header line"; on: passed on."""
    b = bg.backend("b")
    gw = wsgate(conf(b.port, main="error_log logs/info.log info;"))
    assert get(gw.port, extra="X_Under: 1\r\nX-Fine: 2\r\n")[0] == 200
    head = _sent(b.requests)
    assert "x_under" not in head and "x-fine: 2" in head
    text = ""
    info = gw.prefix / "logs" / "info.log"
    wait_for(lambda: "invalid header line" in info.read_text(), "the info line")
    text = info.read_text()
    assert re.search(
        r'\[info\] .*client sent invalid header line: "X_Under: 1", client: 127\.0\.0\.1, '
        r'server: , request: "GET / HTTP/1\.1"',
        text,
    ), text
    gw2 = wsgate(conf(b.port, server="underscores_in_headers on;"))
    assert get(gw2.port, extra="X_Under: 1\r\n")[0] == 200
    assert "x_under: 1" in _sent(b.requests)


def test_ignore_invalid_headers_off_passes_them_on(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, http="ignore_invalid_headers off;"))
    assert get(gw.port, extra="X.Dot: 1\r\nX_Under: 2\r\n")[0] == 200
    head = _sent(b.requests)
    assert "x.dot: 1" in head and "x_under: 2" in head


# -- error_log per level ---------------------------------------------------------------------
def test_error_log_per_location(bg: Loop, wsgate: Factory) -> None:
    """Each level's ``error_log`` replaces the outer one for the requests it handles;
    several at one level all get the line; USR1 reopens them."""
    b = bg.backend("b")
    text = conf(
        b.port,
        server="error_log logs/server.log;"
        " location /a { deny all; error_log logs/a1.log; error_log logs/a2.log info; }",
        location="deny all;",
    )
    gw = wsgate(text)
    logs = gw.prefix / "logs"
    assert get(gw.port, "/a")[0] == 403
    assert get(gw.port, "/b")[0] == 403
    forbidden = "access forbidden by rule"
    wait_for(lambda: forbidden in (logs / "server.log").read_text(), "the server's line")
    wait_for(lambda: forbidden in (logs / "a2.log").read_text(), "the location's line")
    a1 = (logs / "a1.log").read_text()
    assert a1.count(forbidden) == 1 and '"GET /a HTTP/1.1"' in a1
    server_log = (logs / "server.log").read_text()
    assert server_log.count(forbidden) == 1 and '"GET /b HTTP/1.1"' in server_log
    assert forbidden not in gw.errors()
    os.rename(logs / "a1.log", logs / "a1.log.1")
    gw.signal(signal.SIGUSR1)
    gw.wait_log(r"reopening logs")
    deadline = time.monotonic() + 10
    # The worker reopens after the master: a request logs to the new file once it has.
    while forbidden not in ((logs / "a1.log").read_text() if (logs / "a1.log").exists() else ""):
        assert time.monotonic() < deadline, "a1.log was not reopened"
        assert get(gw.port, "/a")[0] == 403


def test_error_log_syslog_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r'"error_log syslog:\.\.\." is not supported'):
        start_wsgate(tmp_path, conf(1, location="error_log syslog:server=127.0.0.1;"))


# -- merge_slashes ---------------------------------------------------------------------------
def test_merge_slashes(bg: Loop, wsgate: Factory) -> None:
    """On (default): ``//a//b`` is ``/a/b`` for locations and ``$uri``; off: kept."""
    b = bg.backend("b")
    gw = wsgate(conf(b.port, server="location = /a/b { return 200 merged; }"))
    assert get(gw.port, "//a//b") == (200, b"merged")
    gw2 = wsgate(conf(b.port, server="merge_slashes off; location = /a/b { return 200 merged; }"))
    assert get(gw2.port, "//a//b") == (200, b"b")
    line = gw2.access_lines(1)[0]
    assert "|//a//b|200|" in line


# -- reset_timedout_connection ------------------------------------------------------------
def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_reset_timedout_connection(bg: Loop, wsgate: Factory) -> None:
    """``return 444`` closes without a response; with ``reset_timedout_connection on``
    the close is a reset (SO_LINGER 0)."""
    b = bg.backend("b")
    request = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"
    gw = wsgate(conf(b.port, server="location /x { return 444; }"))
    assert _exchange(gw.port, request) == b""
    gw2 = wsgate(conf(b.port, server="reset_timedout_connection on; location /x { return 444; }"))
    with pytest.raises(ConnectionResetError):
        _exchange(gw2.port, request)


# -- the USR2 upgrade hands the reuseport clones and unix: sockets over ----------------------
@pytest.mark.timeout(120)
def test_upgrade_hands_over_reuseport_and_unix_sockets(
    bg: Loop, wsgate: Factory, tmp_path: Path
) -> None:
    """USR2: the new master takes every socket, a worker's own ``reuseport`` socket
    included, so both new workers accept; the old master leaves the unix socket file to
    the new one, which removes it when it exits."""
    b = bg.backend("b")
    gw_sock = tmp_path / "u.sock"
    text = conf(b.port, main="worker_processes 2;").replace(
        "listen 127.0.0.1:0;", f"listen 127.0.0.1:0 reuseport; listen unix:{gw_sock};"
    )
    gw = wsgate(text)
    old = gw.proc.pid
    wait_for(lambda: len(gw.worker_pids()) == 2, "two workers")
    mark = len(gw.errors())
    os.kill(old, signal.SIGUSR2)
    m = gw.wait_log(r"started, pid (\d+)", 20, mark)
    new = int(m.group(1))
    # The descriptors passed: the socket, the unix one, and worker 1's clone ("INDEX+1").
    inherited = gw.wait_log(r'using inherited sockets from "([^"]*)"', 10, mark).group(1)
    assert re.fullmatch(
        rf"\d+,127\.0\.0\.1,0,\d+;\d+,unix:{re.escape(str(gw_sock))},0,0;"
        rf"\d+,127\.0\.0\.1,0,\d+\+1;",
        inherited,
    ), inherited
    try:
        wait_for(lambda: len(children(new)) == 2, "the new workers", timeout=20)
        os.kill(old, signal.SIGQUIT)
        gw.proc.wait(30)
        assert gw_sock.exists(), "the new master serves on it"
        new_workers = {str(p) for p in children(new)}
        start = len(gw.access_lines(0))
        for _ in range(64):
            assert get(gw.port) == (200, b"b")
        lines = gw.access_lines(start + 64)[start:]
        assert {line.rsplit("|", 1)[1] for line in lines} == new_workers
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(gw_sock))
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200 ")
    finally:
        if not gone(new):
            os.kill(new, signal.SIGTERM)
            wait_for(lambda: gone(new), "the new master to exit", timeout=20)
    assert not gw_sock.exists(), "removed by the master that ran on it last"


def test_reload_drops_a_unix_listener_and_checks_error_logs(
    bg: Loop, wsgate: Factory, tmp_path: Path
) -> None:
    """A reload that drops ``listen unix:`` removes its file (``[warn] deleting socket``);
    one whose location ``error_log`` cannot be opened is refused and the old one goes on."""
    b = bg.backend("b")
    sock = tmp_path / "r.sock"
    text = conf(b.port, server=f"listen unix:{sock};")
    gw = wsgate(text)
    assert sock.exists()
    (tmp_path / "file").write_text("not a directory")
    bad = tmp_path / "file" / "x.log"
    gw.conf.write_text(conf(b.port, location=f"error_log {bad};"))
    mark = len(gw.errors())
    gw.signal(signal.SIGHUP)
    gw.wait_log(rf'\[emerg\] .*open\(\) "{re.escape(str(bad))}" failed', start=mark)
    assert sock.exists() and get(gw.port) == (200, b"b")
    gw.conf.write_text(conf(b.port))
    mark = len(gw.errors())
    gw.signal(signal.SIGHUP)
    gw.wait_log(rf"\[warn\] .*deleting socket {re.escape(str(sock))}", start=mark)
    assert not sock.exists()
    assert get(gw.port) == (200, b"b")


def test_msie_padding_off(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, server="msie_padding off; location /d { deny all; }"))
    chrome = "User-Agent: Mozilla/5.0 Chrome/120.0\r\n"
    status, body = get(gw.port, "/d", extra=chrome)
    assert status == 403 and body.endswith(b"</html>\r\n") and b"padding" not in body
    gw2 = wsgate(conf(b.port, server="location /d { deny all; }"))
    assert b"friendly error page" in get(gw2.port, "/d", extra=chrome)[1]


def test_tcp_nodelay_off(bg: Loop, wsgate: Factory) -> None:
    """The client connection loses TCP_NODELAY once a ``tcp_nodelay off`` location has
    its request; a ``tcp_nodelay on`` one keeps it.  The flag is read on the worker's own
    socket (each end of a connection has its own)."""
    b = bg.backend("b")
    gw = wsgate(conf(b.port, server="location /off { tcp_nodelay off; return 200 off; }"))
    pid = gw.worker_pid
    with socket.create_connection((HOST, gw.port), timeout=10) as s:
        local = s.getsockname()
        s.sendall(b"GET /off HTTP/1.1\r\nHost: t\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        assert _server_nodelay(pid, local) == 0
    with socket.create_connection((HOST, gw.port), timeout=10) as s:
        local = s.getsockname()
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        assert _server_nodelay(pid, local) == 1


def _server_nodelay(pid: int, peer: tuple[str, int]) -> int:
    """TCP_NODELAY of the worker's socket connected to ``peer``, read through a copy of its
    descriptor (``pidfd_getfd``, Linux 5.6+)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except OSError:
                continue
            got = libc.syscall(438, pidfd, int(fd), 0)  # SYS_pidfd_getfd
            if got < 0:
                pytest.skip("pidfd_getfd is not allowed here")
            with socket.socket(fileno=got) as s:
                try:
                    if s.type == socket.SOCK_STREAM and s.getpeername() == peer:
                        return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                except OSError:
                    continue
    finally:
        os.close(pidfd)
    raise AssertionError(f"no socket connected to {peer}")


def test_unix_clients_meet_access_rules_and_realip(
    bg: Loop, wsgate: Factory, tmp_path: Path
) -> None:
    """``allow unix:`` matches a unix-domain client, and ``set_real_ip_from unix:`` trusts
    its X-Real-IP, as in nginx."""
    b = bg.backend("b")
    path = tmp_path / "a.sock"
    gw = wsgate(
        conf(
            b.port,
            server=f"listen unix:{path}; set_real_ip_from unix:;",
            location="allow unix:; allow 192.0.2.9; deny all;",
        )
    )

    def over_unix(extra: bytes = b"") -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(path))
            s.sendall(b"GET /u HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + extra + b"\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data

    assert over_unix().startswith(b"HTTP/1.1 200 ")
    assert over_unix(b"X-Real-IP: 192.0.2.9\r\n").startswith(b"HTTP/1.1 200 ")
    assert over_unix(b"X-Real-IP: 192.0.2.10\r\n").startswith(b"HTTP/1.1 403 ")
    assert get(gw.port)[0] == 403  # TCP from 127.0.0.1: no rule allows it
    lines = gw.access_lines(4)
    assert [line.split("|")[0] for line in lines] == [
        "unix:",
        "192.0.2.9",
        "192.0.2.10",
        "127.0.0.1",
    ]


# -- addresses of a connection accepted by the compiled transport ------------------------------
@pytest.mark.parametrize(
    ("listen", "target", "server_addr"),
    [
        # A wildcard's local address is read from the connection: the address dialled.
        ("0.0.0.0:0", "127.0.0.2", "127.0.0.2"),
        ("127.0.0.3:0", "127.0.0.3", "127.0.0.3"),
        ("[::1]:0", "::1", "::1"),
        ("[::]:0", "::1", "::1"),
    ],
)
def test_server_and_remote_addr_of_accepted_connections(
    bg: Loop, wsgate: Factory, listen: str, target: str, server_addr: str
) -> None:
    """``$remote_addr``/``$remote_port`` from ``accept4``, ``$server_addr``/``$server_port``
    the listener's when it is bound to one address, else the connection's own, for every
    connection (the compiled accept of fdrelay.py, and the loop's under WSGATE_PURE)."""
    if ":" in target and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    b = bg.backend("b")
    gw = wsgate(conf(b.port).replace("listen 127.0.0.1:0;", f"listen {listen};"))
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    ports = []
    for i in range(2):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.bind((target, 0))  # the client's address too (else the kernel picks 127.0.0.1)
            s.connect((target, gw.port))
            ports.append(s.getsockname()[1])
            s.sendall(b"GET /a%d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % i)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data
    lines = gw.access_lines(2)
    for i, line in enumerate(lines):
        remote, rport, saddr, sport, uri, status, _ = line.split("|")
        assert (remote, int(rport), saddr, int(sport)) == (target, ports[i], server_addr, gw.port)
        assert (uri, status) == (f"/a{i}", "200")
