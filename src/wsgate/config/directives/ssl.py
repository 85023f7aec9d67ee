"""TLS: ``ngx_http_ssl_module`` (towards clients, http and server) and the ``proxy_ssl_*``
directives of ``ngx_http_proxy_module`` (towards upstreams).  Files are checked when a server
or location is built (:mod:`wsgate.config.tls`)."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from wsgate.config.model import SslServer, SslUpstream
from wsgate.config.table import (
    FLAG,
    HSL,
    ONEMORE,
    TAKE1,
    TAKE12,
    Directive,
    Merge,
    ctx,
    flag,
    number,
    time,
)
from wsgate.config.template import Template
from wsgate.config.tls import PROTOCOLS
from wsgate.config.values import config_error

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES"]

_err = config_error

#: ``ssl_protocols`` values wsgate can honour (Python's ssl module has no SSLv2/SSLv3).


def _file(s: Stmt, level: Level) -> str:
    """Relative to the main file's directory (``ngx_conf_full_name(..., 1)``)."""
    if "$" in s.args[0]:
        raise _err(f'variables in "{s.name}" are not supported by wsgate', s.src)
    return level.loader.conf_path(s.args[0])


def _files(s: Stmt, level: Level) -> tuple[str, ...]:
    return (_file(s, level),)


def _protocols(s: Stmt, level: Level) -> tuple[str, ...]:
    for p in s.args:
        if p not in PROTOCOLS:
            raise _err(f'invalid value "{p}" in "{s.name}" directive', s.src)
    return tuple(s.args)


def _ciphers(s: Stmt, level: Level) -> str:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(s.args[0])
    except ssl.SSLError as exc:
        raise _err(f'SSL_CTX_set_cipher_list("{s.args[0]}") failed ({exc})', s.src) from exc
    return s.args[0]


def _session_cache(s: Stmt, level: Level) -> str:
    for a in s.args:
        if a not in ("off", "none") and not a.startswith(("builtin", "shared:")):
            raise _err(f'invalid session cache "{a}"', s.src)
    return "off" if "off" in s.args else "none" if s.args == ["none"] else "builtin"


def _verify_client(s: Stmt, level: Level) -> str:
    if s.args[0] not in ("on", "off", "optional", "optional_no_ca"):
        raise _err(f'invalid value "{s.args[0]}" in "{s.name}" directive', s.src)
    return s.args[0]


def _template(s: Stmt, level: Level) -> Template:
    return level.loader.template(s.args[0], s.src)


_HS = ctx("http server")
_SRV, _UP = SslServer, SslUpstream
_CERTS = "several `ssl_certificate`/`ssl_certificate_key` pairs (RSA and ECDSA)"

ENTRIES: tuple[Directive, ...] = (
    # towards clients; SslServer.certificates pairs the two lists
    Directive(
        "ssl_certificate",
        _HS,
        TAKE1,
        parse=_files,
        target=_SRV,
        fields=("certificates",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="file",
        note=_CERTS,
    ),
    Directive(
        "ssl_certificate_key",
        _HS,
        TAKE1,
        parse=_files,
        target=_SRV,
        fields=("certificate_keys",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="file",
    ),
    Directive(
        "ssl_protocols",
        _HS,
        ONEMORE,
        parse=_protocols,
        target=_SRV,
        fields=("protocols",),
        default="TLSv1.2 TLSv1.3",
        syntax="[TLSv1] [TLSv1.1] [TLSv1.2] [TLSv1.3]",
    ),
    Directive(
        "ssl_ciphers",
        _HS,
        TAKE1,
        parse=_ciphers,
        target=_SRV,
        fields=("ciphers",),
        default="HIGH:!aNULL:!MD5",
        syntax="ciphers",
    ),
    Directive(
        "ssl_prefer_server_ciphers",
        _HS,
        FLAG,
        parse=flag,
        target=_SRV,
        fields=("prefer_server_ciphers",),
        default="off",
    ),
    Directive(
        "ssl_session_cache",
        _HS,
        TAKE12,
        parse=_session_cache,
        target=_SRV,
        fields=("session_cache",),
        default="none",
        syntax="off | none | [builtin[:size]] [shared:name:size]",
        note="one in-process cache",
    ),
    Directive(
        "ssl_session_timeout",
        _HS,
        TAKE1,
        parse=time,
        target=_SRV,
        fields=("session_timeout",),
        default="5m",
    ),
    Directive(
        "ssl_session_tickets",
        _HS,
        FLAG,
        parse=flag,
        target=_SRV,
        fields=("session_tickets",),
        default="on",
    ),
    Directive(
        "ssl_client_certificate",
        _HS,
        TAKE1,
        parse=_file,
        target=_SRV,
        fields=("client_certificate",),
        syntax="file",
    ),
    Directive(
        "ssl_verify_client",
        _HS,
        TAKE1,
        parse=_verify_client,
        target=_SRV,
        fields=("verify_client",),
        default="off",
        syntax="on | off | optional | optional_no_ca",
    ),
    Directive(
        "ssl_verify_depth",
        _HS,
        TAKE1,
        parse=number,
        target=_SRV,
        fields=("verify_depth",),
        default="1",
    ),
    # towards upstreams
    Directive(
        "proxy_ssl_verify", HSL, FLAG, parse=flag, target=_UP, fields=("verify",), default="off"
    ),
    Directive(
        "proxy_ssl_verify_depth",
        HSL,
        TAKE1,
        parse=number,
        target=_UP,
        fields=("verify_depth",),
        default="1",
    ),
    Directive(
        "proxy_ssl_trusted_certificate",
        HSL,
        TAKE1,
        parse=_file,
        target=_UP,
        fields=("trusted_certificate",),
        syntax="file",
    ),
    Directive(
        "proxy_ssl_server_name",
        HSL,
        FLAG,
        parse=flag,
        target=_UP,
        fields=("server_name",),
        default="off",
    ),
    Directive(
        "proxy_ssl_name",
        HSL,
        TAKE1,
        parse=_template,
        target=_UP,
        fields=("name",),
        syntax="name",
        note="`$proxy_host` when not set",
    ),
    Directive(
        "proxy_ssl_protocols",
        HSL,
        ONEMORE,
        parse=_protocols,
        target=_UP,
        fields=("protocols",),
        default="TLSv1.2 TLSv1.3",
        syntax="[TLSv1] [TLSv1.1] [TLSv1.2] [TLSv1.3]",
    ),
    Directive(
        "proxy_ssl_ciphers",
        HSL,
        TAKE1,
        parse=_ciphers,
        target=_UP,
        fields=("ciphers",),
        default="DEFAULT",
        syntax="ciphers",
    ),
    Directive(
        "proxy_ssl_certificate",
        HSL,
        TAKE1,
        parse=_file,
        target=_UP,
        fields=("certificate",),
        syntax="file",
    ),
    Directive(
        "proxy_ssl_certificate_key",
        HSL,
        TAKE1,
        parse=_file,
        target=_UP,
        fields=("certificate_key",),
        syntax="file",
    ),
    Directive(
        "proxy_ssl_session_reuse",
        HSL,
        FLAG,
        parse=flag,
        target=_UP,
        fields=("session_reuse",),
        default="on",
    ),
)
