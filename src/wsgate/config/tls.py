"""The ``ssl_*`` and ``proxy_ssl_*`` directives: values, inheritance and load-time checks.

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
from collections.abc import Callable
from typing import Any

from wsgate.config.model import Source, SslServer, SslUpstream
from wsgate.config.template import Template
from wsgate.config.units import parse_flag, parse_time
from wsgate.config.values import config_error

__all__ = [
    "MULTI",
    "PROTOCOLS",
    "build_ssl_server",
    "build_ssl_upstream",
    "parse_value",
]

_err = config_error

#: Directives that may repeat at one level (several certificate/key pairs).
MULTI = frozenset({"ssl_certificate", "ssl_certificate_key"})
#: ``ssl_protocols`` values wsgate can honour (Python's ssl module has no SSLv2/SSLv3).
PROTOCOLS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
_VERIFY_CLIENT = ("on", "off", "optional", "optional_no_ca")


def _flag(name: str, args: list[str], src: Source) -> bool:
    value = parse_flag(args[0])
    if value is None:
        raise _err(
            f'invalid value "{args[0]}" in "{name}" directive, it must be "on" or "off"', src
        )
    return value


def parse_value(
    name: str,
    args: list[str],
    src: Source,
    template: Callable[[str, Source], Template],
    path: Callable[[str], str],
) -> Any:
    """The parsed value of one ``ssl_*``/``proxy_ssl_*`` directive."""
    if name in (
        "ssl_certificate",
        "ssl_certificate_key",
        "ssl_client_certificate",
        "proxy_ssl_trusted_certificate",
        "proxy_ssl_certificate",
        "proxy_ssl_certificate_key",
    ):
        if "$" in args[0]:
            raise _err(f'variables in "{name}" are not supported by wsgate', src)
        return path(args[0])
    if name in ("ssl_protocols", "proxy_ssl_protocols"):
        for p in args:
            if p not in PROTOCOLS:
                raise _err(f'invalid value "{p}" in "{name}" directive', src)
        return tuple(args)
    if name in ("ssl_ciphers", "proxy_ssl_ciphers"):
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(args[0])
        except ssl.SSLError as exc:
            raise _err(f'SSL_CTX_set_cipher_list("{args[0]}") failed ({exc})', src) from exc
        return args[0]
    if name in (
        "ssl_prefer_server_ciphers",
        "ssl_session_tickets",
        "proxy_ssl_verify",
        "proxy_ssl_server_name",
        "proxy_ssl_session_reuse",
    ):
        return _flag(name, args, src)
    if name == "ssl_session_timeout":
        value = parse_time(args[0])
        if value is None:
            raise _err(f'"{name}" directive invalid value', src)
        return value
    if name == "ssl_session_cache":
        for a in args:
            if a not in ("off", "none") and not a.startswith(("builtin", "shared:")):
                raise _err(f'invalid session cache "{a}"', src)
        return "off" if "off" in args else "none" if args == ["none"] else "builtin"
    if name == "ssl_verify_client":
        if args[0] not in _VERIFY_CLIENT:
            raise _err(f'invalid value "{args[0]}" in "{name}" directive', src)
        return args[0]
    if name in ("ssl_verify_depth", "proxy_ssl_verify_depth"):
        if not args[0].isdigit():
            raise _err(f'invalid number "{args[0]}" in "{name}" directive', src)
        return int(args[0])
    if name == "proxy_ssl_name":
        return template(args[0], src)
    raise _err(f'unknown directive "{name}"', src)  # pragma: no cover - table mismatch


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


def build_ssl_server(lookup: Callable[[str], Any], listen_src: Source, source: Source) -> SslServer:
    """The TLS settings of a server with ``listen ... ssl``; files are checked now."""
    certs: list[str] = lookup("ssl_certificate") or []
    keys: list[str] = lookup("ssl_certificate_key") or []
    if not certs:
        raise _err('no "ssl_certificate" is defined for the "listen ... ssl" directive', listen_src)
    if len(keys) < len(certs):
        raise _err(
            f'no "ssl_certificate_key" is defined for certificate "{certs[len(keys)]}"', listen_src
        )
    pairs = tuple(zip(certs, keys, strict=False))
    for cert, key in pairs:
        _check_pair(cert, key, listen_src)
    verify = lookup("ssl_verify_client") or "off"
    client_ca = lookup("ssl_client_certificate")
    if verify in ("on", "optional") and client_ca is None:
        raise _err("no ssl_client_certificate for ssl_verify_client", listen_src)
    if client_ca is not None:
        _check_ca(client_ca, "client certificate", listen_src)
    fields: dict[str, Any] = {}
    for name, field in (
        ("ssl_protocols", "protocols"),
        ("ssl_ciphers", "ciphers"),
        ("ssl_prefer_server_ciphers", "prefer_server_ciphers"),
        ("ssl_session_cache", "session_cache"),
        ("ssl_session_timeout", "session_timeout"),
        ("ssl_session_tickets", "session_tickets"),
        ("ssl_verify_depth", "verify_depth"),
    ):
        value = lookup(name)
        if value is not None:
            fields[field] = value
    return SslServer(
        certificates=pairs,
        client_certificate=client_ca,
        verify_client=verify,
        source=source,
        **fields,
    )


def build_ssl_upstream(lookup: Callable[[str], Any], source: Source | None) -> SslUpstream:
    """The ``proxy_ssl_*`` settings in force at a level; files are checked now."""
    fields: dict[str, Any] = {}
    for name, field in (
        ("proxy_ssl_verify", "verify"),
        ("proxy_ssl_verify_depth", "verify_depth"),
        ("proxy_ssl_trusted_certificate", "trusted_certificate"),
        ("proxy_ssl_server_name", "server_name"),
        ("proxy_ssl_name", "name"),
        ("proxy_ssl_protocols", "protocols"),
        ("proxy_ssl_ciphers", "ciphers"),
        ("proxy_ssl_certificate", "certificate"),
        ("proxy_ssl_certificate_key", "certificate_key"),
        ("proxy_ssl_session_reuse", "session_reuse"),
    ):
        value = lookup(name)
        if value is not None:
            fields[field] = value
    src = source or Source("", 0)
    if fields.get("verify") and not fields.get("trusted_certificate"):
        raise _err('no "proxy_ssl_trusted_certificate" for "proxy_ssl_verify"', src)
    if fields.get("trusted_certificate"):
        _check_ca(fields["trusted_certificate"], "trusted certificate", src)
    cert, key = fields.get("certificate"), fields.get("certificate_key")
    if cert and not key:
        raise _err(f'no "proxy_ssl_certificate_key" is defined for certificate "{cert}"', src)
    if cert and key:
        _check_pair(cert, key, src)
    return SslUpstream(**fields)
