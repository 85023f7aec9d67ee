"""Shared fixtures: a real ``wsgate`` process on loopback, started from a configuration text.

The process runs with ``-p TMP -g "daemon off; error_log logs/error.log notice;"``, so its pid
file (``logs/nginx.pid``), error log and default access log (``logs/access.log``) are in the
test's temporary directory.  Listeners are written as ``listen 127.0.0.1:0``: wsgate logs each
bound address (``listening on 127.0.0.1:PORT``), and the fixture reads the ports back in
listen order once the pid file exists.  Nothing sleeps for readiness.
"""

from __future__ import annotations

import faulthandler
import os
import re
import signal as _signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

LISTENING = re.compile(r"listening on (\S+):(\d+) ")


@dataclass
class WsgateProcess:
    """A running wsgate; ``ports`` in the order the listeners appear in the configuration."""

    proc: subprocess.Popen[bytes]
    prefix: Path
    conf: Path
    ports: list[int] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "access.log"

    @property
    def pid_file(self) -> Path:
        return self.prefix / "logs" / "nginx.pid"

    @property
    def stderr(self) -> str:
        return (self.prefix / "stderr.txt").read_text(errors="replace")

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def worker_pids(self) -> list[int]:
        """The master's children (its worker processes), oldest first."""
        pid = self.proc.pid
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return sorted(int(p) for p in text.split())

    @property
    def worker_pid(self) -> int:
        """The one worker (``worker_processes 1``, the default); waits for it to exist."""
        deadline = time.monotonic() + 10
        while not (pids := self.worker_pids()):
            if time.monotonic() > deadline:
                raise AssertionError("wsgate has no worker process")
            time.sleep(0.01)
        return pids[-1]

    def pids(self) -> list[int]:
        """The master and its workers."""
        return [self.proc.pid, *self.worker_pids()]

    def fd_links(self) -> list[str]:
        """What every descriptor of the master and its workers points at."""
        links = []
        for pid in self.pids():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except FileNotFoundError:
                continue
            for fd in fds:
                try:
                    links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except FileNotFoundError:
                    pass
        return links

    def open_fds(self) -> int:
        """Descriptors open in the master and its workers together."""
        return len(self.fd_links())

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """Wait until the error log (from byte ``start``) matches ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.errors()[start:])
            if m is not None:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in error log:\n{self.errors()}")
            if self.proc.poll() is not None:
                raise AssertionError(f"wsgate exited ({self.proc.returncode}):\n{self.stderr}")
            time.sleep(0.01)

    def access_lines(self, count: int, timeout: float = 10.0) -> list[str]:
        """Wait until the access log has ``count`` lines and return them."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.access_log.read_text() if self.access_log.exists() else ""
            lines = text.splitlines()
            if len(lines) >= count:
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"access log has {len(lines)} lines, want {count}:\n{text}")
            time.sleep(0.01)

    def stop(self, sig: int = _signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("wsgate did not stop in time") from None
        return self.proc.returncode


def start_wsgate(
    prefix: Path,
    conf_text: str,
    extra_args: tuple[str, ...] = (),
    timeout: float = 15.0,
    command: tuple[str, ...] = (sys.executable, "-m", "wsgate.cli"),
) -> WsgateProcess:
    """Start ``command`` (by default this interpreter's wsgate) on ``conf_text``."""
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text)
    stderr = open(prefix / "stderr.txt", "wb")
    proc = subprocess.Popen(
        [
            *command,
            "-p",
            str(prefix),
            "-c",
            "nginx.conf",
            "-g",
            "daemon off; error_log logs/error.log notice;",
            *extra_args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    stderr.close()
    handle = WsgateProcess(proc, prefix, conf)
    deadline = time.monotonic() + timeout
    while not handle.pid_file.exists():
        if proc.poll() is not None:
            raise AssertionError(f"wsgate exited ({proc.returncode}):\n{handle.stderr}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"wsgate did not start:\n{handle.stderr}")
        time.sleep(0.01)
    handle.ports = [int(m.group(2)) for m in LISTENING.finditer(handle.errors())]
    return handle


@pytest.fixture
def wsgate(tmp_path: Path) -> Iterator[Callable[..., WsgateProcess]]:
    """Factory: ``wsgate(conf_text)`` starts wsgate; every instance is stopped afterwards,
    and a test fails if wsgate logged an ``[alert]`` (an unexpected exception)."""
    started: list[WsgateProcess] = []

    def factory(conf_text: str, *extra_args: str) -> WsgateProcess:
        prefix = tmp_path / f"wsgate{len(started)}"
        handle = start_wsgate(prefix, conf_text, extra_args)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        handle.stop()
        log = handle.errors()
        assert "[alert]" not in log and "Traceback" not in handle.stderr, log + handle.stderr


_REAL_STDERR: Any = sys.stderr


def pytest_configure(config: pytest.Config) -> None:
    """Keep a handle on the terminal's stderr before output capture replaces it, for the
    hang backstop's dump (:func:`pytest_runtest_protocol`)."""
    global _REAL_STDERR
    _REAL_STDERR = open(os.dup(sys.__stderr__.fileno()), "w")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _REAL_STDERR is not sys.stderr:
        _REAL_STDERR.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """A backstop for pytest-timeout: its SIGALRM cannot interrupt a uvloop loop blocked in
    epoll (the Python handler never runs, and uvloop holds the GIL there, so no Python thread
    can step in either), so a hung uvloop test would hang CI.  faulthandler's watchdog is a C
    thread: thirty seconds after the test's timeout it dumps every thread's stack and exits.
    It covers the item's setup, call and teardown, including the teardown of module-scoped
    fixtures that runs after a module's last test."""
    marker = item.get_closest_marker("timeout")
    option = item.config.getoption("timeout", None)
    if marker is not None and marker.args:
        limit = float(marker.args[0])
    elif option is not None:
        limit = float(option)
    else:
        limit = float(item.config.getini("timeout") or 60)
    faulthandler.dump_traceback_later(limit + 30, exit=True, file=_REAL_STDERR)
    yield
    faulthandler.cancel_dump_traceback_later()


# The reliability probes' figures (tests/reliability/common.REPORT), printed at the end of the
# run. These hooks live here, not in tests/reliability/conftest.py, because pytest-xdist's
# controlling process (make test runs two workers) loads only this initial conftest.


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under pytest-xdist a worker hands its figures to the controlling process."""
    from tests.reliability.common import REPORT  # not at the top: common imports this module

    out = getattr(session.config, "workeroutput", None)
    if out is not None:
        out["reliability_report"] = [list(row) for row in REPORT]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """The controlling process (pytest-xdist) gathers each worker's figures for the table."""
    from tests.reliability.common import REPORT

    rows = getattr(node, "workeroutput", {}).get("reliability_report", [])
    REPORT.extend(tuple(row) for row in rows)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every figure the probes recorded, wsgate beside nginx where both were measured."""
    from tests.reliability.common import REPORT, SOAK

    if not REPORT:
        return
    tr = terminalreporter
    tr.section(f"reliability figures ({'soak' if SOAK else 'bounded'} run)")
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for probe, target, name, value in REPORT:
        rows.setdefault((probe, name), {})[target] = value
    width = max(len(f"{p} {n}") for p, n in rows)
    tr.write_line(f"{'probe / figure':<{width}}  {'wsgate':>14}  {'nginx':>14}")
    for (probe, name), values in rows.items():
        tr.write_line(
            f"{probe + ' ' + name:<{width}}  {values.get('wsgate', '-'):>14}  "
            f"{values.get('nginx', '-'):>14}"
        )
