"""ngx_http_ssi_filter_module's directives: ``ssi``, ``ssi_types``, ``ssi_silent_errors``,
``ssi_value_length``, ``ssi_min_file_chunk``, ``ssi_last_modified`` and
``ssi_ignore_recycled_buffers``; and ``subrequest_output_buffer_size`` (the core module's,
which only SSI's ``include ... set=`` reads).

https://nginx.org/en/docs/http/ngx_http_ssi_module.html; applied by
:mod:`wsgate.content.ssi` (the filter) and :mod:`wsgate.http.ssi` (the parser).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsgate.config.model import LocationSettings
from wsgate.config.table import (
    FLAG,
    HSL,
    HSL_IF,
    TAKE1,
    Arity,
    Directive,
    Kind,
    Merge,
    flag,
    size,
)

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES"]

_LS = LocationSettings


def _types(s: Stmt, level: Level) -> tuple[str, ...]:
    """``ssi_types mime-type ...``: "text/html" is always among them; ``*`` is any type."""
    return tuple(a.lower() for a in s.args)


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
    # NGX_HTTP_LIF_CONF: ``ssi`` alone may be set in an ``if`` of a location.
    _setting("ssi", flag, "ssi", "off", contexts=HSL_IF),
    _setting("ssi_silent_errors", flag, "ssi_silent_errors", "off"),
    _setting("ssi_last_modified", flag, "ssi_last_modified", "off"),
    _setting("ssi_value_length", size, "ssi_value_length", "256", syntax="length"),
    # ngx_http_core_module's, read only by SSI's in-memory subrequests (``include ... set=``).
    _setting(
        "subrequest_output_buffer_size",
        size,
        "subrequest_output_buffer_size",
        "4k",
        syntax="size",
    ),
    _setting(
        "ssi_types",
        _types,
        "ssi_types",
        "text/html",
        arity=Arity(1, -1),
        syntax="mime-type ...",
        merge=Merge.INHERIT,
    ),
    Directive(
        "ssi_min_file_chunk",
        HSL,
        TAKE1,
        kind=Kind.NO_OP,
        note="a file is read in chunks and parsed as it comes; no chunk is sent unread",
    ),
    Directive(
        "ssi_ignore_recycled_buffers",
        HSL,
        FLAG,
        kind=Kind.NO_OP,
        note="the parser never holds a buffer back from being reused",
    ),
)
