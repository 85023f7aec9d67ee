"""The proxy cache through a real wsgate: hit, miss and expiry, an entry that survives a
restart and a reload and is shared by two workers, a damaged file that is a miss, eviction
by ``max_size`` and ``min_free``, a client that goes away during a miss (no temporary file,
no descriptor left), and a WebSocket handshake that is never cached.  The rules themselves
are tested without sockets in tests/unit/test_cache_rules.py and test_cache_store.py."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import (
    HOST,
    Backend,
    Loop,
    Request,
    loop_fixture,
    wait_for,
    ws_handshake,
)

bg = pytest.fixture(loop_fixture)


def answer(backend: Backend, request: Request) -> bytes:
    """The path and how many requests the backend has had, with the path's caching fields
    (``?cc=...`` becomes Cache-Control)."""
    body = f"{request.path} #{len(backend.requests)}".encode()
    extra = b"" if "noranges" in request.path else b"Accept-Ranges: bytes\r\n"
    if "cc=" in request.path:
        extra += b"Cache-Control: " + request.path.split("cc=")[1].encode() + b"\r\n"
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


def conf(port: int, cache: Path, *, path_args: str = "", extra: str = "", top: str = "") -> str:
    return f"""
{top}
events {{}}
http {{
  access_log off;
  proxy_cache_path {cache} levels=1:2 keys_zone=one:1m {path_args};
  server {{
    listen 127.0.0.1:0 reuseport;
    location / {{
      proxy_pass http://127.0.0.1:{port};
      proxy_cache one;
      proxy_cache_valid 200 1m;
      add_header X-Cache $upstream_cache_status;
      add_header X-Worker $pid;
      {extra}
    }}
    location /ws {{
      proxy_pass http://127.0.0.1:{port};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection upgrade;
      proxy_cache one;
      proxy_cache_valid any 1m;
      proxy_cache_methods GET HEAD;
    }}
  }}
}}
"""


def fetch(port: int, path: str, extra: str = "") -> tuple[dict[str, str], bytes]:
    """One GET on a new connection: the response's fields (lowercased names) and body."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {"status": lines[0].split(" ")[1]}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return fields, body


def entries(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file() and not p.name.startswith(".")]


def temp_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*.tmp")]


def test_miss_hit_expired_and_not_cached(
    wsgate: Callable[..., WsgateProcess], bg: Loop, tmp_path: Path
) -> None:
    up = bg.backend("up", answer)
    cache = tmp_path / "cache"
    gw = wsgate(conf(up.port, cache))
    f, body = fetch(gw.port, "/a")
    assert (f["status"], f["x-cache"], body) == ("200", "MISS", b"/a #1")
    f, body = fetch(gw.port, "/a")
    assert (f["status"], f["x-cache"], body) == ("200", "HIT", b"/a #1")
    assert len(up.requests) == 1
    # A file named as nginx names it: levels=1:2 from the end of md5(key).
    (entry,) = entries(cache)
    assert entry.parent.name == entry.name[-3:-1] and entry.parent.parent.name == entry.name[-1]
    # no-store: not kept.
    for expect in ("MISS", "MISS"):
        f, _ = fetch(gw.port, "/b?cc=no-store")
        assert f["x-cache"] == expect
    # max-age=1: kept for a second, then EXPIRED and fetched again.
    f, body = fetch(gw.port, "/c?cc=max-age=1")
    assert (f["x-cache"], body) == ("MISS", b"/c?cc=max-age=1 #4")
    f, _ = fetch(gw.port, "/c?cc=max-age=1")
    assert f["x-cache"] == "HIT"
    time.sleep(2.1)  # the entry's time passes (a clock, not a readiness wait)
    f, body = fetch(gw.port, "/c?cc=max-age=1")
    assert (f["x-cache"], body) == ("EXPIRED", b"/c?cc=max-age=1 #5")
    f, body = fetch(gw.port, "/c?cc=max-age=1")
    assert (f["x-cache"], body) == ("HIT", b"/c?cc=max-age=1 #5")
    # A range of a cached response is cut from the file.
    f, body = fetch(gw.port, "/a", "Range: bytes=1-2\r\n")
    assert (f["status"], f["content-range"], body) == ("206", "bytes 1-2/5", b"a ")
    f, _ = fetch(gw.port, "/a")
    assert f["accept-ranges"] == "bytes"
    # A miss answers one range itself and still caches the whole response.
    f, body = fetch(gw.port, "/r", "Range: bytes=1-3\r\n")
    assert (f["status"], f["x-cache"], f["content-range"], body) == (
        "206",
        "MISS",
        "bytes 1-3/5",
        b"r #",
    )
    f, body = fetch(gw.port, "/r")
    assert (f["status"], f["x-cache"], body) == ("200", "HIT", b"/r #6")
    # Without the upstream's Accept-Ranges, a hit is sent whole (as nginx).
    fetch(gw.port, "/noranges")
    f, body = fetch(gw.port, "/noranges", "Range: bytes=1-2\r\n")
    assert (f["status"], f["x-cache"], body) == ("200", "HIT", b"/noranges #7")
    assert "accept-ranges" not in f
    assert temp_files(cache) == []


