"""crossplane → :class:`Stmt` trees: the only module that imports crossplane.

crossplane does the lexing, quoting, comments and ``include`` expansion.  Its ``combine`` mode
labels blocks with the wrong file, so includes are spliced here instead, each directive keeping
the file and line it was written at.  Tokens are unescaped as nginx's ``ngx_conf_read_token``
does.  ``-g`` directives are parsed the same way and say ``in command line`` in errors.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

import crossplane
from crossplane.analyzer import DIRECTIVES as NGINX_DIRECTIVES
from crossplane.errors import NgxParserBaseException

from wsgate.config.model import Source
from wsgate.errors import ConfigError

__all__ = ["NGINX_DIRECTIVES", "Stmt", "parse_file", "parse_globals"]


@dataclass(slots=True)
class Stmt:
    """One directive with the file it came from (crossplane's ``combine`` mislabels blocks)."""

    name: str
    args: list[str]
    src: Source
    block: list[Stmt] | None


def _flatten(payload: dict[str, Any], index: int, seen: tuple[int, ...] = ()) -> list[Stmt]:
    cfg = payload["config"][index]
    return _convert(payload, cfg["parsed"], cfg["file"], seen + (index,))


_ESCAPES = {"t": "\t", "r": "\r", "n": "\n"}
_ESCAPE = re.compile(r"\\([\"'\\trn])")


def _unescape(arg: str) -> str:
    """nginx's ``ngx_conf_read_token``: ``\\"``, ``\\'``, ``\\\\``, ``\\t``, ``\\r``
    and ``\\n`` are unescaped in every token (crossplane only undoes ``\\"``); any other
    backslash is kept, so ``\\.php$`` stays a regex."""
    if "\\" not in arg:
        return arg
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), arg)


def _convert(
    payload: dict[str, Any], items: list[dict[str, Any]], file: str, seen: tuple[int, ...]
) -> list[Stmt]:
    out: list[Stmt] = []
    for item in items:
        name = item["directive"]
        src = Source(file, item["line"])
        if name == "include":
            for idx in item.get("includes", []):
                if idx in seen:
                    raise ConfigError("include recursion", file, item["line"])
                out.extend(_flatten(payload, idx, seen))
            continue
        block = item.get("block")
        out.append(
            Stmt(
                name,
                [_unescape(a) for a in item["args"]],
                src,
                None if block is None else _convert(payload, block, file, seen),
            )
        )
    return out


def parse_file(path: str) -> tuple[list[Stmt], list[tuple[str, str]]]:
    if not os.path.exists(path):
        raise ConfigError(f'open() "{path}" failed (2: No such file or directory)')
    try:
        payload = crossplane.parse(path, catch_errors=False, check_ctx=False, check_args=False)
    except NgxParserBaseException as exc:
        msg = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            msg.split(" in ")[0] if " in " in msg else msg,
            getattr(exc, "filename", None),
            getattr(exc, "lineno", None),
        ) from exc
    except OSError as exc:
        raise ConfigError(f'open() "{exc.filename}" failed ({exc.errno}: {exc.strerror})') from exc
    if payload["status"] != "ok":
        first = payload["errors"][0]
        msg = re.sub(r" in \S+:\d+$", "", first["error"])
        raise ConfigError(msg, first["file"], first["line"])
    files = []
    for cfg in payload["config"]:
        try:
            with open(cfg["file"], encoding="utf-8", errors="replace") as fh:
                files.append((cfg["file"], fh.read()))
        except OSError:
            pass
    return _flatten(payload, 0), files


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
