"""The proxy cache on disk: one :class:`CacheStore` per ``proxy_cache_path``.

**The files are the truth.**  nginx keeps an index of its cache in a shared memory zone
(``keys_zone``) and rebuilds it from the directory after a start (the cache loader).
wsgate keeps no index: a worker finds an entry by its name (the md5 of the key, under the
``levels`` directories), opens it and reads its header (:mod:`wsgate.cache.rules`), which
says everything nginx's node says.  This is right for several workers because every step
that changes the cache is one the kernel makes atomic for all processes at once:

- an entry appears whole or not at all: its body is written to a temporary file beside it
  (``.<md5>.<pid>.<n>.tmp``) and ``rename(2)``\\d over the old one only when complete, so a
  reader sees the old file or the new one, never a part; a reader that holds the old one
  open keeps reading it after it is replaced or deleted;
- a damaged file (truncated, its header changed) fails the header's CRC-32 or the length
  it announces, and is a miss (and removed), never a broken response;
- ``proxy_cache_lock`` and the "updating" state of an expired entry are a lock file
  (``.<md5>.lock``, made with ``O_EXCL``: one process wins), which names its owner's pid
  and a deadline, so a killed owner or an old lock (``proxy_cache_lock_age``) frees it;
- ``proxy_cache_min_uses`` counts in a file (``.<md5>.uses``) that each use appends a byte
  to (``O_APPEND``: no update is lost);
- the least recently used order is the files' modification times (a hit touches its file
  at most once a second), which every worker sees and which survives a restart, so there is
  nothing to load: the cache is complete the moment wsgate starts, and after a reload.

The manager (``inactive``, ``max_size``, ``min_free``) runs in whichever worker holds the
cache's ``.manager`` lock (``flock``: released by the kernel if that worker dies).  Nothing
here touches the event loop; the calls are small file-system calls made on the worker's
thread, as nginx makes them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import shutil
import stat
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from wsgate.cache.rules import (
    Corrupt,
    Entry,
    decode_entry,
    encode_entry,
    entry_name,
    header_length,
    is_entry_name,
)
from wsgate.config.model import CachePath

__all__ = ["CacheStore", "Hit", "Writer"]

Log = Callable[[str, str], None]

#: Bytes read to find a header (most are far smaller; a longer one is read whole after).
_FIRST_READ = 4096
#: A body up to this size is checked against its CRC-32 on every hit (it is read anyway);
#: a longer one by its length only (its bytes go by ``sendfile``).
CHECKED_BODY = 64 * 1024
_counter = itertools.count()


@dataclass(slots=True)
class Hit:
    """An open entry: its descriptor (the caller closes it), header and file status."""

    fd: int
    entry: Entry
    path: str
    size: int
    mtime: float


class CacheStore:
    """A ``proxy_cache_path`` directory."""

    def __init__(self, spec: CachePath) -> None:
        self.spec = spec
        self.root = spec.path
        self.pid = os.getpid()
        #: Lock files this process holds: md5 hex -> the request that holds it (an object)
        #: and what its file says (it is removed only if it still says so).
        self.held: dict[str, tuple[object, bytes]] = {}
        self._manager_fd: int | None = None
        #: The last :meth:`manage` pass stopped at ``manager_files`` still over the limits.
        self.over = False

    # -- names -------------------------------------------------------------------------------
    def path_of(self, md5: bytes) -> str:
        return os.path.join(self.root, entry_name(md5, self.spec.levels))

    def _aux(self, md5: bytes, suffix: str) -> str:
        path = self.path_of(md5)
        head, name = os.path.split(path)
        return os.path.join(head, f".{name}{suffix}")

    def _dirs(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)

    # -- reading -----------------------------------------------------------------------------
    def open(self, md5: bytes, key: str, log: Log) -> Hit | None:
        """The entry named ``md5`` if it is there, whole and for ``key``; None (a miss)
        otherwise, a damaged file being logged and removed."""
        path = self.path_of(md5)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                log("crit", f'open() "{path}" failed ({exc.errno}: {exc.strerror})')
            return None
        try:
            st = os.fstat(fd)
            data = os.pread(fd, _FIRST_READ, 0)
            need = header_length(data)
            if need > len(data):
                data = os.pread(fd, need, 0)
            entry = decode_entry(data, st.st_size)
            if entry.key != key:
                log("crit", f'cache file "{path}" has md5 collision')
                os.close(fd)
                return None
            if entry.body_len <= CHECKED_BODY:
                body = os.pread(fd, entry.body_len, entry.header_len)
                if zlib.crc32(body) != entry.body_crc:
                    raise Corrupt("body checksum mismatch")
        except Corrupt as exc:
            os.close(fd)
            log("crit", f'cache file "{path}" is damaged ({exc}), removed')
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        except BaseException:
            os.close(fd)
            raise
        return Hit(fd, entry, path, st.st_size, st.st_mtime)

    def touch(self, hit: Hit, now: float) -> None:
        """Mark an entry used (the manager's least recently used order), once a second."""
        if now - hit.mtime >= 1.0:
            with contextlib.suppress(OSError):
                os.utime(hit.fd)

    def update_header(self, hit: Hit, entry: Entry, log: Log) -> None:
        """Put a revalidated entry (new times, the same body) in place: a copy with the new
        header, renamed over the old file as any new entry is (nginx rewrites the header in
        place; a reader in another worker could then see half of it).  The body is copied
        in the kernel (``copy_file_range``)."""
        head, name = os.path.split(hit.path)
        temp = os.path.join(head, f".{name}.{self.pid}.{next(_counter)}.tmp")
        w = Writer(-1, temp, hit.path, entry, log)
        try:
            w.fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            header = encode_entry(entry)
            os.write(w.fd, header)
            done, count, start = 0, hit.entry.body_len, hit.entry.header_len
            while done < count:
                try:
                    n = os.copy_file_range(hit.fd, w.fd, count - done, start + done)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    n = os.write(w.fd, os.pread(hit.fd, min(count - done, 1 << 20), start + done))
                if n == 0:
                    raise OSError(errno.EIO, "cache file shrank while copied")
                done += n
        except OSError as exc:
            w.abort(exc)
            return
        w.preset(hit.entry.body_len, hit.entry.body_crc)
        w.commit()

    def remove(self, md5: bytes) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path_of(md5))

    # -- writing -----------------------------------------------------------------------------
    def writer(self, md5: bytes, entry: Entry, log: Log) -> Writer | None:
        """A temporary file for ``entry`` (None when it cannot be made, logged)."""
        path = self.path_of(md5)
        head, name = os.path.split(path)
        temp = os.path.join(head, f".{name}.{self.pid}.{next(_counter)}.tmp")
        try:
            self._dirs(path)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log("crit", f'open() "{temp}" failed ({exc.errno}: {exc.strerror})')
            return None
        w = Writer(fd, temp, path, entry, log)
        try:
            os.write(fd, encode_entry(entry))
        except OSError as exc:
            w.abort(exc)
            return None
        return w

    # -- locks (proxy_cache_lock, "updating") -------------------------------------------------
    def lock(self, md5: bytes, owner: object, age: float, now: float) -> bool:
        """Take the entry's lock for ``age`` seconds; False if another request holds it
        (a lock older than its deadline, or whose process is gone, is taken over)."""
        path = self._aux(md5, ".lock")
        text = f"{self.pid} {now + age:.3f}".encode()
        for _ in range(2):
            try:
                self._dirs(path)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                if self._lock_alive(md5, now, check_age=True):
                    return False
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            except OSError:
                return True  # no lock file: go on without one, as if alone
            try:
                os.write(fd, text)
            finally:
                os.close(fd)
            self.held[md5.hex()] = (owner, text)
            return True
        return False

    def locked(self, md5: bytes, now: float, check_age: bool) -> bool:
        """Whether another request holds the entry's lock (``check_age``: and its deadline
        has not passed)."""
        return self._lock_alive(md5, now, check_age)

    def _lock_alive(self, md5: bytes, now: float, check_age: bool) -> bool:
        path = self._aux(md5, ".lock")
        try:
            with open(path, "rb") as f:
                pid_text, _, deadline_text = f.read(64).decode("ascii", "replace").partition(" ")
        except OSError:
            return False
        try:
            pid, deadline = int(pid_text), float(deadline_text)
        except ValueError:
            return False
        if check_age and deadline <= now:
            return False
        if pid == self.pid:
            return md5.hex() in self.held
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    def unlock(self, md5: bytes, owner: object) -> None:
        """Give the lock back if ``owner`` holds it (and its file was not taken over, past
        its age, by another process)."""
        hexed = md5.hex()
        held = self.held.get(hexed)
        if held is None or held[0] is not owner:
            return
        del self.held[hexed]
        path = self._aux(md5, ".lock")
        try:
            with open(path, "rb") as f:
                if f.read(64) != held[1]:
                    return
            os.unlink(path)
        except OSError:
            pass

    # -- proxy_cache_min_uses ----------------------------------------------------------------
    def use(self, md5: bytes) -> int:
        """Count one use of a key with no entry; returns the uses so far."""
        path = self._aux(md5, ".uses")
        try:
            self._dirs(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError:
            return 1
        try:
            os.write(fd, b".")
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def forget_uses(self, md5: bytes) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._aux(md5, ".uses"))

    # -- the manager ---------------------------------------------------------------------------
    def is_manager(self) -> bool:
        """Whether this process manages the cache (holds its ``.manager`` lock)."""
        if self._manager_fd is not None:
            return True
        path = os.path.join(self.root, ".manager")
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._manager_fd = fd
        return True

    def close(self) -> None:
        if self._manager_fd is not None:
            os.close(self._manager_fd)
            self._manager_fd = None

    def _walk(self) -> Iterator[tuple[str, str, os.stat_result]]:
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield name, path, st

    def manage(self, now: float, log: Log) -> int:
        """One pass of the manager: entries not used for ``inactive`` are removed, then the
        least recently used ones while the cache is over ``max_size`` or the file system
        has less than ``min_free`` free (at most ``manager_files`` of them); temporary
        files and locks left by a process that is gone, and use counts older than
        ``inactive``, go too.  Returns the files removed."""
        spec = self.spec
        entries: list[tuple[float, int, str]] = []
        removed = 0
        total = 0
        for name, path, st in self._walk():
            if is_entry_name(name):
                if st.st_mtime + spec.inactive < now:
                    removed += _unlink(path)
                    continue
                size = st.st_blocks * 512
                entries.append((st.st_mtime, size, path))
                total += size
            elif name.startswith(".") and name != ".manager":
                # .<md5>.<pid>.<n>.tmp, .<md5>.lock, .<md5>.uses
                if name.endswith(".tmp"):
                    pid = name.split(".")[2] if name.count(".") >= 4 else ""
                    if pid.isdigit() and not _alive(int(pid)) or st.st_mtime + 3600 < now:
                        _unlink(path)
                elif st.st_mtime + spec.inactive < now:
                    _unlink(path)
        entries.sort()
        limit = spec.max_size
        forced = 0
        self.over = False
        for _mtime, size, path in entries:
            over = limit is not None and total > limit
            if not over and not (spec.min_free and self._free() < spec.min_free):
                break
            if forced >= spec.manager_files:
                # "During one iteration no more than manager_files items are deleted";
                # the next pass comes after manager_sleep.
                self.over = True
                break
            forced += 1
            removed += _unlink(path)
            total -= size
        return removed

    def _free(self) -> int:
        try:
            return shutil.disk_usage(self.root).free
        except OSError:
            return 1 << 62


