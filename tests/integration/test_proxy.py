"""Plain HTTP proxying through a real wsgate: request rebuilding, bodies, keep-alive, routing.

The upstream is a small asyncio HTTP/1.1 server in a background thread that records each
request's raw head and body and answers with what the test asks for.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.conftest import WsgateProcess


@dataclass
class Seen:
    head: bytes
    body: bytes


@dataclass
class Upstream:
    """Records requests; answers each with ``respond(head) -> bytes`` (whole response)."""

    respond: Callable[[bytes], bytes]
    close_after: bool = False
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    ready: threading.Event = field(default_factory=threading.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                lower = head.lower()
                if b"content-length:" in lower:
                    n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(n)
                elif b"transfer-encoding: chunked" in lower:
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                        data = await reader.readexactly(size + 2)
                        body += data[:-2]
                        if size == 0:
                            break
                self.seen.append(Seen(head, body))
                writer.write(self.respond(head))
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self.stop = asyncio.Event()
            self.ready.set()
            await self.stop.wait()
            server.close()

        asyncio.run(main())


def ok(body: bytes = b"hello", extra: str = "") -> Callable[[bytes], bytes]:
    def respond(head: bytes) -> bytes:
        return (
            f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nServer: up\r\n"
            f"Date: x\r\nX-Up: 1\r\n{extra}\r\n"
        ).encode() + body

    return respond


@pytest.fixture
def upstream() -> Iterator[Callable[..., Upstream]]:
    made: list[tuple[Upstream, threading.Thread]] = []

    def factory(
        respond: Callable[[bytes], bytes] | None = None, close_after: bool = False
    ) -> Upstream:
        up = Upstream(respond or ok(), close_after)
        t = threading.Thread(target=up.run, daemon=True)
        t.start()
        assert up.ready.wait(5)
        made.append((up, t))
        return up

    yield factory
    for up, t in made:
        assert up.loop is not None
        up.loop.call_soon_threadsafe(up.stop.set)
        t.join(5)


def exchange(port: int, data: bytes, until_close: bool = False, timeout: float = 5.0) -> bytes:
    """Send ``data`` and read what comes back: until close, or one response with a body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_response(s, until_close)


def read_response(s: socket.socket, until_close: bool = False) -> bytes:
    buf = b""
    while True:
        if not until_close and b"\r\n\r\n" in buf:
            head, _, rest = buf.partition(b"\r\n\r\n")
            low = head.lower()
            if b"content-length:" in low:
                n = int(low.split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) >= n:
                    return buf
            elif b"transfer-encoding: chunked" in low:
                if rest.endswith(b"0\r\n\r\n"):
                    return buf
            elif head.startswith(b"HTTP/1.1 1") or head.split(b" ")[1] in (b"204", b"304"):
                return buf
        chunk = s.recv(65536)
        if not chunk:
            return buf
        buf += chunk


def conf(
    up_port: int, server_extra: str = "", location_extra: str = "", http_extra: str = ""
) -> str:
    return f"""
events {{}}
http {{
  {http_extra}
  upstream backend {{ server 127.0.0.1:{up_port}; }}
  server {{
    listen 127.0.0.1:0;
    {server_extra}
    location / {{ proxy_pass http://backend; {location_extra} }}
  }}
}}
"""


