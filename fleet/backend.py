"""A backend of the fleet: a WebSocket echo server that first says who it is.

On each connection it sends one text message, a JSON object with its own name, the node the
connection came through (the ``X-Node`` header the node sets, and the TCP peer), the client
address the node saw (``X-Real-IP: $remote_addr``) and the path; then it echoes every
message. So a client knows which backend its key landed on and through which node, and can
check that the node saw its real address behind HAProxy.

Usage (inside the backend's namespace): ``python -m fleet.backend NAME ADDR PORT``.
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import sys

import uvloop
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

__all__ = ["main"]


async def _serve(name: str, addr: str, port: int) -> None:
    async def handler(ws: ServerConnection) -> None:
        req = ws.request
        assert req is not None
        hello = {
            "backend": name,
            "node": req.headers.get("X-Node", ""),
            "peer": ws.remote_address[0],
            "real_ip": req.headers.get("X-Real-IP", ""),
            "path": req.path,
        }
        try:
            await ws.send(json.dumps(hello))
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        handler,
        addr,
        port,
        backlog=4096,
        ping_interval=None,
        compression=None,
        close_timeout=2,
    ):
        print(f"{name} listening on {addr}:{port}", flush=True)
        await stop


def main() -> None:
    name, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(_serve(name, addr, port))


if __name__ == "__main__":
    main()
