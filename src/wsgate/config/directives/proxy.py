"""``ngx_http_proxy_module``'s directives that wsgate implements (the ``proxy_ssl_*`` ones are
in :mod:`wsgate.config.directives.ssl`), and wsgate's ``proxy_upgrade_protocols``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from wsgate.access import parse_upgrade_protocols
from wsgate.config.model import HeaderSetting, LocationSettings, ProxyPass, UpstreamServer
from wsgate.config.table import (
    FLAG,
    HSL,
    LIF,
    LOCATION,
    ONEMORE,
    TAKE1,
    TAKE2,
    Directive,
    Merge,
    ctx,
    flag,
    number,
    size,
    time,
)
from wsgate.config.values import config_error, resolve, split_hostport

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES", "NEXT_UPSTREAM"]

_err = config_error

#: ``proxy_next_upstream`` values (``ngx_http_proxy_next_upstream_masks``) wsgate honours.
NEXT_UPSTREAM = (
    "error",
    "timeout",
    "invalid_header",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "http_403",
    "http_404",
    "http_429",
    "non_idempotent",
    "off",
)


def _proxy_pass(s: Stmt, level: Level) -> ProxyPass:
    url = s.args[0]
    if "$" in url:
        # ngx_http_proxy_pass: a URL with variables is compiled and checked per request
        # (ngx_http_proxy_eval), when its host may name an upstream or need the resolver.
        template = level.loader.template(url, s.src)
        if template.variables:
            return ProxyPass(url, "", "", 0, None, template=template, source=s.src)
    m = re.match(r"(?i)(https?)://", url)
    if m is None:
        raise _err(f'invalid URL prefix in "{url}"', s.src)
    scheme = m.group(1).lower()
    rest = url[m.end() :]
    if rest.startswith("unix:"):
        # "proxy_pass http://unix:/tmp/backend.socket:/uri/;" — the path ends at ':'.
        path, colon, uri_part = rest[5:].partition(":")
        if not path:
            raise _err(f'no path in the unix domain socket "{rest}"', s.src)
        server = UpstreamServer(f"unix:{path}", path, 0, source=s.src)
        uri = uri_part if colon else None
        _check_uri(s, level, uri)
        return ProxyPass(url, scheme, "localhost", 0, uri, servers=(server,), source=s.src)
    slash = rest.find("/")
    hostport, uri = (rest, None) if slash == -1 else (rest[:slash], rest[slash:])
    _check_uri(s, level, uri)
    if hostport in level.loader.upstreams:
        return ProxyPass(url, scheme, hostport, 80, uri, upstream=hostport, source=s.src)
    default_port = 443 if scheme == "https" else 80
    host, port, port_given = split_hostport(hostport, default_port, s.src)
    servers = tuple(
        UpstreamServer(hostport, h, p, source=s.src)
        for h, p in resolve(hostport, default_port, s.src, "upstream")
    )
    return ProxyPass(
        url, scheme, host, port, uri, servers=servers, port_given=port_given, source=s.src
    )


def _check_uri(s: Stmt, level: Level, uri: str | None) -> None:
    if uri is not None and (level.regex or level.noname):
        raise _err(
            '"proxy_pass" cannot have URI part in location given by regular expression, '
            'or inside named location, or inside "if" statement, or inside "limit_except" '
            "block",
            s.src,
        )


def _http_version(s: Stmt, level: Level) -> str:
    if s.args[0] not in ("1.0", "1.1"):
        raise _err(
            f'invalid value "{s.args[0]}" in "proxy_http_version" directive, '
            'it must be "1.0" or "1.1"',
            s.src,
        )
    return s.args[0]


def _set_header(s: Stmt, level: Level) -> tuple[HeaderSetting, ...]:
    return (HeaderSetting(s.args[0], level.loader.template(s.args[1], s.src)),)


def _header_name(s: Stmt, level: Level) -> tuple[str, ...]:
    """``ngx_conf_set_str_array_slot``: one name per directive, added to the level's list."""
    return (s.args[0],)


def _next_upstream(s: Stmt, level: Level) -> frozenset[str]:
    """``ngx_conf_set_bitmask_slot``: 'invalid value "Y"'."""
    for x in s.args:
        if x not in NEXT_UPSTREAM:
            raise _err(f'invalid value "{x}"', s.src)
    return frozenset() if "off" in s.args else frozenset(s.args)


def _upgrade_protocols(s: Stmt, level: Level) -> frozenset[str]:
    try:
        return parse_upgrade_protocols(s.args)
    except ValueError as exc:
        raise _err(f'invalid parameter "{exc}"', s.src) from None


