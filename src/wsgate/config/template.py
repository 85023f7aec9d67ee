"""Strings with nginx variables: ``"$scheme://$host${uri}x"``, ``"$1"``.

nginx compiles such values with ``ngx_http_script_compile``: a ``$`` followed by a name made of
``[A-Za-z0-9_]`` (or the name in ``{}``) is a variable; ``$1``..``$9`` are regex captures.
A template is compiled once at load time and rendered per request with a lookup function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Template", "TemplateError", "compile_template"]


class TemplateError(ValueError):
    """Raised by :func:`compile_template`; the loader adds file and line."""


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled value: literal strings and variable names, alternating in ``parts``.

    ``parts[i]`` is a literal when ``i`` is even and a variable name when ``i`` is odd, so
    rendering needs no type checks.
    """

    raw: str
    parts: tuple[str, ...]

    @property
    def is_static(self) -> bool:
        return len(self.parts) == 1

    @property
    def variables(self) -> tuple[str, ...]:
        return self.parts[1::2]

    def render(self, lookup: Callable[[str], str]) -> str:
        parts = self.parts
        if len(parts) == 1:
            return parts[0]
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            out.append(lookup(parts[i]))
            out.append(parts[i + 1])
        return "".join(out)

    def __str__(self) -> str:
        return self.raw


def _is_name_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c == "_")


def compile_template(text: str) -> Template:
    """Compile ``text``; raises :class:`TemplateError` with nginx's wording on bad syntax."""
    parts: list[str] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "$":
            literal.append(c)
            i += 1
            continue
        i += 1
        if i < n and text[i].isdigit():
            name = text[i]
            i += 1
        elif i < n and text[i] == "{":
            end = text.find("}", i + 1)
            if end == -1:
                raise TemplateError(f'the closing bracket in "{text[i + 1 :]}" variable is missing')
            name = text[i + 1 : end]
            if not name or not all(_is_name_char(ch) for ch in name):
                raise TemplateError(f'invalid variable name "{name}"')
            i = end + 1
        else:
            start = i
            while i < n and _is_name_char(text[i]):
                i += 1
            name = text[start:i]
            if not name:
                raise TemplateError('invalid variable name ""')
        parts.append("".join(literal))
        literal = []
        parts.append(name.lower())
    parts.append("".join(literal))
    return Template(raw=text, parts=tuple(parts))
