"""Shared counters and limit zones (:mod:`wsgate.shm`) with real ``os.fork()`` workers.

Each child is a :class:`Worker`: forked with the test's objects, it attaches to a slot and then
runs the calls the test names over a pipe, one at a time, answering with ``repr(result)``; the
test waits for each answer (never a sleep), and ends a worker with a command or SIGKILL.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.config.model import Config
from wsgate.errors import ConfigError
from wsgate.limits import Refused, ReqDecision, ReqZone, ZoneFull, check_requests
from wsgate.observability.status import (
    ACCEPTS,
    ACTIVE,
    HANDLED,
    READING,
    REQUESTS,
    WRITING,
    StatusSnapshot,
)
from wsgate.shm import (
    CONN_STATE_SIZE,
    KEY_MAX,
    REQ_STATE_SIZE,
    SharedConnZone,
    SharedReqZone,
    SharedState,
    ShmError,
)

pytestmark = pytest.mark.timeout(20)

NODELAY = (2**63 - 1) // 1000 * 1000
Calls = dict[str, Callable[[str], object]]


class Worker:
    """A forked worker process of ``state`` in ``slot`` that runs ``calls[name](arg)``."""

    def __init__(self, state: SharedState, slot: int, calls: Calls) -> None:
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child; coverage does not follow it
            code = 1
            try:
                os.close(down_w)
                os.close(up_r)
                state.attach(slot)
                self._serve(down_r, up_w, calls)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(down_r)
        os.close(up_w)
        self.slot = slot
        self.running = True
        self._down, self._up = down_w, up_r

    #: In a worker: its answer pipe.
    _up_fd = -1

    @staticmethod
    def answer_early(result: object) -> None:
        """In a worker, inside a call that will not return: answer now."""
        os.write(Worker._up_fd, repr(result).encode() + b"\n")

    @staticmethod
    def _serve(down: int, up: int, calls: Calls) -> None:
        Worker._up_fd = up
        with os.fdopen(down, "rb") as commands:
            for line in commands:
                name, _, arg = line.decode().rstrip("\n").partition(" ")
                if name == "exit":
                    return
                os.write(up, repr(calls[name](arg)).encode() + b"\n")

    def call(self, name: str, arg: object = "") -> str:
        """Run a call in the worker and return ``repr`` of its result."""
        os.write(self._down, f"{name} {arg}\n".encode())
        return self.answer()

    def answer(self) -> str:
        data = b""
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([self._up], [], [], 10)
            assert ready, "the worker did not answer"
            chunk = os.read(self._up, 4096)
            assert chunk, "the worker died"
            data += chunk
        return data.decode().rstrip("\n")

    def exit(self) -> None:
        os.write(self._down, b"exit \n")
        self._reap(0)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self._reap(-signal.SIGKILL)

    def _reap(self, expected: int | None = None) -> None:
        _, status = os.waitpid(self.pid, 0)
        self.running = False
        os.close(self._down)
        os.close(self._up)
        if expected is not None:
            assert os.waitstatus_to_exitcode(status) == expected


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Workers a test starts; any still running at the end are killed."""
    started: list[Worker] = []
    yield started
    for w in started:
        if w.running:
            os.kill(w.pid, signal.SIGKILL)
            w._reap()


def conf(tmp_path: Path, http: str) -> Config:
    (tmp_path / "nginx.conf").write_text(f"events {{}}\nhttp {{\n{http}\n}}\n")
    return load("nginx.conf", prefix=str(tmp_path))


ZONES = """
limit_conn_zone $remote_addr zone=perip:32k;
limit_req_zone $remote_addr zone=one:32k rate=1r/s;
"""


def shared(tmp_path: Path, max_slots: int = 4, http: str = ZONES) -> SharedState:
    state = SharedState(max_slots=max_slots)
    state.configure(conf(tmp_path, http))
    return state


# -- stub_status counters ---------------------------------------------------------------------
def count_calls(state: SharedState) -> Calls:
    c = state.stub_status
    return {
        "inc": lambda arg: c.increment(*map(int, arg.split())),
        "dec": lambda arg: c.decrement(*map(int, arg.split())),
    }


