"""Drains and rebalancing through a real wsgate: ``server ... drain``, ``upstream_control``'s
drain, undrain and rebalance, ``websocket_drain_time``, ``websocket_rebalance``, with one
and with two workers.

Backends are ``websockets`` echo servers that answer ``who`` with their name and record the
close code each tunnel got; clients are ``websockets`` clients.  Every wait is for an event
(a Close, a listing that says so), never a sleep for a timer.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import WsgateProcess, start_wsgate
from tests.integration.test_process_model import Backend, http_get, in_thread, run

pytestmark = pytest.mark.timeout(120)


def conf(
    backends: list[Backend],
    *,
    workers: int = 1,
    params: dict[str, str] | None = None,
    upstream: str = "",
    http: str = "",
    access: str = "allow 127.0.0.1; deny all;",
    gen: int = 0,
) -> str:
    params = params or {}
    servers = " ".join(f"server 127.0.0.1:{b.port} {params.get(b.name, '')};" for b in backends)
    return f"""
worker_processes {workers};
worker_rlimit_nofile 4096;
events {{ }}
http {{
  access_log off;
  {http}
  upstream u {{ {servers} {upstream} }}
  server {{ listen 127.0.0.1:0;
    location = /gen {{ return 200 "{gen} $pid"; }}
    location = /upstreams {{ upstream_control; {access} }}
    location / {{ proxy_pass http://u; proxy_http_version 1.1;
                 proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade;
                 proxy_set_header X-Worker $pid; }} }}
}}
"""


async def control(gw: WsgateProcess, query: str = "", method: str = "GET") -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        f"{method} /upstreams{'?' + query if query else ''} HTTP/1.1\r\nHost: t\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
    )
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


async def servers(gw: WsgateProcess) -> dict[str, dict[str, Any]]:
    status, body = await control(gw)
    assert status == 200, body
    return {s["server"]: s for s in body["upstreams"]["u"]["servers"]}


async def until(check: Any, what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def who(ws: ClientConnection) -> str:
    await ws.send("who")
    reply = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(reply, str)
    return reply.partition(":")[0]


async def open_on(port: int, n: int, path: str = "/c") -> list[tuple[ClientConnection, str]]:
    async def one(i: int) -> tuple[ClientConnection, str]:
        ws = await connect(f"ws://127.0.0.1:{port}{path}{i}", open_timeout=20)
        return ws, await who(ws)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def close_code(ws: ClientConnection, timeout: float = 30.0) -> int | None:
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), timeout)
    return info.value.rcvd.code if info.value.rcvd is not None else None


def addr(b: Backend) -> str:
    return f"127.0.0.1:{b.port}"


def no_alerts(gw: WsgateProcess) -> None:
    assert "[alert]" not in gw.errors() and "[emerg]" not in gw.errors(), gw.errors()


@asynccontextmanager
async def two_backends() -> AsyncIterator[tuple[Backend, Backend]]:
    """Backends ``a`` and ``b``, closed on the way out."""
    a, b = await Backend("a").start(), await Backend("b").start()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@asynccontextmanager
async def gateway(where: Path, text: str) -> AsyncIterator[WsgateProcess]:
    """A wsgate started on ``text`` in ``where``, stopped on the way out."""
    gw = await in_thread(start_wsgate, where, text)
    try:
        yield gw
    finally:
        gw.stop()


@asynccontextmanager
async def a_b_gateway(
    where: Path, **conf_args: Any
) -> AsyncIterator[tuple[Backend, Backend, WsgateProcess]]:
    """Backends a and b and a wsgate on ``conf([a, b], **conf_args)``."""
    async with two_backends() as (a, b), gateway(where, conf([a, b], **conf_args)) as gw:
        yield a, b, gw


async def act(gw: WsgateProcess, action: str, server: Backend, method: str = "GET") -> Any:
    """``action`` (drain, undrain) on ``server`` of upstream u; it must answer 200."""
    status, body = await control(gw, f"action={action}&upstream=u&server={addr(server)}", method)
    assert status == 200, body
    return body


def on(clients: list[tuple[ClientConnection, str]], name: str) -> list[ClientConnection]:
    return [ws for ws, n in clients if n == name]


def names(clients: list[tuple[ClientConnection, str]]) -> set[str]:
    return {name for _, name in clients}


async def all_get_1012(tunnels: list[ClientConnection], timeout: float = 30.0) -> None:
    codes = await asyncio.gather(*(close_code(ws, timeout) for ws in tunnels))
    assert codes == [1012] * len(tunnels)


async def outcome(ws: ClientConnection) -> int | None:
    """The close code ``ws`` gets within 8 s, or 0 when it stays open."""
    try:
        await asyncio.wait_for(ws.recv(), 8)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    except TimeoutError:
        return 0  # still open
    raise AssertionError("unexpected message")


async def close_all(*groups: Iterable[tuple[ClientConnection, str]]) -> None:
    for group in groups:
        for ws, _ in group:
            await ws.close()


# -- drain at run time -----------------------------------------------------------------------------
def test_drain_moves_tunnels_new_connections_avoid_it_undrain_restores(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with a_b_gateway(tmp_path / "gw", http="websocket_drain_time 1s;") as (a, b, gw):
            clients = await open_on(gw.port, 20)
            on_b, on_a = on(clients, "b"), on(clients, "a")
            assert on_a and on_b  # round robin: 10 each
            listing = await servers(gw)
            assert listing[addr(b)]["tunnels"] == len(on_b) and not listing[addr(b)]["draining"]

            body = await act(gw, "drain", b, "POST")
            assert {s["server"]: s["draining"] for s in body["upstreams"]["u"]["servers"]} == {
                addr(a): False,
                addr(b): True,
            }
            # Every tunnel on b gets 1012 "service restart"; its backend gets a Close too.
            await all_get_1012(on_b)
            gw.wait_log(
                rf"\[notice\] .*draining {len(on_b)} websocket tunnel\(s\) to {addr(b)} of "
                r'upstream "u" over 1\.0s'
            )

            async def b_closed() -> bool:
                return len(b.closes) >= len(on_b)

            await until(b_closed, "b's connections closed")
            assert set(b.closes.values()) == {1012}
            # The clients reconnect and land on a; new connections avoid b.
            again = await open_on(gw.port, len(on_b) + 6, "/r")
            assert names(again) == {"a"}
            # The tunnels on a were not touched.
            assert [await who(ws) for ws in on_a] == ["a"] * len(on_a)

            async def b_empty() -> bool:
                return (await servers(gw))[addr(b)]["tunnels"] == 0

            await until(b_empty, "no tunnel on b")

            await act(gw, "undrain", b)
            back = await open_on(gw.port, 6, "/u")
            assert "b" in names(back)
            await close_all(clients, again, back)
            no_alerts(gw)

    run(scenario())


def test_server_drain_parameter_keeps_new_connections_off(tmp_path: Path) -> None:
    """``server ... drain``: no new connection for it, under every balancing method."""

    async def scenario() -> None:
        async with two_backends() as (a, b):
            for method in (
                "",
                "least_conn;",
                "ip_hash;",
                "hash $uri;",
                "hash $uri consistent;",
                "random;",
            ):
                text = conf([a, b], params={"b": "drain"}, upstream=method)
                async with gateway(tmp_path / f"gw{len(method)}", text) as gw:
                    clients = await open_on(gw.port, 8)
                    assert names(clients) == {"a"}, method
                    listing = await servers(gw)
                    assert listing[addr(b)]["draining"] and listing[addr(b)]["tunnels"] == 0
                    await close_all(clients)
                    no_alerts(gw)

    run(scenario())


def test_drain_time_zero_closes_at_once_and_limits(tmp_path: Path) -> None:
    """``websocket_drain_time 0``: every tunnel of the server at once."""

    async def scenario() -> None:
        async with a_b_gateway(tmp_path / "gw", upstream="websocket_drain_time 0;") as (a, b, gw):
            clients = await open_on(gw.port, 10)
            await act(gw, "drain", b)
            await all_get_1012(on(clients, "b"), 5)
            await close_all(clients)

    run(scenario())


@pytest.mark.parametrize(
    ("directive", "error"),
    [
        ("websocket_drain_time -1s;", '"websocket_drain_time" directive invalid value'),
        ("websocket_drain_time 1x;", '"websocket_drain_time" directive invalid value'),
        ("websocket_rebalance 0/m;", 'invalid value "0/m" in "websocket_rebalance" directive'),
        ("websocket_rebalance 0%/m;", 'invalid value "0%/m" in "websocket_rebalance" directive'),
        ("websocket_rebalance 10%;", 'invalid value "10%" in "websocket_rebalance" directive'),
        ("websocket_rebalance on;", 'invalid value "on" in "websocket_rebalance" directive'),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, directive: str, error: str) -> None:
    conf_file = tmp_path / "nginx.conf"
    conf_file.write_text(f"events {{}} http {{ {directive} upstream u {{ server 127.0.0.1:1; }} }}")
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "wsgate.cli", "-t", "-p", str(tmp_path), "-c", "nginx.conf"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1 and error in out.stderr, out.stderr


# -- the endpoint ----------------------------------------------------------------------------------
def test_endpoint_errors_and_access(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = await Backend("a").start()
        denied_conf = conf([a], access="allow 127.0.0.2; deny all;")
        try:
            async with (
                gateway(tmp_path / "gw", conf([a])) as gw,
                gateway(tmp_path / "denied", denied_conf) as denied,
            ):
                status, _ = await control(denied)
                assert status == 403
                status, _ = await control(denied, f"action=drain&upstream=u&server={addr(a)}")
                assert status == 403
                assert not (await servers(gw))[addr(a)]["draining"]
                for query, code in (
                    ("upstream=nope", 404),
                    (f"action=drain&upstream=nope&server={addr(a)}", 404),
                    ("action=drain&upstream=u&server=127.0.0.1:1", 404),
                    ("action=drain&upstream=u", 400),
                    ("action=explode&upstream=u", 400),
                    ("action=rebalance&upstream=u", 400),  # websocket_rebalance off, no rate
                    ("action=rebalance&upstream=u&rate=0/m", 400),
                    ("action=rebalance&upstream=u&rate=fast", 400),
                    ("action=rebalance&upstream=u&rate=0.5/m", 200),
                    ("upstream=u", 200),
                ):
                    status, body = await control(gw, query)
                    assert status == code, (query, body)
                    if code != 200:
                        assert "error" in body
                status, _ = await control(gw, method="PUT")
                assert status == 405
                no_alerts(gw)
        finally:
            a.close()

    run(scenario())


# -- several workers, reloads ----------------------------------------------------------------------
def test_drain_reaches_both_workers(tmp_path: Path) -> None:
    async def scenario() -> None:
        http = "websocket_drain_time 1s;"
        async with a_b_gateway(tmp_path / "gw", workers=2, http=http) as (a, b, gw):
            clients: list[tuple[ClientConnection, str]] = []
            # Until tunnels to b are carried by both workers (the kernel picks the worker).
            for i in range(40):
                clients += await open_on(gw.port, 10, f"/w{i}-")
                if len(set(b.worker.values())) == 2:
                    break
            assert len(set(b.worker.values())) == 2, b.worker
            on_b = on(clients, "b")
            await act(gw, "drain", b)
            await all_get_1012(on_b)

            async def counted() -> bool:
                listing = await servers(gw)
                return listing[addr(b)]["tunnels"] == 0 and listing[addr(a)]["tunnels"] == len(
                    clients
                ) - len(on_b)

            await until(counted, "counts over both workers")
            # Both workers keep new connections off b.
            before = b.hits
            again = await open_on(gw.port, 30, "/n")
            assert names(again) == {"a"} and b.hits == before
            await close_all(clients, again)
            no_alerts(gw)

    run(scenario())


def test_reload_forgets_runtime_drain_and_applies_the_configured_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with a_b_gateway(tmp_path / "gw", http="websocket_drain_time 1s;") as (a, b, gw):
            await act(gw, "drain", a)
            assert (await servers(gw))[addr(a)]["draining"]
            clients = await open_on(gw.port, 6)
            assert names(clients) == {"b"}
            # Reload with b drained: a's run-time drain is forgotten, b's tunnels, held by
            # the retired worker, get their 1012.
            gw.conf.write_text(
                conf([a, b], params={"b": "drain"}, gen=1, http="websocket_drain_time 1s;")
            )
            gw.signal(signal.SIGHUP)

            async def reloaded() -> bool:
                return (await http_get(gw.port, "/gen")).startswith("1 ")

            await until(reloaded, "the new generation")
            await all_get_1012([ws for ws, _ in clients])
            listing = await servers(gw)
            assert not listing[addr(a)]["draining"] and listing[addr(b)]["draining"]
            again = await open_on(gw.port, 4, "/r")
            assert names(again) == {"a"}
            await close_all(again)
            no_alerts(gw)

    run(scenario())


def test_reload_adding_a_server_rebalances_the_excess(tmp_path: Path) -> None:
    """``websocket_rebalance``: a reload that adds b moves half of a's tunnels (the excess
    over a's share of two equal servers), no more."""

    async def scenario() -> None:
        http = "websocket_rebalance 30/m;"  # 10 of 20 tunnels: over 60*10/(30*20) = 1 s
        async with (
            two_backends() as (a, b),
            gateway(tmp_path / "gw", conf([a], http=http)) as gw,
        ):
            clients = await open_on(gw.port, 20)
            gw.conf.write_text(conf([a, b], http=http, gen=1))
            gw.signal(signal.SIGHUP)
            codes = await asyncio.gather(*(outcome(ws) for ws, _ in clients))
            assert sorted(codes) == [0] * 10 + [1012] * 10, codes
            gw.wait_log(r'rebalancing upstream "u": 10 of 20 websocket tunnel\(s\) over 1\.0s')
            moved = await open_on(gw.port, 10, "/m")
            assert "b" in names(moved)
            await close_all(clients, moved)
            no_alerts(gw)

    run(scenario())


