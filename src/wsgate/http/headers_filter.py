"""``add_header``: nginx's headers filter (``ngx_http_headers_filter_module.c``), pure.

https://nginx.org/en/docs/http/ngx_http_headers_module.html#add_header: "Adds the specified
field to a response header provided that the response code equals 200, 201, 204, 206, 301,
302, 303, 304, 307, or 308. ... If the always parameter is specified, the header field will be
added regardless of the response code."  The value may contain variables; an empty value adds
nothing (``ngx_http_add_header``: "if (value->len)").

As in nginx, four names are not simply added (``ngx_http_set_headers[]``): ``Cache-Control``
and ``Link`` are added as further lines; ``Last-Modified`` and ``ETag`` replace the response's
own field where it stands (its last one, the one nginx points at), and an empty value removes
it.  Every other name is added after the response's fields, so ``add_header X-A 1`` next to an
upstream's ``X-A: 0`` gives two fields.

The filter runs for every response the request gets -- proxied, ``return``, ``stub_status``,
``prometheus``, wsgate's error pages and a ``101`` -- with the status the client receives;
``101`` is not in the list, so only ``always`` headers reach a WebSocket handshake response.
"""

from __future__ import annotations

from collections.abc import Callable

from wsgate.config.model import AddHeader

__all__ = ["SAFE_STATUSES", "add_headers"]

#: The statuses every ``add_header`` applies to (``safe_status`` in nginx's filter).
SAFE_STATUSES = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})

#: Names whose field is replaced in place, not added (``ngx_http_set_response_header``).
_REPLACED = frozenset({"last-modified", "etag"})


def add_headers(
    status: int,
    headers: list[tuple[str, str]],
    entries: tuple[AddHeader, ...],
    lookup: Callable[[str], str],
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``headers`` (the response's own fields, in order) after ``entries`` for ``status``,
    and the fields to write after them.  ``headers`` is not changed; with no entry that
    applies, it is returned as it is."""
    if not entries:
        return headers, []
    safe = status in SAFE_STATUSES
    added: list[tuple[str, str]] = []
    for h in entries:
        if not safe and not h.always:
            continue
        value = h.value.render(lookup)
        lname = h.name.lower()
        if lname in _REPLACED:
            headers = _replace(headers, added, lname, h.name, value)
        elif value:
            added.append((h.name, value))
    return headers, added


def _replace(
    headers: list[tuple[str, str]],
    added: list[tuple[str, str]],
    lname: str,
    name: str,
    value: str,
) -> list[tuple[str, str]]:
    """``ngx_http_set_response_header``: the last ``lname`` field (of the response, or one an
    earlier entry added) gets ``name: value``; with none, it is added; an empty value removes
    it.  ``added`` is changed in place; a changed ``headers`` is a new list."""
    for i in range(len(added) - 1, -1, -1):
        if added[i][0].lower() == lname:
            if value:
                added[i] = (name, value)
            else:
                del added[i]
            return headers
    for i in range(len(headers) - 1, -1, -1):
        if headers[i][0].lower() == lname:
            headers = list(headers)
            if value:
                headers[i] = (name, value)
            else:
                del headers[i]
            return headers
    if value:
        added.append((name, value))
    return headers
