"""TLS to upstreams through a real wsgate: ``proxy_pass https://`` and the ``proxy_ssl_*``
directives (https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_ssl_verify).

Certificates come from ``trustme``, made per test in the temporary directory.  The backends
are :class:`tests.integration.loopback.Backend` servers behind an ``ssl.SSLContext`` that
records what the TLS layer saw (the SNI, the client certificate, whether the session was
resumed), plus one ``websockets`` server for the wss end-to-end test.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from websockets.asyncio.server import serve
from websockets.sync.client import connect

from tests.conftest import WsgateProcess
from tests.integration.loopback import HOST, Backend, Loop, get, loop_fixture

Factory = Callable[..., WsgateProcess]

bg = pytest.fixture(loop_fixture)


@dataclass
class TlsSeen:
    """What a TLS backend's handshakes showed, one entry per accepted connection."""

    sni: list[str | None] = field(default_factory=list)
    reused: list[bool] = field(default_factory=list)
    client_cert: list[bool] = field(default_factory=list)


@dataclass
class Pki:
    ca: trustme.CA
    dir: Path

    def ca_file(self, name: str = "ca.pem") -> str:
        path = self.dir / name
        self.ca.cert_pem.write_to_path(str(path))
        return str(path)

    def server_context(
        self, *names: str, seen: TlsSeen | None = None, client_ca: trustme.CA | None = None
    ) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert(*names).configure_cert(ctx)
        if client_ca is not None:
            client_ca.configure_trust(ctx)
            ctx.verify_mode = ssl.CERT_REQUIRED
        if seen is not None:

            def sni(obj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
                seen.sni.append(name)

            ctx.sni_callback = sni  # type: ignore[assignment]
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(trustme.CA(), tmp_path)


def tls_backend(
    bg: Loop, name: str, ctx: ssl.SSLContext, seen: TlsSeen, **options: object
) -> Backend:
    """A loopback :class:`Backend` speaking TLS; ``seen`` records each connection's TLS."""
    backend = Backend(name, **options)  # type: ignore[arg-type]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obj = writer.get_extra_info("ssl_object")
        seen.reused.append(bool(obj.session_reused))
        seen.client_cert.append(obj.getpeercert() is not None and bool(obj.getpeercert()))
        await backend.handle(reader, writer)

    async def start() -> None:
        backend.server = await asyncio.start_server(handle, HOST, 0, ssl=ctx)
        backend.port = backend.server.sockets[0].getsockname()[1]

    asyncio.run_coroutine_threadsafe(start(), bg.loop).result(5)
    bg.backends.append(backend)
    return backend


def conf(upstream: str, location: str, target: str = "https://backend") -> str:
    return f"""
events {{}}
http {{
  log_format up '$status|$upstream_addr|$upstream_status';
  access_log logs/access.log up;
  upstream backend {{ {upstream} }}
  server {{
    listen 127.0.0.1:0;
    location / {{
      proxy_pass {target};
      proxy_connect_timeout 2s;
      proxy_read_timeout 2s;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $http_connection;
      {location}
    }}
  }}
}}
"""


def test_verify_off_accepts_an_untrusted_certificate_without_sni(
    wsgate: Factory, bg: Loop, pki: Pki
) -> None:
    seen = TlsSeen()
    up = tls_backend(bg, "up", pki.server_context("backend.test", seen=seen), seen)
    gw = wsgate(conf(f"server 127.0.0.1:{up.port};", ""))
    assert get(gw.port) == (200, b"up")
    # "proxy_ssl_server_name off" is the default: no SNI.
    assert seen.sni == [None]
    assert gw.access_lines(1)[-1] == f"200|127.0.0.1:{up.port}|200"


def test_verify_on_with_the_right_ca_and_name(wsgate: Factory, bg: Loop, pki: Pki) -> None:
    seen = TlsSeen()
    up = tls_backend(bg, "up", pki.server_context("backend.test", seen=seen), seen)
    location = (
        f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {pki.ca_file()};"
        " proxy_ssl_name backend.test; proxy_ssl_server_name on;"
    )
    gw = wsgate(conf(f"server 127.0.0.1:{up.port};", location))
    assert get(gw.port) == (200, b"up")
    assert seen.sni == ["backend.test"]


def test_name_is_checked_without_sni(wsgate: Factory, bg: Loop, pki: Pki) -> None:
    # nginx checks the name after the handshake even with proxy_ssl_server_name off.
    seen = TlsSeen()
    up = tls_backend(bg, "up", pki.server_context("backend.test", seen=seen), seen)
    ca = pki.ca_file()
    good = f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {ca}; proxy_ssl_name backend.test;"
    gw = wsgate(conf(f"server 127.0.0.1:{up.port};", good))
    assert get(gw.port) == (200, b"up")
    assert seen.sni == [None]
    bad = f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {ca}; proxy_ssl_name other.test;"
    gw2 = wsgate(conf(f"server 127.0.0.1:{up.port};", bad))
    assert get(gw2.port)[0] == 502
    gw2.wait_log(
        r'\[error\] .*upstream SSL certificate does not match "other.test" while SSL '
        rf'handshaking to upstream, client: 127.0.0.1, server: , request: "GET / HTTP/1.1", '
        rf'upstream: "https://127.0.0.1:{up.port}/"'
    )


def test_default_name_is_proxy_host_without_port(wsgate: Factory, bg: Loop, pki: Pki) -> None:
    seen = TlsSeen()
    up = tls_backend(bg, "up", pki.server_context("backend", seen=seen), seen)
    # $proxy_host is the upstream block's name, "backend".
    gw = wsgate(conf(f"server 127.0.0.1:{up.port};", "proxy_ssl_server_name on;"))
    assert get(gw.port) == (200, b"up")
    # An IP literal is never sent as SNI ("literal IPv4 and IPv6 addresses are not permitted").
    gw2 = wsgate(
        conf(
            f"server 127.0.0.1:{up.port};",
            "proxy_ssl_server_name on;",
            target=f"https://127.0.0.1:{up.port}",
        )
    )
    assert get(gw2.port) == (200, b"up")
    assert seen.sni == ["backend", None]


def test_wrong_ca_is_502_with_nginx_verify_error(wsgate: Factory, bg: Loop, pki: Pki) -> None:
    seen = TlsSeen()
    up = tls_backend(bg, "up", pki.server_context("backend.test"), seen)
    other = Pki(trustme.CA(), pki.dir)
    location = (
        f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {other.ca_file('other.pem')};"
        " proxy_ssl_name backend.test;"
    )
    gw = wsgate(conf(f"server 127.0.0.1:{up.port};", location))
    assert get(gw.port)[0] == 502
    gw.wait_log(
        r"\[error\] .*upstream SSL certificate verify error: \(20:unable to get local issuer "
        r"certificate\) while SSL handshaking to upstream, client: 127.0.0.1"
    )
    assert gw.access_lines(1)[-1] == f"502|127.0.0.1:{up.port}|502"


def test_failed_handshake_goes_to_the_next_server(wsgate: Factory, bg: Loop, pki: Pki) -> None:
    bad_seen, good_seen = TlsSeen(), TlsSeen()
    other = Pki(trustme.CA(), pki.dir)
    bad = tls_backend(bg, "bad", other.server_context("backend.test"), bad_seen)
    good = tls_backend(bg, "good", pki.server_context("backend.test"), good_seen)
    location = (
        f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {pki.ca_file()};"
        " proxy_ssl_name backend.test;"
    )
    gw = wsgate(conf(f"server 127.0.0.1:{bad.port}; server 127.0.0.1:{good.port};", location))
    assert get(gw.port) == (200, b"good")
    assert gw.access_lines(1)[-1] == (f"200|127.0.0.1:{bad.port}, 127.0.0.1:{good.port}|502, 200")


def test_client_certificate(wsgate: Factory, bg: Loop, pki: Pki) -> None:
    client_ca = trustme.CA()
    seen = TlsSeen()
    ctx = pki.server_context("backend.test", client_ca=client_ca)
    up = tls_backend(bg, "up", ctx, seen)
    leaf = client_ca.issue_cert("wsgate.test")
    cert, key = pki.dir / "client.pem", pki.dir / "client.key"
    for blob in leaf.cert_chain_pems:
        with open(cert, "ab") as f:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(key))
    gw = wsgate(
        conf(
            f"server 127.0.0.1:{up.port};",
            f"proxy_ssl_certificate {cert}; proxy_ssl_certificate_key {key};",
        )
    )
    assert get(gw.port) == (200, b"up")
    assert seen.client_cert == [True]
    # With TLS 1.2 the server refuses in the handshake; with TLS 1.3 the client's handshake is
    # over before the server checks, and the refusal ends the connection while the response
    # is awaited.  Either way: 502.
    gw2 = wsgate(conf(f"server 127.0.0.1:{up.port};", "proxy_ssl_protocols TLSv1.2;"))
    assert get(gw2.port)[0] == 502
    gw2.wait_log(r"\[error\] .*while SSL handshaking to upstream")
    gw3 = wsgate(conf(f"server 127.0.0.1:{up.port};", ""))
    assert get(gw3.port)[0] == 502
    gw3.wait_log(r"\[error\] .*while (SSL handshaking to|reading response header from) upstream")


