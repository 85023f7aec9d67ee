"""The acceptance corpus of issue 11: 31 nginx configurations that WebSocket applications
publish, adapted only to loopback (``tests/configs/real``, see ``tests/realconfs.py``).

For each configuration:

* ``nginx -t`` loads it (when nginx is installed; Debian's 1.22 is skipped, with the reason,
  for a configuration that uses something newer);
* ``wsgate -t`` loads it or refuses it only with directives on :data:`NOT_YET`, each naming the
  issue that will bring it, and what it says is exactly what ``tests/configs/real/STATUS.md``
  records (a regression fails; so does progress, asking for ``python -m tests.realconfs``);
* when it loads, wsgate (and nginx, when installed) run it against recording backends, and a
  few requests its locations route (a WebSocket handshake, a plain GET, a redirect) must reach
  the same upstream with the same request line, ``Host`` and ``proxy_set_header`` headers, and
  give the client the same status and ``Location`` as nginx, and as ``tests/real_probes.py``
  writes them.
"""

from __future__ import annotations

import base64
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import realconfs as rc
from tests.conftest import start_wsgate
from tests.integration.loopback import HOST, Backend, Loop, loop_fixture
from tests.real_probes import PROBES, Probe

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

bg = pytest.fixture(loop_fixture)

# -- what wsgate may still refuse, and why -------------------------------------------------------
#: Refusals waiting for another issue.  Keyed by the directive (``listen ... X`` for a listen
#: parameter, otherwise the first word of what the refusal names).
NOT_YET: dict[str, str] = {
    "proxy_store": "no issue yet (proxy_store)",
    "proxy_pass_request_headers": "no issue yet (proxy module leftovers)",
    "ssl_early_data": "no issue yet (`on`: Python's ssl has no server-side TLS 1.3 early data)",
}
#: Issue 11's own directives, refused while they landed in parallel branches (if, set, rewrite,
#: error_page, internal, named locations, error_log, proxy_redirect, proxy_cookie_*, proxy_pass
#: with variables, ignore_invalid_headers, client_body_buffer_size, lingering_timeout).  Empty:
#: nothing issue 11 covers is refused by the corpus any more, and it must stay that way.
LANDING_UNDER_ISSUE_11: dict[str, str] = {}


def refusal_key(directive: str) -> str:
    if directive.startswith("listen"):
        return directive
    if directive.startswith("try_files ... @"):
        return "@name"  # the named location is what is refused
    return directive.split()[0]


# -- certificates and prefixes -------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> rc.Files:
    if shutil.which("openssl") is None:
        pytest.skip("openssl (for ssl_dhparam files) is not installed")
    return rc._pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Run:
    """One configuration rendered for one server (wsgate or nginx) on fresh ports."""

    name: str
    prefix: Path
    ports: dict[str, int]
    text: str

    def normalise(self, value: str) -> str:
        """Port numbers back to their placeholders, so two runs compare equal."""
        for key, port in sorted(self.ports.items(), key=lambda kv: -len(str(kv[1]))):
            value = value.replace(str(port), f"@@{key}@@")
        return value


def make_run(name: str, prefix: Path, files: rc.Files, backends: dict[str, Backend]) -> Run:
    text = rc.source(name)
    listens, upstreams = rc.placeholders(text)
    ports = dict(zip(listens, rc.allocate_ports(len(listens)), strict=True))
    ports.update({key: backends[key].port for key in upstreams})
    rc.prepare_prefix(prefix)
    return Run(name, prefix, ports, rc.render(text, prefix, ports, files))


# -- nginx -t and wsgate -t ----------------------------------------------------------------------
#: Configurations Debian's nginx 1.22 cannot load, and why.
NGINX_TOO_OLD = {
    "vaultwarden": '"http2 on;" is nginx 1.25.1+ (Debian\'s 1.22 says: unknown directive "http2")',
}


