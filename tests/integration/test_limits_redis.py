"""``limit_conn``/``limit_req`` zones kept in Redis (wsgate's ``redis=``), with real wsgate
processes as the nodes of a fleet and a real ``redis-server`` between them.

What holds: a cap is the fleet's (the third WebSocket of a user over two nodes is refused,
closing one frees the slot); ``limit_req``'s leaky bucket is one for the fleet; while Redis
is down a zone fails open (passes) or closed (the limit's status) with one ``[error]`` line
per interval and never an ``[alert]``; a Redis restarted empty has the counts again within
seconds (the reconcile rewrites them), and a killed node's slots vanish with its liveness key;
after Redis is back, the tunnels admitted over a cap meanwhile get a Close 1013, exactly the
excess, newest first (the trim script, then the nodes), and without a failure nothing is closed.
See :mod:`wsgate.limits_redis`, :mod:`wsgate.redis_link` and :mod:`wsgate.redis_shed` for the
design.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WsgateProcess
from tests.integration.loopback import Backend, Loop, get, loop_fixture, wait_for, ws_handshake
from tests.integration.redis_server import RedisServer, redis_server_or_skip
from tests.integration.test_limits import conf

Factory = Callable[..., WsgateProcess]

bg = pytest.fixture(loop_fixture)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = redis_server_or_skip(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def rs(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The module's Redis, running and empty for each test (a test may stop it)."""
    if redis_server.proc is None:
        redis_server.start()
    redis_server.client().flushall()
    yield redis_server
    if redis_server.proc is None:
        redis_server.start()


@pytest.fixture
def backend(bg: Loop) -> Backend:
    """A backend that answers WebSocket handshakes (and plain requests)."""
    return bg.backend("b", websocket=True)


CLOSED = " redis_fail=closed"


def conn_zone(rs: RedisServer, name: str = "users", fail: str = "") -> str:
    """A ``limit_conn_zone`` ``name`` keyed by ``$arg_user``, kept in ``rs``."""
    return f"limit_conn_zone $arg_user zone={name}:1m redis={rs.address}{fail};"


def req_zone(rs: RedisServer, rate: str, fail: str = "") -> str:
    """A ``limit_req_zone`` ``calls`` keyed by ``$arg_user`` at ``rate``, kept in ``rs``."""
    return f"limit_req_zone $arg_user zone=calls:1m rate={rate} redis={rs.address}{fail};"


def nodes(wsgate: Factory, port: int, zones: str, location: str, n: int = 2) -> list[WsgateProcess]:
    """``n`` wsgate nodes of one fleet, proxying to ``port`` with ``zones`` (``http``) and
    ``location``'s limits."""
    text = conf(port, zones, location)
    return [wsgate(text) for _ in range(n)]


def ws(port: int, user: str) -> tuple[int, socket.socket]:
    """A WebSocket handshake for ``user``: its status, and the socket (a tunnel on 101)."""
    s, data = ws_handshake(port, f"/ws?user={user}")
    status = int(data.split(b" ", 2)[1])
    if status != 101:
        s.close()
    return status, s


def held(rs: RedisServer, zone: str, key: str) -> int:
    """The slots the fleet holds for ``key`` in Redis (every owner's field)."""
    fields = rs.client().hgetall(f"wsgate:conn:{zone}:{key}")
    return sum(int(v) for v in fields.values())


held_in = held  # for the scenarios below, whose variables are called ``held``


def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    wait_for(check, what, timeout)


def lines(gw: WsgateProcess, pattern: str) -> list[str]:
    return re.findall(pattern, gw.errors())


# -- limit_conn ---------------------------------------------------------------------------------
def test_limit_conn_cap_holds_across_two_nodes(
    backend: Backend, wsgate: Factory, rs: RedisServer
) -> None:
    a, c = nodes(wsgate, backend.port, conn_zone(rs), "limit_conn users 2;")
    first, s1 = ws(a.port, "alice")
    second, s2 = ws(c.port, "alice")
    open_ = [s1, s2]
    try:
        assert (first, second) == (101, 101)
        until(lambda: held(rs, "users", "alice") == 2, "both slots counted in Redis")
        assert ws(a.port, "alice")[0] == 503  # the third of the fleet, on either node
        assert ws(c.port, "alice")[0] == 503
        a.wait_log(r'\[error\] .*limiting connections by zone "users"')
        c.wait_log(r'\[error\] .*limiting connections by zone "users"')
        status, s3 = ws(a.port, "bob")  # another key: its own count
        open_.append(s3)
        assert status == 101
        assert get(c.port, "/?user=")[0] == 200  # an empty key is not accounted
        s1.close()
        until(lambda: held(rs, "users", "alice") == 1, "node A to give the slot back")
        status, s4 = ws(c.port, "alice")
        open_.append(s4)
        assert status == 101
        assert held(rs, "users", "alice") == 2
    finally:
        for s in open_:
            s.close()
    until(lambda: held(rs, "users", "alice") == 0, "every slot given back")
    assert "[alert]" not in a.errors() + c.errors()
    a.stop()
    c.stop()
    assert rs.client().keys("wsgate:*") == []  # an exiting worker leaves nothing behind


