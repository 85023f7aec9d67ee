"""ngx_http_gzip_filter_module's directives (``gzip``, ``gzip_types``, ``gzip_min_length``,
``gzip_comp_level``, ``gzip_window``, ``gzip_hash``, ``gzip_buffers``, ``postpone_gzipping``),
the core module's ``gzip_vary``, ``gzip_http_version``, ``gzip_proxied``, ``gzip_disable``,
ngx_http_gzip_static_module's ``gzip_static``, ngx_http_gunzip_filter_module's ``gunzip``
(``gunzip_buffers`` accepted).

https://nginx.org/en/docs/http/ngx_http_gzip_module.html,
https://nginx.org/en/docs/http/ngx_http_gzip_static_module.html; applied by
:mod:`wsgate.http.gzip` (the rules and the stream) and the response producers.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from wsgate.config.model import LocationSettings
from wsgate.config.table import (
    HSL,
    HSL_IF,
    ONEMORE,
    TAKE1,
    TAKE2,
    Directive,
    Kind,
    Merge,
    enum_,
    flag,
    size,
)
from wsgate.config.values import config_error, regex
from wsgate.http.gzip import PROXIED

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES"]

_err = config_error
_LS = LocationSettings


def _types(s: Stmt, level: Level) -> tuple[str, ...]:
    """``gzip_types mime-type ...``: "text/html" is always among them; ``*`` is any type."""
    return tuple(a.lower() for a in s.args)


def _comp_level(s: Stmt, level: Level) -> int:
    """``ngx_conf_set_num_slot`` with ``ngx_conf_check_num_bounds`` 1..9."""
    text = s.args[0]
    if not text.isascii() or not text.isdigit():
        raise _err(f'"{s.name}" directive invalid number', s.src)
    value = int(text)
    if not 1 <= value <= 9:
        raise _err("value must be between 1 and 9", s.src)
    return value


def _power_of_two(s: Stmt, top: int, bits: int, words: str) -> int:
    """``ngx_http_gzip_window``/``ngx_http_gzip_hash``: a size that is a power of two from
    512 to ``top``, as zlib's ``windowBits``/``memLevel`` (``bits`` for ``top``)."""
    value = size(s)
    n, step = top, bits
    while n > 256:
        if n == value:
            return step
        n >>= 1
        step -= 1
    raise _err(f"must be {words}", s.src)


def _window(s: Stmt, level: Level) -> int:
    return _power_of_two(s, 32 * 1024, 15, "512, 1k, 2k, 4k, 8k, 16k, or 32k")


def _hash(s: Stmt, level: Level) -> int:
    return _power_of_two(s, 128 * 1024, 9, "512, 1k, 2k, 4k, 8k, 16k, 32k, 64k, or 128k")


def _http_version(s: Stmt, level: Level) -> str:
    """``ngx_conf_set_enum_slot`` over ``ngx_http_gzip_http_version``: 1.0 or 1.1."""
    if s.args[0] not in ("1.0", "1.1"):
        raise _err(f'invalid value "{s.args[0]}"', s.src)
    return s.args[0]


def _proxied(s: Stmt, level: Level) -> frozenset[str]:
    """``ngx_conf_set_bitmask_slot`` over ``ngx_http_gzip_proxied_mask``."""
    for a in s.args:
        if a not in PROXIED:
            raise _err(f'invalid value "{a}"', s.src)
    return frozenset(s.args)


def _disable(s: Stmt, level: Level) -> tuple[re.Pattern[str] | str, ...]:
    """``gzip_disable regex ...``: caseless regular expressions (``NGX_REGEX_CASELESS``), and
    the word ``msie6`` ("MSIE [4-6]\\.", faster than the expression)."""
    out: list[re.Pattern[str] | str] = []
    for a in s.args:
        if a == "msie6":
            out.append(a)
        elif a == "degradation":
            raise _err('"gzip_disable degradation" is not supported by wsgate', s.src)
        else:
            out.append(regex(a, re.IGNORECASE, s.src))
    return tuple(out)


def _setting(name: str, parse: object, field: str, default: str, **kw: object) -> Directive:
    return Directive(
        name,
        kw.pop("contexts", HSL),  # type: ignore[arg-type]
        kw.pop("arity", TAKE1),  # type: ignore[arg-type]
        parse=parse,  # type: ignore[arg-type]
        target=_LS,
        fields=(field,),
        default=default,
        **kw,  # type: ignore[arg-type]
    )


ENTRIES: tuple[Directive, ...] = (
    _setting("gzip", flag, "gzip", "off", contexts=HSL_IF),
    _setting(
        "gzip_types",
        _types,
        "gzip_types",
        "text/html",
        arity=ONEMORE,
        syntax="mime-type ...",
    ),
    _setting("gzip_min_length", size, "gzip_min_length", "20", syntax="length"),
    _setting("gzip_comp_level", _comp_level, "gzip_comp_level", "1", syntax="level"),
    _setting(
        "gzip_window",
        _window,
        "gzip_window",
        "32k",
        syntax="size",
        note="zlib's window (`windowBits`)",
    ),
    _setting(
        "gzip_hash",
        _hash,
        "gzip_hash",
        "64k",
        syntax="size",
        note="zlib's `memLevel`",
    ),
    _setting("gzip_vary", flag, "gzip_vary", "off"),
    _setting("gzip_http_version", _http_version, "gzip_http_version", "1.1", syntax="1.0 | 1.1"),
    _setting(
        "gzip_proxied",
        _proxied,
        "gzip_proxied",
        "off",
        arity=ONEMORE,
        syntax="off | expired | no-cache | no-store | private | no_last_modified | no_etag "
        "| auth | any ...",
    ),
    Directive(
        "gzip_disable",
        HSL,
        ONEMORE,
        parse=_disable,
        target=_LS,
        fields=("gzip_disable",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="regex ...",
        note="`msie6` is inherited with the expressions (nginx keeps it apart); no `degradation`",
    ),
    Directive(
        "gzip_buffers",
        HSL,
        TAKE2,
        kind=Kind.NO_OP,
        syntax="number size",
        note="zlib's output is written as it comes out, each piece at once: no buffers to count",
    ),
    Directive(
        "postpone_gzipping",
        HSL,
        TAKE1,
        parse=size,
        kind=Kind.NO_OP,
        syntax="size",
        note="zlib's memory is taken when the response starts",
    ),
    _setting(
        "gzip_static",
        enum_("on", "off", "always"),
        "gzip_static",
        "off",
        syntax="on | off | always",
    ),
    # ngx_http_gunzip_filter_module.
    _setting("gunzip", flag, "gunzip", "off"),
    Directive(
        "gunzip_buffers",
        HSL,
        TAKE2,
        kind=Kind.NO_OP,
        syntax="number size",
        note="zlib's output is written as it comes out: no buffers to count",
    ),
)
