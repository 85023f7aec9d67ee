"""Fixtures of the reliability probes, and the table of their figures at the end of the run."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from tests.reliability.common import REPORT, SOAK, BgLoop


@pytest.fixture
def bg() -> Iterator[BgLoop]:
    """A background loop for the test's backends."""
    loop = BgLoop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture(autouse=True, scope="session")
def _enough_descriptors() -> None:
    """Bursts of hundreds of clients and their backend connections live in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every figure the probes recorded, wsgate beside nginx where both were measured."""
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
