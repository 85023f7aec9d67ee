"""Request bodies through a real wsgate: ``proxy_request_buffering``, ``client_body_buffer_size``,
``client_body_in_file_only``, ``client_body_temp_path``, ``$request_body`` and
``$request_body_file`` (nginx's ``ngx_http_read_client_request_body``).

Upstreams are scripted servers on loopback (:mod:`tests.integration.loopback`); the temporary
directory is looked at from the upstream while it holds the request, and after the response.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import (
    Backend,
    Loop,
    Request,
    get,
    loop_fixture,
    ok,
    wait_for,
    ws_open,
)

Factory = Callable[..., WsgateProcess]

bg = pytest.fixture(loop_fixture)


def conf(port: int, temp: Path, location: str = "", upstream: str = "") -> str:
    return f"""
events {{}}
http {{
  {upstream}
  client_body_temp_path {temp} 1 2;
  server {{
    listen 127.0.0.1:0;
    location / {{
      client_body_buffer_size 1k;
      add_header X-Body "$request_body";
      add_header X-Body-File "$request_body_file";
      proxy_pass http://127.0.0.1:{port};
      {location}
    }}
  }}
}}
"""


def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.lower()] = value.strip()
    return int(lines[0].split()[1]), fields, body


def post(port: int, body: bytes, path: str = "/", method: str = "PUT") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


def files(temp: Path) -> list[str]:
    return sorted(str(p) for p in temp.rglob("*") if p.is_file())


def watching(temp: Path, seen: list[list[str]]) -> Callable[[Backend, Request], bytes]:
    """An upstream that notes the temporary files while it holds the request."""

    def respond(backend: Backend, request: Request) -> bytes:
        seen.append(files(temp))
        return ok(backend, request)

    return respond


def test_small_body_stays_in_memory(wsgate: Factory, bg: Loop, tmp_path: Path) -> None:
    temp = tmp_path / "body"
    seen: list[list[str]] = []
    up = bg.backend("up", watching(temp, seen))
    gw = wsgate(conf(up.port, temp))
    status, fields, _ = request(gw.port, post(gw.port, b"0123456789"))
    assert status == 200
    assert fields["x-body"] == "0123456789"
    assert "x-body-file" not in fields
    assert up.requests[0].body == b"0123456789"
    assert seen == [[]]


def test_body_at_the_memory_limit_and_over(wsgate: Factory, bg: Loop, tmp_path: Path) -> None:
    """A known length below 1k and a quarter has a buffer of its own (nginx's "size +=
    size >> 2"); one byte more goes to a file."""
    temp = tmp_path / "body"
    seen: list[list[str]] = []
    up = bg.backend("up", watching(temp, seen))
    gw = wsgate(conf(up.port, temp))
    _, fields, _ = request(gw.port, post(gw.port, b"a" * 1279))
    assert fields["x-body"] == "a" * 1279
    _, fields, _ = request(gw.port, post(gw.port, b"b" * 1280))
    assert "x-body" not in fields
    assert fields["x-body-file"].startswith(str(temp))
    assert seen[0] == [] and seen[1] == [fields["x-body-file"]]
    assert up.requests[1].body == b"b" * 1280


def test_big_body_goes_to_a_temporary_file_removed_after(
    wsgate: Factory, bg: Loop, tmp_path: Path
) -> None:
    temp = tmp_path / "body"
    seen: list[list[str]] = []
    up = bg.backend("up", watching(temp, seen))
    gw = wsgate(conf(up.port, temp))
    body = os.urandom(100_000)
    status, fields, _ = request(gw.port, post(gw.port, body))
    assert status == 200
    name = fields["x-body-file"]
    # levels 1:2: the directories are the file name's last characters.
    rel = os.path.relpath(name, temp).split("/")
    assert len(rel) == 3 and rel[0] == rel[2][-1] and rel[1] == rel[2][-3:-1]
    assert seen == [[name]]
    assert up.requests[0].body == body
    assert files(temp) == []
    assert f"a client request body is buffered to a temporary file {name}" in gw.errors()


@pytest.mark.parametrize(("mode", "kept"), [("on", True), ("clean", False)])
def test_client_body_in_file_only(
    wsgate: Factory, bg: Loop, tmp_path: Path, mode: str, kept: bool
) -> None:
    temp = tmp_path / "body"
    up = bg.backend("up")
    gw = wsgate(conf(up.port, temp, f"client_body_in_file_only {mode};"))
    _, fields, _ = request(gw.port, post(gw.port, b"tiny"))
    name = fields["x-body-file"]
    assert up.requests[0].body == b"tiny"
    if kept:
        assert Path(name).read_bytes() == b"tiny"
        assert files(temp) == [name]
    else:
        assert files(temp) == []


def test_chunked_body_is_sent_with_its_length(wsgate: Factory, bg: Loop, tmp_path: Path) -> None:
    temp = tmp_path / "body"
    up = bg.backend("up")
    gw = wsgate(conf(up.port, temp))
    raw = (
        b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    status, fields, _ = request(gw.port, raw)
    assert status == 200 and fields["x-body"] == "hello world"
    assert b"content-length: 11\r\n" in up.requests[0].head.lower()
    assert b"transfer-encoding" not in up.requests[0].head.lower()


def test_buffered_body_is_sent_again_to_the_next_upstream(
    wsgate: Factory, bg: Loop, tmp_path: Path
) -> None:
    temp = tmp_path / "body"
    drop = bg.backend("drop", drop_on_request=1)
    live = bg.backend("live")
    upstream = f"upstream u {{ server 127.0.0.1:{drop.port}; server 127.0.0.1:{live.port}; }}"
    gw = wsgate(conf(0, temp, upstream=upstream).replace("http://127.0.0.1:0", "http://u"))
    body = b"x" * 5000  # in a file
    status, _, reply = request(gw.port, post(gw.port, body))
    assert (status, reply) == (200, b"live")
    assert drop.requests[0].body == body and live.requests[0].body == body
    assert files(temp) == []


def test_unbuffered_body_reaches_the_upstream_before_its_end(
    wsgate: Factory, tmp_path: Path
) -> None:
    """``proxy_request_buffering off``: the upstream gets the first bytes while the client
    still holds the rest back (the client sends it only once the upstream has them)."""
    first = threading.Event()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    got = bytearray()

    def upstream() -> None:
        conn, _ = lsock.accept()
        with conn:
            conn.settimeout(5)
            while b"first" not in got:
                got.extend(conn.recv(65536))
            first.set()
            while not got.endswith(b"second"):
                got.extend(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    t = threading.Thread(target=upstream, daemon=True)
    t.start()
    temp = tmp_path / "body"
    gw = wsgate(conf(lsock.getsockname()[1], temp, "proxy_request_buffering off;"))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nfirst")
        assert first.wait(5), "the upstream got nothing before the body's end"
        s.sendall(b"second")
        data = b""
        while not data.endswith(b"ok"):
            chunk = s.recv(4096)
            assert chunk
            data += chunk
    t.join(5)
    lsock.close()
    assert data.startswith(b"HTTP/1.1 200 ")
    assert got.endswith(b"\r\n\r\nfirstsecond")


def test_client_reset_mid_body_leaves_no_file_nor_fd(
    wsgate: Factory, bg: Loop, tmp_path: Path
) -> None:
    temp = tmp_path / "body"
    up = bg.backend("up")
    gw = wsgate(conf(up.port, temp))
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    s.sendall(b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"z" * 50_000)
    wait_for(lambda: len(files(temp)) == 1, "the temporary file")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    wait_for(lambda: files(temp) == [], "the temporary file's removal")

    def fds_in_temp() -> list[str]:
        out = []
        for pid in gw.worker_pids():
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(str(temp)):
                    out.append(target)
        return out

    wait_for(lambda: fds_in_temp() == [], "the file's descriptor to close")
    assert up.requests == []
    assert "[alert]" not in gw.errors()


@pytest.mark.parametrize("chunked", [False, True])
def test_client_max_body_size_at_and_over(
    wsgate: Factory, bg: Loop, tmp_path: Path, chunked: bool
) -> None:
    temp = tmp_path / "body"
    up = bg.backend("up")
    gw = wsgate(conf(up.port, temp, "client_max_body_size 2k;"))
    for size, expected in ((2048, 200), (2049, 413)):
        body = b"m" * size
        if chunked:
            raw = (
                b"PUT / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (size, body)
            )
        else:
            raw = post(gw.port, body)
        assert request(gw.port, raw)[0] == expected
    assert [r.body for r in up.requests] == [b"m" * 2048]
    assert files(temp) == []


def test_websocket_handshake_is_untouched(wsgate: Factory, bg: Loop, tmp_path: Path) -> None:
    temp = tmp_path / "body"
    up = bg.backend("up", websocket=True)
    gw = wsgate(
        conf(
            up.port,
            temp,
            "proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade;",
        )
    )
    s = ws_open(gw.port)
    s.close()
    assert not temp.exists()
    assert up.requests[0].body == b""
    assert get(gw.port, body=b"q")[0] == 200
