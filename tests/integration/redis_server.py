"""A real ``redis-server`` on a unix socket in a temporary directory, for the tests of the
limit zones kept in Redis (:mod:`wsgate.limits_redis`).

Started with ``--port 0 --unixsocket PATH --save '' --appendonly no``: no TCP port, no data
on disk, so a restart on the same socket starts empty (as a Redis without persistence does).
Readiness is a ``PING`` answered on the socket, polled; nothing sleeps a fixed time.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = ["RedisServer", "redis_server_or_skip"]

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
)


def _ping(path: str, auth: str = "") -> bool:
    """Whether the server at ``path`` answers PING (after ``AUTH auth``, if given)."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(path)
            if auth:
                s.sendall(f"AUTH {auth}\r\n".encode())
                if not s.recv(64).startswith(b"+OK"):
                    return False
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server; :meth:`stop` and :meth:`start` again keep the socket's path."""

    def __init__(self, directory: Path, args: tuple[str, ...] = (), auth: str = "") -> None:
        """``args``: more of redis-server's options; ``auth``: what ``AUTH`` takes to reach
        it (``PASSWORD`` or ``USER PASSWORD``), when ``args`` require one."""
        assert REDIS_SERVER is not None
        self.directory = directory
        self.args = args
        self.auth = auth
        self.socket = str(directory / "redis.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """What ``redis=`` says."""
        return f"unix:{self.socket}"

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None
        log = open(self.directory / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER or "redis-server",
                "--port",
                "0",
                "--unixsocket",
                self.socket,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *self.args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not _ping(self.socket, self.auth):
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"redis-server exited: {(self.directory / 'redis.log').read_text()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("redis-server did not answer PING")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop it (SIGTERM; data are not saved) and wait until the socket is gone."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        Path(self.socket).unlink(missing_ok=True)

    def client(self) -> Any:
        """redis-py's synchronous client on the socket."""
        import redis

        return redis.Redis(unix_socket_path=self.socket, socket_timeout=5)


def redis_server_or_skip(
    directory: Path, args: tuple[str, ...] = (), auth: str = ""
) -> RedisServer:
    """A started server, or the test is skipped with the reason."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; make debs)")
    pytest.importorskip("redis", reason="no redis package (pip install -e '.[test]')")
    server = RedisServer(directory, args, auth)
    server.start()
    return server
