"""Shared memory for a master and its workers: ``stub_status`` counters and ``limit_conn`` /
``limit_req`` zones that are correct across worker processes; no event loop, no socket.

Why: nginx keeps these in shared memory so that all workers count the same clients; with
per-process dicts each forked worker would admit ``limit`` connections of its own.  Python has
no cross-process atomics, so this module relies on two things that survive ``fork()`` and
``SIGKILL``:

* **Memory**: ``MAP_SHARED`` mappings of ``memfd`` files (:class:`Arena`), one per zone plus
  one for the counters and one for the slot table, made by the master and shared by every
  worker forked afterwards, and by the new master of an in-place upgrade, which maps the
  same files (:meth:`SharedState.handover`).  Pages are zero-filled on first touch and every
  layout reads zero as "empty": nothing is initialised, untouched pages cost nothing.  A
  zone replaced by a reload stays mapped in the old workers.
* **Locks**: POSIX record locks (``fcntl.lockf``) on one byte per zone of an unlinked file
  (:class:`LockFile`, :class:`ShmLock`), dropped by the kernel when the holder dies.  Not
  ``flock`` (its lock belongs to the open file description, which forked processes share), not
  ``multiprocessing.Lock`` (stays taken when its holder is killed).  Record locks belong to a
  process: they do not exclude threads of one process (wsgate has none).

A holder killed *inside* a zone operation may leave it half-done: the zone header records the
pid inside the lock, and the next holder that finds one rebuilds the index, free list and LRU
queue from the entries (written in an order that makes this always possible) and keeps the pid
for the master's alert, nginx's ``shared memory zone "NAME" was locked by PID``.

Who calls what::

    master:  state = SharedState(max_slots=N)     once, before the first fork
             state = SharedState(N, handover)     instead, in the new master of an upgrade
             state.configure(config)              each (re)load, before forking its workers
             slot = state.claim_slot(free_slots)  before forking a worker
             desc, fds = state.handover()         USR2: for the new master
             alerts = state.worker_exited(slot)   after waitpid() reaped the worker of `slot`
    worker:  state.attach(slot)                   first thing after fork
             state.stub_status.increment(...)     (gateway, handler)
             state.limits.conn_zone(name).acquire(key, n) / .release(key)
             check_requests([(state.limits.req_zone(name, rate), key, burst, delay)], now)
    one process (master_process off): SharedState(max_slots=1); configure(config); attach(0)

Layouts (native-endian integers, each array 8-byte aligned):

* Counters (:class:`SharedCounters`): ``int64[max_slots][8]``, row ``s`` holding slot ``s``'s
  six ``ngx_stat_*`` values (indexes of :mod:`wsgate.observability.status`; a row is one
  64-byte cache line).  Only slot ``s``'s worker writes row ``s``: no lock.
* Slots (:class:`SharedState`): ``int64[max_slots][2]``: generation attached with, pid.
* Zone (:class:`_Table`): capacity ``N`` = SIZE // nginx's state size (64 bytes for limit_conn,
  128 for limit_req), ``M`` = the power of two >= 2N.  ``header int64[8]`` (pid in the lock,
  high-water mark, free head, used, LRU head, LRU tail, dead holder's pid, spare) | ``hash
  uint64[N]`` | ``klen uint16[N]`` (0: free; bit 15: key is a digest) | ``link uint32[N]``
  (free list or LRU next, entry+1) | ``index uint32[M]`` (0 or entry+1: linear probing,
  backward-shift deletion, no tombstones) | ``keys byte[N][KEY_MAX]`` | then limit_conn:
  ``total uint32[N]`` | ``held uint16[N][max_slots]`` (per worker slot, so that
  :meth:`SharedState.worker_exited` gives back a killed worker's slots); limit_req: ``prev
  uint32[N]`` | ``excess int64[N]`` | ``last int64[N]`` (nginx's ``lr->excess``/``lr->last``).

Keys are stored as UTF-8; one longer than :data:`KEY_MAX` bytes is stored as its 32-byte
BLAKE2b digest (two such keys collide with probability 2**-256).  Digests and bucket hashes
are keyed with a random salt per :class:`SharedState`, so clients cannot aim at collisions.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from wsgate.config.model import Config
from wsgate.errors import ConfigError, WsgateError
from wsgate.limits import (
    NEVER,
    ConnZone,
    LimitRegistry,
    Refused,
    ReqZone,
    ZoneFull,
    account_state,
    expired,
    lookup_state,
)
from wsgate.observability.status import ACTIVE, READING, WRITING, StatusSnapshot

__all__ = [
    "CONN_STATE_SIZE",
    "KEY_MAX",
    "MAX_SLOTS",
    "REQ_STATE_SIZE",
    "Arena",
    "LockFile",
    "SharedConnZone",
    "SharedCounters",
    "SharedLimits",
    "SharedReqZone",
    "SharedState",
    "ShmError",
    "ShmLock",
]

#: Keys up to this many bytes (UTF-8) are stored as they are, longer ones as a digest.
KEY_MAX = 64
#: limit_conn: the state occupies "always 64 bytes on 64-bit platforms.  One megabyte zone
#: can keep about 32 thousand 32-byte states or about 16 thousand 64-byte states."
CONN_STATE_SIZE = 64
#: limit_req: "The stored state always occupies 64 bytes on 32-bit platforms and 128 bytes on
#: 64-bit platforms.  One megabyte zone can keep ... about 8 thousand 128-byte states."
REQ_STATE_SIZE = 128
#: Most worker slots a :class:`SharedState` accepts.
MAX_SLOTS = 1024
#: The name of every ``memfd`` of the shared memory (``/proc/PID/fd`` shows it).
MEMFD_NAME = "wsgate-shm"
#: The layout of the memory described above: a new master maps its old master's memory
#: (:meth:`SharedState.handover`) only if both say the same.  Change it with the layout.
LAYOUT = "wsgate-shm-1"

_ROW = 8  # int64 per counters row: six ngx_stat_* values, two spare (one cache line)
_LONG = 0x8000  # klen flag: the stored key is a digest
_DIGEST = 32
# Zone header fields.
_OWNER, _HWM, _FREE, _USED, _HEAD, _TAIL, _DEAD = range(7)
_HEADER = 8
#: The struct formats arrays are made of (integers only).
_Format = Literal["B", "H", "I", "q", "Q"]


class ShmError(WsgateError):
    """Shared state used wrongly: a zone the master did not configure, a worker not attached."""


def _aligned(fmt: _Format, count: int) -> int:
    return (struct.calcsize(fmt) * count + 7) & ~7


class Arena:
    """One shared mapping, carved front to back into typed arrays.

    The memory is a ``memfd`` (anonymous, zero-filled on first touch, like ``MAP_SHARED |
    MAP_ANONYMOUS``), so that a master can hand it to the new master of an in-place upgrade
    (:meth:`SharedState.handover`); ``fd`` maps one handed over.  Only a master keeps the
    descriptor (:meth:`SharedState.close_descriptors` in the workers)."""

    __slots__ = ("mm", "size", "fd", "_next")

    def __init__(self, size: int, fd: int | None = None) -> None:
        self.size = max(size, 8)
        if fd is None:
            fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, self.size)
            except OSError:
                os.close(fd)
                raise
        elif os.fstat(fd).st_size != self.size:
            raise ShmError(f"shared memory of {os.fstat(fd).st_size} bytes, not {self.size}")
        self.fd = fd
        self.mm = mmap.mmap(fd, self.size, flags=mmap.MAP_SHARED)
        self._next = 0

    def close_fd(self) -> None:
        """Close the descriptor (the mapping stays)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close_fd()

    @staticmethod
    def plan(specs: list[tuple[_Format, int]]) -> int:
        """The size that :meth:`take` of each ``(format, count)`` in turn needs."""
        return sum(_aligned(fmt, count) for fmt, count in specs)

    def take(self, fmt: _Format, count: int) -> memoryview:
        """The next ``count`` items of struct format ``fmt`` (``"q"``, ``"I"``, ``"B"`` ...)."""
        start = self._next
        end = start + struct.calcsize(fmt) * count
        self._next = start + _aligned(fmt, count)
        if self._next > self.size:
            raise ShmError(f"arena of {self.size} bytes is too small")
        return memoryview(self.mm)[start:end].cast(fmt)

    def offset(self) -> int:
        """Where the next :meth:`take` starts (for byte regions read through :attr:`mm`)."""
        return self._next


