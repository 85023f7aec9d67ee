"""The access-phase authentication directives: ngx_http_auth_basic_module (``auth_basic``,
``auth_basic_user_file``), ngx_http_auth_request_module (``auth_request``,
``auth_request_set``) and the core module's ``satisfy`` and ``auth_delay``.

https://nginx.org/en/docs/http/ngx_http_auth_basic_module.html,
https://nginx.org/en/docs/http/ngx_http_auth_request_module.html,
https://nginx.org/en/docs/http/ngx_http_core_module.html#satisfy.  The handlers are
:func:`wsgate.http.phases.access_phase` and :mod:`wsgate.http.auth`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from wsgate.config.model import AuthRequestSet, LocationSettings, UserFile
from wsgate.config.table import HSL, TAKE1, TAKE2, Directive, Merge, time
from wsgate.config.template import Template
from wsgate.config.values import config_error
from wsgate.config.variables import FIXED_VARIABLES

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES"]

_err = config_error
_LS = LocationSettings

#: Built-in variables nginx lets ``auth_request_set`` change (``NGX_HTTP_VAR_CHANGEABLE``
#: with a set handler): ``$args`` and ``$limit_rate``.  Any other built-in one is "the
#: duplicate".
CHANGEABLE = frozenset({"args", "limit_rate"})


def _auth_basic(s: Stmt, level: Level) -> Template | None:
    """``ngx_http_set_complex_value_slot``: the realm, with variables; ``off`` is kept as
    "no realm", so an inner ``auth_basic off`` overrides an outer realm."""
    if s.args[0] == "off":
        return None
    return level.loader.template(s.args[0], s.src)


def _user_file(s: Stmt, level: Level) -> UserFile:
    """``ngx_http_auth_basic_user_file``: a complex value with ``ccv.conf_prefix``: a
    relative name is taken from the directory of the main configuration file."""
    loader = level.loader
    prefix = os.path.dirname(os.path.abspath(loader.conf_file)).rstrip("/") + "/"
    return UserFile(loader.template(s.args[0], s.src), prefix)


def _satisfy(s: Stmt, level: Level) -> str:
    """``ngx_conf_set_enum_slot`` with ``all`` and ``any``."""
    if s.args[0] not in ("all", "any"):
        raise _err(f'invalid value "{s.args[0]}"', s.src)
    return s.args[0]


def _auth_request(s: Stmt, level: Level) -> str | None:
    """``ngx_http_auth_request``: a URI, or ``off``."""
    return None if s.args[0] == "off" else s.args[0]


def _auth_request_set(s: Stmt, level: Level) -> tuple[AuthRequestSet, ...]:
    """``ngx_http_auth_request_set``: ``$variable value``; the variable is declared
    (``ngx_http_add_variable(..., NGX_HTTP_VAR_CHANGEABLE)``), so later references to it
    load; a built-in variable that cannot be changed is "the duplicate"."""
    name = s.args[0]
    if not name.startswith("$"):
        raise _err(f'invalid variable name "{name}"', s.src)
    name = name[1:]
    if not name:
        raise _err('invalid variable name "$"', s.src)
    low = name.lower()
    if low in FIXED_VARIABLES and low not in CHANGEABLE:
        raise _err(f'the duplicate "{name}" variable', s.src)
    loader = level.loader
    loader.declared.add(low)
    return (AuthRequestSet(low, loader.template(s.args[1], s.src)),)


ENTRIES: tuple[Directive, ...] = (
    Directive(
        "auth_basic",
        HSL,
        TAKE1,
        parse=_auth_basic,
        target=_LS,
        fields=("auth_basic",),
        default="off",
        syntax="string | off",
        note="the realm may contain variables",
    ),
    Directive(
        "auth_basic_user_file",
        HSL,
        TAKE1,
        parse=_user_file,
        target=_LS,
        fields=("auth_basic_user_file",),
        syntax="file",
        note="read per request; crypt(3), `$apr1$`, `{PLAIN}`, `{SHA}`, `{SSHA}`",
    ),
    Directive(
        "auth_request",
        HSL,
        TAKE1,
        parse=_auth_request,
        target=_LS,
        fields=("auth_request",),
        default="off",
        syntax="uri | off",
        note="a subrequest: 2xx allows, 401/403 deny, anything else is 500",
    ),
    Directive(
        "auth_request_set",
        HSL,
        TAKE2,
        parse=_auth_request_set,
        target=_LS,
        fields=("auth_request_set",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="$variable value",
    ),
    Directive(
        "satisfy",
        HSL,
        TAKE1,
        parse=_satisfy,
        target=_LS,
        fields=("satisfy",),
        default="all",
        syntax="all | any",
    ),
    Directive(
        "auth_delay",
        HSL,
        TAKE1,
        parse=time,
        target=_LS,
        fields=("auth_delay",),
        default="0s",
    ),
)
