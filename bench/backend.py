"""The benchmark's WebSocket echo backend: one process, uvloop, raw asyncio protocols.

It answers the opening handshake with 101 and then echoes every data frame, answers Ping
with Pong and Close with Close, and closes the TCP connection after its Close (a server
closes first, RFC 6455 §7.1.1). Echoing is done by :class:`bench.wsproto.EchoParser`, whose
fast path costs one comparison per read for the benchmark's fixed-size frames, so the backend
stays much cheaper than the proxy in front of it (``make bench`` measures that: the "direct"
rows run the load generator against this backend with no proxy).

Usage: ``python -m bench.backend --ports 2`` prints ``Listening on 127.0.0.1:PORT`` for each
port (bound to port 0: the kernel picks free ports), then ``READY``, and serves until
SIGTERM/SIGINT. ``--impl picows`` serves the same with picows (https://github.com/tarasko/picows),
a Cython WebSocket library, for comparison: it calls Python once per message and writes once
per message, so under pipelined load it is several times slower than the raw backend.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
from typing import cast

import uvloop
from bench.wsproto import EchoParser, switching_protocols

__all__ = ["EchoServer", "main"]

_MAX_HEAD = 16384


class EchoServer(asyncio.Protocol):
    """One accepted connection: the handshake, then :class:`EchoParser`."""

    __slots__ = ("transport", "head", "parser")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.parser: EchoParser | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is not None:
            parser.feed(data)
            return
        transport = self.transport
        assert transport is not None
        head = self.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > _MAX_HEAD:
                transport.abort()
            self.head = head
            return
        key = ""
        for line in head[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip().decode("latin-1")
        if not key:
            transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            transport.close()
            return
        self.head = b""
        transport.write(switching_protocols(key))
        self.parser = parser = EchoParser(transport.write, transport.close)
        rest = head[end + 4 :]
        if rest:
            parser.feed(rest)

    def eof_received(self) -> bool:
        return False  # close our side too


def raise_nofile() -> int:
    """Raise the soft open-file limit to the hard one; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def _create(host: str, impl: str, backlog: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    if impl == "raw":
        return await loop.create_server(EchoServer, host, 0, backlog=backlog)
    # The optional picows backend (``pip install -e '.[bench]'``).
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

    class PicowsEcho(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
                transport.send(frame.msg_type, frame.get_payload_as_memoryview())

    return await ws_create_server(lambda _request: PicowsEcho(), host, 0, backlog=backlog)


async def _serve(host: str, ports: int, backlog: int, impl: str = "raw") -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for _ in range(ports):
        server = await _create(host, impl, backlog)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        print(f"Listening on {host}:{port}", flush=True)
    print("READY", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ports", type=int, default=1, help="listening ports (default 1)")
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--impl", choices=["raw", "picows"], default="raw")
    args = parser.parse_args(argv)
    raise_nofile()
    uvloop.run(_serve(args.host, args.ports, args.backlog, args.impl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