class LockFile:
    """An unlinked temporary file whose bytes are the locks of one :class:`SharedState`; its
    descriptor is inherited by the workers and closed when no lock refers to it any more
    (closing any descriptor of the file would drop this process's locks on it)."""

    __slots__ = ("fd", "_count")

    def __init__(self, fd: int | None = None, count: int = 0) -> None:
        if fd is None:
            fd, path = tempfile.mkstemp(prefix="wsgate-", suffix=".lock")
            os.unlink(path)
        self.fd = fd
        #: Offsets handed out so far (offset 0 is the slot table's lock).
        self._count = count

    def fileno(self) -> int:
        return self.fd

    @property
    def count(self) -> int:
        return self._count

    def new_lock(self) -> ShmLock:
        """A lock on a byte no other lock of this file uses (offsets are never reused)."""
        self._count += 1
        return ShmLock(self, self._count)

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ShmLock:
    """A cross-process mutex: an exclusive ``fcntl.lockf`` record lock on one byte.  Released
    by the kernel if the holder dies; per process, so never taken twice by one process."""

    __slots__ = ("_file", "_offset")

    def __init__(self, file: LockFile, offset: int) -> None:
        self._file = file  # a reference, so that the descriptor stays open while in use
        self._offset = offset

    @property
    def offset(self) -> int:
        return self._offset

    def acquire(self) -> None:
        fcntl.lockf(self._file, fcntl.LOCK_EX, 1, self._offset)

    def release(self) -> None:
        fcntl.lockf(self._file, fcntl.LOCK_UN, 1, self._offset)


class _Slot:
    """The worker slot this process writes (-1 until :meth:`SharedState.attach`)."""

    __slots__ = ("index",)

    def __init__(self) -> None:
        self.index = -1

    def get(self) -> int:
        if self.index < 0:
            raise ShmError("SharedState.attach(slot) was not called in this process")
        return self.index


