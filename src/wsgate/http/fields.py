"""Header-field lists as wsgate keeps them: ``(name, value)`` pairs in wire order, names in
their original case (nginx keeps both)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["first_value", "has_ctl_or_space", "set_cookie_value"]

#: Control bytes, space and DEL: none may be in a header field name (RFC 9110 §5.1, token).
_CTL_SP = bytes(range(0x21)) + b"\x7f"


def has_ctl_or_space(name: bytes) -> bool:
    """Whether ``name`` holds a control byte, a space or DEL (``bytes.translate`` deletes
    them in C: no Python loop per byte)."""
    return len(name.translate(None, _CTL_SP)) != len(name)


def first_value(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of field ``name``, compared case-insensitively (RFC 9110 §5.1)."""
    lname = name.lower()
    for n, v in headers:
        if n.lower() == lname:
            return v
    return None


def set_cookie_value(headers: Iterable[tuple[str, str]], name: str) -> str:
    """``ngx_http_parse_set_cookie_lines``: the value of cookie ``name`` in the first
    ``Set-Cookie`` that sets it (name case-insensitive, spaces around ``=``, up to ``;``)."""
    n = len(name)
    for key, value in headers:
        if key.lower() != "set-cookie" or n >= len(value) or value[:n].lower() != name.lower():
            continue
        rest = value[n:].lstrip(" ")
        if not rest.startswith("="):
            continue
        return rest[1:].lstrip(" ").split(";", 1)[0]
    return ""
