"""``ngx_http_rewrite_module``'s directives: ``rewrite``, ``return``, ``break``, ``if``, ``set``,
``rewrite_log`` and ``uninitialized_variable_warn``.

https://nginx.org/en/docs/http/ngx_http_rewrite_module.html: "The ngx_http_rewrite_module
module directives are processed in the following order: the directives of this module
specified on the server level are executed sequentially; repeatedly: a location is searched
based on a request URI; the directives of this module specified inside the found location are
executed sequentially; the loop is repeated if a request URI was rewritten, but not more than
10 times."  Each directive compiles to one step of its level's script
(:mod:`wsgate.config.script`, in the order written); :mod:`wsgate.http.rewrite` runs it.
The error texts are ``ngx_http_rewrite_module.c``'s.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from wsgate.config.model import LocationSettings
from wsgate.config.script import (
    Break,
    Compare,
    Condition,
    FileTest,
    Flag,
    If,
    Match,
    Return,
    Rewrite,
    Set,
    Test,
)
from wsgate.config.table import (
    FLAG,
    HSL,
    LIF,
    NOARGS,
    SIF,
    TAKE2,
    TAKE12,
    Arity,
    Directive,
    Merge,
    ctx,
    flag,
)
from wsgate.config.values import config_error, regex
from wsgate.config.variables import FIXED_VARIABLES

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.model import Source
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES", "SCRIPT_KEY"]

_err = config_error
#: Where a level keeps its script (the key of ``LocationSettings.rewrite``).
SCRIPT_KEY = f"{LocationSettings.__name__}.rewrite"
#: Built-in variables ``set`` may change (``NGX_HTTP_VAR_CHANGEABLE``): ``$args`` and
#: ``$limit_rate`` have set handlers; any other built-in is "the duplicate variable".
_CHANGEABLE = frozenset({"args", "limit_rate"})
_REDIRECT_PREFIXES = ("http://", "https://", "$scheme")


def _rewrite(s: Stmt, level: Level) -> tuple[Rewrite, ...]:
    """``ngx_http_rewrite``: "If the specified regular expression matches a request URI, URI
    is changed as specified in the replacement string"."""
    loader = level.loader
    pattern, replacement = s.args[0], s.args[1]
    if not replacement:
        raise _err("empty replacement", s.src)
    compiled = regex(pattern, 0, s.src, loader.captures)
    # "the last "?" drops the original arguments"
    add_args = not replacement.endswith("?")
    if not add_args:
        replacement = replacement[:-1]
    status = 302 if replacement.startswith(_REDIRECT_PREFIXES) else 0
    flag_ = Flag.NONE
    if len(s.args) == 3:
        try:
            flag_ = Flag(s.args[2])
        except ValueError:
            raise _err(f'invalid parameter "{s.args[2]}"', s.src) from None
        if flag_ is Flag.REDIRECT:
            status = 302
        elif flag_ is Flag.PERMANENT:
            status = 301
    if status:
        # A redirect keeps its "?" in the text (sc.compile_args is off).
        tpl = loader.template(replacement, s.src)
        return (Rewrite(compiled, pattern, tpl, None, add_args, status, flag_, "?" in replacement),)
    uri, question, args = replacement.partition("?")
    return (
        Rewrite(
            compiled,
            pattern,
            loader.template(uri, s.src),
            loader.template(args, s.src) if question else None,
            add_args,
            0,
            flag_,
            bool(question),
        ),
    )


def _return(s: Stmt, level: Level) -> tuple[Return, ...]:
    """``ngx_http_rewrite_return``: a code up to 999 and an optional text or URL, or a URL
    alone (302) starting with ``http://``, ``https://`` or ``$scheme``."""
    a, template = s.args, level.loader.template
    if a[0].isascii() and a[0].isdigit():
        code = int(a[0])
        if code > 999:
            raise _err(f'invalid return code "{a[0]}"', s.src)
        text = template(a[1], s.src) if len(a) > 1 and a[1] else None
        return (Return(code, text, s.src),)
    if len(a) > 1 or not a[0].startswith(_REDIRECT_PREFIXES):
        raise _err(f'invalid return code "{a[0]}"', s.src)
    return (Return(302, template(a[0], s.src), s.src),)


def _break(s: Stmt, level: Level) -> tuple[Break, ...]:
    return (Break(),)


