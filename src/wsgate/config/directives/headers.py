"""``ngx_http_headers_filter_module``'s directives: ``add_header`` and ``expires``.

https://nginx.org/en/docs/http/ngx_http_headers_module.html; applied to every response by
:func:`wsgate.http.headers_filter.filter_headers`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsgate.config.model import AddHeader, Expires, LocationSettings
from wsgate.config.table import HSL_IF, TAKE2, TAKE3, TAKE12, Directive, Merge
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


ENTRIES: tuple[Directive, ...] = (
    Directive(
        "add_header",
        HSL_IF,
        TAKE2 | TAKE3,
        parse=_add_header,
        target=LocationSettings,
        fields=("add_headers",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="name value [always]",
        note="for 200, 201, 204, 206, 301, 302, 303, 304, 307, 308 unless `always`",
    ),
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
