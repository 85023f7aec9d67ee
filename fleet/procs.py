"""Processes run inside the simulated hosts: started with ``ip netns exec``, their output in a
log file of the run's directory, waited for by their listening sockets, ended by pid.

``ip netns exec NS CMD`` joins the namespace and then *executes* CMD, so the pid of the
:class:`subprocess.Popen` is the program's own (the wsgate master, haproxy, dnsmasq...), and
a signal sent to it reaches the program. A listening socket is found in
``/proc/PID/net/tcp``, which lists the sockets of the namespace the process is in: no tool
has to run inside the namespace to see that a port is open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fleet.net import ns_pids

__all__ = ["NsProcess", "listening", "wait_until"]

#: ``st`` of a TCP socket in LISTEN state (include/net/tcp_states.h).
_TCP_LISTEN = "0A"


def listening(pid: int, addr: str, port: int) -> bool:
    """Whether the network namespace of ``pid`` has a TCP socket listening on
    ``addr:port`` (IPv4)."""
    a, b, c, d = (int(x) for x in addr.split("."))
    want = f"{d:02X}{c:02X}{b:02X}{a:02X}:{port:04X}"  # little-endian address, as the kernel
    anyaddr = f"00000000:{port:04X}"
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == _TCP_LISTEN and fields[1] in (want, anyaddr):
                    return True
    except (FileNotFoundError, ProcessLookupError):
        return False
    return False


def wait_until(what: str, cond: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    """Poll ``cond()`` until it is true; return the seconds it took; raise TimeoutError."""
    start = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(step)


class NsProcess:
    """One program running in one namespace, its stdout and stderr in ``log``."""

    def __init__(
        self,
        name: str,
        ns: str,
        argv: list[str],
        log: Path,
        *,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.ns = ns
        self.argv = argv
        self.log = log
        self._logf = open(log, "ab")  # closed once the program has exited
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=stdin,
            stdout=self._logf if stdout is None else stdout,
            stderr=self._logf,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal reaches the runner only
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_listening(self, addr: str, port: int, timeout: float = 15.0) -> float:
        def up() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log}")
            return listening(self.pid, addr, port)

        return wait_until(f"{self.name} listening on {addr}:{port}", up, timeout)

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None if still running after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if self.proc.returncode is not None:
                self._logf.close()

    def kill_all(self) -> list[int]:
        """SIGKILL every process in the namespace (a host that dies: the program and its
        children, wsgate's workers); return their pids."""
        pids = set(ns_pids(self.ns))
        if self.alive():
            pids.add(self.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.wait(5.0)
        return sorted(pids)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.alive():
            self.signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.proc.kill()
                self.wait(5.0)
        if not self._logf.closed:
            self._logf.close()
