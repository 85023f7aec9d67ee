"""Issue 16's kernel-splicing experiment: a WebSocket tunnel relayed by Linux sockmap.

After the opening handshake, a proxy can hand both sockets of a tunnel to the kernel: a
``BPF_MAP_TYPE_SOCKMAP`` holds them, and an ``sk_skb`` verdict program attached to the map
(``BPF_SK_SKB_VERDICT``, no stream parser, Linux 5.13+) sends every buffer that arrives on
one straight out of the other (``bpf_sk_redirect_map``), with no wake-up of the proxy
process, no ``read`` and no ``write``. Cilium and Merbridge forward a sidecar's traffic this
way.

This module is the experiment, measured against wsgate and nginx; it is not part of wsgate
(why: docs/benchmark.md, "Kernel splicing"). It holds:

* :class:`Splicer`: the maps and the program, written as eBPF instructions here (no compiler
  for BPF is needed), loaded with the ``bpf()`` system call through ctypes. Per socket the
  program keeps, in a hash map keyed by the socket's cookie (``SO_COOKIE``), the peer's slot
  in the sockmap, the bytes it received and the time of its last buffer
  (``bpf_ktime_get_ns``), which is what an idle timer and the byte counts of a log line need.
  A socket the hash does not know is passed to user space as usual (``SK_PASS``).
* ``python -m bench.sockmap serve --backend HOST:PORT``: a proxy of a few dozen lines that
  relays the opening handshake in Python and then splices the tunnel. EOF is still seen in
  user space (a FIN is not data), so half-close works: a side's EOF is passed on with
  ``shutdown(SHUT_WR)``, and both sockets are closed once both sides have sent theirs.
* ``python -m bench.sockmap measure``: the relay figures of :mod:`bench.run` (64 B and 4 KiB
  ping-pong over 100 connections, 64 B with 16 in flight) for wsgate, nginx and the spliced
  proxy, each pinned to CPU 0 with the load on CPU 1, in ``--rounds`` interleaved rounds.
  Two CPU figures per relayed message: the proxy process's own, and the whole machine's
  (``/proc/stat``: every CPU's busy time, load generator and backend included) minus the
  same load's with no proxy. The second is the fair one: a spliced tunnel's work runs in
  softirq and kworker context, charged to whatever runs, so the proxy process shows almost
  none of it.

Needs root (``CAP_BPF`` and ``CAP_NET_ADMIN``) and a kernel with ``CONFIG_BPF_STREAM_PARSER``.
https://docs.kernel.org/bpf/map_sockmap.html, https://docs.kernel.org/bpf/standardization/instruction-set.html
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["Splicer", "main"]

# bpf(2) commands, map and program types, attach type, helpers (linux/bpf.h).
_SYS_BPF = 321  # x86_64
_MAP_CREATE, _MAP_LOOKUP, _MAP_UPDATE, _MAP_DELETE = 0, 1, 2, 3
_PROG_LOAD, _PROG_ATTACH = 5, 8
_MAP_HASH, _MAP_SOCKMAP = 1, 15
_PROG_SK_SKB = 14
_SK_SKB_VERDICT = 38
_FN_MAP_LOOKUP, _FN_KTIME, _FN_SOCKET_COOKIE, _FN_SK_REDIRECT_MAP = 1, 5, 46, 52
_SO_COOKIE = 57
_SK_PASS = 1

#: A hash entry: the peer's sockmap slot (u32, then 4 bytes of padding), bytes received
#: (u64, added atomically), the last buffer's time (u64, CLOCK_MONOTONIC ns).
_ENTRY = struct.Struct("<IIQQ")

_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, 128)
    fd = int(_libc.syscall(_SYS_BPF, cmd, buf, 128))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return fd


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _ld_map(dst: int, map_fd: int) -> bytes:
    """``dst = map`` (a 64-bit load of a map's descriptor: BPF_PSEUDO_MAP_FD)."""
    return _insn(0x18, dst, 1, 0, map_fd) + _insn(0, 0, 0, 0, 0)


def verdict_program(hash_fd: int, sockmap_fd: int) -> bytes:
    """The sk_skb verdict program (23 instructions)."""
    mov64_reg, add64_imm, mov64_imm = 0xBF, 0x07, 0xB7
    call, exit_, jeq_imm = 0x85, 0x95, 0x15
    ldx_w, stx_dw, atomic_dw = 0x61, 0x7B, 0xDB
    prog = [
        _insn(mov64_reg, 6, 1),  # r6 = skb
        _insn(call, imm=_FN_SOCKET_COOKIE),  # r0 = this socket's cookie
        _insn(stx_dw, 10, 0, -8),  # key on the stack
        _ld_map(1, hash_fd),
        _insn(mov64_reg, 2, 10),
        _insn(add64_imm, 2, imm=-8),
        _insn(call, imm=_FN_MAP_LOOKUP),  # r0 = &entry or NULL
        _insn(jeq_imm, 0, off=12, imm=0),  # not spliced: pass to user space
        _insn(mov64_reg, 7, 0),
        _insn(ldx_w, 1, 6, 0),  # r1 = skb->len
        _insn(atomic_dw, 7, 1, 8, 0),  # entry->bytes += len (BPF_ADD)
        _insn(call, imm=_FN_KTIME),
        _insn(stx_dw, 7, 0, 16),  # entry->last = now
        _insn(ldx_w, 3, 7, 0),  # r3 = entry->peer
        _insn(mov64_reg, 1, 6),
        _ld_map(2, sockmap_fd),
        _insn(mov64_imm, 4, imm=0),  # flags 0: out of the peer (egress)
        _insn(call, imm=_FN_SK_REDIRECT_MAP),
        _insn(exit_),
        _insn(mov64_imm, 0, imm=_SK_PASS),
        _insn(exit_),
    ]
    return b"".join(prog)


def socket_cookie(sock: socket.socket) -> int:
    value: int = struct.unpack("<Q", sock.getsockopt(socket.SOL_SOCKET, _SO_COOKIE, 8))[0]
    return value


class Splicer:
    """The sockmap, the per-socket hash and the attached verdict program."""

    def __init__(self, slots: int = 65536) -> None:
        self.sockmap = _bpf(_MAP_CREATE, struct.pack("<IIIII", _MAP_SOCKMAP, 4, 4, slots, 0))
        self.hash = _bpf(_MAP_CREATE, struct.pack("<IIIII", _MAP_HASH, 8, _ENTRY.size, slots, 0))
        code = ctypes.create_string_buffer(verdict_program(self.hash, self.sockmap))
        license_ = ctypes.create_string_buffer(b"GPL")
        log = ctypes.create_string_buffer(65536)
        attr = struct.pack(
            "<IIQQIIQ",
            _PROG_SK_SKB,
            len(code.raw) // 8,
            ctypes.addressof(code),
            ctypes.addressof(license_),
            1,
            len(log),
            ctypes.addressof(log),
        )
        try:
            self.prog = _bpf(_PROG_LOAD, attr)
        except OSError as exc:
            why = log.value.decode(errors="replace")
            raise OSError(exc.errno, f"{exc.strerror}: {why}") from None
        _bpf(_PROG_ATTACH, struct.pack("<IIII", self.sockmap, self.prog, _SK_SKB_VERDICT, 0))
        self.free = list(range(slots - 1, -1, -1))

    def _update(self, fd: int, key: bytes, value: bytes) -> None:
        k, v = ctypes.create_string_buffer(key), ctypes.create_string_buffer(value)
        _bpf(_MAP_UPDATE, struct.pack("<IIQQQ", fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0))

    def _delete(self, fd: int, key: bytes) -> None:
        k = ctypes.create_string_buffer(key)
        with contextlib.suppress(OSError):
            _bpf(_MAP_DELETE, struct.pack("<IIQ", fd, 0, ctypes.addressof(k)))

    def splice(self, a: socket.socket, b: socket.socket) -> tuple[int, int]:
        """Relay ``a`` and ``b`` in the kernel from now on. Both go into the sockmap before
        either goes into the hash, so no buffer is redirected to an empty slot (the helper
        would drop it); what arrives before is passed to user space. Returns the slots."""
        ia, ib = self.free.pop(), self.free.pop()
        self._update(self.sockmap, struct.pack("<I", ia), struct.pack("<I", a.fileno()))
        self._update(self.sockmap, struct.pack("<I", ib), struct.pack("<I", b.fileno()))
        self._update(self.hash, struct.pack("<Q", socket_cookie(a)), _ENTRY.pack(ib, 0, 0, 0))
        self._update(self.hash, struct.pack("<Q", socket_cookie(b)), _ENTRY.pack(ia, 0, 0, 0))
        return ia, ib

    def counters(self, sock: socket.socket) -> tuple[int, int]:
        """(bytes received, time of the last buffer in ns) the program recorded for ``sock``."""
        k = ctypes.create_string_buffer(struct.pack("<Q", socket_cookie(sock)))
        v = ctypes.create_string_buffer(_ENTRY.size)
        _bpf(
            _MAP_LOOKUP,
            struct.pack("<IIQQ", self.hash, 0, ctypes.addressof(k), ctypes.addressof(v)),
        )
        _, _, nbytes, last = _ENTRY.unpack(v.raw)
        return nbytes, last

    def unsplice(self, a: socket.socket, b: socket.socket, slots: tuple[int, int]) -> None:
        for sock in (a, b):
            with contextlib.suppress(OSError):
                self._delete(self.hash, struct.pack("<Q", socket_cookie(sock)))
        for slot in slots:
            self._delete(self.sockmap, struct.pack("<I", slot))
            self.free.append(slot)


# --- the spliced proxy -----------------------------------------------------------------------


async def _read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise ConnectionError("closed before the end of the head")
        data += chunk
    return data


class _Tunnel:
    """Both sockets of a spliced tunnel, watched for EOF (and for bytes that reached user
    space before the splice, which are passed on here)."""

    def __init__(self, splicer: Splicer, loop: asyncio.AbstractEventLoop) -> None:
        self.splicer, self.loop = splicer, loop

    def start(self, client: socket.socket, upstream: socket.socket) -> None:
        self.socks = (client, upstream)
        self.eof = [False, False]
        self.slots = self.splicer.splice(client, upstream)
        for i in (0, 1):
            self.loop.add_reader(self.socks[i].fileno(), self._readable, i)

    def _readable(self, i: int) -> None:
        sock, peer = self.socks[i], self.socks[1 - i]
        try:
            data = sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            with contextlib.suppress(OSError):
                peer.setblocking(True)
                peer.sendall(data)
                peer.setblocking(False)
            return
        self.loop.remove_reader(sock.fileno())
        self.eof[i] = True
        with contextlib.suppress(OSError):
            peer.shutdown(socket.SHUT_WR)
        if all(self.eof):
            self.splicer.unsplice(*self.socks, self.slots)
            for s in self.socks:
                s.close()


async def _serve_one(splicer: Splicer, backend: tuple[str, int], client: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    upstream = socket.socket()
    try:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream.setblocking(False)
        head = await _read_head(loop, client)
        await loop.sock_connect(upstream, backend)
        await loop.sock_sendall(upstream, head)
        answer = await _read_head(loop, upstream)
        await loop.sock_sendall(client, answer)
    except OSError:
        client.close()
        upstream.close()
        return
    _Tunnel(splicer, loop).start(client, upstream)


async def serve(backend: tuple[str, int]) -> None:
    import uvloop  # noqa: F401  (the loop is set by main)

    splicer = Splicer()
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    listener.setblocking(False)
    print(f"Listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    print("READY", flush=True)
    tasks: set[asyncio.Task[None]] = set()
    while True:
        client, _ = await loop.sock_accept(listener)
        client.setblocking(False)
        task = loop.create_task(_serve_one(splicer, backend, client))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


# --- the measurement -------------------------------------------------------------------------


def _machine_cpu(result: dict[str, Any]) -> float:
    """Busy CPU seconds of the whole machine over a load run's window."""
    known = sum(group["total_s"] for group in result["cpu"].values())
    return float(known + result["other_cpu"] * result["elapsed_s"])


def measure(rounds: int, duration: float, conns: int) -> dict[str, Any]:
    from bench.proxies import Proxy
    from bench.run import PY, Backends, Processes, _cpus, check_proxy, loadgen

    proxy_cpus, load_cpus, _, _ = _cpus()
    args = ["--conns", str(conns), "--warmup", "1", "--duration", str(duration)]
    loads = {
        "64 B ping-pong": [*args, "--size", "64", "--window", "1"],
        "4 KiB ping-pong": [*args, "--size", "4096", "--window", "1"],
        "64 B, 16 in flight": [*args, "--size", "64", "--window", "16"],
    }
    procs = Processes()
    out: dict[str, Any] = {"rounds": rounds, "duration": duration, "conns": conns, "runs": []}
    with tempfile.TemporaryDirectory(prefix="wsgate-sockmap-") as work:
        try:
            backend = Backends(procs, 1, load_cpus, "raw")
            addr = backend.addrs[0]
            spliced = procs.spawn(
                [PY, "-m", "bench.sockmap", "serve", "--backend", f"{addr[0]}:{addr[1]}"],
                proxy_cpus,
                stdout=subprocess.PIPE,
            )
            from bench.run import _readline

            line = _readline(spliced, 20)
            if _readline(spliced, 20) != "READY":
                raise RuntimeError(f"the spliced proxy did not start: {line}")
            targets: dict[str, tuple[int, list[int]]] = {
                "sockmap": (int(line.rpartition(":")[2]), [spliced.pid])
            }
            for name in ("wsgate", "nginx"):
                running = procs.start_proxy(
                    Proxy(name, 1, proxy_cpus, backend.addrs, Path(work) / name)
                )
                targets[name] = (running.port, running.roots)
            out["check"] = {name: check_proxy(port) for name, (port, _) in targets.items()}
            for r in range(rounds):
                order = list(targets)
                order = order[r % len(order) :] + order[: r % len(order)]
                for load, load_args in loads.items():
                    direct = loadgen(
                        "throughput",
                        addr,
                        load_cpus,
                        load_args,
                        {"backend": backend.pids},
                        attempts=1,
                    )
                    base = _machine_cpu(direct) / max(1, direct["relayed"])
                    for name in order:
                        port, roots = targets[name]
                        res = loadgen(
                            "throughput",
                            ("127.0.0.1", port),
                            load_cpus,
                            load_args,
                            {"proxy": roots, "backend": backend.pids},
                            attempts=1,
                        )
                        relayed = max(1, res["relayed"])
                        out["runs"].append(
                            {
                                "round": r,
                                "load": load,
                                "proxy": name,
                                "relayed_per_s": res["relayed_per_s"],
                                "proxy_us": res["cpu"]["proxy"]["total_s"] / relayed * 1e6,
                                "machine_us": _machine_cpu(res) / relayed * 1e6,
                                "added_us": (_machine_cpu(res) / relayed - base) * 1e6,
                            }
                        )
                        print(json.dumps(out["runs"][-1]), file=sys.stderr, flush=True)
        finally:
            procs.stop_all()
    out["summary"] = summarise(out["runs"])
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Medians over the rounds, per load and proxy."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        table.setdefault(run["load"], {}).setdefault(run["proxy"], {})
    for load, proxies in table.items():
        for proxy in proxies:
            mine = [r for r in runs if r["load"] == load and r["proxy"] == proxy]
            proxies[proxy] = {
                key: round(statistics.median(r[key] for r in mine), 3)
                for key in ("relayed_per_s", "proxy_us", "machine_us", "added_us")
            }
    return table


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| load | proxy | relayed/s | proxy CPU µs/msg | machine CPU µs/msg | added µs/msg |",
        "|---|---|---|---|---|---|",
    ]
    for load, proxies in result["summary"].items():
        for proxy, s in proxies.items():
            lines.append(
                f"| {load} | {proxy} | {s['relayed_per_s']:,.0f} | {s['proxy_us']:.2f} | "
                f"{s['machine_us']:.2f} | {s['added_us']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("--backend", required=True)
    p_measure = sub.add_parser("measure")
    p_measure.add_argument("--rounds", type=int, default=5)
    p_measure.add_argument("--duration", type=float, default=3.0)
    p_measure.add_argument("--conns", type=int, default=100)
    p_measure.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        import uvloop

        host, _, port = args.backend.rpartition(":")
        uvloop.run(serve((host, int(port))))
        return 0
    result = measure(args.rounds, args.duration, args.conns)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["check"]))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
