"""Pure parts of run-time resolution: the evaluated ``proxy_pass`` URL, DNS answers read as
nginx's resolver reads them, and the ``resolver``/``server ... resolve`` configuration."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate import __version__
from wsgate.config.loader import load
from wsgate.config.model import Config
from wsgate.config.variables import (
    UPSTREAM_BYTES,
    RequestContext,
    is_known_variable,
    request_headers_read,
)
from wsgate.errors import ConfigError
from wsgate.resolver.answers import Answer, Verdict, combine, make_query, read_answer, strerror
from wsgate.server.resolved import SharedResolved
from wsgate.upstream.target import TargetError, parse_target


# -- the evaluated URL ----------------------------------------------------------------------
def test_target_host_port_and_uri() -> None:
    t = parse_target("http://Example.net:8080/a?b")
    assert (t.scheme, t.host, t.port, t.no_port, t.uri) == (
        "http",
        "Example.net",
        8080,
        False,
        "/a?b",
    )
    assert t.proxy_host == "Example.net:8080" and not t.is_address
    t = parse_target("HTTPS://[::1]")
    assert (t.scheme, t.host, t.port, t.no_port, t.uri) == ("https", "::1", 443, True, None)
    assert t.is_address and t.proxy_host == "[::1]" and t.authority == "[::1]:443"
    # "if (url.uri.data[0] == '?')": a "/" goes first
    assert parse_target("http://h?x=1").uri == "/?x=1"
    t = parse_target("http://unix:/tmp/s.sock:/u")
    assert (t.unix, t.uri, t.proxy_host) == ("/tmp/s.sock", "/u", "localhost")


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("ftp://h", 'invalid URL prefix in "ftp://h"'),
        ("http://", 'invalid URL prefix in "http://"'),
        ("http://h:0/", 'invalid port in upstream "h:0/"'),
        ("http://h:65536", 'invalid port in upstream "h:65536"'),
        ("http://h:x", 'invalid port in upstream "h:x"'),
        ("http://:80", 'no host in upstream ":80"'),
        ("http://[::1/", 'invalid host in upstream "[::1/"'),
    ],
)
def test_target_errors_are_nginx_words(url: str, text: str) -> None:
    with pytest.raises(TargetError) as info:
        parse_target(url)
    assert str(info.value) == text


def test_target_port_limits() -> None:
    assert parse_target("http://h:65535").port == 65535
    assert parse_target("http://h:1").port == 1


# -- answers --------------------------------------------------------------------------------
def reply(query: dns.message.Message, *rrsets: str, rcode: int = 0) -> dns.message.Message:
    resp = dns.message.make_response(query)
    resp.set_rcode(rcode)
    for text in rrsets:
        name, ttl, rdtype, *data = text.split()
        resp.answer.append(dns.rrset.from_text(name, int(ttl), "IN", rdtype, *data))
    return resp


def test_addresses_and_smallest_ttl_through_cname() -> None:
    q = make_query("a.example.net", dns.rdatatype.A)
    r = reply(q, "a.example.net. 60 CNAME b.example.net.", "b.example.net. 300 A 192.0.2.1")
    ans = read_answer(r.to_wire(), q)
    assert ans.verdict is Verdict.ADDRESSES
    assert ans.addresses == ("192.0.2.1",) and ans.ttl == 60


def test_repeated_addresses_are_kept_in_wire_order() -> None:
    """proxy_next_upstream_tries.t "tries resolved": three equal A records are three peers."""
    q = make_query("a.example.net", dns.rdatatype.A)
    r = dns.message.make_response(q)
    for addr in ("192.0.2.2", "192.0.2.1", "192.0.2.1", "192.0.2.1"):
        r.answer.append(dns.rrset.from_text("a.example.net.", 60, "IN", "A", addr))
    ans = read_answer(r.to_wire(), q)
    assert ans.addresses == ("192.0.2.2", "192.0.2.1", "192.0.2.1", "192.0.2.1")


def test_cname_alone_is_resolved_next() -> None:
    q = make_query("a.example.net", dns.rdatatype.A)
    ans = read_answer(reply(q, "a.example.net. 30 CNAME b.example.net.").to_wire(), q)
    assert (ans.verdict, ans.cname, ans.ttl) == (Verdict.CNAME, "b.example.net", 30)


def test_error_codes_end_the_lookup_and_formerr_is_ignored() -> None:
    q = make_query("a.example.net", dns.rdatatype.A)
    for code in (dns.rcode.SERVFAIL, dns.rcode.NXDOMAIN, dns.rcode.REFUSED):
        ans = read_answer(reply(q, rcode=code).to_wire(), q)
        assert (ans.verdict, ans.code) == (Verdict.ERROR, code)
    ans = read_answer(reply(q, rcode=dns.rcode.FORMERR).to_wire(), q)
    assert ans.verdict is Verdict.IGNORE
    assert ans.log == f"DNS error (1: Format error), query id:{q.id}"


def test_wrong_id_truncation_and_garbage() -> None:
    q = make_query("a.example.net", dns.rdatatype.A)
    r = reply(q, "a.example.net. 60 A 192.0.2.1")
    r.id = (q.id + 1) % 65536
    ans = read_answer(r.to_wire(), q)
    assert ans.verdict is Verdict.IGNORE and ans.log.startswith("wrong ident ")
    r = reply(q)
    r.flags |= dns.flags.TC
    assert read_answer(r.to_wire(), q).verdict is Verdict.TRUNCATED
    assert read_answer(r.to_wire(), q, tcp=True).verdict is Verdict.IGNORE
    assert read_answer(b"\x00\x01", q).verdict is Verdict.IGNORE


_ZERO = Answer(Verdict.ADDRESSES)
_V4 = Answer(Verdict.ADDRESSES, ("127.0.0.201",), 60)
_V6 = Answer(Verdict.ADDRESSES, ("fe80::1",), 30)
_SERVFAIL = Answer(Verdict.ERROR, code=2)
_NXDOMAIN = Answer(Verdict.ERROR, code=3)


def _cname(target: str) -> Answer:
    return Answer(Verdict.CNAME, ttl=10, cname=target)


@pytest.mark.parametrize(
    ("a", "aaaa", "want"),
    [
        # both answered with addresses: A first, smallest TTL
        (_V4, _V6, Answer(Verdict.ADDRESSES, ("127.0.0.201", "fe80::1"), 30)),
        (_ZERO, _V6, Answer(Verdict.ADDRESSES, ("fe80::1",), 30)),
        (_V4, _ZERO, Answer(Verdict.ADDRESSES, ("127.0.0.201",), 60)),
        # an error to either query wins over the other's addresses (http_resolver_aaaa.t
        # "A error", "error AAAA", "two ns bad")
        (_V4, _SERVFAIL, Answer(Verdict.ERROR, code=2)),
        (_SERVFAIL, _V6, Answer(Verdict.ERROR, code=2)),
        (_SERVFAIL, _cname("alias2"), Answer(Verdict.ERROR, code=2)),
        (_SERVFAIL, _ZERO, Answer(Verdict.ERROR, code=2)),
        (_SERVFAIL, _NXDOMAIN, Answer(Verdict.ERROR, code=3)),
        # nothing at all: Host not found
        (_ZERO, _ZERO, Answer(Verdict.ERROR, code=3)),
        # addresses beat the other's CNAME
        (_V4, _cname("alias2"), Answer(Verdict.ADDRESSES, ("127.0.0.201",), 10)),
        (_cname("alias"), _V6, Answer(Verdict.ADDRESSES, ("fe80::1",), 10)),
        # only the last answer's CNAME is followed ("CNAME zero", "CNAME1 CNAME2")
        (_cname("alias"), _ZERO, Answer(Verdict.ERROR, code=3)),
        (_ZERO, _cname("alias2"), Answer(Verdict.CNAME, ttl=10, cname="alias2")),
        (_cname("alias4"), _cname("alias6"), Answer(Verdict.CNAME, ttl=10, cname="alias6")),
    ],
)
def test_a_and_aaaa_answers_combine_as_nginx(a: Answer, aaaa: Answer, want: Answer) -> None:
    assert combine([a, aaaa]) == want


def test_one_query_alone_decides() -> None:
    assert combine([_V4]) == _V4
    assert combine([_SERVFAIL]) == _SERVFAIL
    assert combine([_cname("b")]) == _cname("b")
    assert combine([_ZERO]) == _NXDOMAIN


def test_strerror() -> None:
    assert strerror(3) == "Host not found"
    assert strerror(110) == "Operation timed out"
    assert strerror(9) == "Unknown error"


# -- configuration ----------------------------------------------------------------------------
def conf(tmp_path: Path, body: str) -> Config:
    (tmp_path / "nginx.conf").write_text(f"events {{}}\nhttp {{\n{body}\n}}\n")
    return load("nginx.conf", prefix=str(tmp_path))


def error(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as info:
        conf(tmp_path, body)
    return str(info.value)


def test_resolver_parameters_and_inheritance(tmp_path: Path) -> None:
    c = conf(
        tmp_path,
        "resolver 127.0.0.1 [::1]:5353 valid=30s ipv6=off; resolver_timeout 5s;\n"
        "server { listen 127.0.0.1:0; location / { proxy_pass http://$host; } }",
    )
    loc = c.http.servers[0].locations[0].settings
    assert loc.resolver is not None
    assert loc.resolver.servers == (("127.0.0.1", 53), ("::1", 5353))
    assert (loc.resolver.valid, loc.resolver.ipv4, loc.resolver.ipv6) == (30.0, True, False)
    assert loc.resolver_timeout == 5.0
    assert loc.proxy_pass is not None and loc.proxy_pass.template is not None


@pytest.mark.parametrize(
    ("line", "text"),
    [
        ("resolver valid=1s;", "no name servers defined"),
        ("resolver 127.0.0.1 valid=x;", "invalid parameter: valid=x"),
        ("resolver 127.0.0.1 ipv6=no;", "invalid parameter: ipv6=no"),
        ("resolver 127.0.0.1 ipv4=off ipv6=off;", '"ipv4" and "ipv6" cannot both be "off"'),
        ("resolver 127.0.0.1:0;", 'invalid port in resolver "127.0.0.1:0"'),
        ("resolver 127.0.0.1 status_zone=z;", '"status_zone" of "resolver" is not supported'),
        ("resolver 127.0.0.1; resolver 127.0.0.2;", '"resolver" directive is duplicate'),
    ],
)
def test_resolver_errors(tmp_path: Path, line: str, text: str) -> None:
    assert text in error(tmp_path, line)


UPSTREAM = "upstream u {{ {zone} server example.net:8080 resolve; }}\n{resolver}"


def test_server_resolve_needs_zone_and_resolver(tmp_path: Path) -> None:
    out = error(tmp_path, UPSTREAM.format(zone="", resolver="resolver 127.0.0.1;"))
    assert out.startswith('resolving names at run time requires upstream "u" in ')
    assert out.endswith(" to be in shared memory")
    out = error(tmp_path, UPSTREAM.format(zone="zone z 64k;", resolver=""))
    assert out.startswith('no resolver defined to resolve names at run time in upstream "u"')
    c = conf(tmp_path, UPSTREAM.format(zone="zone z 64k;", resolver="resolver 127.0.0.1;"))
    up = c.http.upstreams["u"]
    assert up.zone == "z" and up.resolver is not None and up.resolver_timeout == 30.0
    server = up.servers[0]
    assert (server.resolve, server.host, server.port) == (True, "example.net", 8080)


def test_server_resolve_service(tmp_path: Path) -> None:
    c = conf(
        tmp_path,
        "resolver 127.0.0.1; upstream u { zone z 64k; server example.net service=http resolve; }",
    )
    server = c.http.upstreams["u"].servers[0]
    assert (server.service, server.host, server.resolve) == ("http", "example.net", True)


def test_server_resolve_with_an_address_is_a_plain_server(tmp_path: Path) -> None:
    c = conf(tmp_path, "upstream u { server 127.0.0.1:8080 resolve; }")
    assert not c.http.upstreams["u"].servers[0].resolve


@pytest.mark.parametrize(
    ("line", "text"),
    [
        ("server example.net service=http;", 'requires "resolve" parameter'),
        ("zone z 64k; server example.net:80 service=http resolve;", "may not have port"),
        ("zone z 64k; server 127.0.0.1 service=http resolve;", "requires domain name"),
        ("zone z 64k; server example.net service= resolve;", "service is empty"),
        ("zone z 0; server example.net;", 'invalid zone size "0"'),
    ],
)
def test_upstream_resolve_errors(tmp_path: Path, line: str, text: str) -> None:
    assert text in error(tmp_path, f"resolver 127.0.0.1; upstream u {{ {line} }}")


# -- variables --------------------------------------------------------------------------------
def test_request_id_is_32_hex_and_one_per_request() -> None:
    a, b = RequestContext(), RequestContext()
    rid = a.lookup("request_id")
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    a.invalidate()  # a rewrite or an internal redirect keeps it
    assert a.lookup("request_id") == rid
    assert b.lookup("request_id") != rid


def test_upstream_http_request_body_and_nginx_version() -> None:
    c = RequestContext()
    assert c.lookup("upstream_http_x_len") == "" and c.lookup("request_body") == ""
    c.upstream_headers = [("X-Len", "12")]
    assert c.lookup("upstream_http_x_len") == "12"
    c.set_request_body(b"a=1")
    assert c.lookup("request_body") == "a=1"
    assert c.lookup("nginx_version") == __version__
    for name in ("request_id", "request_body", "nginx_version", "upstream_http_x"):
        assert is_known_variable(name, set())


def test_upstream_bytes_one_per_try_and_kept_for_logs_that_read_them() -> None:
    c = RequestContext()
    assert c.lookup("upstream_bytes_sent") == ""
    c.upstream_bytes = [[0, 0], [68, 70]]
    assert c.lookup("upstream_bytes_received") == "0, 68"
    assert c.lookup("upstream_bytes_sent") == "0, 70"
    read = request_headers_read(["upstream_bytes_sent", "upstream_http_x_len", "http_host"])
    assert read == {UPSTREAM_BYTES, "upstream:x-len", "host"}


def test_shared_resolved_store_crosses_fork() -> None:
    store = SharedResolved(size=200)
    assert store.seq() == 0 and store.get("u", "a.example") is None
    assert store.put("u", "A.example", ["192.0.2.1"])
    seq = store.seq()
    assert store.put("u", "a.example", ["192.0.2.1"])  # the same: no change
    assert store.seq() == seq
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = store.put("u", "a.example", ["192.0.2.2", "192.0.2.3"])
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert store.seq() == seq + 1
    assert store.get("u", "a.example") == ["192.0.2.2", "192.0.2.3"]
    # full: the update is refused and nothing changes
    assert not store.put("u", "b.example", ["192.0.2.9"] * 40)
    assert store.get("u", "b.example") is None and store.seq() == seq + 1


def test_connection_time_counts_from_the_accept() -> None:
    c = RequestContext()
    c.connection_start = time.time() - 2.5
    assert 2.5 <= float(c.lookup("connection_time")) < 60
    assert re.fullmatch(r"\d+\.\d{3}", c.lookup("connection_time"))


def test_prefix_variable_with_an_empty_name() -> None:
    c = RequestContext()
    c.args = "l=42"
    assert c.lookup("arg_l") == "42" and c.lookup("arg_") == ""
    assert is_known_variable("arg_", set()) and is_known_variable("http_", set())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_read_without_raising(data: bytes) -> None:
    q = make_query("a.example.net", dns.rdatatype.A)
    for tcp in (False, True):
        assert isinstance(read_answer(data, q, tcp=tcp).verdict, Verdict)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_evaluated_url_parses_or_gives_nginx_words(url: str) -> None:
    try:
        parse_target(url)
    except TargetError as exc:
        assert str(exc).endswith('"') and " in " in str(exc)
