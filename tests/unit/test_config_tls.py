"""TLS configuration: ssl_* and proxy_ssl_* values, inheritance, and file errors naming the file."""

from __future__ import annotations

import shutil
import subprocess
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
            "no ssl_client_certificate or ssl_trusted_certificate for ssl_verify_client",
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


# -- lines from generated configurations (issue 11) ----------------------------------------------
def _server(certs: Path, directives: str, listen: str = "listen 127.0.0.1:0 ssl;") -> None:
    write(
        certs,
        f"http {{\n server {{\n  {listen}\n  ssl_certificate a.pem;\n"
        f"  ssl_certificate_key a.key;\n  {directives}\n }}\n}}\n",
    )


def _error(certs: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load("nginx.conf", prefix=str(certs))
    return str(info.value)


def _encrypted_key(certs: Path, name: str, passphrase: bytes) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((certs / "a.key").read_bytes(), None)
    (certs / name).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
    )


def test_ssl_on_makes_every_listen_tls_with_nginx_warn(certs: Path) -> None:
    _server(certs, "ssl on;\n  listen 127.0.0.1:0;", listen="listen 127.0.0.1:0;")
    config = load("nginx.conf", prefix=str(certs))
    (server,) = config.http.servers
    assert [lst.ssl for lst in server.listens] == [True, True]
    assert server.ssl is not None and server.ssl.enable
    assert config.warnings == (
        'the "ssl" directive is deprecated, use the "listen ... ssl" directive instead'
        f" in {certs / 'nginx.conf'}:6",
    )


def test_ssl_on_inherited_from_http_and_off(certs: Path) -> None:
    write(
        certs,
        "http {\n ssl on;\n ssl_certificate a.pem;\n ssl_certificate_key a.key;\n"
        " server { listen 127.0.0.1:0; }\n server { listen 127.0.0.1:0; ssl off; }\n}\n",
    )
    tls, plain = load("nginx.conf", prefix=str(certs)).http.servers
    assert tls.listens[0].ssl and tls.ssl is not None
    assert not plain.listens[0].ssl and plain.ssl is None


def test_ssl_on_without_certificate_names_the_directive(certs: Path) -> None:
    write(certs, "http {\n server {\n  listen 127.0.0.1:0;\n  ssl on;\n }\n}\n")
    msg = _error(certs)
    assert msg == (
        f'no "ssl_certificate" is defined for the "ssl" directive in {certs / "nginx.conf"}:4'
    )


def test_password_file_tries_each_line(certs: Path) -> None:
    from wsgate.config.tls import read_passwords

    _encrypted_key(certs, "enc.key", b"right")
    (certs / "pass").write_bytes(b"wrong\r\n\n\nright\n")
    assert read_passwords(str(certs / "pass")) == (b"wrong", b"right")
    _server(certs, "ssl_password_file pass;")
    (certs / "nginx.conf").write_text(
        (certs / "nginx.conf").read_text().replace("a.key;", "enc.key;")
    )
    (server,) = load("nginx.conf", prefix=str(certs)).http.servers
    assert server.ssl is not None and server.ssl.password_file == str(certs / "pass")
    from wsgate.server.tls import build_context

    build_context(server.ssl)  # loads the encrypted key again, without a terminal prompt


@pytest.mark.parametrize("passwords", [b"wrong\nalso wrong\n", None])
def test_wrong_or_no_passphrase_is_emerg(certs: Path, passwords: bytes | None) -> None:
    _encrypted_key(certs, "enc.key", b"right")
    directive = ""
    if passwords is not None:
        (certs / "pass").write_bytes(passwords)
        directive = "ssl_password_file pass;"
    _server(certs, directive)
    (certs / "nginx.conf").write_text(
        (certs / "nginx.conf").read_text().replace("a.key;", "enc.key;")
    )
    assert f'cannot load certificate key "{certs / "enc.key"}"' in _error(certs)


def test_password_file_errors(certs: Path) -> None:
    from wsgate.config.tls import read_passwords

    _server(certs, "ssl_password_file missing;")
    assert f'open() "{certs / "missing"}" failed (2: No such file or directory)' in _error(certs)
    (certs / "long").write_bytes(b"x" * 4096)
    with pytest.raises(ValueError, match="too long line in"):
        read_passwords(str(certs / "long"))
    (certs / "empty").write_bytes(b"\n\n")
    assert read_passwords(str(certs / "empty")) == (b"",)