def test_counters_from_several_processes_sum(tmp_path: Path, workers: list[Worker]) -> None:
    state = shared(tmp_path)
    for slot in range(3):
        workers.append(Worker(state, slot, count_calls(state)))
    for w in workers:
        for index in (ACCEPTS, HANDLED, ACTIVE):
            w.call("inc", f"{index} {w.slot + 1}")
        w.call("inc", f"{REQUESTS} 10")
        w.call("inc", f"{WRITING} 1")
    workers[2].call("dec", f"{ACTIVE} 1")
    # accepts 1+2+3, active 6-1, requests 3*10, writing 3, waiting 5-3.
    assert state.stub_status.snapshot() == StatusSnapshot(5, 6, 6, 30, 0, 3, 2)
    for w in workers:
        w.exit()


def test_accept_share_reads_the_live_peers_of_a_generation(
    tmp_path: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listeners' balance check: this worker's active connections and the fewest of any
    other live worker of its generation; an exited worker, or one of another generation (a
    reload's retiring workers, whose listeners are closed), is not a peer.  (The peers are
    looked up at every call here; a worker keeps them for PEERS_TTL.)"""
    monkeypatch.setattr(SharedState, "PEERS_TTL", 0.0)
    state = shared(tmp_path)
    calls = count_calls(state)
    calls["share"] = lambda arg: state.accept_share()
    for slot in range(3):
        workers.append(Worker(state, slot, calls))
    assert workers[0].call("share") == "(0, 0)"
    workers[0].call("inc", f"{ACTIVE} 9")
    workers[1].call("inc", f"{ACTIVE} 4")
    workers[2].call("inc", f"{ACTIVE} 6")
    assert workers[0].call("share") == "(9, 4)"
    assert workers[1].call("share") == "(4, 6)"
    workers[1].exit()
    state.worker_exited(1)  # the master, after reaping it
    assert workers[0].call("share") == "(9, 6)"
    state.configure(conf(tmp_path, ZONES))  # a reload: the next workers are a new generation
    workers.append(Worker(state, 1, calls))
    workers[3].call("inc", f"{ACTIVE} 1")
    assert workers[3].call("share") == "None"  # its only live peers are older
    assert workers[0].call("share") == "(9, 6)"
    for w in (workers[0], workers[2], workers[3]):
        w.exit()
    assert SharedState(max_slots=2).accept_share() is None  # not attached: no worker


def test_exited_slot_keeps_cumulative_counts_and_drops_gauges(
    tmp_path: Path, workers: list[Worker]
) -> None:
    state = shared(tmp_path)
    first, other = Worker(state, 0, count_calls(state)), Worker(state, 1, count_calls(state))
    workers += [first, other]
    for w in workers:
        for index in (ACCEPTS, HANDLED, ACTIVE, REQUESTS, READING):
            w.call("inc", f"{index} 2")
    first.kill()
    assert state.stub_status.snapshot() == StatusSnapshot(4, 4, 4, 4, 4, 0, 0)
    state.worker_exited(0)
    # Slot 0's two connections no longer count; its accepts and requests do.
    assert state.stub_status.snapshot() == StatusSnapshot(2, 4, 4, 4, 2, 0, 0)
    again = Worker(state, 0, count_calls(state))  # the slot is reused by a new worker
    workers.append(again)
    again.call("inc", f"{ACCEPTS} 1")
    assert state.stub_status.snapshot() == StatusSnapshot(2, 5, 4, 4, 2, 0, 0)
    again.exit()
    other.exit()


def test_counters_need_attach(tmp_path: Path) -> None:
    state = shared(tmp_path)
    with pytest.raises(ShmError, match="attach"):
        state.stub_status.increment(ACCEPTS)
    with pytest.raises(ShmError, match="slot 4"):
        state.attach(4)
    state.attach(3)
    state.stub_status.increment(ACCEPTS, 7)
    assert state.stub_status.snapshot().accepts == 7


# -- limit_conn ---------------------------------------------------------------------------------
def conn_calls(state: SharedState, limit: int = 3) -> Calls:
    zone = state.limits.conn_zone("perip")
    return {
        "acquire": lambda key: zone.acquire(key or "k", limit),
        "release": lambda key: zone.release(key or "k"),
        "held": lambda key: zone.held(key or "k"),
    }


def test_limit_conn_is_shared_by_workers(tmp_path: Path, workers: list[Worker]) -> None:
    state = shared(tmp_path)
    for slot in range(4):
        workers.append(Worker(state, slot, conn_calls(state)))
    a, b, c, d = workers
    assert [w.call("acquire") for w in (a, b, c)] == ["True"] * 3
    assert d.call("acquire") == repr(Refused.LIMIT)  # the fourth, in another process
    assert state.limits.conn_zone("perip").held("k") == 3
    b.call("release")
    assert d.call("acquire") == "True"
    assert a.call("acquire") == repr(Refused.LIMIT)
    d.call("release")
    d.call("release")  # d holds nothing more: a second release gives back nobody's slot
    assert a.call("held") == "2"
    for w in workers:
        w.exit()


def test_killed_worker_gives_back_its_slots(tmp_path: Path, workers: list[Worker]) -> None:
    state = shared(tmp_path)
    victim, other = Worker(state, 1, conn_calls(state)), Worker(state, 2, conn_calls(state))
    workers += [victim, other]
    assert [victim.call("acquire"), victim.call("acquire"), other.call("acquire")] == ["True"] * 3
    victim.call("acquire", "solo")
    victim.kill()
    zone = state.limits.conn_zone("perip")
    assert (zone.held("k"), zone.held("solo")) == (3, 1)  # until the master reaps it
    assert state.worker_exited(1) == []
    assert (zone.held("k"), zone.held("solo")) == (1, 0)
    assert other.call("acquire") == "True" and other.call("acquire") == "True"
    assert other.call("acquire") == repr(Refused.LIMIT)
    other.exit()


def test_worker_killed_inside_the_lock(tmp_path: Path, workers: list[Worker]) -> None:
    state = shared(tmp_path)
    calls = conn_calls(state)
    calls["hold-lock"] = lambda _: hold_forever(state)
    victim, other = Worker(state, 0, calls), Worker(state, 1, conn_calls(state))
    workers += [victim, other]
    assert victim.call("acquire") == "True" and other.call("acquire") == "True"
    assert victim.call("hold-lock") == "'holding'"
    zone = state.limits.conn_zone("perip")
    assert isinstance(zone, SharedConnZone)
    lock_file = zone._t._lock._file
    with pytest.raises(OSError):  # a record lock held by another live process
        fcntl.lockf(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, zone._t._lock._offset)
    pid = victim.pid
    victim.kill()
    # The kernel dropped the lock; the next holder repairs the half-done update: the total
    # is recomputed from the slots' counts (victim: 1 + the half-acquired 1; other: 1).
    assert other.call("held") == "3"
    assert state.worker_exited(0) == [f'shared memory zone "perip" was locked by {pid}']
    assert zone.held("k") == 1
    assert [other.call("acquire"), other.call("acquire")] == ["True", "True"]
    assert other.call("acquire") == repr(Refused.LIMIT)
    other.exit()


def hold_forever(state: SharedState) -> None:
    """In a worker: inside the zone's lock, count a slot without its total, say 'holding'
    and wait for SIGKILL."""
    zone = state.limits.conn_zone("perip")
    assert isinstance(zone, SharedConnZone)
    t = zone._t
    with t.locked():
        e, _ = t.find(*t.key("k"))
        zone._holds[e * zone._slots + zone._me.get()] += 1
        Worker.answer_early("holding")
        signal.pause()


def test_conn_zone_full_at_and_over_its_size(tmp_path: Path) -> None:
    state = shared(tmp_path, max_slots=1)
    state.attach(0)
    zone = state.limits.conn_zone("perip")
    assert isinstance(zone, SharedConnZone)
    assert zone.capacity == 32768 // CONN_STATE_SIZE == 512
    assert all(zone.acquire(f"10.0.{i // 256}.{i % 256}", 1) is True for i in range(512))
    assert zone.acquire("10.9.9.9", 1) is Refused.NO_MEMORY  # a new key, over the size
    assert zone.acquire("10.0.0.7", 1) is Refused.LIMIT  # a known key is still limited
    zone.release("10.0.0.7")
    assert zone.acquire("10.9.9.9", 1) is True  # its node was freed at count 0
    assert zone.held("10.0.0.7") == 0 and zone.held("10.9.9.9") == 1


def test_long_keys_are_stored_as_digests(tmp_path: Path) -> None:
    state = shared(tmp_path, max_slots=1)
    state.attach(0)
    zone = state.limits.conn_zone("perip")
    same_start = "x" * KEY_MAX
    assert zone.acquire(same_start, 1) is True
    assert zone.acquire(same_start + "a", 1) is True
    assert zone.acquire(same_start + "b", 1) is True
    assert zone.acquire(same_start + "a", 1) is Refused.LIMIT
    assert [zone.held(same_start + s) for s in ("", "a", "b", "c")] == [1, 1, 1, 0]


# -- limit_req ----------------------------------------------------------------------------------
def req_calls(state: SharedState) -> Calls:
    def request(arg: str) -> tuple[str | None, int, int]:
        now, _, key = arg.partition(" ")
        zone = state.limits.req_zone("one", 1000)
        d = check_requests([(zone, key or "k", 2000, NODELAY)], int(now))
        return d.rejected, d.excess, d.delay_ms

    return {"request": request}


def test_limit_req_burst_is_shared_by_workers(tmp_path: Path, workers: list[Worker]) -> None:
    state = shared(tmp_path)  # rate=1r/s; each request: burst=2 nodelay
    for slot in range(3):
        workers.append(Worker(state, slot, req_calls(state)))
    a, b, c = workers
    assert a.call("request", 0) == repr((None, 0, 0))
    assert b.call("request", 0) == repr((None, 1000, 0))
    assert c.call("request", 0) == repr((None, 2000, 0))  # at the burst
    assert a.call("request", 0) == repr(("one", 3000, 0))  # over it, whoever asks
    assert b.call("request", 500) == repr(("one", 2500, 0))
    assert c.call("request", 1000) == repr((None, 2000, 0))  # one request drained in 1 s
    assert a.call("request", "0 other") == repr((None, 0, 0))  # keys stay apart
    for w in workers:
        w.exit()


def test_req_zone_full_evicts_the_least_recently_used(tmp_path: Path) -> None:
    state = shared(tmp_path, max_slots=1)
    state.attach(0)
    zone = state.limits.req_zone("one", 1000)
    assert isinstance(zone, SharedReqZone)
    assert zone.capacity == 32768 // REQ_STATE_SIZE == 256

    def req(key: str, now: int) -> ReqDecision:
        return check_requests([(zone, key, 0, 0)], now)

    for i in range(256):  # at the size: every key keeps its state
        assert req(f"k{i}", 0).rejected is None
    assert all(req(f"k{i}", 10).rejected == "one" for i in range(1, 256))
    assert req("k0", 10).rejected == "one"  # k0 is now the most recent, k1 the oldest
    assert req("new", 20).rejected is None  # over the size: k1 is evicted by force
    assert req("k1", 30).rejected is None  # so k1 starts again (evicting k2)
    assert req("k3", 30).rejected == "one"  # the others kept their state
    assert req("k0", 40).rejected == "one"


def test_req_zone_expires_idle_states_before_evicting(tmp_path: Path) -> None:
    state = shared(tmp_path, max_slots=1)
    state.attach(0)
    zone = state.limits.req_zone("one", 1000)
    assert isinstance(zone, SharedReqZone)
    for key in ("a", "b"):
        assert check_requests([(zone, key, 0, 0)], 0).rejected is None
    assert zone.used == 2
    # "ngx_http_limit_req_expire(ctx, 1)" before every new state, even with room to spare:
    # a and b are idle for a minute and drained.
    assert check_requests([(zone, "c", 0, 0)], 60_000).rejected is None
    assert zone.used == 1
    zone.prune(120_000)
    assert zone.used == 0
    for i in range(256):  # the first two are a minute older than the rest
        assert check_requests([(zone, f"k{i}", 0, 0)], 0 if i < 2 else 59_999).rejected is None
    assert zone.used == 256
    # A new key first expires the idle, drained states at the tail (n == 1): both old ones.
    assert check_requests([(zone, "new", 0, 0)], 60_001).rejected is None
    assert zone.used == 255
    assert check_requests([(zone, "k2", 0, 0)], 60_002).rejected == "one"  # kept its state
    zone.prune(200_000)  # everything drained and idle
    assert zone.used == 0


def test_zone_full_is_a_distinct_req_decision() -> None:
    class Full(ReqZone):
        def lookup(self, key: str, burst: int, now: int, account: bool) -> tuple[bool, int]:
            raise ZoneFull(self.name)

    ok, full = ReqZone("ok", 1000), Full("full", 1000)
    d = check_requests([(ok, "k", 0, 0), (full, "k", 0, 0)], 0)
    assert d == ReqDecision(rejected="full", no_memory=True)
    # Nothing was accounted in "ok" for the refused request.
    assert check_requests([(ok, "k", 0, 0)], 0) == ReqDecision(zone="ok")


# -- configure ----------------------------------------------------------------------------------
def test_configure_keeps_zones_unless_their_size_changes(tmp_path: Path) -> None:
    state = shared(tmp_path, max_slots=1)
    state.attach(0)
    conn, req = state.limits.conn_zone("perip"), state.limits.req_zone("one", 1000)
    assert conn.acquire("k", 1) is True
    assert check_requests([(req, "k", 0, 0)], 0).rejected is None
    state.configure(conf(tmp_path, ZONES.replace("rate=1r/s", "rate=2r/s")))  # same sizes
    assert state.limits.conn_zone("perip") is conn and conn.acquire("k", 1) is Refused.LIMIT
    assert state.limits.req_zone("one", 2000) is req and req.rate == 2000
    assert check_requests([(req, "k", 0, 0)], 0) == ReqDecision(rejected="one", excess=1000)
    state.configure(conf(tmp_path, ZONES.replace(":32k", ":64k")))  # new sizes: new zones
    conn2, req2 = state.limits.conn_zone("perip"), state.limits.req_zone("one", 1000)
    assert conn2 is not conn and conn2.acquire("k", 1) is True
    assert check_requests([(req2, "k", 0, 0)], 0).rejected is None
    conn.release("k")  # a request of the old configuration ends: its zone, not the new one
    assert (conn.held("k"), conn2.held("k")) == (0, 1)
    state.configure(conf(tmp_path, "limit_conn_zone $remote_addr zone=other:32k;"))
    with pytest.raises(ShmError, match='limit_conn zone "perip" is not configured'):
        state.limits.conn_zone("perip")
    with pytest.raises(ShmError, match='limit_req zone "one" is not configured'):
        state.limits.req_zone("one", 1000)


def test_configure_refuses_a_kept_zone_with_another_key(tmp_path: Path) -> None:
    state = shared(tmp_path)
    zone = state.limits.conn_zone("perip")
    with pytest.raises(ConfigError, match='"perip" uses the "\\$host" key while previously'):
        state.configure(
            conf(tmp_path, ZONES.replace("$remote_addr zone=perip", "$host zone=perip"))
        )
    assert state.limits.conn_zone("perip") is zone  # nothing changed
    state.configure(conf(tmp_path, ZONES.replace("zone=perip:32k", "zone=perip:64k")))
    assert state.limits.conn_zone("perip") is not zone


def test_old_worker_slots_in_a_replaced_zone_are_given_back(
    tmp_path: Path, workers: list[Worker]
) -> None:
    state = shared(tmp_path)
    old = Worker(state, 0, conn_calls(state, limit=1))
    workers.append(old)
    assert old.call("acquire") == "True"
    zone = state.limits.conn_zone("perip")
    state.configure(conf(tmp_path, ZONES.replace(":32k", ":64k")))  # reload: a new zone
    assert state.limits.conn_zone("perip") is not zone and zone.held("k") == 1
    old.kill()
    state.worker_exited(0)
    assert zone.held("k") == 0  # the old zone, which only old workers use


# -- handover to the new master of an upgrade -------------------------------------------------
def adopt(state: SharedState) -> SharedState:
    """What the new master of an upgrade makes of ``state``'s handover (its descriptors are
    duplicated here, as ``exec`` would leave them to the new process)."""
    desc, fds = state.handover()
    dup = {fd: os.dup(fd) for fd in fds}
    for key in ("locks", "counters", "slots"):
        desc[key] = dup[desc[key]]
    for z in desc["conn"]:
        z[3] = dup[z[3]]
    for z in desc["req"]:
        z[4] = dup[z[4]]
    assert sorted(SharedState.handover_fds(desc)) == sorted(dup.values())
    return SharedState(state.max_slots, desc)


def test_handover_maps_the_same_memory(tmp_path: Path, workers: list[Worker]) -> None:
    """A limit_conn slot held by a worker of the old master still counts for the new
    master's workers until the old master reaps that worker; the counters go on; the two
    masters never give one slot to two workers."""
    old = shared(tmp_path)
    a = Worker(old, 0, {**conn_calls(old), **count_calls(old)})
    workers.append(a)
    assert a.call("acquire") == "True" and a.call("acquire") == "True"
    a.call("inc", f"{ACCEPTS} 5")
    new = adopt(old)
    new.configure(conf(tmp_path, ZONES))
    free = [3, 2, 1, 0]
    slot = new.claim_slot(free)
    assert slot == 1 and free == [3, 2, 0]  # slot 0 is the old worker's
    b = Worker(new, slot, {**conn_calls(new), **count_calls(new)})
    workers.append(b)
    assert b.call("acquire") == "True"  # the third of three
    assert b.call("acquire") == repr(Refused.LIMIT)
    b.call("inc", f"{ACCEPTS} 1")
    assert new.stub_status.snapshot().accepts == 6
    assert old.claim_slot([1]) is None  # the new master's worker has it
    a.kill()
    assert old.worker_exited(0) == []
    assert b.call("acquire") == "True"
    assert b.call("held") == "2"
    assert new.claim_slot([0]) == 0
    b.exit()


def test_handover_of_another_layout_is_refused(tmp_path: Path) -> None:
    old = shared(tmp_path)
    desc, _ = old.handover()
    with pytest.raises(ShmError, match="layout 'wsgate-shm-0'"):
        SharedState(old.max_slots, {**desc, "layout": "wsgate-shm-0"})
    with pytest.raises(ShmError, match="with 4 slots, not .* with 8"):
        SharedState(8, desc)


def test_adopted_zone_with_another_key_starts_empty(tmp_path: Path) -> None:
    old = shared(tmp_path, max_slots=1)
    new = adopt(old)
    zone = new.limits.conn_zone("perip") if new.limits.conn else None
    assert zone is None  # handed-over zones are offered to the first configure only
    new.configure(conf(tmp_path, ZONES.replace("$remote_addr zone=perip", "$host zone=perip")))
    perip = new.limits.conn_zone("perip")
    assert isinstance(perip, SharedConnZone) and perip.key == "$host"
    # The kept limit_req zone is the old master's memory.
    new.attach(0)
    req = new.limits.req_zone("one", 1000)
    assert check_requests([(req, "k", 0, 0)], 0).rejected is None
    old_req = old.limits.req_zone("one", 1000)
    assert isinstance(old_req, SharedReqZone) and old_req.used == 1
