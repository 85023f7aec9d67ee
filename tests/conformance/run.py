"""Run files of nginx's own test suite against wsgate, through nginx's own Perl harness.

``make conformance`` (or ``python tests/conformance/run.py [FILE.t ...]``) runs the files listed in
``expected.txt`` beside this script, or the ones named, from ``$NGINX_TESTS`` (default: the
``nginx-tests`` directory beside the repository's parent, ``../shared/nginx-tests``), with
``TEST_NGINX_BINARY`` set to this environment's ``wsgate``.  The harness writes a configuration
into a temporary directory, starts ``wsgate -p DIR/ -c nginx.conf -e error.log``, checks, stops it.
Which files apply is decided by ``wsgate -V`` (:mod:`wsgate.config.modules`).

Counting is stricter than ``prove``'s: a test counts as passed only on an ``ok`` line; a failing
test that the file marks ``TODO`` (``not ok ... # TODO``) is not a pass, and a whole file skipped
(``1..0 # SKIP``) shows as ``skipped`` with its reason.  For each file the table prints
passed/planned, the expected count from ``expected.txt`` and the first failing test names; the
exit status is 1 when a file falls below its expected count.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
EXPECTED = HERE / "expected.txt"
#: One file may not take longer than this (nginx-tests files take 1-30 s each).
FILE_TIMEOUT = 180.0

_PLAN = re.compile(r"^1\.\.(\d+)(?:\s*#\s*(?i:skip)\s*(.*))?$")
_RESULT = re.compile(r"^(not ok|ok)\s+(\d+)\s*(?:-\s*)?(.*)$")


def tests_dir() -> Path:
    """``$NGINX_TESTS``, else ``../shared/nginx-tests`` beside the repository."""
    env = os.environ.get("NGINX_TESTS")
    return Path(env) if env else REPO.parent / "shared" / "nginx-tests"


def wsgate_binary() -> Path:
    return Path(sys.executable).parent / "wsgate"


@dataclass(frozen=True, slots=True)
class Expected:
    name: str
    passed: int
    planned: int
    note: str = ""


def read_expected(path: Path = EXPECTED) -> dict[str, Expected]:
    """``name.t passed/planned  # why it is not all`` lines; ``#`` starts a comment line."""
    out: dict[str, Expected] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        text, _, note = line.partition("#")
        name, count = text.split()
        passed, planned = (int(n) for n in count.split("/"))
        out[name] = Expected(name, passed, planned, note.strip())
    return out


@dataclass(slots=True)
class Result:
    name: str
    planned: int = 0
    passed: int = 0
    skipped_file: str | None = None
    failed: list[str] = field(default_factory=list)
    todo_failed: int = 0
    crashed: str = ""
    seconds: float = 0.0


def parse_tap(name: str, output: str) -> Result:
    """Count ``ok``/``not ok`` lines of one file's TAP output."""
    res = Result(name)
    for line in output.splitlines():
        plan = _PLAN.match(line)
        if plan:
            res.planned = int(plan.group(1))
            if res.planned == 0:
                res.skipped_file = (plan.group(2) or "skipped").strip()
            continue
        m = _RESULT.match(line)
        if not m:
            continue
        verdict, number, text = m.groups()
        if verdict == "ok":
            res.passed += 1
        elif "# TODO" in text:
            res.todo_failed += 1
        else:
            res.failed.append(f"{number} {text}".strip())
    return res


def run_file(directory: Path, name: str, binary: Path) -> Result:
    env = dict(os.environ)
    env["TEST_NGINX_BINARY"] = str(binary)
    env.pop("TEST_NGINX_VERBOSE", None)
    start = time.monotonic()
    try:
        proc = subprocess.run(
            ["perl", name],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",  # a failing gzip test prints compressed bytes
            timeout=FILE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        res = parse_tap(name, out)
        res.crashed = f"timed out after {FILE_TIMEOUT:.0f}s"
    else:
        res = parse_tap(name, proc.stdout)
        ran = res.passed + len(res.failed) + res.todo_failed
        if res.skipped_file is None and (not res.planned or ran < res.planned):
            res.crashed = _why_stopped(proc.stderr, ran)
    res.seconds = time.monotonic() - start
    return res


def _why_stopped(stderr: str, ran: int) -> str:
    """The harness's words when a file stopped early: wsgate's ``[emerg]``, else the last line."""
    lines = stderr.strip().splitlines() or ["no output"]
    emerg = [ln for ln in lines if "[emerg]" in ln]
    return f"stopped after {ran}: " + (emerg[0] if emerg else lines[-1])[:200]


def run(
    names: list[str], jobs: int = 2, expected: dict[str, Expected] | None = None
) -> list[Result]:
    """Every file, ``jobs`` at a time.  A file whose harness timed out, or (given
    ``expected``) that passed fewer tests than expected, runs once more, alone, and its note
    says so.  On a loaded machine the harness has been seen to stop reading for minutes (0 or
    2 tests, then the file's timeout), and a timing-bound test to lose a race it wins alone
    (upstream_resolver.t's request right after the DNS server saw the query, before the
    worker applied the answer), in files that pass whole when run again.  The better run
    counts: a file below its count twice keeps its first result, so a real regression still
    fails."""
    directory, binary = tests_dir(), wsgate_binary()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda n: run_file(directory, n, binary), names))
    for i, res in enumerate(results):
        timed_out = res.crashed.startswith("timed out")
        want = expected.get(res.name) if expected is not None else None
        below = want is not None and res.skipped_file is None and res.passed < want.passed
        if not (timed_out or below):
            continue
        again = run_file(directory, res.name, binary)
        if again.crashed.startswith("timed out") or again.passed <= res.passed:
            continue
        first = res.crashed or f"failed: {', '.join(res.failed)}"
        again.crashed = (again.crashed + "; " if again.crashed else "") + (
            f"second run: the first {first} after {res.passed} passed"
        )
        results[i] = again
    return results


