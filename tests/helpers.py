"""Helpers shared by the integration and interop tests: real peers in subprocesses.

Readiness is always a line the peer prints (``Listening on 127.0.0.1:PORT``), never a sleep or
a guessed free port.  Every process started here is stopped by :meth:`Peer.stop`, which
escalates from SIGTERM to SIGKILL, so a fixture finalizer or a ``with`` block cannot leak one.

* :class:`Peer` runs a command with pipes; a reader thread collects stdout and stderr lines so
  :meth:`Peer.wait_for` can wait for a regex with a timeout.
* :class:`PtyPeer` runs a command on a pseudo-terminal, for clients such as ``wscat`` that only
  print their interactive lines (``Connected ...``, ``< MSG``) when stdout is a terminal.
* :func:`node_binary`, :data:`NODE_MODULES`, :func:`require_node` find Node.js and the npm
  packages, or skip the test with a reason.
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import pytest

__all__ = [
    "LISTENING_RE",
    "NODE_MODULES",
    "REPO_ROOT",
    "Peer",
    "PtyPeer",
    "node_binary",
    "python_tool",
    "render_terminal",
    "require_node",
    "strip_ansi",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = REPO_ROOT / "node_modules"
#: The readiness line of ``wsgate-echo --port 0`` and ``PORT=0 node tests/interop/server.js``.
LISTENING_RE = re.compile(r"^Listening on (?:\[(?P<host6>[^\]]+)\]|(?P<host>[^:]+)):(?P<port>\d+)$")
#: Default seconds to wait for a line; generous for a loaded CI machine, short for a hung test.
DEFAULT_TIMEOUT = 5.0

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
_TERM_RE = re.compile(r"\x1b\[(?P<arg>[0-9;?]*)(?P<cmd>[A-Za-z])|(?P<ctl>[\r\n\b])")


def strip_ansi(text: str) -> str:
    """Remove terminal escape sequences and carriage returns (what a pty adds)."""
    return _ANSI_RE.sub("", text)


def render_terminal(text: str) -> list[str]:
    """The lines a terminal would show for ``text``, one per line feed.

    Just enough of a VT100 for readline-style clients (wscat, wsgate-cat): carriage return,
    backspace, cursor column moves (``G``, ``C``, ``D``) and line erases (``K``, ``J``, ``2K``);
    colours and other sequences are dropped.  ``wscat`` redraws its ``> `` prompt and clears
    the line before printing a message, so comparing raw bytes with the walk-through is useless.
    """
    lines: list[str] = []
    line: list[str] = []
    col = 0
    pos = 0

    def put(chars: str) -> None:
        nonlocal col
        for char in chars:
            if col < len(line):
                line[col] = char
            else:
                line.extend(" " * (col - len(line)))
                line.append(char)
            col += 1

    for match in _TERM_RE.finditer(text):
        put(text[pos : match.start()])
        pos = match.end()
        ctl, cmd, arg = match["ctl"], match["cmd"], match["arg"]
        number = int(arg) if arg and arg.isdigit() else None
        if ctl == "\n":
            lines.append("".join(line).rstrip())
            line, col = [], 0
        elif ctl == "\r":
            col = 0
        elif ctl == "\b":
            col = max(col - 1, 0)
        elif cmd == "G":
            col = (number or 1) - 1
        elif cmd == "C":
            col += number or 1
        elif cmd == "D":
            col = max(col - (number or 1), 0)
        elif cmd in "KJ":
            if number == 2:
                line = []
            elif number == 1:
                line[:col] = [" "] * min(col, len(line))
            else:
                del line[col:]
    put(text[pos:])
    lines.append("".join(line).rstrip())
    return lines


def python_tool(module: str, *args: str) -> list[str]:
    """The argv to run one of wsgate's tools with this interpreter, e.g. ``wsgate.tools.echo``."""
    return [sys.executable, "-m", module, *args]


def node_binary() -> str | None:
    """Path of ``node`` on PATH, or None."""
    return shutil.which("node")


def require_node(*packages: str) -> str:
    """Return the ``node`` binary, or skip the test saying what is missing."""
    node = node_binary()
    if node is None:
        pytest.skip("Node.js interop test: `node` is not on PATH")
    for package in packages:
        if not (NODE_MODULES / package / "package.json").is_file():
            pytest.skip(f"Node.js interop test: node_modules/{package} missing (run `make node`)")
    return node


class _Lines:
    """Lines read from a stream by a thread, with a condition to wait on."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.closed = False
        self.cond = threading.Condition()

    def add(self, line: str) -> None:
        with self.cond:
            self.lines.append(line)
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait_for(self, pattern: re.Pattern[str], start: int, timeout: float) -> tuple[int, str]:
        """Index and text of the first line at or after ``start`` matching ``pattern``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            index = start
            while True:
                while index < len(self.lines):
                    if pattern.search(self.lines[index]):
                        return index, self.lines[index]
                    index += 1
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    raise TimeoutError
                self.cond.wait(remaining)


def _stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; return the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


