"""What issue 15's WebSocket features cost in CPU per relayed message, as paired A/B runs.

``make bench``'s relay figure swings by up to 20 % between runs of one configuration on this
machine (a shared VM: the CPU's speed changes with its neighbours' work), more than the
features cost, so two separate runs (features off, then on) cannot show a 5 % difference.
This part cancels the drift instead of hoping for a quiet machine:

* one wsgate per variant (features off, keepalive pings, limits, pings and limits), each one
  worker pinned to the proxy CPU, all in front of the same echo backend, all started at once;
* one load generator (this process, on the load CPU) holding ``conns`` upgraded connections
  to each, all idle but those of the variant being measured: the same 1-message-in-flight
  ping-pong as the relay figure (:mod:`bench.loadgen`'s ``throughput`` with window 1);
* ``rounds`` rounds; in each, every variant runs a ``slice`` of ``seconds``, in an order
  rotated from round to round (a Latin square, so no variant is always first or last);
* CPU is the worker's on-CPU time from ``/proc/PID/task/TID/schedstat`` (nanoseconds, user
  and kernel together), so slices of a second are exact; messages are counted by the client.

Each round measures every variant seconds apart, on the same machine state. The figure is a
variant's mean CPU per message over the rounds divided by that of "off", with a 95 %
bootstrap interval over the rounds (resampled whole); a variant's cost is ``ratio - 1``.
An A/A run (``--variants off,off-again``) shows the resolution: on this machine, 40 rounds of
1 s read 0.989 [0.932, 1.047] for two identical wsgates.

    .venv/bin/python -m bench.feature_ab [--sizes 64,4096] [--rounds 40] [--seconds 1]

``bench/run.py --parts features`` runs it and puts the figures in results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from bench.loadgen import Target, Upgrading, _open_all
from bench.procstat import on_cpu_ns
from bench.proxies import WSGATE, Proxy, Running
from bench.run import Backends, Processes, _cpus, _log
from bench.wsproto import client_frame, server_frame

#: Location directives of each variant; the limits are never reached by this load.
_PINGS = "websocket_ping_interval 30s both; websocket_ping_timeout 30s;"
_LIMITS = (
    "websocket_max_message_size 1m both; websocket_max_frame_size 1m both; "
    "websocket_message_rate 1000000r/s burst=1000000 both;"
)
_PURE = {"WSGATE_PURE": "1"}
#: Each variant's location directives and environment.
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "off": ("", {}),
    "pings": (_PINGS, {}),
    "limits": (_LIMITS, {}),
    "pings+limits": (f"{_PINGS} {_LIMITS}", {}),
    # A second wsgate with the features off: an A/A run (``--variants off,off-again``) shows
    # what difference the method reports when there is none, i.e. its resolution.
    "off-again": ("", {}),
    # The pure-Python frame scanner (issue 16's compiled one against it: ``--window 16``
    # makes reads hold several frames, which is when the scanner runs).
    "pure": ("", _PURE),
    # Tunnels kept on the event loop's transports (issue 16's compiled relay against them).
    "loop-relay": ("", {"WSGATE_LOOP_RELAY": "1"}),
    "pure+pings+limits": (f"{_PINGS} {_LIMITS}", _PURE),
}
#: Seconds of warm-up before each slice, and of each slice.
WARMUP = 0.2
SLICE = 1.0
#: The variants measured unless told otherwise.
DEFAULT = ("off", "pings", "limits", "pings+limits")


class _Echoes:
    """The messages one variant's connections have had echoed; ``on``: send the next."""

    def __init__(self, size: int) -> None:
        self.frame = client_frame(size)
        self.reply_len = len(server_frame(size))
        self.count = 0
        self.on = False
        self.waiting = 0  # connections with a message in flight


