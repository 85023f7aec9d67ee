"""Upgrading wsgate in place, nginx's way: USR2, WINCH, QUIT (and the ways back).

The project is built into a wheel once and installed into two virtual environments; the second
install stands for a newer release (its ``__version__`` is changed after the install, so the
log and the ``Server`` header tell which code serves).  wsgate is started through a symlink to
the first install's ``wsgate`` script; the upgrade points the symlink at the second one, as a
package manager replacing the binary would, and sends USR2.

Throughout, clients churn (connect, handshake, message, close: see
:mod:`tests.integration.test_zero_downtime`) and tunnels opened before the upgrade keep
exchanging messages; not one connection may be dropped.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import WsgateProcess, start_wsgate
from tests.helpers import install_wheel
from tests.integration.test_process_model import (
    Backend,
    Client,
    conf,
    http_get,
    in_thread,
    open_clients,
    run,
    wait_until,
)
from tests.integration.test_zero_downtime import Churn, churn_once

NEW_VERSION = "0.1.0+upgraded"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The ``wsgate`` scripts of two installs of this source tree: the current version and
    a "newer" one.  Their dependencies come from this environment (a ``.pth`` file)."""
    base = tmp_path_factory.mktemp("installs")
    wheels = base / "wheels"
    # Offline: setuptools is in the test extra, so no build environment is downloaded.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("wsgate-*.whl")
    scripts = []
    for name, version in (("v1", None), ("v2", NEW_VERSION)):
        venv = base / name
        site = install_wheel(wheel, venv)
        if version is not None:
            init = site / "wsgate" / "__init__.py"
            text = init.read_text()
            assert '__version__ = "0.1.0"' in text
            init.write_text(text.replace('__version__ = "0.1.0"', f'__version__ = "{version}"'))
        scripts.append(venv / "bin" / "wsgate")
    return scripts[0], scripts[1]


def point(link: Path, target: Path) -> None:
    """Replace ``link`` atomically with a symlink to ``target``."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts: its parent may not be us)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def read_pid(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


async def server_header(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /gen HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"server:"):
            return line.split(b":", 1)[1].strip().decode()
    raise AssertionError(data)


async def usr2(gw: WsgateProcess, version: str) -> int:
    """USR2 to the running master; returns the new master's pid once it serves."""
    old = read_pid(gw.pid_file)
    mark = len(gw.errors())
    os.kill(old, signal.SIGUSR2)
    m = await in_thread(gw.wait_log, rf"wsgate/{re.escape(version)} started, pid (\d+)", 20, mark)
    new = int(m.group(1))
    assert new != old
    await in_thread(wait_until, lambda: read_pid(gw.pid_file) == new, "the new pid file")
    assert read_pid(Path(f"{gw.pid_file}.oldbin")) == old
    await in_thread(wait_until, lambda: len(children(new)) == 2, "the new workers")
    return new


async def teardown(gw: WsgateProcess, new: int, backend: Backend) -> None:
    """End both masters (the new one by QUIT, as an operator would) and the backend; the
    old master's log must hold no ``[alert]`` and its stderr no traceback."""
    if new and not gone(new):
        os.kill(new, signal.SIGQUIT)
        await in_thread(wait_until, lambda: gone(new), "the new master to exit")
    if gw.proc.poll() is None:
        gw.stop()
    backend.close()
    log = gw.errors()
    assert "[alert]" not in log and "Traceback" not in gw.stderr, log + gw.stderr


async def talk(clients: list[Client]) -> None:
    for c in clients:
        await c.exchange()


