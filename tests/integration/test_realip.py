"""The real client address (nginx's realip module) through a real wsgate, and later the
PROXY protocol, on loopback; the cases follow nginx-tests' realip.t."""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from tests.conftest import WsgateProcess
from tests.integration.loopback import HOST, Loop, get, loop_fixture
from tests.integration.test_tls_server import Pki
from tests.integration.test_tls_server import conf as tls_conf
from wsgate.http.proxy_protocol import SIGNATURE

Factory = Callable[..., WsgateProcess]

bg = pytest.fixture(loop_fixture)


def conf(port: int, server: str = "", location: str = "", listen: str = "") -> str:
    return f"""
error_log logs/info.log info;
events {{}}
http {{
  log_format t '$remote_addr:$remote_port|$realip_remote_addr|$status';
  access_log logs/access.log t;
  server {{
    listen 127.0.0.1:0 {listen};
    {server}
    location / {{
      proxy_pass http://127.0.0.1:{port};
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Addr "$remote_addr|$remote_port|$realip_remote_addr";
      {location}
    }}
  }}
}}
"""


def test_x_forwarded_for_recursive(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    server = (
        "set_real_ip_from 127.0.0.1; set_real_ip_from 10.0.0.0/8;"
        " real_ip_header X-Forwarded-For; real_ip_recursive on;"
    )
    gw = wsgate(conf(b.port, server))
    xff = "X-Forwarded-For: 198.51.100.1, 192.0.2.1:7000, 10.0.0.1\r\n"
    assert get(gw.port, extra=xff) == (200, b"b")
    head = b.requests[0].head.decode()
    assert "x-addr: 192.0.2.1|7000|127.0.0.1\r\n" in head.lower()
    # $proxy_add_x_forwarded_for appends the new $remote_addr
    assert "X-Forwarded-For: 198.51.100.1, 192.0.2.1:7000, 10.0.0.1, 192.0.2.1\r\n" in head
    assert gw.access_lines(1) == ["192.0.2.1:7000|127.0.0.1|200"]


def test_untrusted_or_absent_header_keeps_address(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, "set_real_ip_from 10.0.0.0/8;"))
    assert get(gw.port, extra="X-Real-IP: 192.0.2.1\r\n")[0] == 200
    gw2 = wsgate(conf(b.port, "set_real_ip_from 127.0.0.1;"))
    assert get(gw2.port)[0] == 200
    heads = [r.head.decode().lower() for r in b.requests]
    assert all("x-addr: 127.0.0.1|" in h for h in heads)


def test_deny_and_error_log_see_real_address(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, "set_real_ip_from 127.0.0.1;", "deny 192.0.2.1;"))
    assert get(gw.port, extra="X-Real-IP: 192.0.2.1\r\n")[0] == 403
    assert get(gw.port, extra="X-Real-IP: 192.0.2.2\r\n")[0] == 200
    gw.wait_log(r"\[error\] .*access forbidden by rule, client: 192\.0\.2\.1, ")
    assert b.accepted == 1