def test_request_is_rebuilt_for_the_upstream(
    wsgate: Callable[..., WsgateProcess], upstream: Callable[..., Upstream]
) -> None:
    up = upstream()
    gw = wsgate(
        conf(
            up.port,
            location_extra="proxy_set_header X-Real-IP $remote_addr;"
            " proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
            " proxy_set_header X-Empty '';",
        )
    )
    reply = exchange(
        gw.port,
        b"GET /a/b?x=1 HTTP/1.1\r\nHost: front.test\r\n"
        b"Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: 5\r\n"
        b"Proxy-Authorization: basic\r\nTE: trailers\r\nX-Empty: client\r\n"
        b"X-Forwarded-For: 10.1.1.1\r\nX-Keep: yes\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert reply.endswith(b"\r\n\r\nhello")
    head = reply.split(b"\r\n\r\n")[0].decode()
    assert "Server: wsgate/0.1.0" in head and "Server: up" not in head and "Date: x" not in head
    assert "X-Up: 1" in head and "Connection: keep-alive" in head
    sent = up.seen[0].head.decode()
    lines = sent.split("\r\n")
    assert lines[0] == "GET /a/b?x=1 HTTP/1.1"
    assert lines[1] == "Host: backend"
    assert "X-Real-IP: 127.0.0.1" in lines
    assert "X-Forwarded-For: 10.1.1.1, 127.0.0.1" in lines
    assert "X-Keep: yes" in lines
    for hop in ("Connection", "Keep-Alive", "Proxy-Authorization", "TE", "X-Hop", "X-Empty"):
        assert not any(line.lower().startswith(hop.lower() + ":") for line in lines), hop


def test_keepalive_and_pipelining_in_order(
    wsgate: Callable[..., WsgateProcess], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(
        lambda head: (
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}".format(
                len(head.split(b" ")[1]), head.split(b" ")[1].decode()
            )
        ).encode()
    )
    gw = wsgate(conf(up.port))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        first = read_response(s)
        if not first.endswith(b"/two"):
            first += read_response(s)
        assert first.count(b"HTTP/1.1 200 OK") == 2
        assert first.index(b"/one") < first.index(b"/two")
        s.sendall(b"GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        third = read_response(s, until_close=True)
        assert third.endswith(b"/three") and b"Connection: close" in third
    assert [x.head.split(b" ")[1] for x in up.seen] == [b"/one", b"/two", b"/three"]


def test_pipe_variable_marks_pipelined_requests(
    wsgate: Callable[..., WsgateProcess], upstream: Callable[..., Upstream]
) -> None:
    """``$pipe`` is "p" for a request read from bytes that came behind the previous one
    (access_log_variables.t "pipe"), "." otherwise."""
    up = upstream()
    gw = wsgate(conf(up.port, server_extra="location /p { return 200 $pipe; }"))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /p HTTP/1.1\r\nHost: a\r\n\r\nGET /p HTTP/1.1\r\nHost: a\r\n\r\n")
        both = read_response(s)
        if both.count(b"HTTP/1.1 200") < 2:
            both += read_response(s)
        assert both.endswith(b"p") and b"\r\n\r\n." in both
        s.sendall(b"GET /p HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert read_response(s, until_close=True).endswith(b"\r\n\r\n.")


def test_expect_100_continue_with_an_empty_body_gets_its_100(
    wsgate: Callable[..., WsgateProcess], upstream: Callable[..., Upstream]
) -> None:
    """nginx tests ``Expect`` before the body's length: ``Content-Length: 0`` gets the
    interim 100 too (http_expect_100_continue.t); an HTTP/1.0 client never does."""
    up = upstream()
    gw = wsgate(conf(up.port))
    for version, want in (("1.1", True), ("1.0", False)):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(
                f"POST / HTTP/{version}\r\nHost: a\r\nExpect: 100-Continue\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            data = read_response(s, until_close=True)
        assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200") is want, data
        assert data.count(b" 100 Continue") == int(want)


def test_request_bodies_content_length_and_chunked(
    wsgate: Callable[..., WsgateProcess], upstream: Callable[..., Upstream]
) -> None:
    """Buffered (the default) a chunked body goes upstream with its length; with
    ``proxy_request_buffering off`` it is streamed chunked to the HTTP/1.1 upstream."""
    up = upstream()
    chunked = (
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    gw = wsgate(conf(up.port))
    exchange(gw.port, b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabcde")
    exchange(gw.port, chunked)
    assert up.seen[0].body == b"abcde" and b"Content-Length: 5" in up.seen[0].head
    assert up.seen[1].body == b"abcde" and b"Content-Length: 5" in up.seen[1].head
    assert b"Transfer-Encoding" not in up.seen[1].head
    off = wsgate(conf(up.port, location_extra="proxy_request_buffering off;"))
    exchange(off.port, chunked)
    assert up.seen[2].body == b"abcde"
    assert b"Transfer-Encoding: chunked" in up.seen[2].head


def test_body_over_client_max_body_size_is_413(
    wsgate: Callable[..., WsgateProcess], upstream: Callable[..., Upstream]
) -> None:
    up = upstream()
    gw = wsgate(conf(up.port, server_extra="client_max_body_size 10;"))
    at = exchange(gw.port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789")
    assert at.startswith(b"HTTP/1.1 200")
    over = exchange(
        gw.port,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n01234567890",
        until_close=True,
    )
    assert over.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    assert len(up.seen) == 1


def test_responses_chunked_close_delimited_and_head(
    wsgate: Callable[..., WsgateProcess], upstream: Callable[..., Upstream]
) -> None:
    def respond(head: bytes) -> bytes:
        if head.startswith(b"GET /chunked"):
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd"

    up = upstream(respond)
    gw = wsgate(conf(up.port))
    chunked = exchange(gw.port, b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in chunked and chunked.endswith(b"4\r\nabcd\r\n0\r\n\r\n")
    old = exchange(gw.port, b"GET /chunked HTTP/1.0\r\n\r\n", until_close=True)
    assert old.endswith(b"\r\n\r\nabcd") and b"Connection: close" in old
    head = exchange(
        gw.port, b"HEAD /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", until_close=True
    )
    assert head.endswith(b"\r\n\r\n") and b"Content-Length: 4" in head


def test_routing_servers_locations_return_and_redirect(
    wsgate: Callable[..., WsgateProcess], upstream: Callable[..., Upstream]
) -> None:
    up = upstream()
    gw = wsgate(f"""
events {{}}
http {{
  upstream backend {{ server 127.0.0.1:{up.port}; }}
  server {{ listen 127.0.0.1:0; server_name default.test; return 200 "default $host"; }}
  server {{
    listen 127.0.0.1:0;
    server_name a.test *.wild.test;
    location = /exact {{ return 200 "exact"; }}
    location /ws/ {{ proxy_pass http://backend/inner/; }}
    location ~ \\.php$ {{ return 200 "php $uri"; }}
    location ^~ /static/ {{ return 200 "static"; }}
    location / {{ return 404; }}
  }}
}}
""")
    p1, p2 = gw.ports

    def get(port: int, path: str, host: str) -> bytes:
        return exchange(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())

    assert get(p1, "/", "x").endswith(b"default x")
    assert get(p2, "/exact", "a.test").endswith(b"exact")
    assert get(p2, "/x/y.php", "b.wild.test").endswith(b"php /x/y.php")
    assert get(p2, "/static/a.php", "a.test").endswith(b"static")
    assert get(p2, "/nothing", "a.test").startswith(b"HTTP/1.1 404 Not Found")
    redirect = get(p2, "/ws?a=1", "a.test")
    assert redirect.startswith(b"HTTP/1.1 301 Moved Permanently")
    assert f"Location: http://a.test:{p2}/ws/?a=1".encode() in redirect
    assert get(p2, "/ws/a%20b/../c?q=1", "a.test").startswith(b"HTTP/1.1 200")
    assert up.seen[-1].head.startswith(b"GET /inner/c?q=1 HTTP/1.1\r\n")


def test_access_log_line(
    wsgate: Callable[..., WsgateProcess], upstream: Callable[..., Upstream]
) -> None:
    up = upstream()
    gw = wsgate(
        conf(
            up.port,
            http_extra="log_format t '$request|$status|$body_bytes_sent|"
            "$upstream_addr|$upstream_status|$host|$server_port|$args|$is_args';"
            " access_log logs/access.log t;",
        )
    )
    exchange(gw.port, b"GET /x?y=2 HTTP/1.1\r\nHost: h.test\r\n\r\n")
    (line,) = gw.access_lines(1)
    assert line == (f"GET /x?y=2 HTTP/1.1|200|5|127.0.0.1:{up.port}|200|h.test|{gw.port}|y=2|?")


def test_keepalive_requests_caps_a_connection(
    wsgate: Callable[..., WsgateProcess], upstream: Callable[..., Upstream]
) -> None:
    up = upstream()
    gw = wsgate(conf(up.port, server_extra="keepalive_requests 2;"))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert b"Connection: keep-alive" in read_response(s)
        s.sendall(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        second = read_response(s, until_close=True)
        assert b"Connection: close" in second and second.endswith(b"hello")


def test_keepalive_timeout_zero_disables_keepalive(
    wsgate: Callable[..., WsgateProcess], upstream: Callable[..., Upstream]
) -> None:
    up = upstream()
    gw = wsgate(conf(up.port, server_extra="keepalive_timeout 0;"))
    reply = exchange(gw.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", until_close=True)
    assert b"Connection: close" in reply and reply.endswith(b"hello")


def test_interim_1xx_is_not_relayed(
    wsgate: Callable[..., WsgateProcess], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(
        lambda head: (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
        )
    )
    gw = wsgate(conf(up.port))
    reply = exchange(gw.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"final")
    assert b"103" not in reply


def test_lone_101_is_relayed_without_body(
    wsgate: Callable[..., WsgateProcess], upstream: Callable[..., Upstream]
) -> None:
    """An upstream 101 to a request without Upgrade is no tunnel (nginx's rule): its head is
    relayed, then the connection closes with no byte of what followed it."""
    up = upstream(
        lambda head: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nrest", close_after=True
    )
    gw = wsgate(conf(up.port))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        s.settimeout(5)
        buf = read_response(s, until_close=True)
    assert buf.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and buf.endswith(b"\r\n\r\n")
    assert b"rest" not in buf
    lines = gw.access_lines(1)
    assert '"GET / HTTP/1.1" 101' in lines[0]


def test_ipv6_listener(
    wsgate: Callable[..., WsgateProcess], upstream: Callable[..., Upstream]
) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    up = upstream()
    gw = wsgate(conf(up.port).replace("listen 127.0.0.1:0;", "listen [::1]:0;"))
    with socket.create_connection(("::1", gw.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-T: 1\r\n\r\n")
        assert read_response(s).endswith(b"hello")
    assert b"X-Real" not in up.seen[0].head
