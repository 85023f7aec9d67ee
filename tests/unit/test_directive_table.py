"""The directive table, walked entry by entry: each default, the inheritance
http → server → location → nested location, and nginx's words for bad arguments; and the
generated docs/directives.md is the checked-in one."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from wsgate.config.directives import ENTRIES, TABLE, find, markdown
from wsgate.config.level import Level
from wsgate.config.loader import COMBINED, Loader, load
from wsgate.config.model import (
    CachePath,
    Config,
    LimitConnZone,
    LimitReqZone,
    LogFormat,
    Server,
    Source,
    SslServer,
    SslUpstream,
    Upstream,
)
from wsgate.config.parse import Stmt
from wsgate.config.table import CONTEXT_ORDER, LIF, Directive, Kind, Merge, enum_
from wsgate.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SRC = Source("t.conf", 1)
SETTINGS = [d for d in ENTRIES if d.kind is Kind.SETTING]
_LEVELS = ("http", "server", "location")

#: Two different valid argument lists for each directive whose parser is its own.
SAMPLES: dict[str, tuple[str, str]] = {
    "pid": ("a.pid", "b.pid"),
    "client_body_temp_path": ("/tmp/a 1", "b 1 2"),
    "http2_body_preread_size": ("1k", "1m"),
    "server_tokens": ("off", "build"),
    "http2_recv_buffer_size": ("128k", "1m"),
    "http2_chunk_size": ("1k", "16k"),
    "error_log": ("a.log", "b.log warn"),
    "keepalive_disable": ("none", "msie6 safari"),
    "worker_processes": ("2", "3"),
    "worker_cpu_affinity": ("01 10", "auto"),
    "worker_connections": ("100", "200"),
    "large_client_header_buffers": ("2 1k", "8 16k"),
    "keepalive_timeout": ("10s 5s", "20s"),
    "return": ("204", "301 https://example.org/"),
    "rewrite": ("^/(.*) /x/$1", "^ http://example.org/? permanent"),
    "break": ("", ""),
    "if": ("$arg_a", "$uri ~* ^/x(?<rest>.*)"),
    "set": ("$a 1", "$args x=$uri"),
    "access_log": ("a.log", "off"),
    "open_log_file_cache": ("max=3", "max=5 inactive=1m min_uses=2 valid=10s"),
    "allow": ("10.0.0.0/8", "all"),
    "deny": ("192.0.2.1", "unix:"),
    "set_real_ip_from": ("10.0.0.0/8", "unix:"),
    "real_ip_header": ("X-Forwarded-For", "proxy_protocol"),
    "resolver": ("127.0.0.1", "127.0.0.2:5353 valid=10s"),
    "stub_status": ("", "on"),
    "prometheus": ("", ""),
    "readiness": ("", ""),
    "upstream_control": ("", ""),
    "error_page": ("404 /404.html", "500 502 =200 @fallback"),
    "internal": ("", ""),
    "proxy_pass": ("http://127.0.0.1:1", "http://127.0.0.1:2/x"),
    "proxy_http_version": ("1.0", "1.1"),
    "proxy_set_header": ("X-A a", "X-B b"),
    "add_header": ("X-A a", "X-B $uri always"),
    "expires": ("1h", "modified -30m"),
    "proxy_hide_header": ("X-A", "X-B"),
    "proxy_pass_header": ("Server", "Date"),
    "proxy_redirect": ("http://a/ /b/", "~*^http://c/(.*) /$1"),
    "proxy_cookie_domain": ("a.example .b.example", "~^(.+)\\.com$ $1.org"),
    "proxy_cookie_path": ("/a/ /b/", "~*^/c/(.*) /$1"),
    "proxy_cookie_flags": ("a secure", "~^b httponly samesite=lax"),
    "proxy_ignore_headers": ("Expires", "Vary Set-Cookie"),
    "add_trailer": ("X-A a", "X-B $uri always"),
    "proxy_next_upstream": ("off", "http_502 error"),
    "proxy_upgrade_protocols": ("off", "foo"),
    "limit_conn": ("z 1", "z 2"),
    "limit_req": ("zone=r", "zone=r burst=5"),
    "proxy_cache": ("$arg_c", "off"),
    "proxy_cache_key": ("$uri", "$host$request_uri"),
    "proxy_cache_valid": ("10m", "200 302 any 1h"),
    "proxy_cache_methods": ("POST", "GET"),
    "proxy_cache_bypass": ("$arg_a", "$cookie_x $http_y"),
    "proxy_no_cache": ("$arg_a", "$cookie_x $http_y"),
    "proxy_cache_use_stale": ("error timeout", "updating http_500"),
    "proxy_cache_max_range_offset": ("0", "1m"),
    "limit_conn_status": ("429", "500"),
    "limit_req_status": ("429", "500"),
    "ssl_certificate": ("a.pem", "b.pem"),
    "ssl_certificate_key": ("a.key", "b.key"),
    "ssl_protocols": ("TLSv1.3", "TLSv1.2"),
    "ssl_ciphers": ("HIGH", "ALL"),
    "ssl_session_cache": ("off", "builtin:1000"),
    "ssl_client_certificate": ("ca.pem", "ca2.pem"),
    "ssl_verify_client": ("on", "optional"),
    "ssl": ("on", "off"),
    "ssl_password_file": ("a.pass", "b.pass"),
    "ssl_dhparam": ("dh.pem", "dh2.pem"),
    "ssl_ecdh_curve": ("prime256v1", "X25519:secp384r1"),
    "ssl_trusted_certificate": ("ca.pem", "ca2.pem"),
    "ssl_buffer_size": ("4k", "8k"),
    "ssl_session_ticket_key": ("a.key", "b.key"),
    "ssl_stapling": ("on", "off"),
    "proxy_ssl_trusted_certificate": ("ca.pem", "ca2.pem"),
    "proxy_ssl_name": ("a.example", "b.example"),
    "proxy_ssl_protocols": ("TLSv1.3", "TLSv1.2"),
    "proxy_ssl_ciphers": ("HIGH", "ALL"),
    "proxy_ssl_certificate": ("a.pem", "b.pem"),
    "proxy_ssl_certificate_key": ("a.key", "b.key"),
    "server": ("127.0.0.1:1", "127.0.0.1:2 weight=2 backup"),
    "listen": ("127.0.0.1:8080", "[::1]:0 default_server"),
    "server_name": ("example.org *.example.org", "~^(?<sub>.+)\\.example\\.net$"),
    "least_conn": ("", ""),
    "limit_rate": ("12k", "$arg_rate"),
    "limit_rate_after": ("1m", "$arg_after"),
    "ip_hash": ("", ""),
    "hash": ("$uri", "$uri consistent"),
    "random": ("", "two least_conn"),
    "keepalive": ("8", "16"),
    "health_check": ("", "interval=1s type=websocket"),
    "auth_basic": ("closed", "realm $host"),
    "auth_basic_user_file": ("a.htpasswd", "$arg_f"),
    "auth_request": ("/auth", "/auth2"),
    "auth_request_set": ("$a $upstream_http_x", "$b b"),
    "satisfy": ("any", "all"),
    "zone": ("z", "z2 64k"),
    "root": ("/srv/a", "b/$host"),
    "alias": ("/srv/a/", "/srv/$1"),
    "index": ("a.html b.html", "/c.html"),
    "try_files": ("$uri =404", "$uri $uri/ /index.html"),
    "types": ("", ""),
    "default_type": ("text/html", "application/octet-stream"),
    "max_ranges": ("1", "0"),
    "disable_symlinks": ("on", "if_not_owner from=$document_root"),
    "charset": ("utf-8", "$arg_c"),
    "source_charset": ("koi8-r", "windows-1251"),
    "charset_types": ("text/css", "text/html *"),
    "ssi_types": ("text/plain", "text/css *"),
    "gzip_types": ("text/css", "text/css *"),
    "gzip_comp_level": ("5", "9"),
    "gzip_window": ("512", "16k"),
    "gzip_hash": ("1k", "128k"),
    "gzip_http_version": ("1.0", "1.1"),
    "gzip_proxied": ("any", "expired no-cache auth"),
    "gzip_disable": ("msie6", "bot"),
    "websocket_ping_interval": ("30s", "5s client"),
    "websocket_ping_timeout": ("10s", "1m"),
    "websocket_max_message_size": ("1m", "64k both"),
    "websocket_max_frame_size": ("16k upstream", "1k"),
    "websocket_message_rate": ("10r/s", "100r/m burst=5 both"),
    "websocket_rebalance": ("0.1/m", "25%/m"),
}
#: A bad argument list and nginx's words, for each directive whose parser is its own; ``None``
#: for a parser that takes any value.
BAD: dict[str, tuple[str, str] | None] = {
    "pid": None,
    "client_body_temp_path": ("a 3", '"client_body_temp_path" directive invalid value'),
    "http2_body_preread_size": ("4g", "the maximum body preread buffer size is 2147483647"),
    "server_tokens": ("full", 'invalid value "full"'),
    "http2_recv_buffer_size": ("8", '"http2_recv_buffer_size" directive value is too small'),
    "http2_chunk_size": ("0", "the http2 chunk size cannot be zero"),
    "error_log": ("a.log loud", 'invalid log level "loud"'),
    "keepalive_disable": ("opera", 'invalid value "opera"'),
    "worker_processes": ("x", '"worker_processes" directive invalid value'),
    "worker_cpu_affinity": ("012", 'invalid character "2" in "worker_cpu_affinity"'),
    "worker_connections": ("x", 'invalid number "x"'),
    "large_client_header_buffers": (
        "4 8x",
        '"large_client_header_buffers" directive invalid value',
    ),
    "keepalive_timeout": ("10s 5x", '"keepalive_timeout" directive invalid value'),
    "return": ("1000", 'invalid return code "1000"'),
    "rewrite": ("^ /x sometimes", 'invalid parameter "sometimes"'),
    "break": None,
    "if": ("$a ~", 'invalid condition "$a"'),
    "set": ("a b", 'invalid variable name "a"'),
    "access_log": ("a.log combined gzip=0", 'invalid compression level "0"'),
    "open_log_file_cache": ("inactive=1m", '"open_log_file_cache" must have "max" parameter'),
    "allow": ("10.0.0.300", 'invalid parameter "10.0.0.300"'),
    "deny": ("nowhere", 'invalid parameter "nowhere"'),
    "set_real_ip_from": ("10.0.0.0/33", 'host not found in set_real_ip_from "10.0.0.0/33"'),
    "real_ip_header": None,
    "resolver": ("127.0.0.1 ipv4=off ipv6=off", '"ipv4" and "ipv6" cannot both be "off"'),
    "stub_status": ("off", 'invalid value "off" in "stub_status" directive'),
    "prometheus": None,
    "readiness": None,
    "upstream_control": None,
    "error_page": ("200 /x", 'value "200" must be between 300 and 599'),
    "internal": None,
    "proxy_pass": ("ftp://x", 'invalid URL prefix in "ftp://x"'),
    "proxy_http_version": ("2.0", 'invalid value "2.0" in "proxy_http_version" directive'),
    "proxy_set_header": None,
    "add_header": ("X-A a sometimes", 'invalid parameter "sometimes"'),
    "expires": ("@25h", '"expires" directive daily time value must be less than 24 hours'),
    "proxy_hide_header": None,
    "proxy_pass_header": None,
    "proxy_redirect": ("false", 'invalid parameter "false"'),
    "proxy_cookie_domain": ("on", 'invalid parameter "on"'),
    "proxy_cookie_path": ("on", 'invalid parameter "on"'),
    "proxy_cookie_flags": ("~( secure", "pcre2_compile() failed"),
    "proxy_ignore_headers": ("Location", 'invalid value "Location"'),
    "add_trailer": ("X-A a sometimes", 'invalid parameter "sometimes"'),
    "proxy_next_upstream": ("http_418", 'invalid value "http_418"'),
    "proxy_upgrade_protocols": ("off foo", 'invalid parameter "off"'),
    "limit_conn": ("nope 1", 'zero size shared memory zone "nope"'),
    "limit_req": ("zone=r burst=x", 'invalid burst value "burst=x"'),
    "proxy_cache": ("NONE", 'zero size shared memory zone "NONE"'),
    "proxy_cache_key": ("$", "invalid variable name"),
    "proxy_cache_valid": ("600 1m", 'invalid status "600"'),
    "proxy_cache_methods": ("PUT", 'invalid value "PUT"'),
    "proxy_cache_bypass": ("$", "invalid variable name"),
    "proxy_no_cache": ("$", "invalid variable name"),
    "proxy_cache_use_stale": ("sometimes", 'invalid value "sometimes"'),
    "proxy_cache_max_range_offset": ("x", '"proxy_cache_max_range_offset" directive invalid value'),
    "limit_conn_status": ("399", "value must be between 400 and 599"),
    "limit_req_status": ("x", '"limit_req_status" directive invalid number'),
    "ssl_certificate": ("$var", 'variables in "ssl_certificate" are not supported by wsgate'),
    "ssl_certificate_key": ("$v", 'variables in "ssl_certificate_key" are not supported'),
    "ssl_protocols": ("SSLv3", 'invalid value "SSLv3" in "ssl_protocols" directive'),
    "ssl_ciphers": ("NOPE-NOPE", 'SSL_CTX_set_cipher_list("NOPE-NOPE") failed'),
    "ssl_session_cache": ("big", 'invalid session cache "big"'),
    "ssl_client_certificate": ("$v", 'variables in "ssl_client_certificate" are not'),
    "ssl_verify_client": ("maybe", 'invalid value "maybe" in "ssl_verify_client" directive'),
    "ssl": ("maybe", 'invalid value "maybe" in "ssl" directive, it must be "on" or "off"'),
    "ssl_password_file": ("$v", 'variables in "ssl_password_file" are not supported'),
    "ssl_dhparam": ("$v", 'variables in "ssl_dhparam" are not supported'),
    "ssl_ecdh_curve": ("prime256v1:nope", 'SSL_CTX_set1_curves_list("prime256v1:nope") failed'),
    "ssl_trusted_certificate": ("$v", 'variables in "ssl_trusted_certificate" are not'),
    "ssl_buffer_size": ("5x", '"ssl_buffer_size" directive invalid value'),
    "ssl_session_ticket_key": ("$v", 'variables in "ssl_session_ticket_key" are not'),
    "ssl_stapling": ("maybe", 'invalid value "maybe" in "ssl_stapling" directive, it must be'),
    "proxy_ssl_trusted_certificate": ("$v", 'variables in "proxy_ssl_trusted_certificate"'),
    "proxy_ssl_name": None,
    "proxy_ssl_protocols": ("SSLv3", 'invalid value "SSLv3" in "proxy_ssl_protocols"'),
    "proxy_ssl_ciphers": ("NOPE-NOPE", 'SSL_CTX_set_cipher_list("NOPE-NOPE") failed'),
    "proxy_ssl_certificate": ("$v", 'variables in "proxy_ssl_certificate" are not supported'),
    "proxy_ssl_certificate_key": ("$v", 'variables in "proxy_ssl_certificate_key" are not'),
    "server": ("127.0.0.1:1 slow_start=3s", 'invalid parameter "slow_start=3s"'),
    "listen": ("127.0.0.1:0 quic", '"listen ... quic" is not supported by wsgate yet'),
    "server_name": ("a*b", 'invalid server name or wildcard "a*b"'),
    "least_conn": None,
    "ip_hash": None,
    "limit_rate": ("fast", '"limit_rate" directive invalid value'),
    "limit_rate_after": ("1x", '"limit_rate_after" directive invalid value'),
    "hash": ("$uri nonsense", 'invalid parameter "nonsense"'),
    "random": ("three", 'invalid parameter "three"'),
    "keepalive": ("0", 'invalid value "0" in "keepalive" directive'),
    "health_check": ("type=tcp", 'invalid parameter "type=tcp"'),
    "auth_basic": None,
    "auth_basic_user_file": None,
    "auth_request": None,
    "auth_request_set": ("a b", 'invalid variable name "a"'),
    "satisfy": ("some", 'invalid value "some"'),
    "zone": ("z 0", 'invalid zone size "0"'),
    "root": ("$document_root/x", 'the $document_root variable cannot be used in the "root"'),
    "alias": ("$realpath_root", 'the $realpath_root variable cannot be used in the "alias"'),
    "index": None,
    "types": None,
    "try_files": ("$uri =1000", 'invalid code "=1000"'),
    "default_type": None,
    "max_ranges": ("x", '"max_ranges" directive invalid number'),
    "disable_symlinks": ("maybe", 'invalid parameter "maybe"'),
    "charset": None,
    "source_charset": ("$x", 'variables in "source_charset" are not supported by wsgate'),
    "charset_types": None,
    "ssi_types": None,
    "gzip_types": None,
    "gzip_comp_level": ("10", "value must be between 1 and 9"),
    "gzip_window": ("1000", "must be 512, 1k, 2k, 4k, 8k, 16k, or 32k"),
    "gzip_hash": ("100", "must be 512, 1k, 2k, 4k, 8k, 16k, 32k, 64k, or 128k"),
    "gzip_http_version": ("2.0", 'invalid value "2.0"'),
    "gzip_proxied": ("any often", 'invalid value "often"'),
    "gzip_disable": ("(", "pcre2_compile() failed"),
    "websocket_ping_interval": ("5s sideways", 'invalid parameter "sideways"'),
    "websocket_ping_timeout": ("0", "directive invalid value"),
    "websocket_max_message_size": ("1m nobody", 'invalid parameter "nobody"'),
    "websocket_max_frame_size": ("lots", "directive invalid value"),
    "websocket_message_rate": ("10r/s burst=0", 'invalid burst value "burst=0"'),
    "websocket_rebalance": ("0/m", 'invalid value "0/m" in "websocket_rebalance" directive'),
}
_GENERIC = {"flag", "time", "size", "number"}


def _parser(d: Directive) -> str:
    name = getattr(d.parse, "__name__", "")
    return "enum" if name == "parse" else name


def samples(d: Directive) -> tuple[str, str]:
    """Two valid argument lists, the first one different from the default."""
    kind = _parser(d)
    if kind == "flag":
        return ("off", "on") if d.default == "on" else ("on", "off")
    if kind in ("time", "size", "number"):
        return {"time": ("7s", "9s"), "size": ("7k", "9k"), "number": ("7", "9")}[kind]
    if kind == "enum":
        assert d.parse is not None and d.parse.__doc__
        choices = [c for c in d.parse.__doc__.split(" | ") if c != d.default]
        return choices[0], choices[1]
    return SAMPLES[d.name]


def bad(d: Directive) -> tuple[str, str] | None:
    kind = _parser(d)
    if kind == "flag":
        return "maybe", f'invalid value "maybe" in "{d.name}" directive, it must be "on" or "off"'
    if kind in ("time", "size"):
        return "5x", f'"{d.name}" directive invalid value'
    if kind == "number":
        return "-1", f'"{d.name}" directive invalid number'
    if kind == "enum":
        return "loud", 'invalid value "loud"'
    return BAD[d.name]


def loader(tmp_path: Path) -> Loader:
    ld = Loader(prefix=str(tmp_path), conf_file=str(tmp_path / "nginx.conf"))
    ld.log_formats["combined"] = LogFormat("combined", ld.template(COMBINED, SRC))
    key = ld.template("$remote_addr", SRC)
    ld.conn_zones["z"] = LimitConnZone("z", key, 1 << 20)
    ld.req_zones["r"] = LimitReqZone("r", key, 1 << 20, 1000)
    ld.cache_paths["C"] = CachePath(str(tmp_path / "cache"), "C", 1 << 20)
    return ld


def stmt(d: Directive, args: str) -> Stmt:
    return Stmt(d.name, args.split(), SRC, None)


def test_every_entry_is_walked() -> None:
    """Adding a directive with its own parser means saying how to test it."""
    for d in SETTINGS:
        if _parser(d) not in _GENERIC | {"enum"}:
            assert d.name in SAMPLES and d.name in BAD, d.name
        assert d.target is not None and d.fields, d.name
        assert d.merge is Merge.INHERIT or d.default is None or d.merge is Merge.ARRAY, d.name
    for d in ENTRIES:
        assert d.contexts or d.kind is Kind.REFUSED, d.name


@pytest.mark.parametrize("d", SETTINGS, ids=lambda d: f"{d.name}@{min(d.contexts)}")
def test_default_is_the_models(tmp_path: Path, d: Directive) -> None:
    """The parsed default is what a configuration without the directive gets, and what the
    model class says when built by hand."""
    ld = loader(tmp_path)
    value = ld.default(d)
    assert d.target is not None
    got = Level(ld, None).collect(d.target)
    values = (value,) if len(d.fields) == 1 else value
    model = {f.name: f for f in dataclasses.fields(d.target)}
    for name, v in zip(d.fields, values, strict=True):
        assert got[name] == v
        if d.name == "access_log":  # a path under the prefix, which the model cannot know
            assert model[name].default == ()
        elif name in model and model[name].default is not dataclasses.MISSING:
            assert model[name].default == v, (d.name, name)
        else:  # a required model field, or one built from this one (certificates)
            assert d.target in (Config, Server, SslServer, Upstream), (d.name, name)


@pytest.mark.parametrize("d", SETTINGS, ids=lambda d: f"{d.name}@{min(d.contexts)}")
def test_inheritance_http_server_location_nested(tmp_path: Path, d: Directive) -> None:
    """Set A at the outermost level the directive allows and B in one location: nginx's merge
    gives every inner level the value by the entry's rule."""
    ld = loader(tmp_path)
    a_args, b_args = samples(d)
    assert d.target is not None
    outer = next(c for c in CONTEXT_ORDER if c in d.contexts)
    if outer not in _LEVELS:  # main or events: one level, nothing to inherit
        level = Level(ld, None)
        level.set(stmt(d, a_args), d)
        assert level.value(d) != ld.default(d)
        return
    http = Level(ld, None)
    server = Level(ld, http)
    loc_a, loc_b = Level(ld, server), Level(ld, server)
    nested_a, nested_b = Level(ld, loc_a), Level(ld, loc_b)
    by_ctx = {"http": http, "server": server, "location": loc_a}
    setter = by_ctx[outer]
    setter.set(stmt(d, a_args), d)
    a = setter.value(d)
    assert a != ld.default(d)
    b = None
    if "location" in d.contexts and setter is not loc_a:
        loc_b.set(stmt(d, b_args), d)
        b = loc_b.value(d)
    inner = [lv for lv in (http, server, loc_a, nested_a) if _depth(lv) > _depth(setter)]
    if d.merge in (Merge.INHERIT, Merge.ARRAY):
        for lv in inner:
            assert lv.value(d) == a
        if b is not None:
            assert nested_b.value(d) == b
            if d.merge is Merge.ARRAY:  # all-or-nothing: B replaces the whole outer list
                assert all(x not in b for x in a)
    else:  # not inherited
        for lv in inner:
            assert lv.value(d) == ld.default(d)
    for lv in (http, server, loc_a):  # outer levels keep the default
        if _depth(lv) < _depth(setter):
            assert lv.value(d) == ld.default(d)