def test_survives_restart_and_reload(
    wsgate: Callable[..., WsgateProcess], bg: Loop, tmp_path: Path
) -> None:
    up = bg.backend("up", answer)
    cache = tmp_path / "cache"
    text = conf(up.port, cache)
    first = wsgate(text)
    assert fetch(first.port, "/r")[0]["x-cache"] == "MISS"
    first.stop()
    second = wsgate(text)
    f, body = fetch(second.port, "/r")
    assert (f["x-cache"], body) == ("HIT", b"/r #1")
    old = second.worker_pid
    second.signal(signal.SIGHUP)
    wait_for(lambda: old not in second.worker_pids() and second.worker_pids() != [], "reload")
    f, body = fetch(second.port, "/r")
    assert (f["x-cache"], body) == ("HIT", b"/r #1")
    assert len(up.requests) == 1


def test_shared_by_two_workers(
    wsgate: Callable[..., WsgateProcess], bg: Loop, tmp_path: Path
) -> None:
    """A miss in one worker is a hit in the other (listen ... reuseport spreads the
    connections over both)."""
    up = bg.backend("up", answer)
    gw = wsgate(conf(up.port, tmp_path / "cache", top="worker_processes 2;"))
    wait_for(lambda: len(gw.worker_pids()) == 2, "two workers")
    f, _ = fetch(gw.port, "/shared")
    assert f["x-cache"] == "MISS"
    filler = f["x-worker"]
    other = None
    for _ in range(500):
        f, body = fetch(gw.port, "/shared")
        if f["x-worker"] != filler:
            other = f
            break
    assert other is not None, "every connection went to one worker"
    assert (other["x-cache"], body) == ("HIT", b"/shared #1")
    assert len(up.requests) == 1


def test_damaged_file_is_a_miss(
    wsgate: Callable[..., WsgateProcess], bg: Loop, tmp_path: Path
) -> None:
    up = bg.backend("up", answer)
    cache = tmp_path / "cache"
    gw = wsgate(conf(up.port, cache))
    fetch(gw.port, "/d")
    for n, damage in enumerate(("truncate", "header", "body"), start=2):
        (entry,) = entries(cache)
        data = bytearray(entry.read_bytes())
        if damage == "truncate":
            data = data[:-2]
        elif damage == "header":
            data[12] ^= 0x55
        else:
            data[-1] ^= 0x55
        entry.write_bytes(bytes(data))
        f, body = fetch(gw.port, "/d")
        assert (f["status"], f["x-cache"], body) == ("200", "MISS", f"/d #{n}".encode()), damage
        f, body = fetch(gw.port, "/d")
        assert (f["x-cache"], body) == ("HIT", f"/d #{n}".encode()), damage
    gw.wait_log(r"\[crit\] .*cache file .* is damaged")
    assert "[alert]" not in gw.errors()


def test_max_size_evicts_least_recently_used(
    wsgate: Callable[..., WsgateProcess], bg: Loop, tmp_path: Path
) -> None:
    up = bg.backend("up", answer)
    cache = tmp_path / "cache"
    gw = wsgate(conf(up.port, cache, path_args="max_size=12k"))
    for i in range(6):
        fetch(gw.port, f"/m{i}")
    wait_for(lambda: len(entries(cache)) <= 3, "eviction to max_size", timeout=15)
    # The most recently used entry is still there.
    assert fetch(gw.port, "/m5")[0]["x-cache"] == "HIT"
    assert fetch(gw.port, "/m0")[0]["x-cache"] == "MISS"