def test_protocol_restriction(wsgate: Factory, bg: Loop, pki: Pki) -> None:
    seen = TlsSeen()
    ctx = pki.server_context("backend.test")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    up = tls_backend(bg, "up", ctx, seen)
    gw = wsgate(conf(f"server 127.0.0.1:{up.port};", "proxy_ssl_protocols TLSv1.3;"))
    assert get(gw.port)[0] == 502
    gw.wait_log(
        r"\[error\] .*(SSL_do_handshake\(\) failed \(SSL: error:SSL routines::.*\)|peer closed "
        r"connection in SSL handshake) while SSL "
        rf'handshaking to upstream, .*upstream: "https://127.0.0.1:{up.port}/"'
    )
    gw2 = wsgate(conf(f"server 127.0.0.1:{up.port};", "proxy_ssl_protocols TLSv1.2;"))
    assert get(gw2.port) == (200, b"up")


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_keepalive_and_session_reuse(
    wsgate: Factory, bg: Loop, pki: Pki, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSGATE_LOOP", loop)
    seen = TlsSeen()
    up = tls_backend(bg, "up", pki.server_context("backend.test"), seen)
    gw = wsgate(conf(f"server 127.0.0.1:{up.port}; keepalive 4;", ""))
    for _ in range(3):
        assert get(gw.port) == (200, b"up")
    assert (up.accepted, len(up.requests)) == (1, 3)
    # Without keepalive, each request is a new connection; the session is resumed.
    gw2 = wsgate(conf(f"server 127.0.0.1:{up.port};", ""))
    for _ in range(3):
        assert get(gw2.port) == (200, b"up")
    assert up.accepted == 4
    assert seen.reused == [False, False, True, True]
    gw3 = wsgate(conf(f"server 127.0.0.1:{up.port};", "proxy_ssl_session_reuse off;"))
    for _ in range(2):
        assert get(gw3.port) == (200, b"up")
    assert seen.reused[4:] == [False, False]


def test_wss_backend_through_wsgate(wsgate: Factory, bg: Loop, pki: Pki) -> None:
    ctx = pki.server_context("ws.test")

    async def echo(ws: object) -> None:
        async for message in ws:  # type: ignore[attr-defined]
            await ws.send(f"echo {message}")  # type: ignore[attr-defined]

    async def start() -> object:
        return await serve(echo, HOST, 0, ssl=ctx)

    server = asyncio.run_coroutine_threadsafe(start(), bg.loop).result(5)
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    location = (
        f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {pki.ca_file()};"
        " proxy_ssl_name ws.test; proxy_ssl_server_name on;"
    )
    gw = wsgate(conf(f"server 127.0.0.1:{port};", location))
    try:
        with connect(f"ws://127.0.0.1:{gw.port}/chat", open_timeout=5) as ws:
            for i in range(3):
                ws.send(f"m{i}")
                assert ws.recv(timeout=5) == f"echo m{i}"
    finally:

        async def stop() -> None:
            server.close()  # type: ignore[attr-defined]
            await server.wait_closed()  # type: ignore[attr-defined]

        asyncio.run_coroutine_threadsafe(stop(), bg.loop).result(5)
    assert gw.access_lines(1)[-1].startswith(f"101|127.0.0.1:{port}|101")
    assert "eof_received" not in gw.stderr
    assert os.path.exists(gw.access_log)


def test_health_checks_probe_with_tls(wsgate: Factory, bg: Loop, pki: Pki) -> None:
    good_seen, bad_seen = TlsSeen(), TlsSeen()
    good = tls_backend(bg, "good", pki.server_context("backend.test"), good_seen)
    other = Pki(trustme.CA(), pki.dir)
    bad = tls_backend(bg, "bad", other.server_context("backend.test"), bad_seen)
    location = (
        f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {pki.ca_file()};"
        " proxy_ssl_name backend.test;"
    )
    upstream = (
        f"server 127.0.0.1:{good.port}; server 127.0.0.1:{bad.port};"
        " health_check interval=200ms uri=/hc;"
    )
    gw = wsgate(conf(upstream, location))
    gw.wait_log(
        r"\[warn\] .*peer is unhealthy while SSL handshaking to upstream, health check \"\" of "
        rf'peer 127.0.0.1:{bad.port} in upstream "backend"'
    )
    assert "/hc" in good.paths  # the probe spoke HTTP inside TLS
    assert "upstream SSL certificate verify error: (20:" in gw.errors()
    for _ in range(3):
        assert get(gw.port) == (200, b"good")
