"""``proxy_pass`` with variables and ``resolver`` through a real wsgate, against a fake DNS
server on loopback (tests/integration/fake_dns.py); the cases follow nginx-tests'
http_resolver.t and proxy_variables-style URI handling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import dns.rcode
import pytest

from tests.conftest import WsgateProcess
from tests.helpers import recv_exactly
from tests.integration.fake_dns import FakeDns, Records, start_dns, stop_dns
from tests.integration.loopback import Backend, Loop, get, loop_fixture, wait_for, ws_open
from wsgate.upstream.hashing import Ring, build_ring, key_bytes

Factory = Callable[..., WsgateProcess]

bg = pytest.fixture(loop_fixture)


def conf(dns_port: int, backend: int, location: str = "", http: str = "") -> str:
    return f"""
error_log logs/error.log info;
events {{}}
http {{
  log_format t '$uri|$upstream_addr|$status|$proxy_host';
  access_log logs/access.log t;
  {http}
  upstream named {{ server 127.0.0.1:{backend}; }}
  server {{
    listen 127.0.0.1:0;
    location / {{
      resolver 127.0.0.1:{dns_port} ipv6=off;
      resolver_timeout 2s;
      proxy_pass http://$arg_h:{backend};
      {location}
    }}
    location /uri {{
      resolver 127.0.0.1:{dns_port} ipv6=off;
      proxy_pass http://$arg_h:{backend}/fixed;
    }}
    location /up {{
      proxy_pass http://$arg_u;
    }}
    location /none {{
      proxy_pass http://$arg_h:{backend};
    }}
    location /valid {{
      resolver 127.0.0.1:{dns_port} valid=30s ipv6=off;
      proxy_pass http://$arg_h:{backend};
    }}
  }}
}}
"""


@pytest.fixture
def dns_(bg: Loop) -> Iterator[FakeDns]:
    server = start_dns(bg)
    yield server
    stop_dns(bg, server)


@pytest.fixture
def backend(bg: Loop) -> Backend:
    return bg.backend("b")


def test_name_resolved_and_cached_for_its_ttl(
    dns_: FakeDns, backend: Backend, wsgate: Factory
) -> None:
    dns_.zone["a.example.net"] = Records(a=["127.0.0.1"])
    gw = wsgate(conf(dns_.port, backend.port))
    assert get(gw.port, "/?h=a.example.net") == (200, b"b")
    assert get(gw.port, "/?h=A.Example.NET") == (200, b"b")  # cached, case-insensitively
    assert dns_.count("a.example.net") == 1
    assert dns_.count("a.example.net", "AAAA") == 0  # ipv6=off
    line = gw.access_lines(2)[0]
    assert line == f"/|127.0.0.1:{backend.port}|200|a.example.net:{backend.port}"


def test_nxdomain_is_502_with_nginx_words(dns_: FakeDns, backend: Backend, wsgate: Factory) -> None:
    gw = wsgate(conf(dns_.port, backend.port))
    assert get(gw.port, "/?h=nx.example.net")[0] == 502
    gw.wait_log(r"\[error\] .*nx\.example\.net could not be resolved \(3: Host not found\)")
    assert backend.accepted == 0


def test_error_answers_are_not_cached(dns_: FakeDns, backend: Backend, wsgate: Factory) -> None:
    dns_.zone["s.example.net"] = Records(rcode=dns.rcode.SERVFAIL)
    gw = wsgate(conf(dns_.port, backend.port))
    assert get(gw.port, "/?h=s.example.net")[0] == 502
    gw.wait_log(r"s\.example\.net could not be resolved \(2: Server failure\)")
    dns_.zone["s.example.net"] = Records(a=["127.0.0.1"])
    assert get(gw.port, "/?h=s.example.net") == (200, b"b")


def test_ttl_zero_is_not_cached_but_valid_overrides(
    dns_: FakeDns, backend: Backend, wsgate: Factory
) -> None:
    dns_.zone["z.example.net"] = Records(a=["127.0.0.1"], ttl=0)
    gw = wsgate(conf(dns_.port, backend.port))
    for _ in range(2):
        assert get(gw.port, "/?h=z.example.net")[0] == 200
    assert dns_.count("z.example.net") == 2
    for _ in range(2):
        assert get(gw.port, "/valid?h=z.example.net")[0] == 200
    assert dns_.count("z.example.net") == 3


def test_timeout_is_502_operation_timed_out(
    dns_: FakeDns, backend: Backend, wsgate: Factory
) -> None:
    dns_.zone["t.example.net"] = Records(silent=True)
    gw = wsgate(
        conf(dns_.port, backend.port).replace("resolver_timeout 2s;", "resolver_timeout 1s;")
    )
    assert get(gw.port, "/?h=t.example.net")[0] == 502
    gw.wait_log(r"t\.example\.net could not be resolved \(110: Operation timed out\)")


def test_no_resolver_is_502(dns_: FakeDns, backend: Backend, wsgate: Factory) -> None:
    gw = wsgate(conf(dns_.port, backend.port))
    assert get(gw.port, "/none?h=a.example.net")[0] == 502
    gw.wait_log(r"\[error\] .*no resolver defined to resolve a\.example\.net")
    assert dns_.queries == []


def test_address_needs_no_resolver(dns_: FakeDns, backend: Backend, wsgate: Factory) -> None:
    gw = wsgate(conf(dns_.port, backend.port))
    assert get(gw.port, "/none?h=127.0.0.1") == (200, b"b")
    assert dns_.queries == []


def test_upstream_name_comes_first(dns_: FakeDns, backend: Backend, wsgate: Factory) -> None:
    gw = wsgate(conf(dns_.port, backend.port))
    assert get(gw.port, "/up?u=NAMED") == (200, b"b")
    assert dns_.queries == []


def test_implicit_upstream_of_a_static_proxy_pass_is_found(
    dns_: FakeDns, backend: Backend, wsgate: Factory
) -> None:
    """nginx looks the evaluated host:port up among the upstreams a static ``proxy_pass``
    made too, before any resolver (proxy_implicit.t "implicit upstream by variable")."""
    static = f"location /static {{ proxy_pass http://localhost:{backend.port}; }}"
    text = conf(dns_.port, backend.port).replace("location /uri {", static + " location /uri {")
    gw = wsgate(text)
    assert get(gw.port, "/none?h=LOCALHOST") == (200, b"b")
    assert get(gw.port, "/none?h=localhost")[0] == 200
    assert dns_.queries == []
    assert get(gw.port, "/none?h=localhost.example")[0] == 502  # not that name: no resolver


def test_uri_part_replaces_the_whole_request_uri(
    dns_: FakeDns, backend: Backend, wsgate: Factory
) -> None:
    dns_.zone["a.example.net"] = Records(a=["127.0.0.1"])
    gw = wsgate(conf(dns_.port, backend.port))
    assert get(gw.port, "/uri/x/y?h=a.example.net")[0] == 200
    assert get(gw.port, "/up/a%20b?u=named&z=1")[0] == 200
    assert backend.paths == ["/fixed", "/up/a%20b?u=named&z=1"]


def test_cname_followed_and_truncated_answer_asked_over_tcp(
    dns_: FakeDns, backend: Backend, wsgate: Factory
) -> None:
    dns_.zone["c.example.net"] = Records(cname="t.example.net")
    dns_.zone["t.example.net"] = Records(a=["127.0.0.1"], truncate=True)
    gw = wsgate(conf(dns_.port, backend.port))
    assert get(gw.port, "/?h=c.example.net") == (200, b"b")
    assert ("t.example.net", "A", "tcp") in dns_.queries


def test_bad_url_is_500(dns_: FakeDns, backend: Backend, wsgate: Factory) -> None:
    gw = wsgate(
        conf(dns_.port, backend.port, http="map $arg_x $to { default ftp://x; }").replace(
            "proxy_pass http://$arg_u;", "proxy_pass $to;"
        )
    )
    assert get(gw.port, "/up")[0] == 500
    gw.wait_log(r'\[error\] .*invalid URL prefix in "ftp://x"')


# -- server ... resolve -------------------------------------------------------------------------
def upstream_conf(dns_port: int, port: int, workers: int = 1) -> str:
    return f"""
