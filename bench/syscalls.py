"""System calls a proxy worker makes per WebSocket handshake and per relayed message.

Each proxy runs with one worker, as in :mod:`bench.run`. ``strace -c -f`` is attached to the
worker process (nginx's and wsgate's children; HAProxy's only process, every thread of it),
and this module drives a fixed amount of work through the proxy with blocking sockets, one
thing at a time, so that nothing is batched and each count is that of one unit:

* *handshake*: ``--handshakes`` sessions one after another, each the session of the
  handshake figure (connect, upgrade, one 64-byte message and its echo, Close and its reply,
  TCP close), then a wait until the worker is quiet again;
* *message*: ``--messages`` ping-pong echoes of 64 bytes over one connection opened before
  strace attaches; a relayed message is one direction, so an echo is two.

The figure is strace's count of calls (of every kind, errors included) over the number of
units. strace stops the worker at each system call, so times are meaningless here and only
counts are reported. What a worker does on its own (a timer, a periodic log flush) in the
window is counted too; the window is a fraction of a second per 100 units, so that is noise
below 0.1 per unit.

``python -m bench.syscalls`` prints a table; ``make bench`` runs it as ``--parts syscalls``.
https://man7.org/linux/man-pages/man1/strace.1.html (``-c``, ``-f``, ``-p``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.procstat import cpu_sample, descendants, task_files
from bench.proxies import PROXIES, Proxy
from bench.wsproto import CLIENT_CLOSE, SERVER_CLOSE, client_frame, handshake_request, server_frame

__all__ = ["markdown", "parse_summary", "run"]

_FRAME = client_frame(64)
_REPLY = len(server_frame(64))


def parse_summary(text: str) -> dict[str, int]:
    """``strace -c``'s table → calls per system call (``total`` left out).

    A row is ``% time, seconds, usecs/call, calls, [errors,] syscall``; the header, the rule
    lines and the total row are skipped."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) not in (5, 6) or not words[3].isdigit() or words[-1] == "total":
            continue
        try:
            float(words[0])
        except ValueError:
            continue
        calls[words[-1]] = calls.get(words[-1], 0) + int(words[3])
    return calls


def _traced(pid: int) -> bool:
    """Whether every thread of ``pid`` has a tracer (strace has attached); a process that
    has gone counts as traced."""
    for status in task_files(pid, "status"):
        tracer = [x for x in status.splitlines() if x.startswith("TracerPid:")]
        if tracer and tracer[0].split()[1] == "0":
            return False
    return True


