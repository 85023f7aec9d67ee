"""TLS termination (``listen ... ssl``) through a real wsgate, with the standard library's ssl
client and ``websockets``.  Certificates are made here with ``trustme``; nothing is checked in.

https://nginx.org/en/docs/http/ngx_http_ssl_module.html
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tests.conftest import WsgateProcess, start_wsgate
from wsgate.config.loader import load
from wsgate.config.model import Config
from wsgate.observability.logs import AccessLogs, ErrorLogger
from wsgate.server.gateway import Gateway, ListenGroup, bind_keys, open_groups
from wsgate.server.tls import rfc2253

Factory = Callable[..., WsgateProcess]
LOG_FORMAT = (
    'log_format tls \'$scheme $https $ssl_protocol $ssl_cipher "$ssl_server_name" '
    '"$ssl_client_s_dn" $ssl_client_verify $ssl_session_reused $status\';'
    " access_log logs/access.log tls;"
)


@dataclass
class Pki:
    """A test CA and files for the certificates wsgate loads."""

    ca: trustme.CA
    dir: Path

    def leaf(self, name: str, *identities: str, ca: trustme.CA | None = None) -> tuple[str, str]:
        cert = (ca or self.ca).issue_cert(*(identities or (name,)), common_name=name)
        crt, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(crt))
        cert.private_key_pem.write_to_path(str(key))
        return str(crt), str(key)

    def client_context(self, **kw: object) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        for k, v in kw.items():
            setattr(ctx, k, v)
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    return Pki(trustme.CA(organization_name="Test CA"), d)


def conf(servers: str, http: str = "") -> str:
    return (
        f"error_log logs/error.log info;\nevents {{}}\nhttp {{ {LOG_FORMAT} {http}\n{servers}\n}}\n"
    )


def tls_server(cert: tuple[str, str], names: str = "localhost", extra: str = "") -> str:
    return (
        f"server {{ listen 127.0.0.1:0 ssl; server_name {names};"
        f" ssl_certificate {cert[0]}; ssl_certificate_key {cert[1]}; {extra}"
        ' location / { return 200 "$server_name $scheme $ssl_server_name"; } }'
    )


@dataclass
class Seen:
    """What the client saw of one TLS connection."""

    version: str | None
    cipher: str | None
    session: ssl.SSLSession | None
    reused: bool


def request(
    port: int,
    ctx: ssl.SSLContext,
    sni: str | None = "localhost",
    host: str = "localhost",
    session: ssl.SSLSession | None = None,
    path: str = "/",
) -> tuple[bytes, Seen]:
    """One GET over TLS; the whole response (the server closes) and the connection's facts."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname=sni, session=session)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        suite = s.cipher()
        cipher = suite[0] if suite else None
        return data, Seen(s.version(), cipher, s.session, bool(s.session_reused))
    finally:
        s.close()


def body(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]


def start(tmp: Path, text: str) -> WsgateProcess:
    return start_wsgate(tmp / "gw", text)


# -- wss -----------------------------------------------------------------------------------------
async def _echo(ws: ServerConnection) -> None:
    async for msg in ws:
        await ws.send(msg)


WS_LOCATION = (
    "location / { proxy_pass http://127.0.0.1:%d; proxy_set_header Upgrade $http_upgrade;"
    " proxy_set_header Connection upgrade; }"
)


def test_wss_to_ws_backend_and_variables(tmp_path: Path, pki: Pki) -> None:
    cert = pki.leaf("localhost")

    async def scenario() -> None:
        backend = await serve(_echo, "127.0.0.1", 0)
        port = backend.sockets[0].getsockname()[1]
        gw = await asyncio.to_thread(
            start,
            tmp_path,
            conf(
                f"server {{ listen 127.0.0.1:0 ssl; server_name localhost;"
                f" ssl_certificate {cert[0]}; ssl_certificate_key {cert[1]};"
                f" {WS_LOCATION % port} }}"
            ),
        )
        try:
            url = f"wss://127.0.0.1:{gw.port}/chat"
            async with connect(url, ssl=pki.client_context(), server_hostname="localhost") as ws:
                tls = ws.transport.get_extra_info("ssl_object")
                assert tls.selected_alpn_protocol() is None  # websockets offers no ALPN
                for msg in ("hello", b"\x00\x01binary", "x" * 200_000):
                    await ws.send(msg)
                    assert await ws.recv() == msg
            line = (await asyncio.to_thread(gw.access_lines, 1))[0]
            proto, cipher = tls.version(), tls.cipher()[0]
            assert line == f'https on {proto} {cipher} "localhost" "-" NONE . 101', line
        finally:
            gw.stop()
            backend.close()

    asyncio.run(scenario())