@pytest.mark.parametrize("name", rc.NAMES)
def test_nginx_loads(name: str, tmp_path: Path, files: rc.Files) -> None:
    if NGINX is None:
        pytest.skip("nginx is not installed")
    if name in NGINX_TOO_OLD:
        pytest.skip(NGINX_TOO_OLD[name])
    text = rc.source(name)
    listens, upstreams = rc.placeholders(text)
    keys = listens + upstreams
    run = Run(name, tmp_path, dict(zip(keys, rc.allocate_ports(len(keys)), strict=True)), "")
    rc.prepare_prefix(tmp_path)
    conf = tmp_path / "nginx.conf"
    conf.write_text(rc.render(text, tmp_path, run.ports, files))
    proc = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "logs/e.log")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_status_table_covers_the_corpus() -> None:
    assert sorted(rc.read_status()) == rc.NAMES
    assert len(rc.NAMES) == 31


@pytest.mark.parametrize("name", ["synapse", "coder"])
def test_wsgate_t_command_line_says_the_same(name: str, tmp_path: Path, files: rc.Files) -> None:
    """The corpus scan loads configurations in process (``-t`` is exactly the loader); the
    command line gives the same answer, with nginx's words and the file:line."""
    text = rc.source(name)
    listens, upstreams = rc.placeholders(text)
    keys = listens + upstreams
    ports = dict(zip(keys, rc.allocate_ports(len(keys)), strict=True))
    rc.prepare_prefix(tmp_path)
    conf = tmp_path / "nginx.conf"
    conf.write_text(rc.render(text, tmp_path, ports, files))
    proc = subprocess.run(
        [sys.executable, "-m", "wsgate.cli", "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    first = rc.read_status()[name][0]
    if first == "loads":
        assert proc.returncode == 0, proc.stderr
        assert "test is successful" in proc.stderr
    else:
        assert proc.returncode == 1
        refusal = rc.wsgate_test(conf, tmp_path)
        assert f"[emerg] {first} in {conf}:{refusal.line}" in proc.stderr, proc.stderr


def test_not_yet_lists_hold_only_current_refusals() -> None:
    """Each entry of the not-yet lists is still a refusal somewhere in the corpus: when issue
    11's directives land, their entries go, and issue 11 is done when its list is empty."""
    refused = {refusal_key(d) for _, every in rc.read_status().values() for d in every}
    stale = sorted((set(NOT_YET) | set(LANDING_UNDER_ISSUE_11)) - refused)
    assert not stale, f"nothing in the corpus is refused for {stale}: remove them from the lists"


@pytest.mark.parametrize("name", rc.NAMES)
def test_wsgate_loads_or_refuses_only_what_is_not_yet_there(
    name: str, tmp_path: Path, files: rc.Files
) -> None:
    text = rc.source(name)
    listens, upstreams = rc.placeholders(text)
    keys = listens + upstreams
    ports = dict(zip(keys, rc.allocate_ports(len(keys)), strict=True))
    rc.prepare_prefix(tmp_path)
    first, every = rc.status_cell(
        rc.all_refusals(rc.render(text, tmp_path, ports, files), tmp_path)
    )
    for directive in every:
        key = refusal_key(directive)
        assert key in NOT_YET or key in LANDING_UNDER_ISSUE_11, (
            f"{name}: wsgate refuses {directive!r}, which is on no not-yet list"
        )
    recorded = rc.read_status()[name]
    if (first, every) != recorded:
        if first == "loads" or len(every) < len(recorded[1]):
            hint = "progress: run `python -m tests.realconfs` to update STATUS.md"
        else:
            hint = "regression (or a new refusal): wsgate refuses more than STATUS.md records"
        pytest.fail(f"{name}: {hint}\n  now:      {first} / {every}\n  recorded: {recorded}")


# -- behaviour -------------------------------------------------------------------------------------
WS_KEY = base64.b64encode(b"corpus-websocket").decode()


@dataclass
class Seen:
    """What one probe produced, normalised for comparison."""

    status: int
    location: str | None
    upstream: str | None
    line: str
    headers: dict[str, str]


def _request(run: Run, probe: Probe, ca: str) -> bytes:
    head = f"GET {probe.target} HTTP/1.1\r\nHost: {probe.host}\r\n"
    if probe.ws:
        head += (
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
        )
    else:
        head += "Connection: close\r\n"
    raw = socket.create_connection((HOST, run.ports[probe.listen]), timeout=15)
    sock: socket.socket = raw
    if probe.tls:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = False
        sock = ctx.wrap_socket(raw, server_hostname=probe.host)
    with sock:
        sock.sendall(head.encode() + b"\r\n")
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and (probe.ws or _complete(data)):
                break
    return data


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole response with a Content-Length (so the probe need not
    wait for the server to close)."""
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    return m is not None and len(body) >= int(m.group(1))


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
    return lines[0], headers


def observe(run: Run, probe: Probe, backends: dict[str, Backend], ca: str) -> Seen:
    before = {key: len(b.requests) for key, b in backends.items()}
    data = _request(run, probe, ca)
    assert data, f"{run.name}: no response to {probe}"
    status_line, response = _parse_head(data.partition(b"\r\n\r\n")[0])
    status = int(status_line.split(" ")[1])
    got = [key for key, b in backends.items() if len(b.requests) > before[key]]
    assert len(got) <= 1, f"{run.name}: {probe.target} reached {got}"
    upstream = got[0] if got else None
    line, headers = "", {}
    if upstream is not None:
        request = backends[upstream].requests[before[upstream]]
        line, headers = _parse_head(request.head.rstrip(b"\r\n"))
        line = run.normalise(line)
        headers = {k: run.normalise(v) for k, v in headers.items()}
    location = response.get("location")
    return Seen(status, run.normalise(location) if location else None, upstream, line, headers)


def check_expected(name: str, probe: Probe, seen: Seen) -> None:
    where = f"{name} {probe.listen} {probe.target}"
    assert seen.status == probe.status, f"{where}: status {seen.status}, want {probe.status}"
    assert seen.upstream == probe.upstream, f"{where}: reached {seen.upstream}"
    assert seen.location == probe.location, f"{where}: Location {seen.location}"
    if probe.upstream:
        assert seen.line == probe.line, f"{where}: upstream request line {seen.line!r}"
        for header, value in probe.headers.items():
            assert seen.headers.get(header, "") == value, (
                f"{where}: upstream {header}: {seen.headers.get(header)!r}, want {value!r}\n"
                f"{seen.headers}"
            )


def as_current_nginx(probe: Probe, seen: Seen) -> Seen:
    """nginx 1.22's upstream request as current nginx (1.29.7+) sends it, which wsgate follows
    (docs/differences.md): ``proxy_http_version`` defaults to 1.1, and the default
    ``Connection`` header is empty (not sent) rather than ``close``.  Applied only where the
    written expectation says so."""
    line, headers = seen.line, dict(seen.headers)
    if line.endswith(" HTTP/1.0") and probe.line.endswith(" HTTP/1.1"):
        line = line[: -len("1.0")] + "1.1"
    if headers.get("connection") == "close" and probe.headers.get("connection") == "":
        del headers["connection"]
    return Seen(seen.status, seen.location, seen.upstream, line, headers)


def _compared_headers(name: str, probe: Probe) -> set[str]:
    """The upstream headers compared with nginx's: Host, Connection, Upgrade, every header the
    configuration sets with proxy_set_header, and those the probe names."""
    names = set(re.findall(r"proxy_set_header\s+(\S+)", rc.source(name)))
    return {n.lower() for n in names} | {"host", "connection", "upgrade"} | set(probe.headers)


def _start_nginx(run: Run) -> subprocess.Popen[bytes]:
    assert NGINX is not None
    conf = run.prefix / "nginx.conf"
    conf.write_text(run.text)
    proc = subprocess.Popen(
        [
            NGINX,
            "-p",
            str(run.prefix),
            "-c",
            str(conf),
            "-e",
            str(run.prefix / "logs/e.log"),
            "-g",
            "daemon off; master_process off;",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    pid = run.prefix / "logs" / "nginx.pid"
    deadline = time.monotonic() + 15
    while not pid.exists():  # written once the listeners are open
        if proc.poll() is not None:
            assert proc.stderr is not None
            raise AssertionError(f"nginx exited: {proc.stderr.read().decode(errors='replace')}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("nginx did not start")
        time.sleep(0.01)
    return proc


@pytest.fixture
def servers() -> Iterator[list[object]]:
    stoppers: list[object] = []
    yield stoppers
    for s in stoppers:
        if isinstance(s, subprocess.Popen):
            s.terminate()
            try:
                s.wait(10)
            except subprocess.TimeoutExpired:
                s.kill()
                s.wait()
            if s.stderr is not None:
                s.stderr.close()
        else:
            s.stop()  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", rc.NAMES)
def test_probes_hold_for_nginx(
    name: str, tmp_path: Path, files: rc.Files, bg: Loop, servers: list[object]
) -> None:
    """The written expectations are nginx's behaviour (read as current nginx, see
    :func:`as_current_nginx`), checked for every configuration nginx loads, so they are ready
    the day wsgate loads the configuration too."""
    if NGINX is None:
        pytest.skip("nginx is not installed")
    if name in NGINX_TOO_OLD:
        pytest.skip(NGINX_TOO_OLD[name])
    _, upstreams = rc.placeholders(rc.source(name))
    backends = {key: bg.backend(key, websocket=True) for key in upstreams}
    run = make_run(name, tmp_path / "nginx", files, backends)
    servers.append(_start_nginx(run))
    assert PROBES[name], name
    for probe in PROBES[name]:
        check_expected(
            name, probe, as_current_nginx(probe, observe(run, probe, backends, files.cacert))
        )


@pytest.mark.parametrize("name", rc.NAMES)
def test_behaves_as_nginx(
    name: str, tmp_path: Path, files: rc.Files, bg: Loop, servers: list[object]
) -> None:
    recorded = rc.read_status()[name][0]
    if recorded != "loads":
        pytest.skip(f"wsgate refuses it: {recorded}")
    assert name in PROBES, f"{name} loads in wsgate now: write its PROBES"
    _, upstreams = rc.placeholders(rc.source(name))
    backends = {key: bg.backend(key, websocket=True) for key in upstreams}

    wsgate_run = make_run(name, tmp_path / "wsgate", files, backends)
    handle = start_wsgate(wsgate_run.prefix, wsgate_run.text)
    servers.append(handle)
    nginx_run = None
    if NGINX is not None and name not in NGINX_TOO_OLD:
        nginx_run = make_run(name, tmp_path / "nginx", files, backends)
        servers.append(_start_nginx(nginx_run))

    for probe in PROBES[name]:
        seen = observe(wsgate_run, probe, backends, files.cacert)
        if probe.differs is not None:
            status, why = probe.differs
            assert (seen.status, seen.upstream) == (status, None), (
                f"{name} {probe.target}: wsgate gives {seen.status} now, not {status} ({why}):"
                " drop `differs` from the probe"
            )
            continue
        check_expected(name, probe, seen)
        if nginx_run is not None:
            theirs = as_current_nginx(probe, observe(nginx_run, probe, backends, files.cacert))
            check_expected(name, probe, theirs)
            keep = _compared_headers(name, probe)
            ours_h = {k: v for k, v in seen.headers.items() if k in keep}
            theirs_h = {k: v for k, v in theirs.headers.items() if k in keep}
            assert (seen.status, seen.location, seen.upstream, seen.line, ours_h) == (
                theirs.status,
                theirs.location,
                theirs.upstream,
                theirs.line,
                theirs_h,
            ), f"{name} {probe.target}: wsgate differs from nginx"
    log = handle.errors()
    assert "[alert]" not in log and "Traceback" not in handle.stderr, log + handle.stderr
