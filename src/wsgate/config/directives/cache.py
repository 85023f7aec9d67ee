"""The proxy cache's directives (``ngx_http_file_cache.c``'s ``proxy_cache_path`` and the
``proxy_cache*`` commands of ``ngx_http_proxy_module``); the cache itself is
:mod:`wsgate.cache`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsgate.config.directives.proxy import NEXT_UPSTREAM
from wsgate.config.model import CachePath, CacheValid, LocationSettings
from wsgate.config.table import (
    FLAG,
    HSL,
    HTTP,
    ONEMORE,
    TAKE1,
    Arity,
    Directive,
    Kind,
    Merge,
    ctx,
    flag,
    number,
    time,
)
from wsgate.config.units import parse_flag, parse_seconds, parse_size, parse_time
from wsgate.config.values import config_error

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt
    from wsgate.config.template import Template

__all__ = ["ENTRIES", "USE_STALE"]

_err = config_error
_LS = LocationSettings

#: ``proxy_cache_use_stale`` values: ``proxy_next_upstream``'s failures, ``updating``, ``off``.
USE_STALE = (*(v for v in NEXT_UPSTREAM if v not in ("non_idempotent", "off")), "updating", "off")


def _cache_path(s: Stmt, level: Level) -> None:
    """``ngx_http_file_cache_set_slot``, with its error words."""
    loader = level.loader
    path = loader.path(s.args[0])
    opts: dict[str, object] = {}
    name, zone_size = "", 0
    for a in s.args[1:]:
        key, eq, value = a.partition("=")
        if not eq:
            raise _err(f'invalid parameter "{a}"', s.src)
        if key == "levels":
            parts = value.split(":")
            if len(parts) > 3 or any(p not in ("1", "2") for p in parts):
                raise _err(f'invalid "levels" "{a}"', s.src)
            opts["levels"] = tuple(int(p) for p in parts)
        elif key == "use_temp_path":
            on = parse_flag(value) if value in ("on", "off") else None
            if on is None:
                raise _err(f'invalid use_temp_path value "{a}", it must be "on" or "off"', s.src)
            opts["use_temp_path"] = on
        elif key == "keys_zone":
            zname, colon, zsize = value.partition(":")
            n = parse_size(zsize) if colon else None
            if not zname or n is None:
                raise _err(f'invalid keys zone size "{a}"', s.src)
            if n < 2 * 4096:  # "2 * ngx_pagesize"
                raise _err(f'keys zone "{a}" is too small', s.src)
            name, zone_size = zname, n
        elif key in (
            "inactive",
            "manager_sleep",
            "manager_threshold",
            "loader_sleep",
            "loader_threshold",
        ):
            t = parse_time(value)
            if t is None:
                raise _err(f'invalid {key} value "{a}"', s.src)
            opts[key] = t
        elif key in ("max_size", "min_free"):
            n = parse_size(value)
            if n is None:
                raise _err(f'invalid {key} value "{a}"', s.src)
            opts[key] = n
        elif key in ("manager_files", "loader_files"):
            if not value.isdigit() or int(value) == 0:
                raise _err(f'invalid {key} value "{a}"', s.src)
            opts[key] = int(value)
        else:
            raise _err(f'invalid parameter "{a}"', s.src)
    if not name:
        raise _err(f'"{s.name}" must have "keys_zone" parameter', s.src)
    taken = loader.cache_paths
    if name in taken or any(c.path == path for c in taken.values()):
        raise _err(f'duplicate zone "{name}"', s.src)
    taken[name] = CachePath(path, name, zone_size, source=s.src, **opts)  # type: ignore[arg-type]


def _proxy_cache(s: Stmt, level: Level) -> str | Template | None:
    """``proxy_cache zone | off``: a value with variables names the zone per request (an
    empty value or ``off`` then is off; a name no ``proxy_cache_path`` declares is a 500)."""
    value = s.args[0]
    if value == "off":
        return None
    tpl = level.loader.template(value, s.src)
    if tpl.variables:
        return tpl
    if value not in level.loader.cache_paths:
        # nginx: 'zero size shared memory zone "NAME"' when the configuration ends.
        raise _err(
            f'zero size shared memory zone "{value}" (no proxy_cache_path declares it)', s.src
        )
    return value


def _key(s: Stmt, level: Level) -> Template:
    return level.loader.template(s.args[0], s.src)


def _predicates(s: Stmt, level: Level) -> tuple[Template, ...]:
    return tuple(level.loader.template(a, s.src) for a in s.args)


def _valid(s: Stmt, level: Level) -> tuple[CacheValid, ...]:
    """``ngx_http_file_cache_valid_set_slot``: codes (or ``any``) then a time; a time alone
    is for 200, 301 and 302."""
    seconds = parse_seconds(s.args[-1])
    if seconds is None:
        raise _err(f'invalid time value "{s.args[-1]}"', s.src)
    codes = s.args[:-1]
    if not codes:
        return tuple(CacheValid(code, seconds) for code in (200, 301, 302))
    out = []
    for c in codes:
        if c == "any":
            out.append(CacheValid(0, seconds))
            continue
        code = int(c) if c.isdigit() else 0
        if not 100 <= code <= 599:
            raise _err(f'invalid status "{c}"', s.src)
        out.append(CacheValid(code, seconds))
    return tuple(out)


def _methods(s: Stmt, level: Level) -> frozenset[str]:
    """``ngx_conf_set_bitmask_slot`` over GET HEAD POST; "GET and HEAD methods are always
    added to the list"."""
    for a in s.args:
        if a.upper() not in ("GET", "HEAD", "POST"):
            raise _err(f'invalid value "{a}"', s.src)
    return frozenset({"GET", "HEAD", *(a.upper() for a in s.args)})