worker_processes {workers};
error_log logs/error.log info;
events {{}}
http {{
  access_log off;
  resolver 127.0.0.1:{dns_port} valid=1s ipv6=off;
  resolver_timeout 1s;
  upstream u {{
    zone z 64k;
    server name.example.net:{port} resolve;
  }}
  server {{
    listen 127.0.0.1:0;
    location / {{
      proxy_pass http://u;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $http_connection;
    }}
  }}
}}
"""


def second_backend(bg: Loop, name: str, host: str, port: int) -> Backend:
    """A backend on another loopback address with the same port as the first."""
    backend = Backend(name, websocket=True)

    async def start() -> None:
        backend.server = await asyncio.start_server(backend.handle, host, port)

    asyncio.run_coroutine_threadsafe(start(), bg.loop).result(5)
    bg.backends.append(backend)
    return backend


@pytest.mark.parametrize("workers", [1, 2])
def test_server_resolve_follows_dns_and_drains_the_old_address(
    bg: Loop, dns_: FakeDns, wsgate: Factory, workers: int
) -> None:
    """A new address takes new connections; the tunnels to the address that left DNS get a
    1012 Close within the upstream's ``websocket_drain_time`` (wsgate's; nginx keeps them),
    and none of them is reset."""
    b1 = bg.backend("b1", websocket=True)
    b2 = second_backend(bg, "b2", "127.0.0.2", b1.port)
    dns_.zone["name.example.net"] = Records(a=["127.0.0.1"])
    text = upstream_conf(dns_.port, b1.port, workers).replace(
        "zone z 64k;", "zone z 64k; websocket_drain_time 2s;"
    )
    gw = wsgate(text)
    wait_for(lambda: get(gw.port) == (200, b"b1"), "the first resolution")
    tunnels = [ws_open(gw.port) for _ in range(4)]
    try:
        wait_for(lambda: b1.open == 4, "four tunnels on b1")
        dns_.zone["name.example.net"] = Records(a=["127.0.0.2"])
        wait_for(lambda: get(gw.port) == (200, b"b2"), "the new address", timeout=10)
        # every worker builds from the shared addresses: no request goes to the old one
        assert {get(gw.port) for _ in range(8)} == {(200, b"b2")}
        assert b2.accepted >= 1
        close_1012 = b"\x88\x11" + (1012).to_bytes(2, "big") + b"service restart"
        for t in tunnels:
            t.settimeout(15)
            assert recv_exactly(t, len(close_1012)) == close_1012
        # Neither the test nor this backend answers the Close: each connection ends at the
        # tunnel's closing timeout (5 s) after its Close.
        wait_for(lambda: b1.open == 0, "the old address's tunnels closed", timeout=20)
        gw.wait_log(
            r'draining \d websocket tunnel\(s\) to 127\.0\.0\.1:\d+ of upstream "u", '
            r"no longer in DNS, over 2\.0s"
        )
        assert "[alert]" not in gw.errors()
    finally:
        for t in tunnels:
            t.close()


def ring_pick(ring: Ring, key: str) -> str:
    """The server a healthy ring gives ``key`` (``ngx_http_upstream_get_chash_peer``'s first
    point)."""
    return ring.names[ring.find(key_bytes(key)) % len(ring)]


def test_consistent_hash_over_one_resolved_name_keeps_each_key_on_one_address(
    bg: Loop, dns_: FakeDns, wsgate: Factory
) -> None:
    """``hash ... consistent`` with one ``resolve`` name for every backend (a headless
    service): each address has its own points (wsgate's; nginx hashes the name for all of
    them and spreads a key by round robin), so a key stays on one backend, the ring is the
    one of the addresses, and an address that leaves moves only its own keys."""
    b1 = bg.backend("b1")
    b2 = second_backend(bg, "b2", "127.0.0.2", b1.port)
    b3 = second_backend(bg, "b3", "127.0.0.3", b1.port)
    names = {"127.0.0.1": b"b1", "127.0.0.2": b"b2", "127.0.0.3": b"b3"}
    dns_.zone["name.example.net"] = Records(a=list(names))
    text = upstream_conf(dns_.port, b1.port, 2).replace(
        "zone z 64k;", "zone z 64k; hash $arg_k consistent;"
    )
    gw = wsgate(text)
    keys = [f"k{i}" for i in range(40)]

    def expected(addresses: list[str]) -> dict[str, bytes]:
        ring = build_ring((f"{a}:{b1.port}", 1) for a in addresses)
        return {k: names[ring_pick(ring, k).split(":")[0]] for k in keys}

    def routes() -> dict[str, bytes]:
        return {k: get(gw.port, f"/?k={k}")[1] for k in keys}

    wait_for(lambda: routes() == expected(list(names)), "every key on its ring address", 10)
    assert routes() == expected(list(names))  # again: no round robin within the name
    assert {b1.accepted, b2.accepted, b3.accepted} != {0}
    before = routes()
    dns_.zone["name.example.net"] = Records(a=["127.0.0.1", "127.0.0.3"])
    wait_for(lambda: b"b2" not in routes().values(), "the address to leave", 10)
    after = routes()
    assert after == expected(["127.0.0.1", "127.0.0.3"])
    moved = {k for k in keys if before[k] != after[k]}
    assert moved and moved == {k for k in keys if before[k] == b"b2"}


def test_server_resolve_service_takes_ports_weights_and_backups_from_srv(
    bg: Loop, dns_: FakeDns, wsgate: Factory
) -> None:
    b1, b2, b3 = bg.backend("b1"), bg.backend("b2"), bg.backend("b3")
    dns_.zone["_http._tcp.svc.example.net"] = Records(
        srv=[
            (10, 3, b1.port, "one.example.net"),
            (10, 1, b2.port, "two.example.net"),
            (20, 1, b3.port, "three.example.net"),
        ]
    )
    for name in ("one", "two", "three"):
        dns_.zone[f"{name}.example.net"] = Records(a=["127.0.0.1"])
    text = upstream_conf(dns_.port, 0).replace(
        "server name.example.net:0 resolve;", "server svc.example.net service=http resolve;"
    )
    gw = wsgate(text)
    wait_for(lambda: get(gw.port)[0] == 200, "the first resolution")
    bodies = [get(gw.port)[1] for _ in range(8)]
    # weights 3:1 from the records; the priority-20 record is a backup, never used here
    assert bodies.count(b"b1") == 6 and bodies.count(b"b2") == 2
    assert b3.accepted == 0


@pytest.mark.parametrize("host", ["a..example.net", "x" * 64 + ".example.net"])
def test_names_that_cannot_be_asked_are_host_not_found(
    dns_: FakeDns, backend: Backend, wsgate: Factory, host: str
) -> None:
    gw = wsgate(conf(dns_.port, backend.port))
    assert get(gw.port, f"/?h={host}")[0] == 502
    gw.wait_log(r"could not be resolved \(3: Host not found\)")
    assert dns_.queries == []
    assert "[alert]" not in gw.errors()


def test_websocket_through_a_resolved_name(bg: Loop, dns_: FakeDns, wsgate: Factory) -> None:
    b = bg.backend("ws", websocket=True)
    dns_.zone["ws.example.net"] = Records(a=["127.0.0.1"])
    text = f"""