@contextmanager
def strace(pids: list[int], workdir: Path) -> Iterator[dict[str, int]]:
    """Count the system calls of ``pids`` (all their threads) for the ``with`` block; the
    yielded dict is filled with :func:`parse_summary`'s counts when the block ends."""
    out = workdir / f"strace-{pids[0]}.txt"
    cmd = ["strace", "-c", "-f", "-qq", "-o", str(out)]
    for pid in pids:
        cmd += ["-p", str(pid)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    counts: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 10
        while not all(_traced(p) for p in pids):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"strace did not attach: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.01)
        yield counts
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    counts.update(parse_summary(out.read_text()))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _upgrade(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(handshake_request(f"127.0.0.1:{port}"))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"closed during the handshake: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"no 101: {head[:200]!r}")
    if head.index(b"\r\n\r\n") + 4 != len(head):
        raise RuntimeError("bytes after the 101 before any message")
    return sock


def _echo(sock: socket.socket) -> None:
    sock.sendall(_FRAME)
    if _recv_exactly(sock, _REPLY) != server_frame(64):
        raise RuntimeError("the echo differs from the message")


def session(port: int) -> None:
    """One session of the handshake figure, start to end."""
    sock = _upgrade(port)
    try:
        _echo(sock)
        sock.sendall(CLIENT_CLOSE)
        if _recv_exactly(sock, len(SERVER_CLOSE)) != SERVER_CLOSE:
            raise RuntimeError("no Close reply")
        if sock.recv(1):
            raise RuntimeError("bytes after the Close reply")
    finally:
        sock.close()


def _quiet(pids: list[int], seconds: float = 0.3) -> None:
    """Wait until the worker has used no CPU for ``seconds`` (its last closes are done)."""

    def ticks() -> int:
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total

    deadline = time.monotonic() + 10
    last = cpu_sample(pids).total
    while time.monotonic() < deadline:
        time.sleep(seconds)
        now = cpu_sample(pids).total
        if now == last:
            return
        last = now


def _workers(running: Any) -> list[int]:
    roots: list[int] = running.roots
    children = [c for r in roots for c in descendants(r)]
    return children or roots


def _per_unit(counts: dict[str, int], units: int) -> dict[str, Any]:
    total = sum(counts.values())
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "units": units,
        "calls": total,
        "per_unit": round(total / units, 2),
        "by_call": {name: round(n / units, 2) for name, n in top},
    }


def measure(
    name: str,
    backends: list[tuple[str, int]],
    cpus: str,
    work: Path,
    handshakes: int,
    messages: int,
    start: Callable[[Proxy], Any],
    stop: Callable[[Any], None],
) -> dict[str, Any]:
    """Both counts for one proxy."""
    running = start(Proxy(name, 1, cpus, backends, work / name))
    try:
        port = running.port
        for _ in range(5):  # warm: the worker's first connections set up what it keeps
            session(port)
        pids = _workers(running)
        _quiet(pids)
        with strace(pids, work) as hs:
            for _ in range(handshakes):
                session(port)
            _quiet(pids)
        sock = _upgrade(port)
        try:
            _echo(sock)
            _quiet(pids)
            with strace(pids, work) as msg:
                for _ in range(messages):
                    _echo(sock)
        finally:
            sock.close()
    finally:
        stop(running)
    return {"handshake": _per_unit(hs, handshakes), "message": _per_unit(msg, 2 * messages)}


def run(
    names: tuple[str, ...],
    procs: Any,
    work: Path,
    cpus: tuple[str, str],
    handshakes: int = 200,
    messages: int = 1000,
) -> dict[str, Any]:
    """Every proxy of ``names`` that runs here; ``procs`` is :class:`bench.run.Processes`."""
    from bench.run import Backends

    if shutil.which("strace") is None:
        return {"skipped": "strace is not installed (make bench installs it as root)"}
    proxy_cpus, load_cpus = cpus
    backend = Backends(procs, 1, load_cpus, "raw")
    out: dict[str, Any] = {"handshakes": handshakes, "messages": messages, "proxies": {}}
    try:
        for name in names:
            out["proxies"][name] = measure(
                name,
                backend.addrs,
                proxy_cpus,
                work,
                handshakes,
                messages,
                procs.start_proxy,
                procs.stop_proxy,
            )
    finally:
        backend.stop()
    return out


def markdown(result: dict[str, Any], top: int = 12) -> str:
    """The section of results.md."""
    from bench.report import NAMES

    if result.get("skipped"):
        return f"## System calls\n\nNot measured: {result['skipped']}.\n"
    proxies = list(result["proxies"])
    head = "| | " + " | ".join(NAMES.get(p, p) for p in proxies) + " |"
    rule = "|---|" + "---|" * len(proxies)
    parts = [
        "## System calls\n",
        "`strace -c -f` on the one worker, one unit at a time with blocking sockets "
        f"(`python -m bench.syscalls`): {result['handshakes']} handshake sessions (upgrade, "
        f"one 64 B message and its echo, Close, TCP close), then {result['messages']} 64 B "
        "echoes over one connection (a relayed message is one direction, an echo two). "
        "Calls of every kind, failed ones included, per unit.\n",
        head,
        rule,
    ]
    for unit, label in (("handshake", "per handshake"), ("message", "per relayed message")):
        cells = [f"{result['proxies'][p][unit]['per_unit']:.2f}" for p in proxies]
        parts.append(f"| {label} | " + " | ".join(cells) + " |")
    for unit in ("handshake", "message"):
        names: dict[str, None] = {}
        for p in proxies:
            for call in list(result["proxies"][p][unit]["by_call"])[:top]:
                names[call] = None
        parts += ["", f"Per {unit}, by call:\n", head, rule]
        for call in names:
            cells = [f"{result['proxies'][p][unit]['by_call'].get(call, 0):.2f}" for p in proxies]
            parts.append(f"| `{call}` | " + " | ".join(cells) + " |")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    from bench.run import Processes, _cpus, available

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", default=",".join(PROXIES))
    parser.add_argument("--handshakes", type=int, default=200)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the raw counts here")
    args = parser.parse_args(argv)
    names, skipped = available(tuple(args.proxies.split(",")))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    proxy_cpus, load_cpus, _, _ = _cpus()
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="wsgate-syscalls-") as work:
        try:
            result = run(
                names, procs, Path(work), (proxy_cpus, load_cpus), args.handshakes, args.messages
            )
        finally:
            procs.stop_all()
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
