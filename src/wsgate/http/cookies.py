"""``proxy_cookie_domain``, ``proxy_cookie_path`` and ``proxy_cookie_flags`` on an upstream's
``Set-Cookie`` fields, as nginx rewrites them (``ngx_http_proxy_rewrite_cookie``; pure).

https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_cookie_domain: "Sets a text
that should be changed in the domain attribute of the “Set-Cookie” header fields of a proxied
server response."  ``proxy_cookie_path`` does the same for the path attribute, with
``proxy_redirect``'s rules (a text prefix, or a ``~``/``~*`` regex replacing the whole value);
a ``proxy_cookie_domain`` text must equal the whole domain, case-insensitively, a leading dot
of either aside; its regex is always caseless.  "Several proxy_cookie_domain directives can be
specified ... the first one that matches is applied", for each ``Domain`` and ``Path``
attribute of the cookie.

``proxy_cookie_flags`` (nginx 1.19.3) "Sets one or more flags for the cookie": the first
directive whose cookie name matches (case-insensitively, or a caseless regex) applies its
flags -- ``secure``, ``httponly``, ``samesite=strict|lax|none`` set them (in place, or added
at the end), ``nosecure``, ``nohttponly``, ``nosamesite`` remove them; a flag value that
names no flag (after variables) is ignored.

A cookie with no ``=`` in its first part is left alone; so is one nothing changed: otherwise
it is written back as nginx joins the parts, each trimmed of spaces, with ``"; "``.
"""

from __future__ import annotations

from collections.abc import Callable

from wsgate.config.model import CookieFlags, RewriteRule
from wsgate.http.redirects import rewrite_value

__all__ = ["parse_cookie", "rewrite_cookie", "rewrite_set_cookies"]

Lookup = Callable[[str], str]
#: One attribute: (name, value or None when it has no ``=``); a name None is removed.
Attr = tuple[str | None, str | None]

_SECURE_ON, _SECURE_OFF = 0x01, 0x02
_HTTPONLY_ON, _HTTPONLY_OFF = 0x04, 0x08
_STRICT, _LAX, _NONE, _SAMESITE_OFF = 0x10, 0x20, 0x40, 0x80
#: ``ngx_http_proxy_cookie_flags_masks``.
_FLAGS = {
    "secure": _SECURE_ON,
    "nosecure": _SECURE_OFF,
    "httponly": _HTTPONLY_ON,
    "nohttponly": _HTTPONLY_OFF,
    "samesite=strict": _STRICT,
    "samesite=lax": _LAX,
    "samesite=none": _NONE,
    "nosamesite": _SAMESITE_OFF,
}


def parse_cookie(value: str) -> list[Attr]:
    """``ngx_http_proxy_parse_cookie``: the parts between ``;``, each a name and a value
    (None without ``=``), spaces trimmed around both."""
    attrs: list[Attr] = []
    for part in value.split(";"):
        name, eq, val = part.partition("=")
        attrs.append((name.strip(" "), val.strip(" ") if eq else None))
    return attrs


def rewrite_cookie(
    value: str,
    domains: tuple[RewriteRule, ...],
    paths: tuple[RewriteRule, ...],
    flags: tuple[CookieFlags, ...],
    lookup: Lookup,
) -> str | None:
    """One ``Set-Cookie`` value rewritten, or None when nothing changed it."""
    attrs = parse_cookie(value)
    if attrs[0][1] is None:
        return None
    changed = False
    for i in range(1, len(attrs)):
        key, val = attrs[i]
        if val is None or key is None:
            continue
        rules = domains if key.lower() == "domain" else paths if key.lower() == "path" else ()
        new = rewrite_value(val, 0, rules, lookup) if rules else None
        if new is not None:
            attrs[i] = (key, new)
            changed = True
    if flags and _set_flags(attrs, flags, lookup):
        changed = True
    if not changed:
        return None
    return "; ".join(k if v is None else f"{k}={v}" for k, v in attrs if k is not None)


def _set_flags(attrs: list[Attr], entries: tuple[CookieFlags, ...], lookup: Lookup) -> bool:
    """``ngx_http_proxy_rewrite_cookie_flags``: whether a directive's flags applied."""
    name = attrs[0][0] or ""
    for entry in entries:
        if entry.regex is not None:
            if entry.regex.search(name) is not None:
                break
        elif entry.cookie is not None and entry.cookie.render(lookup).lower() == name.lower():
            break
    else:
        return False
    f = 0
    for tpl in entry.flags:
        f |= _FLAGS.get(tpl.render(lookup).lower(), 0)
    if not f:
        return False
    _edit_flags(attrs, f)
    return True


def _edit_flags(attrs: list[Attr], f: int) -> None:
    """``ngx_http_proxy_edit_cookie_flags``: the cookie's own flags changed where they
    stand (a ``SameSite`` of another value rewritten as ``SameSite=Strict`` and so on, a
    removed one dropped), then the flags still to set added: ``Secure``, ``HttpOnly``,
    ``SameSite``."""
    for i in range(1, len(attrs)):
        key, val = attrs[i]
        low = (key or "").lower()
        if low == "secure":
            if f & _SECURE_ON:
                f &= ~_SECURE_ON
            elif f & _SECURE_OFF:
                attrs[i] = (None, None)
        elif low == "httponly":
            if f & _HTTPONLY_ON:
                f &= ~_HTTPONLY_ON
            elif f & _HTTPONLY_OFF:
                attrs[i] = (None, None)
        elif low == "samesite":
            for bit, word in ((_STRICT, "Strict"), (_LAX, "Lax"), (_NONE, "None")):
                if f & bit:
                    f &= ~bit
                    if (val or "").lower() != word.lower() or val is None:
                        attrs[i] = ("SameSite", word)
                    break
            else:
                if f & _SAMESITE_OFF:
                    attrs[i] = (None, None)
    if f & _SECURE_ON:
        attrs.append(("Secure", None))
    if f & _HTTPONLY_ON:
        attrs.append(("HttpOnly", None))
    for bit, word in ((_STRICT, "Strict"), (_LAX, "Lax"), (_NONE, "None")):
        if f & bit:
            attrs.append(("SameSite", word))
            break


def rewrite_set_cookies(
    headers: list[tuple[str, str]],
    domains: tuple[RewriteRule, ...],
    paths: tuple[RewriteRule, ...],
    flags: tuple[CookieFlags, ...],
    lookup: Lookup,
) -> list[tuple[str, str]]:
    """``headers`` with every ``Set-Cookie`` rewritten; ``headers`` itself when none of the
    three directives is in force or nothing changed."""
    if not (domains or paths or flags):
        return headers
    out = headers
    for i, (name, value) in enumerate(headers):
        if name.lower() != "set-cookie":
            continue
        new = rewrite_cookie(value, domains, paths, flags, lookup)
        if new is None:
            continue
        if out is headers:
            out = list(headers)
        out[i] = (name, new)
    return out
