"""The rewrite module's script, run for one request (``ngx_http_rewrite_handler`` and the
script codes of ``ngx_http_script.c``).  Pure: no sockets, no loop; the file tests of ``if``
ask the file system.

:func:`execute` walks a :data:`~wsgate.config.script.Script` in order and changes the request
as nginx's codes do: ``$uri`` and ``$args`` (``rewrite``), variables (``set``, captures), the
settings in force (an ``if`` in a location makes its implicit location the request's), and
the flags the next phases read (``uri_changed`` for the internal redirect at
``POST_REWRITE``, ``valid_location`` and ``valid_unparsed_uri`` for the URI ``proxy_pass``
sends).  It returns None when the request goes on, or the :class:`Stop` that ends it
(``return``, a redirect); a rewritten URI of zero length is a 500, as in nginx.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from wsgate.config.model import LocationSettings
from wsgate.config.script import (
    Break,
    Compare,
    Condition,
    FileTest,
    If,
    Match,
    Return,
    Rewrite,
    Set,
    Step,
    Test,
)
from wsgate.config.template import Template
from wsgate.config.units import parse_size
from wsgate.config.variables import RequestContext
from wsgate.errors import HttpError

__all__ = ["ScriptRequest", "Stop", "escape_args", "execute", "unescape_redirect"]


class ScriptRequest(Protocol):
    """What a script reads and changes of a request (a part of
    :class:`wsgate.http.phases.Request`)."""

    ctx: RequestContext
    settings: LocationSettings
    #: ``r->internal``: the URI was changed inside (``proxy_pass`` then escapes it).
    internal: bool
    #: ``r->uri_changed``: the location is to be searched again (``POST_REWRITE``).
    uri_changed: bool
    #: ``r->valid_location``: false after ``rewrite ... break`` changed the URI
    #: (``proxy_pass`` then sends the whole new URI, not its URI part).
    valid_location: bool
    #: ``r->valid_unparsed_uri``: the request line's URI may still be sent as it came.
    valid_unparsed_uri: bool
    #: ``r->quoted_uri || r->plus_in_uri``: the request's path had ``%`` or ``+``.
    quoted_uri: bool

    def log(self, level: str, message: str) -> None: ...

    def use_settings(self, settings: LocationSettings) -> None: ...


@dataclass(frozen=True, slots=True)
class Stop:
    """The script ended the request: ``return CODE [TEXT]`` (``text`` None for a bare code),
    or a redirect (``rewrite ... redirect``, ``return 301 URL``: ``text`` is the
    ``Location``)."""

    code: int
    text: str | None


class _Exit(Exception):
    """``ngx_http_script_exit``: the script ends without a response."""


# -- escaping (ngx_escape_uri NGX_ESCAPE_ARGS, ngx_unescape_uri NGX_UNESCAPE_REDIRECT) ----------
#: NGX_ESCAPE_ARGS: " ", "#", "%", "&", "+", ";", "?" and the rest nginx's table lists.
_ARGS = frozenset(range(0x21)) | frozenset(b'"#%&+;<>?\\^`{|}') | frozenset(range(0x7F, 0x100))
_ARGS_TABLE = [f"%{b:02X}" if b in _ARGS else chr(b) for b in range(256)]


def escape_args(text: str) -> str:
    """``ngx_escape_uri(..., NGX_ESCAPE_ARGS)`` over the UTF-8 bytes of ``text``."""
    data = text.encode("utf-8", "surrogateescape")
    return "".join(_ARGS_TABLE[b] for b in data)


_HEX = "0123456789abcdefABCDEF"


def unescape_redirect(text: str) -> str:
    """``ngx_unescape_uri(..., NGX_UNESCAPE_REDIRECT)``: ``%XX`` is decoded when it is a
    printable character above ``%`` (``%0D`` stays escaped), up to the first ``?``, plain or
    escaped; after it the text is kept as it is.  A ``%`` not followed by hex digits is
    dropped with the digit after it, as nginx's state machine does."""
    if "%" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "?":
            return "".join(out) + text[i:]
        if c != "%":
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            return "".join(out)
        first = text[i + 1]
        if first not in _HEX:
            out.append(first)  # "the invalid quoted character": the "%" is lost
            i += 2
            continue
        if i + 2 >= n:
            return "".join(out)
        second = text[i + 2]
        i += 3
        if second not in _HEX:
            continue  # both dropped
        ch = int(first + second, 16)
        if ch == 0x3F and not second.isdigit():
            return "".join(out) + "?" + text[i:]
        if 0x25 < ch < 0x7F:
            out.append(chr(ch))
        else:
            out.append(f"%{first}{second}")
    return "".join(out)


# -- the script ----------------------------------------------------------------------------------
def execute(steps: Sequence[Step], r: ScriptRequest, log: bool) -> Stop | None:
    """Run ``steps`` for ``r`` (``log``: ``rewrite_log`` of the level whose script it is,
    as nginx reads it once when the handler starts)."""
    try:
        return _run(steps, r, log)
    except _Exit:
        return None


