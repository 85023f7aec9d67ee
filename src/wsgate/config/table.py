"""What a directive-table entry is: nginx's ``ngx_command_t`` with the default and merge rule.

nginx describes each directive once, in its module's ``ngx_command_t`` array: the name, a
bitmask of the contexts it may appear in and of the argument counts it takes
(``NGX_CONF_TAKE1``, ``NGX_CONF_TAKE12``, ``NGX_CONF_1MORE``, ``NGX_CONF_FLAG``,
``NGX_CONF_BLOCK``...), the ``set`` handler that parses the value (``ngx_conf_set_flag_slot``,
``ngx_conf_set_msec_slot``...) and the field of the module's configuration it fills.  The
default and the inheritance live in the module's ``merge_loc_conf`` function
(``ngx_conf_merge_msec_value(conf->x, prev->x, 60000)``).  A :class:`Directive` holds all of
it in one value; :mod:`wsgate.config.directives` is the table, :class:`wsgate.config.level.Level`
the only reader that applies it.

The error texts are nginx's own (``src/core/ngx_conf_file.c``): ``invalid number of arguments
in "X" directive``, ``"X" directive is not allowed here``, ``"X" directive is duplicate``,
``invalid value "Y" in "X" directive, it must be "on" or "off"``, ``"X" directive invalid
value`` and ``"X" directive invalid number``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wsgate.config.model import Source
from wsgate.config.units import parse_flag, parse_size, parse_time
from wsgate.config.values import config_error

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = [
    "ANY",
    "CONTEXT_ORDER",
    "DEFAULT_SOURCE",
    "BLOCK",
    "EVENTS",
    "FLAG",
    "HSL",
    "HSL_IF",
    "HTTP",
    "LIF",
    "LOCATION",
    "MAIN",
    "NOARGS",
    "ONEMORE",
    "SERVER",
    "SIF",
    "TAKE1",
    "TAKE2",
    "TAKE3",
    "TAKE12",
    "TAKE123",
    "TAKE1234",
    "TAKE13",
    "UPSTREAM",
    "Arity",
    "Directive",
    "Kind",
    "Merge",
    "Parser",
    "enum_",
    "flag",
    "number",
    "size",
    "string",
    "time",
]

_err = config_error
#: Where a default "was written": nginx's documentation.
DEFAULT_SOURCE = Source("default", 0)

# -- contexts (nginx's NGX_MAIN_CONF, NGX_EVENT_CONF, NGX_HTTP_MAIN_CONF, ...) ------------------
MAIN, EVENTS, HTTP, SERVER, LOCATION, UPSTREAM = (
    "main",
    "events",
    "http",
    "server",
    "location",
    "upstream",
)
#: ``NGX_HTTP_SIF_CONF`` and ``NGX_HTTP_LIF_CONF``: inside an ``if`` block at ``server`` level
#: (only the rewrite module's directives) and inside one in a ``location`` (an implicit
#: location nested in it: its directives and the few others nginx allows there).
SIF, LIF = "if-in-server", "if-in-location"
#: The order contexts are listed in, in the generated documentation.
CONTEXT_ORDER = (MAIN, EVENTS, HTTP, SERVER, LOCATION, SIF, LIF, UPSTREAM)
#: ``NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF``.
HSL = frozenset({HTTP, SERVER, LOCATION})
#: ``NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_HTTP_LIF_CONF``.
HSL_IF = HSL | {LIF}


# -- argument counts (NGX_CONF_NOARGS, NGX_CONF_TAKE1, ... NGX_CONF_1MORE, NGX_CONF_BLOCK) -----
@dataclass(frozen=True, slots=True)
class Arity:
    """``lo``..``hi`` arguments (``hi`` -1: no upper bound), and whether ``{ }`` follows."""

    lo: int
    hi: int
    block: bool = False

    def check(self, s: Stmt) -> None:
        """nginx's ``ngx_conf_handler`` argument and block checks, with its words."""
        n = len(s.args)
        if n < self.lo or (self.hi != -1 and n > self.hi):
            raise _err(f'invalid number of arguments in "{s.name}" directive', s.src)
        if self.block != (s.block is not None):
            if self.block:
                raise _err(f'directive "{s.name}" has no opening "{{"', s.src)
            raise _err(f'directive "{s.name}" is not terminated by ";"', s.src)

    def text(self) -> str:
        if self.hi == -1:
            return f"{self.lo} or more"
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"

    def __or__(self, other: Arity) -> Arity:
        """``NGX_CONF_BLOCK|NGX_CONF_TAKE1``."""
        return Arity(min(self.lo, other.lo), max(self.hi, other.hi), self.block or other.block)


