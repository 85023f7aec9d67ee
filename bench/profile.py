"""Where a wsgate worker's CPU goes while it relays 64-byte messages or runs handshakes:
py-spy samples, summed by function.

wsgate runs with one worker pinned to CPU 0, and the load generator and echo backend run on
CPU 1, as in :mod:`bench.run`. Three loads are profiled (:data:`LOADS`): ping-pong (each of
100 connections keeps one message in flight, so every read holds one frame), pipelined (16
in flight, so reads hold many frames) and handshakes. ``py-spy record --native --idle
--nonblocking`` samples the worker during the counting window. Native frames show what
uvloop and libuv do in C and the system calls. ``--nonblocking`` does not stop the worker to
sample it, which would slow it down severalfold. Idle samples (the worker blocked in
``epoll_wait``) are kept, so that each function's share is a share of wall time; the CPU row
from ``/proc`` gives the busy fraction.

Each function gets two numbers:

* *self*: samples whose innermost frame is that function (its own code);
* *total*: samples with that function anywhere in the stack (it and what it calls).

Writes ``profile.md`` into ``--out`` (and, with ``--keep-raw``, py-spy's collapsed stacks,
``profile-*.txt``, for a flame graph). ``make bench`` runs it after the figures;
``python -m bench.profile --duration 8`` runs it alone.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.proxies import REPO, Proxy
from bench.run import Backends, Processes, _cpus, loadgen

__all__ = ["main", "summarise"]

#: Frames that only say "the event loop is running": they are in every stack.
_PLUMBING = (
    "<module>",
    "run_until_complete",
    "run_forever",
    "serve",
    "run_worker",
    "main",
    "Master.run",
    "Master._spawn",
    "cmd_run",
    "_run_master",
)


def _frame_name(frame: str) -> str:
    """``data_received (wsgate/proxy/tunnel.py:187)`` → ``data_received (tunnel.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{name} ({file})" if file else name


def summarise(collapsed: str) -> tuple[int, Counter[str], Counter[str], int]:
    """(samples, self counts, total counts, idle samples) from py-spy's ``--format raw``."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = idle = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        samples += count
        leaf = frames[-1]
        if "epoll_wait" in leaf or "epoll_pwait" in leaf:
            idle += count
        own[leaf] += count
        for f in set(frames):
            total[f] += count
    return samples, own, total, idle


def _table(counter: Counter[str], samples: int, limit: int, skip: tuple[str, ...] = ()) -> str:
    lines = ["| function | share of samples |", "|---|---|"]
    shown = 0
    for name, count in counter.most_common():
        if name.split(" (")[0] in skip:
            continue
        lines.append(f"| `{name}` | {100 * count / samples:.1f} % |")
        shown += 1
        if shown >= limit:
            break
    return "\n".join(lines)


#: The profiled loads: name → (load generator mode, its arguments, title).
LOADS: dict[str, tuple[str, list[str], str]] = {
    "pingpong": (
        "throughput",
        ["--size", "64", "--window", "1"],
        "64 B messages, 100 connections, ping-pong (1 in flight each)",
    ),
    "pipelined": (
        "throughput",
        ["--size", "64", "--window", "16"],
        "64 B messages, 100 connections, pipelined (16 in flight each)",
    ),
    "handshake": (
        "handshake",
        ["--concurrency", "32"],
        "handshakes: upgrade, one 64 B message, close; 32 at a time",
    ),
}


def profile_one(
    procs: Processes,
    pyspy: str,
    load_name: str,
    duration: float,
    raw_dir: Path,
    work: Path,
    native: bool,
) -> dict[str, Any]:
    """One load on a fresh wsgate, sampled by py-spy: Python frames only and without stopping
    the worker, or (``native``) with C frames, stopping it 50 times a second."""
    proxy_cpus, load_cpus, _, _ = _cpus()
    mode, load_args, _ = LOADS[load_name]
    backend = Backends(procs, 1, load_cpus)
    proxy = procs.start_proxy(Proxy("wsgate", 1, proxy_cpus, backend.addrs, work / load_name))
    try:
        worker = int(Path(f"/proc/{proxy.roots[0]}/task/{proxy.roots[0]}/children").read_text())
        raw = raw_dir / f"profile-{load_name}{'-native' if native else ''}.txt"
        result: dict[str, Any] = {}

        def load() -> None:
            args = [*load_args, "--warmup", "1.5", "--duration", str(duration)]
            result.update(
                loadgen(
                    mode,
                    ("127.0.0.1", proxy.port),
                    load_cpus,
                    args,
                    {"proxy": proxy.roots, "backend": backend.pids},
                    attempts=1,  # py-spy samples this one run
                )
            )

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(1.5)  # the load generator's warm-up
        subprocess.run(
            # py-spy runs on the load's CPU, so that it takes no CPU time from wsgate.
            ["taskset", "-c", load_cpus, pyspy, "record", "--pid", str(worker)]
            + ["--duration", str(int(duration))]
            + (["--rate", "50", "--native"] if native else ["--rate", "250", "--nonblocking"])
            + ["--idle", "--format", "raw", "--output", str(raw)],
            check=True,
            capture_output=True,
            timeout=duration + 60,
        )
        thread.join()
    finally:
        procs.stop_proxy(proxy)
        backend.stop()
    samples, own, total, idle = summarise(raw.read_text())
    return {
        "name": load_name,
        "native": native,
        "raw": raw,
        "samples": samples,
        "own": own,
        "total": total,
        "idle": idle,
        "load": result,
    }


def _summary(run: dict[str, Any]) -> str:
    load = run["load"]
    cpu = load["cpu"]["proxy"]
    if load["mode"] == "handshake":
        rate = f"{load['handshakes_per_s']:,.0f} handshakes/s"
        per = f"{1e6 * cpu['total_s'] / max(1, load['handshakes']):.0f} µs per handshake"
    else:
        rate = f"{load['relayed_per_s']:,.0f} relayed messages/s"
        per = f"{1e6 * cpu['total_s'] / max(1, load['relayed']):.2f} µs per relayed message"
    return (
        f"{rate}; wsgate CPU {cpu['utilisation']:.2f} of a core ({cpu['user_s']:.2f} s user, "
        f"{cpu['system_s']:.2f} s kernel over {load['elapsed_s']:.1f} s), {per}; "
        f"{run['samples']} samples, {100 * run['idle'] / max(1, run['samples']):.1f} % idle "
        f"in epoll_wait. Raw stacks: `{run['raw'].name}`."
    )


def report(runs: list[dict[str, Any]]) -> str:
    parts = [
        "# Where wsgate's CPU goes (1 worker)\n",
        "Made by `python -m bench.profile`. Each load runs twice on a fresh wsgate. The "
        "*Python view* samples Python frames 250 times a second without stopping the worker "
        "(py-spy `--nonblocking`), so its rates are the real ones. Time spent in C (uvloop, "
        "libuv, system calls) is counted in the innermost Python frame that called it, and "
        "the event loop's own work shows as `run_until_complete`. The *native view* adds C "
        "frames (py-spy `--native`), which means stopping the worker 50 times a second, so "
        "that run is slower, but it splits out uvloop, libuv and the system calls. Shares "
        "are of all samples, idle ones included. *Self* is time in the function's own code; "
        "*total* also counts what it calls.\n",
    ]
    for name in LOADS:
        pair = [r for r in runs if r["name"] == name]
        if not pair:
            continue
        parts.append(f"## {LOADS[name][2]}\n")
        for run in pair:
            view = "Native view" if run["native"] else "Python view"
            parts += [
                f"### {view}\n",
                _summary(run) + "\n",
                "Self time:\n",
                _table(run["own"], run["samples"], 20 if run["native"] else 15),
                "",
            ]
            if not run["native"]:
                parts += [
                    "Total time (without the event loop's outer frames):\n",
                    _table(run["total"], run["samples"], 15, _PLUMBING),
                    "",
                ]
    return "\n".join(parts) + "\n"


def pyspy_binary() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def run_profile(
    procs: Processes,
    out: Path,
    work: Path,
    duration: float = 5.0,
    loads: tuple[str, ...] = tuple(LOADS),
    keep_raw: bool = False,
) -> str | None:
    """Profile every load in both views; write ``out/profile.md`` (and the raw stacks there
    too with ``keep_raw``, else into ``work``). Returns the report, or None without py-spy."""
    pyspy = pyspy_binary()
    if pyspy is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    raw_dir = out if keep_raw else work
    raw_dir.mkdir(parents=True, exist_ok=True)
    runs = [
        profile_one(procs, pyspy, name, duration, raw_dir, work, native)
        for name in loads
        for native in (False, True)
    ]
    text = report(runs)
    (out / "profile.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--loads", default=",".join(LOADS), help=", ".join(LOADS))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--keep-raw", action="store_true", help="keep py-spy's raw stacks")
    args = parser.parse_args(argv)
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="wsgate-profile-") as work:
        try:
            text = run_profile(
                procs,
                args.out,
                Path(work),
                args.duration,
                tuple(args.loads.split(",")),
                args.keep_raw,
            )
        finally:
            procs.stop_all()
    if text is None:
        print("py-spy is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
