"""deploy/entrypoint.sh run for real, and the Containerfile's build stage emulated.

The entrypoint runs this checkout's wsgate on a loopback port, its configuration folder laid
out as the kubelet lays a ConfigMap volume (files behind a ``..data`` symlink swapped on
update). No container engine is needed: the script is the one the image runs, only its paths
come from the environment. Everything waits by polling, with a deadline.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.loopback import HOST, get
from tests.unit.test_deploy import copies

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def ready(port: int) -> tuple[int, bytes]:
    """GET /ready; (0, b"") while nothing listens."""
    try:
        return get(port, "/ready")
    except OSError:
        return 0, b""


def conf(port: int, body: str) -> str:
    return (
        "error_log stderr notice;\n"
        "events {}\n"
        "http {\n"
        "    access_log off;\n"
        f"    server {{ listen {HOST}:{port}; location / {{ {body} }} }}\n"
        "}\n"
    )


class ConfigMapDir:
    """A folder as the kubelet lays out a ConfigMap volume: the files in a ``..TIMESTAMP``
    folder, ``..data`` a symlink to it and each key a symlink through ``..data``. An update
    writes a new folder and renames a new ``..data`` over the old one (atomic), as the kubelet's
    AtomicWriter does; the file the running wsgate read is never written to."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0
        root.mkdir()

    def write(self, files: dict[str, str]) -> None:
        self.version += 1
        folder = self.root / f"..2026_01_01_00_00_00.{self.version}"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        os.symlink(folder.name, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", data)
        for name in files:
            if not (self.root / name).is_symlink():
                os.symlink(f"..data/{name}", self.root / name)
        if old is not None:
            shutil.rmtree(self.root / old)


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Entrypoint:
    """deploy/entrypoint.sh started with paths under ``base``; its stderr (and wsgate's, whose
    error_log is stderr) in ``log``."""

    def __init__(self, base: Path, conf_file: Path, interval: str) -> None:
        wrapper = base / "wsgate"
        # WSGATE_BIN is one command: this interpreter's wsgate, exec'd so the pid stays.
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m wsgate.cli "$@"\n')
        wrapper.chmod(0o755)
        self.env = {
            **os.environ,
            "WSGATE_BIN": str(wrapper),
            "WSGATE_CONF": str(conf_file),
            "WSGATE_PREFIX": str(base / "prefix"),
            "WSGATE_WATCH_INTERVAL": interval,
        }
        self.log_path = base / "log.txt"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(ENTRYPOINT)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=base,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def until(self, check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None:
                raise AssertionError(f"wsgate exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log()}")
            time.sleep(0.02)

    def answers(self, port: int, text: bytes) -> bool:
        try:
            return get(port) == (200, text)
        except OSError:
            return False

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ENTRYPOINT), *args], env=self.env, capture_output=True, text=True, timeout=30
        )

    def watchers(self) -> list[int]:
        return [p for p in children(self.proc.pid) if "entrypoint.sh" in cmdline(p)]


@pytest.fixture
def entrypoint(tmp_path: Path) -> Iterator[Callable[[Path, str], Entrypoint]]:
    started: list[Entrypoint] = []
    watchers: list[int] = []

    def start(conf_file: Path, interval: str) -> Entrypoint:
        ep = Entrypoint(tmp_path, conf_file, interval)
        started.append(ep)
        return ep

    yield start
    for ep in started:
        watchers.extend(ep.watchers())
        if ep.proc.poll() is None:
            ep.proc.kill()
            ep.proc.wait(10)
    for pid in watchers:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(90)
def test_configmap_change_reloads_a_broken_one_is_refused_and_stop_drains(
    tmp_path: Path, entrypoint: Callable[[Path, str], Entrypoint]
) -> None:
    port = free_port()
    volume = ConfigMapDir(tmp_path / "etc-wsgate")
    volume.write({"nginx.conf": conf(port, 'return 200 "v1";')})
    ep = entrypoint(volume.root / "nginx.conf", "0.1")
    ep.until(lambda: ep.answers(port, b"v1"), "v1")
    # wsgate was exec'd: the container's signals reach its master directly.
    assert "wsgate.cli" in cmdline(ep.proc.pid)
    assert (tmp_path / "prefix" / "wsgate-entrypoint.pid").read_text() == f"{ep.proc.pid}\n"
    (watcher,) = ep.watchers()

    # A configuration that fails `wsgate -t` is logged and not loaded.
    volume.write({"nginx.conf": conf(port, 'retur 200 "v0";')})
    # (the refusal's line, then wsgate's own lines under it)
    ep.until(lambda: 'unknown directive "retur"' in ep.log(), "the refusal")
    assert "configuration test failed: not loaded" in ep.log()
    assert ep.answers(port, b"v1")

    # The next good one is.
    volume.write({"nginx.conf": conf(port, 'return 200 "v2";')})
    ep.until(lambda: ep.answers(port, b"v2"), "v2")
    assert f"reload signalled (HUP to pid {ep.proc.pid})" in ep.log()
    assert ep.log().count("configuration changed in") == 2

    # The preStop hook stops wsgate even with a broken configuration mounted (which
    # `wsgate -s quit` could not read), and returns once wsgate has exited.
    volume.write({"nginx.conf": "events {\n"})
    ep.until(lambda: ep.log().count("nginx.conf test failed") == 2, "the second refusal")
    assert ep.answers(port, b"v2")
    stop = ep.run("stop")
    assert stop.returncode == 0, stop.stderr
    assert f"QUIT sent to wsgate (pid {ep.proc.pid})" in stop.stderr
    assert f"wsgate (pid {ep.proc.pid}) exited" in stop.stderr
    assert ep.proc.wait(10) == 0
    assert "signal 3 (SIGQUIT) received" in ep.log()
    assert "Traceback" not in ep.log() and "[alert]" not in ep.log()
    # The watcher ends with wsgate.
    deadline = time.monotonic() + 10
    while alive(watcher):
        assert time.monotonic() < deadline, "the watcher outlived wsgate"
        time.sleep(0.02)
    # Nothing left to stop.
    again = ep.run("stop")
    assert again.returncode == 0 and "is not running: nothing to stop" in again.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGTERM])
