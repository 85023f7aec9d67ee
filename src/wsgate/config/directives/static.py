"""Static files: ngx_http_core_module's ``root``/``alias``/``try_files``/``types`` and the
file-serving settings, ngx_http_index_module, ngx_http_autoindex_module, the range and
not-modified filters' directives.

https://nginx.org/en/docs/http/ngx_http_core_module.html,
https://nginx.org/en/docs/http/ngx_http_index_module.html,
https://nginx.org/en/docs/http/ngx_http_autoindex_module.html; served by
:mod:`wsgate.http.static` (the rules) and :mod:`wsgate.content.files` (the bytes).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from wsgate.config.model import DocRoot, LocationSettings, MimeTypes, TryFiles
from wsgate.config.table import (
    BLOCK,
    FLAG,
    HSL,
    HSL_IF,
    TAKE1,
    TAKE12,
    Arity,
    Directive,
    Kind,
    Merge,
    ctx,
    enum_,
    flag,
    size,
)
from wsgate.config.values import config_error

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES"]

_err = config_error
_LS = LocationSettings


def _root(s: Stmt, level: Level) -> DocRoot:
    """``root path`` / ``alias path`` (``ngx_http_core_root``): a path without variables is
    made absolute against the prefix now; ``alias`` remembers how much of the URI it
    replaces.  "A path to the file is constructed by merely adding a URI to the value of the
    root directive."  "alias ... the specified path replaces the location part."""
    alias = s.name == "alias"
    text = s.args[0]
    loc = level.location
    if alias and loc is not None:
        if loc.is_named:
            raise _err('"alias" directive cannot be used inside the named location', s.src)
    if text.endswith("/") and text != "/" and not alias:
        # nginx trims one trailing slash of root ("if (clcf->root.data[len - 1] == '/')").
        text = text[:-1]
    for var in ("document_root", "realpath_root"):
        if f"${var}" in text or f"${{{var}}}" in text:
            raise _err(f'the ${var} variable cannot be used in the "{s.name}" directive', s.src)
    prefix = level.loader.prefix
    if not text.startswith("$") and not os.path.isabs(text):
        # ngx_conf_full_name: a value not starting with a variable is under the prefix.
        text = os.path.join(prefix, text)
    tpl = level.loader.template(text, s.src)
    alias_len = 0
    if alias and loc is not None:
        alias_len = -1 if loc.is_regex else len(loc.name)
    return DocRoot(tpl, prefix, alias, alias_len, s.src)


def _index(s: Stmt, level: Level) -> tuple[object, ...]:
    """``index file ...``: "The file name can contain variables.  Files are checked in the
    specified order.  The last element of the list can be a file with an absolute path."
    An empty name is nginx's 'index "" in "index" directive is invalid'."""
    out = []
    for arg in s.args:
        if not arg:
            raise _err('index "" in "index" directive is invalid', s.src)
        out.append(level.loader.template(arg, s.src))
    return tuple(out)


def _try_files(s: Stmt, level: Level) -> TryFiles:
    """``try_files file ... uri`` / ``try_files file ... =code``."""
    template = level.loader.template
    files = tuple(template(a, s.src) for a in s.args[:-1])
    last = s.args[-1]
    code = None
    if last.startswith("="):
        if not last[1:].isdigit() or not 0 < int(last[1:]) <= 999:
            raise _err(f'invalid code "{last}"', s.src)
        code = int(last[1:])
    return TryFiles(files, template(last, s.src), code, s.src)


def _types(s: Stmt, level: Level) -> MimeTypes:
    """``types { type extension ...; }`` (``ngx_http_core_type``): extensions lowercased; one
    given twice keeps the first type, with nginx's warning 'duplicate extension "X", content
    type: "A", previous content type: "B"'."""
    by_ext: dict[str, str] = {}
    for e in s.block or []:
        if e.block is not None or not e.args:
            raise _err(f'invalid number of arguments in "{e.name}" directive', e.src)
        for ext in e.args:
            low = ext.lower()
            if low in by_ext:
                level.loader.warnings.append(
                    f'duplicate extension "{low}", content type: "{e.name}", previous content '
                    f'type: "{by_ext[low]}" in {e.src}'
                )
                continue
            by_ext[low] = e.name
    return MimeTypes(by_ext)


def _max_ranges(s: Stmt, level: Level) -> int | None:
    text = s.args[0]
    if not text.isascii() or not text.isdigit():
        raise _err(f'"{s.name}" directive invalid number', s.src)
    return int(text)


