"""The master process: binds, forks workers, replaces the dead ones, reloads, stops.

nginx's ``ngx_master_process_cycle`` (https://nginx.org/en/docs/control.html), without an
event loop: the master sleeps in ``select`` on a signal wake-up pipe and its workers'
channels, and does everything in between:

* **Start**: the CLI has read the configuration and bound the sockets; the master forks
  ``worker_processes`` workers on them.
* **HUP** (reload): read the configuration again (an error is logged and the old one stays),
  open sockets it adds while keeping the ones it shares with the old configuration (same
  socket, so no connection is ever refused), fork the new workers, and once they accept (or
  after :data:`READY_TIMEOUT`) tell the old workers to retire: they stop accepting and keep
  every open tunnel and request until it ends, or until ``worker_shutdown_timeout`` (then
  tunnels get a 1012 close frame).  Sockets the new configuration dropped are closed.
* **A worker dies** (say SIGKILL): the master logs it as nginx does, releases what the
  worker held in shared memory, and forks a replacement on the current configuration.
  Connections on other workers are untouched.
* **QUIT**: every worker stops gracefully (1001 close frames), the ones a reload retired
  too; the master exits after the last one.  **TERM/INT**: every worker stops at once; one
  still alive after :data:`KILL_AFTER` seconds gets SIGKILL.  **USR1**: reopen logs, here and
  in the workers.
* **USR2** (upgrade, https://nginx.org/en/docs/control.html#upgrade): rename the pid file to
  ``PID.oldbin`` and start the installed ``wsgate`` again (:mod:`wsgate.server.upgrade`) as
  a new master that inherits the listening sockets.  **WINCH**: retire every worker as a
  reload does (no respawn); **HUP** while a new binary runs brings them back on the current
  configuration without reading it again.  If the new binary exits, the pid file gets its
  name back, and retired workers are restarted.  A **QUIT** once the workers were retired
  for an upgrade does not close their tunnels (the new master serves new connections; the
  old tunnels end on their own or at ``worker_shutdown_timeout``): the master closes its
  sockets and exits after its last worker.

Shared state (``stub_status`` counters, ``limit_*`` zones, metrics) is created here before
any fork, so every worker of every generation sees the same memory.
"""

from __future__ import annotations

import gc
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from wsgate.config.model import Config
from wsgate.errors import ConfigError
from wsgate.loop import preload
from wsgate.observability.logs import ErrorLogger
from wsgate.server.gateway import (
    BindKey,
    Gateway,
    ListenGroup,
    announce,
    check_error_logs,
    delete_dropped_unix_sockets,
    dropped_sockets,
    open_access_logs,
    open_groups,
)
from wsgate.server.upgrade import exec_new_binary, oldbin_path
from wsgate.server.worker import run_worker

__all__ = ["KILL_AFTER", "READY_TIMEOUT", "Master", "SharedHooks"]

#: How long the old workers keep accepting while the new ones start after a reload.
READY_TIMEOUT = 10.0
#: After TERM, how long a worker may take before the master kills it.
KILL_AFTER = 5.0
#: A worker that dies this soon after its start is restarted only after this delay too.
RESPAWN_DELAY = 1.0

_SIGNAL_NAMES = {
    signal.SIGHUP: "SIGHUP",
    signal.SIGQUIT: "SIGQUIT",
    signal.SIGTERM: "SIGTERM",
    signal.SIGINT: "SIGINT",
    signal.SIGUSR1: "SIGUSR1",
    signal.SIGUSR2: "SIGUSR2",
    signal.SIGWINCH: "SIGWINCH",
    signal.SIGCHLD: "SIGCHLD",
}


class SharedHooks:
    """What the master does with shared memory; the default does nothing (tests of the
    process model alone).  The real one is :class:`wsgate.server.shared.Shared`."""

    def configure(self, config: Config) -> None:
        """Before the workers for ``config`` are forked: create its zones."""

    def attach(self, gw: Gateway, slot: int) -> None:
        """In a new worker: point the gateway's counters and zones at slot ``slot``."""

    def worker_exited(self, slot: int) -> list[str]:
        """After a worker is reaped: release what it held, zero its gauges; returns alerts
        to log (a zone the worker held locked when it died)."""
        return []

    def in_worker(self) -> None:
        """In a new worker, before it runs: close what only the master needs."""

    def claim_slot(self, candidates: list[int]) -> int | None:
        """A slot for a new worker, taken out of ``candidates`` (last first); the shared
        memory's own table decides when two masters share it after an upgrade."""
        return candidates.pop() if candidates else None

    def handover(self) -> tuple[dict[str, str], list[int]]:
        """For the new master of an upgrade: environment variables and the descriptors
        they name (nothing here: without shared memory the new master starts afresh)."""
        return {}, []


