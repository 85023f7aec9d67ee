"""Header-field lists as wsgate keeps them: ``(name, value)`` pairs in wire order, names in
their original case (nginx keeps both)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["first_value", "has_ctl_or_space"]

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