def test_plain_requests_hold_a_slot_only_while_they_last(
    backend: Backend, wsgate: Factory, rs: RedisServer
) -> None:
    zone = conn_zone(rs, "one", CLOSED)
    a, c = nodes(wsgate, backend.port, zone, "limit_conn one 1; limit_conn_status 429;")
    for gw in (a, c, a, c):
        assert get(gw.port, "/?user=u")[0] == 200
        # Given back in Redis one round trip after the request ended.
        until(lambda: held(rs, "one", "u") == 0, "the request's slot given back")
    status, tunnel = ws(a.port, "u")
    try:
        assert status == 101
        assert get(c.port, "/?user=u")[0] == 429  # limit_conn_status, as for a local zone
    finally:
        tunnel.close()
    until(lambda: held(rs, "one", "u") == 0, "the tunnel's slot given back")
    assert get(c.port, "/?user=u")[0] == 200


def test_killed_node_slots_vanish_with_its_liveness_key(
    backend: Backend, wsgate: Factory, rs: RedisServer
) -> None:
    a, c = nodes(wsgate, backend.port, conn_zone(rs), "limit_conn users 1;")
    status, tunnel = ws(c.port, "carol")
    got: list[socket.socket] = []

    def taken() -> bool:
        status, s = ws(a.port, "carol")
        if status == 101:
            got.append(s)
        return status == 101

    try:
        assert status == 101
        assert not taken()
        # The node dies whole (master first, so that nothing reaps and logs the worker): no
        # release, no rewrite; only its liveness key's TTL ends its slot.
        worker = c.worker_pid
        os.kill(c.proc.pid, signal.SIGKILL)
        os.kill(worker, signal.SIGKILL)
        started = time.monotonic()
        until(taken, "the dead owner's slot to vanish", 15)
        assert time.monotonic() - started >= 2  # not before its liveness key expired
    finally:
        tunnel.close()
        for s in got:
            s.close()


# -- limit_req ----------------------------------------------------------------------------------
def test_limit_req_bucket_is_shared_across_nodes(
    bg: Loop, wsgate: Factory, rs: RedisServer
) -> None:
    b = bg.backend("b")
    a, c = nodes(wsgate, b.port, req_zone(rs, "1r/m"), "limit_req zone=calls burst=2 nodelay;")
    codes = [get(gw.port, "/?user=dave")[0] for gw in (a, c, a, c)]
    assert codes == [200, 200, 200, 503]  # one, then the burst of 2, over both nodes
    c.wait_log(r'\[error\] .*limiting requests, excess: [23]\.\d{3} by zone "calls"')
    assert get(a.port, "/?user=erin")[0] == 200  # another key
    assert len(b.requests) == 4


def test_limit_req_delay_is_computed_from_the_fleet_excess(
    bg: Loop, wsgate: Factory, rs: RedisServer
) -> None:
    b = bg.backend("b")
    a, c = nodes(wsgate, b.port, req_zone(rs, "2r/s"), "limit_req zone=calls burst=1;")
    assert get(a.port, "/?user=f")[0] == 200
    started = time.monotonic()
    assert get(c.port, "/?user=f")[0] == 200  # excess ~1 of burst 1: delayed ~500 ms
    assert time.monotonic() - started >= 0.2
    c.wait_log(r'\[warn\] .*delaying request, excess: 0\.[5-9]\d\d, by zone "calls"')


# -- Redis down, and back -----------------------------------------------------------------------
def test_redis_down_fails_open_logs_once_and_the_cap_comes_back(
    backend: Backend, wsgate: Factory, rs: RedisServer
) -> None:
    limits = "limit_conn users 1; limit_req zone=calls burst=100 nodelay;"
    (gw,) = nodes(wsgate, backend.port, f"{conn_zone(rs)} {req_zone(rs, '1r/m')}", limits, n=1)
    rs.stop()
    tunnels = []
    try:
        # Over more than two retry intervals (a tunnel every 250 ms): the link is tried
        # again, fails again, and the zone still logs one line (LOG_EVERY is 10 s).
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            status, s = ws(gw.port, "gina")
            assert status == 101  # failing open: passes, uncounted
            tunnels.append(s)
            time.sleep(0.25)  # pacing, not waiting for anything
        assert len(tunnels) >= 2
        unreachable = r'redis limit_conn zone "users" at unix:\S+ unreachable: .*, failing open'
        gw.wait_log(r"\[error\] .*" + unreachable)
        gw.wait_log(r'\[error\] .*redis limit_req zone "calls" at unix:\S+ unreachable')
        assert len(lines(gw, unreachable)) == 1
        rs.start()  # empty: the reconcile writes what the node holds
        until(lambda: held(rs, "users", "gina") == len(tunnels), "the counts rewritten", 5)
        assert ws(gw.port, "gina")[0] == 503  # the cap holds again
        gw.wait_log(r'\[notice\] .*redis limit_conn zone "users" at unix:\S+ reachable again')
    finally:
        for s in tunnels:
            s.close()
    until(lambda: held(rs, "users", "gina") == 0, "the slots given back after the outage")
    assert "[alert]" not in gw.errors()


def test_redis_down_fails_closed_with_the_limit_status(
    backend: Backend, wsgate: Factory, rs: RedisServer
) -> None:
    zones = f"{conn_zone(rs, fail=CLOSED)} {req_zone(rs, '10r/s', CLOSED)}"
    limits = "limit_conn users 5; limit_req zone=calls burst=100 nodelay; limit_req_status 429;"
    (gw,) = nodes(wsgate, backend.port, zones, limits, n=1)
    assert get(gw.port, "/?user=h")[0] == 200
    rs.stop()
    assert get(gw.port, "/?user=h")[0] == 429  # limit_req runs first: its status
    assert get(gw.port, "/?user=")[0] == 200  # no key: no zone asked
    gw.wait_log(r'\[error\] .*redis limit_req zone "calls" at unix:\S+ unreachable: .*closed')
    assert "limiting requests" not in gw.errors()  # the zone's own line only
    rs.start()
    until(lambda: get(gw.port, "/?user=h")[0] == 200, "Redis to be used again", 5)
    status, tunnel = ws(gw.port, "h")
    tunnel.close()
    assert status == 101
    gw.wait_log(r'\[notice\] .*redis limit_req zone "calls" at unix:\S+ reachable again')
    assert "[alert]" not in gw.errors()