@pytest.mark.timeout(180)
def test_upgrade_between_two_installs_drops_nothing(
    tmp_path: Path, installs: tuple[Path, Path]
) -> None:
    """USR2 (to the new install), WINCH, QUIT of the old master: no churning connection is
    dropped, the tunnels opened before the upgrade still echo afterwards, new connections
    are served by the new code, and the old master exits once its tunnels close."""
    v1, v2 = installs
    link = tmp_path / "bin" / "wsgate"
    link.parent.mkdir()
    point(link, v1)

    async def scenario() -> None:
        backend = await Backend("a").start()
        gw = await in_thread(
            lambda: start_wsgate(tmp_path / "gw", conf([backend]), command=(str(link),))
        )
        old = gw.proc.pid
        new = 0
        try:
            assert await server_header(gw.port) == "wsgate/0.1.0"
            tunnels = await open_clients(gw.port, 20, prefix="before")
            churn = Churn(gw.port).start()
            point(link, v2)  # the package manager installs the new release
            new = await usr2(gw, NEW_VERSION)
            await talk(tunnels)
            mark = len(gw.errors())
            os.kill(old, signal.SIGWINCH)
            await in_thread(
                wait_until,
                lambda: gw.errors().count("gracefully shutting down", mark) >= 2,
                "the old workers to retire",
            )
            assert await server_header(gw.port) == f"wsgate/{NEW_VERSION}"
            os.kill(old, signal.SIGQUIT)
            await in_thread(gw.wait_log, rf"{old}#0: signal 3 \(SIGQUIT\)", 10, mark)
            # The tunnels of the old generation live on, on the old workers.
            await talk(tunnels)
            await talk(tunnels)
            carriers = {int(backend.worker[c.cid]) for c in tunnels}
            assert carriers <= set(children(old)), (carriers, children(old))
            outcomes = await churn.finish()
            print(f"\nupgrade: {dict(outcomes)}")
            assert outcomes["ok"] > 0 and set(outcomes) == {"ok"}, outcomes
            # The old master exits once its last tunnel has ended.
            for c in tunnels:
                await c.ws.close()
            assert await in_thread(gw.proc.wait, 30) == 0
            assert not Path(f"{gw.pid_file}.oldbin").exists()
            assert read_pid(gw.pid_file) == new
            assert await server_header(gw.port) == f"wsgate/{NEW_VERSION}"
        finally:
            await teardown(gw, new, backend)

    run(scenario())


@pytest.mark.timeout(120)
def test_upgrade_to_a_binary_that_fails_keeps_the_old_master(tmp_path: Path) -> None:
    """A new binary that cannot start (here: the configuration broke meanwhile; and a
    binary that cannot be executed at all) leaves the old master serving, with its pid file
    back under its name and the reason in the logs."""

    async def scenario() -> None:
        backend = await Backend("a").start()
        gw = await in_thread(start_wsgate, tmp_path / "gw", conf([backend]))
        try:
            churn = Churn(gw.port).start()
            good = gw.conf.read_text()
            gw.conf.write_text(good + "\nbogus_directive on;\n")
            mark = len(gw.errors())
            gw.signal(signal.SIGUSR2)
            m = await in_thread(
                gw.wait_log,
                r"\[alert\] \d+#0: new binary process (\d+) exited with code 1",
                20,
                mark,
            )
            await in_thread(
                wait_until, lambda: read_pid(gw.pid_file) == gw.proc.pid, "the pid file back"
            )
            assert not Path(f"{gw.pid_file}.oldbin").exists()
            assert 'unknown directive "bogus_directive"' in gw.stderr
            assert int(m.group(1)) != gw.proc.pid
            # Still the one instance, still serving; a second attempt works once it is fixed.
            assert len(children(gw.proc.pid)) == 2
            assert (await http_get(gw.port, "/gen")).startswith("0 ")
            outcomes = await churn.finish()
            print(f"\nfailed upgrade: {dict(outcomes)}")
            assert outcomes["ok"] > 0 and set(outcomes) == {"ok"}, outcomes
        finally:
            gw.conf.write_text(good)
            if gw.proc.poll() is None:
                assert gw.stop() == 0
            backend.close()

    run(scenario())