def _disable_symlinks(s: Stmt, level: Level) -> tuple[str, object]:
    """``disable_symlinks off | on | if_not_owner [from=part]``."""
    mode, start = "", None
    for arg in s.args:
        if arg in ("off", "on", "if_not_owner") and not mode:
            mode = arg
        elif arg.startswith("from=") and start is None:
            start = level.loader.template(arg[5:], s.src)
        else:
            raise _err(f'invalid parameter "{arg}"', s.src)
    if not mode:
        raise _err(f'invalid parameter "{s.args[0]}"', s.src)
    if mode == "off" and start is not None:
        raise _err('"from=" cannot be used with "off" parameter', s.src)
    return (mode, start)


def _setting(
    name: str,
    parse: object,
    field: str,
    default: str,
    syntax: str = "",
    contexts: frozenset[str] = HSL,
) -> Directive:
    return Directive(
        name,
        contexts,
        TAKE1,
        parse=parse,  # type: ignore[arg-type]
        target=_LS,
        fields=(field,),
        default=default,
        syntax=syntax,
    )


def _noop(name: str, arity: Arity, note: str) -> Directive:
    return Directive(name, HSL, arity, kind=Kind.NO_OP, note=note)


_CACHE = "every request opens and stats its file (no descriptor cache to size)"
_BLOCKING = "files are sent by `sendfile` or `pread` on the loop's thread (nginx without threads)"

ENTRIES: tuple[Directive, ...] = (
    Directive(
        "alias",
        ctx("location"),
        TAKE1,
        parse=_root,
        target=_LS,
        fields=("root",),
        syntax="path",
        duplicate='"alias" directive is duplicate',
        note="also in regular-expression locations, with captures",
    ),
    Directive(
        "root",
        HSL_IF,
        TAKE1,
        parse=_root,
        target=_LS,
        fields=("root",),
        syntax="path",
        duplicate='"root" directive is duplicate',
        note="default `root html` (under the prefix); variables",
    ),
    Directive(
        "index",
        HSL,
        Arity(1, -1),
        parse=_index,
        target=_LS,
        fields=("index",),
        default="index.html",
        merge=Merge.ARRAY,
        syntax="file ...",
        note="variables; the last may be an absolute URI",
    ),
    Directive(
        "try_files",
        ctx("server location"),
        Arity(2, -1),
        parse=_try_files,
        target=_LS,
        fields=("try_files",),
        merge=Merge.NONE,
        syntax="file ... uri | file ... @name | file ... =code",
    ),
    Directive(
        "types",
        HSL,
        BLOCK,
        parse=_types,
        target=_LS,
        fields=("types",),
        default=None,
        syntax="{ type extension ...; }",
        note="`include mime.types` reads wsgate's copy if the configuration has none",
    ),
    _setting("default_type", lambda s, level: s.args[0], "default_type", "text/plain", "mime-type"),
    _setting("etag", flag, "etag", "on"),
    _setting("if_modified_since", enum_("off", "exact", "before"), "if_modified_since", "exact"),
    Directive(
        "max_ranges",
        HSL,
        TAKE1,
        parse=_max_ranges,
        target=_LS,
        fields=("max_ranges",),
        syntax="number",
    ),
    _setting("log_not_found", flag, "log_not_found", "on"),
    _setting("autoindex", flag, "autoindex", "off"),
    _setting("autoindex_exact_size", flag, "autoindex_exact_size", "on"),
    _setting("autoindex_localtime", flag, "autoindex_localtime", "off"),
    _setting(
        "autoindex_format",
        enum_("html", "xml", "json", "jsonp"),
        "autoindex_format",
        "html",
    ),
    Directive(
        "disable_symlinks",
        HSL,
        TAKE12,
        parse=_disable_symlinks,
        target=_LS,
        fields=("disable_symlinks",),
        default="off",
        syntax="off | on | if_not_owner [from=part]",
    ),
    _setting("sendfile", flag, "sendfile", "off", contexts=HSL_IF),
    _setting("sendfile_max_chunk", size, "sendfile_max_chunk", "2m", "size"),
    _noop("tcp_nopush", FLAG, "the head is written before the file; no TCP_CORK"),
    _noop("aio", TAKE1, _BLOCKING),
    _noop("aio_write", FLAG, _BLOCKING),
    _noop("directio", TAKE1, "no O_DIRECT: files go through the page cache"),
    _noop("directio_alignment", TAKE1, "no O_DIRECT"),
    _noop("read_ahead", TAKE1, "the kernel's read-ahead applies"),
    _noop("output_buffers", Arity(2, 2), "`sendfile` or one `sendfile_max_chunk` read at a time"),
    _noop(
        "postpone_output",
        TAKE1,
        "output is written as it is made; the kernel's Nagle-free socket sends it",
    ),
    _noop("open_file_cache", TAKE12, _CACHE),
    _noop("open_file_cache_valid", TAKE1, _CACHE),
    _noop("open_file_cache_min_uses", TAKE1, _CACHE),
    _noop("open_file_cache_errors", FLAG, _CACHE),
)