error_log logs/error.log info;
events {{}}
http {{
  log_format t '$upstream_addr|$status';
  access_log logs/access.log t;
  map $uri $be {{ default ws.example.net; }}
  server {{
    listen 127.0.0.1:0;
    location / {{
      resolver 127.0.0.1:{dns_.port} ipv6=off;
      proxy_pass http://$be:{b.port};
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection upgrade;
    }}
  }}
}}
"""
    gw = wsgate(text)
    s = ws_open(gw.port)
    s.close()
    assert gw.access_lines(1) == [f"127.0.0.1:{b.port}|101"]


def test_next_upstream_walks_the_resolved_addresses(
    dns_: FakeDns, backend: Backend, wsgate: Factory
) -> None:
    # neither address has a listener: each is tried once (proxy_next_upstream error), then 502
    dns_.zone["m.example.net"] = Records(a=["127.0.0.2", "127.0.0.4"])
    gw = wsgate(conf(dns_.port, backend.port))
    assert get(gw.port, "/?h=m.example.net")[0] == 502
    p = backend.port
    uri, addrs, status, _ = gw.access_lines(1)[0].split("|")
    assert set(addrs.split(", ")) == {f"127.0.0.2:{p}", f"127.0.0.4:{p}"} and status == "502"
    gw.wait_log(r"connect\(\) failed \(111: Connection refused\) while connecting to upstream")