@pytest.mark.parametrize(
    "d", [d for d in SETTINGS if d.merge is Merge.ARRAY], ids=lambda d: f"{d.name}"
)
def test_arrays_add_up_at_one_level(tmp_path: Path, d: Directive) -> None:
    level = Level(loader(tmp_path), None)
    a_args, b_args = samples(d)
    level.set(stmt(d, a_args), d)
    one = level.value(d)
    if d.name in ("limit_conn", "limit_req"):  # one zone once per level
        with pytest.raises(ConfigError, match=f'"{d.name}" directive is duplicate'):
            level.set(stmt(d, b_args), d)
        return
    level.set(stmt(d, b_args), d)
    assert level.value(d)[: len(one)] == one


IF_SETTINGS = [d for d in SETTINGS if LIF in d.contexts or d.name in ("limit_req", "allow")]


@pytest.mark.parametrize("d", IF_SETTINGS, ids=lambda d: d.name)
def test_inheritance_http_server_location_if(tmp_path: Path, d: Directive) -> None:
    """An ``if`` in a location is an implicit location nested in it: set A at the outermost
    level the directive allows (http, server or location), and the ``if`` level gets A by
    the entry's rule (a content handler too, when the ``if`` sets none); B set in the ``if``
    is the ``if``'s.  (``proxy_pass`` with a URI part is refused inside ``if``: see
    tests/unit/test_rewrite.py.)"""
    ld = loader(tmp_path)
    a_args, b_args = samples(d)
    http = Level(ld, None)
    server = Level(ld, http)
    location = Level(ld, server)
    outer = next(c for c in _LEVELS if c in d.contexts)
    setter = {"http": http, "server": server, "location": location}[outer]
    setter.set(stmt(d, a_args), d)
    a = setter.value(d)
    in_if = Level(ld, location, noname=True)
    assert d.target is not None
    got = in_if.collect(d.target)[d.fields[0]]
    if d.merge in (Merge.INHERIT, Merge.ARRAY):
        assert in_if.value(d) == a == got
    elif d.merge is Merge.HANDLER:
        assert got == a
    else:  # the script: the if's steps are its own (and compiled into the location's)
        assert in_if.value(d) == ld.default(d)
    if LIF in d.contexts and d.merge is Merge.INHERIT:
        other = Level(ld, location, noname=True)
        other.set(stmt(d, b_args), d)
        assert other.value(d) != a