def test_min_free_evicts(wsgate: Callable[..., WsgateProcess], bg: Loop, tmp_path: Path) -> None:
    """A ``min_free`` no file system has: every entry goes once the manager runs."""
    up = bg.backend("up", answer)
    cache = tmp_path / "cache"
    gw = wsgate(conf(up.port, cache, path_args="min_free=1000000g"))
    assert fetch(gw.port, "/f")[0]["x-cache"] == "MISS"
    wait_for(lambda: entries(cache) == [], "eviction for min_free", timeout=15)
    assert fetch(gw.port, "/f")[0]["x-cache"] == "MISS"


@pytest.fixture
def streaming_backend() -> Iterator[tuple[int, threading.Event]]:
    """A backend that sends a long body in pieces until its client goes away."""
    srv = socket.create_server((HOST, 0))
    gone, stop = threading.Event(), threading.Event()
    srv.settimeout(0.1)

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            with conn:
                if b"small" in conn.recv(65536):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n")
                    conn.sendall(b"Cache-Control: no-store\r\nConnection: close\r\n\r\nok")
                    continue
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
                try:
                    while True:
                        conn.sendall(b"x" * 65536)
                        time.sleep(0.01)
                except OSError:
                    gone.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1], gone
    finally:
        stop.set()
        thread.join(5)
        srv.close()


def test_client_gone_during_miss_leaves_nothing(
    wsgate: Callable[..., WsgateProcess],
    tmp_path: Path,
    streaming_backend: tuple[int, threading.Event],
) -> None:
    port, gone = streaming_backend
    cache = tmp_path / "cache"
    gw = wsgate(conf(port, cache))
    pid = gw.worker_pid
    assert fetch(gw.port, "/small")[1] == b"ok"  # what a first request opens, opened
    before = _fds(pid)
    with socket.create_connection((HOST, gw.port), timeout=10) as s:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        got = b""
        while len(got) < 300_000:
            chunk = s.recv(65536)
            assert chunk
            got += chunk
        wait_for(lambda: temp_files(cache) != [], "the temporary file")
    assert gone.wait(10), "the upstream connection stayed open"
    wait_for(lambda: temp_files(cache) == [], "the temporary file removed")
    assert entries(cache) == []
    try:
        wait_for(lambda: len(_fds(pid)) <= len(before), "descriptors released")
    except AssertionError:
        raise AssertionError(sorted(set(_fds(pid)) - set(before))) from None


def _fds(pid: int) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.append(f"{fd.name} {fd.readlink()}")
        except OSError:
            pass
    return out


def test_websocket_handshake_never_cached(
    wsgate: Callable[..., WsgateProcess], bg: Loop, tmp_path: Path
) -> None:
    up = bg.backend("up", answer, websocket=True)
    cache = tmp_path / "cache"
    gw = wsgate(conf(up.port, cache))
    for _ in range(2):
        s, data = ws_handshake(gw.port)
        s.close()
        assert data.startswith(b"HTTP/1.1 101 "), data
    wait_for(lambda: len(up.requests) == 2, "both handshakes upstream")
    assert entries(cache) == [] and temp_files(cache) == []


def test_lock_across_workers(
    wsgate: Callable[..., WsgateProcess], bg: Loop, tmp_path: Path
) -> None:
    """``proxy_cache_lock``: of requests for one new entry arriving together at two workers,
    one goes upstream; the others wait for it and get the entry (a HIT)."""

    def slow(backend: Backend, request: Request) -> bytes:
        time.sleep(1.0)  # the response takes a while: the others arrive meanwhile
        return answer(backend, request)

    up = bg.backend("up", slow)
    gw = wsgate(
        conf(up.port, tmp_path / "cache", top="worker_processes 2;", extra="proxy_cache_lock on;")
    )
    wait_for(lambda: len(gw.worker_pids()) == 2, "two workers")
    results: list[tuple[dict[str, str], bytes]] = []
    threads = [
        threading.Thread(target=lambda: results.append(fetch(gw.port, "/locked")))
        for _ in range(10)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert len(results) == 10
    assert {body for _, body in results} == {b"/locked #1"}
    assert sorted(f["x-cache"] for f, _ in results) == ["HIT"] * 9 + ["MISS"]
    assert len(up.requests) == 1
    # Both workers answered (reuseport spreads ten connections: all on one is 1 in 512).
    assert len({f["x-worker"] for f, _ in results}) == 2