def test_alpn_http11_and_scheme_in_redirect(wsgate: Factory, pki: Pki) -> None:
    cert = pki.leaf("localhost")
    gw = wsgate(
        conf(
            f"server {{ listen 127.0.0.1:0 ssl; server_name localhost;"
            f" ssl_certificate {cert[0]}; ssl_certificate_key {cert[1]};"
            " location /dir/ { proxy_pass http://127.0.0.1:9; } }"
        ),
    )
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        assert s.selected_alpn_protocol() == "http/1.1"
        s.sendall(b"GET /dir HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 301 ")
    assert f"Location: https://localhost:{gw.port}/dir/\r\n".encode() in head


# -- in process: a socket bound here, so several servers can share its port -----------------------
def in_process(
    tmp_path: Path,
    make_conf: Callable[[int], str],
    scenario: Callable[[Gateway, int, Path], Awaitable[None]],
) -> None:
    """Run wsgate's Gateway in this process on a listening socket bound here (port 0, read
    back) and handed to ``open_groups`` as the running one, so the configuration can name
    the port (two servers on one socket, a socket kept across a reload)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    port = sock.getsockname()[1]
    conf_file = tmp_path / "nginx.conf"
    conf_file.write_text(make_conf(port))

    def loader() -> Config:
        return load(str(conf_file), prefix=str(tmp_path))

    config = loader()
    key = next(iter(bind_keys(config)))
    groups = open_groups(config, {key: ListenGroup(key, [], sock, None, port)})
    assert groups[key].sock is sock

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gw = Gateway(config, loop, ErrorLogger(), AccessLogs(), reload_config=loader)
        await gw.serve(groups)
        try:
            await scenario(gw, port, conf_file)
        finally:
            gw.stop_now()
            await asyncio.sleep(0)
            gw.error_log.close()
            gw.access_logs.close()

    asyncio.run(main())


def _peer_san(port: int, ctx: ssl.SSLContext, sni: str | None) -> object:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=sni) as s:
        cert = s.getpeercert()
    assert cert is not None
    return cert["subjectAltName"]


# -- SNI -----------------------------------------------------------------------------------------
def test_sni_selects_certificate_host_selects_server(tmp_path: Path, pki: Pki) -> None:
    a, b = pki.leaf("a.test"), pki.leaf("b.test")

    def make(port: int) -> str:
        servers = tls_server(a, "a.test") + tls_server(b, "b.test")
        return conf(servers.replace("127.0.0.1:0", f"127.0.0.1:{port}"))

    async def scenario(gw: Gateway, port: int, _: Path) -> None:
        assert len(gw.groups) == 1  # both servers on one socket
        ctx = pki.client_context()
        for name in ("a.test", "b.test"):
            san = await asyncio.to_thread(_peer_san, port, ctx, name)
            assert san == (("DNS", name),)
            resp, _s = await asyncio.to_thread(request, port, ctx, name, name)
            assert body(resp) == f"{name} https {name}".encode()
        # No SNI: the default (first) server's certificate.
        nosni = pki.client_context(check_hostname=False)
        assert await asyncio.to_thread(_peer_san, port, nosni, None) == (("DNS", "a.test"),)
        # An unknown name: the default server's certificate too.
        unknown = pki.client_context(check_hostname=False)
        san = await asyncio.to_thread(_peer_san, port, unknown, "c.test")
        assert san == (("DNS", "a.test"),)
        # SNI only picks the certificate: Host picks the server, as in nginx.
        resp, _s = await asyncio.to_thread(request, port, ctx, "a.test", "b.test")
        assert body(resp) == b"b.test https a.test"

    in_process(tmp_path, make, scenario)


# -- mutual TLS ----------------------------------------------------------------------------------
def test_mutual_tls(wsgate: Factory, pki: Pki) -> None:
    cert = pki.leaf("localhost")
    ca_file = pki.dir / "client-ca.pem"
    pki.ca.cert_pem.write_to_path(str(ca_file))
    gw = wsgate(
        conf(
            tls_server(
                cert,
                extra=f"ssl_client_certificate {ca_file}; ssl_verify_client on;"
                ' location /dn { return 200 "$ssl_client_verify $ssl_client_s_dn"; }',
            )
        ),
    )
    # Accepted: a certificate from the CA.
    client = pki.ca.issue_cert("client@test", common_name="client", organization_name="Org")
    ctx = pki.client_context()
    client.configure_cert(ctx)
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"GET /dn HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data
    # nginx's RFC 2253 form is what cryptography prints as RFC 4514 (same order and escapes).
    subject = x509.load_pem_x509_certificate(client.cert_chain_pems[0].bytes()).subject
    assert body(data) == f"SUCCESS {subject.rfc4514_string()}".encode(), data
    assert body(data).startswith(b"SUCCESS CN=client,OU=Testing cert #")
    assert body(data).endswith(b",O=Org")
    # Refused: no certificate, nginx's 496 page (sent as 400) and close.
    resp, _ = request(gw.port, pki.client_context())
    assert resp.startswith(b"HTTP/1.1 400 Bad Request\r\n"), resp
    assert b"<title>400 No required SSL certificate was sent</title>" in resp
    gw.wait_log(r"\[info\] .*client sent no required SSL certificate")
    # Refused: a certificate from another CA fails the handshake (see the module docstring).
    other = trustme.CA().issue_cert("intruder@test", common_name="intruder")
    ctx = pki.client_context()
    other.configure_cert(ctx)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        resp, _ = request(gw.port, ctx)
        assert not resp.startswith(b"HTTP/1.1 200"), resp
        raise ConnectionError("no response")
    gw.wait_log(r"\[info\] .*SSL_do_handshake\(\) failed .*certificate.* while SSL handshaking")
    lines = gw.access_lines(2)
    assert lines[0].endswith("SUCCESS . 200") and '"CN=client,' in lines[0], lines
    assert lines[1].endswith('"-" NONE . 400'), lines


# -- protocols and ciphers -----------------------------------------------------------------------
def test_protocol_restriction(wsgate: Factory, pki: Pki) -> None:
    cert = pki.leaf("localhost")
    gw = wsgate(conf(tls_server(cert, extra="ssl_protocols TLSv1.3;")))
    old = pki.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        request(gw.port, old)
    gw.wait_log(
        r"\[info\] \d+#0: \*\d+ SSL_do_handshake\(\) failed \(SSL: error:SSL routines::.*\)"
        rf" while SSL handshaking, client: 127\.0\.0\.1, server: 127\.0\.0\.1:{gw.port}"
    )
    resp, s = request(gw.port, pki.client_context())
    assert body(resp) == b"localhost https localhost"
    assert s.version == "TLSv1.3"


def test_cipher_restriction(wsgate: Factory, pki: Pki) -> None:
    cert = pki.leaf("localhost")  # trustme's default key is ECDSA
    only = "ECDHE-ECDSA-AES128-GCM-SHA256"
    gw = wsgate(
        conf(tls_server(cert, extra=f"ssl_protocols TLSv1.2; ssl_ciphers {only};")),
    )
    other = pki.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    other.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")
    with pytest.raises(ssl.SSLError):
        request(gw.port, other)
    gw.wait_log(r"\[info\] .*SSL_do_handshake\(\) failed .* while SSL handshaking")
    good = pki.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    good.set_ciphers(f"{only}:ECDHE-ECDSA-AES256-GCM-SHA384")
    resp, s = request(gw.port, good)
    assert body(resp) == b"localhost https localhost"
    assert s.cipher == only
    line = gw.access_lines(1)[0]
    assert line.startswith(f"https on TLSv1.2 {only} "), line


def test_rsa_and_ecdsa_pairs(wsgate: Factory, pki: Pki) -> None:
    ec = pki.leaf("localhost")
    rsa_leaf = pki.ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    rsa = (str(pki.dir / "rsa.crt"), str(pki.dir / "rsa.key"))
    rsa_leaf.cert_chain_pems[0].write_to_path(rsa[0])
    rsa_leaf.private_key_pem.write_to_path(rsa[1])
    gw = wsgate(
        conf(tls_server(ec, extra=f"ssl_certificate {rsa[0]}; ssl_certificate_key {rsa[1]};")),
    )
    for suite in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"):
        ctx = pki.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
        ctx.set_ciphers(suite)
        _, s = request(gw.port, ctx)
        assert s.cipher == suite


# -- sessions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_session_resumption(wsgate: Factory, pki: Pki, version: ssl.TLSVersion) -> None:
    cert = pki.leaf("localhost")
    gw = wsgate(conf(tls_server(cert)))
    ctx = pki.client_context(maximum_version=version)
    _, first = request(gw.port, ctx)
    assert first.session is not None and not first.reused
    _, second = request(gw.port, ctx, session=first.session)
    assert second.reused
    lines = gw.access_lines(2)
    assert lines[0].endswith(" . 200") and lines[1].endswith(" r 200"), lines


def test_session_tickets_off_and_no_cache(wsgate: Factory, pki: Pki) -> None:
    cert = pki.leaf("localhost")
    gw = wsgate(
        conf(tls_server(cert, extra="ssl_session_tickets off; ssl_session_cache off;")),
    )
    ctx = pki.client_context(minimum_version=ssl.TLSVersion.TLSv1_3)
    _, first = request(gw.port, ctx)
    _, second = request(gw.port, ctx, session=first.session)
    assert not second.reused


# -- lines from generated configurations (issue 11) ----------------------------------------------
def _get(port: int, ctx: ssl.SSLContext, path: str = "/") -> tuple[bytes, Seen]:
    return request(port, ctx, path=path)


def test_ssl_on_makes_plain_listen_tls(wsgate: Factory, pki: Pki) -> None:
    cert = pki.leaf("localhost")
    gw = wsgate(
        conf(
            "server { listen 127.0.0.1:0; server_name localhost; ssl on;"
            f" ssl_certificate {cert[0]}; ssl_certificate_key {cert[1]};"
            ' location / { return 200 "$scheme $https [$ssl_early_data]"; } }'
        )
    )
    resp, s = _get(gw.port, pki.client_context())
    assert body(resp) == b"https on []", resp
    assert s.version == "TLSv1.3"
    assert (
        '[warn] the "ssl" directive is deprecated, use the "listen ... ssl" directive instead'
        in gw.stderr
    )


def _encrypt(key_path: str, passphrase: bytes) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
    Path(key_path).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
    )


def test_encrypted_key_with_password_file(wsgate: Factory, pki: Pki) -> None:
    cert = pki.leaf("localhost")
    _encrypt(cert[1], b"s3cret")
    passwords = pki.dir / "passwords"
    passwords.write_text("old-one\ns3cret\n")
    gw = wsgate(conf(tls_server(cert, extra=f"ssl_password_file {passwords};")))
    resp, _ = _get(gw.port, pki.client_context())
    assert body(resp) == b"localhost https localhost"


def test_wrong_passphrase_is_emerg(tmp_path: Path, pki: Pki) -> None:
    cert = pki.leaf("localhost")
    _encrypt(cert[1], b"s3cret")
    passwords = pki.dir / "passwords"
    passwords.write_text("wrong\n")
    prefix = tmp_path / "t"
    (prefix / "logs").mkdir(parents=True)
    (prefix / "nginx.conf").write_text(
        conf(tls_server(cert, extra=f"ssl_password_file {passwords};"))
    )
    out = subprocess.run(
        [sys.executable, "-m", "wsgate.cli", "-t", "-p", str(prefix), "-c", "nginx.conf"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert f'[emerg] cannot load certificate key "{cert[1]}"' in out.stderr, out.stderr


def _dhparam(dir_: Path) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    dh = dir_ / "ffdhe2048.pem"
    dh.write_bytes(
        subprocess.run(
            ["openssl", "genpkey", "-genparam", "-algorithm", "DH"]
            + ["-pkeyopt", "dh_param:ffdhe2048"],
            check=True,
            capture_output=True,
        ).stdout
    )
    return dh


def test_dhparam_enables_dhe_ciphers(wsgate: Factory, pki: Pki) -> None:
    """ "By default no parameters are set, and therefore DHE ciphers will not be used."""
    leaf = pki.ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    cert = (str(pki.dir / "rsa.crt"), str(pki.dir / "rsa.key"))
    leaf.cert_chain_pems[0].write_to_path(cert[0])
    leaf.private_key_pem.write_to_path(cert[1])
    dhe = "DHE-RSA-AES128-GCM-SHA256"
    extra = f"ssl_protocols TLSv1.2; ssl_ciphers {dhe}:ECDHE-RSA-AES128-GCM-SHA256;"
    without = wsgate(conf(tls_server(cert, extra=extra)))
    with_dh = wsgate(conf(tls_server(cert, extra=f"{extra} ssl_dhparam {_dhparam(pki.dir)};")))
    client = pki.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    client.set_ciphers(dhe)
    with pytest.raises(ssl.SSLError):
        _get(without.port, client)
    resp, s = _get(with_dh.port, client)
    assert body(resp) == b"localhost https localhost"
    assert s.cipher == dhe