class Peer:
    """A subprocess whose stdout/stderr lines can be awaited with a timeout.

    Use as a context manager or call :meth:`stop` from a fixture finalizer.  ``stdin=True``
    gives a pipe for :meth:`write`; otherwise stdin is ``/dev/null``.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdin: bool = False,
    ) -> None:
        self.argv = list(argv)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=cwd or REPO_ROOT,
        )
        self.out = _Lines()
        self.err = _Lines()
        self._cursor = 0
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(stream: object, sink: _Lines) -> None:
        assert hasattr(stream, "readline")
        try:
            for raw in iter(stream.readline, b""):
                sink.add(raw.decode("utf-8", "replace").rstrip("\r\n"))
        finally:
            sink.close()

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = DEFAULT_TIMEOUT) -> str:
        """Wait for the next stdout line matching ``pattern`` (after the last one found).

        Raises AssertionError with everything the process printed when it does not come.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        try:
            index, line = self.out.wait_for(regex, self._cursor, timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.argv!r}: no stdout line matching {regex.pattern!r} within {timeout} s "
                f"(exit status {self.proc.poll()})\nstdout: {self.out.lines!r}\n"
                f"stderr: {self.err.lines!r}"
            ) from None
        self._cursor = index + 1
        return line

    def wait_listening(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for ``Listening on HOST:PORT`` and return the port."""
        match = LISTENING_RE.match(self.wait_for(LISTENING_RE, timeout))
        assert match is not None
        return int(match["port"])

    def write(self, text: str) -> None:
        """Write to stdin (requires ``stdin=True``)."""
        assert self.proc.stdin is not None, "started without stdin=True"
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the process to exit on its own; kill it and fail if it does not."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"{self.argv!r} did not exit within {timeout} s\n"
                f"stdout: {self.out.lines!r}\nstderr: {self.err.lines!r}"
            ) from None
        self._join()
        return status

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Terminate (then kill) the process, close its pipes; return the exit status."""
        self.close_stdin()
        status = _stop_process(self.proc, timeout)
        self._join()
        return status

    def _join(self) -> None:
        for thread in self._threads:
            thread.join(DEFAULT_TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()

    @property
    def stdout_lines(self) -> list[str]:
        return list(self.out.lines)

    @property
    def stderr_lines(self) -> list[str]:
        return list(self.err.lines)

    def __enter__(self) -> Peer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PtyPeer:
    """A subprocess on a pseudo-terminal (stdin, stdout and stderr), for interactive clients.

    ``wscat`` prints ``Connected (press CTRL+C to quit)`` and ``< MSG`` only to a terminal and
    exits as soon as a piped stdin ends, so the walk-through's transcript needs a pty.
    :meth:`wait_for` matches against the output with escape sequences removed.
    """

    def __init__(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.argv = list(argv)
        master, slave = pty.openpty()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env={**os.environ, **(env or {})},
                cwd=cwd or REPO_ROOT,
                start_new_session=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._master = master
        self._raw = bytearray()
        self._cond = threading.Condition()
        self._closed = False
        self._cursor = 0
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: every slave end is closed (the child exited)
                chunk = b""
            with self._cond:
                if not chunk:
                    self._closed = True
                    self._cond.notify_all()
                    return
                self._raw += chunk
                self._cond.notify_all()

    @property
    def lines(self) -> list[str]:
        """The terminal's lines so far (see :func:`render_terminal`); the last may be partial."""
        with self._cond:
            return render_terminal(self._raw.decode("utf-8", "replace"))

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = DEFAULT_TIMEOUT) -> str:
        """Wait for a complete line (after the last match) matching ``pattern``; return it."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                complete = render_terminal(self._raw.decode("utf-8", "replace"))[:-1]
                for index in range(self._cursor, len(complete)):
                    if regex.search(complete[index]):
                        self._cursor = index + 1
                        return complete[index]
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    raise AssertionError(
                        f"{self.argv!r}: no line matching {regex.pattern!r} within {timeout} s "
                        f"(exit status {self.proc.poll()})\nscreen: {complete!r}"
                    )
                self._cond.wait(remaining)

    def wait_prompt(self, prompt: str = "> ", timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the cursor's (partial) line shows ``prompt``: typing before the program
        has drawn its prompt would put the text on the screen ahead of it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                screen = render_terminal(self._raw.decode("utf-8", "replace"))
                if screen and screen[-1].rstrip() == prompt.rstrip():
                    return
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    raise AssertionError(f"{self.argv!r}: no prompt {prompt!r}\nscreen: {screen!r}")
                self._cond.wait(remaining)

    def write(self, text: str) -> None:
        """Type ``text`` on the terminal (use ``\\r`` or ``\\n`` for Enter)."""
        os.write(self._master, text.encode())

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the process to exit on its own; kill it and fail if it does not."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.argv!r} did not exit within {timeout} s") from None
        finally:
            if self.proc.poll() is not None:
                self._close()

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Terminate (then kill) the process and release the terminal."""
        status = _stop_process(self.proc, timeout)
        self._close()
        return status

    def _close(self) -> None:
        self._thread.join(DEFAULT_TIMEOUT)
        with self._cond:
            if self._master >= 0:
                os.close(self._master)
                self._master = -1

    def __enter__(self) -> PtyPeer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def install_wheel(wheel: Path, venv: Path) -> Path:
    """Install ``wheel`` alone into a new virtual environment ``venv``, its dependencies
    taken from this environment (a ``.pth`` file, offline); returns its site-packages."""
    import uvloop

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
        + ["install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    (site,) = (venv / "lib").glob("python3*/site-packages")
    deps = Path(uvloop.__file__).resolve().parents[1]
    (site / "wsgate_test_deps.pth").write_text(f"{deps}\n")
    return site


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair: (the connecting end, the accepted end), both blocking."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        outside = socket.create_connection(listener.getsockname())
        inside, _ = listener.accept()
    finally:
        listener.close()
    return outside, inside


def distinct_sockets(pids: list[int]) -> int:
    """The sockets the processes ``pids`` hold, each counted once: a tunnel's socket handed
    to wsgate's compiled relay is two descriptors of one socket for a moment
    (src/wsgate/proxy/fdrelay.py), and one connection either way."""
    found: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:"):
                found.add(link)
    return len(found)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes from a blocking socket; fails the test if it ends first."""
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(1 << 20, n - len(data)))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)
