"""ngx_http_charset_module's directives: ``charset``, ``source_charset``,
``override_charset``, ``charset_types`` and ``charset_map``.

https://nginx.org/en/docs/http/ngx_http_charset_module.html; applied by
:func:`wsgate.http.charset.apply_charset`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsgate.config.model import LocationSettings
from wsgate.config.table import (
    FLAG,
    HSL,
    HTTP,
    TAKE1,
    Arity,
    Directive,
    Kind,
    Merge,
    ctx,
    flag,
)
from wsgate.config.template import Template
from wsgate.config.values import config_error

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES"]

_err = config_error
_LS = LocationSettings


def _charset(s: Stmt, level: Level) -> Template | None:
    """``charset charset | off``: the name may hold variables."""
    if s.args[0] == "off":
        return None
    return level.loader.template(s.args[0], s.src)


def _source_charset(s: Stmt, level: Level) -> str:
    if "$" in s.args[0]:
        raise _err('variables in "source_charset" are not supported by wsgate', s.src)
    return s.args[0]


def _types(s: Stmt, level: Level) -> tuple[str, ...]:
    """``charset_types mime-type ...`` ("*" matches any type)."""
    return tuple(a.lower() for a in s.args)


def _hex_byte(text: str, s: Stmt) -> int:
    if len(text) != 2 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise _err(f'invalid value "{text}"', s.src)
    return int(text, 16)


def _charset_map(s: Stmt, level: Level) -> None:
    """``charset_map src dst { XX YY; ... }`` (ngx_http_charset_map_block): a one-byte
    table, both ways, every other byte unchanged."""
    src, dst = (a.lower() for a in s.args)
    if "utf-8" in (src, dst):
        raise _err('"charset_map" to or from "utf-8" is not supported by wsgate', s.src)
    maps = level.loader.charset_maps
    if (src, dst) in maps:
        raise _err(f'duplicate "charset_map" between "{s.args[0]}" and "{s.args[1]}"', s.src)
    forward, backward = bytearray(range(256)), bytearray(range(256))
    for e in s.block or []:
        if len(e.args) != 1 or e.block is not None:
            raise _err("invalid parameters number", e.src)
        a, b = _hex_byte(e.name, e), _hex_byte(e.args[0], e)
        forward[a], backward[b] = b, a
    maps[(src, dst)] = bytes(forward)
    maps.setdefault((dst, src), bytes(backward))


def _setting(name: str, parse: object, field: str, arity: Arity, **kw: object) -> Directive:
    return Directive(name, HSL, arity, parse=parse, target=_LS, fields=(field,), **kw)  # type: ignore[arg-type]


ENTRIES: tuple[Directive, ...] = (
    Directive(
        "charset_map",
        ctx(HTTP),
        Arity(2, 2, block=True),
        kind=Kind.STRUCTURE,
        parse=_charset_map,
        early=True,
        syntax="charset1 charset2 { byte byte; ... }",
        note="one-byte tables only (no `utf-8`)",
    ),
    _setting("charset", _charset, "charset", TAKE1, default="off", syntax="charset | off"),
    _setting("source_charset", _source_charset, "source_charset", TAKE1, syntax="charset"),
    _setting("override_charset", flag, "override_charset", FLAG, default="off"),
    _setting(
        "charset_types",
        _types,
        "charset_types",
        Arity(1, -1),
        default=" ".join(
            (
                "text/html",
                "text/xml",
                "text/plain",
                "text/vnd.wap.wml",
                "application/javascript",
                "application/rss+xml",
            )
        ),
        syntax="mime-type ...",
        merge=Merge.INHERIT,
    ),
)