def test_ecdh_curve_one_curve(wsgate: Factory, pki: Pki) -> None:
    cert = pki.leaf("localhost")
    gw = wsgate(conf(tls_server(cert, extra="ssl_ecdh_curve secp384r1;")))
    other = pki.client_context()
    other.set_ecdh_curve("prime256v1")  # the client offers this group only
    with pytest.raises(ssl.SSLError):
        _get(gw.port, other)
    same = pki.client_context()
    same.set_ecdh_curve("secp384r1")
    resp, _ = _get(gw.port, same)
    assert body(resp) == b"localhost https localhost"


def test_trusted_certificate_verifies_clients(wsgate: Factory, pki: Pki) -> None:
    cert = pki.leaf("localhost")
    ca_file = pki.dir / "trusted-ca.pem"
    pki.ca.cert_pem.write_to_path(str(ca_file))
    gw = wsgate(
        conf(
            tls_server(
                cert,
                extra=f"ssl_trusted_certificate {ca_file}; ssl_verify_client on;"
                ' location /v { return 200 "$ssl_client_verify"; }',
            )
        ),
    )
    ctx = pki.client_context()
    pki.ca.issue_cert("client@test", common_name="client").configure_cert(ctx)
    resp, _ = _get(gw.port, ctx, "/v")
    assert body(resp) == b"SUCCESS", resp
    other = pki.client_context()
    trustme.CA().issue_cert("intruder@test").configure_cert(other)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        resp, _ = _get(gw.port, other, "/v")
        raise ConnectionError(f"no handshake failure: {resp!r}")


