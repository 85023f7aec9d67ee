"""Back-pressure both ways, with memory bounds: a peer that stops reading stops the other.

* ``to_client``: each backend floods its tunnel with 64 KiB frames; the clients do not read.
  The backends' ``drain()`` must block (the proxy stopped reading them) with what was written
  held in kernel buffers and the proxy's bounded buffers only.
* ``to_upstream``: each client floods its tunnel; the backends do not read.  Same bound.

Then the stuck side reads, and must receive every byte written (nothing lost, nothing added).
``TUNNELS`` tunnels at once; the workers' RSS growth and the bytes in flight per tunnel are
printed, and bounded: a proxy that buffers without bound would grow by the whole flood
(``FLOOD`` per tunnel).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.common import (
    TARGETS,
    BgLoop,
    conf,
    frame,
    header,
    record,
    scaled,
    start_target,
    switching,
    ws_open,
)

TUNNELS = scaled(20, 60)
#: What each flooding side would write if nothing pushed back.
FLOOD = 256 * 1024 * 1024
CHUNK = frame(b"x" * 65536, 2, mask=False)
#: A writer whose drain() has not returned for this long is blocked by back-pressure.
STUCK = 1.0
#: Bytes in flight per tunnel: kernel socket buffers on both hops plus the proxy's own.
IN_FLIGHT_MAX = 32 * 1024 * 1024
RSS_GROWTH_MAX_KIB = 64 * 1024


@dataclass
class Flow:
    written: int = 0
    blocked: bool = False
    received: int = 0


async def pump(writer: asyncio.StreamWriter, flow: Flow, chunk: bytes) -> None:
    """Write ``chunk`` until ``FLOOD`` or until drain() stays blocked for ``STUCK``."""
    while flow.written < FLOOD:
        writer.write(chunk)
        flow.written += len(chunk)
        try:
            await asyncio.wait_for(writer.drain(), STUCK)
        except TimeoutError:
            flow.blocked = True
            return


async def drain_all(reader: asyncio.StreamReader, flow: Flow, want: int) -> None:
    while flow.received < want:
        data = await reader.read(1 << 20)
        if not data:
            return
        flow.received += len(data)


@pytest.mark.timeout(scaled(90, 400))
@pytest.mark.parametrize("direction", ["to_client", "to_upstream"])
@pytest.mark.parametrize("kind", TARGETS)
def test_backpressure(kind: str, direction: str, tmp_path: Path, bg: BgLoop) -> None:
    flows: dict[bytes, Flow] = {}  # by the tunnel's path
    go_read = asyncio.Event()
    upstream_loop = bg.loop

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(switching(header(head, b"sec-websocket-key") or b""))
        flow = flows[head.split(b" ")[1]] = Flow()
        if direction == "to_client":
            await pump(writer, flow, CHUNK)
            await reader.read()  # hold the tunnel until the client closes it
        else:
            while not go_read.is_set():
                await asyncio.sleep(0.05)
            await drain_all(reader, flow, 1 << 62)

    upstream = bg.serve(backend)
    target = start_target(kind, tmp_path / kind, conf(upstream, http="proxy_read_timeout 120s;"))

    async def scenario() -> tuple[int, int, float]:
        tunnels = [await ws_open(target.port, f"/t{i}") for i in range(TUNNELS)]
        rss0 = target.rss_kib()
        client_flows = [Flow() for _ in tunnels]
        began = time.monotonic()
        if direction == "to_client":
            while len(flows) < TUNNELS or not all(
                f.blocked or f.written >= FLOOD for f in flows.values()
            ):
                assert time.monotonic() - began < 60, "the backends never blocked"
                await asyncio.sleep(0.05)
        else:
            masked = frame(b"y" * 65536)
            await asyncio.gather(
                *(pump(w, f, masked) for (_, w), f in zip(tunnels, client_flows, strict=True))
            )
        seconds = time.monotonic() - began
        rss1 = target.rss_kib()
        # Now the stuck side reads: every byte written arrives.
        if direction == "to_client":
            # Each client reads what its backend wrote, behind its 101 head.
            await asyncio.gather(
                *(
                    drain_all(r, cf, flows[b"/t%d" % i].written)
                    for i, ((r, _), cf) in enumerate(zip(tunnels, client_flows, strict=True))
                )
            )
            sent = sum(f.written for f in flows.values())
            got = sum(cf.received for cf in client_flows)
        else:
            upstream_loop.call_soon_threadsafe(go_read.set)
            sent = sum(cf.written for cf in client_flows)
            deadline = time.monotonic() + 60
            while sum(f.received for f in flows.values()) < sent and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            got = sum(f.received for f in flows.values())
        for _, w in tunnels:
            w.close()
        assert got == sent, f"wrote {sent} bytes, {got} arrived"
        return sent, rss1 - rss0, seconds

    try:
        sent, growth, seconds = asyncio.run(scenario())
        blocked = sum(f.blocked for f in flows.values()) if direction == "to_client" else TUNNELS
    finally:
        target.stop()
    per_tunnel = sent // TUNNELS
    record(
        f"backpressure.{direction}",
        kind,
        tunnels=TUNNELS,
        in_flight_per_tunnel_kib=per_tunnel // 1024,
        worker_rss_growth_kib=growth,
        seconds_to_block=seconds,
    )
    assert per_tunnel < IN_FLIGHT_MAX, per_tunnel
    assert growth < RSS_GROWTH_MAX_KIB, growth
    assert blocked == TUNNELS
    assert not target.alerts(), target.alerts()
