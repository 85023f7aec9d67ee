"""``ngx_http_headers_filter_module``'s directives: ``add_header``, ``add_trailer``,
``add_header_inherit``, ``add_trailer_inherit`` (nginx 1.29.3) and ``expires``.

https://nginx.org/en/docs/http/ngx_http_headers_module.html; applied to every response by
:func:`wsgate.http.headers_filter.filter_headers`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsgate.config.model import AddHeader, Expires, LocationSettings
from wsgate.config.table import HSL_IF, TAKE1, TAKE2, TAKE3, TAKE12, Directive, Merge, enum_
from wsgate.config.units import ExpiresError, parse_expires
from wsgate.config.values import config_error

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES"]

_err = config_error


def _add_header(s: Stmt, level: Level) -> tuple[AddHeader, ...]:
    """``ngx_http_headers_add``: NAME VALUE [always]; any third word but ``always`` is
    'invalid parameter "X"'."""
    always = len(s.args) == 3
    if always and s.args[2] != "always":
        raise _err(f'invalid parameter "{s.args[2]}"', s.src)
    return (AddHeader(s.args[0], level.loader.template(s.args[1], s.src), always),)


def _expires(s: Stmt, level: Level) -> Expires:
    """``ngx_http_headers_expires``: ``[modified] time | epoch | max | off | @time``; a first
    of two words other than ``modified`` is "invalid value"; a value with variables is kept
    to be read per request, any other is read now with nginx's words for a bad one."""
    kind = "access"
    if len(s.args) == 2:
        if s.args[0] != "modified":
            raise _err(f'"{s.name}" directive invalid value', s.src)
        kind = "modified"
    text = s.args[-1]
    tpl = level.loader.template(text, s.src)
    if not tpl.is_static:
        return Expires(kind, 0, tpl)
    try:
        kind, seconds = parse_expires(text, kind)
    except ExpiresError as exc:
        raise _err(f'"{s.name}" directive {exc}', s.src) from exc
    return Expires(kind, seconds)


def _inherit(name: str, note: str) -> Directive:
    """``add_header_inherit``/``add_trailer_inherit on | off | merge`` (nginx 1.29.3)."""
    return Directive(
        f"{name}_inherit",
        HSL_IF,
        TAKE1,
        parse=enum_("off", "on", "merge"),
        target=LocationSettings,
        fields=(f"{name}_inherit",),
        default="on",
        note=note,
    )


#: The directive that says how each list is inherited.
_INHERIT = {
    "add_header": _inherit("add_header", "nginx 1.29.3; `merge`: the outer level's after"),
    "add_trailer": _inherit("add_trailer", "nginx 1.29.3"),
}


def _inherited(level: Level, d: Directive) -> tuple[AddHeader, ...]:
    """``ngx_http_headers_merge_conf``: "if (conf->headers_inherit != OFF && prev->headers)
    { if (conf->headers == NULL) conf->headers = prev->headers; else if (... MERGE) the
    outer level's are added after this level's }"; ``add_header_inherit`` (and
    ``add_trailer_inherit``) is itself inherited, default ``on``."""
    outer = () if level.parent is None else _inherited(level.parent, d)
    own = level.own.get(d.key)
    mine: tuple[AddHeader, ...] = () if own is None else tuple(own[0])
    mode = level.value(_INHERIT[d.name])
    if mode == "off" or not outer:
        return mine
    if own is None:
        return outer
    return mine + outer if mode == "merge" else mine


def _fields(name: str, note: str) -> Directive:
    """``add_header``/``add_trailer NAME VALUE [always]`` (one ``ngx_http_headers_add``)."""
    return Directive(
        name,
        HSL_IF,
        TAKE2 | TAKE3,
        parse=_add_header,
        target=LocationSettings,
        fields=(f"{name}s",),
        unset=(),
        merge=Merge.ARRAY,
        resolve=_inherited,
        syntax="name value [always]",
        note=note,
    )


ENTRIES: tuple[Directive, ...] = (
    _fields("add_header", "for 200, 201, 204, 206, 301, 302, 303, 304, 307, 308 unless `always`"),
    _fields("add_trailer", "in the chunked body's trailer (HTTP/1.1), statuses as `add_header`"),
    *_INHERIT.values(),
    Directive(
        "expires",
        HSL_IF,
        TAKE12,
        parse=_expires,
        target=LocationSettings,
        fields=("expires",),
        default="off",
        syntax="[modified] time | epoch | max | off",
        note="also `@time`; for the same statuses as `add_header` without `always`",
    ),
)
