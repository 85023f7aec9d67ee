"""nginx's own test suite against wsgate: every file in expected.txt at its expected count.

Skips, with the reason, when the suite's directory (``$NGINX_TESTS``, default
``../shared/nginx-tests``) or Perl is absent.  ``make conformance`` prints the whole table.
"""

from __future__ import annotations

import shutil

import pytest

from tests.conformance import run

pytestmark = pytest.mark.timeout(1500)


def test_nginx_suite_files_reach_their_expected_counts() -> None:
    directory = run.tests_dir()
    if not directory.is_dir():
        pytest.skip(f"nginx's test suite is not at {directory} (set NGINX_TESTS=)")
    if shutil.which("perl") is None:
        pytest.skip("perl is not installed: nginx's harness is a Perl program")
    expected = run.read_expected()
    results = run.run(list(expected), expected=expected)
    table, ok = run.report(results, expected)
    print("\n" + table)
    below = [r.name for r in results if r.passed < expected[r.name].passed]
    assert ok, f"below the expected count: {below}\n{table}"