def test_stapling_ticket_keys_buffer_size_warn_and_serve(wsgate: Factory, pki: Pki) -> None:
    cert = pki.leaf("localhost")
    key = pki.dir / "ticket.key"
    key.write_bytes(os.urandom(80))
    gw = wsgate(
        conf(
            tls_server(
                cert,
                extra=f"ssl_stapling on; ssl_stapling_verify on; ssl_session_ticket_key {key};"
                " ssl_buffer_size 4k; ssl_early_data off;",
            )
        )
    )
    resp, _ = _get(gw.port, pki.client_context())
    assert body(resp) == b"localhost https localhost"
    err = gw.stderr
    assert (
        "[warn] OCSP stapling is not supported by wsgate (Python's ssl module), responses are"
        " sent without a stapled OCSP response in " in err
    )
    assert '[warn] "ssl_session_ticket_key" cannot be honoured by wsgate' in err
    assert '[warn] "ssl_buffer_size 4k" cannot be honoured by wsgate' in err
    assert '[warn] "ssl_early_data" directive has no effect in wsgate' in err


# -- bad input -----------------------------------------------------------------------------------
def test_plain_http_on_tls_port(wsgate: Factory, pki: Pki) -> None:
    cert = pki.leaf("localhost")
    gw = wsgate(conf(tls_server(cert)))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):  # the server closes after the page
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data
    assert b"Connection: close\r\n" in data
    assert b"<title>400 The plain HTTP request was sent to HTTPS port</title>" in data
    assert b"<center>The plain HTTP request was sent to HTTPS port</center>" in data
    gw.wait_log(r"\[info\] .*client sent plain HTTP request to HTTPS port")
    assert gw.access_lines(1)[0] == 'http - - - "-" "-" - - 400'
    # A client that connects and closes at once, and one that sends garbage, harm nothing.
    socket.create_connection(("127.0.0.1", gw.port), timeout=5).close()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\x05hello")
        assert s.recv(100) in (b"",) or True
    resp, _ = request(gw.port, pki.client_context())
    assert body(resp) == b"localhost https localhost"