def test_rebalance_command_moves_the_excess(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with a_b_gateway(tmp_path / "gw", params={"b": "drain"}, workers=2) as (a, b, gw):
            clients = await open_on(gw.port, 24)
            assert names(clients) == {"a"}
            await act(gw, "undrain", b)
            status, _ = await control(gw, "action=rebalance&upstream=u&rate=60/m")
            assert status == 200
            codes = await asyncio.gather(*(outcome(ws) for ws, _ in clients))
            # Each worker gives up the half of its own tunnels on a (rounded down).
            closed = codes.count(1012)
            assert closed in (11, 12) and codes.count(0) == 24 - closed, codes
            await close_all(clients)
            no_alerts(gw)

    run(scenario())


def test_drain_moves_an_rfc8441_tunnel(tmp_path: Path) -> None:
    """A WebSocket over an HTTP/2 stream is drained as an HTTP/1.1 one: a 1012 Close on it."""
    from tests.integration.test_http2 import Client as H2Client
    from tests.integration.test_rfc8441 import connect as h2_connect
    from tests.integration.test_rfc8441 import frame, receive, send

    async def scenario() -> None:
        a = await Backend("a").start()
        text = conf([a]).replace("listen 127.0.0.1:0;", "listen 127.0.0.1:0; http2 on;")
        text = text.replace("upstream u {", "websocket_drain_time 0; upstream u {")
        try:
            async with gateway(tmp_path / "gw", text) as gw:

                def h2_tunnel() -> tuple[H2Client, int]:
                    c = H2Client(gw.port)
                    sid = h2_connect(c, "/h2")
                    send(c, sid, frame(b"who", opcode=1))
                    assert receive(c, sid, 1) == [(1, b"a:who")]
                    return c, sid

                c, sid = await in_thread(h2_tunnel)
                assert (await servers(gw))[addr(a)]["tunnels"] == 1
                await act(gw, "drain", a)
                got = await in_thread(receive, c, sid, 2)
                assert got[1] == (8, (1012).to_bytes(2, "big") + b"service restart")
                c.close()
                no_alerts(gw)
        finally:
            a.close()

    run(scenario())


def test_resolve_adding_an_address_rebalances(tmp_path: Path) -> None:
    """``server NAME resolve`` with ``websocket_rebalance``: a new address takes the excess
    of the old one's tunnels (5 of 10 get a 1012), none of the others."""
    import select
    import socket
    import time

    from tests.integration.fake_dns import Records, start_dns, stop_dns
    from tests.integration.loopback import Loop, get, wait_for, ws_open
    from tests.integration.test_resolver import second_backend, upstream_conf

    bg = Loop()
    dns_ = start_dns(bg)
    try:
        b1 = bg.backend("b1", websocket=True)
        second_backend(bg, "b2", "127.0.0.2", b1.port)
        dns_.zone["name.example.net"] = Records(a=["127.0.0.1"])
        text = upstream_conf(dns_.port, b1.port).replace(
            "resolver_timeout 1s;", "resolver_timeout 1s; websocket_rebalance 60/m;"
        )
        gw = start_wsgate(tmp_path / "gw", text)
        try:
            wait_for(lambda: get(gw.port) == (200, b"b1"), "the first resolution")
            tunnels = [ws_open(gw.port) for _ in range(10)]
            wait_for(lambda: b1.open == 10, "ten tunnels on b1")
            dns_.zone["name.example.net"] = Records(a=["127.0.0.1", "127.0.0.2"])
            got: dict[socket.socket, bytes] = {}
            deadline = time.monotonic() + 15
            while len(got) < 5 and time.monotonic() < deadline:
                ready, _, _ = select.select([t for t in tunnels if t not in got], [], [], 0.5)
                for t in ready:
                    got[t] = t.recv(64)
            # Any more closes would come within the 0.5 s window and a tick of it.
            ready, _, _ = select.select([t for t in tunnels if t not in got], [], [], 2.0)
            close_1012 = b"\x88\x11" + (1012).to_bytes(2, "big") + b"service restart"
            assert list(got.values()) == [close_1012] * 5 and not ready, (got, ready)
            for s in tunnels:
                s.close()
            no_alerts(gw)
        finally:
            gw.stop()
    finally:
        stop_dns(bg, dns_)
        bg.close()
