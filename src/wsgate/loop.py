"""The event loop every wsgate program runs on: uvloop by default, asyncio's as a fallback.

``WSGATE_LOOP=asyncio`` selects the standard loop (for debugging, or to compare the two).
"""

from __future__ import annotations

import asyncio
import os

__all__ = ["new_event_loop", "preload"]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new uvloop loop, unless ``WSGATE_LOOP=asyncio`` or uvloop is not installed."""
    if os.environ.get("WSGATE_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def preload() -> None:
    """Import the event loop's module now.  A master calls it before it forks: the workers
    then share the module's memory with it instead of each importing a private copy (about
    2 MB per worker for uvloop)."""
    if os.environ.get("WSGATE_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop  # noqa: F401
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            pass