NOARGS = Arity(0, 0)
TAKE1 = Arity(1, 1)
TAKE2 = Arity(2, 2)
TAKE3 = Arity(3, 3)
TAKE12 = Arity(1, 2)
TAKE13 = Arity(1, 3)
TAKE123 = Arity(1, 3)
TAKE1234 = Arity(1, 4)
ONEMORE = Arity(1, -1)
ANY = Arity(0, -1)
#: ``NGX_CONF_FLAG``: one argument, ``on`` or ``off`` (the parser is :func:`flag`).
FLAG = TAKE1
#: ``NGX_CONF_BLOCK|NGX_CONF_NOARGS``.
BLOCK = Arity(0, 0, block=True)


class Kind(enum.Enum):
    """What wsgate does with a directive."""

    #: Parsed by the entry's parser into the model field it names.
    SETTING = "setting"
    #: A block or a named thing (``http``, ``server``, ``location``, ``upstream``, ``map``,
    #: ``log_format``...): its ``parse`` is a handler that loads it (nginx's block handlers,
    #: ``ngx_http_core_server``...), given the level it appears in.
    STRUCTURE = "structure"
    #: Accepted with a ``[warn]``: it changes nothing a streaming proxy does.
    NO_OP = "no-op"
    #: nginx has it, wsgate does not implement it: ``"X" directive is not supported by wsgate``.
    REFUSED = "refused"


class Merge(enum.Enum):
    """How a value set at an outer level reaches an inner one (nginx's merge functions)."""

    #: ``ngx_conf_merge_*_value(conf->x, prev->x, default)``: the innermost level that sets it
    #: wins, else the default.  Set twice at one level: ``"X" directive is duplicate``.
    INHERIT = "inherited"
    #: An array that is inherited all-or-nothing (``proxy_set_header``, ``add_header``,
    #: ``error_page``, ``allow``/``deny``): each directive adds to its level's list, and a
    #: level with any replaces the outer level's whole list (``if (conf->x == NULL) conf->x =
    #: prev->x``).
    ARRAY = "all-or-nothing"
    #: Not inherited: it belongs to the level that says it (``return``).
    NONE = "not inherited"
    #: Not inherited, and sets the level's content handler (``proxy_pass``, ``stub_status``):
    #: of several at one level, the last one written wins.  An ``if`` block keeps the
    #: handler of the location it is in unless it sets one (``ngx_http_update_location_config``
    #: changes ``r->content_handler`` only "if (clcf->handler)").
    HANDLER = "content handler"
    #: The rewrite module's script (``rewrite``, ``return``, ``set``, ``if``, ``break``): each
    #: directive adds its step to the level's list in the order written, and the list is not
    #: inherited (``ngx_http_rewrite_merge_loc_conf``: a level's ``codes`` are its own).
    SCRIPT = "script"


#: ``parse(stmt, level)`` → the value (for :attr:`Merge.ARRAY`, a tuple of items to add); for
#: :attr:`Kind.STRUCTURE`, what the block built (a server, a location), or ``None``.
Parser = Callable[["Stmt", "Level"], Any]


