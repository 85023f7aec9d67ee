"""``ngx_http_headers_filter_module``'s directives: ``add_header``.

https://nginx.org/en/docs/http/ngx_http_headers_module.html; applied to every response by
:func:`wsgate.http.headers_filter.add_headers`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsgate.config.model import AddHeader, LocationSettings
from wsgate.config.table import HSL, TAKE2, TAKE3, Directive, Merge
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


ENTRIES: tuple[Directive, ...] = (
    Directive(
        "add_header",
        HSL,
        TAKE2 | TAKE3,
        parse=_add_header,
        target=LocationSettings,
        fields=("add_headers",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="name value [always]",
        note="for 200, 201, 204, 206, 301, 302, 303, 304, 307, 308 unless `always`",
    ),
)
