"""ngx_http_v2_module's directives (``src/http/v2/ngx_http_v2_module.c``, nginx 1.31).

``http2`` (server) turns HTTP/2 on: ALPN ``h2`` on a TLS address, the connection preface
on a cleartext one (:mod:`wsgate.proxy.http2`).  The directives nginx made obsolete are
accepted with nginx's own ``[warn]`` and ignored, as nginx ignores them
(``ngx_http_v2_obsolete``): ``http2_idle_timeout`` and ``http2_recv_timeout`` ("use the
keepalive_timeout / client_header_timeout directive instead"), ``http2_max_field_size`` and
``http2_max_header_size`` (``large_client_header_buffers``), ``http2_max_requests``
(``keepalive_requests``), the server push ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsgate.config.model import LocationSettings, Server
from wsgate.config.table import (
    FLAG,
    HSL,
    TAKE1,
    Directive,
    Kind,
    ctx,
    flag,
    number,
    size,
)
from wsgate.config.values import config_error

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES"]

_HS = ctx("http server")
#: NGX_HTTP_V2_MAX_WINDOW (2^31 - 1) and NGX_HTTP_V2_MAX_FRAME_SIZE (2^24 - 1).
MAX_WINDOW = (1 << 31) - 1
MAX_FRAME_SIZE = (1 << 24) - 1
#: NGX_HTTP_V2_STATE_BUFFER_SIZE: the recv buffer must be larger.
_STATE_BUFFER_SIZE = 16


def _recv_buffer_size(s: Stmt, level: Level | None = None) -> int:
    value = size(s)
    if value <= _STATE_BUFFER_SIZE:
        raise config_error(f'"{s.name}" directive value is too small', s.src)
    return value


def _preread_size(s: Stmt, level: Level | None = None) -> int:
    value = size(s)
    if value > MAX_WINDOW:
        raise config_error(f"the maximum body preread buffer size is {MAX_WINDOW}", s.src)
    return value


def _chunk_size(s: Stmt, level: Level | None = None) -> int:
    value = size(s)
    if value == 0:
        raise config_error("the http2 chunk size cannot be zero", s.src)
    return min(value, MAX_FRAME_SIZE)


def _pool_size(s: Stmt, level: Level | None = None) -> int:
    value = size(s)
    if value < 80:  # NGX_MIN_POOL_SIZE on 64-bit Linux
        raise config_error("the pool size must be no less than 80", s.src)
    if value % 16:  # NGX_POOL_ALIGNMENT
        raise config_error("the pool size must be a multiple of 16", s.src)
    return value


def _index_size(s: Stmt, level: Level | None = None) -> int:
    value = number(s)
    if value == 0 or value & (value - 1):
        raise config_error(f'"{s.name}" directive must be a power of two', s.src)
    return value


def _obsolete(name: str, contexts: frozenset[str], new: str | None) -> Directive:
    """``ngx_http_v2_obsolete``: nginx's warning, and nothing else."""
    text = (
        f'the "{name}" directive is obsolete, use the "{new}" directive instead in {{src}}'
        if new
        else f'the "{name}" directive is obsolete, ignored in {{src}}'
    )
    note = (
        f"obsolete in nginx (use `{new}`): warned and ignored, as nginx"
        if new
        else ("obsolete in nginx (server push was removed in 1.25.1): warned and ignored, as nginx")
    )
    return Directive(name, contexts, TAKE1, kind=Kind.NO_OP, note=note, warning=text)


ENTRIES: tuple[Directive, ...] = (
    Directive(
        "http2",
        _HS,
        FLAG,
        parse=flag,
        target=Server,
        fields=("http2",),
        default="off",
        note="HTTP/2 on this server's addresses: ALPN `h2` over TLS, the connection preface "
        "in cleartext; RFC 8441 WebSockets: see `http2_websocket`",
    ),
    Directive(
        "http2_websocket",
        _HS,
        FLAG,
        parse=flag,
        target=Server,
        fields=("http2_websocket",),
        default="on",
        note="wsgate's: RFC 8441 WebSockets (extended CONNECT) on this server's HTTP/2 "
        "connections; SETTINGS_ENABLE_CONNECT_PROTOCOL is sent when on and a location proxies",
    ),
    Directive(
        "http2_max_concurrent_streams",
        _HS,
        TAKE1,
        parse=number,
        target=Server,
        fields=("http2_max_concurrent_streams",),
        default="128",
    ),
    Directive(
        "http2_body_preread_size",
        _HS,
        TAKE1,
        parse=_preread_size,
        target=Server,
        fields=("http2_body_preread_size",),
        default="64k",
        note="the initial stream window (bytes of a body a client may send before it is read)",
    ),
    Directive(
        "http2_recv_buffer_size",
        ctx("http"),
        TAKE1,
        parse=_recv_buffer_size,
        target=Server,
        fields=("http2_recv_buffer_size",),
        default="256k",
        note="checked as nginx; wsgate reads what the transport gives",
    ),
    Directive(
        "http2_chunk_size",
        HSL,
        TAKE1,
        parse=_chunk_size,
        target=LocationSettings,
        fields=("http2_chunk_size",),
        default="8k",
    ),
    Directive(
        "http2_pool_size",
        _HS,
        TAKE1,
        kind=Kind.NO_OP,
        parse=_pool_size,
        note="nginx's memory pools: Python allocates as it goes; the value is checked",
    ),
    Directive(
        "http2_streams_index_size",
        _HS,
        TAKE1,
        kind=Kind.NO_OP,
        parse=_index_size,
        note="streams are kept in a dict; the value is checked",
    ),
    _obsolete("http2_idle_timeout", _HS, "keepalive_timeout"),
    _obsolete("http2_recv_timeout", _HS, "client_header_timeout"),
    _obsolete("http2_max_requests", _HS, "keepalive_requests"),
    _obsolete("http2_max_field_size", _HS, "large_client_header_buffers"),
    _obsolete("http2_max_header_size", _HS, "large_client_header_buffers"),
    _obsolete("http2_max_concurrent_pushes", _HS, None),
    _obsolete("http2_push", HSL, None),
    _obsolete("http2_push_preload", HSL, None),
)