def _unlink(path: str) -> int:
    try:
        os.unlink(path)
    except OSError:
        return 0
    return 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Writer:
    """An entry being written: the body is appended as it streams to the client, the
    header written again with the body's length and CRC-32 at the end, and the file renamed
    into place only then (:meth:`commit`); :meth:`abort` removes it."""

    __slots__ = ("fd", "temp", "path", "entry", "log", "crc", "length", "failed")

    def __init__(self, fd: int, temp: str, path: str, entry: Entry, log: Log) -> None:
        self.fd = fd
        self.temp = temp
        self.path = path
        self.entry = entry
        self.log = log
        self.crc = 0
        self.length = 0
        self.failed = False

    def write(self, data: bytes) -> None:
        if self.failed or not data:
            return
        try:
            os.write(self.fd, data)
        except OSError as exc:
            self.abort(exc)
            return
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)

    def preset(self, length: int, crc: int) -> None:
        """The body was written otherwise (copied): its length and CRC-32."""
        self.length, self.crc = length, crc

    def commit(self, target: str | None = None) -> bool:
        """Finish the file and put it in place (at ``target``, another variant's name,
        if given)."""
        if self.failed:
            return False
        entry = self.entry
        entry.body_len, entry.body_crc = self.length, self.crc
        try:
            os.pwrite(self.fd, encode_entry(entry), 0)
            os.close(self.fd)
            self.fd = -1
            path = target or self.path
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            os.rename(self.temp, path)
        except OSError as exc:
            self.abort(exc)
            return False
        self.failed = True  # done: nothing more to write or remove
        return True

    def abort(self, exc: OSError | None = None) -> None:
        if exc is not None:
            self.log("crit", f'write to cache file "{self.temp}" failed ({exc})')
        if self.failed:
            return
        self.failed = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.temp)


# A clock for callers that have none of their own.
wall = time.time
