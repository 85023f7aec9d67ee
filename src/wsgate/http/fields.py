"""Header-field lists as wsgate keeps them: ``(name, value)`` pairs in wire order, names in
their original case (nginx keeps both)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["first_value"]


def first_value(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of field ``name``, compared case-insensitively (RFC 9110 §5.1)."""
    lname = name.lower()
    for n, v in headers:
        if n.lower() == lname:
            return v
    return None
