"""The realip rule (:mod:`wsgate.realip`) and its phase handlers, without a socket: nginx's
``ngx_http_get_forwarded_addr`` and the cases of nginx-tests' realip.t."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from tests.unit.test_phases import Worker, conf, request
from wsgate.errors import ConfigError, HttpError
from wsgate.http.phases import Plain, Request, realip_post_read, realip_preaccess, run
from wsgate.http.proxy_protocol import ProxyHeader
from wsgate.realip import forwarded_addr, parse_addr, parse_addr_port, trusted

LOOP = (ipaddress.ip_network("127.0.0.1/32"),)
NETS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("192.0.2.1", ("192.0.2.1", 0)),
        ("192.0.2.1:8080", ("192.0.2.1", 8080)),
        ("010.0.0.1", ("10.0.0.1", 0)),
        ("2001:db8::1", ("2001:db8::1", 0)),
        ("[2001:db8::1]:80", ("2001:db8::1", 80)),
        ("::ffff:10.0.0.1", ("::ffff:a00:1", 0)),
        ("[2001:db8::1]", None),
        ("192.0.2.1:0", None),
        ("192.0.2.1:65536", None),
        ("192.0.2.256", None),
        ("192.0.2", None),
        ("example.org", None),
        ("unknown", None),
        ("", None),
    ],
)
def test_parse_addr_port(text: str, want: tuple[str, int] | None) -> None:
    assert parse_addr_port(text) == want


def test_parse_addr_rejects_zone_and_prefix() -> None:
    assert parse_addr("fe80::1%eth0") is None
    assert parse_addr("10.0.0.0/8") is None


def test_trusted() -> None:
    assert trusted("10.1.2.3", NETS)
    assert trusted("::ffff:10.1.2.3", NETS)  # v4-mapped matches the IPv4 network
    assert trusted("2001:db8::5", NETS)
    assert not trusted("192.0.2.1", NETS)
    assert not trusted("unix:", NETS)
    assert trusted("unix:", (None,))
    assert not trusted("127.0.0.1", (None,))


def fwd(values: list[str], recursive: bool = False, addr: str = "127.0.0.1") -> object:
    return forwarded_addr((addr, 5000), values, (*LOOP, *NETS), recursive)


def test_untrusted_peer_changes_nothing() -> None:
    assert fwd(["192.0.2.1"], addr="192.0.2.9") is None


def test_last_address_wins_without_recursion() -> None:
    assert fwd(["192.0.2.1, 10.0.0.1"]) == ("10.0.0.1", 0)
    assert fwd(["192.0.2.1 10.0.0.1 ,, "]) == ("10.0.0.1", 0)


def test_recursive_takes_last_untrusted() -> None:
    assert fwd(["192.0.2.1, 10.0.0.2, 10.0.0.1"], True) == ("192.0.2.1", 0)
    assert fwd(["198.51.100.1, 192.0.2.1, 10.0.0.1"], True) == ("192.0.2.1", 0)


def test_recursive_all_trusted_takes_first() -> None:
    assert fwd(["10.0.0.3, 10.0.0.2"], True) == ("10.0.0.3", 0)


def test_bad_entry_stops_the_walk() -> None:
    assert fwd(["junk"]) is None
    # the walk keeps what it found before the unreadable entry (NGX_DONE)
    assert fwd(["junk, 10.0.0.1"], True) == ("10.0.0.1", 0)


def test_port_is_taken() -> None:
    assert fwd(["192.0.2.1:1234"]) == ("192.0.2.1", 1234)
    assert fwd(["[2001:db8::7]:99"]) == ("2001:db8::7", 99)


def test_several_headers_last_first() -> None:
    # without recursion only the last header counts
    assert fwd(["192.0.2.1", "10.0.0.1, 192.0.2.2"]) == ("192.0.2.2", 0)
    # with recursion the walk goes on in the previous header
    assert fwd(["192.0.2.1", "10.0.0.2, 10.0.0.1"], True) == ("192.0.2.1", 0)
    assert fwd(["192.0.2.1", "10.0.0.1"], True) == ("192.0.2.1", 0)
    # an unreadable earlier header keeps what the later one gave (NGX_DONE)
    assert fwd(["junk", "10.0.0.1"], True) == ("10.0.0.1", 0)


# -- the phase handlers ---------------------------------------------------------------------
SERVER = (
    "server {{ listen 127.0.0.1:8080; {s} location / {{ {loc} proxy_pass http://127.0.0.1:1; }} }}"
)


def phased(tmp_path: Path, s: str = "", loc: str = "", extra: str = "") -> Request:
    config = conf(tmp_path, SERVER.format(s=s, loc=loc))
    r = request(config, Worker(), extra=extra)
    r.ctx.remote_addr, r.ctx.remote_port = "127.0.0.1", 5000
    return r


def test_x_real_ip_default(tmp_path: Path) -> None:
    r = phased(tmp_path, "set_real_ip_from 127.0.0.1;", extra="X-Real-IP: 192.0.2.1\r\n")
    run(r)
    assert r.ctx.lookup("remote_addr") == "192.0.2.1"
    assert r.ctx.lookup("remote_port") == ""
    assert r.ctx.lookup("realip_remote_addr") == "127.0.0.1"
    assert r.ctx.lookup("realip_remote_port") == "5000"
    assert r.ctx.lookup("proxy_add_x_forwarded_for") == "192.0.2.1"


def test_no_set_real_ip_from_no_change(tmp_path: Path) -> None:
    r = phased(tmp_path, extra="X-Real-IP: 192.0.2.1\r\n")
    run(r)
    assert r.ctx.remote_addr == "127.0.0.1"
    assert r.ctx.lookup("realip_remote_addr") == "127.0.0.1"


def test_untrusted_connection(tmp_path: Path) -> None:
    r = phased(tmp_path, "set_real_ip_from 10.0.0.0/8;", extra="X-Real-IP: 192.0.2.1\r\n")
    run(r)
    assert r.ctx.remote_addr == "127.0.0.1"


def test_x_forwarded_for_several_headers(tmp_path: Path) -> None:
    extra = "X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 127.0.0.1, 10.0.0.1\r\n"
    s = "set_real_ip_from 127.0.0.1; real_ip_header X-Forwarded-For;"
    r = phased(tmp_path, s, extra=extra)
    run(r)
    assert r.ctx.remote_addr == "10.0.0.1"
    r = phased(tmp_path, s + "real_ip_recursive on;", extra=extra)
    run(r)
    assert r.ctx.remote_addr == "10.0.0.1"  # 10.0.0.1 is not trusted
    r = phased(tmp_path, s + "set_real_ip_from 10.0.0.0/8; real_ip_recursive on;", extra=extra)
    run(r)
    assert r.ctx.remote_addr == "192.0.2.1"


def test_lowercase_x_forwarded_for_is_a_plain_header(tmp_path: Path) -> None:
    # nginx compares "X-Forwarded-For" exactly; any other spelling is a header name, of which
    # only the first header counts.
    extra = "X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 10.0.0.1\r\n"
    s = "set_real_ip_from 127.0.0.1; real_ip_header x-forwarded-for;"
    r = phased(tmp_path, s, extra=extra)
    run(r)
    assert r.ctx.remote_addr == "192.0.2.1"


def test_custom_header_first_one(tmp_path: Path) -> None:
    extra = "Client-IP: 192.0.2.7:99\r\nclient-ip: 192.0.2.8\r\n"
    r = phased(tmp_path, "set_real_ip_from 127.0.0.1; real_ip_header Client-IP;", extra=extra)
    run(r)
    assert (r.ctx.remote_addr, r.ctx.lookup("remote_port")) == ("192.0.2.7", "99")


def test_location_level_applies_at_preaccess(tmp_path: Path) -> None:
    r = phased(tmp_path, loc="set_real_ip_from 127.0.0.1;", extra="X-Real-IP: 192.0.2.1\r\n")
    realip_post_read(r)
    assert r.ctx.remote_addr == "127.0.0.1"
    run(r)
    assert r.ctx.remote_addr == "192.0.2.1"


def test_once_per_request(tmp_path: Path) -> None:
    # the address realip set is not itself re-examined at PREACCESS
    s = "set_real_ip_from 127.0.0.1; set_real_ip_from 192.0.2.1;"
    r = phased(tmp_path, s, extra="X-Real-IP: 192.0.2.1\r\n")
    realip_post_read(r)
    r.ctx.headers = [("X-Real-IP", "198.51.100.1")]
    realip_preaccess(r)
    assert r.ctx.remote_addr == "192.0.2.1"
    assert r.ctx.lookup("realip_remote_addr") == "127.0.0.1"


def test_deny_sees_real_address(tmp_path: Path) -> None:
    s = "set_real_ip_from 127.0.0.1; deny 192.0.2.1;"
    r = phased(tmp_path, s, extra="X-Real-IP: 192.0.2.1\r\n")
    with pytest.raises(HttpError) as exc:
        run(r)
    assert exc.value.status == 403


def test_directives_inherit(tmp_path: Path) -> None:
    http = "set_real_ip_from 127.0.0.1; real_ip_header X-Forwarded-For; real_ip_recursive on;"
    config = conf(tmp_path, http + SERVER.format(s="", loc="set_real_ip_from unix:;"))
    server = config.http.servers[0]
    assert server.settings.real_ip_from == (ipaddress.ip_network("127.0.0.1/32"),)
    loc = server.locations[0].settings
    assert loc.real_ip_from == (None,)
    assert (loc.real_ip_header, loc.real_ip_recursive) == ("X-Forwarded-For", True)


def test_set_real_ip_from_hostname_and_errors(tmp_path: Path) -> None:
    config = conf(tmp_path, "set_real_ip_from localhost;" + SERVER.format(s="", loc=""))
    nets = config.http.servers[0].settings.real_ip_from
    assert ipaddress.ip_network("127.0.0.1/32") in nets
    with pytest.raises(ConfigError, match='host not found in set_real_ip_from "no.such.invalid"'):
        conf(tmp_path, "set_real_ip_from no.such.invalid;" + SERVER.format(s="", loc=""))


def test_real_ip_header_proxy_protocol(tmp_path: Path) -> None:
    s = "set_real_ip_from 127.0.0.1; real_ip_header proxy_protocol;"
    r = phased(tmp_path, s, extra="X-Real-IP: 198.51.100.1\r\n")
    r.ctx.proxy_protocol = ProxyHeader("192.0.2.1", "192.0.2.2", 1234, 80)
    run(r)
    assert (r.ctx.remote_addr, r.ctx.lookup("remote_port")) == ("192.0.2.1", "1234")
    assert r.ctx.lookup("realip_remote_addr") == "127.0.0.1"
    # untrusted: the header's address stays in $proxy_protocol_addr only
    r = phased(tmp_path, "set_real_ip_from 10.0.0.0/8; real_ip_header proxy_protocol;")
    r.ctx.proxy_protocol = ProxyHeader("192.0.2.1", "192.0.2.2", 1234, 80)
    run(r)
    assert r.ctx.remote_addr == "127.0.0.1"
    assert r.ctx.lookup("proxy_protocol_addr") == "192.0.2.1"
    # no header (PROXY UNKNOWN): nothing changes
    r = phased(tmp_path, s)
    run(r)
    assert r.ctx.remote_addr == "127.0.0.1"


# -- nginx-tests realip.t ---------------------------------------------------------------------
REALIP_T = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.1.0/24"))


@pytest.mark.parametrize(
    ("values", "recursive", "want"),
    [
        (["10.0.0.1, 192.0.2.1"], False, "192.0.2.1"),  # realip multi
        (["192.0.2.1, 10.0.1.1, 127.0.0.1"], False, "127.0.0.1"),  # recursive off
        (["10.0.1.1, 192.0.2.1, 127.0.0.1"], True, "192.0.2.1"),  # recursive on
        (["192.0.2.1", "127.0.0.1, 10.0.1.1"], False, "10.0.1.1"),  # multi xff, off
        (["10.0.1.1", "192.0.2.1", "127.0.0.1"], True, "192.0.2.1"),  # multi xff, on
    ],
)
def test_nginx_realip_t(values: list[str], recursive: bool, want: str) -> None:
    found = forwarded_addr(("127.0.0.1", 5000), values, REALIP_T, recursive)
    assert found == (want, 0)


def test_realip_post_read_before_server_return(tmp_path: Path) -> None:
    # realip.t "realip post read": a server-level return already sees the real address.
    config = conf(
        tmp_path,
        "set_real_ip_from 127.0.0.1/32; server { listen 127.0.0.1:8081; return 204; }",
    )
    r = request(config, Worker(), extra="X-Real-IP: 192.0.2.1\r\n")
    r.ctx.remote_addr = "127.0.0.1"
    decision, _ = run(r)
    assert decision == Plain(204, b"", None)
    assert r.ctx.remote_addr == "192.0.2.1"
