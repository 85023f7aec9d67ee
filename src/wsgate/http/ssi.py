"""Server Side Includes (ngx_http_ssi_filter_module), the pure half: the streaming parser of
``<!--# command param="value" -->`` and the rules of the commands that need no I/O.

https://nginx.org/en/docs/http/ngx_http_ssi_module.html.  :class:`SsiParser` is nginx's
``ngx_http_ssi_parse`` state machine (one state per character, so a command may be split
across any two reads of the body): it turns bytes into :class:`Text` (passed on as they
come, except for the ``<!--`` prefix it holds back until the next byte says whether a command
starts), :class:`Command` and :class:`ParseError` events.  :func:`check_params` is the
dispatcher's validation (``invalid SSI command``, ``invalid parameter name``, ``mandatory ...
parameter is absent``), :class:`Conditionals` the ``if``/``elif``/``else``/``endif`` state
(``ctx->output``, ``ctx->output_chosen``, ``ctx->conditional``), :func:`evaluate` the
``$variable`` substitution of a parameter (``ngx_http_ssi_evaluate_string``),
:func:`expression` an ``if``'s ``expr``, :func:`encode` ``echo``'s ``encoding``.  The
commands that make subrequests are performed by :mod:`wsgate.content.ssi`.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from wsgate.config.values import pcre_to_python

__all__ = [
    "COMMANDS",
    "DEFAULT_ERRMSG",
    "DEFAULT_TIMEFMT",
    "Command",
    "Conditionals",
    "ParseError",
    "SsiParser",
    "Text",
    "check_params",
    "encode",
    "evaluate",
    "expression",
    "format_date",
]

#: ``NGX_HTTP_SSI_COMMAND_LEN``, ``NGX_HTTP_SSI_PARAM_LEN``, ``NGX_HTTP_SSI_MAX_PARAMS``.
COMMAND_LEN = 32
PARAM_LEN = 32
MAX_PARAMS = 16
#: ``config errmsg``'s default, and ``timefmt``'s (``ngx_http_ssi_error_string``,
#: ``ngx_http_ssi_timefmt``).
DEFAULT_ERRMSG = "[an error occurred while processing the directive]"
DEFAULT_TIMEFMT = "%A, %d-%b-%Y %H:%M:%S %Z"

#: A variable a lookup does not know (``vv->not_found``): ``echo`` prints its default.
Lookup = Callable[[str], "str | None"]


@dataclass(frozen=True, slots=True)
class Text:
    """Bytes of the document, passed on unchanged."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Command:
    """``<!--#name key="value" ... -->``; keys in order, values as written (a backslash
    and the character after it both kept: :func:`evaluate` unescapes)."""

    name: str
    params: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ParseError:
    """A malformed command, ended at its ``-->``: the error log's text (None when nginx logs
    none, as for a command cut by a too-long value already logged)."""

    log: str | None


Event = Text | Command | ParseError


class _S(enum.IntEnum):
    START = 0
    TAG = 1
    COMMENT0 = 2
    COMMENT1 = 3
    SHARP = 4
    PRECOMMAND = 5
    COMMAND = 6
    PREPARAM = 7
    PARAM = 8
    PREEQUAL = 9
    PREVALUE = 10
    DQUOTED = 11
    QUOTED = 12
    QUOTED_SYMBOL = 13
    POSTPARAM = 14
    COMMENT_END0 = 15
    COMMENT_END1 = 16
    ERROR = 17
    ERROR_END0 = 18
    ERROR_END1 = 19


_SPACE = b" \r\n\t"
_PREFIX = b"<!--#"