class _Table:
    """A fixed-capacity map from key bytes to entry numbers ``0 .. capacity-1`` in one
    :class:`Arena`, with the zone's lock; the zone kinds keep their values in parallel arrays
    (``extra``).  Every method but :meth:`key` and :meth:`locked` expects the lock held."""

    __slots__ = (
        "name",
        "capacity",
        "arena",
        "mask",
        "header",
        "hashes",
        "klen",
        "link",
        "index",
        "_index_raw",
        "_keys",
        "extra",
        "_salt",
        "_lock",
        "_held",
        "repair",
    )

    def __init__(
        self,
        name: str,
        capacity: int,
        extra: list[tuple[_Format, int]],
        salt: bytes,
        lock: ShmLock,
        fd: int | None = None,
    ) -> None:
        buckets = 1 << max(3, (2 * capacity - 1).bit_length())
        specs: list[tuple[_Format, int]] = [("q", _HEADER), ("Q", capacity), ("H", capacity)]
        specs += [("I", capacity)]
        specs += [("B", 4 * buckets), ("B", KEY_MAX * capacity), *extra]
        self.arena = arena = Arena(Arena.plan(specs), fd)
        self.name = name
        self.capacity = capacity
        self.mask = buckets - 1
        self.header = arena.take("q", _HEADER)
        self.hashes = arena.take("Q", capacity)
        self.klen = arena.take("H", capacity)
        self.link = arena.take("I", capacity)
        self._index_raw = arena.take("B", 4 * buckets)
        self.index = self._index_raw.cast("I")
        self._keys = arena.offset()
        arena.take("B", KEY_MAX * capacity)
        self.extra = [arena.take(fmt, count) for fmt, count in extra]
        self._salt = salt
        self._lock = lock
        self._held = False
        #: Called under the lock when a holder died inside it: the zone's own rebuild.
        self.repair: Callable[[], object] = self.rebuild

    def key(self, key: str) -> tuple[bytes, int, int]:
        """``(stored bytes, klen code, hash)`` of a non-empty key."""
        kb = key.encode("utf-8", "surrogatepass")
        code = len(kb)
        if code > KEY_MAX:
            digest = hashlib.blake2b(kb, digest_size=_DIGEST, key=self._salt, person=b"wsgate-key")
            kb, code = digest.digest(), _LONG | _DIGEST
        elif not code:
            raise ValueError("an empty key is not accounted")
        h = hashlib.blake2b(kb, digest_size=8, key=self._salt).digest()
        return kb, code, int.from_bytes(h, "little")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the zone's lock; first repair what a holder that died inside left behind.  An
        exception inside leaves the owner recorded, so the next holder repairs too."""
        if self._held:
            raise ShmError(f'zone "{self.name}" locked twice by one process')
        self._lock.acquire()
        self._held = True
        done = False
        header = self.header
        try:
            if header[_OWNER]:
                header[_DEAD] = header[_OWNER]
                self.repair()
            header[_OWNER] = os.getpid()
            yield
            done = True
        finally:
            if done:
                header[_OWNER] = 0
            self._held = False
            self._lock.release()

    def find(self, kb: bytes, code: int, h: int) -> tuple[int, int]:
        """``(entry, bucket)``: the key's entry and bucket, or ``-1`` and the empty bucket
        where it would go."""
        index, hashes, klen, mm = self.index, self.hashes, self.klen, self.arena.mm
        mask = self.mask
        b = h & mask
        for _ in range(mask + 1):
            v = index[b]
            if not v:
                return -1, b
            e = v - 1
            if hashes[e] == h and klen[e] == code:
                start = self._keys + e * KEY_MAX
                if mm[start : start + len(kb)] == kb:
                    return e, b
            b = (b + 1) & mask
        raise ShmError(f'zone "{self.name}" index is corrupt')  # pragma: no cover

    def bucket_of(self, e: int) -> int:
        index, mask = self.index, self.mask
        b = self.hashes[e] & mask
        while index[b] != e + 1:
            b = (b + 1) & mask
        return b

    def insert(self, kb: bytes, code: int, h: int, b: int) -> int:
        """A new entry for the key at empty bucket ``b`` (from :meth:`find`); -1 when full.
        The key and hash are written before ``klen`` marks the entry used."""
        header = self.header
        free = header[_FREE]
        if free:
            e = free - 1
            header[_FREE] = self.link[e]
        elif header[_HWM] < self.capacity:
            e = header[_HWM]
            header[_HWM] = e + 1
        else:
            return -1
        start = self._keys + e * KEY_MAX
        self.arena.mm[start : start + len(kb)] = kb
        self.hashes[e] = h
        self.klen[e] = code
        self.index[b] = e + 1
        header[_USED] += 1
        return e

    def remove(self, e: int, b: int) -> None:
        """Free entry ``e`` found at bucket ``b``: shift the entries that follow back into
        the gap unless their home bucket lies cyclically in ``(gap, their bucket]``."""
        index, hashes, mask = self.index, self.hashes, self.mask
        i = j = b
        while True:
            j = (j + 1) & mask
            v = index[j]
            if not v:
                break
            home = hashes[v - 1] & mask
            if (i < j and (home <= i or home > j)) or (i > j and i >= home > j):
                index[i] = v
                i = j
        index[i] = 0
        self.klen[e] = 0
        self.link[e] = self.header[_FREE]
        self.header[_FREE] = e + 1
        self.header[_USED] -= 1

    def rebuild(self, keep: list[bool] | None = None) -> list[int]:
        """Rebuild the index, free list and used count from the entries (a holder died in the
        lock).  ``keep[e]`` false frees a used entry.  Returns the used entries."""
        header, klen, link, mm = self.header, self.klen, self.link, self.arena.mm
        hwm = min(max(header[_HWM], 0), self.capacity)
        header[_HWM] = hwm
        self._index_raw[:] = bytes(len(self._index_raw))
        free, used = 0, []
        for e in range(hwm - 1, -1, -1):
            code = klen[e]
            if code and (keep is None or keep[e]):
                start = self._keys + e * KEY_MAX
                kb = mm[start : start + (code & ~_LONG)]
                found, b = self.find(kb, code, self.hashes[e])
                if found < 0:
                    self.index[b] = e + 1
                    used.append(e)
                    continue
            klen[e] = 0
            link[e] = free
            free = e + 1
        header[_FREE] = free
        header[_USED] = len(used)
        return used

    def take_dead(self) -> int:
        """The pid of a holder found dead inside the lock since the last call (0: none)."""
        with self.locked():
            dead = self.header[_DEAD]
            self.header[_DEAD] = 0
        return dead


class _TableZone:
    """What both shared zones tell about their table."""

    __slots__ = ()
    _t: _Table

    @property
    def capacity(self) -> int:
        """How many keys the zone can hold: its size // the state size nginx documents."""
        return self._t.capacity

    @property
    def used(self) -> int:
        """How many keys it holds now (read without the lock: a gauge for metrics)."""
        return self._t.header[_USED]


