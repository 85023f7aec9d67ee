"""Error pages and internal locations (``ngx_http_core_module.c``'s ``error_page``,
``recursive_error_pages`` and ``internal``; ``proxy_intercept_errors`` is in
:mod:`wsgate.config.directives.proxy`).  What they do at run time is
:func:`wsgate.http.phases.error_page`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsgate.config.model import ErrorPage, LocationSettings
from wsgate.config.table import (
    FLAG,
    HSL,
    HSL_IF,
    LOCATION,
    NOARGS,
    Arity,
    Directive,
    Merge,
    ctx,
    flag,
)
from wsgate.config.values import config_error

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES"]

_err = config_error

#: nginx sends 494-497 as 400, and ``error_page 497 ...`` without ``=`` makes that 400 too.
_SENT_AS_400 = frozenset({494, 495, 496, 497})


def _atoi(text: str) -> int | None:
    """``ngx_atoi``: digits only."""
    return int(text) if text.isascii() and text.isdigit() else None


def _error_page(s: Stmt, level: Level) -> tuple[ErrorPage, ...]:
    """``ngx_http_core_error_page``: ``code ... [=[response]] uri``, with nginx's words."""
    args = s.args
    last = len(args) - 1
    overwrite = -1
    codes = args[:last]
    if args[last - 1].startswith("="):
        if last - 1 == 0:
            raise _err(f'invalid value "{args[0]}"', s.src)
        if len(args[last - 1]) > 1:
            value = _atoi(args[last - 1][1:])
            if value is None:
                raise _err(f'invalid value "{args[last - 1]}"', s.src)
            overwrite = value
        else:
            overwrite = 0
        codes = args[: last - 1]
    uri = level.loader.template(args[last], s.src)
    args_part = ""
    if uri.is_static and args[last].startswith("/") and "?" in args[last]:
        path, _, args_part = args[last].partition("?")
        uri = level.loader.template(path, s.src)
    pages = []
    for code in codes:
        status = _atoi(code)
        if status is None or status == 499:
            raise _err(f'invalid value "{code}"', s.src)
        if status < 300 or status > 599:
            raise _err(f'value "{code}" must be between 300 and 599', s.src)
        this = 400 if overwrite == -1 and status in _SENT_AS_400 else overwrite
        pages.append(ErrorPage(status, this, uri, args_part, s.src))
    return tuple(pages)


_LS = LocationSettings

ENTRIES: tuple[Directive, ...] = (
    # "Defines the URI that will be shown for the specified errors."
    Directive(
        "error_page",
        HSL_IF,
        Arity(2, -1),
        parse=_error_page,
        target=_LS,
        fields=("error_pages",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="code ... [=[response]] uri",
        note="a URI (internal redirect), `@name`, or a URL (302, or `=301`...)",
    ),
    Directive(
        "recursive_error_pages",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("recursive_error_pages",),
        default="off",
    ),
    # "Specifies that a given location can only be used for internal requests."
    Directive(
        "internal",
        ctx(LOCATION),
        NOARGS,
        parse=lambda s, level: True,
        target=_LS,
        fields=("internal",),
        unset=False,
        note="inherited by nested locations, as in nginx",
    ),
)
