"""The optional compiled extensions (``wsgate.proxy._frames``, ``wsgate.proxy._relay``,
``wsgate.http._heads``): each is used where it was built and ``WSGATE_PURE`` is not set to a
non-empty value; otherwise its module runs its pure-Python twin.  ``pip install`` builds them
where a C compiler is and goes on without them elsewhere (optional in pyproject.toml)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["PURE", "extension", "pure_note"]

#: ``"WSGATE_PURE"`` when the environment forces the pure-Python code, else ``""``.
PURE = "WSGATE_PURE" if os.environ.get("WSGATE_PURE") else ""


def extension(name: str) -> ModuleType | None:
    """The compiled module ``name``, or None under ``WSGATE_PURE`` or where it was not built."""
    if PURE:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:  # built without a compiler: the extension is optional
        return None


def pure_note() -> str:
    """What ``wsgate -V`` adds to a fallback's name when ``WSGATE_PURE`` chose it."""
    return f" ({PURE})" if PURE else ""
