"""From the raw results of :mod:`bench.run` to the figures: metrics, a Markdown table, a chart.

Each metric is computed for every proxy from the same run and compared with nginx (the ratio
column) and with the better of nginx and HAProxy (the column the issue's targets are about).
The bottleneck table says, for every load run, which side ran out of CPU: the proxy (its CPU
time over the window is close to the cores it was pinned to) or the load side (the load
generator and the backend on their own core), next to what the load side reaches with no
proxy at all.

``python -m bench.report [results.json] [--readme]`` rewrites results.md and chart.png from a
JSON file (and, with ``--readme``, the results block of docs/benchmark.md, as a full run does).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["bottleneck", "chart", "markdown", "metrics", "update_readme"]

#: The part of docs/benchmark.md that a full ``make bench`` rewrites.
README_START = "<!-- bench-results:start: make bench rewrites this part -->"
README_END = "<!-- bench-results:end -->"

NAMES = {"wsgate": "wsgate", "wsgate-pure": "wsgate (pure)", "nginx": "nginx", "haproxy": "HAProxy"}
COLOURS = {
    "wsgate": "#d62728",
    "wsgate-pure": "#ff9896",
    "nginx": "#2ca02c",
    "haproxy": "#1f77b4",
}
#: The builds of wsgate: each is compared with the rivals, never with the other.
WSGATES = ("wsgate", "wsgate-pure")
_KIB = {64: "64 B", 4096: "4 KiB", 65536: "64 KiB"}
#: CPUs used by unknown processes during a window above which the window is "disturbed".
DISTURBED = 0.25


def _size_label(size: int) -> str:
    return _KIB.get(size, f"{size} B")


@dataclass(frozen=True)
class Spec:
    key: str
    label: str
    unit: str
    better: str  # "lower" or "higher"
    target: float | None = None  # ratio to the better of nginx and HAProxy


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _cpu(run: Any) -> float | None:
    value = _get(run, "cpu", "proxy", "total_s")
    return float(value) if value is not None else None


def _per(numerator: float | None, denominator: Any, scale: float = 1.0) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / float(denominator) * scale


def _specs(results: dict[str, Any]) -> list[Spec]:
    s = results["settings"]
    conns, window = s["conns"], s["window"]
    ncpu = results["machine"].get("cpus") or 1
    out = [
        Spec(
            f"cpu_msg_{size}",
            f"proxy CPU per relayed message, {_size_label(size)} ({conns} conns, ping-pong)",
            "µs",
            "lower",
            1.0,
        )
        for size in s["sizes"]
    ]
    out += [
        Spec(
            "sat_1",
            f"relayed messages/s at saturation, 1 worker (64 B, {conns} conns × {window})",
            "msg/s",
            "higher",
            1.0,
        ),
        Spec(
            "sat_1_core",
            "  same, per second of proxy CPU (= measured rate ÷ proxy CPU utilisation)",
            "msg/s",
            "higher",
            1.0,
        ),
        Spec(
            "sat_n",
            f"relayed messages/s at saturation, {ncpu} workers (cores shared with the load)",
            "msg/s",
            "higher",
            1.0,
        ),
        Spec("hs_cpu", "proxy CPU per handshake (upgrade, 1 message, close)", "µs", "lower", 1.5),
        Spec("hs_rate", "handshakes/s, 1 worker", "1/s", "higher"),
    ]
    out += [
        Spec(f"mem_{n}", f"proxy memory (PSS) per idle connection at {n:,}", "KiB", "lower", 1.0)
        for n in s["idle"]
    ]
    out += [
        Spec(
            "lat_p50",
            f"added latency p50, ping-pong at {s['lat_rate']:g} round trips/s",
            "µs",
            "lower",
        ),
        Spec(
            "lat_p99",
            f"added latency p99, ping-pong at {s['lat_rate']:g} round trips/s",
            "µs",
            "lower",
        ),
    ]
    return out


def _value(results: dict[str, Any], proxy: str, key: str) -> float | None:
    run = results["runs"].get(proxy) or {}
    direct = results.get("direct") or {}
    if key.startswith("cpu_msg_"):
        t = _get(run, "throughput", key.removeprefix("cpu_msg_"))
        return _per(_cpu(t), _get(t, "relayed"), 1e6)
    if key == "sat_1":
        return _num(_get(run, "saturation_1", "relayed_per_s"))
    if key == "sat_1_core":
        t = run.get("saturation_1")
        return _per(_get(t, "relayed"), _cpu(t))
    if key == "sat_n":
        return _num(_get(run, "saturation_n", "relayed_per_s"))
    if key == "hs_cpu":
        t = run.get("handshake")
        return _per(_cpu(t), _get(t, "handshakes"), 1e6)
    if key == "hs_rate":
        return _num(_get(run, "handshake", "handshakes_per_s"))
    if key.startswith("mem_"):
        n = int(key.removeprefix("mem_"))
        for stage in _get(run, "idle", "stages") or []:
            # A stage counts when (almost) every connection opened; results.md lists failures.
            if stage["target"] == n and stage["open"] >= 0.99 * n:
                return float(stage["pss_per_conn_kib"])
        return None
    if key in ("lat_p50", "lat_p99"):
        field = "p50_us" if key == "lat_p50" else "p99_us"
        through, alone = _get(run, "latency", field), _get(direct, "latency", field)
        if through is None or alone is None:
            return None
        return float(through) - float(alone)
    raise KeyError(key)


def metrics(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure: values per proxy, ratios to nginx and to the better rival."""
    rows = []
    for spec in _specs(results):
        values = {p: _value(results, p, spec.key) for p in results["runs"]}
        w, n = values.get("wsgate"), values.get("nginx")
        rivals = [v for p, v in values.items() if p not in WSGATES and v is not None]
        best = None
        if rivals:
            best = min(rivals) if spec.better == "lower" else max(rivals)
        ratio_nginx = w / n if w is not None and n else None
        ratio_best = w / best if w is not None and best else None
        pure = values.get("wsgate-pure")
        ratio_best_pure = pure / best if pure is not None and best else None
        met = None
        if spec.target is not None and ratio_best is not None:
            met = ratio_best <= spec.target if spec.better == "lower" else ratio_best >= spec.target
        rows.append(
            {
                "key": spec.key,
                "label": spec.label,
                "unit": spec.unit,
                "better": spec.better,
                "values": values,
                "ratio_nginx": ratio_nginx,
                "ratio_best": ratio_best,
                "ratio_best_pure": ratio_best_pure,
                "target": spec.target,
                "met": met,
            }
        )
    hold = results.get("hold")
    if hold and hold.get("stages"):
        stage = hold["stages"][-1]
        mib = stage["pss_kib"] / 1024
        held = (
            stage["open"] >= stage["target"]
            and (hold.get("echo") or {}).get("echoed") == stage["open"]
        )
        rows.append(
            {
                "key": "hold",
                "label": f"wsgate total memory (PSS) holding {stage['target']:,} connections",
                "unit": "MiB",
                "better": "lower",
                "values": {"wsgate": round(mib, 1)},
                "ratio_nginx": None,
                "ratio_best": None,
                "target": 1024.0,
                "met": held and mib < 1024,
                "held": stage["open"],
                "echoed": (hold.get("echo") or {}).get("echoed"),
            }
        )
    return rows