class SsiParser:
    """``ngx_http_ssi_parse``, fed the body in pieces.  ``value_len`` is ``ssi_value_length``
    (a longer parameter value is "too long")."""

    __slots__ = (
        "value_len",
        "_state",
        "_held",
        "_command",
        "_params",
        "_key",
        "_value",
        "_saved",
        "_log",
    )

    def __init__(self, value_len: int = 256) -> None:
        self.value_len = value_len
        self._state = _S.START
        #: How many bytes of ``<!--#`` are held back (``ctx->looked``).
        self._held = 0
        self._command = ""
        self._params: list[tuple[str, str]] = []
        self._key = ""
        self._value: list[str] = []
        self._saved = _S.DQUOTED
        self._log: str | None = None

    def feed(self, data: bytes) -> list[Event]:
        """The events ``data`` completes (text of a command not yet ended stays held)."""
        out: list[Event] = []
        text = bytearray()
        n = len(data)
        i = 0
        st = self._state
        while i < n:
            if st is _S.START:
                j = data.find(b"<", i)
                if j < 0:
                    text += data[i:]
                    break
                text += data[i:j]
                i = j + 1
                st, self._held = _S.TAG, 1
                continue
            ch = chr(data[i])
            i += 1
            if st <= _S.SHARP:  # in ``<!--#``: TAG, COMMENT0, COMMENT1, SHARP
                if ch == "!--#"[self._held - 1]:
                    self._held += 1
                    if self._held < len(_PREFIX):
                        st = _S(st + 1)
                        continue
                    # A command starts: the text before it goes out first.
                    if text:
                        out.append(Text(bytes(text)))
                        text.clear()
                    self._held = 0
                    st = _S.PRECOMMAND
                    continue
                # No command: the prefix held back is text after all.
                text += _PREFIX[: self._held]
                if ch == "<":
                    st, self._held = _S.TAG, 1
                else:
                    text.append(ord(ch))
                    st, self._held = _S.START, 0
                continue
            st = self._command_char(st, ch)
            if st is _S.START:  # ``-->``: the command (or its error) is done
                out.append(self._finish())
        self._state = st
        if text:
            out.append(Text(bytes(text)))
        return out

    def _command_char(self, st: _S, ch: str) -> _S:
        """One character of a command (from after ``<!--#``): the next state."""
        if st is _S.PRECOMMAND:
            if ch in " \r\n\t":
                return st
            self._command, self._params, self._log = ch, [], None
            return _S.COMMAND
        if st is _S.COMMAND:
            if ch in " \r\n\t":
                return _S.PREPARAM
            if ch == "-":
                return _S.COMMENT_END0
            if len(self._command) == COMMAND_LEN:
                return self._error(f'the "{self._command}{ch}..." SSI command is too long')
            self._command += ch
            return st
        if st is _S.PREPARAM:
            if ch in " \r\n\t":
                return st
            if ch == "-":
                return _S.COMMENT_END0
            self._key, self._value = ch, []
            return _S.PARAM
        if st is _S.PARAM:
            if ch in " \r\n\t":
                return _S.PREEQUAL
            if ch == "=":
                return _S.PREVALUE
            if ch == "-":
                self._log = (
                    f'unexpected "-" symbol after "{self._key}" parameter in '
                    f'"{self._command}" SSI command'
                )
                return _S.ERROR_END0
            if len(self._key) == PARAM_LEN:
                return self._error(
                    f'too long "{self._key}{ch}..." parameter in "{self._command}" SSI command'
                )
            self._key += ch
            return st
        if st is _S.PREEQUAL:
            if ch in " \r\n\t":
                return st
            if ch == "=":
                return _S.PREVALUE
            self._log = (
                f'unexpected "{ch}" symbol after "{self._key}" parameter in '
                f'"{self._command}" SSI command'
            )
            return _S.ERROR_END0 if ch == "-" else _S.ERROR
        if st is _S.PREVALUE:
            if ch in " \r\n\t":
                return st
            if ch == '"':
                return _S.DQUOTED
            if ch == "'":
                return _S.QUOTED
            self._log = (
                f'unexpected "{ch}" symbol before value of "{self._key}" parameter in '
                f'"{self._command}" SSI command'
            )
            return _S.ERROR_END0 if ch == "-" else _S.ERROR
        if st is _S.DQUOTED or st is _S.QUOTED:
            if ch == ('"' if st is _S.DQUOTED else "'"):
                self._params.append((self._key, "".join(self._value)))
                return _S.POSTPARAM
            if len(self._value) == self.value_len:
                return self._too_long(ch)
            if ch == "\\":
                # nginx keeps the backslash and the character after it (both count).
                self._value.append(ch)
                self._saved = st
                return _S.QUOTED_SYMBOL
            self._value.append(ch)
            return st
        if st is _S.QUOTED_SYMBOL:
            if len(self._value) == self.value_len:
                return self._too_long(ch)
            self._value.append(ch)
            return self._saved
        if st is _S.POSTPARAM:
            if ch in " \r\n\t":
                return _S.PREPARAM
            if ch == "-":
                return _S.COMMENT_END0
            key, value = self._params[-1]
            return self._error(
                f'unexpected "{ch}" symbol after "{value}" value of "{key}" parameter in '
                f'"{self._command}" SSI command'
            )
        if st is _S.COMMENT_END0 or st is _S.COMMENT_END1:
            if ch == ("-" if st is _S.COMMENT_END0 else ">"):
                return _S.COMMENT_END1 if st is _S.COMMENT_END0 else _S.START
            return self._error(f'unexpected "{ch}" symbol in "{self._command}" SSI command')
        if st is _S.ERROR:
            return _S.ERROR_END0 if ch == "-" else st
        if st is _S.ERROR_END0:
            return _S.ERROR_END1 if ch == "-" else _S.ERROR
        # ERROR_END1
        if ch == ">":
            self._command = ""  # marks the error for _finish
            return _S.START
        return _S.ERROR

    def _too_long(self, ch: str) -> _S:
        return self._error(
            f'too long "{"".join(self._value)}{ch}..." value of "{self._key}" parameter in '
            f'"{self._command}" SSI command'
        )

    def _error(self, log: str) -> _S:
        self._log = log
        return _S.ERROR

    def _finish(self) -> Event:
        if self._log is not None or not self._command:
            log, self._log = self._log, None
            self._command = ""
            return ParseError(log)
        return Command(self._command, tuple(self._params))

    def finish(self) -> list[Event]:
        """The body ended: a held-back prefix is text; an unfinished command is dropped (as
        nginx's parser leaves it in its state)."""
        st, self._state = self._state, _S.START
        if st in (_S.TAG, _S.COMMENT0, _S.COMMENT1, _S.SHARP) and self._held:
            held, self._held = self._held, 0
            return [Text(_PREFIX[:held])]
        return []