def test_next_request_on_connection_starts_from_peer(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, "set_real_ip_from 127.0.0.1;"))
    with socket.create_connection((HOST, gw.port), timeout=5) as s:
        s.sendall(
            b"GET /1 HTTP/1.1\r\nHost: t\r\nX-Real-IP: 192.0.2.1\r\n\r\n"
            b"GET /2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2
    lines = gw.access_lines(2)
    assert lines[0] == "192.0.2.1:-|127.0.0.1|200"
    assert lines[1].startswith("127.0.0.1:") and lines[1].endswith("|127.0.0.1|200")


def test_limit_req_key_is_real_address(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    text = conf(b.port, "set_real_ip_from 127.0.0.1;", "limit_req zone=r;").replace(
        "log_format", "limit_req_zone $binary_remote_addr zone=r:1m rate=1r/m;\n  log_format"
    )
    gw = wsgate(text)
    assert get(gw.port, extra="X-Real-IP: 192.0.2.1\r\n")[0] == 200
    assert get(gw.port, extra="X-Real-IP: 192.0.2.1\r\n")[0] == 503
    assert get(gw.port, extra="X-Real-IP: 192.0.2.2\r\n")[0] == 200
    gw.wait_log(r"limiting requests, excess: .* client: 192\.0\.2\.1, ")


# -- listen ... proxy_protocol ----------------------------------------------------------------
PP_VARS = (
    'proxy_set_header X-PP "$proxy_protocol_addr|$proxy_protocol_port|'
    '$proxy_protocol_server_addr|$proxy_protocol_server_port|$proxy_protocol_tlv_alpn";'
)
V1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n"


def exchange(port: int, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send ``parts`` (with a pause between them) and read until the server closes."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            s.sendall(part)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


REQ = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def test_proxy_protocol_untrusted_sets_variables_only(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    text = conf(b.port, "set_real_ip_from 10.0.0.0/8; real_ip_header proxy_protocol;", PP_VARS)
    gw = wsgate(text.replace("127.0.0.1:0 ", "127.0.0.1:0 proxy_protocol"))
    assert exchange(gw.port, V1 + REQ).startswith(b"HTTP/1.1 200 OK")
    head = b.requests[0].head.decode().lower()
    assert "x-pp: 192.0.2.1|1234|192.0.2.2|80|\r\n" in head
    assert "x-addr: 127.0.0.1|" in head  # 127.0.0.1 is not trusted: $remote_addr stays


def test_proxy_protocol_trusted_sets_remote_addr(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    server = "set_real_ip_from 127.0.0.1; real_ip_header proxy_protocol;"
    gw = wsgate(conf(b.port, server, "deny 192.0.2.9;", listen="proxy_protocol"))
    assert exchange(gw.port, V1 + REQ).startswith(b"HTTP/1.1 200 OK")
    assert "x-addr: 192.0.2.1|1234|127.0.0.1\r\n" in b.requests[0].head.decode().lower()
    assert gw.access_lines(1) == ["192.0.2.1:1234|127.0.0.1|200"]
    denied = b"PROXY TCP4 192.0.2.9 192.0.2.2 1 80\r\n" + REQ
    assert exchange(gw.port, denied).startswith(b"HTTP/1.1 403 Forbidden")
    gw.wait_log(r"access forbidden by rule, client: 192\.0\.2\.9, ")


def test_proxy_protocol_v2_tlv_and_keepalive(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, "", PP_VARS, listen="proxy_protocol"))
    addrs = bytes((198, 51, 100, 7, 127, 0, 0, 1)) + struct.pack("!HH", 4000, 80)
    body = addrs + b"\x01\x00\x02h2"
    header = SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body
    keep = b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n"
    data = exchange(gw.port, header + keep + REQ)
    assert data.count(b"HTTP/1.1 200 OK") == 2
    for r in b.requests:
        assert "x-pp: 198.51.100.7|4000|127.0.0.1|80|h2\r\n" in r.head.decode().lower()


def test_proxy_protocol_split_header(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, "", PP_VARS, listen="proxy_protocol"))
    data = exchange(gw.port, V1[:10], V1[10:] + REQ, pause=0.2)
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert "x-pp: 192.0.2.1|1234|" in b.requests[0].head.decode().lower()


def test_proxy_protocol_unknown_has_no_address(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, "", PP_VARS, listen="proxy_protocol"))
    assert exchange(gw.port, b"PROXY UNKNOWN\r\n" + REQ).startswith(b"HTTP/1.1 200 OK")
    assert "x-pp: ||||\r\n" in b.requests[0].head.decode().lower()


def test_broken_header_closes_and_logs_error(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, listen="proxy_protocol"))
    assert exchange(gw.port, REQ) == b""
    gw.wait_log(
        r'\[error\] .*broken header: "GET / HTTP/1\.1" while reading PROXY protocol, '
        rf"client: 127\.0\.0\.1, server: 127\.0\.0\.1:{gw.port}\n"
    )
    bad_v2 = SIGNATURE + b"\x11\x11\x00\x00"
    assert exchange(gw.port, bad_v2) == b""
    gw.wait_log(r"\[error\] .*unknown PROXY protocol version: 1 while reading PROXY protocol")
    assert b.accepted == 0
    assert "[alert]" not in gw.errors()


def test_proxy_protocol_timeout(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    gw = wsgate(conf(b.port, "client_header_timeout 1s;", listen="proxy_protocol"))
    assert exchange(gw.port, b"PROXY TCP4 ") == b""
    info = (gw.prefix / "logs" / "info.log").read_text()
    assert re.search(
        r"\[info\] .*client timed out \(110: Connection timed out\) while reading PROXY "
        rf"protocol, client: 127\.0\.0\.1, server: 127\.0\.0\.1:{gw.port}\n",
        info,
    )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    return Pki(trustme.CA(organization_name="Test CA"), d)


def test_proxy_protocol_before_tls(wsgate: Factory, pki: Pki) -> None:
    cert = pki.leaf("localhost")
    gw = wsgate(
        tls_conf(
            "server { listen 127.0.0.1:0 ssl proxy_protocol; server_name localhost;"
            f" ssl_certificate {cert[0]}; ssl_certificate_key {cert[1]};"
            ' location / { return 200 "$proxy_protocol_addr $scheme"; } }'
        )
    )
    raw = socket.create_connection((HOST, gw.port), timeout=5)
    raw.sendall(V1)
    with pki.client_context().wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"\r\n\r\n192.0.2.1 https")


# -- nginx-tests proxy_protocol.t and proxy_protocol2.t, case by case --------------------------
_P2 = SIGNATURE + b"\x21"
CASES = {
    "v1": {
        "tcp4": b"PROXY TCP4 192.0.2.1 192.0.2.2 123 5678\r\n",
        "tcp6": b"PROXY TCP6 2001:Db8::1 2001:Db8::2 123 5678\r\n",
        "unk1": b"PROXY UNKNOWN\r\n",
        "unk2": b"PROXY UNKNOWN 1 2 3 4 5 6\r\n",
    },
    "v2": {
        "tcp4": _P2
        + struct.pack(
            "!BH4s4sHH", 0x11, 12, bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]), 123, 5678
        ),
        "tcp6": _P2
        + struct.pack(
            "!BH16s16sHH",
            0x21,
            36,
            bytes.fromhex("20010db8" + "00" * 11 + "01"),
            bytes.fromhex("20010db8" + "00" * 11 + "02"),
            123,
            5678,
        ),
        "tlv": _P2
        + struct.pack(
            "!BH4s4sHH9x", 0x11, 21, bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]), 123, 5678
        ),
        "unk1": _P2 + b"\x01\x00\x00",
        "unk2": _P2 + b"\x41\x00\x04\x01\x02\x03\x04",
    },
}