def _depth(level: Level) -> int:
    n = 0
    while level.parent is not None:
        n, level = n + 1, level.parent
    return n


def test_content_handler_last_one_wins(tmp_path: Path) -> None:
    ld = loader(tmp_path)
    level = Level(ld, None)
    for name, args in (("proxy_pass", "http://127.0.0.1:1"), ("stub_status", "")):
        (d,) = TABLE[name]
        level.set(stmt(d, args), d)
    from wsgate.config.model import LocationSettings

    got = level.collect(LocationSettings)
    assert got["stub_status"] is True and got["proxy_pass"] is None


def _wrap(ctx: str, line: str) -> tuple[str, int]:
    """A configuration with ``line`` in context ``ctx``, and the line it is on."""
    before = {
        "main": [],
        "events": ["events {"],
        "http": ["http {"],
        "server": ["http {", "server {"],
        "location": ["http {", "server {", "location / {"],
        "upstream": ["http {", "upstream u {", "server 127.0.0.1:1;"],
    }[ctx]
    closing = ["}"] * (len(before) - (ctx == "upstream"))
    zones = [
        "limit_conn_zone $remote_addr zone=z:1m;",
        "limit_req_zone $remote_addr zone=r:1m rate=1r/s;",
    ]
    if ctx in _LEVELS:
        before = [before[0], *zones, *before[1:]]
    return "\n".join([*before, line, *closing]) + "\n", len(before) + 1


