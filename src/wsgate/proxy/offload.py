"""A small, bounded thread pool for the blocking work of a request.

``auth_basic`` opens and reads its user file and hashes a password for every request (as
nginx does, in its worker); bcrypt and yescrypt take tens of milliseconds by design.  Done on
the event loop, that would stall every connection of the worker.  :func:`offload` runs such
a job in a pool of at most :data:`MAX_THREADS` threads per worker process: the loop stays
free, and at most that many hashes run at once (the rest queue, each queue entry being a
request that holds its connection, so the queue is bounded by ``worker_connections``).  The
hash functions release the GIL (``hashlib`` on large inputs, ``crypt_r`` through
:mod:`ctypes`), so the threads do run in parallel.

The pool is made on first use in the process that uses it: a worker forked from the master
never inherits the master's threads.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["MAX_THREADS", "offload"]

#: Threads per worker process: the CPUs, at most 4 (each worker has its own pool).
MAX_THREADS = max(1, min(4, os.cpu_count() or 1))

_pool: tuple[int, ThreadPoolExecutor] | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    pid = os.getpid()
    if _pool is None or _pool[0] != pid:
        _pool = (pid, ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="wsgate-auth"))
    return _pool[1]


async def offload(job: Callable[[], None]) -> None:
    """Run ``job`` in the pool and wait for it (it keeps its own result)."""
    await asyncio.get_running_loop().run_in_executor(_executor(), job)