# -- the commands ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Spec:
    """One command of ``ngx_http_ssi_commands``: its parameters (name → mandatory), the
    ``if`` level it needs (``conditional``), and whether it counts inside a ``block``."""

    params: dict[str, bool]
    conditional: int = 0
    block: bool = False


COND_IF, COND_ELSE = 1, 2

COMMANDS: dict[str, Spec] = {
    "include": Spec({"virtual": False, "file": False, "stub": False, "wait": False, "set": False}),
    "echo": Spec({"var": True, "default": False, "encoding": False}),
    "config": Spec({"errmsg": False, "timefmt": False}),
    "set": Spec({"var": True, "value": True}),
    "if": Spec({"expr": True}),
    "elif": Spec({"expr": True}, conditional=COND_IF),
    "else": Spec({}, conditional=COND_IF),
    "endif": Spec({}, conditional=COND_ELSE),
    "block": Spec({"name": True}),
    "endblock": Spec({}, block=True),
}


def check_params(cmd: Command) -> dict[str, str] | str:
    """The command's parameters by name, or the error-log text of what is wrong with them
    (an unknown command is checked by the caller: it is ignored when no output is chosen)."""
    spec = COMMANDS[cmd.name]
    if len(cmd.params) > MAX_PARAMS:
        return f'too many SSI command parameters: "{cmd.name}"'
    params: dict[str, str] = {}
    for key, value in cmd.params:
        if key not in spec.params:
            return f'invalid parameter name: "{key}" in "{cmd.name}" SSI command'
        if key in params:
            return f'duplicate "{key}" parameter in "{cmd.name}" SSI command'
        params[key] = value
    for key, mandatory in spec.params.items():
        if mandatory and key not in params:
            return f'mandatory "{key}" parameter is absent in "{cmd.name}" SSI command'
    return params


class Conditionals:
    """``if``/``elif``/``else``/``endif``: whether the document's text and commands are
    output (``ctx->output``), whether a branch was taken (``output_chosen``), and the level
    (``ctx->conditional``: 0, in an ``if``, in its ``else``)."""

    __slots__ = ("output", "chosen", "level")

    def __init__(self) -> None:
        self.output = True
        self.chosen = False
        self.level = 0

    def context_error(self, name: str) -> bool:
        """The command may not come here (an ``else`` without ``if``, an ``elif`` after
        ``else``): "invalid context of SSI command"."""
        need = COMMANDS[name].conditional
        return bool(need) and (self.level == 0 or self.level > need)

    def branch(self, name: str, taken: Callable[[], bool]) -> str | None:
        """An ``if``/``elif`` (``taken`` evaluates its expression only when it must be),
        ``else`` or ``endif``; returns an error-log text, or None."""
        if name == "if" and self.level:
            return 'the "if" command inside the "if" command'
        if name in ("if", "elif"):
            if self.chosen:
                self.output = False
            else:
                self.output = taken()
                self.chosen = self.output
            self.level = COND_IF
        elif name == "else":
            self.output = not self.chosen
            self.level = COND_ELSE
        else:  # endif
            self.output, self.chosen, self.level = True, False, 0
        return None