def test_nginx_proxy_protocol_cases(bg: Loop, wsgate: Factory) -> None:
    b = bg.backend("b")
    up = f"proxy_pass http://127.0.0.1:{b.port};"
    gw = wsgate(f"""
events {{}}
http {{
  log_format pp $remote_addr:$remote_port;
  access_log off;
  proxy_set_header X-IP $remote_addr!$remote_port;
  proxy_set_header X-PP $proxy_protocol_addr!$proxy_protocol_port;
  proxy_set_header X-PPS $proxy_protocol_server_addr!$proxy_protocol_server_port;
  server {{
    listen 127.0.0.1:0 proxy_protocol;
    set_real_ip_from 127.0.0.1/32;
    location /pp {{
      real_ip_header proxy_protocol;
      {up}
      location /pp_4 {{ deny 192.0.2.1/32; access_log logs/pp4.log pp; {up} }}
      location /pp_6 {{ deny 2001:DB8::1/128; access_log logs/pp6.log pp; {up} }}
    }}
    location / {{ {up} }}
  }}
}}
""")

    def pp_get(path: str, header: bytes) -> str:
        request = f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode()
        data = exchange(gw.port, header + request)
        assert data, path
        if not data.startswith(b"HTTP/1.1 200 "):
            return data.decode()
        return b.requests[-1].head.decode().lower()

    for version, cases in CASES.items():
        seen = pp_get("/t1", cases["tcp4"])
        assert "x-pp: 192.0.2.1!123\r\n" in seen and "x-pps: 192.0.2.2!5678\r\n" in seen, version
        assert "x-ip: 127.0.0.1!" in seen and "!123\r\n" not in seen.split("x-ip:")[1][:30]
        seen = pp_get("/t1", cases["tcp6"])
        assert "x-pp: 2001:db8::1!123\r\n" in seen and "x-pps: 2001:db8::2!5678\r\n" in seen
        assert "x-ip: 127.0.0.1!" in seen
        if "tlv" in cases:
            assert "x-pp: 192.0.2.1!123\r\n" in pp_get("/t1", cases["tlv"])
        for unk in ("unk1", "unk2"):
            seen = pp_get("/t1", cases[unk])
            assert "x-pp: !\r\n" in seen and "x-pps: !\r\n" in seen, (version, unk)
        # realip
        seen = pp_get("/pp", cases["tcp4"])
        assert "x-ip: 192.0.2.1!123\r\n" in seen and "x-pp: 192.0.2.1!123\r\n" in seen
        seen = pp_get("/pp", cases["tcp6"])
        assert "x-ip: 2001:db8::1!123\r\n" in seen
        # access
        assert "403 Forbidden" in pp_get("/pp_4", cases["tcp4"])
        assert "403 Forbidden" in pp_get("/pp_6", cases["tcp6"])
    logs = gw.prefix / "logs"
    assert (logs / "pp4.log").read_text() == "192.0.2.1:123\n" * 2
    assert (logs / "pp6.log").read_text() == "2001:db8::1:123\n" * 2