@pytest.mark.timeout(120)
def test_upgrade_to_a_missing_binary_is_logged_and_changes_nothing(
    tmp_path: Path, installs: tuple[Path, Path]
) -> None:
    link = tmp_path / "bin" / "wsgate"
    link.parent.mkdir()
    point(link, installs[0])

    async def scenario() -> None:
        backend = await Backend("a").start()
        gw = await in_thread(
            lambda: start_wsgate(tmp_path / "gw", conf([backend]), command=(str(link),))
        )
        try:
            point(link, tmp_path / "bin" / "removed")
            mark = len(gw.errors())
            gw.signal(signal.SIGUSR2)
            await in_thread(
                gw.wait_log,
                r"\[alert\] \d+#0: execve\(\) failed while executing new binary process "
                rf'"{re.escape(str(link))}" \(2: No such file or directory\)',
                20,
                mark,
            )
            await in_thread(gw.wait_log, r"new binary process \d+ exited with code 1", 20, mark)
            await in_thread(
                wait_until, lambda: read_pid(gw.pid_file) == gw.proc.pid, "the pid file back"
            )
            assert (await http_get(gw.port, "/gen")).startswith("0 ")
        finally:
            if gw.proc.poll() is None:
                assert gw.stop() == 0
            backend.close()

    run(scenario())


@pytest.mark.timeout(150)
@pytest.mark.parametrize("how", ["hup", "new-exits"])
def test_way_back_after_winch(tmp_path: Path, how: str) -> None:
    """nginx's rollback: after USR2 and WINCH, either HUP the old master (its workers come
    back on its configuration) and then QUIT the new one, or just QUIT the new one (the old
    master restarts its workers itself).  The pid file is the old master's again, and no
    churning connection is dropped on the way."""

    async def scenario() -> None:
        backend = await Backend("a").start()
        gw = await in_thread(start_wsgate, tmp_path / "gw", conf([backend]))
        old = gw.proc.pid
        new = 0
        try:
            churn = Churn(gw.port).start()
            new = await usr2(gw, "0.1.0")
            mark = len(gw.errors())
            os.kill(old, signal.SIGWINCH)
            await in_thread(
                wait_until, lambda: len(children(old)) == 1, "only the new master as a child"
            )
            if how == "hup":
                os.kill(old, signal.SIGHUP)
                await in_thread(wait_until, lambda: len(children(old)) == 3, "the old workers back")
            os.kill(new, signal.SIGQUIT)
            await in_thread(wait_until, lambda: gone(new), "the new master to exit")
            await in_thread(gw.wait_log, r"new binary process \d+ exited with code 0", 10, mark)
            await in_thread(wait_until, lambda: read_pid(gw.pid_file) == old, "the pid file")
            await in_thread(wait_until, lambda: len(children(old)) == 2, "two workers")
            await asyncio.sleep(0.5)  # churn on the restored generation, not a readiness wait
            outcomes = await churn.finish()
            print(f"\nrollback ({how}): {dict(outcomes)}")
            # Tunnels that the QUIT of the new master found open got its 1001: answered.
            assert outcomes["ok"] > 0 and set(outcomes) <= {"ok", "going away"}, outcomes
        finally:
            await teardown(gw, new, backend)

    run(scenario())


def test_a_second_usr2_during_an_upgrade_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = await Backend("a").start()
        gw = await in_thread(start_wsgate, tmp_path / "gw", conf([backend]))
        new = 0
        try:
            new = await usr2(gw, "0.1.0")
            mark = len(gw.errors())
            os.kill(gw.proc.pid, signal.SIGUSR2)
            await in_thread(gw.wait_log, r"the changing binary signal is ignored", 10, mark)
            assert read_pid(gw.pid_file) == new
        finally:
            if new and not gone(new):
                os.kill(new, signal.SIGQUIT)
                await in_thread(wait_until, lambda: gone(new), "the new master to exit")
            began = time.monotonic()
            assert gw.stop(signal.SIGQUIT) == 0, time.monotonic() - began
            backend.close()

    run(scenario())