# -- parameter values --------------------------------------------------------------------------
class SsiError(Exception):
    """A command that fails: its error-log text (the errmsg goes to the output)."""


_NAME_CHAR = re.compile(r"[A-Za-z0-9_]")


def evaluate(text: str, lookup: Callable[[str], str]) -> str:
    """``ngx_http_ssi_evaluate_string``: ``$name`` and ``${name}`` replaced by their values
    (unknown ones are empty); a backslash before ``\\``, a quote or ``$`` is dropped, any
    other is kept (a regular expression's escapes)."""
    if "$" not in text and "\\" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt not in "\\'\"$":
                out.append(ch)
            out.append(nxt)
            i += 2
            continue
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        i += 1
        if i == n:
            raise SsiError(f'invalid variable name in "{text}"')
        if text[i] == "{":
            end = text.find("}", i)
            if end < 0:
                raise SsiError(f'the closing bracket in "{text[i + 1 :]}" variable is missing')
            name = text[i + 1 : end]
            i = end + 1
        else:
            start = i
            while i < n and _NAME_CHAR.match(text[i]):
                i += 1
            name = text[start:i]
        if not name:
            raise SsiError(f'invalid variable name in "{text}"')
        out.append(lookup(name.lower()))
    return "".join(out)


def expression(expr: str, lookup: Callable[[str], str]) -> tuple[bool, re.Match[str] | None]:
    """An ``if``'s ``expr``: ``$a`` (true when not empty), ``$a = text``, ``$a != text``,
    ``$a = /regex/`` (PCRE's syntax read by Python's ``re``).  Returns whether it holds, and a
    regex's match (its captures become ``$1``... and its named ones SSI variables).  The left
    side is lowercased up to the first character that is no letter,
    digit, ``$``, ``{``, ``}``, ``_`` or quote, as nginx does."""
    i, n = 0, len(expr)
    while i < n and (expr[i].isalnum() and expr[i].isascii() or expr[i] in "${}_\"'"):
        i += 1
    left = evaluate(expr[:i].lower(), lookup)
    while i < n and expr[i] == " ":
        i += 1
    if i == n:
        return bool(left), None
    if expr[i] == "=":
        negative, i = False, i + 1
    elif expr.startswith("!=", i):
        negative, i = True, i + 2
    else:
        raise SsiError(f'invalid expression in "{expr}"')
    while i < n and expr[i] == " ":
        i += 1
    right = expr[i:]
    if len(right) > 1 and right[0] == "/":
        if right[-1] != "/":
            raise SsiError(f'invalid expression in "{expr}"')
        pattern = evaluate(right[1:-1], lookup)
        try:
            match = re.search(pcre_to_python(pattern), left)
        except re.error as exc:
            raise SsiError(f'pcre2_compile() failed: {exc} in "{pattern}"') from None
        return (match is not None) != negative, match
    if right.startswith("\\/"):
        right = right[1:]
    return (evaluate(right, lookup) == left) != negative, None


#: What ``ngx_escape_uri`` leaves as it is with ``NGX_ESCAPE_HTML`` (its ``html`` table).
_URL_SAFE = frozenset(range(0x21, 0x7F)) - frozenset(b"\"#%'<>\\^`{|}")


def encode(value: str, encoding: str) -> str:
    """``echo``'s ``encoding``: ``none``, ``url`` (``ngx_escape_uri`` with
    ``NGX_ESCAPE_HTML``: space, ``"``, ``#``, ``%``, ``<``, ``>``, ``'``... and bytes outside
    ASCII's printable range as ``%XX``), ``entity`` (``ngx_escape_html``: ``<``, ``>``,
    ``&``, ``"``)."""
    if encoding == "url":
        raw = value.encode("latin-1", "replace")
        return "".join(chr(b) if b in _URL_SAFE and b not in b"<>\"'" else f"%{b:02X}" for b in raw)
    if encoding == "entity":
        return (
            value.replace("&", "&amp;")
            .replace("<", "&lt;")
            .replace(">", "&gt;")
            .replace('"', "&quot;")
        )
    return value


def format_date(timefmt: str, gmt: bool, now: float | None = None) -> str:
    """``$date_gmt``/``$date_local`` in an SSI document: ``strftime`` with ``config
    timefmt`` ("%s" is the seconds since the epoch, as nginx special-cases it)."""
    t = time.time() if now is None else now
    if timefmt == "%s":
        return str(int(t))
    tm = time.gmtime(t) if gmt else time.localtime(t)
    fmt = timefmt.replace("%Z", "GMT") if gmt else timefmt
    return time.strftime(fmt, tm)
