"""``ngx_http_limit_conn_module`` and ``ngx_http_limit_req_module`` (see :mod:`wsgate.limits`
and, for the parsing, :mod:`wsgate.config.limits`)."""

from __future__ import annotations

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
    TAKE3,
    TAKE123,
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


def _conn_zone(s: Stmt, level: Level) -> None:
    """http level, read before the servers: ``limit_conn`` may name a zone written later."""
    zones = level.loader.conn_zones
    zone = lim.parse_zone(s, level.loader.template, zones)
    assert isinstance(zone, LimitConnZone)
    zones[zone.name] = zone


def _req_zone(s: Stmt, level: Level) -> None:
    zones = level.loader.req_zones
    zone = lim.parse_zone(s, level.loader.template, zones)
    assert isinstance(zone, LimitReqZone)
    zones[zone.name] = zone


def _status(s: Stmt, level: Level) -> int:
    return lim.parse_limit_status(s)


_LS = LocationSettings
_LEVEL = enum_(*lim.LIMIT_LOG_LEVELS)

ENTRIES: tuple[Directive, ...] = (
    Directive(
        "limit_conn_zone",
        ctx(HTTP),
        TAKE2,
        kind=Kind.STRUCTURE,
        parse=_conn_zone,
        early=True,
        syntax="key zone=name:size",
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
        TAKE3,
        kind=Kind.STRUCTURE,
        parse=_req_zone,
        early=True,
        syntax="key zone=name:size rate=rate",
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
