"""``allow``/``deny`` matching and ``proxy_upgrade_protocols``: pure functions and the loader."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from wsgate.access import (
    check_access,
    parse_access_address,
    parse_upgrade_protocols,
    upgrade_allowed,
    without_upgrade,
)
from wsgate.config.loader import load
from wsgate.config.model import AccessRule, Config
from wsgate.errors import ConfigError


def rules(*specs: str) -> tuple[AccessRule, ...]:
    """``rules("deny 10.0.0.1", "allow all")``."""
    out = []
    for spec in specs:
        verb, arg = spec.split()
        network, unix, _ = parse_access_address(arg)
        out.append(AccessRule(verb == "allow", network, unix))
    return tuple(out)


def verdict(rs: tuple[AccessRule, ...], addr: str) -> str:
    rule = check_access(rs, addr)
    return "none" if rule is None else ("allow" if rule.allow else "deny")


# -- parsing ----------------------------------------------------------------------------------
def test_parse_addresses() -> None:
    assert parse_access_address("all") == (None, False, False)
    assert parse_access_address("unix:") == (None, True, False)
    assert parse_access_address("10.1.2.3") == (
        ipaddress.ip_network("10.1.2.3/32"),
        False,
        False,
    )
    assert parse_access_address("10.0.0.0/8") == (ipaddress.ip_network("10.0.0.0/8"), False, False)
    assert parse_access_address("10.0.0.1/8") == (ipaddress.ip_network("10.0.0.0/8"), False, True)
    assert parse_access_address("2001:db8::/32") == (
        ipaddress.ip_network("2001:db8::/32"),
        False,
        False,
    )
    assert parse_access_address("::1")[0] == ipaddress.ip_network("::1/128")
    assert parse_access_address("0.0.0.0/0")[0] == ipaddress.ip_network("0.0.0.0/0")


@pytest.mark.parametrize(
    "text",
    [
        "x",
        "10.0.0",
        "10.0.0.256",
        "10.0.0.0/33",
        "::/129",
        "10.0.0.0/255.0.0.0",
        "10.0.0.0/",
        "10.0.0.0/-1",
        "fe80::1%eth0",
        "unix:/tmp/x",
        "ALL",
        "example.org",
    ],
)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_access_address(text)


# -- matching ---------------------------------------------------------------------------------
def test_first_match_wins() -> None:
    rs = rules("deny 192.168.1.1", "allow 192.168.1.0/24", "allow 10.1.1.0/16", "deny all")
    assert verdict(rs, "192.168.1.1") == "deny"
    assert verdict(rs, "192.168.1.2") == "allow"
    assert verdict(rs, "10.1.200.3") == "allow"
    assert verdict(rs, "10.2.0.1") == "deny"
    assert verdict(rules("allow all", "deny 10.0.0.1"), "10.0.0.1") == "allow"


def test_no_rule_matches_is_none() -> None:
    assert check_access(rules("deny 10.0.0.0/8"), "192.0.2.1") is None
    assert check_access((), "192.0.2.1") is None


def test_cidr_edges_v4() -> None:
    rs = rules("allow 10.0.0.0/30", "deny all")
    assert [verdict(rs, f"10.0.0.{i}") for i in range(5)] == ["allow"] * 4 + ["deny"]
    assert verdict(rules("deny 0.0.0.0/0"), "203.0.113.9") == "deny"


def test_ipv6_rules() -> None:
    rs = rules("allow 2001:db8::/32", "deny ::1", "deny all")
    assert verdict(rs, "2001:db8:ffff::1") == "allow"
    assert verdict(rs, "2001:db9::1") == "deny"
    assert verdict(rs, "::1") == "deny"
    assert verdict(rs, "fe80::1%eth0") == "deny"  # a zone index does not break matching


def test_families_are_separate() -> None:
    # ngx_http_access_handler checks an IPv6 client only against IPv6 rules (and all).
    assert verdict(rules("deny 127.0.0.1"), "::1") == "none"
    assert verdict(rules("deny ::1"), "127.0.0.1") == "none"
    assert verdict(rules("deny ::/0"), "127.0.0.1") == "none"
    assert verdict(rules("deny 10.0.0.0/8", "allow ::/0", "deny all"), "::1") == "allow"


def test_ipv4_mapped_clients_use_ipv4_rules() -> None:
    rs = rules("allow 127.0.0.0/8", "deny all")
    assert verdict(rs, "::ffff:127.0.0.1") == "allow"
    assert verdict(rs, "::ffff:10.0.0.1") == "deny"
    assert verdict(rules("deny 10.0.0.1", "allow all"), "::ffff:10.0.0.1") == "deny"
    # nginx: IPv4 rules exist, so the IPv6 rules are not consulted for a mapped address ...
    assert verdict(rules("deny 192.0.2.0/24", "deny ::ffff:10.0.0.0/104"), "::ffff:10.0.0.1") == (
        "none"
    )
    # ... and with no IPv4 rule (``all`` counts as one) the IPv6 rules are.
    assert verdict(rules("deny ::ffff:10.0.0.0/104"), "::ffff:10.0.0.1") == "deny"


def test_unix_clients() -> None:
    assert verdict(rules("deny 127.0.0.1", "allow unix:", "deny all"), "unix:") == "allow"
    assert verdict(rules("deny all", "allow unix:"), "unix:") == "deny"
    assert verdict(rules("deny unix:"), "127.0.0.1") == "none"
    assert verdict(rules("deny 127.0.0.0/8"), "unix:") == "none"


def test_unparsable_address_matches_nothing() -> None:
    assert check_access(rules("deny all"), "") is None


# -- upgrade allow-list -----------------------------------------------------------------------
def test_upgrade_allowed() -> None:
    ws = frozenset({"websocket"})
    assert upgrade_allowed(ws, "websocket")
    assert upgrade_allowed(ws, "WebSocket")
    assert upgrade_allowed(ws, "h2c, websocket")
    assert upgrade_allowed(ws, "websocket/13")
    assert not upgrade_allowed(ws, "h2c")
    assert not upgrade_allowed(ws, "")
    assert not upgrade_allowed(ws, "websockets")
    assert not upgrade_allowed(frozenset(), "websocket")
    assert upgrade_allowed(frozenset({"h2c", "websocket"}), "H2C")
    assert upgrade_allowed(frozenset({"http"}), "HTTP/2.0")


def test_parse_upgrade_protocols() -> None:
    assert parse_upgrade_protocols(["WebSocket", "h2c"]) == frozenset({"websocket", "h2c"})
    assert parse_upgrade_protocols(["off"]) == frozenset()
    assert parse_upgrade_protocols(["OFF"]) == frozenset()
    for bad in (["off", "websocket"], ["web socket"], ["a/b"], ["x,y"]):
        with pytest.raises(ValueError):
            parse_upgrade_protocols(bad)


def test_without_upgrade() -> None:
    headers = [
        ("Host", "h"),
        ("Upgrade", "$x"),
        ("UPGRADE", "websocket"),
        ("Connection", "upgrade"),
        ("X-A", "1"),
    ]
    assert without_upgrade(headers) == [("Host", "h"), ("Connection", ""), ("X-A", "1")]
    assert without_upgrade([("Connection", "keep-alive, Upgrade")]) == [
        ("Connection", "keep-alive")
    ]
    assert without_upgrade([("Connection", "close")]) == [("Connection", "close")]


# -- the loader -------------------------------------------------------------------------------
def conf(tmp_path: Path, body: str) -> Config:
    (tmp_path / "nginx.conf").write_text(f"events {{}}\nhttp {{\n{body}\n}}\n")
    return load("nginx.conf", prefix=str(tmp_path))


def error(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as info:
        conf(tmp_path, body)
    return str(info.value)


def test_rules_inherit_all_or_nothing(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "allow 10.0.0.0/8;\ndeny all;\n"
        "server { listen 127.0.0.1:0;\n"
        "  location /a { proxy_pass http://127.0.0.1:9; }\n"
        "  location /b { allow 192.0.2.1; proxy_pass http://127.0.0.1:9;\n"
        "    location /b/c { proxy_pass http://127.0.0.1:9; } }\n"
        "}\n"
        "server { listen 127.0.0.1:0; deny 203.0.113.0/24;\n"
        "  location / { proxy_pass http://127.0.0.1:9; } }\n",
    )
    one, two = config.http.servers
    a, b = one.locations
    assert [(r.allow, str(r.network)) for r in one.settings.access_rules] == [
        (True, "10.0.0.0/8"),
        (False, "None"),
    ]
    assert a.settings.access_rules == one.settings.access_rules
    assert [(r.allow, str(r.network)) for r in b.settings.access_rules] == [(True, "192.0.2.1/32")]
    assert b.locations[0].settings.access_rules == b.settings.access_rules
    assert [str(r.network) for r in two.locations[0].settings.access_rules] == ["203.0.113.0/24"]
    src = b.settings.access_rules[0].source
    assert src is not None and src.line == 7


def test_no_rules_by_default(tmp_path: Path) -> None:
    config = conf(tmp_path, "server { listen 127.0.0.1:0; }")
    settings = config.http.servers[0].settings
    assert settings.access_rules == ()
    assert settings.proxy_upgrade_protocols == frozenset({"websocket"})


def test_low_bits_warning(tmp_path: Path) -> None:
    config = conf(tmp_path, "server { listen 127.0.0.1:0;\n allow 10.0.0.1/8; }")
    (rule,) = config.http.servers[0].settings.access_rules
    assert str(rule.network) == "10.0.0.0/8"
    assert config.warnings == (
        f"low address bits of 10.0.0.1/8 are meaningless in {tmp_path / 'nginx.conf'}:4",
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("server {\n allow x; }", 'invalid parameter "x"'),
        ("server {\n deny 10.0.0.0/33; }", 'invalid parameter "10.0.0.0/33"'),
        ("server {\n deny 10.0.0.1 10.0.0.2; }", 'invalid number of arguments in "deny"'),
        ("server {\n allow; }", 'invalid number of arguments in "allow"'),
        ("server {\n proxy_upgrade_protocols off h2c; }", 'invalid parameter "off"'),
        ("server {\n proxy_upgrade_protocols a/b; }", 'invalid parameter "a/b"'),
        (
            "server {\n proxy_upgrade_protocols websocket;\n proxy_upgrade_protocols h2c; }",
            '"proxy_upgrade_protocols" directive is duplicate',
        ),
    ],
)
def test_config_errors(tmp_path: Path, body: str, message: str) -> None:
    text = error(tmp_path, body)
    assert text.startswith(message), text
    assert text.endswith(f"{tmp_path / 'nginx.conf'}:{3 + body.count(chr(10))}"), text


def test_allow_in_main_is_not_allowed(tmp_path: Path) -> None:
    (tmp_path / "nginx.conf").write_text("allow all;\nevents {}\n")
    with pytest.raises(ConfigError, match=r'"allow" directive is not allowed here in .*:1$'):
        load("nginx.conf", prefix=str(tmp_path))


def test_upgrade_protocols_inherit(tmp_path: Path) -> None:
    config = conf(
        tmp_path,
        "proxy_upgrade_protocols websocket H2C;\n"
        "server { listen 127.0.0.1:0;\n"
        "  location /a { proxy_pass http://127.0.0.1:9; }\n"
        "  location /b { proxy_upgrade_protocols off; proxy_pass http://127.0.0.1:9; } }",
    )
    (server,) = config.http.servers
    a, b = server.locations
    assert server.settings.proxy_upgrade_protocols == frozenset({"websocket", "h2c"})
    assert a.settings.proxy_upgrade_protocols == frozenset({"websocket", "h2c"})
    assert b.settings.proxy_upgrade_protocols == frozenset()
