"""``wsgate-cat``: a ``wscat``-like WebSocket client, so the walk-through runs without Node.js.

The article drives the proxy with ``wscat --connect ws://PROXY:8020``.  This client prints the
same lines as ``wscat`` 6 does on a terminal (``bin/wscat`` in the npm package):

* ``Connected (press CTRL+C to quit)`` once the opening handshake succeeded (RFC 6455 §4.1);
* ``< MSG`` for every message received;
* ``Disconnected (code: 1000, reason: "")`` when the connection ends, with the close code and
  reason the peer sent (RFC 6455 §7.1.5; 1006 when no Close frame arrived);
* ``error: MSG`` on standard error, exit status 1, when the connection fails, e.g.
  ``error: connect ECONNREFUSED 127.0.0.1:8020`` or
  ``error: Unexpected server response: 502`` when the answer is not ``101``.

Unlike ``wscat``, it prints those lines even when its output is not a terminal, because scripts
and tests are the reason it exists; the ``> `` prompt and colours, on the other hand, appear only
on a terminal.  ``wscat`` also exits the moment its standard input ends, dropping replies still in
flight; ``wsgate-cat`` then waits for them instead: after the last input line (or the last
``-x`` message) it waits until it has received at least as many messages as it sent, the server
closes, or ``--wait`` seconds pass, then closes with 1000 and exits 0.  A server that answers
one message with several may need ``-w -1`` (wait for the server to close).

Input is read by a daemon thread with plain ``os.read`` on file descriptor 0: it works for
terminals, pipes and regular files alike and never holds the ``sys.stdin`` lock, so the process
can always exit while the thread is blocked.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import TextIO
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.typing import Data, Subprotocol

from wsgate.loop import new_event_loop

__all__ = ["DEFAULT_MAX_SIZE", "DEFAULT_WAIT", "build_parser", "main"]

#: Seconds to wait for outstanding replies after the input ends (``wscat -x`` waits 2 s).
DEFAULT_WAIT = 2.0
#: Largest incoming message; ``--max-size 0`` removes the limit.
DEFAULT_MAX_SIZE = 16 * 1024 * 1024

CONNECTED_LINE = "Connected (press CTRL+C to quit)"
PROMPT = "> "

# wscat's colours (Console.Colors): control lines green, incoming blue, errors yellow.
_GREEN, _BLUE, _YELLOW, _DEFAULT = "\x1b[32m", "\x1b[34m", "\x1b[33m", "\x1b[39m"
_CLEAR_LINE = "\r\x1b[2K"


def _header(value: str) -> tuple[str, str]:
    """Parse ``-H "Name: value"`` the way wscat does: split at the first colon."""
    name, sep, rest = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip(), rest.strip()


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser; option names follow wscat's."""
    parser = argparse.ArgumentParser(
        prog="wsgate-cat",
        description="A wscat-like WebSocket client: send stdin lines, print received messages.",
    )
    parser.add_argument(
        "-c", "--connect", required=True, metavar="URL", help="WebSocket URL to connect to"
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        type=_header,
        metavar="'NAME: VALUE'",
        help="set an HTTP header on the handshake request (repeatable)",
    )
    parser.add_argument(
        "-s",
        "--subprotocol",
        action="append",
        default=[],
        metavar="PROTOCOL",
        help="offer a subprotocol (repeatable)",
    )
    parser.add_argument("-o", "--origin", help="send this Origin header")
    parser.add_argument(
        "-x",
        "--execute",
        action="append",
        default=[],
        metavar="MSG",
        help="send MSG after connecting, print the replies bare and exit (repeatable)",
    )
    parser.add_argument(
        "-w",
        "--wait",
        type=float,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=(
            f"after the input ends, wait up to SECONDS (default {DEFAULT_WAIT:g}) for replies; "
            "-1 waits until the server closes"
        ),
    )
    parser.add_argument("--no-color", dest="color", action="store_false", help="run without colour")
    parser.add_argument(
        "--max-size",
        type=int,
        default=DEFAULT_MAX_SIZE,
        metavar="BYTES",
        help=f"largest incoming message in bytes (default {DEFAULT_MAX_SIZE}; 0 = no limit)",
    )
    parser.add_argument(
        "--proxy",
        metavar="URL",
        help="connect through this HTTP proxy (environment proxy settings are ignored)",
    )
    return parser


class _Console:
    """Where wscat's ``Console.print`` goes: stdout for messages, stderr for errors.

    The prompt is shown only when both stdin and stdout are terminals; on a terminal an incoming
    message first clears the prompt line and then redraws the prompt, like wscat's readline.
    """

    def __init__(self, *, color: bool, bare: bool) -> None:
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        self.color = color and self.out.isatty()
        self.interactive = not bare and sys.stdin.isatty() and self.out.isatty()
        self.bare = bare  # -x: replies without "< ", no Connected/Disconnected lines

    def _write(self, text: str, color: str) -> None:
        prefix = _CLEAR_LINE if self.interactive else ""
        if self.color and color:
            text = f"{color}{text}{_DEFAULT}"
        self.out.write(f"{prefix}{text}\n")
        if self.interactive:
            self.out.write(PROMPT)
        self.out.flush()

    def control(self, text: str) -> None:
        if not self.bare:
            self._write(text, _GREEN)

    def incoming(self, message: Data) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "backslashreplace")
        self._write(text if self.bare else f"< {text}", _BLUE)

    def prompt(self) -> None:
        if self.interactive:
            self.out.write(PROMPT)
            self.out.flush()

    def end_prompt(self) -> None:
        """Leave the prompt line before the final output (after ^C or ^D)."""
        if self.interactive:
            self.out.write(_CLEAR_LINE)
            self.out.flush()

    def error(self, text: str) -> None:
        line = f"error: {text}"
        if self.err.isatty() and self.color:
            line = f"{_YELLOW}{line}{_DEFAULT}"
        self.err.write(line + "\n")
        self.err.flush()