@dataclass(frozen=True, slots=True)
class Directive:
    """One entry of the directive table.

    ``target`` is the model class whose ``fields`` the value fills (several fields when the
    parser returns a tuple of that many values, e.g. ``keepalive_timeout``); ``default`` is
    nginx's documented default written as directive arguments (``"60s"``) and is parsed by
    ``parse``, so the default can never disagree with what the directive would set; with no
    default the field is ``unset``.  ``syntax`` and ``note`` are for the generated
    documentation.  ``values`` limits a :attr:`Kind.NO_OP` directive to harmless values.
    Directives that fill the same field exclude each other at one level (``least_conn`` and
    ``ip_hash``), except arrays, which add up.
    """

    name: str
    contexts: frozenset[str]
    arity: Arity
    kind: Kind = Kind.SETTING
    parse: Parser | None = None
    target: type | None = None
    fields: tuple[str, ...] = ()
    default: str | None = None
    unset: Any = None
    merge: Merge = Merge.INHERIT
    syntax: str = ""
    note: str = ""
    values: frozenset[str] | None = None
    #: Why other values than ``values`` are refused (added to the error).
    refusal: str = ""
    #: nginx's words when a level sets the field twice (else ``"X" directive is duplicate``).
    duplicate: str = ""
    #: Read before the rest of its block: it names things the rest refers to (``upstream``,
    #: ``map``, ``log_format``, zones), which nginx may use before they are written.
    early: bool = False
    #: nginx's merge code for this field where no :class:`Merge` rule says all of it
    #: (``proxy_redirect``'s default, made from the ``proxy_pass`` of a level):
    #: ``resolve(level, directive)`` gives the effective value at ``level``.
    resolve: Callable[[Level, Directive], Any] | None = None
    #: For a :attr:`Kind.NO_OP` entry: nginx's own ``[warn]`` text (``{src}`` is the place),
    #: instead of "has no effect in wsgate" (an obsolete directive nginx ignores too).
    warning: str = ""

    @property
    def key(self) -> str:
        """Where a level keeps the value: directives filling one field share it
        (``allow`` and ``deny`` fill one list)."""
        assert self.target is not None
        return f"{self.target.__name__}.{'+'.join(self.fields)}"


def ctx(text: str) -> frozenset[str]:
    return frozenset(text.split())


# -- value parsers (ngx_conf_set_*_slot) ---------------------------------------------------------
def flag(s: Stmt, level: Level | None = None) -> bool:
    """``ngx_conf_set_flag_slot``: ``on`` or ``off``, any case."""
    value = parse_flag(s.args[0])
    if value is None:
        raise _err(
            f'invalid value "{s.args[0]}" in "{s.name}" directive, it must be "on" or "off"', s.src
        )
    return value


def time(s: Stmt, level: Level | None = None, i: int = 0) -> float:
    """``ngx_conf_set_msec_slot``/``ngx_conf_set_sec_slot``, in seconds."""
    value = parse_time(s.args[i])
    if value is None:
        raise _err(f'"{s.name}" directive invalid value', s.src)
    return value


def size(s: Stmt, level: Level | None = None, i: int = 0) -> int:
    """``ngx_conf_set_size_slot``/``ngx_conf_set_off_slot``, in bytes."""
    value = parse_size(s.args[i])
    if value is None:
        raise _err(f'"{s.name}" directive invalid value', s.src)
    return value


def number(s: Stmt, level: Level | None = None, i: int = 0) -> int:
    """``ngx_conf_set_num_slot`` (``ngx_atoi``: digits only)."""
    text = s.args[i]
    if not text.isascii() or not text.isdigit():
        raise _err(f'"{s.name}" directive invalid number', s.src)
    return int(text)


def string(s: Stmt, level: Level | None = None) -> str:
    """``ngx_conf_set_str_slot``."""
    return s.args[0]


def enum_(*allowed: str) -> Parser:
    """``ngx_conf_set_enum_slot``: one of ``allowed`` (``invalid value "Y"``)."""

    def parse(s: Stmt, level: Level | None = None) -> str:
        if s.args[0] not in allowed:
            raise _err(f'invalid value "{s.args[0]}"', s.src)
        return s.args[0]

    parse.__doc__ = " | ".join(allowed)
    return parse
