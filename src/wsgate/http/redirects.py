"""``proxy_redirect`` and the absolute ``Location`` of redirects, as nginx makes them (pure).

https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_redirect: "Sets the text that
should be changed in the “Location” and “Refresh” header fields of a proxied server
response."  Rules are tried in order and the first that matches decides
(``ngx_http_proxy_rewrite_redirect``):

- a text rule (variables allowed) matches when the value *starts with* it, case-sensitively,
  and that start is replaced (``ngx_http_proxy_rewrite_complex_handler``);
- a regex (``~`` case-sensitive, ``~*`` caseless) is searched in the value, and the whole
  value is replaced by the replacement, which may use its captures
  (``ngx_http_proxy_rewrite_regex_handler``).

``Refresh`` is rewritten from just after its first ``url=`` (any case); a ``Refresh`` without
one is left alone.  ``proxy_redirect default`` is the rule nginx makes from ``proxy_pass``
(:func:`wsgate.config.directives.rewrites.default_rule`).

A ``Location`` a rule rewrote becomes the response's own ``Location`` (nginx's
``r->headers_out.location``), so the header filter makes it absolute when it starts with
``/``: "http://127.0.0.1:8081/one/" → "/one/" → "http://HOST:PORT/one/"
(:func:`absolute_location`, ``ngx_http_header_filter``).  An upstream's relative
``Location`` that no rule rewrote stays relative ("we do not set r->headers_out.location
here to avoid handling relative redirects"), and a ``Refresh`` is never made absolute.
wsgate's own redirects (``return 30x /path``, the trailing-slash 301) go through the same
:func:`absolute_location`, governed by ``absolute_redirect``, ``server_name_in_redirect`` and
``port_in_redirect`` (https://nginx.org/en/docs/http/ngx_http_core_module.html#absolute_redirect).
"""

from __future__ import annotations

from collections.abc import Callable

from wsgate.config.model import LocationSettings, RewriteRule
from wsgate.config.variables import CaptureLookup

__all__ = [
    "absolute_location",
    "rewrite_redirects",
    "rewrite_value",
]

Lookup = Callable[[str], str]


def rewrite_value(
    value: str, prefix: int, rules: tuple[RewriteRule, ...], lookup: Lookup
) -> str | None:
    """``value`` with ``value[prefix:]`` rewritten by the first rule of ``rules`` that
    matches it, or None when none does (nginx's ``NGX_DECLINED``)."""
    for rule in rules:
        out = _apply(rule, value, prefix, lookup)
        if out is not None:
            return out
    return None


def _apply(rule: RewriteRule, value: str, prefix: int, lookup: Lookup) -> str | None:
    part = value[prefix:]
    if rule.regex is not None:
        # ngx_http_regex_exec on the rest of the value; the replacement replaces all of it.
        m = rule.regex.search(part)
        if m is None:
            return None
        # A regex without captures leaves $1.. as they were (nginx's r->captures).
        inner = CaptureLookup(lookup, m).lookup if rule.regex.groups else lookup
        return value[:prefix] + rule.replacement.render(inner)
    assert rule.pattern is not None
    pattern = rule.pattern.render(lookup)
    if rule.domain:
        # ngx_http_proxy_rewrite_domain_handler: one leading dot kept aside, then the whole
        # domain compared without regard to case.
        if part.startswith("."):
            prefix += 1
            part = part[1:]
        if len(pattern) != len(part) or pattern.lower() != part.lower():
            return None
        return value[:prefix] + rule.replacement.render(lookup)
    if not part.startswith(pattern):
        return None
    return value[:prefix] + rule.replacement.render(lookup) + part[len(pattern) :]


def _refresh_url(value: str) -> int:
    """Where the URL of a ``Refresh`` starts (after its first ``url=``, any case), or -1
    (``ngx_strcasestrn(ho->value.data, "url=", 4 - 1)``)."""
    i = value.lower().find("url=")
    return i + 4 if i != -1 else -1


def rewrite_redirects(
    headers: list[tuple[str, str]],
    rules: tuple[RewriteRule, ...],
    lookup: Lookup,
) -> tuple[list[tuple[str, str]], int | None]:
    """``headers`` (an upstream response's, in order) with ``proxy_redirect`` applied to
    ``Location`` and ``Refresh``, and the index of the ``Location`` nginx makes the
    response's own (``r->headers_out.location``: its first one a rule rewrote; None if
    none).  ``headers`` is not changed; with no rules it is returned as it is."""
    if not rules:
        return headers, None
    out = headers
    location: int | None = None
    for i, (name, value) in enumerate(headers):
        if len(name) not in (7, 8):  # neither "Location" nor "Refresh": the common case
            continue
        lname = name.lower()
        if lname == "location":
            new = rewrite_value(value, 0, rules, lookup)
        elif lname == "refresh":
            at = _refresh_url(value)
            new = rewrite_value(value, at, rules, lookup) if at != -1 else None
        else:
            continue
        if new is None:
            continue
        if out is headers:
            out = list(headers)
        out[i] = (name, new)
        if lname == "location" and location is None:
            location = i
    return out, location


def absolute_location(
    location: str,
    settings: LocationSettings,
    *,
    server_name: str,
    host: str | None,
    scheme: str,
    local_addr: str,
    local_port: int,
) -> str:
    """``ngx_http_header_filter``'s ``Location``: one that starts with ``/`` is made absolute
    unless ``absolute_redirect off`` -- the scheme of the connection (``https`` on TLS), the
    server's primary name with ``server_name_in_redirect on``, else the request's host
    (``Host`` or the request line's, validated), else the local address; the local port
    unless ``port_in_redirect off`` or it is the scheme's default (443 on TLS, 80 otherwise).
    Any other value is returned as it is."""
    if not location.startswith("/") or not settings.absolute_redirect:
        return location
    if settings.server_name_in_redirect:
        name = server_name
    elif host:
        name = host
    else:
        name = local_addr
    port = local_port
    if not settings.port_in_redirect or port == (443 if scheme == "https" else 80):
        port = 0
    return f"{scheme}://{name}:{port}{location}" if port else f"{scheme}://{name}{location}"