def test_limit_conn_fails_closed_while_redis_is_down(
    backend: Backend, wsgate: Factory, rs: RedisServer
) -> None:
    (gw,) = nodes(wsgate, backend.port, conn_zone(rs, fail=CLOSED), "limit_conn users 5;", n=1)
    rs.stop()
    assert ws(gw.port, "i")[0] == 503
    assert get(gw.port, "/?user=i")[0] == 503
    gw.wait_log(r'\[error\] .*redis limit_conn zone "users" at unix:\S+ unreachable: .*closed')
    assert "limiting connections" not in gw.errors()


def test_redis_restart_with_tunnels_open_the_cap_recovers(
    backend: Backend, wsgate: Factory, rs: RedisServer
) -> None:
    a, c = nodes(wsgate, backend.port, conn_zone(rs), "limit_conn users 2;")
    (s1, t1), (s2, t2) = ws(a.port, "jo"), ws(c.port, "jo")
    try:
        assert (s1, s2) == (101, 101)
        rs.stop()
        rs.start()  # same socket, no data
        assert held(rs, "users", "jo") == 0
        until(lambda: held(rs, "users", "jo") == 2, "both nodes to rewrite their counts", 5)
        assert ws(a.port, "jo")[0] == 503
        assert ws(c.port, "jo")[0] == 503
    finally:
        t1.close()
        t2.close()
    until(lambda: held(rs, "users", "jo") == 0, "the slots given back")


@pytest.fixture
def echo(bg: Loop) -> Iterator[Any]:
    """A ``websockets`` echo server on the test's loop that records each tunnel's close
    code by its path (``closes``)."""
    import asyncio

    from tests.integration.test_process_model import Backend as Echo

    server = asyncio.run_coroutine_threadsafe(Echo("e").start(), bg.loop).result(5)
    yield server

    async def stop() -> None:
        server.close()
        await server.server.wait_closed()

    asyncio.run_coroutine_threadsafe(stop(), bg.loop).result(10)


def open_ws(gw: WsgateProcess, user: str, n: int) -> Any:
    """A ``websockets`` (sync) client's tunnel for ``user`` through ``gw``, checked to echo;
    a refused handshake raises ``InvalidStatus``."""
    from websockets.sync.client import connect

    ws = connect(
        f"ws://127.0.0.1:{gw.port}/ws?user={user}&c={n}", open_timeout=5, close_timeout=2
    ).__enter__()  # the context manager's own entry (closed by the test: ws.close())
    try:
        assert echoes(ws)
    except BaseException:
        ws.close()
        raise
    return ws


def echoes(ws: Any) -> bool:
    ws.send("ping")
    return bool(ws.recv(timeout=5) == "ping")


def refused(gw: WsgateProcess, user: str) -> int:
    """The status of a handshake for ``user`` that must not open (0 if it did)."""
    from websockets.exceptions import InvalidStatus

    try:
        ws = open_ws(gw, user, 99)
    except InvalidStatus as exc:
        return int(exc.response.status_code)
    ws.close()
    return 0


def rounds(rs: RedisServer, n: int) -> None:
    """Wait until every worker's liveness key (``wsgate:owner:*``) was refreshed ``n``
    times: ``n`` reconcile rounds of each (a refresh is seen as its TTL going up)."""
    client = rs.client()
    owners = client.keys("wsgate:owner:*")
    assert owners
    last = {o: client.pttl(o) for o in owners}
    seen = dict.fromkeys(owners, 0)

    def check() -> bool:
        for o in owners:
            ttl = client.pttl(o)
            if ttl > last[o]:
                seen[o] += 1
            last[o] = ttl
        return all(v >= n for v in seen.values())

    until(check, f"{n} reconcile rounds of every worker", 3 * n + 5)


SHED_LINE = (
    r'\[warn\] .*closing (\d+) websocket tunnel\(s\) over the limit of zone "users" '
    r"after redis recovered"
)


def test_redis_restart_closes_the_tunnels_admitted_over_the_cap_with_1013(
    echo: Any, wsgate: Factory, rs: RedisServer
) -> None:
    """Issue 17: "the cap recovers within seconds of a Redis restart".  Redis stops; failing
    open, two nodes admit 4 tunnels of one user capped at 2; Redis comes back empty: within
    seconds exactly the 2 over the cap get a Close 1013 "try again later" (both ways), the
    node holding 3 closing its newest first; the other 2 stay open and echo; then a new
    opening gets 503, and after one closes a new one opens."""
    a, c = nodes(wsgate, echo.port, conn_zone(rs), "limit_conn users 2;")
    rs.stop()
    tunnels: list[Any] = []
    try:
        for n, gw in enumerate((a, a, c, a)):  # a holds 0, 1 and 3 (its newest)
            tunnels.append(open_ws(gw, "kim", n))  # failing open: all admitted
        rs.start()  # empty

        def closed() -> list[int]:
            return [n for n, ws in enumerate(tunnels) if ws.close_code is not None]

        until(lambda: len(closed()) >= 2, "the tunnels over the cap to be closed", 10)
        shed = closed()
        assert len(shed) == 2 and 3 in shed and 0 not in shed, shed
        for n in shed:
            assert (tunnels[n].close_code, tunnels[n].close_reason) == (1013, "try again later")
            until(lambda n=n: echo.closes.get(f"/ws?user=kim&c={n}") == 1013, "the upstream's 1013")
        until(lambda: held(rs, "users", "kim") == 2, "Redis to count the cap")
        rounds(rs, 4)  # the recovery window is over: nothing more is closed
        assert closed() == shed
        kept = [ws for n, ws in enumerate(tunnels) if n not in shed]
        assert all(echoes(ws) for ws in kept)
        assert refused(a, "kim") == 503 and refused(c, "kim") == 503
        logged = [int(n) for gw in (a, c) for n in re.findall(SHED_LINE, gw.errors())]
        assert sum(logged) == 2, logged
        kept[0].close()
        until(lambda: held(rs, "users", "kim") == 1, "the closed tunnel's slot given back")
        tunnels.append(open_ws(c, "kim", 4))  # room for one again
        assert refused(a, "kim") == 503
        assert all(echoes(ws) for ws in (kept[1], tunnels[-1]))
    finally:
        for ws in tunnels:
            ws.close()
    until(lambda: held(rs, "users", "kim") == 0, "every slot given back, once")
    assert "[alert]" not in a.errors() + c.errors()