# -- reload --------------------------------------------------------------------------------------
def _peer_serial(port: int, ctx: ssl.SSLContext) -> int:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return hash(der)


def test_certificate_reload_on_hup(tmp_path: Path, pki: Pki) -> None:
    cert = pki.leaf("localhost")

    async def scenario() -> None:
        backend = await serve(_echo, "127.0.0.1", 0)
        port = backend.sockets[0].getsockname()[1]
        text = conf(
            f"server {{ listen 127.0.0.1:0 ssl; server_name localhost;"
            f" ssl_certificate {cert[0]}; ssl_certificate_key {cert[1]}; {WS_LOCATION % port} }}"
        )
        gw = await asyncio.to_thread(start, tmp_path, text)
        ctx = pki.client_context()
        try:
            before = await asyncio.to_thread(_peer_serial, gw.port, ctx)
            url = f"wss://127.0.0.1:{gw.port}/"
            async with connect(url, ssl=ctx, server_hostname="localhost") as ws:
                await ws.send("before")
                assert await ws.recv() == "before"
                pki.leaf("localhost")  # new certificate and key in the same files
                mark = len(gw.errors())
                gw.signal(signal.SIGHUP)
                # Same socket; the old worker retires once the new one (new certificate)
                # accepts, and from then on every connection gets the new certificate.
                await asyncio.to_thread(gw.wait_log, r"gracefully shutting down", 10.0, mark)
                after = await asyncio.to_thread(_peer_serial, gw.port, ctx)
                assert after != before
                await ws.send("after")
                assert await ws.recv() == "after"
        finally:
            gw.stop()
            backend.close()

    asyncio.run(scenario())