def bottleneck(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Which side was out of CPU in each load run."""
    direct = results.get("direct") or {}
    rows = []
    runs: list[tuple[str, tuple[str, ...], tuple[str, ...], str]] = []
    for size in results["settings"]["sizes"]:
        runs.append(
            (
                f"{_size_label(size)} ping-pong",
                ("throughput", str(size)),
                ("throughput", str(size)),
                "relayed_per_s",
            )
        )
    runs.append(("64 B pipelined, 1 worker", ("saturation_1",), ("saturation",), "relayed_per_s"))
    runs.append(("handshakes, 1 worker", ("handshake",), ("handshake",), "handshakes_per_s"))
    runs.append(("64 B pipelined, N workers", ("saturation_n",), ("saturation",), "relayed_per_s"))
    for proxy, run in results["runs"].items():
        for label, path, direct_path, rate_key in runs:
            r = _get(run, *path)
            if not r:
                continue
            cpu = r["cpu"]
            proxy_util = cpu["proxy"]["utilisation"]
            # The load side: the load generator, the backend, and the kernel's softirq threads
            # (loopback packet processing deferred to ksoftirqd when the CPUs are saturated).
            load_util = sum(
                cpu.get(k, {}).get("utilisation", 0.0) for k in ("loadgen", "backend", "ksoftirqd")
            )
            alone = _get(direct, *direct_path, rate_key)
            workers = r.get("workers", 1)
            other = r.get("other_cpu") or 0.0
            if other > DISTURBED:
                verdict = f"**disturbed**: other work used {other:.2f} CPUs"
            elif workers > 1:
                verdict = (
                    f"shared cores: proxy {proxy_util:.2f} + load {load_util:.2f} of {workers} CPUs"
                )
            elif proxy_util >= 0.9:
                verdict = "proxy"
            elif load_util >= 0.9:
                verdict = "load side"
            else:
                verdict = "neither (round-trip bound)"
            rows.append(
                {
                    "proxy": proxy,
                    "run": label.replace("N workers", f"{workers} workers"),
                    "rate": r[rate_key],
                    "direct_rate": alone,
                    "proxy_cpu": proxy_util,
                    "load_cpu": round(load_util, 3),
                    "other_cpu": r.get("other_cpu"),
                    "bound_by": verdict,
                }
            )
    return rows


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if unit in ("msg/s", "1/s") or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _target(row: dict[str, Any]) -> str:
    t = row["target"]
    if t is None:
        return ""
    if row["key"] == "hold":
        return f"< {t:,.0f} MiB, all held"
    return f"{'≤' if row['better'] == 'lower' else '≥'} {t:g}×"


def _met(row: dict[str, Any]) -> str:
    return {True: "yes", False: "**no**", None: ""}[row["met"]]


def machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (
        f"{m['cpu']}, {m['cpus']} CPUs, {m['memory']} RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, uvloop {m['uvloop']}; {m['wsgate']} (commit {m['commit']}), "
        f"{m['nginx'] or 'no nginx'}, {m['haproxy'] or 'no HAProxy'}"
    )


def table(results: dict[str, Any]) -> str:
    """The main table: metric × proxies, ratios, target."""
    proxies = list(results["runs"])
    head = ["metric", "unit", *(NAMES.get(p, p) for p in proxies)]
    pure = "wsgate-pure" in proxies
    head += ["wsgate / nginx", "wsgate / best"]
    head += ["pure / best"] if pure else []
    head += ["target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results["metrics"]:
        cells = [row["label"].strip(), row["unit"]]
        cells += [_fmt(row["values"].get(p), row["unit"]) for p in proxies]
        cells += [_ratio(row["ratio_nginx"]), _ratio(row["ratio_best"])]
        cells += [_ratio(row.get("ratio_best_pure"))] if pure else []
        cells += [_target(row), _met(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bottleneck_table(results: dict[str, Any]) -> str:
    head = ["proxy", "run", "rate (/s)", "direct, no proxy (/s)", "proxy CPU", "load CPU"]
    head += ["other CPU", "bound by"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results["bottleneck"]:
        lines.append(
            "| "
            + " | ".join(
                [
                    NAMES.get(row["proxy"], row["proxy"]),
                    row["run"],
                    _fmt(row["rate"], "1/s"),
                    _fmt(row["direct_rate"], "1/s"),
                    f"{row['proxy_cpu']:.2f}",
                    f"{row['load_cpu']:.2f}",
                    _fmt(row.get("other_cpu")),
                    row["bound_by"],
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    parts = [
        "# wsgate benchmark: wsgate, nginx and HAProxy side by side\n",
        f"Generated {results['generated']} by `bench/run.py` in {results.get('seconds', 0):.0f} s"
        + (" (**smoke run**: tiny counts, the numbers mean nothing)" if s.get("smoke") else "")
        + ".\n",
        f"Machine: {machine_line(results)}. "
        f"Busy before the run (other work): {results.get('busy_at_start', 0):.2f} CPUs.\n",
        "Pinning: with 1 worker the proxy runs on CPU 0 and the load generator and echo "
        "backend on CPU 1; with one worker per core all share all CPUs. "
        f"Windows of {s['duration']:g} s after {s['warmup']:g} s of warm-up. Ratios compare "
        "wsgate with nginx and with the better of nginx and HAProxy (*best*); *wsgate (pure)* "
        "is wsgate with `WSGATE_PURE=1` (its pure-Python fallback, as on a machine without a "
        "compiler), *pure / best* its ratio to the same best; *met* is the compiled build's.\n",
        table(results),
    ]
    for name, why in (results.get("skipped") or {}).items():
        parts.append(f"Skipped {name}: {why}.\n")
    for name, run in results["runs"].items():
        if run.get("check") not in (None, "ok"):
            parts.append(f"{NAMES.get(name, name)} failed its check: {run['check']}.\n")
        for step, error in (run.get("errors") or {}).items():
            parts.append(f"{NAMES.get(name, name)}, {step}: failed ({error.strip()[-300:]}).\n")
    for step, error in (results.get("errors") or {}).items():
        parts.append(f"{step}: failed ({error.strip()[-300:]}).\n")
    idle = _get(next(iter(results["runs"].values()), {}), "idle") or {}
    plan = idle.get("plan")
    if plan:
        parts.append(
            f"Idle connections: one process may open {plan['fd_limit']:,} files here (hard "
            f"`RLIMIT_NOFILE`), so each proxy ran {_n(plan['workers'], 'worker')} for this "
            f"figure (HAProxy: {_n(plan['workers'], 'process', 'processes')} on one port), "
            f"with {_n(plan['backends'], 'backend process', 'backend processes')} and "
            f"{_n(plan['clients'], 'client process', 'client processes')}, all pinned as above. "
            "PSS is summed over the proxy's processes. The baseline subtracted is read with "
            "no connection open, after a warm-up that opened and closed "
            f"{idle.get('warmup', 0):,} connections ({idle.get('warmup', 0) // plan['workers']} "
            "per worker, the same for every proxy), so that what a worker allocates once, on "
            "its first connections, is not counted per connection.\n"
        )
        cold = []
        for name, run in results["runs"].items():
            stages = _get(run, "idle", "stages") or []
            figures = [
                f"{s['cold_pss_per_conn_kib']:.2f} KiB at {s['target']:,}"
                for s in stages
                if "cold_pss_per_conn_kib" in s
            ]
            if figures:
                cold.append(f"{NAMES.get(name, name)} {', '.join(figures)}")
        if cold:
            parts.append(
                "Against the baseline read before the warm-up instead: " + "; ".join(cold) + ".\n"
            )
        for name, run in results["runs"].items():
            for stage in _get(run, "idle", "stages") or []:
                if stage.get("failed"):
                    parts.append(
                        f"{NAMES.get(name, name)}: {stage['failed']} of {stage['target']:,} idle "
                        f"connections failed to open ({stage.get('errors') or ''}).\n"
                    )
    hold = results.get("hold")
    if hold and hold.get("stages"):
        st = hold["stages"][-1]
        parts.append(
            f"Holding {st['target']:,}: {st['open']:,} opened in {st['seconds']} s "
            f"({st['failed']} failed) over {_n(hold['plan']['workers'], 'wsgate worker')}, "
            f"{st['pss_kib'] / 1024:.0f} MiB PSS in all; after the hold, "
            f"{(hold.get('echo') or {}).get('echoed', 0):,} echoed one message "
            f"({(hold.get('echo') or {}).get('lost', 0)} connections lost).\n"
        )
    if results.get("static"):
        from bench.static import markdown as static_markdown

        parts.append(static_markdown(results["static"]))
    if results.get("h2"):
        from bench.http2 import markdown as h2_markdown

        parts.append(h2_markdown(results["h2"]))
    if results.get("syscalls"):
        from bench.syscalls import markdown as syscalls_markdown

        parts.append(syscalls_markdown(results["syscalls"]))
    if results.get("features"):
        from bench.feature_ab import markdown as features_markdown

        parts.append(features_markdown(results["features"]))
    parts += [
        "## Bottleneck check\n",
        "CPU is the fraction of one CPU used over the window (from /proc/PID/stat). *Load* "
        "is the load generator plus the echo backend (and the kernel's ksoftirqd threads, "
        "which process loopback packets when both CPUs are saturated). *Other* is the busy "
        "time of the whole machine (/proc/stat) that none of these used: anything well above "
        "0 means something else ran during the measurement. *Direct* is the same load with "
        "no proxy (load generator to backend, on the load CPU).\n",
        bottleneck_table(results),
        "## Definitions\n",
        "- *Relayed message*: one WebSocket message through the proxy in one direction; an "
        "echo is two. Counted at the load generator.\n"
        "- *Ping-pong*: each connection keeps one message in flight. *Pipelined*: "
        f"{s['window']} in flight per connection.\n"
        "- *Handshake*: connect, upgrade (101), one 64-byte message and its echo, Close and "
        "its reply, TCP close.\n"
        "- *Added latency*: percentile of the round-trip time through the proxy minus the same "
        f"percentile with no proxy, {s['lat_conns']} connections.\n",
    ]
    return "\n".join(parts)


def readme_block(results: dict[str, Any]) -> str:
    """The latest figures for docs/benchmark.md: machine, the main table, the chart."""
    notes = []
    disturbed = [
        f"{NAMES.get(r['proxy'], r['proxy'])} {r['run']}"
        for r in results["bottleneck"]
        if str(r["bound_by"]).startswith("**disturbed")
    ]
    if disturbed:
        notes.append(
            "Other work on the machine used more than a quarter of a CPU during: "
            + ", ".join(disturbed)
            + " (three attempts each; the least disturbed is kept)."
        )
    return "\n".join(
        [
            README_START,
            f"Measured {results['generated']} on {machine_line(results)}; "
            f"`make bench` took {results.get('seconds', 0) / 60:.0f} minutes.",
            "",
            table(results),
            *notes,
            "",
            "![wsgate, nginx and HAProxy: each figure, with its ratio to nginx]"
            "(../bench/results/chart.png)",
            README_END,
        ]
    )


def update_readme(results: dict[str, Any], readme: Path) -> bool:
    """Replace the block between the markers in ``readme``; False if it has no markers."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    readme.write_text(text[:start] + readme_block(results) + text[end + len(README_END) :])
    return True


def chart(results: dict[str, Any], path: Path) -> bool:
    """One small bar chart per metric (values, and the ratio to nginx above each bar).
    Returns False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _pos: f"{v:,.0f}" if abs(v) >= 100 else f"{v:g}")
    rows = list(results["metrics"])
    proxies = list(results["runs"])
    cols = 4
    nrows = max(1, -(-len(rows) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(16, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(rows) :]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows, strict=False):
        ax.yaxis.set_major_formatter(plain)
        if row["key"] == "hold":
            _hold_panel(ax, row)
            continue
        values = [row["values"].get(p) for p in proxies]
        heights = [v or 0.0 for v in values]
        bars = ax.bar(
            [NAMES.get(p, p) for p in proxies],
            heights,
            color=[COLOURS.get(p, "grey") for p in proxies],
        )
        nginx = row["values"].get("nginx")
        for bar, v in zip(bars, values, strict=True):
            if v is None:
                continue
            text = _fmt(v, row["unit"])
            if nginx:
                text += f"\n{v / nginx:.2f}×"
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        label = row["label"].strip()
        ax.set_title(
            _wrap(label, 42) + f"\n({row['unit']}, {row['better']} is better)", fontsize=8.5
        )
        ax.tick_params(labelsize=8)
        top = max(heights) if any(heights) else 1.0
        ax.set_ylim(min(0.0, min(heights) * 1.3), top * 1.35 if top > 0 else 1.0)
    fig.suptitle(
        "wsgate vs nginx vs HAProxy (ratio to nginx under each value)\n"
        + _wrap(machine_line(results), 150),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return True


def _hold_panel(ax: Any, row: dict[str, Any]) -> None:
    """wsgate's total memory holding the most connections, against the 1 GiB target."""
    value = row["values"].get("wsgate") or 0.0
    bar = ax.bar(["wsgate"], [value], color=COLOURS["wsgate"], width=0.4)[0]
    ax.annotate(
        f"{value:,.0f} MiB",
        (bar.get_x() + bar.get_width() / 2, value),
        ha="center",
        va="bottom",
        fontsize=8,
    )
    target = row["target"] or 1024.0
    ax.axhline(target, color="black", linestyle="--", linewidth=1)
    ax.annotate(
        f"target < {target:,.0f} MiB",
        (0.02, target),
        xycoords=("axes fraction", "data"),
        va="bottom",
        fontsize=8,
    )
    ax.set_ylim(0, max(value, target) * 1.3)
    ax.set_title(_wrap(row["label"], 42) + "\n(MiB, lower is better)", fontsize=8.5)
    ax.tick_params(labelsize=8)


def _n(count: int, word: str, plural: str = "") -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Rewrite results.md and chart.png from a results.json (and docs/benchmark.md's block
    with ``--readme``)."""
    args = sys.argv[1:] if argv is None else argv
    readme = "--readme" in args
    args = [a for a in args if a != "--readme"]
    path = Path(args[0]) if args else Path(__file__).parent / "results" / "results.json"
    results = json.loads(path.read_text())
    results["metrics"] = metrics(results)
    results["bottleneck"] = bottleneck(results)
    path.write_text(json.dumps(results, indent=1) + "\n")
    (path.parent / "results.md").write_text(markdown(results))
    chart(results, path.parent / "chart.png")
    if readme:
        update_readme(results, Path(__file__).resolve().parent.parent / "docs" / "benchmark.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