def dhparam_pem() -> bytes:
    """RFC 7919's ffdhe2048 group, as the file Mozilla's generator points to (instant:
    nothing is generated)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    return subprocess.run(
        ["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "dh_param:ffdhe2048"],
        check=True,
        capture_output=True,
    ).stdout


def test_dhparam_is_loaded_and_checked(certs: Path) -> None:
    dh = certs / "dh.pem"
    dh.write_bytes(dhparam_pem())
    _server(certs, "ssl_dhparam dh.pem;")
    (server,) = load("nginx.conf", prefix=str(certs)).http.servers
    assert server.ssl is not None and server.ssl.dhparam == str(dh)
    _server(certs, "ssl_dhparam missing.pem;")
    assert f'BIO_new_file("{certs / "missing.pem"}") failed' in _error(certs)
    _server(certs, "ssl_dhparam a.pem;")
    assert f'PEM_read_bio_DHparams("{certs / "a.pem"}") failed' in _error(certs)


def test_ecdh_curve(certs: Path) -> None:
    _server(certs, "ssl_ecdh_curve secp384r1;")
    config = load("nginx.conf", prefix=str(certs))
    assert config.http.servers[0].ssl.ecdh_curve == "secp384r1"  # type: ignore[union-attr]
    assert config.warnings == ()
    _server(certs, "ssl_ecdh_curve X25519:prime256v1:secp384r1;")
    (warning,) = load("nginx.conf", prefix=str(certs)).warnings
    assert warning.startswith('"ssl_ecdh_curve X25519:prime256v1:secp384r1": Python\'s ssl')
    _server(certs, "ssl_ecdh_curve X25519:nope;")
    assert 'SSL_CTX_set1_curves_list("X25519:nope") failed' in _error(certs)


def test_trusted_certificate_satisfies_verify_client(certs: Path) -> None:
    _server(certs, "ssl_verify_client on;\n  ssl_trusted_certificate ca.pem;")
    (server,) = load("nginx.conf", prefix=str(certs)).http.servers
    assert server.ssl is not None and server.ssl.trusted_certificate == str(certs / "ca.pem")
    _server(certs, "ssl_trusted_certificate a.key;")
    assert f'cannot load trusted certificate "{certs / "a.key"}"' in _error(certs)


def test_session_ticket_key_checked_and_warned(certs: Path) -> None:
    (certs / "t48").write_bytes(bytes(48))
    (certs / "t80").write_bytes(bytes(80))
    (certs / "t32").write_bytes(bytes(32))
    _server(certs, "ssl_session_ticket_key t80;\n  ssl_session_ticket_key t48;")
    config = load("nginx.conf", prefix=str(certs))
    assert config.http.servers[0].ssl.session_ticket_keys == (  # type: ignore[union-attr]
        str(certs / "t80"),
        str(certs / "t48"),
    )
    assert len(config.warnings) == 2
    assert "tickets are encrypted with a random key per worker process" in config.warnings[0]
    _server(certs, "ssl_session_ticket_key t32;")
    assert f'"{certs / "t32"}" must be 48 or 80 bytes' in _error(certs)


def test_buffer_size_warns_unless_16k(certs: Path) -> None:
    _server(certs, "ssl_buffer_size 16k;")
    assert load("nginx.conf", prefix=str(certs)).warnings == ()
    _server(certs, "ssl_buffer_size 4k;")
    (warning,) = load("nginx.conf", prefix=str(certs)).warnings
    assert warning.startswith('"ssl_buffer_size 4k" cannot be honoured by wsgate')
    assert "TLS records are up to 16k" in warning


def test_stapling_warns_that_nothing_is_stapled(certs: Path) -> None:
    _server(certs, "ssl_stapling off;")
    assert load("nginx.conf", prefix=str(certs)).warnings == ()
    _server(
        certs,
        "ssl_stapling on;\n  ssl_stapling_verify on;\n  ssl_stapling_file a.pem;\n"
        "  ssl_stapling_responder http://ocsp.example/;",
    )
    warnings = load("nginx.conf", prefix=str(certs)).warnings
    f = certs / "nginx.conf"
    assert warnings == (
        "OCSP stapling is not supported by wsgate (Python's ssl module), responses are sent"
        f" without a stapled OCSP response in {f}:6",
        f'"ssl_stapling_verify" directive has no effect in wsgate and is ignored in {f}:7',
        f'"ssl_stapling_file" directive has no effect in wsgate and is ignored in {f}:8',
        f'"ssl_stapling_responder" directive has no effect in wsgate and is ignored in {f}:9',
    )


def test_early_data_off_only(certs: Path) -> None:
    _server(certs, "ssl_early_data off;")
    (warning,) = load("nginx.conf", prefix=str(certs)).warnings
    assert warning.startswith('"ssl_early_data" directive has no effect in wsgate')
    _server(certs, "ssl_early_data on;")
    assert _error(certs).startswith(
        '"ssl_early_data on" is not supported by wsgate (only "ssl_early_data off"): '
        "Python's ssl module has no TLS 1.3 0-RTT (early data) server side in "
    )
