"""The PROXY protocol reader (:mod:`wsgate.http.proxy_protocol`), bytes in: nginx's
``ngx_proxy_protocol_read`` and the cases of nginx-tests' proxy_protocol.t,
proxy_protocol2.t and proxy_protocol_ipv6.t."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.model import Listen, LocationSettings, Server
from wsgate.config.variables import RequestContext
from wsgate.http.proxy_protocol import (
    MAX_HEADER,
    SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    complete,
    parse,
    tlv,
)
from wsgate.server.gateway import ListenGroup


def v2(body: bytes, command: int = 0x21, family: int = 0x11, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return SIGNATURE + bytes((command, family)) + struct.pack("!H", n) + body


V4 = bytes((192, 0, 2, 1)) + bytes((127, 0, 0, 1)) + struct.pack("!HH", 1234, 5678)
V6 = (
    bytes.fromhex("20010db8000000000000000000000001")
    + bytes.fromhex("00000000000000000000000000000001")
    + struct.pack("!HH", 1, 80)
)


def tlvs(*items: tuple[int, bytes]) -> bytes:
    return b"".join(bytes((t,)) + struct.pack("!H", len(v)) + v for t, v in items)


# -- v1 ---------------------------------------------------------------------------------------
def test_v1_tcp4() -> None:
    data = b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 5678\r\nGET / HTTP/1.1\r\n"
    header, used = parse(data)
    assert header == ProxyHeader("192.0.2.1", "192.0.2.2", 1234, 5678)
    assert data[used:] == b"GET / HTTP/1.1\r\n"


def test_v1_tcp6() -> None:
    data = b"PROXY TCP6 2001:Db8::1 ::1 1234 5678\r\n"
    assert parse(data) == (ProxyHeader("2001:Db8::1", "::1", 1234, 5678), len(data))


def test_v1_unknown_is_skipped_without_address() -> None:
    data = b"PROXY UNKNOWN 1 2 3\r\nGET"
    assert parse(data) == (None, len(data) - 3)
    assert parse(b"PROXY UNKNOWN\r\n") == (None, 15)


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b"GET / HTTP/1.1\r\n", "GET / HTTP/1.1"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 5678\n", "PROXY TCP4 192.0.2.1 192.0.2.2 1234 5678"),
        (b"PROXY TCP5 1.1.1.1 1.1.1.1 1 1\r\n", "PROXY TCP5 1.1.1.1 1.1.1.1 1 1"),
        (b"PROXY TCP4 1.1.1.x 1.1.1.1 1 1\r\n", "PROXY TCP4 1.1.1.x 1.1.1.1 1 1"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 65536 1\r\n", "PROXY TCP4 1.1.1.1 1.1.1.1 65536 1"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1  1\r\n", "PROXY TCP4 1.1.1.1 1.1.1.1  1"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 1 1\rX", "PROXY TCP4 1.1.1.1 1.1.1.1 1 1"),
        (b"PROXY UNKNOWN", "PROXY UNKNOWN"),
        (b"PROXY", "PROXY"),
        (b"", ""),
    ],
)
def test_v1_broken_header(data: bytes, shown: str) -> None:
    with pytest.raises(ProxyProtocolError) as exc:
        parse(data)
    assert exc.value.message == f'broken header: "{shown}"'


# -- v2 ---------------------------------------------------------------------------------------
def test_v2_inet() -> None:
    data = v2(V4) + b"GET"
    assert parse(data) == (ProxyHeader("192.0.2.1", "127.0.0.1", 1234, 5678), len(data) - 3)


def test_v2_inet6() -> None:
    header, _ = parse(v2(V6, family=0x21))
    assert header == ProxyHeader("2001:db8::1", "::1", 1, 80)


def test_v2_local_unspec_dgram_skipped() -> None:
    assert parse(v2(V4, command=0x20)) == (None, 16 + len(V4))
    assert parse(v2(b"", family=0x00)) == (None, 16)
    assert parse(v2(V4, family=0x12)) == (None, 16 + len(V4))
    assert parse(v2(b"x" * 10, family=0x31)) == (None, 26)  # AF_UNIX: unsupported


def test_v2_errors() -> None:
    with pytest.raises(ProxyProtocolError, match="unknown PROXY protocol version: 1"):
        parse(v2(V4, command=0x11))
    with pytest.raises(ProxyProtocolError, match="header is too large"):
        parse(v2(V4, length=100))
    with pytest.raises(ProxyProtocolError) as exc:
        parse(v2(V4[:8]))  # an address block too short: closed without a log line
    assert exc.value.message == ""


def test_v2_tlvs() -> None:
    ssl = bytes((0x07,)) + struct.pack("!I", 5) + tlvs((0x21, b"TLSv1.3"), (0x22, b"example"))
    body = V4 + tlvs((0x01, b"h2"), (0x02, b"example.org"), (0xE0, b"x"), (0x20, ssl))
    header, _ = parse(v2(body))
    assert header is not None
    assert tlv(header, "alpn") == "h2"
    assert tlv(header, "authority") == "example.org"
    assert tlv(header, "0x01") == "h2"
    assert tlv(header, "0xe0") == "x"
    assert tlv(header, "ssl_version") == "TLSv1.3"
    assert tlv(header, "ssl_cn") == "example"
    assert tlv(header, "ssl_0x22") == "example"
    assert tlv(header, "ssl_verify") == "5"
    assert tlv(header, "unique_id") is None
    assert tlv(header, "nonsense") is None
    assert tlv(header, "0xzz") is None
    assert tlv(header, "0x0x1") is None and tlv(header, "0x") is None


def test_v2_broken_tlv_is_not_found() -> None:
    header, _ = parse(v2(V4 + b"\x01\x00\x09ab"))
    assert header is not None and tlv(header, "alpn") is None


# -- when to parse ------------------------------------------------------------------------------
def test_complete() -> None:
    line = b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 5678\r\n"
    assert not complete(b"", 1024)
    assert not complete(b"PRO", 1024)
    assert not complete(line[:-1], 1024)
    assert complete(line, 1024)
    assert complete(b"GET ", 1024)  # no header: broken at once
    assert complete(line[:-1], 20)  # the buffer is full
    header = v2(V4)
    assert not complete(SIGNATURE[:5], 1024)
    assert not complete(header[:-1], 1024)
    assert complete(header, 1024)
    assert complete(v2(b"", length=2000)[:16], 1024)  # can never fit: too large
    assert not complete(v2(b"", length=2000)[:16], MAX_HEADER)


# -- configuration and variables --------------------------------------------------------------
def test_listen_proxy_protocol_and_variables(tmp_path: Path) -> None:
    (tmp_path / "nginx.conf").write_text(
        "events {}\nhttp { server { listen 127.0.0.1:0 proxy_protocol; listen 127.0.0.1:1;"
        ' return 200 "$proxy_protocol_addr $proxy_protocol_tlv_0xE0"; } }\n'
    )
    config = load("nginx.conf", prefix=str(tmp_path))
    listens = config.http.servers[0].listens
    assert [lst.proxy_protocol for lst in listens] == [True, False]
    ctx = RequestContext(remote_addr="127.0.0.1")
    assert ctx.lookup("proxy_protocol_addr") == "" and ctx.lookup("proxy_protocol_port") == ""
    header, _ = parse(v2(V4 + tlvs((0xE0, b"v"))))
    ctx.proxy_protocol = header
    assert ctx.lookup("proxy_protocol_addr") == "192.0.2.1"
    assert ctx.lookup("proxy_protocol_port") == "1234"
    assert ctx.lookup("proxy_protocol_server_addr") == "127.0.0.1"
    assert ctx.lookup("proxy_protocol_server_port") == "5678"
    assert ctx.lookup("proxy_protocol_tlv_0xE0") == "v"
    assert ctx.lookup("proxy_protocol_tlv_alpn") == ""


def test_nginx_proxy_protocol2_tlv_t() -> None:
    """nginx-tests' proxy_protocol2_tlv.t."""
    sub = tlvs(
        (0x21, b"TLSv1.2"),
        (0x22, b"example.com"),
        (0x23, b"AES256-SHA"),
        (0x24, b"SHA1"),
        (0x25, b"RSA512"),
    )
    ssl = bytes((0x01,)) + struct.pack("!I", 255) + sub
    body = V4 + tlvs(
        (0x1, b"ALPN1"),
        (0x2, b"localhost"),
        (0x3, b"4321"),
        (0x5, b"UNIQQ"),
        (0x20, ssl),
        (0x30, b"NETNS"),
        (0xAE, b"12345"),
    )
    header, _ = parse(v2(body))
    assert header is not None
    ctx = RequestContext()
    ctx.proxy_protocol = header

    def pair(a: str, b: str) -> str:
        return f"{ctx.lookup('proxy_protocol_tlv_' + a)}-{ctx.lookup('proxy_protocol_tlv_' + b)}"

    assert pair("alpn", "0x01") == "ALPN1-ALPN1"
    assert pair("authority", "0x02") == "localhost-localhost"
    assert ctx.lookup("proxy_protocol_tlv_0x3") == "4321"
    assert pair("unique_id", "0x05") == "UNIQQ-UNIQQ"
    assert pair("netns", "0x30") == "NETNS-NETNS"
    assert ctx.lookup("proxy_protocol_tlv_ssl_verify") == "255"
    assert pair("ssl_version", "ssl_0x21") == "TLSv1.2-TLSv1.2"
    assert pair("ssl_cn", "ssl_0x22") == "example.com-example.com"
    assert pair("ssl_cipher", "ssl_0x23") == "AES256-SHA-AES256-SHA"
    assert pair("ssl_sig_alg", "ssl_0x24") == "SHA1-SHA1"
    assert pair("ssl_key_alg", "ssl_0x25") == "RSA512-RSA512"
    assert ctx.lookup("proxy_protocol_tlv_0x000ae") == "12345"
    assert pair("0x000e", "0x0f") == "-"
    assert "\x00" in ctx.lookup("proxy_protocol_tlv_ssl")


def test_listen_group_proxy_protocol_by_address() -> None:
    """The ``listen`` an address chose (exact before wildcard) says whether to expect it."""
    server = Server((), (), LocationSettings())
    exact = Listen("127.0.0.2", 8080, proxy_protocol=True)
    wild = Listen("0.0.0.0", 8080)
    group = ListenGroup(("0.0.0.0", 8080, 0), [(server, exact), (server, wild)])
    assert group.proxy_protocol("127.0.0.2") is True
    assert group.proxy_protocol("127.0.0.1") is False
    assert group.proxy_protocol("127.0.0.2") is True  # cached
