"""nginx's command line and signals, against a real wsgate process."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedOK

from tests.conftest import WsgateProcess, start_wsgate

WSGATE = [sys.executable, "-m", "wsgate.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WSGATE, *args], capture_output=True, text=True, timeout=30, cwd=cwd)


def test_version_and_help() -> None:
    v = run("-v")
    assert v.returncode == 0 and v.stderr == "wsgate version: wsgate/0.1.0\n"
    big_v = run("-V")
    assert big_v.stderr.startswith("wsgate version: wsgate/0.1.0\n")
    assert "configure arguments:" in big_v.stderr
    built = importlib.util.find_spec("wsgate.proxy._frames") is not None
    scanner = "compiled" if built and not os.environ.get("WSGATE_PURE") else "pure Python"
    assert f"\nframe scanner: {scanner}" in big_v.stderr
    relayed = importlib.util.find_spec("wsgate.proxy._relay") is not None
    relay = "compiled" if relayed and not os.environ.get("WSGATE_PURE") else "the event loop's"
    assert f"\ntunnel relay: {relay}" in big_v.stderr
    split = importlib.util.find_spec("wsgate.http._heads") is not None
    splitter = "compiled" if split and not os.environ.get("WSGATE_PURE") else "pure Python"
    assert f"\nheader splitter: {splitter}" in big_v.stderr
    pure = subprocess.run(
        [*WSGATE, "-V"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "WSGATE_PURE": "1"},
    )
    assert "\nframe scanner: pure Python (WSGATE_PURE)\n" in pure.stderr
    assert "\ntunnel relay: the event loop's transports (WSGATE_PURE)\n" in pure.stderr
    assert "\nheader splitter: pure Python (WSGATE_PURE)\n" in pure.stderr
    h = run("-h")
    assert "-s signal" in h.stderr and h.returncode == 0
    bad = run("-x")
    assert bad.returncode == 1 and bad.stderr == 'wsgate: invalid option: "x"\n'


def test_t_ok_and_failed(tmp_path: Path) -> None:
    (tmp_path / "ok.conf").write_text("events {}\nhttp { server { listen 127.0.0.1:0; } }\n")
    ok = run("-p", str(tmp_path), "-c", "ok.conf", "-t")
    path = tmp_path / "ok.conf"
    assert ok.returncode == 0
    assert ok.stderr == (
        f"wsgate: the configuration file {path} syntax is ok\n"
        f"wsgate: configuration file {path} test is successful\n"
    )
    quiet = run("-p", str(tmp_path), "-c", "ok.conf", "-tq")
    assert quiet.returncode == 0 and quiet.stderr == ""
    dump = run("-p", str(tmp_path), "-c", "ok.conf", "-T")
    assert dump.stdout.startswith(f"# configuration file {path}:\nevents {{}}\n")
    (tmp_path / "bad.conf").write_text("events {}\nhttp {\n  foo;\n}\n")
    bad = run("-p", str(tmp_path), "-c", "bad.conf", "-t")
    assert bad.returncode == 1
    assert bad.stderr == (
        f'wsgate: [emerg] unknown directive "foo" in {tmp_path}/bad.conf:3\n'
        f"wsgate: configuration file {tmp_path}/bad.conf test failed\n"
    )


def test_g_directives_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "n.conf").write_text("worker_processes 1;\n")
    dup = run("-p", str(tmp_path), "-c", "n.conf", "-g", "worker_processes 2;", "-t")
    assert dup.returncode == 1
    assert f'"worker_processes" directive is duplicate in {tmp_path}/n.conf:1' in dup.stderr
    missing = run("-p", str(tmp_path), "-c", "absent.conf", "-t")
    assert missing.returncode == 1
    assert (
        f'open() "{tmp_path}/absent.conf" failed (2: No such file or directory)' in missing.stderr
    )


def test_signal_without_pid_file(tmp_path: Path) -> None:
    (tmp_path / "n.conf").write_text("events {}\n")
    res = run("-p", str(tmp_path), "-c", "n.conf", "-s", "reload")
    assert res.returncode == 1
    assert f'open() "{tmp_path}/logs/nginx.pid" failed (2: No such file or directory)' in res.stderr


def test_bind_failure_is_emerg_and_exit_1(tmp_path: Path) -> None:

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "n.conf").write_text(f"http {{ server {{ listen 127.0.0.1:{port}; }} }}\n")
        res = run("-p", str(tmp_path), "-c", "n.conf", "-g", "daemon off;")
    assert res.returncode == 1
    assert f"bind() to 127.0.0.1:{port} failed (98: Address already in use)" in res.stderr


async def _echo_server(handler_started: asyncio.Event | None = None) -> tuple[object, int]:
    async def echo(ws: ServerConnection) -> None:
        async for msg in ws:
            await ws.send(msg)

    server = await serve(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return server, port


WS_CONF = """
events {{}}
http {{
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream u {{ server 127.0.0.1:{port}; }}
  server {{ listen 127.0.0.1:0; {extra}
    location / {{ proxy_pass http://u; proxy_set_header Upgrade $http_upgrade;
                 proxy_set_header Connection $connection_upgrade; }} }}
}}
"""


def test_reload_keeps_tunnels_and_applies_new_config(tmp_path: Path) -> None:
    async def scenario() -> None:
        server, port = await _echo_server()
        gw = await asyncio.to_thread(
            start_wsgate, tmp_path / "gw", WS_CONF.format(port=port, extra="")
        )
        try:
            async with connect(f"ws://127.0.0.1:{gw.port}/") as ws:
                await ws.send("before")
                assert await ws.recv() == "before"
                # A broken configuration is refused and the old one keeps running.
                gw.conf.write_text("http { bogus; }")
                mark = len(gw.errors())
                gw.signal(signal.SIGHUP)
                await asyncio.to_thread(
                    gw.wait_log, r"\[emerg\] \d+#0: unknown directive \"bogus\"", 10.0, mark
                )
                await ws.send("still")
                assert await ws.recv() == "still"
                # A good one: new requests follow it, the open tunnel is untouched.
                gw.conf.write_text(
                    WS_CONF.format(port=port, extra='location = /new { return 200 "new config"; }')
                )
                mark = len(gw.errors())
                res = await asyncio.to_thread(
                    run, "-p", str(gw.prefix), "-c", "nginx.conf", "-s", "reload"
                )
                assert res.returncode == 0, res.stderr
                await asyncio.to_thread(gw.wait_log, r"reconfiguring", 10.0, mark)
                # The listener is kept (same socket, same port); the old worker retires once
                # the new one accepts.
                await asyncio.to_thread(gw.wait_log, r"gracefully shutting down", 10.0, mark)
                assert "listening on" not in gw.errors()[mark:]
                reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports[0])
                writer.write(b"GET /new HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                assert (await reader.read()).endswith(b"new config")
                writer.close()
                await ws.send("after")
                assert await ws.recv() == "after"
        finally:
            gw.stop()
            server.close()  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_quit_closes_listeners_and_ends_tunnels_with_1001(tmp_path: Path) -> None:
    """QUIT: the listener closes at once; the open tunnel gets a 1001 close frame (not a
    reset, not a wait for the client), then wsgate exits 0 and removes its pid file."""

    async def scenario() -> None:
        server, port = await _echo_server()
        gw = await asyncio.to_thread(
            start_wsgate, tmp_path / "gw", WS_CONF.format(port=port, extra="")
        )
        try:
            async with connect(f"ws://127.0.0.1:{gw.port}/") as ws:
                await ws.send("before quit")
                assert await ws.recv() == "before quit"
                gw.signal(signal.SIGQUIT)
                with pytest.raises(ConnectionClosedOK) as info:
                    await asyncio.wait_for(ws.recv(), 10)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1001
                assert info.value.sent is not None and info.value.sent.code == 1001
            code = await asyncio.to_thread(gw.proc.wait, 10)
            assert code == 0
            assert not gw.pid_file.exists()
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", gw.port)
        finally:
            gw.stop()
            server.close()  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_worker_shutdown_timeout_ends_tunnels(tmp_path: Path) -> None:
    async def scenario() -> None:
        server, port = await _echo_server()
        gw = await asyncio.to_thread(
            start_wsgate,
            tmp_path / "gw",
            "worker_shutdown_timeout 1s;\n" + WS_CONF.format(port=port, extra=""),
        )
        try:
            async with connect(f"ws://127.0.0.1:{gw.port}/") as ws:
                gw.signal(signal.SIGQUIT)
                code = await asyncio.to_thread(gw.proc.wait, 10)
                assert code == 0
                try:
                    await asyncio.wait_for(ws.recv(), 5)
                    raise AssertionError("tunnel still open")
                except Exception as exc:  # noqa: BLE001 - ConnectionClosed of either kind
                    assert "ConnectionClosed" in type(exc).__name__
        finally:
            gw.stop()
            server.close()  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_usr1_reopens_logs(wsgate: Callable[..., WsgateProcess]) -> None:
    gw = wsgate("events {}\nhttp { server { listen 127.0.0.1:0; return 204; } }\n")

    def hit() -> None:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            while s.recv(4096):
                pass

    hit()
    gw.access_lines(1)
    rotated = gw.access_log.with_name("access.log.1")
    os.rename(gw.access_log, rotated)
    mark = len(gw.errors())
    gw.signal(signal.SIGUSR1)
    gw.wait_log("reopening logs", 10.0, mark)
    hit()
    assert len(gw.access_lines(1)) == 1
    assert len(rotated.read_text().splitlines()) == 1


def test_term_stops_at_once(wsgate: Callable[..., WsgateProcess]) -> None:
    gw = wsgate("events {}\nhttp { server { listen 127.0.0.1:0; return 204; } }\n")
    assert gw.stop(signal.SIGTERM) == 0
    assert not gw.pid_file.exists()


def test_unopenable_access_log_is_emerg_at_start_and_refused_on_reload(tmp_path: Path) -> None:
    bad = "/dev/null/x/access.log"
    (tmp_path / "n.conf").write_text(
        f"http {{ access_log {bad}; server {{ listen 127.0.0.1:0; return 204; }} }}\n"
    )
    res = run("-p", str(tmp_path), "-c", "n.conf", "-g", "daemon off;")
    assert res.returncode == 1
    assert f'[emerg] open() "{bad}" failed (20: Not a directory)' in res.stderr

    gw = start_wsgate(tmp_path / "gw", "http { server { listen 127.0.0.1:0; return 204; } }\n")
    try:
        gw.conf.write_text(
            f"http {{ access_log {bad}; server {{ listen 127.0.0.1:0; return 204; }} }}\n"
        )
        mark = len(gw.errors())
        gw.signal(signal.SIGHUP)
        gw.wait_log(r'\[emerg\] \d+#0: open\(\) "/dev/null/x/access.log" failed', 10.0, mark)
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 204")
    finally:
        gw.stop()
