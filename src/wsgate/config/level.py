"""One http/server/location level of directives, and nginx's merge with the outer level.

A :class:`Level` keeps what one block sets, parsed by each directive's entry in
:mod:`wsgate.config.directives`, and :meth:`Level.collect` gives the effective values of a
model class's fields by the entry's merge rule (:class:`~wsgate.config.table.Merge`), as
nginx's ``merge_loc_conf`` functions do.  Levels chain through ``parent`` only, so a deeper
level (a nested location, an ``if`` block) is just one more link.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsgate.config.directives import TABLE, entries_for
from wsgate.config.model import Source
from wsgate.config.parse import Stmt
from wsgate.config.table import DEFAULT_SOURCE, Directive, Merge
from wsgate.config.values import config_error

if TYPE_CHECKING:
    from wsgate.config.loader import Loader
    from wsgate.config.model import Location

__all__ = ["Level"]

_err = config_error


class Level:
    """Directives set at one level, and the merge with the outer level."""

    __slots__ = ("loader", "parent", "own", "written", "regex", "noname", "location", "blocks")

    def __init__(
        self,
        loader: Loader,
        parent: Level | None,
        regex: bool = False,
        location: Location | None = None,
        noname: bool = False,
    ) -> None:
        self.loader = loader
        self.parent = parent
        #: A location given by a regular expression (``clcf->regex``): ``proxy_pass`` may
        #: not have a URI part here (nor inside ``if``).
        self.regex = regex
        #: An ``if`` block (nginx's implicit location, ``clcf->noname``): it keeps its
        #: location's content handler unless it sets one.
        self.noname = noname
        #: The location this level is (its modifier and name), for the locations inside.
        self.location = location
        #: Blocks that may appear once here (``http``, ``events``).
        self.blocks: set[str] = set()
        #: entry key → (value, where the first directive filling it was written); for
        #: :attr:`Merge.ARRAY` the value is the level's list.
        self.own: dict[str, tuple[Any, Source]] = {}
        #: directive name → its entry, in the order written.
        self.written: dict[str, Directive] = {}

    def set(self, s: Stmt, d: Directive) -> None:
        """``s`` at this level, already checked by :func:`~wsgate.config.directives.find`."""
        assert d.parse is not None and d.target is not None, d.name
        if d.merge not in (Merge.ARRAY, Merge.SCRIPT) and d.key in self.own:
            raise _err(d.duplicate or f'"{s.name}" directive is duplicate', s.src)
        value = d.parse(s, self)
        self.written[s.name] = d
        if d.merge in (Merge.ARRAY, Merge.SCRIPT):
            self.own.setdefault(d.key, ([], s.src))[0].extend(value)
        else:
            self.own[d.key] = (value, s.src)

    def once(self, s: Stmt) -> None:
        """A block nginx allows once per level (``ngx_http_block``: "is duplicate")."""
        if s.name in self.blocks:
            raise _err(f'"{s.name}" directive is duplicate', s.src)
        self.blocks.add(s.name)

    def current(self, name: str) -> list[Any]:
        """What the array directive ``name`` holds at this level so far."""
        for d in TABLE[name]:
            if d.merge is Merge.ARRAY and d.key in self.own:
                return list(self.own[d.key][0])
        return []

    # -- merge --------------------------------------------------------------------------------
    def value(self, d: Directive) -> Any:
        """The effective value of ``d`` here, by its merge rule."""
        if d.merge is Merge.SCRIPT:
            own = self.own.get(d.key)
            return tuple(own[0]) if own is not None else self.loader.default(d)
        if d.resolve is not None:
            return d.resolve(self, d)
        if d.merge in (Merge.NONE, Merge.HANDLER):
            own = self.own.get(d.key)
            return own[0] if own is not None else self.loader.default(d)
        level: Level | None = self
        while level is not None:
            found = level.own.get(d.key)
            if found is not None:
                return tuple(found[0]) if d.merge is Merge.ARRAY else found[0]
            level = level.parent
        return self.loader.default(d)

    def collect(self, target: type) -> dict[str, Any]:
        """Field → effective value for every entry that fills a field of ``target``."""
        # The content handler (proxy_pass, stub_status...): the last one written wins; an
        # ``if`` block that sets none keeps its location's.
        handlers = [d for d in self.written.values() if d.merge is Merge.HANDLER]
        inherited: dict[str, Any] = {}
        if self.noname and not handlers and self.parent is not None:
            inherited = self.parent.collect(target)
        out: dict[str, Any] = {}
        for d in entries_for(target):
            if d.merge is Merge.HANDLER and inherited:
                value = tuple(inherited[f] for f in d.fields)
                value = value[0] if len(d.fields) == 1 else value
            else:
                value = self.value(d)
            if d.merge is Merge.HANDLER and handlers and d is not handlers[-1]:
                value = d.unset
            if len(d.fields) == 1:
                out[d.fields[0]] = value
            else:
                out.update(zip(d.fields, value, strict=True))
        return out

    def where(self, target: type, field: str) -> Source | None:
        """Where the innermost level that sets ``target.field`` did."""
        key = f"{target.__name__}.{field}"
        level: Level | None = self
        while level is not None:
            if key in level.own:
                return level.own[key][1]
            level = level.parent
        return None

    def source(self, target: type) -> Source | None:
        """Where the innermost level that sets any field of ``target`` first did."""
        prefix = f"{target.__name__}."
        level: Level | None = self
        while level is not None:
            for key, (_, src) in level.own.items():
                if key.startswith(prefix):
                    return src
            level = level.parent
        return None


def parse_default(loader: Loader, d: Directive) -> Any:
    """nginx's documented default, parsed as if written (``Default: proxy_read_timeout 60s;``)."""
    if d.default is None:
        return d.unset
    assert d.parse is not None
    return d.parse(Stmt(d.name, d.default.split(), DEFAULT_SOURCE, None), Level(loader, None))
