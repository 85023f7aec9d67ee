"""crossplane → :class:`Stmt` trees: the only module that imports crossplane.

crossplane does the lexing, quoting and comments, one file at a time; ``include`` is expanded
here (nginx's ``ngx_conf_include``: relative to the configuration's directory, globs sorted),
each directive keeping the file and line it was written at, and ``include mime.types`` falls
back to the copy shipped with wsgate.  Tokens are unescaped as nginx's ``ngx_conf_read_token``
does.  ``-g`` directives are parsed the same way and say ``in command line`` in errors.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

import crossplane
import crossplane.errors
import crossplane.lexer
from crossplane.analyzer import DIRECTIVES as NGINX_DIRECTIVES
from crossplane.errors import NgxParserBaseException

from wsgate.config.model import Source
from wsgate.errors import ConfigError

__all__ = ["NGINX_DIRECTIVES", "SHIPPED_MIME_TYPES", "Stmt", "parse_file", "parse_globals"]


@dataclass(slots=True)
class Stmt:
    """One directive with the file it came from (crossplane's ``combine`` mislabels blocks)."""

    name: str
    args: list[str]
    src: Source
    block: list[Stmt] | None


_ESCAPES = {"t": "\t", "r": "\r", "n": "\n"}
#: Whitespace inside an unquoted token (not escaped): only crossplane's glued ``${name}``.
_GLUED = re.compile(r"(?<!\\)\s+")
_crossplane_lex = crossplane.lexer._lex_file_object


def _lex_expansions(file_obj: Any) -> Any:
    """crossplane's lexer with two of its differences from nginx's ``ngx_conf_read_token``
    undone:

    * its ``${name}`` bug: crossplane 0.5.8 appends the whitespace after an unquoted
      ``${name}`` and the next word to that token (``access_log logs/${host} main;`` became
      one argument), where nginx ends the token at the whitespace.  An unquoted token
      holding unescaped whitespace can only come from that, so it is split back into its
      words;
    * a ``}`` right after a directive's arguments (``location / { return 200 }``): crossplane
      ends the directive there, nginx stops with ``unexpected "}"`` ("if (last_space) ...
      else ... ngx_conf_log_error(..., "unexpected \"%c\"", ch)")."""
    prev: tuple[str, bool] | None = None
    for token, line, quoted in _crossplane_lex(file_obj):
        if token == "}" and not quoted and prev is not None:
            if prev[1] or prev[0] not in (";", "{", "}"):
                raise crossplane.errors.NgxParserSyntaxError(
                    'unexpected "}"', getattr(file_obj, "name", None), line
                )
        if quoted or not token.startswith("#"):
            prev = (token, quoted)
        if quoted or "${" not in token or not _GLUED.search(token):
            yield token, line, quoted
            continue
        for word in _GLUED.split(token):
            if word:
                yield word, line, False


crossplane.lexer._lex_file_object = _lex_expansions  # lex() looks it up per file


_ESCAPE = re.compile(r"\\([\"'\\trn])")


def _unescape(arg: str) -> str:
    """nginx's ``ngx_conf_read_token``: ``\\"``, ``\\'``, ``\\\\``, ``\\t``, ``\\r``
    and ``\\n`` are unescaped in every token (crossplane only undoes ``\\"``); any other
    backslash is kept, so ``\\.php$`` stays a regex."""
    if "\\" not in arg:
        return arg
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), arg)


#: The ``mime.types`` shipped with wsgate (the same entries as nginx's ``conf/mime.types``):
#: what ``include mime.types`` reads when the configuration's directory has none.
SHIPPED_MIME_TYPES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "mime.types")


def _include_files(pattern: str, conf_dir: str, src: Source) -> list[str]:
    """The files ``include PATTERN`` names, as ``ngx_conf_include`` finds them: relative to
    the configuration's directory (nginx's conf prefix), a glob sorted, an explicit name that
    must open.  A missing ``mime.types`` falls back to :data:`SHIPPED_MIME_TYPES`, so the
    ``include mime.types;`` every nginx configuration starts with works without copying
    nginx's file (a ``mime.types`` beside the configuration wins)."""
    full = pattern if os.path.isabs(pattern) else os.path.join(conf_dir, pattern)
    if glob.has_magic(full):
        return sorted(glob.glob(full))
    if not os.path.exists(full) and os.path.basename(pattern) == "mime.types":
        return [SHIPPED_MIME_TYPES]
    try:
        open(full).close()
    except OSError as exc:
        raise ConfigError(
            f'open() "{full}" failed ({exc.errno}: {exc.strerror})', src.file, src.line
        ) from exc
    return [full]


class _Reader:
    """Reads one file with crossplane (``single``: no include handling) and splices its
    includes in, each directive keeping the file and line it was written at."""

    def __init__(self, conf_dir: str) -> None:
        self.conf_dir = conf_dir
        self.files: list[tuple[str, str]] = []

    def read(self, path: str, stack: tuple[str, ...] = ()) -> list[Stmt]:
        try:
            payload = crossplane.parse(
                path, catch_errors=False, check_ctx=False, check_args=False, single=True
            )
        except NgxParserBaseException as exc:
            msg = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(
                msg.split(" in ")[0] if " in " in msg else msg,
                getattr(exc, "filename", None),
                getattr(exc, "lineno", None),
            ) from exc
        except OSError as exc:
            raise ConfigError(
                f'open() "{exc.filename}" failed ({exc.errno}: {exc.strerror})'
            ) from exc
        if payload["status"] != "ok":
            first = payload["errors"][0]
            msg = re.sub(r" in \S+:\d+$", "", first["error"])
            raise ConfigError(msg, first["file"], first["line"])
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                self.files.append((path, fh.read()))
        except OSError:
            pass
        return self._convert(payload["config"][0]["parsed"], path, stack + (path,))

    def _convert(
        self, items: list[dict[str, Any]], file: str, stack: tuple[str, ...]
    ) -> list[Stmt]:
        out: list[Stmt] = []
        for item in items:
            name = _unescape(item["directive"])  # every token, a map key too
            if name == "#":
                continue
            src = Source(file, item["line"])
            args = [_unescape(a) for a in item["args"]]
            if name == "include" and len(args) == 1 and item.get("block") is None:
                for path in _include_files(args[0], self.conf_dir, src):
                    if path in stack:
                        raise ConfigError("include recursion", file, item["line"])
                    out.extend(self.read(path, stack))
                continue
            block = item.get("block")
            out.append(
                Stmt(name, args, src, None if block is None else self._convert(block, file, stack))
            )
        return out


def parse_file(path: str) -> tuple[list[Stmt], list[tuple[str, str]]]:
    if not os.path.exists(path):
        raise ConfigError(f'open() "{path}" failed (2: No such file or directory)')
    reader = _Reader(os.path.dirname(path))
    stmts = reader.read(path)
    return stmts, reader.files


def parse_globals(text: str) -> list[Stmt]:
    """``-g`` directives; errors say ``in command line`` like nginx."""
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as fh:
        fh.write(text)
        name = fh.name
    try:
        stmts, _ = parse_file(name)
    except ConfigError as exc:
        raise ConfigError(f"{exc.message} in command line") from exc
    finally:
        os.unlink(name)
    return [Stmt(s.name, s.args, Source("command line", 0), s.block) for s in stmts]