def report(results: list[Result], expected: dict[str, Expected]) -> tuple[str, bool]:
    """The table, and whether every file reached its expected count."""
    lines = [f"{'file':34} {'passed':>9} {'expected':>9}  notes", "-" * 80]
    ok = True
    total_p = total_n = 0
    for r in results:
        exp = expected.get(r.name)
        want = f"{exp.passed}/{exp.planned}" if exp else "-"
        got = f"{r.passed}/{r.planned}"
        notes = []
        if r.skipped_file is not None:
            got = "skipped"
            notes.append(r.skipped_file)
        if r.crashed:
            notes.append(r.crashed)
        if r.failed:
            more = " ..." if len(r.failed) > 3 else ""
            notes.append("failed: " + "; ".join(r.failed[:3]) + more)
        if r.todo_failed:
            notes.append(f"{r.todo_failed} TODO failed")
        if exp and r.passed < exp.passed:
            ok = False
            notes.insert(0, "BELOW EXPECTED")
        lines.append(f"{r.name:34} {got:>9} {want:>9}  {' | '.join(notes)}"[:400])
        total_p += r.passed
        total_n += r.planned
    lines.append("-" * 80)
    lines.append(f"{'total':34} {f'{total_p}/{total_n}':>9}")
    return "\n".join(lines), ok


def markdown(results: list[Result], expected: dict[str, Expected]) -> str:
    """The table docs/conformance.md publishes: file, passed/planned, and why not all."""
    rows = ["| file | passed | notes |", "|---|---|---|"]
    for r in results:
        exp = expected.get(r.name)
        got = "skipped" if r.skipped_file is not None else f"{r.passed}/{r.planned}"
        note = exp.note if exp and exp.note else (r.skipped_file or "")
        rows.append(f"| `{r.name}` | {got} | {note} |")
    total_p = sum(r.passed for r in results)
    total_n = sum(r.planned for r in results)
    rows.append(f"| **total** | **{total_p}/{total_n}** | |")
    return "\n".join(rows)


def published(expected: dict[str, Expected]) -> str:
    """docs/conformance.md's summary line and table, from the floors ``make test`` checks
    (a file planned 0/0 is one the harness skips whole, its note says why)."""
    rows = ["| file | passed | note |", "|---|---|---|"]
    passed = planned = files = complete = 0
    for name in sorted(expected):
        exp = expected[name]
        got = "skipped" if exp.planned == 0 else f"{exp.passed}/{exp.planned}"
        rows.append(f"| `{name}` | {got} | {exp.note} |")
        if exp.planned:
            files += 1
            passed += exp.passed
            planned += exp.planned
            complete += exp.passed == exp.planned
    rows.append(f"| **total** | **{passed}/{planned}** | |")
    summary = (
        f"**{passed:,} of {planned:,} tests pass over {files} files; "
        f"{complete} files pass completely.**"
    )
    return summary + "\n\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="test files (default: those in expected.txt)")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--markdown", action="store_true", help="print the run as a markdown table")
    ap.add_argument(
        "--published",
        action="store_true",
        help="print docs/conformance.md's summary and table from expected.txt (runs nothing)",
    )
    opts = ap.parse_args(argv)
    if opts.published:
        print(published(read_expected()))
        return 0
    directory = tests_dir()
    if not directory.is_dir():
        print(f"conformance: {directory} is absent (set NGINX_TESTS=): nothing run")
        return 0
    expected = read_expected()
    names = [n if n.endswith(".t") else f"{n}.t" for n in opts.files] or list(expected)
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        print(f"conformance: not in {directory}: {' '.join(missing)}")
        return 2
    results = run(names, opts.jobs, expected)
    table, ok = report(results, expected)
    print(markdown(results, expected) if opts.markdown else table)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
