"""The cache's files: an entry is renamed into place only when whole, a damaged one is a
miss and removed, locks and use counts, and the manager's eviction."""

from __future__ import annotations

import os
import time
from pathlib import Path

from wsgate.cache.rules import Entry, digest
from wsgate.cache.store import CacheStore
from wsgate.config.model import CachePath

LOG: list[tuple[str, str]] = []


def _log(level: str, text: str) -> None:
    LOG.append((level, text))


def _store(tmp_path: Path, **kw: object) -> CacheStore:
    return CacheStore(CachePath(str(tmp_path / "c"), "Z", 1 << 20, levels=(1, 2), **kw))  # type: ignore[arg-type]


def _put(store: CacheStore, key: str, body: bytes, valid: int = 0) -> str:
    entry = Entry(key, 200, "OK", [("Content-Type", "text/plain")], valid or int(time.time()) + 60)
    w = store.writer(digest(key), entry, _log)
    assert w is not None
    w.write(body)
    assert w.commit()
    return store.path_of(digest(key))


def _files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_write_then_read(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = _put(store, "k1", b"hello")
    assert path.endswith("/" + digest("k1").hex())
    hit = store.open(digest("k1"), "k1", _log)
    assert hit is not None
    try:
        assert os.pread(hit.fd, hit.entry.body_len, hit.entry.header_len) == b"hello"
    finally:
        os.close(hit.fd)
    assert store.open(digest("k2"), "k2", _log) is None


def test_temp_file_invisible_until_commit_and_gone_on_abort(tmp_path: Path) -> None:
    store = _store(tmp_path)
    entry = Entry("k", 200, "OK", [], int(time.time()) + 60)
    w = store.writer(digest("k"), entry, _log)
    assert w is not None
    w.write(b"partial")
    assert store.open(digest("k"), "k", _log) is None
    assert any(name.endswith(".tmp") for name in _files(tmp_path))
    w.abort()
    assert _files(tmp_path / "c") == []


def test_damaged_files_are_misses_and_removed(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for how in ("truncate", "flip-body", "flip-header", "append"):
        path = _put(store, "k", b"x" * 1000)
        data = bytearray(Path(path).read_bytes())
        if how == "truncate":
            data = data[:-10]
        elif how == "flip-body":
            data[-5] ^= 1
        elif how == "flip-header":
            data[30] ^= 1
        else:
            data += b"junk"
        Path(path).write_bytes(bytes(data))
        LOG.clear()
        assert store.open(digest("k"), "k", _log) is None, how
        assert not os.path.exists(path), how
        assert LOG and LOG[0][0] == "crit"


def test_md5_collision_is_a_miss(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _put(store, "k", b"x")
    os.rename(store.path_of(digest("k")), _dest(store, "other"))
    assert store.open(digest("other"), "other", _log) is None


def _dest(store: CacheStore, key: str) -> str:
    path = store.path_of(digest(key))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def test_lock_one_holder_and_release(tmp_path: Path) -> None:
    store = _store(tmp_path)
    md5 = digest("k")
    a, b = object(), object()
    now = time.time()
    assert store.lock(md5, a, 5, now)
    assert not store.lock(md5, b, 5, now)
    assert store.locked(md5, now, check_age=True)
    # Past its age, the lock is taken over.
    assert not store.locked(md5, now + 6, check_age=True)
    store.unlock(md5, b)  # not the holder: nothing
    assert store.locked(md5, now, check_age=False)
    store.unlock(md5, a)
    assert not store.locked(md5, now, check_age=False)
    assert store.lock(md5, b, 5, now)


def test_min_uses_counts(tmp_path: Path) -> None:
    store = _store(tmp_path)
    md5 = digest("k")
    assert [store.use(md5) for _ in range(3)] == [1, 2, 3]
    store.forget_uses(md5)
    assert store.use(md5) == 1


def test_manager_inactive_and_max_size(tmp_path: Path) -> None:
    store = _store(tmp_path, inactive=60.0, max_size=3 * 8192)
    now = time.time()
    paths = [_put(store, f"k{i}", b"x" * 5000) for i in range(5)]
    for i, path in enumerate(paths):
        os.utime(path, (now - 50 + i, now - 50 + i))  # k0 least recently used
    assert store.is_manager()
    removed = store.manage(now, _log)
    left = [p for p in paths if os.path.exists(p)]
    assert removed == 5 - len(left)
    assert sum(os.stat(p).st_blocks * 512 for p in left) <= 3 * 8192
    assert left == paths[-len(left) :]  # the most recently used stay
    # Not used for longer than inactive: removed.
    store.manage(now + 120, _log)
    assert not any(os.path.exists(p) for p in paths)


def test_manager_min_free(tmp_path: Path) -> None:
    store = _store(tmp_path, min_free=1 << 62)  # never enough free space: all go
    paths = [_put(store, f"k{i}", b"x") for i in range(3)]
    store.manage(time.time(), _log)
    assert not any(os.path.exists(p) for p in paths)


def test_manager_is_one_process(tmp_path: Path) -> None:
    a, b = _store(tmp_path), _store(tmp_path)
    assert a.is_manager()
    assert not b.is_manager()
    a.close()
    assert b.is_manager()
    b.close()


def test_lock_taken_over_is_not_removed_by_its_old_holder(tmp_path: Path) -> None:
    """Past ``proxy_cache_lock_age`` another process takes the lock; the first holder's
    release then leaves the new holder's lock alone."""
    first, second = _store(tmp_path), _store(tmp_path)
    second.pid = os.getppid()
    md5 = digest("k")
    a, b = object(), object()
    now = time.time()
    assert first.lock(md5, a, 1, now)
    assert second.lock(md5, b, 5, now + 2)  # the first one's deadline has passed
    first.unlock(md5, a)
    assert first.locked(md5, now + 2, check_age=True)
    second.unlock(md5, b)
    assert not first.locked(md5, now + 2, check_age=False)


def test_update_header_replaces_the_file_whole(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = _put(store, "k", b"body" * 5000, valid=int(time.time()) - 5)
    hit = store.open(digest("k"), "k", _log)
    assert hit is not None
    old_inode = os.stat(path).st_ino
    try:
        entry = hit.entry
        entry.valid_sec = int(time.time()) + 100
        store.update_header(hit, entry, _log)
    finally:
        os.close(hit.fd)
    assert os.stat(path).st_ino != old_inode  # renamed into place, not written over
    again = store.open(digest("k"), "k", _log)
    assert again is not None
    try:
        assert again.entry.valid_sec == entry.valid_sec
        assert os.pread(again.fd, again.entry.body_len, again.entry.header_len) == b"body" * 5000
    finally:
        os.close(again.fd)
    assert not any(name.endswith(".tmp") for name in _files(tmp_path))


def test_manager_at_max_size_keeps_everything(tmp_path: Path) -> None:
    """``max_size`` is a limit the cache may reach: at it nothing goes, one block over it the
    least recently used entry goes."""
    paths = [_put(_store(tmp_path), f"k{i}", b"x" * 100) for i in range(3)]
    total = sum(os.stat(p).st_blocks * 512 for p in paths)
    now = time.time()
    for i, path in enumerate(paths):
        os.utime(path, (now - 10 + i, now - 10 + i))
    at = _store(tmp_path, max_size=total)
    assert at.manage(now, _log) == 0
    assert all(os.path.exists(p) for p in paths)
    at.close()
    over = _store(tmp_path, max_size=total - 1)
    assert over.manage(now, _log) == 1
    assert [os.path.exists(p) for p in paths] == [False, True, True]


def test_manager_files_per_pass(tmp_path: Path) -> None:
    """``manager_files``: at most that many entries go in one pass over ``max_size``."""
    store = _store(tmp_path, max_size=0, manager_files=2)
    paths = [_put(store, f"k{i}", b"x") for i in range(5)]
    now = time.time()
    assert store.manage(now, _log) == 2 and store.over
    assert store.manage(now, _log) == 2 and store.over
    assert store.manage(now, _log) == 1 and not store.over
    assert not any(os.path.exists(p) for p in paths)
