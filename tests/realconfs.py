"""The corpus of real nginx configurations (``tests/configs/real/*.conf``) and how to run it.

Each file is a configuration a WebSocket application publishes in its repository or
documentation, adapted only to run on loopback: its header names the source and every change.
Ports, certificates and paths are placeholders filled in at test time:

* ``@@P80@@``, ``@@P443@@``, ...: the ports the original listens on (a free loopback port each);
* ``@@U3000@@``, ...: the upstream the original proxies to (a recording backend's port);
* ``@@CERT@@``, ``@@KEY@@``, ``@@CACERT@@``, ``@@DHPARAM@@``: files generated for the run
  (private keys are never checked in);
* ``@@PREFIX@@``: the run's prefix directory (roots, aliases, caches and logs live under it).

A file is what its application puts inside ``http { }`` (most ``sites-enabled`` snippets) or,
when it has its own top-level ``http {`` block, a whole configuration; :func:`render` adds the
``events`` block, a pid file, temp paths and the ``http`` wrapper as needed.  The same text goes
to nginx and to wsgate.

``python -m tests.realconfs`` runs ``wsgate -t`` on every file and rewrites
``tests/configs/real/STATUS.md`` (the first refusal of each file and every directive it refuses).
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONFIG_DIR",
    "NAMES",
    "Refusal",
    "allocate_ports",
    "placeholders",
    "prepare_prefix",
    "render",
    "wsgate_test",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "tests" / "configs" / "real"
STATUS_MD = CONFIG_DIR / "STATUS.md"
NAMES = sorted(p.stem for p in CONFIG_DIR.glob("*.conf"))

_PLACEHOLDER = re.compile(r"@@([PU])(\d+)@@")
_TOP_HTTP = re.compile(r"^http\s*\{", re.MULTILINE)
_TEMPS = " ".join(
    f"{kind}_temp_path {{prefix}}/temp/{kind};"
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
)


def source(name: str) -> str:
    """The corpus file's text, placeholders and all."""
    return (CONFIG_DIR / f"{name}.conf").read_text()


def placeholders(text: str) -> tuple[list[str], list[str]]:
    """The listen placeholders (``P80``...) and upstream placeholders (``U3000``...) of ``text``,
    each once, in order of first appearance."""
    listens: list[str] = []
    upstreams: list[str] = []
    for m in _PLACEHOLDER.finditer(text):
        key = m.group(1) + m.group(2)
        bucket = listens if m.group(1) == "P" else upstreams
        if key not in bucket:
            bucket.append(key)
    return listens, upstreams


def allocate_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports.  nginx cannot bind port 0 and report what it got,
    and the corpus keeps each original listen port distinct, so (only for listen ports) the
    kernel's choice is taken, released and handed to the server, as in test_nginx_hash.py."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class Files:
    """Files a run substitutes for the certificate placeholders."""

    cert: str
    key: str
    cacert: str
    dhparam: str


def prepare_prefix(prefix: Path) -> None:
    """The directories the corpus's roots, aliases, caches, logs and includes point at."""
    for sub in (
        "logs",
        "temp",
        "cache",
        "nginx_cache",
        "html",
        "html/static",
        "html/libs",
        "jenkins/userContent",
        "vhost-extras/overleaf",
    ):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    (prefix / "html" / "index.html").write_text("index\n")
    (prefix / "html" / "config.js").write_text("var config = {};\n")


def render(text: str, prefix: Path, ports: Mapping[str, int], files: Files | None) -> str:
    """The whole configuration for one run: placeholders filled, ``events``, pid and temp paths
    added, and the ``http`` wrapper when the file is a ``sites-enabled`` snippet."""

    def fill(m: re.Match[str]) -> str:
        return str(ports[m.group(1) + m.group(2)])

    body = _PLACEHOLDER.sub(fill, text).replace("@@PREFIX@@", str(prefix))
    if files is not None:
        body = (
            body.replace("@@CERT@@", files.cert)
            .replace("@@KEY@@", files.key)
            .replace("@@CACERT@@", files.cacert)
            .replace("@@DHPARAM@@", files.dhparam)
        )
    temps = _TEMPS.format(prefix=prefix)
    head = f"pid {prefix}/logs/nginx.pid;\nevents {{}}\n"
    if _TOP_HTTP.search(body):
        # The application's own http block: the temp paths go in first thing.
        return head + _TOP_HTTP.sub(lambda m: m.group(0) + "\n" + temps, body, count=1)
    return head + "http {\n" + temps + "\n" + body + "\n}\n"


@dataclass(frozen=True)
class Refusal:
    """What ``wsgate -t`` says about one configuration: ``None`` message when it loads."""

    message: str | None
    line: int = 0

    @property
    def loads(self) -> bool:
        return self.message is None

    @property
    def directive(self) -> str:
        """The refused directive or listen parameter, as the message names it."""
        if self.message is None:
            return ""
        m = re.search(r'"([^"]+)"', self.message)
        return m.group(1) if m else self.message


def wsgate_test(conf: Path, prefix: Path) -> Refusal:
    """What ``wsgate -t -p PREFIX -c CONF`` says, computed in process: ``-t`` is exactly
    :func:`wsgate.config.loader.load` (``wsgate.cli.cmd_test``), and a process per run would
    make the corpus scan take minutes."""
    from wsgate.config.loader import load
    from wsgate.errors import ConfigError

    try:
        load(str(conf), prefix=str(prefix))
    except ConfigError as exc:
        return Refusal(exc.message, exc.line or 0)
    return Refusal(None)