def test_an_rfc8441_tunnel_over_the_cap_gets_1013_too(
    echo: Any, wsgate: Factory, rs: RedisServer
) -> None:
    """A WebSocket over an HTTP/2 stream holds its slot as an HTTP/1.1 one and is closed
    over the cap the same way: the newest of a user's two tunnels (cap 1) admitted while
    Redis was down is the RFC 8441 one, and it gets the Close 1013; the other stays."""
    from tests.integration.test_http2 import Client as H2Client
    from tests.integration.test_rfc8441 import connect as h2_connect
    from tests.integration.test_rfc8441 import frame, receive, send

    text = conf(echo.port, conn_zone(rs), "limit_conn users 1;")
    gw = wsgate(text.replace("listen 127.0.0.1:0;", "listen 127.0.0.1:0; http2 on;"))
    rs.stop()
    older = open_ws(gw, "ned", 0)
    c = H2Client(gw.port)
    try:
        sid = h2_connect(c, "/ws?user=ned&c=1")
        send(c, sid, frame(b"who", opcode=1))
        assert receive(c, sid, 1) == [(1, b"e:who")]
        rs.start()
        got = receive(c, sid, 2)  # blocks until the Close comes (the socket's timeout: 10 s)
        assert got[1] == (8, (1013).to_bytes(2, "big") + b"try again later")
        until(lambda: echo.closes.get("/ws?user=ned&c=1") == 1013, "the upstream's 1013")
        until(lambda: held(rs, "users", "ned") == 1, "Redis to count the cap")
        assert older.close_code is None and echoes(older)
        assert len(re.findall(SHED_LINE, gw.errors())) == 1
    finally:
        c.close()
        older.close()
    until(lambda: held(rs, "users", "ned") == 0, "every slot given back")


def test_nothing_is_closed_without_a_failure_or_within_the_cap(
    echo: Any, wsgate: Factory, rs: RedisServer
) -> None:
    """A normal run never closes a tunnel: a user at its cap over two nodes, refused over
    it, through several reconcile rounds.  A restart of Redis with every key within its
    limit (one opened while it was down) closes nothing either."""
    a, c = nodes(wsgate, echo.port, conn_zone(rs), "limit_conn users 2;")
    tunnels = [open_ws(a, "lou", 0), open_ws(c, "lou", 1)]
    try:
        assert refused(a, "lou") == 503 and refused(c, "lou") == 503
        rounds(rs, 4)
        rs.stop()
        tunnels.append(open_ws(a, "max", 2))  # failing open, within the cap
        rs.start()
        until(lambda: held(rs, "users", "lou") == 2, "the counts rewritten")
        rounds(rs, 5)  # longer than the recovery window
        assert all(ws.close_code is None and echoes(ws) for ws in tunnels)
        assert refused(c, "lou") == 503
    finally:
        for ws in tunnels:
            ws.close()
    assert "closing" not in a.errors() + c.errors()
    until(lambda: held(rs, "users", "lou") + held(rs, "users", "max") == 0, "slots given back")


