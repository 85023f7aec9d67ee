"""A worker's caches: one :class:`~wsgate.cache.store.CacheStore` per ``proxy_cache_path``
of the configuration, the manager's timer for each (it does its work only in the worker that
holds the cache's manager lock), the background updates under way, and this worker's
requests waiting for a ``proxy_cache_lock`` another request of the worker holds (woken at
once when it is given back)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from wsgate.cache.store import CacheStore
from wsgate.config.model import CachePath, Config

if TYPE_CHECKING:
    from wsgate.observability.logs import ErrorLogger

__all__ = ["ProxyCaches"]

#: How often the manager walks a cache that is within its limits (nginx's manager wakes at
#: least every 10 s); one left over them after ``manager_files`` removals: ``manager_sleep``.
_MANAGE_IDLE = 10.0


class ProxyCaches:
    """A worker's caches (one :class:`CacheStore` per ``proxy_cache_path``) and their
    managers, which run in the worker that holds each cache's manager lock."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stores: dict[CachePath, CacheStore] = {}
        self._timers: dict[CachePath, asyncio.Handle] = {}
        self._log: Callable[[str, str], None] = lambda level, text: None
        #: Requests of this worker waiting for a lock: md5 -> (their event, how many).
        self._waiting: dict[bytes, tuple[asyncio.Event, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def configure(self, config: Config, error_log: ErrorLogger) -> None:
        """Open the stores of ``config`` and start their managers (at start and reload)."""
        self._log = lambda level, text: error_log.log(level, text)
        specs = set(config.http.cache_paths.values())
        for old in [spec for spec in self._stores if spec not in specs]:
            # Replaced by a reload: its requests in flight keep the store; no manager.
            timer = self._timers.pop(old, None)
            if timer is not None:
                timer.cancel()
            self._stores.pop(old).close()
        for spec in specs:
            self.store(spec)

    def store(self, spec: CachePath) -> CacheStore:
        store = self._stores.get(spec)
        if store is None:
            store = self._stores[spec] = CacheStore(spec)
            self._timers[spec] = self._loop.call_soon(self._manage, spec)
        return store

    def _manage(self, spec: CachePath) -> None:
        store = self._stores.get(spec)
        if store is None:
            return
        try:
            if store.is_manager():
                store.manage(time.time(), self._log)
        except OSError as exc:
            self._log("crit", f'cache manager of "{spec.path}" failed ({exc})')
        if store.over:
            delay = max(spec.manager_sleep, 0.01)
        else:
            delay = min(_MANAGE_IDLE, max(spec.inactive / 2, 1.0))
        self._timers[spec] = self._loop.call_later(delay, self._manage, spec)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        self._timers.clear()
        for store in self._stores.values():
            store.close()

    def spawn(self, job: Coroutine[Any, Any, None]) -> None:
        """Run a background update (kept until it ends; cancelled when the worker stops)."""
        task = self._loop.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_unlocked(self, md5: bytes, timeout: float) -> None:
        """Until this worker releases ``md5``'s lock, or ``timeout``."""
        event, count = self._waiting.get(md5) or (asyncio.Event(), 0)
        self._waiting[md5] = (event, count + 1)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await event.wait()
        finally:
            entry = self._waiting.get(md5)
            if entry is not None and entry[0] is event:
                if entry[1] <= 1:
                    del self._waiting[md5]
                else:
                    self._waiting[md5] = (event, entry[1] - 1)

    def unlocked(self, md5: bytes) -> None:
        """``md5``'s lock was released here: its waiters in this worker look again now."""
        entry = self._waiting.pop(md5, None)
        if entry is not None:
            entry[0].set()