def _start_stdin_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Feed stdin lines (without their line ending) into ``queue``, then ``None`` at EOF."""

    def put(item: str | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the program is exiting
            pass

    def run() -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(0, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                put(raw.rstrip(b"\r").decode("utf-8", "replace"))
        if pending:
            put(pending.rstrip(b"\r").decode("utf-8", "replace"))
        put(None)

    threading.Thread(target=run, name="wsgate-cat-stdin", daemon=True).start()


class _Session:
    """One connection: send input, print what arrives, count both for the final wait."""

    def __init__(self, ws: ClientConnection, console: _Console, wait: float) -> None:
        self.ws = ws
        self.console = console
        self.wait = wait
        self.sent = 0
        self.received = 0
        self.arrived = asyncio.Event()

    async def receive(self) -> None:
        """Print messages until the connection closes, normally or not."""
        try:
            async for message in self.ws:
                self.console.incoming(message)
                self.received += 1
                self.arrived.set()
        except ConnectionClosed:
            pass

    async def send_all(self, messages: asyncio.Queue[str | None]) -> None:
        """Send each line until ``None`` (end of input), then wait for the replies."""
        while (line := await messages.get()) is not None:
            await self.ws.send(line)
            self.sent += 1
            self.console.prompt()
        await self.wait_for_replies()

    async def wait_for_replies(self) -> None:
        """Return once ``received >= sent``, or after ``wait`` seconds; never if ``wait < 0``."""
        if self.wait < 0:
            await self.ws.wait_closed()
            return
        try:
            async with asyncio.timeout(self.wait):
                while self.received < self.sent:
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            pass


def _normalize_url(url: str) -> str:
    """Add ``ws://`` when no scheme is given and accept ``http(s)://``, as wscat (ws 8) does."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return f"ws://{url}"
    return {"http": f"ws://{rest}", "https": f"wss://{rest}"}.get(scheme.lower(), url)


def _describe_failure(exc: Exception, url: str) -> str:
    """The text after ``error: ``, worded like wscat (Node's ``ws``) where it has a wording."""
    if isinstance(exc, InvalidStatus):
        return f"Unexpected server response: {exc.response.status_code}"
    if isinstance(exc, ConnectionRefusedError):
        parts = urlsplit(url)
        default_port = 443 if parts.scheme == "wss" else 80
        return f"connect ECONNREFUSED {parts.hostname}:{parts.port or default_port}"
    if isinstance(exc, socket.gaierror):
        return f"getaddrinfo ENOTFOUND {urlsplit(url).hostname}"
    if isinstance(exc, InvalidURI | ValueError):
        return f"Invalid URL: {url}"
    if isinstance(exc, TimeoutError):
        return "Opening handshake has timed out"
    return str(exc) or type(exc).__name__


async def _run(args: argparse.Namespace) -> int:
    """Connect, run the session, print the outcome; return the exit status."""
    console = _Console(color=args.color, bare=bool(args.execute))
    url = _normalize_url(args.connect)
    headers: list[tuple[str, str]] = list(args.header)
    try:
        ws = await connect(
            url,
            additional_headers=headers or None,
            subprotocols=[Subprotocol(p) for p in args.subprotocol] or None,
            origin=args.origin,
            max_size=args.max_size if args.max_size > 0 else None,
            proxy=args.proxy,
        )
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError, ValueError) as exc:
        console.error(_describe_failure(exc, url))
        return 1

    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupted.set)

    session = _Session(ws, console, args.wait)
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    if args.execute:
        for message in args.execute:
            lines.put_nowait(message)
        lines.put_nowait(None)
    else:
        console.control(CONNECTED_LINE)  # followed by the prompt on a terminal
        _start_stdin_reader(loop, lines)

    receiver = asyncio.create_task(session.receive())
    sender = asyncio.create_task(session.send_all(lines))
    stopper = asyncio.create_task(interrupted.wait())
    try:
        await asyncio.wait({receiver, sender, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, stopper):
            task.cancel()
        await asyncio.gather(sender, stopper, return_exceptions=True)
        await ws.close()  # 1000, reason ""; a no-op if the server already closed
        await receiver
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    if sender.done() and not sender.cancelled():
        failure = sender.exception()
        if failure is not None and not isinstance(failure, ConnectionClosed):
            raise failure
    console.end_prompt()
    console.control(f'Disconnected (code: {ws.close_code}, reason: "{ws.close_reason or ""}")')
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``wsgate-cat``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(_run(args))
    except KeyboardInterrupt:  # CTRL+C before the connection was open
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