def test_missing_package_or_bad_address_fails_the_load(tmp_path: Path) -> None:
    """``wsgate -t`` names the line (the package check itself is a unit test)."""
    import subprocess
    import sys

    (tmp_path / "nginx.conf").write_text(
        "events {}\nhttp {\n  limit_conn_zone $arg_u zone=z:1m redis=host:99999;\n}\n"
    )
    got = subprocess.run(
        [sys.executable, "-m", "wsgate.cli", "-t", "-p", str(tmp_path), "-c", "nginx.conf"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert got.returncode != 0
    assert 'invalid parameter "redis=host:99999": invalid port' in got.stderr
    assert "nginx.conf:3" in got.stderr


# -- the scripts and the link, without wsgate ---------------------------------------------------
def test_req_script_is_nginx_leaky_bucket_as_the_local_zone(rs: RedisServer) -> None:
    """The Lua script against :class:`wsgate.limits.ReqZone` over a random walk of lookups
    and accounts (the time injected, going back now and then): the same answers.  The local
    zone's pruning is kept out of it (Redis forgets a state by its TTL, in real time, once it
    is drained: no answer changes; a local zone prunes on its own clock)."""
    import random

    from wsgate.limits import ReqZone
    from wsgate.limits_redis import REQ_SCRIPT

    client = rs.client()
    rng = random.Random(17)
    for rate in (1000, 500, 16, 20000):  # 1r/s, 30r/m, 1r/m, 20r/s
        local = ReqZone("z", rate)
        now = 10**12
        for step in range(400):
            key = f"k{rng.randrange(3)}"
            now += rng.choice((0, 0, 1, 10, 50, 300, 1000, 2500, -20, -70000))
            burst = rng.choice((0, 1000, 3000))
            local.pruned = now
            if rng.random() < 0.2:
                want = local.account(key, now)
                got = client.eval(REQ_SCRIPT, 1, f"r{rate}:{key}", "account", rate, 0, 0, now)
                assert got == want, (rate, step)
            else:
                account = rng.random() < 0.7
                busy, excess = local.lookup(key, burst, now, account)
                reply = client.eval(
                    REQ_SCRIPT, 1, f"r{rate}:{key}", "lookup", rate, burst, int(account), now
                )
                assert (bool(reply[0]), reply[1]) == (busy, excess), (rate, step)


def test_acquire_script_drops_dead_owners_and_counts_live_ones(rs: RedisServer) -> None:
    from wsgate.limits_redis import CONN_ACQUIRE

    client = rs.client()
    client.hset("wsgate:conn:z:k", mapping={"dead": 5, "alive": 1})
    client.set("wsgate:owner:alive", 1, px=5000)

    def acquire(owner: str) -> int:
        keys = ("wsgate:conn:z:k", f"wsgate:owner:{owner}")
        return int(client.eval(CONN_ACQUIRE, 2, *keys, owner, 3, 5000, 10000, "wsgate:owner:"))

    assert acquire("me") == 1  # "dead" (no liveness key) is dropped: 1 + 1 of 3
    assert client.hgetall("wsgate:conn:z:k") == {b"alive": b"1", b"me": b"1"}
    assert acquire("me") == 1
    assert acquire("other") == 0  # 3 held: at the limit
    assert client.pttl("wsgate:conn:z:k") > 5000 and client.pttl("wsgate:owner:me") > 0


def test_trim_script_gives_back_the_excess_and_no_more(rs: RedisServer) -> None:
    """:data:`~wsgate.redis_shed.CONN_TRIM`: the live owners' total as the acquire sums it
    (dead owners dropped), this owner's field lowered at once by ``min(total - limit,
    mine)``; over random fields, once every owner has run it the key holds exactly its
    limit (or what it held, when under it): the fleet sheds its excess and not one more."""
    import random

    from wsgate.redis_shed import CONN_TRIM

    client = rs.client()
    name = "wsgate:conn:z:k"

    def trim(owner: str, limit: int) -> int:
        return int(client.eval(CONN_TRIM, 1, name, owner, limit, "wsgate:owner:"))

    def fields() -> dict[str, int]:
        return {k.decode(): int(v) for k, v in client.hgetall(name).items()}

    for owner in ("a", "b"):
        client.set(f"wsgate:owner:{owner}", 1, px=5000)
    client.hset(name, mapping={"a": 4, "b": 3, "dead": 9})
    assert trim("b", 2) == 3  # 7 live, 5 over: b gives back all it holds
    assert fields() == {"a": 4}  # b's field gone, and the dead owner's
    assert trim("a", 2) == 2  # then a only what is still over: 4 - 2
    assert fields() == {"a": 2}
    assert trim("a", 2) == 0 and trim("b", 2) == 0 and trim("a", 3) == 0
    assert fields() == {"a": 2}
    client.hset(name, "me", 2)  # an owner counts its own field without its liveness key
    assert trim("me", 3) == 1 and fields() == {"a": 2, "me": 1}

    rng = random.Random(13)
    for i in range(4):
        client.set(f"wsgate:owner:o{i}", 1, px=60000)
    for _ in range(200):
        client.delete(name)
        owners = {f"o{i}": rng.randrange(0, 6) for i in range(rng.randrange(1, 5))}
        client.hset(name, mapping={o: n for o, n in owners.items() if n} or {"o0": 0})
        limit = rng.randrange(1, 8)
        total = sum(owners.values())
        order = list(owners)
        rng.shuffle(order)
        given = {o: trim(o, limit) for o in order}
        assert all(0 <= given[o] <= owners[o] for o in owners), (owners, limit, given)
        left = fields()
        assert all(left.get(o, 0) == owners[o] - given[o] for o in owners)
        assert sum(left.values()) == min(total, limit), (owners, limit, given)


class FakeTunnel:
    """What :meth:`wsgate.redis_shed.Recovery.shed` uses of a tunnel: ``going_away(code)``."""

    def __init__(self) -> None:
        self.codes: list[int] = []

    def going_away(self, code: int) -> None:
        self.codes.append(code)


class Log:
    """An error log that keeps its lines (``[level] message``)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def log(self, level: str, message: str) -> None:
        self.lines.append(f"[{level}] {message}")


def _redis_nodes(
    rs: RedisServer, name: str, n: int, first: int = 1
) -> tuple[list[Any], list[list[str]], Any]:
    """``n`` :class:`~wsgate.limits_redis.RedisZones` (owners ``n<first>``...), each one's
    error-log lines (``[level] message``), and the spec of a zone ``name`` against ``rs``."""
    import asyncio

    from wsgate.config.model import LimitConnZone
    from wsgate.config.model import RedisServer as Address
    from wsgate.limits_redis import RedisZones

    spec = LimitConnZone(name, None, 1 << 20, None, Address(path=rs.socket))  # type: ignore[arg-type]
    logs: list[list[str]] = []
    nodes = []
    loop = asyncio.get_running_loop()
    for i in range(n):
        lines: list[str] = []
        logs.append(lines)
        nodes.append(RedisZones(Log(lines), loop.time, owner=f"n{first + i}"))  # type: ignore[arg-type]
    return nodes, logs, spec


def _window_over(zone: Any) -> bool:
    """``zone``'s link has no recovery window, and the last round's trims were answered
    (the round ends when its trims are made, before they are sent)."""
    link = zone.link
    return not link.recovery.shed_rounds and not zone.to_trim and link._writer is None


async def _poll(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_recovery_closes_the_excess_newest_first_and_releases_once(rs: RedisServer) -> None:
    """Two owners fail open on one key while Redis is down (3 slots and 1, limit 2); Redis
    comes back empty: within the window exactly 2 tunnels get 1013, the first owner's
    newest first, the oldest never; the counts (here and in Redis) are the limit at once,
    and the shed slots' releases when their tunnels end change nothing more."""
    import asyncio

    from wsgate.redis_shed import RedisSlot

    async def scenario() -> None:
        nodes, logs, spec = _redis_nodes(rs, "shed", 2)
        zones = [node.conn_zone(spec) for node in nodes]
        rs.stop()
        held: list[tuple[RedisSlot, FakeTunnel]] = []
        for zone in (zones[0], zones[0], zones[0], zones[1]):
            slots: list[RedisSlot] = []
            assert await zone.acquire_shared("k", 2, slots.append) is True  # failing open
            slots[0].tunnel = tunnel = FakeTunnel()  # type: ignore[assignment]
            held.append((slots[0], tunnel))
        assert all(zone.suspect == {"k"} for zone in zones)
        rs.start()  # empty

        def closed() -> list[int]:
            return [i for i, (_, t) in enumerate(held) if t.codes]

        await _poll(lambda: len(closed()) == 2, "the excess to be closed")
        assert all(held[i][1].codes == [1013] for i in closed())
        assert 2 in closed() and 0 not in closed()  # n1's newest first, its oldest never
        assert sum(zone.counts.get("k", 0) for zone in zones) == 2  # given back at once
        await _poll(lambda: held_in(rs, "shed", "k") == 2, "Redis to hold the limit")
        await _poll(lambda: all(_window_over(z) for z in zones), "the window to end", 15)
        assert len(closed()) == 2  # and not one more
        for i in closed():  # the tunnels end: released once, given back already
            slot, _ = held[i]
            slot.release("k")
            slot.release("k")
        assert sum(zone.counts.get("k", 0) for zone in zones) == 2
        assert sum(len(zone.holders.get("k", ())) for zone in zones) == 2
        lines = [line for node_lines in logs for line in node_lines if "closing" in line]
        assert sum(int(line.split()[2]) for line in lines) == 2, lines
        assert all(
            re.fullmatch(
                r'\[warn\] closing \d websocket tunnel\(s\) over the limit of zone "shed" '
                r"after redis recovered",
                line,
            )
            for line in lines
        ), lines
        assert not any("[alert]" in line for node_lines in logs for line in node_lines)
        for i in (0, 1, 2, 3):
            held[i][0].release("k")
        await _poll(lambda: held_in(rs, "shed", "k") == 0, "every slot given back")
        for node in nodes:
            await node.close()

    asyncio.run(scenario())


def test_a_request_not_yet_a_tunnel_is_not_cut_and_the_next_round_retries(
    rs: RedisServer,
) -> None:
    """The newest holder over the limit is a request whose 101 has not come: it is not
    cut (its slot is written back), an older tunnel is not cut in its place, and once it
    is a tunnel the next round closes it."""
    import asyncio

    from wsgate.redis_shed import RedisSlot

    async def scenario() -> None:
        nodes, logs, spec = _redis_nodes(rs, "pending", 1)
        zone = nodes[0].conn_zone(spec)
        rs.stop()
        slots: list[RedisSlot] = []
        for _ in range(3):
            assert await zone.acquire_shared("k", 1, slots.append) is True
        first, second = FakeTunnel(), FakeTunnel()
        slots[0].tunnel, slots[1].tunnel = first, second  # type: ignore[assignment]
        rs.start()
        await _poll(lambda: bool(second.codes), "the newest tunnel to be closed")
        assert second.codes == [1013] and not first.codes  # slots[2] is not a tunnel yet
        assert zone.counts["k"] == 2
        await _poll(lambda: held_in(rs, "pending", "k") == 2, "the field written back")
        third = FakeTunnel()
        slots[2].tunnel = third  # type: ignore[assignment]  # its 101 came
        await _poll(lambda: bool(third.codes), "the next round to close it")
        assert third.codes == [1013] and not first.codes and zone.counts["k"] == 1
        await _poll(lambda: held_in(rs, "pending", "k") == 1, "Redis to hold the limit")
        for slot in slots:
            slot.release("k")
        await _poll(lambda: held_in(rs, "pending", "k") == 0, "every slot given back")
        await nodes[0].close()
        assert not any("[alert]" in line for line in logs[0])

    asyncio.run(scenario())


def test_a_worker_first_connecting_just_after_a_restart_sheds_what_it_took_over(
    rs: RedisServer,
) -> None:
    """Redis restarts empty; before the first owner's counts (2 of 2) are written again, a
    worker that never talked to Redis before takes 2 slots: it saw nothing to refuse.  Its
    first connection opened a window, so once the counts are back it closes those 2 (it
    cannot tell a Redis restarted a moment ago from one that was not); the first owner's
    tunnels stay."""
    import asyncio

    from wsgate.redis_shed import RedisSlot

    async def scenario() -> None:
        nodes, logs, spec = _redis_nodes(rs, "fresh", 1)
        first = nodes[0].conn_zone(spec)
        old: list[RedisSlot] = []
        for _ in range(2):
            assert await first.acquire_shared("k", 2, old.append) is True
            old[-1].tunnel = FakeTunnel()  # type: ignore[assignment]
        await _poll(lambda: _window_over(first), "its own first window")
        link = first.link
        assert link._timer is not None
        link._timer.cancel()  # its rewrite must come after the newcomer's acquires
        link._timer = None
        rs.stop()
        rs.start()  # empty
        newcomer, more_logs, _ = _redis_nodes(rs, "fresh", 1, first=2)
        second = newcomer[0].conn_zone(spec)  # owner n2, never connected
        new: list[RedisSlot] = []
        got = await asyncio.gather(*(second.acquire_shared("k", 2, new.append) for _ in "ab"))
        assert got == [True, True]  # Redis had nothing to count yet
        for slot in new:
            slot.tunnel = FakeTunnel()  # type: ignore[assignment]
        link.arm(0)  # the first owner's next rewrite: 2 more

        def codes(slots: list[RedisSlot]) -> list[list[int]]:
            return [t.codes for t in (s.tunnel for s in slots) if t]  # type: ignore[attr-defined]

        await _poll(lambda: codes(new) == [[1013], [1013]], "the newcomer's 2 to be closed")
        await _poll(lambda: held_in(rs, "fresh", "k") == 2, "Redis to count the limit")
        assert codes(old) == [[], []] and second.counts.get("k", 0) == 0
        for slot in old + new:
            slot.release("k")
        await _poll(lambda: held_in(rs, "fresh", "k") == 0, "every slot given back")
        await nodes[0].close()
        await newcomer[0].close()
        assert not any("[alert]" in line for line in logs[0] + more_logs[0])

    asyncio.run(scenario())


def test_no_failure_nothing_is_closed_and_nothing_trimmed_after_the_first_window(
    rs: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run without a Redis failure: a worker's first connection opens a window (a Redis
    restarted a moment before cannot be told from one that was not), whose trims find the
    key within its limit; then, over several reconcile rounds with the key at its limit and
    acquires refused, no trim is sent, and no tunnel is ever closed."""
    import asyncio

    from wsgate.limits_redis import RedisConnZone
    from wsgate.redis_link import Link
    from wsgate.redis_shed import SHED_ROUNDS, Recovery, RedisSlot

    trimmed: list[list[str]] = []
    ticks = [0]
    trim, tick = Recovery.trim, Link._tick

    def spy_trim(self: Recovery, zone: RedisConnZone, keys: list[str]) -> Any:
        trimmed.append(keys)
        return trim(self, zone, keys)

    def spy_tick(self: Link) -> None:
        ticks[0] += 1
        tick(self)

    monkeypatch.setattr(Recovery, "trim", spy_trim)
    monkeypatch.setattr(Link, "_tick", spy_tick)

    async def scenario() -> None:
        nodes, logs, spec = _redis_nodes(rs, "calm", 2)
        zones = [node.conn_zone(spec) for node in nodes]
        slots: list[RedisSlot] = []
        tunnels: list[FakeTunnel] = []
        for zone in (zones[0], zones[1]):
            assert await zone.acquire_shared("k", 2, slots.append) is True
            slots[-1].tunnel = tunnel = FakeTunnel()  # type: ignore[assignment]
            tunnels.append(tunnel)
            assert zone.link.recovery.shed_rounds == SHED_ROUNDS and zone.suspect == {"k"}
        await _poll(lambda: all(_window_over(z) for z in zones), "the first windows")
        assert trimmed and not any(t.codes for t in tunnels)  # trimmed to nothing
        trimmed.clear()
        seen = ticks[0]
        await _poll(lambda: ticks[0] >= seen + 8, "four more reconcile rounds on each node")
        for zone in zones:
            assert await zone.acquire_shared("k", 2, slots.append) is not True
            assert zone.link.recovery.shed_rounds == 0 and not zone.suspect
        assert trimmed == [] and held_in(rs, "calm", "k") == 2, (trimmed, logs)
        assert not any(t.codes for t in tunnels)
        for slot in slots:
            slot.release("k")
        for node in nodes:
            await node.close()
        assert logs == [[], []]

    asyncio.run(scenario())


def test_two_workers_never_exceed_the_cap_and_counts_stay_exact(rs: RedisServer) -> None:
    """Two owners (two workers, two nodes) racing on one key through their links: the
    slots held never exceed the limit, and once all are given back Redis holds nothing,
    even with the reconcile timer rewriting the counts meanwhile and a SCRIPT FLUSH."""
    import asyncio
    import random

    from wsgate.redis_shed import RedisSlot

    rng = random.Random(5)

    async def scenario() -> tuple[int, int, list[list[str]]]:
        loop = asyncio.get_running_loop()
        nodes, logs, spec = _redis_nodes(rs, "race", 2)
        zones = [node.conn_zone(spec) for node in nodes]
        most = refused = 0

        async def client(n: int) -> None:
            nonlocal most, refused
            for i in range(20):
                zone = zones[(n + i) % 2]
                slots: list[RedisSlot] = []
                got = await zone.acquire_shared("k", 3, slots.append)
                if got is not True:
                    refused += 1
                    await asyncio.sleep(0)
                    continue
                most = max(most, sum(z.counts.get("k", 0) for z in zones))
                await asyncio.sleep(rng.random() / 200)
                slots.pop().release("k")

        tasks = [asyncio.create_task(client(n)) for n in range(16)]
        racing = asyncio.gather(*tasks)

        async def reconcile() -> None:  # the timer's work, far more often than every second
            while not racing.done():
                for zone in zones:
                    zone.link._tick()
                await asyncio.sleep(0.002)

        rewrites = asyncio.create_task(reconcile())
        await asyncio.sleep(0.05)
        rs.client().script_flush()  # the next EVALSHA is NOSCRIPT: loaded again, sent again
        await racing
        await rewrites
        deadline = loop.time() + 5
        while rs.client().hgetall("wsgate:conn:race:k") and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for node in nodes:
            await node.close()
        return most, refused, logs

    most, refused, logs = asyncio.run(scenario())
    assert most == 3 and refused > 0
    assert rs.client().hgetall("wsgate:conn:race:k") == {}
    assert logs == [[], []]  # no failure on the way


def test_reconcile_rewrites_every_key_in_bounded_batches(
    rs: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that lost its data (FLUSHALL here) gets every key the worker holds back from
    the reconcile, a few keys per round trip (``REWRITES_PER_BATCH``), and the liveness key."""
    import asyncio

    from wsgate import redis_link

    monkeypatch.setattr(redis_link, "REWRITES_PER_BATCH", 3)

    async def scenario() -> tuple[dict[str, int], list[list[str]]]:
        loop = asyncio.get_running_loop()
        (node,), logs, spec = _redis_nodes(rs, "many", 1)
        zone = node.conn_zone(spec)
        for i in range(10):
            assert await zone.acquire_shared(f"k{i}", 2, lambda slot: None) is True
        rs.client().flushall()
        zone.link._tick()
        deadline = loop.time() + 5
        got: dict[str, int] = {}
        while len(got) < 10 and loop.time() < deadline:
            await asyncio.sleep(0.01)
            got = {k: held(rs, "many", k) for k in zone.counts if held(rs, "many", k)}
        assert rs.client().exists("wsgate:owner:n1")
        await node.close()
        return got, logs

    got, logs = asyncio.run(scenario())
    assert got == {f"k{i}": 1 for i in range(10)}
    assert rs.client().keys("wsgate:*") == []  # close() gave everything back
    assert logs == [[]]  # nothing failed on the way


def test_churning_clients_over_three_nodes_never_exceed_the_cap(
    backend: Backend, wsgate: Factory, rs: RedisServer
) -> None:
    """Issue 17's check in small: a cap of 5 per user, clients of three users opening and
    closing tunnels at random over three nodes for a few seconds; the tunnels a user holds
    at once (counted by the clients: from the 101 to the close) never exceed 5, and the cap
    was reached (so it was what stopped them)."""
    import random
    import threading

    fleet = nodes(wsgate, backend.port, conn_zone(rs), "limit_conn users 5;", n=3)
    lock = threading.Lock()
    holding = {u: 0 for u in ("u1", "u2", "u3")}
    most = dict(holding)
    refused = [0]
    stop = time.monotonic() + 3

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            user = rng.choice(list(holding))
            status, s = ws(rng.choice(fleet).port, user)
            if status != 101:
                with lock:
                    refused[0] += 1
                continue
            with lock:
                holding[user] += 1
                most[user] = max(most[user], holding[user])
            time.sleep(rng.random() / 20)
            with lock:
                holding[user] -= 1
            s.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert max(most.values()) == 5 and refused[0] > 0, (most, refused)
    until(lambda: all(held(rs, "users", u) == 0 for u in holding), "every slot given back")
    for gw in fleet:
        assert "[alert]" not in gw.errors() and "unreachable" not in gw.errors()


# -- redis_auth=FILE -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "secret"),
    [
        (("--requirepass", "s3cret"), "s3cret"),  # the default user's password
        # an ACL user (the default user needs a password too, so that a wrong one fails)
        (("--requirepass", "x", "--user", "alice", "on", ">wonder", "~*", "+@all"), "alice wonder"),
    ],
)
def test_redis_auth_file_reaches_a_server_that_requires_it(
    backend: Backend, wsgate: Factory, tmp_path: Path, args: tuple[str, ...], secret: str
) -> None:
    """With the file's credentials the cap is counted in Redis (a second tunnel is refused);
    with a wrong password the zone fails open and says why, once, never an ``[alert]``."""
    (tmp_path / "redis").mkdir()
    server = redis_server_or_skip(tmp_path / "redis", args, secret)
    try:
        (tmp_path / "wsgate0").mkdir()
        (tmp_path / "wsgate0" / "redis.secret").write_text(secret + "\n")
        zone = f"limit_conn_zone $arg_user zone=users:1m redis={server.address} "
        good = wsgate(conf(backend.port, zone + "redis_auth=redis.secret;", "limit_conn users 1;"))
        status, s1 = ws(good.port, "alice")
        try:
            assert status == 101
            assert ws(good.port, "alice")[0] == 503  # counted in Redis: AUTH went through
        finally:
            s1.close()
        wrong = tmp_path / "wrong.secret"
        wrong.write_text("default not-it\n")
        bad = wsgate(conf(backend.port, zone + f"redis_auth={wrong};", "limit_conn users 1;"))
        opened = [ws(bad.port, "bob") for _ in range(2)]
        try:
            assert [status for status, _ in opened] == [101, 101], bad.errors()  # failing open
            bad.wait_log(
                r'\[error\] \d+#\d+: redis limit_conn zone "users" at unix:\S+ unreachable: '
                r"invalid username-password pair"
            )
            assert "not-it" not in bad.errors()  # the secret is never logged
        finally:
            for _, s in opened:
                s.close()
        assert "[alert]" not in good.errors() + bad.errors()
    finally:
        server.stop()