def _error(tmp_path: Path, ctx: str, line: str) -> str:
    text, lineno = _wrap(ctx, line)
    (tmp_path / "nginx.conf").write_text(text)
    with pytest.raises(ConfigError) as info:
        load("nginx.conf", prefix=str(tmp_path))
    msg = str(info.value)
    assert msg.endswith(f"in {tmp_path / 'nginx.conf'}:{lineno}"), msg
    return msg


ARGS = [d for d in ENTRIES if d.kind is not Kind.REFUSED and not d.arity.block]


@pytest.mark.parametrize("d", ARGS, ids=lambda d: f"{d.name}@{min(d.contexts)}")
def test_bad_arguments_get_nginx_words(tmp_path: Path, d: Directive) -> None:
    """Too few or too many arguments, the wrong context, a bad value, a duplicate."""
    ctx = next(c for c in CONTEXT_ORDER if c in d.contexts)
    wrong = f'invalid number of arguments in "{d.name}" directive'
    if d.arity.lo > 0:
        assert wrong in _error(tmp_path, ctx, f"{d.name};")
    if d.arity.hi != -1:
        assert wrong in _error(tmp_path, ctx, f"{d.name} {' '.join(['1'] * (d.arity.hi + 1))};")
    others = set().union(*(e.contexts for e in TABLE[d.name]))
    elsewhere = next((c for c in ("main", "http", "server", "location") if c not in others), None)
    if elsewhere is not None:
        text = f"{d.name} {' '.join(['1'] * d.arity.lo)};"
        assert f'"{d.name}" directive is not allowed here' in _error(tmp_path, elsewhere, text)
    if d.kind is not Kind.SETTING:
        return
    case = bad(d)
    if case is not None:
        assert case[1] in _error(tmp_path, ctx, f"{d.name} {case[0]};")
    if d.merge not in (Merge.ARRAY, Merge.SCRIPT):
        line = f"{d.name} {samples(d)[0]};"
        text = f"{line} {line}"
        words = d.duplicate or f'"{d.name}" directive is duplicate'
        assert words in _error(tmp_path, ctx, text)