def _run(steps: Sequence[Step], r: ScriptRequest, log: bool) -> Stop | None:
    for step in steps:
        if isinstance(step, Rewrite):
            stop = _rewrite(step, r, log)
            if stop is not None:
                return stop
        elif isinstance(step, Set):
            _set(step, r)
        elif isinstance(step, If):
            if _condition(step.condition, r, log):
                if step.settings is not None:
                    r.use_settings(step.settings)
                stop = _run(step.steps, r, log)
                if stop is not None:
                    return stop
        elif isinstance(step, Return):
            return Stop(step.code, None if step.text is None else step.text.render(r.ctx.lookup))
        elif isinstance(step, Break):
            # ngx_http_script_break_code
            if r.uri_changed:
                r.valid_location = False
                r.uri_changed = False
            raise _Exit
    return None


def _set(step: Set, r: ScriptRequest) -> None:
    """``set``; ``$args`` and ``$limit_rate`` have nginx's set handlers
    (``ngx_http_variable_set_args``, ``ngx_http_variable_set_limit_rate``)."""
    value = step.value.render(r.ctx.lookup)
    if step.name == "limit_rate":
        rate = parse_size(value)
        if rate is None:
            r.log("error", f'invalid $limit_rate "{value}"')
        else:
            r.ctx.limit_rate = rate
        return
    r.ctx.set_variable(step.name, value)
    if step.name == "args":
        r.valid_unparsed_uri = False


def _render(tpl: Template, ctx: RequestContext, escape: bool) -> str:
    """A replacement: captures escaped with NGX_ESCAPE_ARGS when ``escape`` (in the arguments
    or in a redirect, for a request whose path had ``%`` or ``+``); variables as they are."""
    if not escape:
        return tpl.render(ctx.lookup)
    parts = tpl.parts
    out = [parts[0]]
    for i in range(1, len(parts), 2):
        name = parts[i]
        value = ctx.lookup(name)
        out.append(escape_args(value) if name.isdigit() else value)
        out.append(parts[i + 1])
    return "".join(out)


def _rewrite(step: Rewrite, r: ScriptRequest, log: bool) -> Stop | None:
    """``ngx_http_script_regex_start_code`` and ``ngx_http_script_regex_end_code``."""
    ctx = r.ctx
    line = ctx.uri
    match = step.regex.search(line)
    if match is None:
        if log:
            r.log("notice", f'"{step.pattern}" does not match "{line}"')
        ctx.captures = ()
        return None
    if log:
        r.log("notice", f'"{step.pattern}" matches "{line}"')
    ctx.set_match(match)
    r.internal = True
    r.valid_unparsed_uri = False
    if step.flag.value == "break":
        r.valid_location = False
        r.uri_changed = False
    else:
        r.uri_changed = True
    if step.status:
        location = unescape_redirect(_render(step.uri, ctx, r.quoted_uri))
        if step.add_args and ctx.args:
            location += ("&" if step.question else "?") + ctx.args
        if log:
            r.log("notice", f'rewritten redirect: "{location}"')
        return Stop(step.status, location)
    uri = _render(step.uri, ctx, False)
    if step.args is not None:
        args = _render(step.args, ctx, r.quoted_uri)
        if step.add_args and ctx.args:
            args += "&" + ctx.args
        ctx.args = args
    elif not step.add_args:
        ctx.args = ""
    if log:
        r.log("notice", f'rewritten data: "{uri}", args: "{ctx.args}"')
    if not uri:
        raise HttpError(500, "the rewritten URI has a zero length")
    ctx.uri = uri
    if step.stops:
        raise _Exit
    return None


def _condition(cond: Condition, r: ScriptRequest, log: bool) -> bool:
    """An ``if`` condition (``ngx_http_script_if_code`` reads "" and "0" as false)."""
    ctx = r.ctx
    if isinstance(cond, Test):
        value = ctx.lookup(cond.variable)
        return bool(value) and value != "0"
    if isinstance(cond, Compare):
        return (ctx.lookup(cond.variable) == cond.value.render(ctx.lookup)) != cond.negate
    if isinstance(cond, Match):
        line = ctx.lookup(cond.variable)
        match = cond.regex.search(line)
        if match is None:
            if log:
                r.log("notice", f'"{cond.pattern}" does not match "{line}"')
            ctx.captures = ()
            return cond.negate
        if log:
            r.log("notice", f'"{cond.pattern}" matches "{line}"')
        ctx.set_match(match)
        return not cond.negate
    return _file_test(cond, ctx.lookup, r.log)


#: Errors that only mean "no such file" (nginx logs the others at ``crit``).
_QUIET = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG})


def _file_test(
    cond: FileTest, lookup: Callable[[str], str], log: Callable[[str, str], None]
) -> bool:
    """``ngx_http_script_file_code``: ``-f`` a regular file, ``-d`` a directory, ``-e`` a
    file or a directory, ``-x`` executable by its owner (``ngx_is_exec``: ``S_IXUSR``)."""
    path = cond.path.render(lookup)
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        code = getattr(exc, "errno", None)
        if code is not None and code not in _QUIET:
            log("crit", f'stat() "{path}" failed ({code}: {os.strerror(code)})')
        return cond.negate
    mode = st.st_mode
    if cond.op == "f":
        found = stat.S_ISREG(mode)
    elif cond.op == "d":
        found = stat.S_ISDIR(mode)
    elif cond.op == "e":
        found = stat.S_ISREG(mode) or stat.S_ISDIR(mode)
    else:
        found = bool(mode & stat.S_IXUSR)
    return found != cond.negate
