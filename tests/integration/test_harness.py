"""An nginx test harness's start/stop cycle, with ``wsgate`` in place of the nginx binary.

nginx's own test suite (nginx-tests, ``Test::Nginx``) writes a configuration with
``daemon off; master_process off; pid DIR/nginx.pid; error_log DIR/error.log debug;``,
runs ``nginx -p DIR/ -c nginx.conf -e error.log``, waits for the pid file and the listening
port, runs its requests, sends QUIT, waits for the exit, and fails on any ``[alert]`` or
``[emerg]`` in the error log.  The daemon cycle uses ``-s stop`` through the pid file.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

WSGATE = [sys.executable, "-m", "wsgate.cli"]


def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def listening_port(error_log: Path) -> int:
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", error_log.read_text())
    assert m is not None, error_log.read_text()
    return int(m.group(1))


def get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data


CONF = """
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log debug;
events {{ }}
http {{
    access_log {dir}/access.log;
    server {{ listen 127.0.0.1:0; location / {{ return 200 "harness ok"; }} }}
}}
"""


def test_foreground_cycle_like_test_nginx(tmp_path: Path) -> None:
    (tmp_path / "nginx.conf").write_text(CONF.format(dir=tmp_path))
    proc = subprocess.Popen(
        [*WSGATE, "-p", f"{tmp_path}/", "-c", "nginx.conf", "-e", "error.log"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_file(tmp_path / "nginx.pid")
        assert (tmp_path / "nginx.pid").read_text().strip() == str(proc.pid)
        port = listening_port(tmp_path / "error.log")
        assert get(port).endswith(b"harness ok")
        proc.send_signal(signal.SIGQUIT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    log = (tmp_path / "error.log").read_text()
    assert "[alert]" not in log and "[emerg]" not in log, log
    assert err == b"" and out == b""
    assert not (tmp_path / "nginx.pid").exists()
    assert '"GET / HTTP/1.0" 200 10' in (tmp_path / "access.log").read_text()


def test_daemon_cycle_with_s_stop(tmp_path: Path) -> None:
    conf = CONF.format(dir=tmp_path).replace("daemon off;\n", "")
    (tmp_path / "nginx.conf").write_text(conf)
    started = subprocess.run(
        [*WSGATE, "-p", f"{tmp_path}/", "-c", "nginx.conf"], capture_output=True, timeout=30
    )
    assert started.returncode == 0, started.stderr
    wait_for_file(tmp_path / "nginx.pid")
    pid = int((tmp_path / "nginx.pid").read_text())
    try:
        assert get(listening_port(tmp_path / "error.log")).endswith(b"harness ok")
        stop = subprocess.run(
            [*WSGATE, "-p", f"{tmp_path}/", "-c", "nginx.conf", "-s", "stop"],
            capture_output=True,
            timeout=30,
        )
        assert stop.returncode == 0, stop.stderr
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, "daemon did not stop"
            time.sleep(0.01)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not (tmp_path / "nginx.pid").exists()
    assert "[alert]" not in (tmp_path / "error.log").read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of a detached daemon is reaped by init; treat "Z" as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except OSError:
        return False
    return state != "Z"