#: No-op values with checks of their own (nginx's minimum, a power of two).
_NO_OP_VALUES = {"http2_pool_size": "4096", "http2_streams_index_size": "32"}


def test_no_op_and_refused_entries(tmp_path: Path) -> None:
    for d in ENTRIES:
        ctx = next((c for c in CONTEXT_ORDER if c in d.contexts), "http")
        # A no-op that checks its value is given one it takes ("64" is a number and a size).
        value = "64" if getattr(d.parse, "__name__", "") in ("number", "size") else "off"
        value = _NO_OP_VALUES.get(d.name, value)
        s = Stmt(d.name, [value] * d.arity.lo, SRC, [] if d.arity.block else None)
        if d.kind is Kind.REFUSED:
            with pytest.raises(ConfigError, match="not supported by wsgate|main context only"):
                find(s, ctx)
        elif d.kind is Kind.NO_OP:
            assert find(s, ctx) is d


def test_no_op_values_are_checked_as_nginx_checks_them() -> None:
    """The hash sizes and body buffer sizes change nothing in wsgate, but a bad value
    is still nginx's error (a configuration wsgate loads, nginx loads)."""
    cases = {
        "types_hash_max_size": ("big", '"types_hash_max_size" directive invalid number'),
        "server_names_hash_bucket_size": (
            "1x",
            '"server_names_hash_bucket_size" directive invalid value',
        ),
        "msie_refresh": ("on", "is not supported by wsgate"),
        "log_subrequest": ("on", "is not supported by wsgate"),
    }
    for name, (arg, words) in cases.items():
        with pytest.raises(ConfigError, match=re.escape(words)):
            find(Stmt(name, [arg], SRC, None), "http")
    assert find(Stmt("msie_refresh", ["off"], SRC, None), "http").name


def test_enum_documents_its_values() -> None:
    assert enum_("a", "b").__doc__ == "a | b"


def test_docs_directives_md_is_current() -> None:
    """Regenerate with ``python -m wsgate.config.directives > docs/directives.md``."""
    assert (ROOT / "docs" / "directives.md").read_text() == markdown()


def test_targets_are_model_classes() -> None:
    targets = {d.target for d in SETTINGS}
    from wsgate.config.model import LocationSettings

    assert targets == {Config, Server, LocationSettings, SslServer, SslUpstream, Upstream}


def test_configuration_summary_names_every_directive() -> None:
    """The manual's short summary (docs/configuration.md) may group and explain, but leaves
    no directive out."""
    readme = (ROOT / "docs" / "configuration.md").read_text()
    section = readme.split("## Supported configuration", 1)[1].split("\n## ", 1)[0]
    assert "docs/directives.md" in section
    for d in ENTRIES:
        if d.kind is not Kind.REFUSED and not d.name.endswith(("_hash_max_size", "_bucket_size")):
            if not d.name.endswith("_temp_path"):
                assert re.search(rf"(?<![\w-]){d.name}(?![\w-])", section), d.name