def limited_conf(backend: Backend) -> str:
    return f"""
worker_processes 2;
events {{ }}
http {{
  access_log off;
  limit_conn_zone $binary_remote_addr zone=perip:1m;
  server {{ listen 127.0.0.1:0;
    location = /status {{ stub_status; }}
    location / {{ limit_conn perip 3;
                 proxy_pass http://127.0.0.1:{backend.port};
                 proxy_http_version 1.1;
                 proxy_set_header Upgrade $http_upgrade;
                 proxy_set_header Connection upgrade;
                 proxy_set_header X-Worker $pid; }} }}
}}
"""


@pytest.mark.timeout(120)
def test_upgrade_keeps_limit_conn_and_counters(tmp_path: Path) -> None:
    """The new master maps the old one's shared memory: the limit_conn slots held by the
    old generation's tunnels still count (a fourth tunnel gets 503) until those tunnels end,
    and stub_status's accepts go on from where they were."""

    async def scenario() -> None:
        backend = await Backend("a").start()
        gw = await in_thread(start_wsgate, tmp_path / "gw", limited_conf(backend))
        new = 0
        try:
            tunnels = await open_clients(gw.port, 3, prefix="held")
            before = int((await http_get(gw.port, "/status")).split("\n")[2].split()[0])
            new = await usr2(gw, "0.1.0")
            mark = len(gw.errors())
            os.kill(gw.proc.pid, signal.SIGWINCH)
            await in_thread(
                wait_until,
                lambda: gw.errors().count("gracefully shutting down", mark) >= 2,
                "the old workers to retire",
            )
            assert "not inherited" not in gw.errors()
            assert (await churn_once(gw.port)) == "HTTP/1.1 503 Service Temporarily Unavailable"
            await talk(tunnels)
            await tunnels[0].ws.close()
            await in_thread(wait_until, lambda: "/held0" in backend.closes, "a tunnel closed")
            # Released by the old worker, in the memory the new master's workers use.
            ok = await churn_once(gw.port)
            for _ in range(100):
                if ok != "HTTP/1.1 503 Service Temporarily Unavailable":
                    break
                await asyncio.sleep(0.05)  # the old worker's release is asynchronous
                ok = await churn_once(gw.port)
            assert ok == "ok"
            after = int((await http_get(gw.port, "/status")).split("\n")[2].split()[0])
            assert after > before >= 4, (before, after)
            for c in tunnels[1:]:
                await c.ws.close()
            os.kill(gw.proc.pid, signal.SIGQUIT)
            assert await in_thread(gw.proc.wait, 30) == 0
        finally:
            await teardown(gw, new, backend)

    run(scenario())


@pytest.mark.timeout(120)
def test_the_upgrade_script_drops_nothing(tmp_path: Path) -> None:
    """examples/wsgate-upgrade (what the systemd recipe runs) under churning clients."""

    async def scenario() -> None:
        backend = await Backend("a").start()
        gw = await in_thread(start_wsgate, tmp_path / "gw", conf([backend]))
        old = gw.proc.pid
        new = 0
        try:
            churn = Churn(gw.port).start()
            done = await asyncio.create_subprocess_exec(
                str(ROOT / "examples" / "wsgate-upgrade"),
                str(gw.pid_file),
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await done.communicate()
            assert done.returncode == 0, out
            new = read_pid(gw.pid_file)
            assert new != old and f"{new} serves" in out.decode()
            assert await in_thread(gw.proc.wait, 30) == 0
            await in_thread(wait_until, lambda: len(children(new)) == 2, "the new workers")
            outcomes = await churn.finish()
            print(f"\nupgrade script: {dict(outcomes)}")
            assert outcomes["ok"] > 0 and set(outcomes) == {"ok"}, outcomes
        finally:
            await teardown(gw, new, backend)

    run(scenario())
