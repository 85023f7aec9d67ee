"""Redirects and the rewriting of proxied responses: the core module's ``absolute_redirect``,
``server_name_in_redirect`` and ``port_in_redirect`` (and ``chunked_transfer_encoding``,
which decides whether ``add_trailer`` has a trailer to write); the proxy module's
``proxy_redirect``, ``proxy_cookie_domain``, ``proxy_cookie_path``, ``proxy_cookie_flags``
and ``proxy_ignore_headers``.

Applied by :mod:`wsgate.http.redirects` and :mod:`wsgate.http.cookies`.  Each list is
all-or-nothing, and ``off`` is a level's empty list: nginx's syntax allows either one ``off``
or any number of rules at one level (anything else "is duplicate", nginx 1.19.3+).
``proxy_redirect`` has nginx's own merge: with nothing written, a level inherits the outer
level's rules (or ``off``), and failing those the outermost location with ``proxy_pass``
below the last level that said anything makes the default (``ngx_http_proxy_merge_loc_conf``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from wsgate.config.model import CookieFlags, LocationSettings, ProxyPass, RewriteRule
from wsgate.config.table import FLAG, HSL, ONEMORE, TAKE12, TAKE1234, Directive, Merge, flag
from wsgate.config.template import Template
from wsgate.config.values import config_error, regex

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES", "IGNORE_HEADERS", "default_rule"]

_err = config_error
_LS = LocationSettings

#: ``ngx_http_upstream_ignore_headers_masks``, as nginx spells them.
IGNORE_HEADERS = (
    "X-Accel-Redirect",
    "X-Accel-Expires",
    "X-Accel-Limit-Rate",
    "X-Accel-Buffering",
    "X-Accel-Charset",
    "Expires",
    "Cache-Control",
    "Set-Cookie",
    "Vary",
)
_IGNORE = {h.lower(): h for h in IGNORE_HEADERS}


def _own(s: Stmt, level: Level, field: str) -> list[Any] | None:
    """The level's list for ``field`` so far (None: nothing yet); after ``off`` (an empty
    list) any further directive "is duplicate", as is ``off`` after rules."""
    own = level.own.get(f"{_LS.__name__}.{field}")
    if own is not None and not own[0]:
        raise _err(f'"{s.name}" directive is duplicate', s.src)
    return None if own is None else own[0]


def _off(s: Stmt, level: Level, field: str) -> bool:
    """Whether ``s`` is ``NAME off`` (checked for duplicates)."""
    own = _own(s, level, field)
    if len(s.args) == 1 and s.args[0] == "off":
        if own is not None:
            raise _err(f'"{s.name}" directive is duplicate', s.src)
        return True
    return False


def _rule(
    s: Stmt, level: Level, pattern: str, replacement: str, *, caseless_only: bool = False
) -> RewriteRule:
    """``ngx_http_proxy_rewrite_regex`` for ``~``/``~*`` (``caseless_only``: a
    ``proxy_cookie_domain`` regex, whose ``~`` is always caseless), else a text with
    variables."""
    tpl = level.loader.template
    if pattern.startswith("~"):
        body, flags = pattern[1:], int(re.IGNORECASE)
        if not caseless_only:
            if body.startswith("*"):
                body = body[1:]
            else:
                flags = 0
        compiled = regex(body, flags, s.src, level.loader.captures)
        return RewriteRule(tpl(replacement, s.src), regex=compiled)
    return RewriteRule(tpl(replacement, s.src), pattern=tpl(pattern, s.src))


def default_rule(proxy_pass: ProxyPass, location_name: str) -> RewriteRule:
    """``proxy_redirect default``: "proxy_pass http://upstream:port/two/;" in ``location
    /one/`` replaces "http://upstream:port/two/" with "/one/"; a ``proxy_pass`` without a URI
    part replaces its URL and "/" with "/" (ngx_http_proxy_redirect, ngx_http_proxy_merge_loc_conf).
    The URL is the one written; its text holds no variables (a ``proxy_pass`` with
    variables has no default), so ``$`` is literal here."""
    if proxy_pass.uri:
        pattern, replacement = proxy_pass.url, location_name
    else:
        pattern, replacement = proxy_pass.url + "/", "/"
    return RewriteRule(replacement=_literal(replacement), pattern=_literal(pattern))


def _literal(text: str) -> Template:
    """A template that is ``text`` itself (no variables)."""
    return Template(text, (text,))


def _proxy_redirect(s: Stmt, level: Level) -> tuple[RewriteRule, ...]:
    """``ngx_http_proxy_redirect``: ``default``, ``off``, or REDIRECT REPLACEMENT."""
    if _off(s, level, "proxy_redirects"):
        return ()
    if len(s.args) == 1:
        if s.args[0] != "default":
            raise _err(f'invalid parameter "{s.args[0]}"', s.src)
        own = level.own.get(f"{_LS.__name__}.proxy_pass")
        pp: ProxyPass | None = own[0] if own is not None else None
        if pp is not None and _has_variables(pp):
            raise _err(
                '"proxy_redirect default" cannot be used with "proxy_pass" directive with '
                "variables",
                s.src,
            )
        if pp is None:
            raise _err(
                '"proxy_redirect default" should be placed after the "proxy_pass" directive',
                s.src,
            )
        return (default_rule(pp, _location_name(level)),)
    return (_rule(s, level, s.args[0], s.args[1]),)


def _has_variables(pp: ProxyPass) -> bool:
    return pp.template is not None or "$" in pp.url


def _location_name(level: Level) -> str:
    """``plcf->location``: the location's name (empty for a regex one, where ``proxy_pass``
    may have no URI part, so the name is never used)."""
    loc = level.location
    return "" if loc is None or loc.is_regex else loc.name


def _resolve_redirects(level: Level, d: Directive) -> tuple[RewriteRule, ...]:
    merged = _merged_redirects(level, d.key)
    return () if merged is None else merged


def _merged_redirects(level: Level, key: str) -> tuple[RewriteRule, ...] | None:
    """``ngx_http_proxy_merge_loc_conf``: "if (conf->redirect) { if (conf->redirects ==
    NULL) conf->redirects = prev->redirects; if (conf->redirects == NULL && conf->url.data)
    ... the default }" -- levels merge from the outside in; None is nginx's NULL, ``()`` is
    ``off``."""
    outer = None if level.parent is None else _merged_redirects(level.parent, key)
    own = level.own.get(key)
    if own is not None:
        return tuple(own[0])
    if outer is not None:
        return outer
    found = level.own.get(f"{_LS.__name__}.proxy_pass")
    if found is not None and not _has_variables(found[0]):
        return (default_rule(found[0], _location_name(level)),)
    return None


def _cookie_domain(s: Stmt, level: Level) -> tuple[RewriteRule, ...]:
    """``ngx_http_proxy_cookie_domain``: ``off`` or DOMAIN REPLACEMENT; a text domain and
    its replacement lose one leading dot."""
    if _off(s, level, "proxy_cookie_domains"):
        return ()
    if len(s.args) == 1:
        raise _err(f'invalid parameter "{s.args[0]}"', s.src)
    pattern, replacement = s.args
    if pattern.startswith("~"):
        return (_rule(s, level, pattern, replacement, caseless_only=True),)
    pattern = pattern[1:] if pattern.startswith(".") else pattern
    replacement = replacement[1:] if replacement.startswith(".") else replacement
    tpl = level.loader.template
    return (RewriteRule(tpl(replacement, s.src), pattern=tpl(pattern, s.src), domain=True),)


def _cookie_path(s: Stmt, level: Level) -> tuple[RewriteRule, ...]:
    """``ngx_http_proxy_cookie_path``: ``off`` or PATH REPLACEMENT."""
    if _off(s, level, "proxy_cookie_paths"):
        return ()
    if len(s.args) == 1:
        raise _err(f'invalid parameter "{s.args[0]}"', s.src)
    return (_rule(s, level, s.args[0], s.args[1]),)


def _cookie_flags(s: Stmt, level: Level) -> tuple[CookieFlags, ...]:
    """``ngx_http_proxy_cookie_flags``: ``off`` or COOKIE FLAG... (up to three flags, each
    with variables, read per response); ``~`` makes the name a caseless regex."""
    if _off(s, level, "proxy_cookie_flags"):
        return ()
    if len(s.args) == 1:
        raise _err(f'invalid parameter "{s.args[0]}"', s.src)
    tpl = level.loader.template
    flags = tuple(tpl(a, s.src) for a in s.args[1:])
    name = s.args[0]
    if name.startswith("~"):
        compiled = regex(name[1:], re.IGNORECASE, s.src, level.loader.captures)
        return (CookieFlags(flags, regex=compiled),)
    return (CookieFlags(flags, cookie=tpl(name, s.src)),)


def _ignore_headers(s: Stmt, level: Level) -> tuple[str, ...]:
    """``ngx_conf_set_bitmask_slot``: each value one of :data:`IGNORE_HEADERS` (any case),
    else 'invalid value "X"'; one already given is a ``[warn]`` 'duplicate value "X"'."""
    have = {h.lower() for h in level.current(s.name)}
    out: list[str] = []
    for a in s.args:
        name = _IGNORE.get(a.lower())
        if name is None:
            raise _err(f'invalid value "{a}"', s.src)
        if name.lower() in have:
            level.loader.warnings.append(f'duplicate value "{a}" in {s.src}')
            continue
        have.add(name.lower())
        out.append(name)
    return tuple(out)


ENTRIES: tuple[Directive, ...] = (
    # ngx_http_core_module: how ngx_http_header_filter makes a "Location: /..." absolute.
    Directive(
        "absolute_redirect",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("absolute_redirect",),
        default="on",
        note="`off`: a `Location` starting with `/` is sent as it is",
    ),
    Directive(
        "server_name_in_redirect",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("server_name_in_redirect",),
        default="off",
        note="`on`: the server's primary name, not `Host`",
    ),
    Directive(
        "port_in_redirect",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("port_in_redirect",),
        default="on",
    ),
    Directive(
        "chunked_transfer_encoding",
        HSL,
        FLAG,
        parse=flag,
        target=_LS,
        fields=("chunked_transfer_encoding",),
        default="on",
        note="`off`: an HTTP/1.1 body of unknown length ends with the connection; no trailer",
    ),
    Directive(
        "proxy_redirect",
        HSL,
        TAKE12,
        parse=_proxy_redirect,
        target=_LS,
        fields=("proxy_redirects",),
        unset=(),
        merge=Merge.ARRAY,
        resolve=_resolve_redirects,
        syntax="default | off | redirect replacement",
        note="default `default` (from `proxy_pass`); on `Location` and `Refresh`; "
        "text, `~`/`~*` with captures, variables",
    ),
    Directive(
        "proxy_cookie_domain",
        HSL,
        TAKE12,
        parse=_cookie_domain,
        target=_LS,
        fields=("proxy_cookie_domains",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="off | domain replacement",
        note="default `off`; text (any case, leading dot aside) or `~` regex",
    ),
    Directive(
        "proxy_cookie_path",
        HSL,
        TAKE12,
        parse=_cookie_path,
        target=_LS,
        fields=("proxy_cookie_paths",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="off | path replacement",
        note="default `off`; text prefix or `~`/`~*` regex",
    ),
    Directive(
        "proxy_cookie_flags",
        HSL,
        TAKE1234,
        parse=_cookie_flags,
        target=_LS,
        fields=("proxy_cookie_flags",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="off | cookie [flag ...]",
        note="default `off`; secure, httponly, samesite=strict|lax|none, nosecure, "
        "nohttponly, nosamesite",
    ),
    Directive(
        "proxy_ignore_headers",
        HSL,
        ONEMORE,
        parse=_ignore_headers,
        target=_LS,
        fields=("proxy_ignore_headers",),
        unset=(),
        merge=Merge.ARRAY,
        syntax="field ...",
        note="`X-Accel-Limit-Rate`, `X-Accel-Buffering`, `X-Accel-Redirect`; the cache's "
        "`X-Accel-Expires`, `Expires`, `Cache-Control`, `Set-Cookie`, `Vary`",
    ),
)
