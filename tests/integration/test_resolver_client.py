"""wsgate's DNS client (:mod:`wsgate.resolver.client`) against fake DNS servers on loopback:
nginx's resend to the next server, coalesced lookups, and the cache's limits."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.integration.fake_dns import FakeDns, Records, start_dns, stop_dns
from tests.integration.loopback import Loop, loop_fixture
from wsgate.config.model import Resolver as ResolverConf
from wsgate.resolver import ResolveError, Resolver
from wsgate.resolver import client as client_module

bg = pytest.fixture(loop_fixture)


@pytest.fixture
def two(bg: Loop) -> Iterator[tuple[FakeDns, FakeDns]]:
    a, b = start_dns(bg), start_dns(bg)
    yield a, b
    stop_dns(bg, a)
    stop_dns(bg, b)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def client(
    *servers: FakeDns, valid: float | None = None, resend: float = 0.2, ipv6: bool = False
) -> Resolver:
    conf = ResolverConf(tuple(("127.0.0.1", s.port) for s in servers), valid, True, ipv6)
    logs: list[str] = []
    r = Resolver(conf, asyncio.get_running_loop(), lambda lvl, msg: logs.append(msg), resend=resend)
    return r


def test_unanswered_query_goes_to_the_next_server(two: tuple[FakeDns, FakeDns]) -> None:
    a, b = two
    a.zone["x.example"] = Records(silent=True)
    b.zone["x.example"] = Records(a=["192.0.2.7"])

    async def go() -> tuple[str, ...]:
        return await client(a, b).resolve("x.example", 2.0)

    assert run(go()) == ("192.0.2.7",)
    assert a.count("x.example") == 1 and b.count("x.example") == 1


def test_servers_taken_in_turn_per_name(two: tuple[FakeDns, FakeDns]) -> None:
    a, b = two
    for s in two:
        s.zone["n1.example"] = Records(a=["192.0.2.1"])
        s.zone["n2.example"] = Records(a=["192.0.2.2"])

    async def go() -> None:
        r = client(a, b)
        await r.resolve("n1.example", 1.0)
        await r.resolve("n2.example", 1.0)

    run(go())
    assert (a.count("n1.example"), b.count("n2.example")) == (1, 1)
    assert (b.count("n1.example"), a.count("n2.example")) == (0, 0)


def test_concurrent_lookups_share_one_query(two: tuple[FakeDns, FakeDns]) -> None:
    a, _ = two
    a.zone["c.example"] = Records(a=["192.0.2.3"])

    async def go() -> list[tuple[str, ...]]:
        r = client(a)
        return list(await asyncio.gather(*(r.resolve("c.example", 1.0) for _ in range(5))))

    assert run(go()) == [("192.0.2.3",)] * 5
    assert a.count("c.example") == 1


def test_timeout_at_and_over_resolver_timeout(two: tuple[FakeDns, FakeDns]) -> None:
    a, _ = two
    a.zone["t.example"] = Records(silent=True)

    async def go() -> int:
        try:
            await client(a).resolve("t.example", 0.3)
        except ResolveError as exc:
            return exc.code
        return 0

    assert run(go()) == 110


def test_unused_names_leave_the_cache(
    two: tuple[FakeDns, FakeDns], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two
    a.zone["u.example"] = Records(a=["192.0.2.4"])
    a.zone["v.example"] = Records(a=["192.0.2.5"])
    monkeypatch.setattr(client_module, "EXPIRE", 0.0)

    async def go() -> int:
        r = client(a)
        await r.resolve("u.example", 1.0)
        await r.resolve("v.example", 1.0)  # u.example, unused since, is dropped first
        return len(r._cache)

    assert run(go()) == 1


def test_an_error_to_aaaa_fails_the_name_despite_a_records(two: tuple[FakeDns, FakeDns]) -> None:
    """nginx keeps an error answer to one of A/AAAA (``rn->code``) and fails the name with
    it; the error is not cached: the next lookup asks again."""
    a, _ = two
    a.zone["e.example"] = Records(a=["192.0.2.9"], rcode_of={"AAAA": 2})
    a.zone["ok.example"] = Records(a=["192.0.2.8"], aaaa=["2001:db8::8"])

    async def go() -> tuple[list[int], tuple[str, ...]]:
        r = client(a, ipv6=True)
        codes = []
        for _ in range(2):
            try:
                await r.resolve("e.example", 1.0)
            except ResolveError as exc:
                codes.append(exc.code)
        return codes, await r.resolve("ok.example", 1.0)

    assert run(go()) == ([2, 2], ("192.0.2.8", "2001:db8::8"))
    assert (a.count("e.example", "A"), a.count("e.example", "AAAA")) == (2, 2)


def test_a_cname_with_an_empty_aaaa_answer_is_not_followed(
    two: tuple[FakeDns, FakeDns],
) -> None:
    """Only the CNAME of the answer that comes last (AAAA) is resolved next, as in nginx."""
    a, _ = two
    a.zone["c1.example"] = Records(cname="t4.example", cname_types=("A",))
    a.zone["t4.example"] = Records(a=["192.0.2.4"])

    async def go() -> int:
        try:
            await client(a, ipv6=True).resolve("c1.example", 1.0)
        except ResolveError as exc:
            return exc.code
        return 0

    assert run(go()) == 3


def test_service_cname_is_asked_for_srv_and_target_errors_fail_it(
    two: tuple[FakeDns, FakeDns],
) -> None:
    """ngx_resolver_process_srv follows a CNAME alone (upstream_service.t "CNAME"); with no
    address from any target, ngx_resolver_report_srv fails with the targets' error, so a
    SERVFAIL keeps the upstream's servers (upstream_service.t "SRV diff" with SERROR)."""
    a, _ = two
    a.zone["_http._tcp.s.example"] = Records(cname="alias.example")
    a.zone["alias.example"] = Records(srv=[(1, 5, 8080, "t.example")])
    a.zone["t.example"] = Records(a=["192.0.2.3"])
    a.zone["_http._tcp.bad.example"] = Records(srv=[(1, 5, 8080, "f.example")])
    a.zone["f.example"] = Records(rcode=2)

    async def go() -> tuple[list[str], int]:
        r = client(a)
        found, _ = await r.lookup_service("s.example", "http", 1.0)
        try:
            await r.lookup_service("bad.example", "http", 1.0)
        except ResolveError as exc:
            return [f"{s.address}:{s.port}" for s in found], exc.code
        return [f"{s.address}:{s.port}" for s in found], 0

    assert run(go()) == (["192.0.2.3:8080"], 2)
    assert a.count("alias.example", "SRV") == 1