def test_reload_switches_kept_socket_to_new_contexts(tmp_path: Path, pki: Pki) -> None:
    """A socket kept across a reload (a fixed port) serves the new certificate and settings."""
    cert = pki.leaf("localhost")

    def make(protocols: str) -> Callable[[int], str]:
        return lambda port: conf(
            tls_server(cert, extra=f"ssl_protocols {protocols};")
            .replace("127.0.0.1:0", f"127.0.0.1:{port}")
            .replace("$server_name $scheme $ssl_server_name", "$ssl_protocol")
        )

    async def scenario(gw: Gateway, port: int, conf_file: Path) -> None:
        ctx = pki.client_context()
        before = await asyncio.to_thread(_peer_serial, port, ctx)
        resp, _ = await asyncio.to_thread(request, port, ctx)
        assert body(resp) == b"TLSv1.2"
        sock = next(iter(gw.groups.values())).sock
        pki.leaf("localhost")  # a new certificate in the same files
        conf_file.write_text(make("TLSv1.3")(port))
        gw.reload()
        await asyncio.sleep(0)  # serve() of the new groups runs as a task
        assert next(iter(gw.groups.values())).sock is sock
        resp, _ = await asyncio.to_thread(request, port, ctx)
        assert body(resp) == b"TLSv1.3"
        assert await asyncio.to_thread(_peer_serial, port, ctx) != before

    in_process(tmp_path, make("TLSv1.2"), scenario)


# -- pure helpers --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("subject", "dn"),
    [
        ((), ""),
        (((("organizationName", "Org"),), (("commonName", "client"),)), "CN=client,O=Org"),
        (
            ((("countryName", "US"),), (("commonName", "a,b"), ("userId", " x+"))),
            "CN=a\\,b+UID=\\ x\\+,C=US",
        ),
        (((("commonName", "#é"),),), "CN=\\#\\C3\\A9"),
    ],
)
def test_rfc2253(subject: tuple[tuple[tuple[str, str], ...], ...], dn: str) -> None:
    assert rfc2253(subject) == dn
