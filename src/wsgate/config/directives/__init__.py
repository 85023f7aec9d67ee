"""The directive table: every directive wsgate reads, accepts as a no-op, or refuses by name.

One :class:`~wsgate.config.table.Directive` per directive and context, as in nginx's module
``ngx_command_t`` arrays and crossplane's analyzer: contexts, argument count, value parser,
the model field it fills, its default and its merge rule.  :func:`find` is nginx's
``ngx_conf_handler`` (which entry applies here, with nginx's error words);
:class:`wsgate.config.level.Level` applies the entries.  Adding a directive is adding an entry
to one of the modules below.  ``python -m wsgate.config.directives`` prints
``docs/directives.md`` from this table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsgate.config.directives import (
    auth,
    cache,
    charset,
    core,
    gzip,
    headers,
    http2,
    limits,
    other,
    pages,
    proxy,
    realip,
    redirects,
    resolver,
    rewrite,
    ssi,
    ssl,
    static,
    upstream,
    websocket,
)
from wsgate.config.parse import NGINX_DIRECTIVES
from wsgate.config.table import CONTEXT_ORDER, LIF, SIF, Directive, Kind, Merge
from wsgate.config.values import config_error

if TYPE_CHECKING:
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES", "TABLE", "entries_for", "find", "markdown"]

_err = config_error

#: Every entry, in the order the documentation lists them.
ENTRIES: tuple[Directive, ...] = (
    *core.ENTRIES,
    *rewrite.ENTRIES,
    *pages.ENTRIES,
    *proxy.ENTRIES,
    *cache.ENTRIES,
    *websocket.ENTRIES,
    *redirects.ENTRIES,
    *headers.ENTRIES,
    *static.ENTRIES,
    *charset.ENTRIES,
    *ssi.ENTRIES,
    *gzip.ENTRIES,
    *limits.ENTRIES,
    *realip.ENTRIES,
    *auth.ENTRIES,
    *resolver.ENTRIES,
    *ssl.ENTRIES,
    *http2.ENTRIES,
    *upstream.ENTRIES,
    *other.ENTRIES,
)


def _index(entries: tuple[Directive, ...]) -> dict[str, tuple[Directive, ...]]:
    table: dict[str, tuple[Directive, ...]] = {}
    for d in entries:
        for other_d in table.get(d.name, ()):
            assert not d.contexts & other_d.contexts, f"{d.name}: two entries for one context"
        table[d.name] = (*table.get(d.name, ()), d)
    return table


#: name → its entries (one per set of contexts: ``server`` in ``http`` is a block, in
#: ``upstream`` a peer, as they are two commands of two nginx modules).
TABLE: dict[str, tuple[Directive, ...]] = _index(ENTRIES)
_BY_TARGET: dict[type, tuple[Directive, ...]] = {}
for _d in ENTRIES:
    if _d.kind is Kind.SETTING and _d.target is not None:
        _BY_TARGET[_d.target] = (*_BY_TARGET.get(_d.target, ()), _d)


def entries_for(target: type) -> tuple[Directive, ...]:
    """The settings that fill fields of ``target`` (a model class)."""
    return _BY_TARGET.get(target, ())


def find(s: Stmt, ctx: str) -> Directive:
    """The entry for ``s`` in context ``ctx``, with its arguments checked
    (``ngx_conf_handler``); refused and unknown names raise."""
    entries = TABLE.get(s.name)
    if entries is None:
        if s.name in NGINX_DIRECTIVES:
            raise _err(f'"{s.name}" directive is not supported by wsgate', s.src)
        raise _err(f'unknown directive "{s.name}"', s.src)
    d = next((d for d in entries if ctx in d.contexts), None)
    if d is None:
        if all(d.kind is Kind.REFUSED for d in entries):
            raise _err(f'"{s.name}" directive is not supported by wsgate', s.src)
        raise _err(f'"{s.name}" directive is not allowed here', s.src)
    d.arity.check(s)
    if d.kind is Kind.REFUSED:
        if d.parse is not None:
            d.parse(s, None)  # type: ignore[arg-type]  # raises its own words
        raise _err(f'"{s.name}" directive is not supported by wsgate', s.src)
    if d.kind is Kind.NO_OP and d.values is not None and s.args[0].lower() not in d.values:
        raise _err(
            f'"{s.name} {" ".join(s.args)}" is not supported by wsgate '
            f'(only "{s.name} {"|".join(sorted(d.values))}")'
            + (f": {d.refusal}" if d.refusal else ""),
            s.src,
        )
    if d.kind is Kind.NO_OP and d.parse is not None:
        d.parse(s, None)  # type: ignore[arg-type]  # checks the value, with nginx's words
    return d


# -- documentation -------------------------------------------------------------------------------
_LEVELS = frozenset({"http", "server", "location"})


def _syntax(d: Directive) -> str:
    if d.syntax or d.parse is None or d.arity.hi == 0:
        return d.syntax
    doc = {"flag": "on | off", "time": "time", "size": "size", "number": "number"}
    name = getattr(d.parse, "__name__", "")
    if name in doc:
        return doc[name]
    if name == "parse" and d.parse.__doc__:  # an enum_()
        return d.parse.__doc__
    return "value"


def _contexts(d: Directive) -> str:
    """nginx's documentation's words: ``if`` for both kinds of ``if`` block, ``if in
    location`` for the other directives an ``if`` in a location allows."""
    words = [c for c in CONTEXT_ORDER if c in d.contexts and c not in (SIF, LIF)]
    if SIF in d.contexts and LIF in d.contexts:
        words.append("if")
    elif LIF in d.contexts:
        words.append("if in location")
    return ", ".join(words)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """``docs/directives.md``: the table as a reader wants it."""
    out = [
        "# Directives",
        "",
        "Generated from wsgate's directive table (`src/wsgate/config/directives/`) by",
        "`python -m wsgate.config.directives > docs/directives.md`; a test fails when this",
        "file is stale. Each directive behaves as nginx documents it; a *default* is nginx's,",
        "written as the directive's arguments; *inheritance* is how a value set at an outer",
        "level (http → server → location → nested location or `if`) reaches an inner one:",
        "",
        f"- *{Merge.INHERIT.value}*: the innermost level that sets it wins;",
        f"- *{Merge.ARRAY.value}*: each directive adds to its level's list, and a level with",
        "  any replaces the outer level's whole list;",
        f"- *{Merge.NONE.value}*: it applies to the level that says it only;",
        f"- *{Merge.HANDLER.value}*: not inherited; of several at one level the last wins (an",
        "  `if` block keeps its location's unless it sets one);",
        f"- *{Merge.SCRIPT.value}*: the rewrite module's steps, run in the order written at",
        "  their level (server or location); not inherited.",
        "",
        "An `if` block in a location is an implicit location nested in it: the directives",
        "allowed there (*if in location*) inherit from the location as a nested location does.",
        "",
        "Adding a directive is adding one `Directive` entry (name, contexts, arguments, parser,",
        "model field, default, merge rule) to a module of `src/wsgate/config/directives/`,",
        "then regenerating this file; `tests/unit/test_directive_table.py` walks every entry",
        "(default, inheritance, nginx's words for bad arguments) and asks for two sample",
        "values and one bad one when the parser is new.",
        "",
        "## Implemented",
        "",
        "| directive | syntax | default | context | inheritance | notes |",
        "|---|---|---|---|---|---|",
    ]
    for d in ENTRIES:
        if d.kind in (Kind.SETTING, Kind.STRUCTURE):
            contexts = _contexts(d)
            # Inheritance only means something where levels nest.
            nests = d.kind is Kind.SETTING and len(d.contexts & _LEVELS) > 1
            merge = d.merge.value if nests or d.merge is Merge.HANDLER else ""
            syntax = f"`{d.name} {_syntax(d)}`" if _syntax(d) else f"`{d.name}`"
            default = f"`{d.name} {d.default}`" if d.default else "—"
            out.append(
                f"| `{d.name}` | {_cell(syntax)} | {_cell(default)} | {contexts} | {merge} "
                f"| {_cell(d.note)} |"
            )
    out += [
        "",
        "## Accepted with a `[warn]`, no effect",
        "",
        "| directive | context | why |",
        "|---|---|---|",
    ]
    for d in ENTRIES:
        if d.kind is Kind.NO_OP:
            contexts = _contexts(d)
            out.append(f"| `{d.name}` | {contexts} | {_cell(d.note)} |")
    out += [
        "",
        "## Refused",
        "",
        'Refused at load time as `"NAME" directive is not supported by wsgate in FILE:LINE`,',
        "as is every other directive nginx has; a name nginx does not know is",
        '`unknown directive "NAME"`.',
        "",
        "| directive | why |",
        "|---|---|",
    ]
    for d in ENTRIES:
        if d.kind is Kind.REFUSED:
            where = ", ".join(c for c in CONTEXT_ORDER if c in d.contexts)
            note = f"{d.note} (in {where})" if where else d.note
            out.append(f"| `{d.name}` | {_cell(note)} |")
    return "\n".join(out) + "\n"