def _use_stale(s: Stmt, level: Level) -> frozenset[str]:
    for a in s.args:
        if a not in USE_STALE:
            raise _err(f'invalid value "{a}"', s.src)
    if "off" in s.args:
        if len(s.args) > 1:
            raise _err(f'invalid value "{s.args[1] if s.args[0] == "off" else "off"}"', s.src)
        return frozenset()
    return frozenset(s.args)


def _max_range_offset(s: Stmt, level: Level) -> int:
    n = parse_size(s.args[0])
    if n is None:
        raise _err(f'"{s.name}" directive invalid value', s.src)
    return n


ENTRIES: tuple[Directive, ...] = (
    Directive(
        "proxy_cache_path",
        ctx(HTTP),
        Arity(2, -1),
        kind=Kind.STRUCTURE,
        parse=_cache_path,
        early=True,
        syntax="path [levels=levels] [use_temp_path=on|off] keys_zone=name:size "
        "[inactive=time] [max_size=size] [min_free=size] [manager_files=number] "
        "[manager_sleep=time] [manager_threshold=time] [loader_files=number] "
        "[loader_sleep=time] [loader_threshold=time]",
        note="the files are the cache (see docs/differences.md); temporary files are "
        "written beside them",
    ),
    Directive(
        "proxy_cache",
        HSL,
        TAKE1,
        parse=_proxy_cache,
        target=_LS,
        fields=("proxy_cache",),
        default="off",
        syntax="zone | off",
        note="never for a WebSocket (`Upgrade`) request",
    ),
    Directive(
        "proxy_cache_key",
        HSL,
        TAKE1,
        parse=_key,
        target=_LS,
        fields=("proxy_cache_key",),
        default="$scheme$proxy_host$request_uri",
        syntax="string",
    ),
    Directive(
        "proxy_cache_valid",
        HSL,
        ONEMORE,
        parse=_valid,
        target=_LS,
        fields=("proxy_cache_valid",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="[code ...] time",
    ),
    Directive(
        "proxy_cache_methods",
        HSL,
        ONEMORE,
        parse=_methods,
        target=_LS,
        fields=("proxy_cache_methods",),
        default="GET HEAD",
        syntax="GET | HEAD | POST ...",
    ),
    Directive(
        "proxy_cache_min_uses",
        HSL,
        TAKE1,
        parse=number,
        target=_LS,
        fields=("proxy_cache_min_uses",),
        default="1",
        syntax="number",
    ),
    Directive(
        "proxy_cache_bypass",
        HSL,
        ONEMORE,
        parse=_predicates,
        target=_LS,
        fields=("proxy_cache_bypass",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="string ...",
    ),
    Directive(
        "proxy_no_cache",
        HSL,
        ONEMORE,
        parse=_predicates,
        target=_LS,
        fields=("proxy_no_cache",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="string ...",
    ),
    Directive(
        "proxy_cache_convert_head",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("proxy_cache_convert_head",),
        default="on",
    ),
    Directive(
        "proxy_cache_use_stale",
        HSL,
        ONEMORE,
        parse=_use_stale,
        target=_LS,
        fields=("proxy_cache_use_stale",),
        default="off",
        syntax="error | timeout | invalid_header | updating | http_500 | http_502 | "
        "http_503 | http_504 | http_403 | http_404 | http_429 | off ...",
    ),
    Directive(
        "proxy_cache_background_update",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("proxy_cache_background_update",),
        default="off",
    ),
    Directive(
        "proxy_cache_lock",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("proxy_cache_lock",),
        default="off",
        note="across workers (a lock file beside the entry)",
    ),
    Directive(
        "proxy_cache_lock_timeout",
        HSL,
        TAKE1,
        parse=time,
        target=_LS,
        fields=("proxy_cache_lock_timeout",),
        default="5s",
        syntax="time",
    ),
    Directive(
        "proxy_cache_lock_age",
        HSL,
        TAKE1,
        parse=time,
        target=_LS,
        fields=("proxy_cache_lock_age",),
        default="5s",
        syntax="time",
    ),
    Directive(
        "proxy_cache_revalidate",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("proxy_cache_revalidate",),
        default="off",
    ),
    Directive(
        "proxy_cache_max_range_offset",
        HSL,
        TAKE1,
        parse=_max_range_offset,
        target=_LS,
        fields=("proxy_cache_max_range_offset",),
        syntax="number",
    ),
)
