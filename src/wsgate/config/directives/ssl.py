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
    Kind,
    Merge,
    ctx,
    flag,
    number,
    size,
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


def _warn(level: Level, text: str, s: Stmt) -> None:
    level.loader.warnings.append(f"{text} in {s.src}")


def _ssl(s: Stmt, level: Level) -> bool:
    """``ssl on``, as nginx 1.15.0-1.25.0 read it: "the \"ssl\" directive is deprecated, use
    the \"listen ... ssl\" directive instead" (a ``[warn]``), and every listen of the server
    speaks TLS.  nginx 1.25.1 removed the directive."""
    on = flag(s)
    if on:
        _warn(
            level,
            'the "ssl" directive is deprecated, use the "listen ... ssl" directive instead',
            s,
        )
    return on


def _ecdh_curve(s: Stmt, level: Level) -> str:
    """``auto`` or ``curve[:curve...]``, each checked as ``SSL_CTX_set1_curves_list``
    would.  Python's ``set_ecdh_curve`` sets one curve only, so a list keeps OpenSSL's
    built-in list, with a ``[warn]`` that says so."""
    value = s.args[0]
    if value == "auto":
        return value
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for name in value.split(":"):
        try:
            scratch.set_ecdh_curve(name)
        except ValueError as exc:
            raise _err(f'SSL_CTX_set1_curves_list("{value}") failed ({exc})', s.src) from exc
    if ":" in value:
        _warn(
            level,
            f'"ssl_ecdh_curve {value}": Python\'s ssl module sets one curve only, so wsgate '
            'keeps OpenSSL\'s built-in list (as with "auto") and accepts curves not listed',
            s,
        )
    return value


#: ``ssl_buffer_size``'s default, and the largest TLS record OpenSSL writes.
RECORD_SIZE = 16384


def _buffer_size(s: Stmt, level: Level) -> int:
    value = size(s)
    if value != RECORD_SIZE:
        _warn(
            level,
            f'"ssl_buffer_size {s.args[0]}" cannot be honoured by wsgate (Python\'s ssl module '
            "cannot set the record size): TLS records are up to 16k as OpenSSL fills them",
            s,
        )
    return value


def _ticket_key(s: Stmt, level: Level) -> tuple[str, ...]:
    _warn(
        level,
        '"ssl_session_ticket_key" cannot be honoured by wsgate (Python\'s ssl module cannot '
        "set ticket keys): tickets are encrypted with a random key per worker process and "
        "configuration, so a ticket resumes a session only on the worker that issued it and "
        "until the next reload",
        s,
    )
    return _files(s, level)


#: The ``[warn]`` for ``ssl_stapling on``.
NO_STAPLING = (
    "OCSP stapling is not supported by wsgate (Python's ssl module), responses are sent "
    "without a stapled OCSP response"
)


def _stapling(s: Stmt, level: Level) -> bool:
    on = flag(s)
    if on:
        _warn(level, NO_STAPLING, s)
    return on


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
    Directive(
        "ssl",
        _HS,
        FLAG,
        parse=_ssl,
        target=_SRV,
        fields=("enable",),
        default="off",
        syntax="on | off",
        note="deprecated: a `[warn]` as in nginx 1.15–1.25 (removed in 1.25.1); every `listen` "
        "of the server speaks TLS",
    ),
    Directive(
        "ssl_password_file",
        _HS,
        TAKE1,
        parse=_file,
        target=_SRV,
        fields=("password_file",),
        syntax="file",
    ),
    Directive(
        "ssl_dhparam",
        _HS,
        TAKE1,
        parse=_file,
        target=_SRV,
        fields=("dhparam",),
        syntax="file",
    ),
    Directive(
        "ssl_ecdh_curve",
        _HS,
        TAKE1,
        parse=_ecdh_curve,
        target=_SRV,
        fields=("ecdh_curve",),
        default="auto",
        syntax="curve[:curve...] | auto",
        note="one curve as nginx; a list: OpenSSL's built-in list, with a `[warn]`",
    ),
    Directive(
        "ssl_trusted_certificate",
        _HS,
        TAKE1,
        parse=_file,
        target=_SRV,
        fields=("trusted_certificate",),
        syntax="file",
        note="verifies client certificates; not sent",
    ),
    Directive(
        "ssl_buffer_size",
        _HS,
        TAKE1,
        parse=_buffer_size,
        target=_SRV,
        fields=("buffer_size",),
        default="16k",
        syntax="size",
        note="other than 16k: a `[warn]`, records stay up to 16k",
    ),
    Directive(
        "ssl_session_ticket_key",
        _HS,
        TAKE1,
        parse=_ticket_key,
        target=_SRV,
        fields=("session_ticket_keys",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="file",
        note="checked (48 or 80 bytes), then a `[warn]`: tickets use a random key per worker",
    ),
    Directive(
        "ssl_stapling",
        _HS,
        FLAG,
        parse=_stapling,
        target=_SRV,
        fields=("stapling",),
        default="off",
        syntax="on | off",
        note="`on`: a `[warn]`, no OCSP response is stapled",
    ),
    Directive(
        "ssl_stapling_verify",
        _HS,
        FLAG,
        kind=Kind.NO_OP,
        note="OCSP stapling is not supported (Python's ssl module)",
    ),
    Directive(
        "ssl_stapling_file",
        _HS,
        TAKE1,
        kind=Kind.NO_OP,
        note="OCSP stapling is not supported (Python's ssl module)",
    ),
    Directive(
        "ssl_stapling_responder",
        _HS,
        TAKE1,
        kind=Kind.NO_OP,
        note="OCSP stapling is not supported (Python's ssl module)",
    ),
    Directive(
        "ssl_early_data",
        _HS,
        FLAG,
        kind=Kind.NO_OP,
        values=frozenset({"off"}),
        note="only `ssl_early_data off`: Python's ssl module has no TLS 1.3 0-RTT server side",
        refusal="Python's ssl module has no TLS 1.3 0-RTT (early data) server side",
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