class _PingPong(Upgrading):
    """A message sent for each echo while its variant is on (``window`` in flight, see
    :func:`_slice`); none after the echoes when it is off."""

    def __init__(self, request: bytes, echoes: _Echoes) -> None:
        super().__init__(request)
        self.echoes = echoes
        self.rx = 0

    def send(self, count: int = 1) -> None:
        """``count`` messages in one write (so the proxy reads them together, as the
        relay figures' load generator sends them)."""
        assert self.transport is not None
        self.echoes.waiting += count
        self.transport.write(self.echoes.frame * count)

    def ws_data(self, data: bytes) -> None:
        e = self.echoes
        got, self.rx = divmod(self.rx + len(data), e.reply_len)
        e.count += got
        e.waiting -= got
        if e.on and got:
            self.send(got)


async def _slice(
    conns: list[_PingPong],
    echoes: _Echoes,
    workers: list[int],
    warmup: float,
    seconds: float,
    window: int,
) -> tuple[int, int]:
    """Run one variant for ``warmup`` + ``seconds`` with ``window`` messages in flight on
    each connection: (messages relayed, worker CPU ns)."""
    echoes.on = True
    for c in conns:
        c.send(window)
    await asyncio.sleep(warmup)
    n0, t0 = echoes.count, on_cpu_ns(workers)
    await asyncio.sleep(seconds)
    n1, t1 = echoes.count, on_cpu_ns(workers)
    echoes.on = False
    deadline = time.monotonic() + 10
    while echoes.waiting and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    if echoes.waiting:
        raise RuntimeError(f"{echoes.waiting} echoes never came back")
    return 2 * (n1 - n0), t1 - t0  # each echo is two relayed messages, one each way


async def measure(
    targets: dict[str, tuple[int, list[int]]],
    size: int,
    conns: int,
    rounds: int,
    warmup: float,
    seconds: float,
    window: int = 1,
) -> dict[str, Any]:
    """Every variant's CPU per message in each round, and each one's ratio to "off"."""
    names = list(targets)
    sets: dict[str, tuple[list[_PingPong], _Echoes]] = {}
    for name, (port, _) in targets.items():
        target = Target("127.0.0.1", port, [])
        echoes = _Echoes(size)
        opened, failed = await _open_all(
            target, conns, lambda t=target, e=echoes: _PingPong(t.request, e)
        )
        if failed:
            raise RuntimeError(f"{name}: {failed} of {conns} connections failed to upgrade")
        sets[name] = (cast(list[_PingPong], opened), echoes)
    per_round: list[dict[str, float]] = []
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        row: dict[str, float] = {}
        for name in order:
            flows, echoes = sets[name]
            relayed, ns = await _slice(flows, echoes, targets[name][1], warmup, seconds, window)
            row[name] = ns / 1000 / relayed
        per_round.append(row)
    for flows, _ in sets.values():
        for c in flows:
            assert c.transport is not None
            c.transport.abort()
    out: dict[str, Any] = {"size": size, "rounds": per_round, "variants": {}}
    for name in names:
        us = [row[name] for row in per_round]
        low, high = _interval(per_round, name)
        out["variants"][name] = {
            "us_per_message_mean": round(statistics.fmean(us), 2),
            "us_per_message_min": round(min(us), 2),
            "us_per_message_max": round(max(us), 2),
            "ratio_to_off": round(_ratio(per_round, name), 4),
            "ratio_to_off_ci95": [round(low, 4), round(high, 4)],
        }
    return out


def _ratio(rows: list[dict[str, float]], name: str) -> float:
    """The variant's mean CPU per message over the rounds, divided by that of "off"."""
    return statistics.fmean(r[name] for r in rows) / statistics.fmean(r["off"] for r in rows)


def _interval(rows: list[dict[str, float]], name: str, n: int = 2000) -> tuple[float, float]:
    """A 95 % bootstrap interval of :func:`_ratio`: the rounds resampled with replacement
    ``n`` times (a round keeps its variants together, so drift between rounds cancels)."""
    rng = random.Random(15)
    ratios = sorted(_ratio(rng.choices(rows, k=len(rows)), name) for _ in range(n))
    return ratios[int(0.025 * n)], ratios[int(0.975 * n) - 1]