def test_signals_reach_wsgate_and_reload_by_hand(
    tmp_path: Path, entrypoint: Callable[[Path, str], Entrypoint], sig: signal.Signals
) -> None:
    port = free_port()
    conf_file = tmp_path / "nginx.conf"
    conf_file.write_text(conf(port, 'return 200 "v1";'))
    ep = entrypoint(conf_file, "0")
    ep.until(lambda: ep.answers(port, b"v1"), "v1")
    assert "configuration watcher off" in ep.log()
    assert ep.watchers() == []

    # `wsgate-entrypoint reload` (kubectl exec): a broken file is refused, a good one loaded.
    conf_file.write_text(conf(port, "retur 200;"))
    refused = ep.run("reload")
    assert refused.returncode == 1 and "configuration test failed" in refused.stderr
    conf_file.write_text(conf(port, 'return 200 "v2";'))
    reload = ep.run("reload")
    assert reload.returncode == 0, reload.stderr
    ep.until(lambda: ep.answers(port, b"v2"), "v2")

    # A signal to the container's main process is a signal to wsgate's master.
    ep.proc.send_signal(sig)
    assert ep.proc.wait(15) == 0
    assert f"signal {int(sig)} ({sig.name}) received" in ep.log()
    with pytest.raises(OSError):
        get(port)


@pytest.mark.timeout(60)
def test_prestop_waits_through_the_grace_with_readiness_draining(
    tmp_path: Path, entrypoint: Callable[[Path, str], Entrypoint]
) -> None:
    """The preStop hook's sequence in small (deploy/README.md's timeline): QUIT, /ready turns
    503 while the main port still serves for shutdown_grace, then wsgate exits and only then
    does the hook return."""
    port, ready_port = free_port(), free_port()
    conf_file = tmp_path / "nginx.conf"
    conf_file.write_text(
        "error_log stderr notice;\n"
        "shutdown_grace 3s;\n"
        "close_spread_time 1s;\n"
        "worker_shutdown_timeout 10s;\n"
        "events {}\n"
        "http {\n"
        "    access_log off;\n"
        f'    server {{ listen {HOST}:{port}; location / {{ return 200 "v1"; }} }}\n'
        f"    server {{ listen {HOST}:{ready_port}; location = /ready {{ readiness; }} }}\n"
        "}\n"
    )
    ep = entrypoint(conf_file, "0")
    ep.until(lambda: ready(ready_port)[0] == 200, "/ready to answer 200")
    started = time.monotonic()
    stop = subprocess.Popen(
        [str(ENTRYPOINT), "stop"],
        env=ep.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ep.until(lambda: ready(ready_port)[0] == 503, "/ready to answer 503")
        assert b"draining" in ready(ready_port)[1]
        assert ep.answers(port, b"v1")  # still serving during the grace
        assert stop.poll() is None  # the hook waits
        _, err = stop.communicate(timeout=15)
    finally:
        if stop.poll() is None:
            stop.kill()
            stop.wait()
    assert stop.returncode == 0, err
    assert time.monotonic() - started >= 3.0  # not before shutdown_grace was over
    assert ep.proc.wait(10) == 0
    assert f"wsgate (pid {ep.proc.pid}) exited" in err
    with pytest.raises(OSError):
        get(port)


@pytest.mark.timeout(180)
def test_containerfile_build_context_builds_the_wheel(tmp_path: Path) -> None:
    """The Containerfile's build stage, without a container engine: only what its COPY
    instructions take from the repository, then `pip wheel` (offline here: no dependencies,
    this environment's setuptools). With a C compiler the wheel must carry the extensions, as
    the image's build stage checks."""
    context = tmp_path / "context"
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info")
    for flags, sources, _ in copies():
        if any(f.startswith("--from") for f in flags):
            continue
        for source in sources:
            src, dst = ROOT / source, context / source
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=ignore)
            else:
                shutil.copy2(src, dst)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "-w", str(tmp_path / "wheels"), str(context)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheels").glob("wsgate-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "wsgate/cli.py" in names
    if shutil.which("cc") or shutil.which("gcc"):
        for ext in ("_frames", "_relay"):
            assert any(n.startswith(f"wsgate/proxy/{ext}.") and n.endswith(".so") for n in names)
