"""``wsgate-echo``: the walk-through's example backend (``server.js``) in Python.

The nginx.com article "NGINX as a WebSocket Proxy" puts a tiny Node.js ``ws`` server behind the
proxy: it prints ``Server started``, listens on port 8010, logs every message as
``Received from client: MSG`` and answers ``Server received from client: MSG``.  This module is
the same server built on the ``websockets`` asyncio API, so the walk-through (``make run``) and the
integration tests need no Node.js.  Its output is kept byte-for-byte identical to the article's
transcript; anything extra is opt-in or only printed when it cannot appear in the article:

* ``--port 0`` asks the kernel for a free port.  The article never does that, so only then the
  real address follows ``Server started`` on its own line, ``Listening on 127.0.0.1:PORT``
  (``[::1]:PORT`` for IPv6), which is what tests wait for instead of sleeping.
* ``--echo`` turns it into a silent echo server (same message back, text or binary), the usual
  peer for benchmarks and frame-level tests.
* ``--max-size`` lifts ``websockets``' 1 MiB default message limit (RFC 6455 has none; a
  proxy test must be able to push large messages through).

SIGINT and SIGTERM close the listeners and every connection with 1001 (going away, RFC 6455
section 7.4.1) and exit 0 without a traceback, so ``make run`` and test fixtures can stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from wsgate.loop import new_event_loop

__all__ = ["DEFAULT_HOST", "DEFAULT_MAX_SIZE", "DEFAULT_PORT", "build_parser", "main"]

#: The walk-through's backend address: ``127.0.0.1:8010`` (the article uses a LAN address).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8010
#: 16 MiB: big enough for every test and benchmark message; ``--max-size 0`` removes the limit.
DEFAULT_MAX_SIZE = 16 * 1024 * 1024

#: What ``server.js`` prints, before anything else.
STARTED_LINE = "Server started"


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser (separate so the docs and tests can inspect it)."""
    parser = argparse.ArgumentParser(
        prog="wsgate-echo",
        description=(
            "The walk-through's WebSocket backend: logs 'Received from client: MSG' and replies "
            "'Server received from client: MSG'. With --echo, a plain echo server."
        ),
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=(
            f"port to listen on (default {DEFAULT_PORT}); 0 lets the kernel choose and prints "
            "'Listening on HOST:PORT' after 'Server started'"
        ),
    )
    parser.add_argument(
        "--echo",
        action="store_true",
        help="reply with the same message (text or binary) and log nothing",
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=DEFAULT_MAX_SIZE,
        metavar="BYTES",
        help=f"largest incoming message in bytes (default {DEFAULT_MAX_SIZE}; 0 = no limit)",
    )
    return parser


def _say(line: str) -> None:
    """Print one line and flush it now: a parent process may be waiting for it on a pipe."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _walkthrough_handler(websocket: ServerConnection) -> None:
    """Behave like the article's ``server.js``: log each message, answer with a prefix.

    ``ws`` hands ``server.js`` a Buffer that string concatenation decodes as UTF-8 and the reply
    is sent as text; binary messages get the same treatment here.
    """
    try:
        async for message in websocket:
            text = message if isinstance(message, str) else message.decode("utf-8", "replace")
            _say(f"Received from client: {text}")
            await websocket.send(f"Server received from client: {text}")
    except ConnectionClosed:
        pass


async def _echo_handler(websocket: ServerConnection) -> None:
    """Send every message back unchanged, keeping its type (text stays text, binary binary)."""
    try:
        async for message in websocket:
            await websocket.send(message)
    except ConnectionClosed:
        pass


def _format_address(sockname: tuple[object, ...]) -> str:
    """``HOST:PORT`` with IPv6 hosts in brackets, as in a URL."""
    host, port = str(sockname[0]), sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _serve(args: argparse.Namespace) -> int:
    """Listen until SIGINT/SIGTERM, then close every connection (1001) and return 0."""
    handler = _echo_handler if args.echo else _walkthrough_handler
    max_size: int | None = args.max_size if args.max_size > 0 else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with serve(handler, args.host, args.port, max_size=max_size) as server:
            _say(STARTED_LINE)
            if args.port == 0:
                for sock in server.sockets:
                    _say(f"Listening on {_format_address(sock.getsockname())}")
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``wsgate-echo``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(_serve(args))
    except OSError as exc:
        # e.g. "address already in use": one line, like server.js's EADDRINUSE, not a traceback.
        sys.stderr.write(f"wsgate-echo: {exc}\n")
        return 1
    except KeyboardInterrupt:  # SIGINT before the handler was installed
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