@dataclass
class _Worker:
    pid: int
    slot: int
    index: int
    channel: socket.socket
    config: Config
    started: float
    ready: bool = False
    retiring: bool = False
    killed_at: float | None = None


class Master:
    """The master of one wsgate instance (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        error_log: ErrorLogger,
        groups: dict[BindKey, ListenGroup],
        reload_config: Callable[[], Config],
        shared: SharedHooks | None = None,
        max_slots: int = 256,
    ) -> None:
        self.config = config
        self.error_log = error_log
        self.groups = groups
        self.reload_config = reload_config
        self.shared = shared or SharedHooks()
        self.workers: dict[int, _Worker] = {}
        self.free_slots = list(range(max_slots - 1, -1, -1))
        self.stopping: str | None = None  # "quit" or "terminate"
        self.stop_started = 0.0
        self.respawn_at: list[tuple[float, int]] = []  # (when, index) of dead workers
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        #: The previous generation, told to retire once the new one accepts.
        self._to_retire: list[_Worker] = []
        #: The pid of the new master that USR2 started, while it runs (nginx's
        #: ``ngx_new_binary``).
        self.new_binary = 0
        #: WINCH retired the workers and none were started since (``ngx_noaccepting``).
        self.noaccepting = False

    # -- main loop --------------------------------------------------------------------------------
    def run(self, started: Callable[[], None]) -> int:
        """Fork the first workers, call ``started`` (pid file), serve until stopped."""
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in _SIGNAL_NAMES:
            signal.signal(sig, _noop)
        self.shared.configure(self.config)
        preload()
        for index in range(self.config.worker_processes):
            self._spawn(index)
        started()
        while self.workers or not self.stopping:
            for key, _ in self.selector.select(self._timeout()):
                if key.data is None:
                    self._signals()
                else:
                    self._message(key.data)
            self._reap()
            self._timers()
        signal.set_wakeup_fd(-1)
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        return 0

    def _timeout(self) -> float:
        return 0.25 if (self.respawn_at or self.stopping or self._waiting()) else 5.0

    def _waiting(self) -> bool:
        return any(not w.ready and not w.retiring for w in self.workers.values())

    def _signals(self) -> None:
        try:
            data = os.read(self._wake_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum == signal.SIGCHLD:
                continue  # _reap runs after every wake-up
            name = _SIGNAL_NAMES.get(signal.Signals(signum), str(signum))
            if signum == signal.SIGHUP:
                self.error_log.log("notice", f"signal {signum} ({name}) received, reconfiguring")
                if self.stopping:
                    pass
                elif self.new_binary:
                    # nginx: with a new binary running, HUP starts workers on the current
                    # configuration (the way back from an upgrade that went wrong).
                    self._restart_workers()
                else:
                    self.reload()
            elif signum == signal.SIGUSR2:
                self.error_log.log("notice", f"signal {signum} ({name}) received, changing binary")
                self._upgrade()
            elif signum == signal.SIGWINCH:
                self.error_log.log(
                    "notice",
                    f"signal {signum} ({name}) received, gracefully shutting down worker processes",
                )
                self._retire_all()
            elif signum == signal.SIGQUIT:
                self.error_log.log("notice", f"signal {signum} ({name}) received, shutting down")
                self.stop("quit")
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.error_log.log("notice", f"signal {signum} ({name}) received, exiting")
                self.stop("terminate")
            elif signum == signal.SIGUSR1:
                self.error_log.log("notice", f"signal {signum} ({name}) received, reopening logs")
                self.error_log.open()
                self._tell(list(self.workers.values()), b"O")

    # -- workers --------------------------------------------------------------------------------
    def _spawn(self, index: int) -> None:
        """Fork worker number ``index`` on the current configuration and sockets."""
        slot = self.shared.claim_slot(self.free_slots)
        if slot is None:
            self.error_log.log("alert", "no free worker slot, worker not started")
            return
        ours, theirs = socket.socketpair()
        config, groups = self.config, self.groups
        # What the worker inherits stays shared with the master only if nothing writes to its
        # pages: frozen, the cycle collector of the worker never visits (and so never
        # writes to) the inherited objects, which would copy-on-write the whole inherited
        # heap into each worker (they were alive at the fork; the worker's own objects are
        # collected as usual).  The master unfreezes its own copy at once.
        gc.freeze()
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                gc.unfreeze()
        if pid == 0:  # the worker
            code = 2
            try:
                signal.set_wakeup_fd(-1)
                for sig in _SIGNAL_NAMES:
                    signal.signal(sig, signal.SIG_DFL)
                ours.close()
                self.selector.close()
                os.close(self._wake_r)
                os.close(self._wake_w)
                for w in self.workers.values():
                    w.channel.close()
                self.shared.in_worker()
                self.error_log.close()
                # listen ... reuseport: this worker accepts on its own socket.
                mine = {key: g.for_worker(index) for key, g in groups.items()}
                code = run_worker(
                    config, mine, theirs, index, lambda gw: self.shared.attach(gw, slot)
                )
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        theirs.close()
        ours.setblocking(False)
        worker = _Worker(pid, slot, index, ours, config, time.monotonic())
        self.workers[pid] = worker
        self.selector.register(ours, selectors.EVENT_READ, worker)
        self.error_log.log("notice", f"start worker process {pid}")

    def _message(self, worker: _Worker) -> None:
        try:
            data = worker.channel.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(worker.channel)
            return
        if b"1" in data and not worker.ready:
            worker.ready = True
            self._retire_when_ready()

    def _tell(self, workers: list[_Worker], command: bytes) -> None:
        for w in workers:
            try:
                w.channel.send(command)
            except OSError:
                pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.new_binary:
                self._new_binary_exited(pid, status)
                continue
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                self.error_log.log(
                    "alert" if sig != signal.SIGKILL or worker.killed_at is None else "notice",
                    f"worker process {pid} exited on signal {sig}",
                )
            else:
                code = os.WEXITSTATUS(status)
                self.error_log.log(
                    "notice" if code == 0 else "alert",
                    f"worker process {pid} exited with code {code}",
                )
            try:
                self.selector.unregister(worker.channel)
            except (KeyError, ValueError):
                pass
            worker.channel.close()
            for alert in self.shared.worker_exited(worker.slot):
                self.error_log.log("alert", alert)
            self.free_slots.append(worker.slot)
            if not self.stopping and not worker.retiring:
                # A current worker died: replace it (at once, unless it died young).
                now = time.monotonic()
                young = now - worker.started < RESPAWN_DELAY
                self.respawn_at.append((now + RESPAWN_DELAY if young else now, worker.index))
            if not self._waiting():
                self._retire_when_ready()

    def _timers(self) -> None:
        now = time.monotonic()
        due = [(t, i) for t, i in self.respawn_at if t <= now]
        if due and not self.stopping:
            self.respawn_at = [(t, i) for t, i in self.respawn_at if t > now]
            for _, index in due:
                self._spawn(index)
        if self.stopping == "terminate" and now - self.stop_started > KILL_AFTER:
            for w in self.workers.values():
                if w.killed_at is None:
                    w.killed_at = now
                    try:
                        os.kill(w.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        for w in self.workers.values():
            if not w.ready and not w.retiring and now - w.started > READY_TIMEOUT:
                w.ready = True  # stop waiting for it; the old generation retires
                self._retire_when_ready()

    # -- reload ---------------------------------------------------------------------------------
    def reload(self) -> None:
        """HUP: everything the new configuration needs is built first; it is applied only if
        all of it worked (nginx keeps the old cycle when parsing, opening or binding fails)."""
        try:
            config = self.reload_config()
            check_error_logs(config)
            open_access_logs(config).close()  # the workers open them; this checks they open
            self.shared.configure(config)
            groups = open_groups(config, self.groups, config.worker_processes)
        except ConfigError as exc:
            self.error_log.log("emerg", str(exc))
            return
        old_workers = [w for w in self.workers.values() if not w.retiring]
        for w in old_workers:
            w.retiring = True  # retires once the new generation accepts
        self._to_retire += old_workers
        dropped = dropped_sockets(self.groups, groups)
        self.config = config
        self.error_log.configure(config)
        for key, group in groups.items():
            old = self.groups.get(key)
            if old is None or old.sock is not group.sock:
                announce(self.error_log, group)
        old_groups, self.groups = self.groups, groups
        # Closed before the fork, so new workers never inherit them; the old workers keep
        # their own copies (and accept on them) until they retire.
        for sock in dropped:
            sock.close()
        delete_dropped_unix_sockets(old_groups, groups, self.error_log)
        self.respawn_at = []
        for index in range(config.worker_processes):
            self._spawn(index)
        self._retire_when_ready()

    def _retire_when_ready(self) -> None:
        """Tell the previous generation to retire once every new worker accepts."""
        pending = self._to_retire
        if not pending or self._waiting():
            return
        self._to_retire = []
        self._tell([w for w in pending if w.pid in self.workers], b"R")

    # -- upgrade --------------------------------------------------------------------------------
    def _upgrade(self) -> None:
        """USR2: start the installed binary as a new master on our listening sockets."""
        if self.new_binary or self.stopping:
            self.error_log.log(
                "alert",
                "the changing binary signal is ignored: you should shutdown or terminate "
                "before either old or new binary's process",
            )
            return
        env, fds = self.shared.handover()
        pid = exec_new_binary(
            self.config.pid, self.groups, self.error_log, self._in_child, env, fds
        )
        if pid:
            self.new_binary = pid
            self.error_log.log("notice", f"start new binary process {pid}")

    def _in_child(self) -> None:
        """In the forked child, before it executes the new binary: drop the master's own
        descriptors and signal handling (the listening sockets stay, for the new master)."""
        signal.set_wakeup_fd(-1)
        for sig in _SIGNAL_NAMES:
            signal.signal(sig, signal.SIG_DFL)
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        for w in self.workers.values():
            w.channel.close()

    def _new_binary_exited(self, pid: int, status: int) -> None:
        """The new master is gone: this one is the instance again (nginx renames the pid
        file back, and restarts the workers a WINCH retired)."""
        self.new_binary = 0
        if os.WIFSIGNALED(status):
            self.error_log.log(
                "alert", f"new binary process {pid} exited on signal {os.WTERMSIG(status)}"
            )
        else:
            code = os.WEXITSTATUS(status)
            self.error_log.log(
                "notice" if code == 0 else "alert",
                f"new binary process {pid} exited with code {code}",
            )
        pid_path = self.config.pid
        try:
            os.rename(oldbin_path(pid_path), pid_path)
        except OSError as exc:
            self.error_log.log(
                "alert",
                f'rename() "{oldbin_path(pid_path)}" to "{pid_path}" failed '
                f"({exc.errno}: {exc.strerror})",
            )
        if self.noaccepting and not self.stopping:
            self._restart_workers()

    def _retire_all(self) -> None:
        """WINCH: every worker retires as after a reload (keeps its connections, accepts no
        new ones) and is not replaced; the master stays, with its sockets."""
        if self.stopping:
            return
        current = [w for w in self.workers.values() if not w.retiring]
        for w in current:
            w.retiring = True
        self._to_retire = []
        self.respawn_at = []
        self.noaccepting = True
        self._tell(current, b"R")

    def _restart_workers(self) -> None:
        """Start ``worker_processes`` workers on the current configuration (HUP while a new
        binary runs, or the new binary exited after a WINCH)."""
        self.noaccepting = False
        self.respawn_at = []
        current = [w for w in self.workers.values() if not w.retiring]
        for index in range(len(current), self.config.worker_processes):
            self._spawn(index)

    # -- stop -----------------------------------------------------------------------------------
    def stop(self, how: str) -> None:
        if self.stopping == "terminate" or self.stopping == how:
            return
        self.stopping = how
        self.stop_started = time.monotonic()
        self.respawn_at = []
        for group in self.groups.values():
            for sock in group.sockets():
                sock.close()
        if how == "quit" and self.noaccepting and self.new_binary:
            # The upgrade's last step: the new master serves; the retired workers keep their
            # tunnels (ended by their clients or by worker_shutdown_timeout), and this master
            # exits after them.
            return
        self._tell(list(self.workers.values()), b"T" if how == "terminate" else b"Q")


def _noop(signum: int, frame: object) -> None:
    """Signals are read from the wake-up pipe; the handler only has to exist."""