def _drop(text: str, line: int) -> str:
    """``text`` without the statement at ``line`` (1-based): a block opener goes with its whole
    block, anything else is commented out.  Used only to find the next refusal."""
    lines = text.split("\n")
    i = line - 1
    if i < 0 or i >= len(lines):
        raise ValueError(f"no line {line}")
    if lines[i].rstrip().endswith("{") or (
        "{" in lines[i] and lines[i].count("{") > lines[i].count("}")
    ):
        depth = 0
        j = i
        while j < len(lines):
            depth += lines[j].count("{") - lines[j].count("}")
            if depth <= 0 and j >= i:
                break
            j += 1
        del lines[i : j + 1]
    else:
        lines[i] = "# " + lines[i]
    return "\n".join(lines)


def all_refusals(conf_text: str, prefix: Path, limit: int = 40) -> list[Refusal]:
    """Every refusal ``wsgate -t`` makes in ``conf_text``, not only the first: each refused
    statement is dropped (:func:`_drop`) and the test rerun until the configuration loads."""
    found: list[Refusal] = []
    conf = prefix / "nginx.conf"
    text = conf_text
    dropped_sets: set[str] = set()
    for _ in range(limit):
        conf.write_text(text)
        refusal = wsgate_test(conf, prefix)
        if refusal.loads:
            break
        # A variable whose `set` was dropped is unknown afterwards: a consequence of the scan,
        # not a refusal of its own.
        if refusal.message != f'unknown "{refusal.directive}" variable' or (
            refusal.directive not in dropped_sets
        ):
            found.append(refusal)
        if not refusal.line:
            break
        m = re.match(r"\s*set\s+\$(\w+)", text.split("\n")[refusal.line - 1])
        if m:
            dropped_sets.add(m.group(1))
        text = _drop(text, refusal.line)
    return found


# -- STATUS.md ---------------------------------------------------------------------------------
_ROW = re.compile(r"^\| `(?P<name>[^`]+)` \| (?P<first>[^|]*) \| (?P<all>[^|]*) \|")


def read_status() -> dict[str, tuple[str, list[str]]]:
    """STATUS.md's table: name -> (first refusal's message or "loads", every refused directive)."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in STATUS_MD.read_text().split("\n## By refusal")[0].splitlines():
        m = _ROW.match(line)
        if m:
            first = m.group("first").strip().strip("`")
            every = [d.strip().strip("`") for d in m.group("all").split(",") if d.strip()]
            table[m.group("name")] = (first, every)
    return table


def status_cell(refusals: list[Refusal]) -> tuple[str, list[str]]:
    """What STATUS.md records for one configuration."""
    if not refusals:
        return "loads", []
    seen: list[str] = []
    for r in refusals:
        if r.directive not in seen:
            seen.append(r.directive)
    return refusals[0].message or "", seen


def _pki(base: Path) -> Files:
    import trustme

    ca = trustme.CA(organization_name="wsgate corpus CA")
    leaf = ca.issue_cert("localhost", "*.example.com", "example.com")
    files = Files(
        str(base / "cert.pem"), str(base / "key.pem"), str(base / "ca.pem"), str(base / "dh.pem")
    )
    leaf.cert_chain_pems[0].write_to_path(files.cert)
    leaf.private_key_pem.write_to_path(files.key)
    ca.cert_pem.write_to_path(files.cacert)
    subprocess.run(
        ["openssl", "dhparam", "-dsaparam", "-out", files.dhparam, "2048"],
        check=True,
        capture_output=True,
    )
    return files


def main() -> int:
    """Rewrite STATUS.md from ``wsgate -t`` runs on the whole corpus."""
    import tempfile

    rows = []
    loading = 0
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        files = _pki(base)
        for name in NAMES:
            text = source(name)
            listens, upstreams = placeholders(text)
            keys = listens + upstreams
            ports = dict(zip(keys, allocate_ports(len(keys)), strict=True))
            prefix = base / name
            prepare_prefix(prefix)
            first, every = status_cell(all_refusals(render(text, prefix, ports, files), prefix))
            loading += first == "loads"
            cells = ", ".join(f"`{d}`" for d in every)
            shown = first if first == "loads" else f"`{first}`"
            rows.append(f"| `{name}` | {shown} | {cells} |")
            print(rows[-1], flush=True)
    by_directive: dict[str, list[str]] = {}
    for row in rows:
        m = _ROW.match(row)
        assert m is not None
        for d in m.group("all").split(","):
            if d.strip():
                by_directive.setdefault(d.strip().strip("`"), []).append(m.group("name"))
    summary = "\n".join(
        f"| `{d}` | {len(names)} | {', '.join(names)} |"
        for d, names in sorted(by_directive.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    )
    STATUS_MD.write_text(
        "# Real configurations: what `wsgate -t` says today\n\n"
        "Generated by `python -m tests.realconfs` (do not edit by hand); "
        "`tests/integration/test_real_configs.py` asserts it exactly.\n"
        "The second column is the first refusal, the third every directive refused "
        "(each refused statement dropped in turn and the test rerun).\n\n"
        f"wsgate loads **{loading}/{len(NAMES)}**.\n\n"
        "| configuration | `wsgate -t` | every refusal |\n|---|---|---|\n"
        + "\n".join(rows)
        + "\n\n## By refusal\n\n| refused | configurations | which |\n|---|---|---|\n"
        + summary
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
