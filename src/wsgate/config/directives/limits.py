"""``ngx_http_limit_conn_module`` and ``ngx_http_limit_req_module`` (see :mod:`wsgate.limits`
and, for the parsing, :mod:`wsgate.config.limits`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from wsgate.config import limits as lim
from wsgate.config.model import (
    LimitConn,
    LimitConnZone,
    LimitReq,
    LimitReqZone,
    LocationSettings,
)
from wsgate.config.table import (
    FLAG,
    HSL,
    HTTP,
    TAKE1,
    TAKE2,
    TAKE123,
    Arity,
    Directive,
    Kind,
    Merge,
    ctx,
    enum_,
    flag,
)

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES"]


def _limit_conn(s: Stmt, level: Level) -> tuple[LimitConn, ...]:
    # "These directives are inherited from the previous configuration level if and only if
    # there are no limit_conn directives defined on the current level."
    return (lim.parse_limit_conn(s, level.loader.conn_zones, level.current(s.name)),)


def _limit_req(s: Stmt, level: Level) -> tuple[LimitReq, ...]:
    return (lim.parse_limit_req(s, level.loader.req_zones, level.current(s.name)),)


def _conf_prefix(level: Level) -> str:
    """nginx's ``conf_prefix``: the main configuration file's directory, with a slash."""
    return os.path.dirname(os.path.abspath(level.loader.conf_file)).rstrip("/") + "/"


def _conn_zone(s: Stmt, level: Level) -> None:
    """http level, read before the servers: ``limit_conn`` may name a zone written later."""
    zones = level.loader.conn_zones
    zone = lim.parse_zone(s, level.loader.template, zones, _conf_prefix(level))
    assert isinstance(zone, LimitConnZone)
    zones[zone.name] = zone


def _req_zone(s: Stmt, level: Level) -> None:
    zones = level.loader.req_zones
    zone = lim.parse_zone(s, level.loader.template, zones, _conf_prefix(level))
    assert isinstance(zone, LimitReqZone)
    zones[zone.name] = zone


def _status(s: Stmt, level: Level) -> int:
    return lim.parse_limit_status(s)


_LS = LocationSettings
_LEVEL = enum_(*lim.LIMIT_LOG_LEVELS)
#: nginx's ``NGX_CONF_TAKE2``/``NGX_CONF_TAKE3``, plus wsgate's ``redis=``, ``redis_fail=``
#: and ``redis_auth=``
#: (:func:`wsgate.config.limits.parse_zone` refuses the extra ones without ``redis=`` in
#: nginx's words).
_CONN_ZONE_ARGS = Arity(2, 5)
_REQ_ZONE_ARGS = Arity(3, 6)
_REDIS_NOTE = (
    "wsgate's own `redis=host:port | unix:/path` keeps the zone in Redis, shared by every "
    "wsgate node using it (nginx open source has no equivalent; nginx Plus has `sync` with "
    "zone_sync); `redis_fail=open | closed`: what a request gets while Redis is unreachable "
    "(docs/configuration.md)"
)

ENTRIES: tuple[Directive, ...] = (
    Directive(
        "limit_conn_zone",
        ctx(HTTP),
        _CONN_ZONE_ARGS,
        kind=Kind.STRUCTURE,
        parse=_conn_zone,
        early=True,
        syntax="key zone=name:size [redis=address [redis_fail=open | closed] [redis_auth=file]]",
        note=_REDIS_NOTE,
    ),
    Directive(
        "limit_conn",
        HSL,
        TAKE2,
        parse=_limit_conn,
        target=_LS,
        fields=("limit_conn",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="zone number",
    ),
    Directive(
        "limit_conn_status",
        HSL,
        TAKE1,
        parse=_status,
        target=_LS,
        fields=("limit_conn_status",),
        default="503",
        syntax="code",
    ),
    Directive(
        "limit_conn_log_level",
        HSL,
        TAKE1,
        parse=_LEVEL,
        target=_LS,
        fields=("limit_conn_log_level",),
        default="error",
    ),
    Directive(
        "limit_conn_dry_run",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("limit_conn_dry_run",),
        default="off",
    ),
    Directive(
        "limit_req_zone",
        ctx(HTTP),
        _REQ_ZONE_ARGS,
        kind=Kind.STRUCTURE,
        parse=_req_zone,
        early=True,
        syntax=(
            "key zone=name:size rate=rate "
            "[redis=address [redis_fail=open | closed] [redis_auth=file]]"
        ),
        note=_REDIS_NOTE,
    ),
    Directive(
        "limit_req",
        HSL,
        TAKE123,
        parse=_limit_req,
        target=_LS,
        fields=("limit_req",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="zone=name [burst=number] [nodelay | delay=number]",
    ),
    Directive(
        "limit_req_status",
        HSL,
        TAKE1,
        parse=_status,
        target=_LS,
        fields=("limit_req_status",),
        default="503",
        syntax="code",
    ),
    Directive(
        "limit_req_log_level",
        HSL,
        TAKE1,
        parse=_LEVEL,
        target=_LS,
        fields=("limit_req_log_level",),
        default="error",
    ),
    Directive(
        "limit_req_dry_run",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("limit_req_dry_run",),
        default="off",
    ),
)