class SharedConnZone(_TableZone, ConnZone):
    """A ``limit_conn_zone`` in shared memory: per key, the total and what each worker slot
    holds.  Same calls as :class:`~wsgate.limits.ConnZone`; the dict ``counts`` is unused."""

    __slots__ = ("size", "key", "_t", "_total", "_holds", "_holds_raw", "_slots", "_me")

    def __init__(
        self,
        name: str,
        size: int,
        key: str,
        max_slots: int,
        salt: bytes,
        lock: ShmLock,
        me: _Slot,
        fd: int | None = None,
    ) -> None:
        self.name = name
        self.size = size
        self.key = key
        cap = max(size // CONN_STATE_SIZE, 1)
        self._t = _Table(name, cap, [("I", cap), ("B", 2 * cap * max_slots)], salt, lock, fd)
        self._total = self._t.extra[0]
        self._holds_raw = self._t.extra[1]
        self._holds = self._holds_raw.cast("H")
        self._slots = max_slots
        self._me = me
        self._t.repair = self._rebuild

    def acquire(self, key: str, limit: int) -> Literal[True] | Refused:
        """``ngx_http_limit_conn_handler``: refuse when "lc->conn >= limits[i].conn", or with
        :attr:`~wsgate.limits.Refused.NO_MEMORY` when a new key finds the zone full ("node =
        ngx_slab_alloc_locked(shpool, n); if (node == NULL) { ... return
        lccf->status_code; }")."""
        t, slots = self._t, self._slots
        kb, code, h = t.key(key)
        slot = self._me.get()
        with t.locked():
            e, b = t.find(kb, code, h)
            if e < 0:
                e = t.insert(kb, code, h, b)
                if e < 0:
                    return Refused.NO_MEMORY
                self._total[e] = 0
                self._holds_raw[2 * e * slots : 2 * (e + 1) * slots] = bytes(2 * slots)
            elif self._total[e] >= limit:
                return Refused.LIMIT
            self._holds[e * slots + slot] += 1
            self._total[e] += 1
        return True

    def release(self, key: str) -> None:
        """``ngx_http_limit_conn_cleanup``: "lc->conn--; if (lc->conn == 0) { ...
        ngx_slab_free_locked(shpool, node); }" (only what this worker slot holds)."""
        t = self._t
        kb, code, h = t.key(key)
        i = self._me.get()
        with t.locked():
            e, b = t.find(kb, code, h)
            if e < 0:
                return
            i += e * self._slots
            if not self._holds[i]:
                return
            self._holds[i] -= 1
            total = self._total[e] - 1
            if total <= 0:
                t.remove(e, b)
            else:
                self._total[e] = total

    def held(self, key: str) -> int:
        """Slots held for ``key`` by all workers."""
        t = self._t
        kb, code, h = t.key(key)
        with t.locked():
            e, _ = t.find(kb, code, h)
            return self._total[e] if e >= 0 else 0

    def worker_exited(self, slot: int) -> None:
        """Give back everything worker slot ``slot`` held (the master, after reaping it)."""
        t, slots, total = self._t, self._slots, self._total
        with t.locked():
            hwm = t.header[_HWM]
            for e, n in enumerate(self._holds[slot : hwm * slots : slots].tolist()):
                if n and t.klen[e]:
                    self._holds[e * slots + slot] = 0
                    left = total[e] - n
                    if left <= 0:
                        t.remove(e, t.bucket_of(e))
                    else:
                        total[e] = left

    def _rebuild(self) -> None:
        """Recompute totals from the per-slot holdings, then the table (a holder died)."""
        t, slots, held, total = self._t, self._slots, self._holds, self._total
        hwm = min(max(t.header[_HWM], 0), t.capacity)
        keep = []
        for e in range(hwm):
            n = sum(held[e * slots : (e + 1) * slots].tolist()) if t.klen[e] else 0
            total[e] = n
            keep.append(n > 0)
        t.rebuild(keep)


class SharedReqZone(_TableZone, ReqZone):
    """A ``limit_req_zone`` in shared memory: per key nginx's ``excess`` and ``last``, and its
    LRU queue.  Same calls as :class:`~wsgate.limits.ReqZone` (the arithmetic is theirs); the
    dict ``nodes`` is unused.  ``rate`` is this process's: workers of an older configuration
    keep theirs, as nginx's old cycle does.

    nginx pins a node looked up for a later limit (``lr->count``) so that no other worker
    evicts it before ``ngx_http_limit_req_account``; a pin left by a killed worker would
    block eviction for good, so wsgate does not pin: a state evicted in that microsecond is
    created again by :meth:`account`.  As a result the forced eviction always frees a state
    and :class:`~wsgate.limits.ZoneFull` is raised only by a zone with no entry to evict."""

    __slots__ = ("size", "key", "_t", "_prev", "_excess", "_last")

    def __init__(
        self,
        name: str,
        size: int,
        key: str,
        rate: int,
        salt: bytes,
        lock: ShmLock,
        fd: int | None = None,
    ) -> None:
        self.name = name
        self.size = size
        self.key = key
        self.rate = rate
        self.pruned = 0
        cap = max(size // REQ_STATE_SIZE, 1)
        self._t = _Table(name, cap, [("I", cap), ("q", cap), ("q", cap)], salt, lock, fd)
        self._prev, self._excess, self._last = self._t.extra
        self._t.repair = self._rebuild

    def lookup(self, key: str, burst: int, now: int, account: bool) -> tuple[bool, int]:
        """``ngx_http_limit_req_lookup``: ``(busy, excess)``; the state moves to the head of
        the LRU queue.  A new key first expires up to two idle states at the tail, and when
        the zone is full evicts the oldest by force (``ngx_http_limit_req_expire(ctx, 1)``,
        then ``(ctx, 0)``); :class:`~wsgate.limits.ZoneFull` if still nothing is free."""
        t = self._t
        kb, code, h = t.key(key)
        with t.locked():
            e, b = t.find(kb, code, h)
            if e < 0:
                e = self._create(kb, code, h, b, now)
                if e >= 0:
                    # "lr->excess = 0;" and "lr->last = now" when accounted at once, else
                    # "lr->last = 0" so that the later account also finds no excess.
                    self._excess[e] = 0
                    self._last[e] = now if account else NEVER
                busy, excess = False, 0
            else:
                self._touch(e)
                busy, excess, self._excess[e], self._last[e] = lookup_state(
                    self._excess[e], self._last[e], self.rate, burst, now, account
                )
        if e < 0:
            raise ZoneFull(self.name)
        return busy, excess

    def account(self, key: str, now: int) -> int:
        """``ngx_http_limit_req_account`` for one limit: store and return the new excess."""
        t = self._t
        kb, code, h = t.key(key)
        with t.locked():
            e, b = t.find(kb, code, h)
            if e < 0:  # evicted since the lookup: start again
                e = self._create(kb, code, h, b, now)
                if e >= 0:
                    self._excess[e], self._last[e] = 0, now
                return 0
            excess, self._last[e] = account_state(self._excess[e], self._last[e], self.rate, now)
            self._excess[e] = excess
        return excess

    def prune(self, now: int) -> None:
        """Forget idle, drained states from the LRU tail up to the first that is not."""
        self.pruned = now
        with self._t.locked():
            self._expire(now, 1, self._t.capacity + 1)

    def _create(self, kb: bytes, code: int, h: int, b: int, now: int) -> int:
        t = self._t
        if self._expire(now, 1):
            b = t.find(kb, code, h)[1]  # removals shift buckets
        e = t.insert(kb, code, h, b)
        if e < 0:
            self._expire(now, 0)
            e = t.insert(kb, code, h, t.find(kb, code, h)[1])
            if e < 0:
                return -1
        self._push(e)
        return e

    def _expire(self, now: int, n: int, most: int = 3) -> bool:
        """``ngx_http_limit_req_expire``: "n == 1 deletes one or two zero rate entries, n == 0
        deletes oldest entry by force and one or two zero rate entries"."""
        t, header, rate = self._t, self._t.header, self.rate
        removed = False
        while n < most and header[_TAIL]:
            e = header[_TAIL] - 1
            if n and not expired(self._excess[e], self._last[e], rate, now):
                break
            n += 1
            self._unlink(e)
            t.remove(e, t.bucket_of(e))
            removed = True
        return removed

    def _unlink(self, e: int) -> None:
        header, nxt, prev = self._t.header, self._t.link, self._prev
        p, n = prev[e], nxt[e]
        if p:
            nxt[p - 1] = n
        else:
            header[_HEAD] = n
        if n:
            prev[n - 1] = p
        else:
            header[_TAIL] = p

    def _push(self, e: int) -> None:
        header, nxt, prev = self._t.header, self._t.link, self._prev
        head = header[_HEAD]
        prev[e] = 0
        nxt[e] = head
        if head:
            prev[head - 1] = e + 1
        else:
            header[_TAIL] = e + 1
        header[_HEAD] = e + 1

    def _touch(self, e: int) -> None:
        """To the head of the queue: nginx's "ngx_queue_remove(&lr->queue);
        ngx_queue_insert_head(&ctx->sh->queue, &lr->queue);"."""
        if self._t.header[_HEAD] != e + 1:
            self._unlink(e)
            self._push(e)

    def _rebuild(self) -> None:
        """The table, then the LRU queue in order of ``last`` (a holder died)."""
        header = self._t.header
        header[_HEAD] = header[_TAIL] = 0
        last = self._last
        for e in sorted(self._t.rebuild(), key=lambda e: last[e]):
            self._push(e)


class SharedLimits(LimitRegistry):
    """The zones a worker's handler asks for: those :meth:`SharedState.configure` made before
    the fork.  Asking for another is an error (the master always configures first)."""

    __slots__ = ()

    def conn_zone(self, name: str) -> ConnZone:
        zone = self.conn.get(name)
        if zone is None:
            raise ShmError(f'limit_conn zone "{name}" is not configured')
        return zone

    def req_zone(self, name: str, rate: int) -> ReqZone:
        zone = self.req.get(name)
        if zone is None:
            raise ShmError(f'limit_req zone "{name}" is not configured')
        zone.rate = rate
        return zone


class SharedCounters:
    """nginx's ``ngx_stat_*`` counters across workers: the API of
    :class:`~wsgate.observability.status.ConnectionCounters`, one row per worker slot.

    A worker writes only its own row, so the hot path takes no lock; a snapshot sums all rows.
    When a worker exits, the master zeroes its gauges (active, reading, writing: its
    connections are gone) and keeps its cumulative counts (accepts, handled, requests), so
    the totals never go down; the next worker given the slot adds to them.
    """

    __slots__ = ("max_slots", "_arena", "_rows", "_mine")

    def __init__(self, max_slots: int, fd: int | None = None) -> None:
        self.max_slots = max_slots
        self._arena = Arena(8 * _ROW * max_slots, fd)
        self._rows = self._arena.take("q", _ROW * max_slots)
        self._mine: memoryview | None = None

    @property
    def arena(self) -> Arena:
        return self._arena

    @property
    def rows(self) -> memoryview:
        """Every worker slot's row (``_ROW`` cells each), for reading."""
        return self._rows

    def attach(self, slot: int) -> None:
        """Write worker slot ``slot``'s row from now on (in the worker, after fork)."""
        if not 0 <= slot < self.max_slots:
            raise ShmError(f"worker slot {slot} is not in 0..{self.max_slots - 1}")
        self._mine = self._rows[slot * _ROW : slot * _ROW + 6]

    def increment(self, index: int, n: int = 1) -> None:
        """``ngx_atomic_fetch_add(ngx_stat_X, n)`` on this worker's row."""
        mine = self._mine
        if mine is None:
            raise ShmError("SharedCounters.attach(slot) was not called in this process")
        mine[index] += n

    def decrement(self, index: int, n: int = 1) -> None:
        """``ngx_atomic_fetch_add(ngx_stat_X, -n)`` on this worker's row."""
        self.increment(index, -n)

    def snapshot(self) -> StatusSnapshot:
        """All rows summed; Waiting is "ac - (rd + wr)" as nginx computes it."""
        rows = self._rows.tolist()
        accepts, handled, requests, active, reading, writing = (
            sum(rows[i::_ROW]) for i in range(6)
        )
        return StatusSnapshot(
            active, accepts, handled, requests, reading, writing, active - (reading + writing)
        )

    def worker_exited(self, slot: int) -> None:
        """Zero the gauges of a reaped worker's row (the master)."""
        for i in (ACTIVE, READING, WRITING):
            self._rows[slot * _ROW + i] = 0


class SharedState:
    """Everything the workers share: ``stub_status`` counters and the limit zones.

    Created once by the master before the first fork; see the module docstring for who calls
    what.  ``stub_status`` is a :class:`SharedCounters`, ``limits`` a :class:`SharedLimits`.
    """

    #: Seconds :meth:`accept_share` keeps the peers it found in the slot table.
    PEERS_TTL = 1.0

    __slots__ = (
        "max_slots",
        "stub_status",
        "limits",
        "generation",
        "_locks",
        "_salt",
        "_me",
        "_slots_arena",
        "_slots",
        "_slot_lock",
        "_conn",
        "_req",
        "_retired",
        "_adopted",
        "_peers",
        "_peers_until",
    )

    def __init__(self, max_slots: int, handover: dict[str, Any] | None = None) -> None:
        """A new shared state, or (``handover``, from :meth:`handover` of the master being
        upgraded) the same memory as that master's: raises :class:`ShmError` when it was
        written by another layout."""
        if not 1 <= max_slots <= MAX_SLOTS:
            raise ShmError(f"max_slots must be 1..{MAX_SLOTS}, not {max_slots}")
        h = handover or {}
        if handover is not None and (h.get("layout"), h.get("max_slots")) != (
            LAYOUT,
            max_slots,
        ):
            raise ShmError(
                f"layout {h.get('layout')!r} with {h.get('max_slots')!r} slots, "
                f"not {LAYOUT!r} with {max_slots}"
            )
        self.max_slots = max_slots
        self.stub_status = SharedCounters(max_slots, h.get("counters"))
        self.limits = SharedLimits()
        #: Counts :meth:`configure` calls; a worker attaches with the one it was forked in.
        self.generation = int(h.get("generation", 0))
        self._locks = LockFile(h.get("locks"), int(h.get("lock_count", 0)))
        self._salt = bytes.fromhex(h["salt"]) if handover is not None else os.urandom(16)
        self._me = _Slot()
        #: Per worker slot: the generation it attached with (0: no worker), its pid (the
        #: claiming master's, negated, between :meth:`claim_slot` and :meth:`attach`).
        self._slots_arena = Arena(16 * max_slots, h.get("slots"))
        self._slots = self._slots_arena.take("q", 2 * max_slots)
        self._slot_lock = ShmLock(self._locks, 0)
        self._conn: dict[str, SharedConnZone] = {}
        self._req: dict[str, SharedReqZone] = {}
        #: limit_conn zones replaced or dropped by a reload, with the generation that did it,
        #: kept while a worker of an older generation (which may hold slots there) lives.
        self._retired: list[tuple[int, SharedConnZone]] = []
        #: Zones handed over, until the first :meth:`configure` keeps or drops them.
        self._adopted: set[tuple[str, str]] = set()
        #: :meth:`accept_share`'s peers (their rows' active cells), found again each second.
        self._peers: list[int] = []
        self._peers_until = 0.0
        for name, size, key, fd, lock in h.get("conn", ()):
            self._conn[name] = SharedConnZone(
                name, size, key, max_slots, self._salt, ShmLock(self._locks, lock), self._me, fd
            )
            self._adopted.add(("limit_conn_zone", name))
        for name, size, key, rate, fd, lock in h.get("req", ()):
            self._req[name] = SharedReqZone(
                name, size, key, rate, self._salt, ShmLock(self._locks, lock), fd
            )
            self._adopted.add(("limit_req", name))

    def handover(self) -> tuple[dict[str, Any], list[int]]:
        """What the new master of an in-place upgrade needs to map this same memory (a
        JSON-able description) and the descriptors it must inherit.  Retired zones are not
        handed over: only this master's old workers use them, and it keeps them."""
        conn = [
            [z.name, z.size, z.key, z._t.arena.fd, z._t._lock.offset] for z in self._conn.values()
        ]
        req = [
            [z.name, z.size, z.key, z.rate, z._t.arena.fd, z._t._lock.offset]
            for z in self._req.values()
        ]
        desc: dict[str, Any] = {
            "layout": LAYOUT,
            "max_slots": self.max_slots,
            "salt": self._salt.hex(),
            "generation": self.generation,
            "locks": self._locks.fd,
            "lock_count": self._locks.count,
            "counters": self.stub_status.arena.fd,
            "slots": self._slots_arena.fd,
            "conn": conn,
            "req": req,
        }
        zones: list[_TableZone] = [*self._conn.values(), *self._req.values()]
        fds = [self._locks.fd, self.stub_status.arena.fd, self._slots_arena.fd]
        return desc, fds + [z._t.arena.fd for z in zones]

    @staticmethod
    def handover_fds(desc: dict[str, Any]) -> list[int]:
        """The descriptors a :meth:`handover` description names (to close them when it
        cannot be used); what is not a descriptor number is skipped."""
        found = [desc.get("locks"), desc.get("counters"), desc.get("slots")]
        found += [z[3] for z in desc.get("conn", ()) if isinstance(z, list) and len(z) == 5]
        found += [z[4] for z in desc.get("req", ()) if isinstance(z, list) and len(z) == 6]
        return [fd for fd in found if isinstance(fd, int) and fd > 2]

    def claim_slot(self, candidates: list[int]) -> int | None:
        """Take a worker slot from ``candidates`` (the master's free list, last first) that no
        worker of any master uses: after an upgrade two masters share the slot table."""
        me = -os.getpid()
        self._slot_lock.acquire()
        try:
            for i in range(len(candidates) - 1, -1, -1):
                slot = candidates[i]
                if self._slots[2 * slot + 1] == 0:
                    self._slots[2 * slot] = self.generation
                    self._slots[2 * slot + 1] = me
                    del candidates[i]
                    return slot
        finally:
            self._slot_lock.release()
        return None

    def configure(self, config: Config) -> None:
        """Make the zones of a (re)loaded configuration (the master, before forking its
        workers).  As nginx's ``ngx_init_cycle``, a zone whose name and size did not change is
        kept with its state, one whose size changed starts empty, and a kept zone whose key
        changed fails the reload (``ConfigError``, and nothing changes).  A zone kept in
        Redis (wsgate's ``redis=``, :mod:`wsgate.limits_redis`) has no shared memory."""
        http = config.http
        conn_specs = {n: z for n, z in http.limit_conn_zones.items() if z.redis is None}
        req_specs = {n: z for n, z in http.limit_req_zones.items() if z.redis is None}
        for kind, specs, zones in (
            ("limit_conn_zone", conn_specs, self._conn),
            ("limit_req", req_specs, self._req),
        ):
            for name, spec in specs.items():
                old = zones.get(name)
                if old is not None and old.size == spec.size and old.key != str(spec.key):
                    if (kind, name) in self._adopted:
                        del zones[name]  # the old binary's zone: this one starts empty
                        continue
                    raise ConfigError(
                        f'{kind} "{name}" uses the "{spec.key}" key while previously it used '
                        f'the "{old.key}" key'
                    )
        self.generation += 1
        conn: dict[str, SharedConnZone] = {}
        for name, cspec in conn_specs.items():
            kept = self._conn.pop(name, None)
            if kept is None or kept.size != cspec.size:
                if kept is not None:
                    self._retired.append((self.generation, kept))
                kept = SharedConnZone(
                    name,
                    cspec.size,
                    str(cspec.key),
                    self.max_slots,
                    self._salt,
                    self._locks.new_lock(),
                    self._me,
                )
            conn[name] = kept
        self._retired += [(self.generation, zone) for zone in self._conn.values()]
        req: dict[str, SharedReqZone] = {}
        for name, rspec in req_specs.items():
            old = self._req.get(name)
            if old is None or old.size != rspec.size:
                lock = self._locks.new_lock()
                old = SharedReqZone(name, rspec.size, str(rspec.key), rspec.rate, self._salt, lock)
            old.rate = rspec.rate
            req[name] = old
        self._conn, self._req = conn, req
        self._adopted.clear()
        self.limits.conn = {name: zone for name, zone in conn.items()}
        self.limits.req = {name: zone for name, zone in req.items()}
        self._prune_retired()

    def attach(self, slot: int) -> None:
        """Become worker slot ``slot`` (in the worker, first thing after fork)."""
        self.stub_status.attach(slot)
        self._me.index = slot
        self._slots[2 * slot] = self.generation
        self._slots[2 * slot + 1] = os.getpid()

    def accept_share(self) -> tuple[int, int] | None:
        """The client connections (``stub_status``'s active) this worker holds and the fewest
        any other live worker of its generation holds, or None without such a worker: the
        listeners' balance check (gateway.py ``_Listener``).  A read of a few shared cells,
        no lock: a count a moment old only moves one accept to another worker or not.  The
        peers are looked for in the slot table at most once a second (a worker started or
        gone since is seen within it)."""
        me = self._me.index
        if me < 0:
            return None
        now = time.monotonic()
        if now >= self._peers_until:
            slots = self._slots.tolist()
            gen = slots[2 * me]
            self._peers = [
                s * _ROW + ACTIVE
                for s in range(self.max_slots)
                if s != me and slots[2 * s] == gen and slots[2 * s + 1] > 0
            ]
            self._peers_until = now + self.PEERS_TTL
        if not self._peers:
            return None
        rows = self.stub_status.rows
        return rows[me * _ROW + ACTIVE], min(rows[i] for i in self._peers)

    def close_descriptors(self) -> None:
        """In a forked worker: close every descriptor of the shared memory, which only a
        master needs (to hand it over), so that a worker holds no more descriptors than
        with anonymous memory: ``worker_rlimit_nofile`` is for connections.

        Python's ``mmap`` keeps a duplicate of the descriptor it mapped; those are closed
        too, found by the ``memfd`` name.  Safe because a worker never drops the mappings:
        they live until its ``os._exit``, so no ``mmap`` object closes its (now reused)
        descriptor number again.  Never call this in a process that goes on to
        :meth:`configure` (``master_process off``)."""
        for arena in self._arenas():
            arena.fd = -1
        for name in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                continue
            if target.startswith(f"/memfd:{MEMFD_NAME}"):
                os.close(int(name))

    def _arenas(self) -> list[Arena]:
        zones: list[_TableZone] = [*self._conn.values(), *self._req.values()]
        zones += [z for _, z in self._retired]
        return [self.stub_status.arena, self._slots_arena, *(z._t.arena for z in zones)]

    def worker_exited(self, slot: int) -> list[str]:
        """The worker of ``slot`` was reaped (the master, after ``waitpid``): zero its gauges,
        give back its ``limit_conn`` slots, repair any zone it died holding locked.  Returns
        the alerts to log, nginx's ``shared memory zone "NAME" was locked by PID``."""
        self.stub_status.worker_exited(slot)
        for _, zone in self._retired:
            zone.worker_exited(slot)
        alerts = []
        tables = [z._t for z in self._conn.values()] + [z._t for z in self._req.values()]
        for zone in self._conn.values():
            zone.worker_exited(slot)
        for t in tables:
            dead = t.take_dead()
            if dead:
                alerts.append(f'shared memory zone "{t.name}" was locked by {dead}')
        self._slots[2 * slot] = self._slots[2 * slot + 1] = 0
        self._prune_retired()
        return alerts

    def _prune_retired(self) -> None:
        """Drop retired zones no other live worker of an older generation can be using."""
        rows = self._slots.tolist()
        gens = [rows[2 * s] for s in range(self.max_slots) if s != self._me.index]
        self._retired = [(g, z) for g, z in self._retired if any(0 < x < g for x in gens)]
