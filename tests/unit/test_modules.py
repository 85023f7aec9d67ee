"""``wsgate -V``'s configure arguments follow the directive table, and the conformance
runner counts TAP output strictly."""

from __future__ import annotations

import re

from tests.conformance.run import parse_tap
from wsgate.config import modules


def test_arguments_name_exactly_the_modules_the_table_implements() -> None:
    args = modules.configure_arguments().split()
    for module, directive in modules._DEFAULT_ON:
        assert (f"--without-{module}" in args) is not modules.built_with(directive), module
    for module, directive in modules._DEFAULT_OFF:
        assert (f"--with-{module}" in args) is modules.built_with(directive), module


def test_known_modules_are_reported_as_nginx_tests_reads_them() -> None:
    text = modules.version_lines("wsgate/0")
    # lib/Test/Nginx.pm's has_module() regexes for modules wsgate implements today
    assert re.search(r"(?s)^(?!.*--without-http_proxy_module)", text)
    assert re.search(r"(?s)^(?!.*--without-http_map_module)", text)
    assert "--with-http_realip_module" in text and "--with-http_ssl_module" in text
    # and for one it does not have
    assert "--without-http_fastcgi_module" in text
    # has_version() reads the nginx release whose behaviour wsgate follows
    assert re.search(r"nginx version: nginx/([0-9.]+)", text).group(1) == modules.NGINX_BEHAVIOUR


def test_tap_counting_is_strict() -> None:
    out = "\n".join(
        [
            "1..5",
            "ok 1 - good",
            "not ok 2 - bad",
            "not ok 3 - later # TODO not yet",
            "ok 4 - fixed # TODO not yet",
            "ok 5 # skip no ssl",
        ]
    )
    res = parse_tap("x.t", out)
    assert (res.planned, res.passed, res.todo_failed) == (5, 3, 1)
    assert res.failed == ["2 bad"]
    skipped = parse_tap("y.t", "1..0 # SKIP no rewrite available\n")
    assert skipped.skipped_file == "no rewrite available" and skipped.passed == 0


def test_docs_conformance_table_is_current() -> None:
    """docs/conformance.md publishes expected.txt's floors (`run.py --published`)."""
    from pathlib import Path

    from tests.conformance.run import published, read_expected

    doc = (Path(__file__).parents[2] / "docs" / "conformance.md").read_text()
    summary, table = published(read_expected()).split("\n\n", 1)
    assert summary in doc and table in doc, "regenerate: tests/conformance/run.py --published"