def run(
    sizes: tuple[int, ...],
    conns: int,
    rounds: int,
    warmup: float = WARMUP,
    seconds: float = SLICE,
    variants: tuple[str, ...] = DEFAULT,
    window: int = 1,
) -> dict[str, Any]:
    """Start the backend and one wsgate per variant, measure every size, stop them all."""
    proxy_cpus, load_cpus, _, _ = _cpus()
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(c) for c in load_cpus.split(",")})
    procs = Processes()
    results: dict[str, Any] = {
        "conns": conns,
        "rounds": rounds,
        "warmup_s": warmup,
        "slice_s": seconds,
        "window": window,
        "variants": {name: VARIANTS[name][0] for name in variants},
        "environment": {name: VARIANTS[name][1] for name in variants if VARIANTS[name][1]},
        "sizes": [],
    }
    with tempfile.TemporaryDirectory(prefix="wsgate-feature-ab-") as tmp:
        try:
            backend = Backends(procs, 1, load_cpus)
            targets: dict[str, tuple[int, list[int]]] = {}
            running: list[Running] = []
            for i, name in enumerate(variants):
                proxy = Proxy(WSGATE, 1, proxy_cpus, backend.addrs, Path(tmp) / f"v{i}")
                proxy.extra, proxy.env = VARIANTS[name]
                r = procs.start_proxy(proxy)
                running.append(r)
                targets[name] = (r.port, r.roots)
            for size in sizes:
                _log(f"features A/B: {size} B, {rounds} rounds of {len(variants)} variants")
                results["sizes"].append(
                    asyncio.run(measure(targets, size, conns, rounds, warmup, seconds, window))
                )
        finally:
            procs.stop_all()
            os.sched_setaffinity(0, before)  # bench/run.py goes on with its other parts
    return results


def markdown(res: dict[str, Any]) -> str:
    """The features part of results.md."""
    names = list(res["variants"])
    lines = [
        "## What the WebSocket features cost (paired A/B, `bench/feature_ab.py`)\n",
        f"One wsgate worker per variant on the proxy CPU, {res['conns']} connections each "
        f"with {res['window']} message(s) in flight, {res['rounds']} rounds of a "
        f"{res['slice_s']} s slice per variant in rotated order; worker CPU from "
        "schedstat. *Cost* is the variant's mean CPU per message over the off variant's, "
        "with a 95 % bootstrap interval over the rounds.\n",
        "| size | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for s in res["sizes"]:
        cells = []
        for name in names:
            v = s["variants"][name]
            if name == "off":
                cells.append(f"{v['us_per_message_mean']} µs")
                continue
            low, high = v["ratio_to_off_ci95"]
            cells.append(
                f"{v['us_per_message_mean']} µs, {100 * (v['ratio_to_off'] - 1):+.1f} % "
                f"[{100 * (low - 1):+.1f}, {100 * (high - 1):+.1f}]"
            )
        lines.append(f"| {s['size']} B | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--sizes", default="64,4096")
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--warmup", type=float, default=WARMUP)
    p.add_argument("--seconds", type=float, default=SLICE)
    p.add_argument(
        "--variants",
        default=",".join(DEFAULT),
        help=f"of {', '.join(VARIANTS)}; 'off' is always measured",
    )
    p.add_argument(
        "--window", type=int, default=1, help="messages in flight per connection (default 1)"
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    sizes = tuple(int(x) for x in a.sizes.split(",") if x)
    variants = tuple(dict.fromkeys(["off", *(v for v in a.variants.split(",") if v)]))
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    results = run(sizes, a.conns, a.rounds, a.warmup, a.seconds, variants, a.window)
    text = json.dumps(results, indent=1)
    if a.json:
        a.json.write_text(text + "\n")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