_LS = LocationSettings

ENTRIES: tuple[Directive, ...] = (
    Directive(
        "proxy_pass",
        ctx(f"{LOCATION} {LIF}"),
        TAKE1,
        parse=_proxy_pass,
        target=_LS,
        fields=("proxy_pass",),
        merge=Merge.HANDLER,
        syntax="http[s]://upstream | host[:port][/uri] | http[s]://unix:/path:[/uri]",
        note="no variables",
    ),
    Directive(
        "proxy_http_version",
        HSL,
        TAKE1,
        parse=_http_version,
        target=_LS,
        fields=("proxy_http_version",),
        default="1.1",
        syntax="1.0 | 1.1",
        note="nginx 1.29.7+'s default",
    ),
    Directive(
        "proxy_request_buffering",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("proxy_request_buffering",),
        default="on",
        note="`off` streams the body as it arrives (chunked to an HTTP/1.1 upstream when its "
        "length is unknown); such a body cannot be sent to a next upstream",
    ),
    Directive(
        "proxy_pass_request_body",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("proxy_pass_request_body",),
        default="on",
        note="`off`: no body is sent (and the client's is discarded); the client's "
        '`Content-Length` still is, unless `proxy_set_header Content-Length ""`',
    ),
    Directive(
        "proxy_set_header",
        HSL,
        TAKE2,
        parse=_set_header,
        target=_LS,
        fields=("proxy_set_headers",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="field value",
        note="the built-in `Host` and `Connection` are added later",
    ),
    Directive(
        "proxy_hide_header",
        HSL,
        TAKE1,
        parse=_header_name,
        target=_LS,
        fields=("proxy_hide_headers",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="field",
        note="hidden by default: `Date`, `Server`, `X-Pad`, `X-Accel-*` (nginx's five)",
    ),
    Directive(
        "proxy_pass_header",
        HSL,
        TAKE1,
        parse=_header_name,
        target=_LS,
        fields=("proxy_pass_headers",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="field",
        note="not the hop-by-hop fields, which are never passed",
    ),
    Directive(
        "proxy_connect_timeout",
        HSL,
        TAKE1,
        parse=time,
        target=_LS,
        fields=("proxy_connect_timeout",),
        default="60s",
    ),
    Directive(
        "proxy_read_timeout",
        HSL,
        TAKE1,
        parse=time,
        target=_LS,
        fields=("proxy_read_timeout",),
        default="60s",
    ),
    Directive(
        "proxy_send_timeout",
        HSL,
        TAKE1,
        parse=time,
        target=_LS,
        fields=("proxy_send_timeout",),
        default="60s",
    ),
    Directive(
        "proxy_next_upstream",
        HSL,
        ONEMORE,
        parse=_next_upstream,
        target=_LS,
        fields=("proxy_next_upstream",),
        default="error timeout",
        syntax=" | ".join(NEXT_UPSTREAM[:-1]) + " ... | off",
    ),
    Directive(
        "proxy_next_upstream_tries",
        HSL,
        TAKE1,
        parse=number,
        target=_LS,
        fields=("proxy_next_upstream_tries",),
        default="0",
    ),
    Directive(
        "proxy_next_upstream_timeout",
        HSL,
        TAKE1,
        parse=time,
        target=_LS,
        fields=("proxy_next_upstream_timeout",),
        default="0",
    ),
    Directive(
        "proxy_buffering",
        HSL,
        FLAG,
        parse=flag,
        target=LocationSettings,
        fields=("proxy_buffering",),
        default="on",
        note="wsgate always streams; `off` (or `X-Accel-Buffering: no`) turns `limit_rate` "
        "off for the response, as nginx does for a response it does not buffer",
    ),
    Directive(
        "proxy_buffer_size",
        HSL,
        TAKE1,
        parse=size,
        target=_LS,
        fields=("proxy_buffer_size",),
        default="4k",
        note="the limit on an upstream response head",
    ),
    # "Determines whether proxied responses with codes greater than or equal to 300 should
    # be passed to a client or be intercepted and redirected to nginx for processing with
    # the error_page directive."
    Directive(
        "proxy_intercept_errors",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("proxy_intercept_errors",),
        default="off",
        note="a 101 is never intercepted",
    ),
    # wsgate's own: the protocols a request may upgrade to (see wsgate.access)
    Directive(
        "proxy_upgrade_protocols",
        HSL,
        ONEMORE,
        parse=_upgrade_protocols,
        target=_LS,
        fields=("proxy_upgrade_protocols",),
        default="websocket",
        syntax="protocol ... | off",
        note="wsgate's",
    ),
)