def _set(s: Stmt, level: Level) -> tuple[Set, ...]:
    """``ngx_http_rewrite_set``: "Sets a value for the specified variable.  The value can
    contain text, variables, and their combination."  A built-in variable that cannot change
    is "the duplicate "X" variable", as ``ngx_http_add_variable`` says."""
    name = s.args[0]
    if not name.startswith("$"):
        raise _err(f'invalid variable name "{name}"', s.src)
    name = name[1:].lower()
    if not name or not re.fullmatch(r"\w+", name, re.ASCII):
        raise _err(f'invalid variable name "{s.args[0]}"', s.src)
    if name in FIXED_VARIABLES and name not in _CHANGEABLE:
        raise _err(f'the duplicate "{name}" variable', s.src)
    loader = level.loader
    loader.user_vars.add(name)
    return (Set(name, loader.template(s.args[1], s.src)),)


def _variable(text: str, level: Level, src: Source) -> str:
    """A condition's ``$name`` (checked to exist at the end of the load, as nginx's
    ``ngx_http_variables_init_vars`` does)."""
    level.loader.template(text, src)
    return text[1:].lower()


def _condition(s: Stmt, level: Level) -> Condition:
    """``ngx_http_rewrite_if_condition`` (crossplane has taken the parentheses off)."""
    args = s.args
    loader = level.loader
    if args[0].startswith("(") or not args[0]:
        raise _err(f'invalid condition "{args[0]}"', s.src)
    first = args[0]
    if len(first) > 1 and first[0] == "$":
        if len(args) not in (1, 3):
            raise _err(f'invalid condition "{first}"', s.src)
        name = _variable(first, level, s.src)
        if len(args) == 1:
            return Test(name)
        op, value = args[1], args[2]
        if op in ("=", "!="):
            return Compare(name, loader.template(value, s.src), op == "!=")
        if op in ("~", "~*", "!~", "!~*"):
            flags = re.IGNORECASE if op.endswith("*") else 0
            compiled = regex(value, flags, s.src, loader.captures)
            return Match(name, compiled, value, op.startswith("!"))
        raise _err(f'unexpected "{op}" in condition', s.src)
    if re.fullmatch(r"!?-.", first):
        if len(args) != 2 or first[-1] not in "fdex":
            raise _err(f'invalid condition "{first}"', s.src)
        return FileTest(first[-1], loader.template(args[1], s.src), first.startswith("!"))
    raise _err(f'invalid condition "{first}"', s.src)


def _if(s: Stmt, level: Level) -> tuple[If, ...]:
    """``ngx_http_rewrite_if``: the block is an implicit location nested in the one it is in
    (in a ``location``), its rewrite directives compiled into the script around it; at
    ``server`` level only rewrite directives may appear in it."""
    from wsgate.config.level import Level as _Level

    condition = _condition(s, level)
    in_server = level.location is None
    child = _Level(level.loader, level, location=level.location, noname=True)
    level.loader.read(s.block or [], SIF if in_server else LIF, child)
    steps = tuple(child.own.get(SCRIPT_KEY, ((), s.src))[0])
    return (If(condition, steps, None, None if in_server else child),)


_LS = LocationSettings
#: ``NGX_HTTP_SRV_CONF|NGX_HTTP_SIF_CONF|NGX_HTTP_LOC_CONF|NGX_HTTP_LIF_CONF``.
_SCRIPT_CTX = ctx(f"server location {SIF} {LIF}")


def _step(name: str, arity: Arity, parse: object, syntax: str, note: str = "") -> Directive:
    return Directive(
        name,
        _SCRIPT_CTX if name != "if" else ctx("server location"),
        arity,
        parse=parse,  # type: ignore[arg-type]
        target=_LS,
        fields=("rewrite",),
        unset=(),
        merge=Merge.SCRIPT,
        syntax=syntax,
        note=note,
    )


ENTRIES: tuple[Directive, ...] = (
    _step(
        "rewrite",
        Arity(2, 3),
        _rewrite,
        "regex replacement [last | break | redirect | permanent]",
        "captures, named captures, `?` handling; at most 10 URI changes",
    ),
    _step("return", TAKE12, _return, "code [text] | code URL | URL", "`444` closes"),
    _step("break", NOARGS, _break, ""),
    _step(
        "if",
        Arity(1, -1, block=True),
        _if,
        "(condition) { ... }",
        "`$var`, `=`, `!=`, `~`, `~*`, `!~`, `!~*`, `-f -d -e -x` and `!`; an implicit location",
    ),
    _step("set", TAKE2, _set, "$variable value"),
    Directive(
        "rewrite_log",
        HSL | {SIF, LIF},
        FLAG,
        parse=flag,
        target=_LS,
        fields=("rewrite_log",),
        default="off",
        note="`notice` lines",
    ),
    Directive(
        "uninitialized_variable_warn",
        HSL | {SIF, LIF},
        FLAG,
        parse=flag,
        target=_LS,
        fields=("uninitialized_variable_warn",),
        default="on",
    ),
)
