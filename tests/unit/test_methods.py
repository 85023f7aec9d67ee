"""wsgate.upstream.methods and .hashing: nginx's balancing methods, pure.

Known-value tables (``NGINX_*``) were recorded from nginx 1.22.1 on this machine: upstream
servers that refuse connections, ``max_fails=0``, ``proxy_next_upstream off`` and an access
log of ``$arg_k $remote_addr $upstream_addr`` (client /24s varied with loopback source
addresses); tests/integration/test_nginx_hash.py repeats the comparison live.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from wsgate.config.model import Upstream, UpstreamServer
from wsgate.config.template import compile_template
from wsgate.config.variables import RequestContext
from wsgate.upstream.hashing import (
    build_ring,
    hash_step,
    ip_hash_key,
    ip_hash_step,
    ketama_base,
)
from wsgate.upstream.methods import (
    MAX_HASH_TRIES,
    Balancer,
    ConsistentHash,
    Hash,
    IpHash,
    LeastConn,
    Random,
    RoundRobin,
    make_group,
)
from wsgate.upstream.roundrobin import Peer, Selection, peers_from_config


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ScriptedRandom(random.Random):
    """``randrange`` returns the scripted values (as ``x`` in ``random() % total``)."""

    def __init__(self, values: Sequence[int]) -> None:
        super().__init__(0)
        self.values = list(values)

    def randrange(self, *args: Any, **kw: Any) -> int:
        return self.values.pop(0)


def peer(name: str, port: int = 80, **kw: Any) -> Peer:
    return Peer(f"{name}:{port}", name, port, name=f"{name}:{port}", **kw)


def local(port: int, **kw: Any) -> Peer:
    return Peer(f"127.0.0.1:{port}", "127.0.0.1", port, name=f"127.0.0.1:{port}", **kw)


def pick(group: Balancer, key: str | None = None, release: bool = True) -> Peer:
    sel = group.start(key)
    p = sel.next()
    assert p is not None
    sel.succeed(p)
    if release:
        sel.release(p)
    return p


def hosts(group: Balancer, n: int, key: str | None = None) -> str:
    return "".join(pick(group, key).host for _ in range(n))


def spread(group: Balancer, keys: Sequence[str | None]) -> list[int]:
    counts = Counter(pick(group, k).address for k in keys)
    return [counts[p.address] for p in group.peers]


def fail_all(group: Balancer) -> None:
    for p in group.peers:
        p.fails, p.checked, p.accessed = p.max_fails, group.now(), group.now()


KEYS = [f"key-{i}" for i in range(10_000)]
W111 = (1, 1, 1)
W511 = (5, 1, 1)


def three(weights: tuple[int, int, int] = W111) -> list[Peer]:
    return [peer(n, weight=w) for n, w in zip("abc", weights, strict=True)]


# -- construction ----------------------------------------------------------------------------
def test_make_group_builds_each_method() -> None:
    servers = (UpstreamServer("a:80", "a", 80), UpstreamServer("b:80", "b", 80))
    key = compile_template("$arg_k")

    def build(**kw: Any) -> Balancer:
        return make_group("u", peers_from_config(servers), Upstream("u", servers, **kw))

    assert type(make_group("h", peers_from_config(servers))) is RoundRobin
    assert type(build()) is RoundRobin
    assert type(build(method="least_conn")) is LeastConn
    assert type(build(method="ip_hash")) is IpHash
    assert type(build(method="hash", hash_key=key)) is Hash
    assert type(build(method="hash", hash_key=key, consistent=True)) is ConsistentHash
    r = build(method="random", random_two=True, random_method="least_conn")
    assert isinstance(r, Random) and r.two
    assert not build(method="random").two  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="backup"):
        make_group("u", [peer("a"), peer("b", backup=True)], Upstream("u", servers, method="hash"))


def test_key_comes_from_the_request() -> None:
    ctx = RequestContext(remote_addr="192.0.2.7")
    ctx.args = "k=abc&x=1"
    ps = three()
    assert RoundRobin("u", ps).key(ctx) is None
    assert LeastConn("u", three()).key(ctx) is None
    assert IpHash("u", three()).key(ctx) == "192.0.2.7"
    assert Hash("u", three(), compile_template("id-$arg_k")).key(ctx) == "id-abc"
    assert ConsistentHash("u", three(), compile_template("$arg_k")).key(ctx) == "abc"


# -- least_conn --------------------------------------------------------------------------------
def test_least_conn_ties_are_smooth_weighted_round_robin() -> None:
    # Every connection closes before the next: always a tie, so WRR: the documented 5,1,1.
    group = LeastConn("u", three(W511), clock=FakeClock())
    assert hosts(group, 14) == "aabacaa" * 2


def test_least_conn_follows_open_connections_with_weights() -> None:
    # a weight=2, b weight=1, nothing closes.  By hand from ngx_http_upstream_get_least_conn_peer:
    # 0/2=0/1 tie -> WRR a | 1/2>0/1 -> b | 1/2<1/1 -> a | 2/2=1/1 tie -> WRR b (cur a=1,b=2)
    # | 2/2<2/1 -> a | 3/2<2/1 -> a | 4/2=2/1 tie -> WRR a (cur a=3,b=0).
    group = LeastConn("u", [peer("a", weight=2), peer("b")], clock=FakeClock())
    assert "".join(pick(group, release=False).host for _ in range(7)) == "ababaaa"
    assert [p.conns for p in group.peers] == [5, 2]


def test_least_conn_picks_the_least_loaded_and_follows_closes() -> None:
    group = LeastConn("u", three(), clock=FakeClock())
    sels: dict[str, Selection] = {}
    for _ in range(3):
        sel = group.start()
        p = sel.next()
        assert p is not None
        sels[p.host] = sel
    assert sorted(sels) == ["a", "b", "c"]
    b = group.peers[1]
    sels["b"].release(b)  # b's tunnel closes: b has the fewest
    assert pick(group, release=False) is b
    assert pick(group, release=False).host in "ac"


def test_least_conn_failover_backup_and_max_conns() -> None:
    clock = FakeClock()
    a, b, c = peer("a", max_conns=1), peer("b"), peer("c", backup=True)
    group = LeastConn("u", [a, b, c], clock=clock)
    held = pick(group, release=False)
    assert held is a
    assert pick(group, release=False) is b  # a is at max_conns
    sel = group.start()
    first = sel.next()
    assert first is b  # a at max_conns, b has 1
    assert sel.fail(first)  # "upstream server temporarily disabled"
    assert sel.next() is c  # no primary left: the backup
    assert sel.next() is None


# -- ip_hash -----------------------------------------------------------------------------------
def nginx_servers(*down: int, weights: Sequence[int] = (1, 2, 1)) -> list[Peer]:
    return [local(8081 + i, weight=w, max_fails=0, down=i in down) for i, w in enumerate(weights)]


# nginx 1.22.1: ip_hash; server :8081; server :8082 weight=2; server :8083; (and with :8082 down)
NGINX_IP_HASH = {
    "127.0.0.1": (8081, 8083),
    "127.0.0.200": (8081, 8083),
    "127.1.2.3": (8083, 8081),
    "127.10.20.30": (8082, 8081),
    "127.200.100.50": (8081, 8081),
    "127.7.7.7": (8082, 8083),
    "127.99.1.1": (8082, 8081),
    "127.3.3.3": (8082, 8083),
    "::1": (8082, 8083),
}


@pytest.mark.parametrize("addr", sorted(NGINX_IP_HASH))
def test_ip_hash_matches_nginx(addr: str) -> None:
    plain, with_down = NGINX_IP_HASH[addr]
    assert pick(IpHash("u", nginx_servers()), addr).port == plain
    # (the nginx upstream with :8082 down gave it no weight: weights 1,1,1 there)
    assert pick(IpHash("u", nginx_servers(1, weights=(1, 1, 1))), addr).port == with_down


def test_ip_hash_by_hand() -> None:
    # 192.168.1.x -> bytes 192,168,1 from h=89: (89*113+192)%6271=3978,
    # (3978*113+168)%6271=4441, (4441*113+1)%6271=154; 154 % 3 = 1 -> the second server.
    assert ip_hash_key("192.168.1.10") == bytes([192, 168, 1])
    assert ip_hash_step(89, bytes([192, 168, 1])) == 154
    assert pick(IpHash("u", three()), "192.168.1.10").host == "b"


def test_ip_hash_keys() -> None:
    assert ip_hash_key("10.1.2.3") == ip_hash_key("10.1.2.250") == b"\x0a\x01\x02"
    assert len(ip_hash_key("2001:db8::1")) == 16
    assert ip_hash_key("2001:db8::1") != ip_hash_key("2001:db8::2")
    assert ip_hash_key("[2001:db8::1]") == ip_hash_key("2001:db8::1")
    assert ip_hash_key("::ffff:10.1.2.3") == bytes(10) + b"\xff\xff\x0a\x01\x02\x03"
    assert ip_hash_key("unix:") == ip_hash_key("") == b"\0\0\0"


def test_ip_hash_same_network_same_server() -> None:
    group = IpHash("u", three(), clock=FakeClock())
    for net in range(50):
        chosen = {pick(group, f"10.0.{net}.{host}").host for host in range(0, 256, 17)}
        assert len(chosen) == 1
    # The whole IPv6 address counts: addresses differing in the last byte spread.
    assert len({pick(group, f"2001:db8::{i:x}").host for i in range(64)}) == 3


def test_ip_hash_down_keeps_the_modulus() -> None:
    clients = [f"10.{i}.{i * 7 % 256}.1" for i in range(300)]
    before = {c: pick(IpHash("u", three()), c).host for c in clients}
    ps = three()
    ps[1].down = True
    group = IpHash("u", ps)
    after = {c: pick(group, c).host for c in clients}
    for c in clients:
        if before[c] != "b":
            assert after[c] == before[c]  # only b's clients move
        else:
            assert after[c] in "ac"
    assert {before[c] for c in clients} == {"a", "b", "c"}


def test_ip_hash_failover_and_twenty_tries_then_round_robin() -> None:
    clock = FakeClock()
    group = IpHash("u", three(), clock=clock)
    sel = group.start("192.168.1.10")
    first = sel.next()
    assert first is not None and first.host == "b"
    assert sel.fail(first)
    second = sel.next()
    assert second is not None and second is not first
    sel.fail(second)
    third = sel.next()
    assert third is not None and {first, second, third} == set(group.peers)
    assert sel.tries == 1
    # Only one live server: the hash rarely lands on it; after 20 misses round robin finds it.
    ps = [peer(n, down=n != "e") for n in "abcdefghijklmnopqrstuvwxyz"]
    group = IpHash("u", ps, clock=clock)
    assert all(pick(group, f"10.{i}.0.1").host == "e" for i in range(40))


# -- hash --------------------------------------------------------------------------------------
# nginx 1.22.1: hash $arg_k [consistent]; server :8081; server :8082 weight=2; server :8083;
NGINX_HASH = {
    "alpha": (8081, 8082),
    "beta": (8082, 8081),
    "gamma": (8083, 8082),
    "delta": (8083, 8082),
    "epsilon": (8082, 8083),
    "zeta": (8081, 8081),
    "eta": (8083, 8081),
    "theta": (8081, 8081),
    "iota": (8083, 8081),
    "kappa": (8082, 8082),
    "lambda": (8082, 8082),
    "mu": (8082, 8082),
    "12345": (8082, 8082),
    "/chat/room-7": (8081, 8082),
}
# ... consistent; server unix:/tmp/a.sock; server unix:/tmp/b.sock; server 127.0.0.1;
NGINX_CHASH_UNIX = {
    "alpha": "127.0.0.1",
    "beta": "127.0.0.1",
    "gamma": "unix:/tmp/b.sock",
    "delta": "unix:/tmp/a.sock",
    "epsilon": "127.0.0.1",
    "zeta": "unix:/tmp/a.sock",
    "eta": "unix:/tmp/a.sock",
    "theta": "unix:/tmp/a.sock",
    "iota": "unix:/tmp/b.sock",
    "kappa": "unix:/tmp/b.sock",
    "lambda": "unix:/tmp/a.sock",
    "mu": "unix:/tmp/b.sock",
    "12345": "unix:/tmp/b.sock",
    "/chat/room-7": "unix:/tmp/a.sock",
}


@pytest.mark.parametrize("key", sorted(NGINX_HASH))
def test_hash_and_consistent_hash_match_nginx(key: str) -> None:
    plain, consistent = NGINX_HASH[key]
    assert pick(Hash("u", nginx_servers()), key).port == plain
    assert pick(ConsistentHash("u", nginx_servers()), key).port == consistent
    unix = [
        Peer("unix:/tmp/a.sock", "/tmp/a.sock", 0, name="unix:/tmp/a.sock"),
        Peer("unix:/tmp/b.sock", "/tmp/b.sock", 0, name="unix:/tmp/b.sock"),
        Peer("127.0.0.1:80", "127.0.0.1", 80, name="127.0.0.1"),
    ]
    assert pick(ConsistentHash("u", unix), key).name == NGINX_CHASH_UNIX[key]


def test_hash_functions_by_hand() -> None:
    crc = zlib.crc32(b"alpha")
    assert hash_step(b"alpha", 0) == (crc >> 16) & 0x7FFF
    assert hash_step(b"alpha", 3) == (zlib.crc32(b"3alpha") >> 16) & 0x7FFF
    assert ketama_base("127.0.0.1:8081") == b"127.0.0.1\x008081"
    assert ketama_base("127.0.0.1") == b"127.0.0.1\x00"  # no port written: empty, not 80
    assert ketama_base("backend.test") == b"backend.test\x00"
    assert ketama_base("[::1]:80") == b"[::1]\x0080"
    assert ketama_base("unix:/run/a.sock") == b"/run/a.sock\x00"
    assert ketama_base("UNIX:/run/a.sock") == b"/run/a.sock\x00"


def test_ring_is_nginx_ketama() -> None:
    ring = build_ring([("a:1", 1), ("b:2", 2), ("a:1", 1)])  # a name twice: points collapse
    assert len(ring) == 480
    assert list(ring.hashes) == sorted(set(ring.hashes))
    # The first points of "b:2": crc32("b\0" "2" + LE32(prev)), chained from prev=0.
    h1 = zlib.crc32(b"b\x002" + (0).to_bytes(4, "little"))
    h2 = zlib.crc32(b"b\x002" + h1.to_bytes(4, "little"))
    assert ring.names[ring.hashes.index(h1)] == ring.names[ring.hashes.index(h2)] == "b:2"
    assert ring.find(b"") == 0  # crc32("") = 0
    top = max(ring.hashes)
    assert ring.find(b"x") == sum(h < zlib.crc32(b"x") for h in ring.hashes)
    assert ring.find(b"x") <= len(ring) and top <= 0xFFFFFFFF


def test_hash_same_key_same_server_and_empty_key_round_robin() -> None:
    group = Hash("u", three(), compile_template("$arg_k"), clock=FakeClock())
    for k in KEYS[:200]:
        assert len({pick(group, k).host for _ in range(3)}) == 1
    assert hosts(group, 6, "") == "abcabc"
    assert hosts(group, 3, None) == "abc"
    c = ConsistentHash("u", three(), compile_template("$arg_k"), clock=FakeClock())
    assert hosts(c, 6, "") == "abcabc"


@pytest.mark.parametrize("weights", [W111, W511])
def test_hash_distribution(weights: tuple[int, int, int]) -> None:
    for cls in (Hash, ConsistentHash):
        counts = spread(cls("u", three(weights)), KEYS)
        total = sum(weights)
        for n, w in zip(counts, weights, strict=True):
            expected = len(KEYS) * w / total
            assert abs(n - expected) < 0.15 * expected, (cls.__name__, counts)


@pytest.mark.parametrize("n", [3, 5, 10])
def test_consistent_hash_moves_about_one_nth(n: int) -> None:
    def mapping(count: int) -> dict[str, str]:
        group = ConsistentHash("u", [local(9000 + i) for i in range(count)])
        return {k: pick(group, k).address for k in KEYS}

    base, grown, shrunk = mapping(n), mapping(n + 1), mapping(n - 1)
    added = sum(base[k] != grown[k] for k in KEYS) / len(KEYS)
    removed = sum(base[k] != shrunk[k] for k in KEYS) / len(KEYS)
    assert 0.5 / (n + 1) < added < 1.5 / (n + 1), added
    assert 0.5 / n < removed < 1.5 / n, removed
    # Keys only move to the new server, or away from the removed one.
    assert all(grown[k] in (base[k], f"127.0.0.1:{9000 + n}") for k in KEYS)
    assert all(base[k] == shrunk[k] for k in KEYS if base[k] != f"127.0.0.1:{9000 + n - 1}")


def test_plain_hash_remaps_most_keys() -> None:
    def mapping(count: int) -> dict[str, str]:
        group = Hash("u", [local(9000 + i) for i in range(count)])
        return {k: pick(group, k).address for k in KEYS[:2000]}

    base, grown = mapping(4), mapping(5)
    assert sum(base[k] != grown[k] for k in base) / len(base) > 0.5


def test_consistent_hash_down_and_failover_walk_the_ring() -> None:
    clock = FakeClock()
    group = ConsistentHash("u", three(), clock=clock)
    owner = {k: pick(group, k).host for k in KEYS[:500]}
    group.peers[0].down = True
    for k in KEYS[:500]:
        got = pick(group, k).host
        assert got == owner[k] if owner[k] != "a" else got in "bc"
    group.peers[0].down = False
    sel = group.start("key-1")
    first = sel.next()
    assert first is not None and first.host == owner["key-1"]
    assert sel.fail(first)
    second = sel.next()
    assert second is not None and second is not first
    assert pick(group, "key-1") is not first  # disabled for fail_timeout
    clock.now += 11
    assert pick(group, "key-1") is first


def test_consistent_hash_several_addresses_of_one_name_share_its_points() -> None:
    # A name resolving to two addresses: both are candidates for its points, by WRR.
    ps = [
        Peer("10.0.0.1:80", "10.0.0.1", 80, name="web:80"),
        Peer("10.0.0.2:80", "10.0.0.2", 80, name="web:80"),
        Peer("10.0.0.3:80", "10.0.0.3", 80, name="api:80"),
    ]
    group = ConsistentHash("u", ps, clock=FakeClock())
    web = [k for k in KEYS[:300] if pick(group, k).name == "web:80"]
    assert {pick(group, web[0]).host for _ in range(4)} == {"10.0.0.1", "10.0.0.2"}


def test_hash_failover_and_twenty_tries_then_round_robin() -> None:
    clock = FakeClock()
    group = Hash("u", three(), clock=clock)
    sel = group.start("alpha")
    seen = []
    for _ in range(3):
        p = sel.next()
        assert p is not None
        seen.append(p)
        sel.fail(p)
    assert set(seen) == set(group.peers) and sel.tries == 0
    assert sel.next() is None
    ps = [peer(n, down=n != "q") for n in "abcdefghijklmnopqrstuvwxyz"]
    group = Hash("u", ps, clock=clock)
    assert all(pick(group, k).host == "q" for k in KEYS[:50])
    assert MAX_HASH_TRIES == 20


# -- random ------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", [W111, W511])
def test_random_balance(weights: tuple[int, int, int]) -> None:
    group = Random("u", three(weights), clock=FakeClock(), rng=random.Random(7))
    counts = spread(group, [None] * 10_000)
    total = sum(weights)
    for n, w in zip(counts, weights, strict=True):
        expected = 10_000 * w / total
        assert abs(n - expected) < 0.1 * expected, counts


def test_random_two_on_idle_servers_keeps_the_second_draw() -> None:
    # With no open connections every pair ties and the second (distinct) draw wins, as in
    # nginx: weights 5,1,1 give a = 2/7*5/6 = 0.238, b = c = 5/7*1/2 + 1/7*1/6 = 0.381.
    group = Random("u", three(W511), two=True, clock=FakeClock(), rng=random.Random(7))
    counts = spread(group, [None] * 10_000)
    for n, p in zip(counts, (10 / 42, 16 / 42, 16 / 42), strict=True):
        assert abs(n - 10_000 * p) < 0.1 * 10_000 * p, counts
    group = Random("u", three(), two=True, clock=FakeClock(), rng=random.Random(7))
    counts = spread(group, [None] * 9_000)
    assert all(abs(n - 3_000) < 300 for n in counts), counts


def test_random_two_under_load_follows_weights() -> None:
    # Connections stay open: conns/weight is what random two equalises.
    group = Random("u", three(W511), two=True, clock=FakeClock(), rng=random.Random(11))
    for _ in range(700):
        pick(group, release=False)
    conns = [p.conns for p in group.peers]
    assert abs(conns[0] - 500) <= 10 and all(abs(c - 100) <= 10 for c in conns[1:]), conns


def test_random_draws_by_weight_ranges() -> None:
    # Ranges for weights 5,1,1: a=[0,5) b=[5,6) c=[6,7).
    group = Random("u", three(W511), rng=ScriptedRandom([0, 4, 5, 6]), clock=FakeClock())
    assert hosts(group, 4) == "aabc"


def test_random_two_picks_the_less_loaded() -> None:
    clock = FakeClock()
    a, b, c = three()
    group = Random("u", [a, b, c], two=True, clock=clock, rng=ScriptedRandom([0, 2]))
    a.conns = 5
    assert pick(group) is c  # draws a then c: c has fewer
    a.conns, c.conns = 0, 5
    group.rng = ScriptedRandom([0, 0, 2])  # a twice (redrawn), then c: a wins
    assert pick(group) is a
    a.conns = c.conns = 3
    group.rng = ScriptedRandom([0, 2])  # a tie keeps the second draw
    assert pick(group) is c
    # Weighted: 2 conns on weight 4 beat 1 conn on weight 1.
    w = [peer("a", weight=4), peer("b")]
    w[0].conns, w[1].conns = 2, 1
    group = Random("u", w, two=True, clock=clock, rng=ScriptedRandom([4, 0]))
    assert pick(group).host == "a"


def test_random_two_follows_load_over_time() -> None:
    group = Random("u", three(), two=True, clock=FakeClock(), rng=random.Random(3))
    for _ in range(300):
        pick(group, release=False)
    conns = [p.conns for p in group.peers]
    assert max(conns) - min(conns) <= 2, conns


def test_random_failover_and_fallback() -> None:
    clock = FakeClock()
    group = Random("u", three(), clock=clock, rng=random.Random(1))
    sel = group.start()
    got = []
    while (p := sel.next()) is not None:
        got.append(p)
        sel.fail(p)
    assert sorted(p.host for p in got) == ["a", "b", "c"]
    ps = [peer(n, down=n != "k") for n in "abcdefghijklmnopqrstuvwxyz"]
    for two in (False, True):
        group = Random("u", ps, two=two, clock=clock, rng=random.Random(2))
        assert all(pick(group).host == "k" for _ in range(30))


# -- every method --------------------------------------------------------------------------------
def every_method(ps: list[Peer], clock: FakeClock) -> list[Balancer]:
    return [
        RoundRobin("u", ps, clock=clock),
        LeastConn("u", ps, clock=clock),
        IpHash("u", ps, clock=clock),
        Hash("u", ps, clock=clock),
        ConsistentHash("u", ps, clock=clock),
        Random("u", ps, clock=clock, rng=random.Random(5)),
        Random("u", ps, two=True, clock=clock, rng=random.Random(5)),
    ]


def test_every_server_down_or_failed_gives_none() -> None:
    clock = FakeClock()
    for state in ("down", "failed", "unhealthy", "max_conns"):
        ps = [peer(n, max_conns=1) for n in "abc"]
        for p in ps:
            if state == "down":
                p.down = True
            elif state == "failed":
                p.fails, p.checked = 1, int(clock.now)
            elif state == "unhealthy":
                p.healthy = False
            else:
                p.conns = 1
        for group in every_method(ps, clock):
            sel = group.start("10.0.0.1" if isinstance(group, IpHash) else "key")
            assert sel.next() is None, (state, type(group).__name__)


def test_every_method_skips_an_unhealthy_server_and_fails_over() -> None:
    clock = FakeClock()
    for group in every_method(three(), clock):
        key = "10.0.0.1" if isinstance(group, IpHash) else "key-9"
        group.peers[1].healthy = False
        got = {pick(group, k if isinstance(group, Hash) else key).host for k in KEYS[:200]}
        assert got <= {"a", "c"} and got, type(group).__name__
        group.peers[1].healthy = True
        sel = group.start(key)
        tried = []
        while (p := sel.next()) is not None:
            tried.append(p.host)
            if not sel.fail(p):
                break
        assert sorted(tried) == ["a", "b", "c"], type(group).__name__
        assert sel.tries == 0
        clock.now += 11  # past fail_timeout: every server is probed again
        fail_all(group)
        assert group.start(key).next() is None
        clock.now += 11


def test_single_server_is_never_disabled_in_any_method() -> None:
    clock = FakeClock()
    for group in every_method([peer("a")], clock):
        sel = group.start("10.0.0.1")
        p = sel.next()
        assert p is not None and not sel.fail(p) and sel.tries == 0
        assert pick(group, "10.0.0.1").host == "a"
