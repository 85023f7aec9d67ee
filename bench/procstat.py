"""CPU time and memory of a group of processes, read from their own kernel accounting.

* CPU: ``utime`` and ``stime`` (fields 14 and 15 of ``/proc/PID/stat``, every thread of the
  process included) summed over a proxy's processes: its master, its workers and their
  children, found through ``/proc/PID/task/TID/children``. A measurement takes two samples
  and subtracts them, so wall time, other processes and time spent waiting never count.
  Field 14/15 are in clock ticks (``SC_CLK_TCK``, 100 a second), so windows are seconds long.
* On-CPU time to the nanosecond: :func:`on_cpu_ns` (``/proc/PID/task/TID/schedstat``), for
  windows of a second (bench/feature_ab.py's slices).
* Everything else: :func:`system_busy` (``/proc/stat``) is the busy time of all CPUs, so
  that a run can report how much CPU went to processes it does not know about.
* Memory: ``Pss`` from ``/proc/PID/smaps_rollup``, the resident memory with each shared page
  divided among the processes that map it. Summed over a forking proxy's master and workers,
  it counts the pages they share once (``Rss`` would count them once per process).

https://man7.org/linux/man-pages/man5/proc_pid_stat.5.html,
https://www.kernel.org/doc/html/latest/filesystems/proc.html (smaps_rollup).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "CpuSample",
    "cpu_sample",
    "descendants",
    "kernel_threads",
    "memory_kib",
    "on_cpu_ns",
    "process_tree",
    "system_busy",
    "task_files",
]

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds used so far by a set of processes, split into user and kernel time."""

    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.user - other.user, self.system - other.system)


def task_files(pid: int, name: str) -> Iterator[str]:
    """The text of ``/proc/PID/task/TID/<name>`` for every thread of ``pid`` (threads and
    processes that end while they are read are skipped)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/{name}") as f:
                yield f.read()
        except OSError:
            continue


def descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren and so on (not ``pid`` itself)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for text in task_files(todo.pop(), "children"):
            children = [int(c) for c in text.split()]
            found.extend(children)
            todo.extend(children)
    return found


def process_tree(roots: Iterable[int]) -> list[int]:
    """The root processes and all their descendants."""
    pids: list[int] = []
    for root in roots:
        pids.append(root)
        pids.extend(descendants(root))
    return pids


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return text[text.rindex(")") + 2 :].split()


def cpu_sample(roots: Iterable[int]) -> CpuSample:
    """User and system seconds of every process under ``roots``, plus what their exited and
    reaped children used (``cutime``/``cstime``), so a worker that ends mid-window counts."""
    user = system = 0
    for pid in process_tree(roots):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return CpuSample(user / _TICK, system / _TICK)


def on_cpu_ns(roots: Iterable[int]) -> int:
    """Nanoseconds on a CPU (user and kernel together) of every thread of the processes under
    ``roots``: the first field of ``/proc/PID/task/TID/schedstat`` (``sum_exec_runtime``),
    exact where :func:`cpu_sample` counts clock ticks. Threads that have exited are not
    counted, so a window must not span a worker's end."""
    total = 0
    for pid in process_tree(roots):
        for text in task_files(pid, "schedstat"):
            try:
                total += int(text.split()[0])
            except (ValueError, IndexError):  # an empty read: the thread was ending
                continue
    return total


def kernel_threads(prefix: str = "ksoftirqd/") -> list[int]:
    """Pids of the kernel threads whose name starts with ``prefix``. When both CPUs are
    saturated, the kernel hands loopback packet processing to ``ksoftirqd/N``: work of the
    benchmark that belongs to no process of it."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().startswith(prefix):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def system_busy() -> float:
    """CPU seconds all CPUs have spent busy since boot (``/proc/stat``: user, nice, system,
    irq, softirq, steal). Compared with the processes being measured, it shows whether
    anything else ran during a measurement."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def memory_kib(roots: Iterable[int], field: str = "Pss") -> int:
    """Sum of ``field`` (``Pss`` or ``Rss``) in KiB over every process under ``roots``."""
    total = 0
    prefix = field + ":"
    for pid in process_tree(roots):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith(prefix):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total
