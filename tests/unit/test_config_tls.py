"""TLS configuration: ssl_* and proxy_ssl_* values, inheritance, and file errors naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from wsgate.config.loader import load
from wsgate.errors import ConfigError


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(tmp_path: Path, ca: trustme.CA) -> Path:
    cert = ca.issue_cert("a.test", "b.test")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "a.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "a.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return tmp_path


def write(dir_: Path, text: str) -> Path:
    (dir_ / "nginx.conf").write_text(text)
    return dir_ / "nginx.conf"


def test_ssl_server_settings_are_inherited_from_http(certs: Path) -> None:
    write(
        certs,
        """
http {
  ssl_certificate a.pem;
  ssl_certificate_key a.key;
  ssl_protocols TLSv1.2;
  ssl_ciphers ECDHE-RSA-AES128-GCM-SHA256;
  ssl_session_tickets off;
  server {
    listen 127.0.0.1:0 ssl;
    ssl_client_certificate ca.pem;
    ssl_verify_client optional;
    location / {
      proxy_pass https://127.0.0.1:1;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate ca.pem;
      proxy_ssl_server_name on;
      proxy_ssl_name backend.test;
    }
  }
  server { listen 127.0.0.1:0; }
}
""",
    )
    config = load("nginx.conf", prefix=str(certs))
    tls_server, plain = config.http.servers
    assert tls_server.listens[0].ssl and not plain.listens[0].ssl
    ssl = tls_server.ssl
    assert ssl is not None and plain.ssl is None
    assert ssl.certificates == ((str(certs / "a.pem"), str(certs / "a.key")),)
    assert (ssl.protocols, ssl.ciphers, ssl.session_tickets) == (
        ("TLSv1.2",),
        "ECDHE-RSA-AES128-GCM-SHA256",
        False,
    )
    assert (ssl.verify_client, ssl.client_certificate) == ("optional", str(certs / "ca.pem"))
    up = tls_server.locations[0].settings.proxy_ssl
    pp = tls_server.locations[0].settings.proxy_pass
    assert pp is not None and pp.scheme == "https" and pp.port == 1
    assert up.verify and up.server_name and up.name is not None and up.name.raw == "backend.test"
    assert up.trusted_certificate == str(certs / "ca.pem")


def test_https_default_port_is_443(certs: Path) -> None:
    write(certs, "http { server { location / { proxy_pass https://127.0.0.1; } } }")
    pp = load("nginx.conf", prefix=str(certs)).http.servers[0].locations[0].settings.proxy_pass
    assert pp is not None and pp.port == 443 and pp.proxy_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("directives", "message"),
    [
        (
            "ssl_certificate missing.pem; ssl_certificate_key a.key;",
            'cannot load certificate "{d}/missing.pem": (2: No such file or directory)',
        ),
        (
            "ssl_certificate a.pem; ssl_certificate_key missing.key;",
            'cannot load certificate key "{d}/missing.key": (2: No such file or directory)',
        ),
        (
            "ssl_certificate a.pem; ssl_certificate_key ca.pem;",
            'cannot load certificate key "{d}/ca.pem"',
        ),
        ("ssl_certificate a.pem;", 'no "ssl_certificate_key" is defined for certificate'),
        (
            "ssl_certificate a.pem; ssl_certificate_key a.key; ssl_verify_client on;",
            "no ssl_client_certificate for ssl_verify_client",
        ),
        ("ssl_protocols SSLv3;", 'invalid value "SSLv3" in "ssl_protocols" directive'),
    ],
)
def test_tls_errors_name_the_file(certs: Path, directives: str, message: str) -> None:
    write(certs, f"http {{\n server {{\n  listen 127.0.0.1:0 ssl;\n  {directives}\n }}\n}}\n")
    with pytest.raises(ConfigError) as info:
        load("nginx.conf", prefix=str(certs))
    assert message.format(d=certs) in str(info.value)
    assert f"in {certs}/nginx.conf:" in str(info.value)


def test_proxy_ssl_verify_needs_a_trusted_certificate(certs: Path) -> None:
    write(certs, "http {\n proxy_ssl_verify on;\n server { }\n}\n")
    with pytest.raises(ConfigError) as info:
        load("nginx.conf", prefix=str(certs))
    assert str(info.value) == (
        f'no "proxy_ssl_trusted_certificate" for "proxy_ssl_verify" in {certs}/nginx.conf:2'
    )


def test_invalid_cipher_list_is_a_load_error(certs: Path) -> None:
    write(certs, "http {\n proxy_ssl_ciphers NOPE-CIPHER;\n}\n")
    with pytest.raises(ConfigError) as info:
        load("nginx.conf", prefix=str(certs))
    assert 'SSL_CTX_set_cipher_list("NOPE-CIPHER") failed' in str(info.value)
    assert str(info.value).endswith(f"in {certs}/nginx.conf:2")
