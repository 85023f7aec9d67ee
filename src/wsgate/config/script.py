"""The rewrite module's script: what ``rewrite``, ``return``, ``set``, ``if`` and ``break``
compile to, as data.

nginx compiles these directives, in the order written, into one array of codes per level
(``ngx_http_rewrite_loc_conf_t.codes``): the server's run in the server rewrite phase, a
location's in the rewrite phase (``ngx_http_rewrite_handler``), and an ``if`` block's are
compiled into the same array as the block around them.  wsgate keeps the same order as a tuple
of steps (:data:`Step`), an ``if`` holding its block's steps; regular expressions are compiled
once, here, at load time.  :mod:`wsgate.http.rewrite` runs a script for a request.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wsgate.config.template import Template

if TYPE_CHECKING:
    from wsgate.config.model import LocationSettings, Source

__all__ = [
    "Break",
    "Compare",
    "Condition",
    "FileTest",
    "Flag",
    "If",
    "Match",
    "Return",
    "Rewrite",
    "Script",
    "Set",
    "Step",
    "Test",
]


class Flag(enum.Enum):
    """``rewrite``'s optional flag (none: the script goes on after the rewrite)."""

    NONE = ""
    LAST = "last"
    BREAK = "break"
    REDIRECT = "redirect"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Rewrite:
    """``rewrite REGEX REPLACEMENT [FLAG]`` (``ngx_http_rewrite``).

    ``uri`` is the replacement up to its first ``?`` (all of it for a redirect), ``args``
    what follows that ``?`` (None when there is none): "If a replacement string includes
    the new request arguments, the previous request arguments are appended after them",
    unless the replacement ends with ``?`` (``add_args`` false).  ``status`` is 301 or 302
    for a redirect ("If a replacement string starts with http://, https://, or $scheme, the
    processing stops and the redirect is returned to a client"), else 0; ``question`` tells
    whether a redirect's text has a ``?`` of its own (the old arguments then follow an
    ``&``).
    """

    regex: re.Pattern[str]
    pattern: str
    uri: Template
    args: Template | None
    add_args: bool
    status: int
    flag: Flag
    question: bool = False

    @property
    def stops(self) -> bool:
        """Whether the script ends after a match (every flag does; no flag goes on)."""
        return self.flag is not Flag.NONE or self.status != 0


@dataclass(frozen=True, slots=True)
class Return:
    """``return CODE [TEXT]``, ``return CODE URL`` or ``return URL`` (302).  ``text`` is None
    for a bare code (an error code then gets its error page)."""

    code: int
    text: Template | None = None
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class Break:
    """``break``: "Stops processing the current set of ngx_http_rewrite_module directives"."""


@dataclass(frozen=True, slots=True)
class Set:
    """``set $NAME VALUE``; ``name`` is lower-case, without the ``$``."""

    name: str
    value: Template


# -- if conditions -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Test:
    """``if ($var)``: "false if the value of a variable is an empty string or "0""."""

    variable: str


@dataclass(frozen=True, slots=True)
class Compare:
    """``if ($var = value)`` and ``!=``."""

    variable: str
    value: Template
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Match:
    """``if ($var ~ regex)``, ``~*`` (``regex`` compiled caseless), ``!~`` and ``!~*``."""

    variable: str
    regex: re.Pattern[str]
    pattern: str
    negate: bool = False


@dataclass(frozen=True, slots=True)
class FileTest:
    """``-f``, ``-d``, ``-e``, ``-x`` (``op`` is the letter) and their ``!`` forms."""

    op: str
    path: Template
    negate: bool = False


Condition = Test | Compare | Match | FileTest


@dataclass(frozen=True, slots=True)
class If:
    """``if (CONDITION) { ... }``: its block's steps, and for an ``if`` in a location the
    settings of the implicit location it is (None at ``server`` level, where only rewrite
    directives may appear and nothing else changes).  ``level`` is the loader's, until the
    settings are built."""

    condition: Condition
    steps: tuple[Step, ...]
    settings: LocationSettings | None = None
    level: Any = field(default=None, compare=False, repr=False)


Step = Rewrite | Return | Break | Set | If
Script = tuple[Step, ...]
