"""The ``ssl_*`` and ``proxy_ssl_*`` directives' load-time checks (their entries, values and
inheritance are in :mod:`wsgate.config.directives.ssl`).

https://nginx.org/en/docs/http/ngx_http_ssl_module.html and
https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_ssl_certificate.

Certificates and keys are loaded once at load time, so a missing or unreadable file is a
configuration error naming it (nginx: ``cannot load certificate "PATH"``), reported by ``-t``
and by a reload, which then keeps the old configuration.  Relative paths resolve against the
directory of the main configuration file, as nginx's ``ngx_conf_full_name(..., 1)`` does for
these directives.
"""

from __future__ import annotations

import ssl
from typing import Any

from wsgate.config.model import Source, SslServer, SslUpstream
from wsgate.config.values import config_error

__all__ = [
    "PROTOCOLS",
    "build_ssl_server",
    "build_ssl_upstream",
    "load_cert_chain",
    "read_passwords",
]

_err = config_error

#: ``ssl_protocols`` values wsgate can honour (Python's ssl module has no SSLv2/SSLv3).
PROTOCOLS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


#: nginx's ``NGX_SSL_PASSWORD_BUFFER_SIZE``: a longer line is "too long line".
PASSWORD_LINE_MAX = 4096


def read_passwords(path: str) -> tuple[bytes, ...]:
    """``ssl_password_file``: "a file with passphrases for secret keys where each passphrase
    is specified on a separate line.  Passphrases are tried in turn when loading the key."

    As ``ngx_ssl_read_password_file``: lines end at LF, one CR before it is dropped, empty
    lines are skipped, and a file with none gives one empty passphrase.  Raises
    :class:`ValueError` with nginx's words."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f'open() "{path}" failed ({exc.errno}: {exc.strerror})') from exc
    out: list[bytes] = []
    for line in data.split(b"\n"):
        if len(line) >= PASSWORD_LINE_MAX:
            raise ValueError(f'too long line in "{path}"')
        if line.endswith(b"\r"):
            line = line[:-1]
        if line:
            out.append(line)
    return tuple(out) or (b"",)


def load_cert_chain(
    ctx: ssl.SSLContext, cert: str, key: str, passwords: tuple[bytes, ...] | None
) -> None:
    """Load one pair, trying each passphrase in turn; the last error is raised.  With no
    ``ssl_password_file`` an encrypted key fails (nginx's password callback returns nothing)
    instead of OpenSSL asking on the terminal."""
    error: ssl.SSLError | None = None
    for password in passwords or (b"",):
        try:
            ctx.load_cert_chain(cert, key, password=password)
            return
        except ssl.SSLError as exc:
            error = exc
    assert error is not None
    raise error


def _check_pair(
    cert: str, key: str, src: Source, passwords: tuple[bytes, ...] | None = None
) -> None:
    for what, path in (("certificate", cert), ("certificate key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise _err(f'cannot load {what} "{path}": ({exc.errno}: {exc.strerror})', src) from exc
    try:
        load_cert_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, passwords)
    except ssl.SSLError as exc:
        raise _err(f'cannot load certificate key "{key}": {exc}', src) from exc


def _check_dhparam(path: str, src: Source) -> None:
    """``ngx_ssl_dhparam``: ``BIO_new_file("F") failed`` or ``PEM_read_bio_DHparams("F")
    failed``."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_dh_params(path)
    except OSError as exc:  # ssl.SSLError is an OSError: check it first
        if isinstance(exc, ssl.SSLError):
            raise _err(f'PEM_read_bio_DHparams("{path}") failed ({exc})', src) from exc
        raise _err(f'BIO_new_file("{path}") failed ({exc.errno}: {exc.strerror})', src) from exc


#: ``ssl_session_ticket_key``: "The file must contain 80 or 48 bytes of random data".
TICKET_KEY_SIZES = (48, 80)


def _check_ticket_key(path: str, src: Source) -> None:
    try:
        with open(path, "rb") as f:
            n = len(f.read(81))
    except OSError as exc:
        raise _err(f'open() "{path}" failed ({exc.errno}: {exc.strerror})', src) from exc
    if n not in TICKET_KEY_SIZES:
        raise _err(f'"{path}" must be 48 or 80 bytes', src)


def _check_ca(path: str, what: str, src: Source) -> None:
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise _err(f'cannot load {what} "{path}": {exc}', src) from exc


def build_ssl_server(
    fields: dict[str, Any],
    listen_src: Source,
    source: Source,
    what: str = '"listen ... ssl" directive',
) -> SslServer:
    """The TLS settings of a server with ``listen ... ssl`` (or ``ssl on``, ``what``) from the
    effective ``ssl_*`` values (:meth:`wsgate.config.level.Level.collect`); files are checked
    now, as nginx reads them at load time."""
    certs: tuple[str, ...] = fields.pop("certificates")
    keys: tuple[str, ...] = fields.pop("certificate_keys")
    if not certs:
        raise _err(f'no "ssl_certificate" is defined for the {what}', listen_src)
    if len(keys) < len(certs):
        raise _err(
            f'no "ssl_certificate_key" is defined for certificate "{certs[len(keys)]}"', listen_src
        )
    passwords = None
    if fields["password_file"] is not None:
        try:
            passwords = read_passwords(fields["password_file"])
        except ValueError as exc:
            raise _err(str(exc), listen_src) from exc
    pairs = tuple(zip(certs, keys, strict=False))
    for cert, key in pairs:
        _check_pair(cert, key, listen_src, passwords)
    client_ca, trusted = fields["client_certificate"], fields["trusted_certificate"]
    # "if (conf->verify != 3 && conf->client_certificate.len == 0 &&
    # conf->trusted_certificate.len == 0)" (3 is optional_no_ca).
    if fields["verify_client"] in ("on", "optional") and client_ca is None and trusted is None:
        raise _err(
            "no ssl_client_certificate or ssl_trusted_certificate for ssl_verify_client",
            listen_src,
        )
    if client_ca is not None:
        _check_ca(client_ca, "client certificate", listen_src)
    if trusted is not None:
        _check_ca(trusted, "trusted certificate", listen_src)
    if fields["dhparam"] is not None:
        _check_dhparam(fields["dhparam"], listen_src)
    for path in fields["session_ticket_keys"]:
        _check_ticket_key(path, listen_src)
    return SslServer(certificates=pairs, source=source, **fields)


def build_ssl_upstream(fields: dict[str, Any], src: Source) -> SslUpstream:
    """The ``proxy_ssl_*`` settings in force at a level; files are checked now."""
    if fields["verify"] and not fields["trusted_certificate"]:
        raise _err('no "proxy_ssl_trusted_certificate" for "proxy_ssl_verify"', src)
    if fields["trusted_certificate"]:
        _check_ca(fields["trusted_certificate"], "trusted certificate", src)
    cert, key = fields["certificate"], fields["certificate_key"]
    if cert and not key:
        raise _err(f'no "proxy_ssl_certificate_key" is defined for certificate "{cert}"', src)
    if cert and key:
        _check_pair(cert, key, src)
    return SslUpstream(**fields)
