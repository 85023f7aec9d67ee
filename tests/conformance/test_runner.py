"""The conformance runner's second run: a file below its count (or timed out) runs once more,
alone; the better run counts and says so; a real regression, below twice, still fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance import run


def fake_runs(monkeypatch: pytest.MonkeyPatch, counts: dict[str, list[int]]) -> list[str]:
    """``run_file`` answers each file with the next of its pass counts; returns the calls."""
    calls: list[str] = []

    def run_file(directory: Path, name: str, binary: str) -> run.Result:
        calls.append(name)
        passed = counts[name].pop(0)
        failed = [] if passed == 8 else ["4 resolver"]
        return run.Result(name, planned=8, passed=passed, failed=failed)

    monkeypatch.setattr(run, "run_file", run_file)
    monkeypatch.setattr(run, "tests_dir", lambda: Path("/nonexistent"))
    monkeypatch.setattr(run, "wsgate_binary", lambda: "wsgate")
    return calls


EXPECTED = {"a.t": run.Expected("a.t", 8, 8), "b.t": run.Expected("b.t", 8, 8)}


def test_below_then_whole_counts_the_second_run(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_runs(monkeypatch, {"a.t": [7, 8], "b.t": [8]})
    results = run.run(["a.t", "b.t"], jobs=1, expected=EXPECTED)
    assert sorted(calls) == ["a.t", "a.t", "b.t"]
    assert [r.passed for r in results] == [8, 8]
    assert "second run: the first failed: 4 resolver after 7 passed" in results[0].crashed
    assert run.report(results, EXPECTED)[1]


def test_below_twice_keeps_the_first_and_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_runs(monkeypatch, {"a.t": [7, 7], "b.t": [8]})
    results = run.run(["a.t", "b.t"], jobs=1, expected=EXPECTED)
    assert results[0].passed == 7 and results[0].crashed == ""
    assert not run.report(results, EXPECTED)[1]


def test_without_expected_only_a_timeout_runs_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_runs(monkeypatch, {"a.t": [7], "b.t": [8]})
    assert [r.passed for r in run.run(["a.t", "b.t"], jobs=1)] == [7, 8]
    assert sorted(calls) == ["a.t", "b.t"]