@pytest.mark.parametrize("method", ["ip_hash", "hash $remote_addr"])
def test_balancing_key_is_real_address(bg: Loop, wsgate: Factory, method: str) -> None:
    b1, b2 = bg.backend("b1"), bg.backend("b2")

    def run(server: str) -> list[bytes]:
        gw = wsgate(
            "events {}\nhttp { access_log off;"
            f" upstream u {{ {method}; server 127.0.0.1:{b1.port}; server 127.0.0.1:{b2.port}; }}"
            f" server {{ listen 127.0.0.1:0; {server} location / {{ proxy_pass http://u; }} }} }}"
        )
        got = []
        for n in range(1, 21):
            for _ in range(2):
                status, body = get(gw.port, extra=f"X-Real-IP: 192.0.{n}.1\r\n")
                assert status == 200
                got.append(body)
        return got

    real = run("set_real_ip_from 127.0.0.1;")
    # each real address keeps its backend, and the addresses spread over both
    assert all(real[i] == real[i + 1] for i in range(0, len(real), 2))
    assert set(real) == {b"b1", b"b2"}
    # without set_real_ip_from every request has 127.0.0.1's backend
    assert len(set(run(""))) == 1


def test_nginx_proxy_protocol_ipv6(bg: Loop, wsgate: Factory) -> None:
    """nginx-tests' proxy_protocol_ipv6.t: an IPv6 connection carrying a TCP4 header."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    b = bg.backend("b")
    up = f"proxy_pass http://127.0.0.1:{b.port};"
    gw = wsgate(
        "events {}\nhttp { access_log off;"
        " proxy_set_header X-IP $remote_addr; proxy_set_header X-PP $proxy_protocol_addr;"
        " server { listen [::1]:0 proxy_protocol; real_ip_header proxy_protocol;"
        f" location / {{ {up} }} location /pp {{ set_real_ip_from ::1/128; {up} }} }} }}"
    )
    for path in ("/t", "/pp"):
        with socket.create_connection(("::1", gw.port), timeout=5) as s:
            s.sendall(b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2\r\n")
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            while s.recv(65536):
                pass
    first, second = (r.head.decode() for r in b.requests)
    assert "X-IP: ::1\r\n" in first and "X-PP: 127.0.0.1\r\n" in first
    assert "X-IP: 127.0.0.1\r\n" in second
