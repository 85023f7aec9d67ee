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

__all__ = ["PROTOCOLS", "build_ssl_server", "build_ssl_upstream"]

_err = config_error

#: ``ssl_protocols`` values wsgate can honour (Python's ssl module has no SSLv2/SSLv3).
PROTOCOLS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


def _check_pair(cert: str, key: str, src: Source) -> None:
    for what, path in (("certificate", cert), ("certificate key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise _err(f'cannot load {what} "{path}": ({exc.errno}: {exc.strerror})', src) from exc
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise _err(f'cannot load certificate key "{key}": {exc}', src) from exc


def _check_ca(path: str, what: str, src: Source) -> None:
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise _err(f'cannot load {what} "{path}": {exc}', src) from exc


def build_ssl_server(fields: dict[str, Any], listen_src: Source, source: Source) -> SslServer:
    """The TLS settings of a server with ``listen ... ssl`` from the effective ``ssl_*``
    values (:meth:`wsgate.config.level.Level.collect`); files are checked now."""
    certs: tuple[str, ...] = fields.pop("certificates")
    keys: tuple[str, ...] = fields.pop("certificate_keys")
    if not certs:
        raise _err('no "ssl_certificate" is defined for the "listen ... ssl" directive', listen_src)
    if len(keys) < len(certs):
        raise _err(
            f'no "ssl_certificate_key" is defined for certificate "{certs[len(keys)]}"', listen_src
        )
    pairs = tuple(zip(certs, keys, strict=False))
    for cert, key in pairs:
        _check_pair(cert, key, listen_src)
    client_ca = fields["client_certificate"]
    if fields["verify_client"] in ("on", "optional") and client_ca is None:
        raise _err("no ssl_client_certificate for ssl_verify_client", listen_src)
    if client_ca is not None:
        _check_ca(client_ca, "client certificate", listen_src)
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
