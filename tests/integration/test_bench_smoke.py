"""A smoke run of ``bench/`` (``make bench``) so that the benchmark keeps working.

``python -m bench.run --smoke`` runs every figure with tiny counts (10 connections, windows
of 0.3 s, 150 idle connections) against wsgate and whichever of nginx and HAProxy are
installed, and writes its results into a temporary directory. These tests check only that the
outputs are produced and well formed: a benchmark is not a test, so nothing here compares a
time, a rate or a memory figure with a threshold.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


def _installed(name: str) -> bool:
    return shutil.which(name) is not None or os.access(f"/usr/sbin/{name}", os.X_OK)


PROXIES = ["wsgate", "wsgate-pure"] + [name for name in ("nginx", "haproxy") if _installed(name)]
#: Metrics every proxy that ran must have a number for (see bench/report.py).
PER_PROXY = [
    "cpu_msg_64",
    "cpu_msg_4096",
    "cpu_msg_65536",
    "sat_1",
    "sat_1_core",
    "sat_n",
    "hs_cpu",
    "hs_rate",
    "mem_50",
    "mem_150",
    "lat_p50",
    "lat_p99",
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One smoke run for the whole module: its output directory and results.json."""
    if len(os.sched_getaffinity(0)) < 1 or shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is needed to pin the proxies")
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)]
    cmd += ["--proxies", ",".join(PROXIES)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    return out, results


def _metric(results: dict[str, Any], key: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [row for row in results["metrics"] if row["key"] == key]
    assert len(rows) == 1, f"metric {key} missing"
    return rows[0]


def test_results_json_is_complete(smoke: tuple[Path, dict[str, Any]]) -> None:
    _, results = smoke
    assert results["settings"]["smoke"] is True
    machine = results["machine"]
    for key in ("cpu", "cpus", "kernel", "python", "wsgate", "nginx", "haproxy"):
        assert key in machine
    assert machine["cpu"] and machine["kernel"] and machine["python"]
    assert sorted(results["runs"]) == sorted(PROXIES)
    for name, run in results["runs"].items():
        assert run["check"] == "ok", (name, run["check"])
    for row in results["metrics"]:
        assert set(row) >= {"key", "label", "unit", "values", "ratio_nginx", "target", "met"}
    for row in results["bottleneck"]:
        assert row["proxy"] in PROXIES
        assert 0 <= row["proxy_cpu"] and 0 <= row["load_cpu"]


def test_wsgate_measured(smoke: tuple[Path, dict[str, Any]]) -> None:
    _, results = smoke
    for key in PER_PROXY:
        value = _metric(results, key)["values"]["wsgate"]
        assert isinstance(value, float | int), (key, value)
    assert results["direct"]["throughput"]["64"]["echoes"] > 0
    hold = _metric(results, "hold")
    assert hold["held"] >= results["settings"]["hold"]
    assert hold["echoed"] == hold["held"]


def test_pure_build_measured(smoke: tuple[Path, dict[str, Any]]) -> None:
    """wsgate-pure is wsgate on its fallback: its version line says so, every figure has a
    number, and the table has its ratio column."""
    out, results = smoke
    version = results["runs"]["wsgate-pure"]["version"]
    assert version.endswith("(pure Python (WSGATE_PURE))"), version
    assert results["runs"]["wsgate"]["version"].endswith("(compiled)") or os.environ.get("CC"), (
        results["runs"]["wsgate"]["version"]
    )
    for key in PER_PROXY:
        row = _metric(results, key)
        assert isinstance(row["values"]["wsgate-pure"], float | int), (key, row["values"])
        if "nginx" in PROXIES or "haproxy" in PROXIES:
            assert isinstance(row["ratio_best_pure"], float), (key, row)
    header = next(x for x in (out / "results.md").read_text().splitlines() if x.startswith("| "))
    assert "| wsgate (pure) |" in header and "| pure / best |" in header


def test_syscalls_counted(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, results = smoke
    sc = results["syscalls"]
    assert sc is not None, results.get("errors")
    if sc.get("skipped"):
        pytest.skip(sc["skipped"])
    assert sorted(sc["proxies"]) == sorted(PROXIES)
    for name, counts in sc["proxies"].items():
        hs, msg = counts["handshake"], counts["message"]
        assert hs["units"] == results["settings"]["syscall_handshakes"]
        assert msg["units"] == 2 * results["settings"]["syscall_messages"]
        # A relayed message is at least a read and a write; a handshake an accept, a
        # connect and a close of each socket, and far more than one message.
        assert msg["per_unit"] >= 2, (name, msg)
        assert hs["per_unit"] > msg["per_unit"] + 4, (name, hs)
        assert hs["by_call"].get("connect", 0) >= 1, (name, hs["by_call"])
        assert sum(hs["by_call"].values()) == pytest.approx(hs["per_unit"], abs=0.1)
    assert "## System calls" in (out / "results.md").read_text()


def test_strace_summary_parsed() -> None:
    """strace -c's table as strace 6.1 prints it: calls per system call, errors or not."""
    from bench.syscalls import parse_summary

    text = """% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.00    0.000400           4       100           epoll_wait
 30.00    0.000300           3       100           read
 20.00    0.000200           2       100         7 accept4
 10.00    0.000100           1        50           write
------ ----------- ----------- --------- --------- ----------------
100.00    0.001000           2       350         7 total
"""
    assert parse_summary(text) == {"epoll_wait": 100, "read": 100, "accept4": 100, "write": 50}
    assert parse_summary("") == {}


@pytest.mark.parametrize("proxy", ["nginx", "haproxy"])
def test_compared_with(smoke: tuple[Path, dict[str, Any]], proxy: str) -> None:
    if proxy not in PROXIES:
        pytest.skip(f"{proxy} is not installed (make bench installs it as root)")
    _, results = smoke
    for key in PER_PROXY:
        row = _metric(results, key)
        assert isinstance(row["values"][proxy], float | int), (key, row["values"])
    if proxy == "nginx":
        assert isinstance(_metric(results, "cpu_msg_64")["ratio_nginx"], float)


def test_markdown_table(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, results = smoke
    text = (out / "results.md").read_text()
    assert results["machine"]["cpu"] in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = lines[0]
    for column in ("metric", "wsgate", "wsgate / nginx", "target"):
        assert f"| {column} |" in header
    width = header.count("|")
    metric_rows = [line for line in lines if line.count("|") == width]
    for row in results["metrics"]:
        assert any(line.startswith(f"| {row['label'].strip()} |") for line in metric_rows)
    assert "## Bottleneck check" in text


def test_chart(smoke: tuple[Path, dict[str, Any]]) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (pip install -e '.[bench]')")
    out, _ = smoke
    data = (out / "chart.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")


def test_static_files_measured(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, results = smoke
    st = results["static"]
    for name in ["wsgate"] + (["nginx"] if "nginx" in PROXIES else []):
        for fname in st["files"]:
            r = st["throughput"][name][fname]
            assert r["requests"] > 0 and r["errors"] == [], (name, fname, r)
            assert isinstance(r["cpu_per_request_us"], float), (name, fname, r)
        m = st["memory"][name]
        assert m["ok_heads"] == m["clients"] and m["failed"] == 0, (name, m)
        assert m["received"] > 0 and m["worker_rss_peak_kib"] > 0, (name, m)
    assert "## Static files" in (out / "results.md").read_text()


def test_http2_measured(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, results = smoke
    h2 = results["h2"]
    assert h2 is not None, results.get("errors")
    ws = h2["websocket"]
    assert ws["check"] == "ok"
    conns = results["settings"]["conns"]
    for size in (64, 4096):
        for key in (f"h1-{conns}x1-{size}", f"h2-{conns}x1-{size}", f"h2-{conns // 10}x10-{size}"):
            r = ws["best"][key]
            assert r["echoes"] > 0 and r["lost_conns"] == 0, (key, r)
            assert isinstance(r["cpu_per_message_us"], float), (key, r)
    assert "## HTTP/2" in (out / "results.md").read_text()
    if shutil.which("h2load") is None:
        assert h2["requests"] is None and "h2load" in h2["skipped"]
        pytest.skip("h2load is not installed (make bench installs nghttp2-client as root)")
    for name in ["wsgate"] + (["nginx"] if "nginx" in PROXIES else []):
        for what in ("static", "proxy", "static-h1", "proxy-h1"):
            r = h2["requests"]["best"][name][what]
            assert r["succeeded"] == r["requests"] > 0, (name, what, r)
            assert isinstance(r["cpu_per_request_us"], float), (name, what, r)


def test_feature_cost_measured(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, results = smoke
    features = results["features"]
    assert features is not None, results.get("errors")
    assert list(features["variants"]) == ["off", "pings", "limits", "pings+limits"]
    assert [s["size"] for s in features["sizes"]] == [64, 4096]
    for s in features["sizes"]:
        assert len(s["rounds"]) == results["settings"]["feature_rounds"]
        for name in features["variants"]:
            assert all(row[name] > 0 for row in s["rounds"]), (name, s["rounds"])
            v = s["variants"][name]
            low, high = v["ratio_to_off_ci95"]
            assert low <= v["ratio_to_off"] <= high, (name, v)
    assert "## What the WebSocket features cost" in (out / "results.md").read_text()


def test_feature_cost_ratio_and_interval() -> None:
    """The figure is the ratio of mean CPU per message, and its bootstrap interval closes
    on it when every round says the same."""
    from bench.feature_ab import _interval, _ratio

    rows = [{"off": 10.0 + r, "on": 1.1 * (10.0 + r)} for r in range(8)]
    assert _ratio(rows, "on") == pytest.approx(1.1)
    assert _interval(rows, "on") == pytest.approx((1.1, 1.1))
    noisy = [{"off": 10.0, "on": 9.0}, {"off": 10.0, "on": 13.0}] * 4
    low, high = _interval(noisy, "on")
    assert _ratio(noisy, "on") == pytest.approx(1.1)
    assert low < 1.1 < high and high - low > 0.1
