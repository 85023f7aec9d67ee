"""The pure parts of the WebSocket features: frame building, the feature scanner of a
tunnel side (fed through fake transports, split at every byte), and the settings."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator

import pytest

from wsgate.config.model import LocationSettings
from wsgate.proxy.frames import (
    PING,
    PING_PAYLOAD,
    PONG,
    control_frame,
    header_at,
    unmask,
)
from wsgate.proxy.tunnel import Tunnel, WsFeatures, _FeatSide, _PingSide, _WsSide, ws_features


class FakeTransport:
    """Collects what is written; the tunnel's other calls do nothing."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.aborted = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def get_extra_info(self, name: str) -> object:
        return None

    def set_protocol(self, protocol: object) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> bytes:
    """A frame as an end sends it (masked from the client)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((b0, n | (0x80 if mask else 0)))
    elif n < 65536:
        head = bytes((b0, 126 | (0x80 if mask else 0))) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, 127 | (0x80 if mask else 0))) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + unmask(payload, key)


def tunnel(
    loop: asyncio.AbstractEventLoop,
    features: WsFeatures | None,
    sizes: bool = False,
    clock: Callable[[], float] | None = None,
    read_timeout: float = 60,
) -> Tunnel:
    """A WebSocket tunnel between two FakeTransports; ``clock`` (a test's own time) for the
    ones whose timers a test drives."""
    t = Tunnel(
        loop,
        FakeTransport(),  # type: ignore[arg-type]
        FakeTransport(),  # type: ignore[arg-type]
        read_timeout=read_timeout,
        send_timeout_upstream=60,
        send_timeout_client=60,
        on_close=lambda t: None,
        websocket=True,
        clock=clock,
        features=features,
        sizes=sizes,
    )
    return t


def written(t: Tunnel, side: str) -> bytes:
    return bytes(getattr(t, side).transport.data)


def test_control_frames() -> None:
    assert control_frame(PING, b"ab") == b"\x89\x02ab"
    masked = control_frame(PONG, b"abcd", True, b"\x01\x02\x03\x04")
    assert masked[:2] == b"\x8a\x84" and unmask(masked[6:], masked[2:6]) == b"abcd"
    with pytest.raises(ValueError):
        control_frame(PING, b"x" * 126)
    assert header_at(b"\x00\x81\x7e\x01\x00", 1) == (4, 256)
    assert header_at(b"\x81\xfe\x01", 0) is None
    assert header_at(b"\x82\x7f" + (70000).to_bytes(8, "big"), 0) == (10, 70000)
    assert header_at(b"\x81\x85", 0) == (6, 5)


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 1000, 1 << 20])
def test_feature_side_relays_all_but_its_own_pongs(
    loop: asyncio.AbstractEventLoop, step: int
) -> None:
    ours = frame(PONG, PING_PAYLOAD)  # answers wsgate: dropped
    parts = [
        frame(0x1, b"hello"),
        frame(PING, b"end ping"),
        frame(0x2, b"x" * 300, fin=False),
        frame(PONG, b"end pong"),
        frame(0x0, b"y" * 70000),
        ours,
        frame(PONG, b"z" * len(PING_PAYLOAD)),  # as long as ours, not ours: relayed
        frame(0x1, b""),
    ]
    stream = b"".join(parts)
    t = tunnel(loop, WsFeatures(max_message_client=1 << 20))
    t.ping(t.client)  # wsgate's Ping, whose Pong is awaited
    for i in range(0, len(stream), step):
        t.client.data_received(stream[i : i + step])
    assert written(t, "upstream") == stream.replace(ours, b"")
    assert t.messages_to_upstream == 3
    assert t.bytes_to_upstream == len(stream) - len(ours)
    assert t.client.skip == 0 and not t.client.partial


def test_off_is_the_plain_side(loop: asyncio.AbstractEventLoop) -> None:
    t = tunnel(loop, ws_features(LocationSettings()))
    assert type(t.client).__name__ == "_WsSide"


def test_settings_to_features() -> None:
    s = LocationSettings(
        websocket_ping_interval=(10.0, "upstream"),
        websocket_max_message_size=(100, "both"),
        websocket_message_rate=(5000, 2000, "client"),
    )
    f = ws_features(s)
    assert f == WsFeatures(
        ping_interval=10.0,
        ping_client=False,
        ping_upstream=True,
        max_message_client=100,
        max_message_upstream=100,
        rate_client=5000,
        burst=2000,
    )
    assert ws_features(LocationSettings(websocket_max_frame_size=(0, "both"))) is None


@pytest.mark.parametrize(("size", "refused"), [(1000, False), (1001, True)])
def test_message_limit_at_and_over(
    loop: asyncio.AbstractEventLoop, size: int, refused: bool
) -> None:
    t = tunnel(loop, WsFeatures(max_message_client=1000))
    first = frame(0x2, b"a" * 600, fin=False)
    t.client.data_received(first + frame(0x0, b"b" * (size - 600)))
    up, down = written(t, "upstream"), written(t, "client")
    if not refused:
        assert up.startswith(first) and len(up) > len(first) and down == b""
        assert t.note is None
        return
    # The first fragment was relayed, then the upstream got Close 1001 (masked), the
    # client Close 1009 (unmasked).
    assert up[: len(first)] == first
    close = up[len(first) :]
    assert close[0] == 0x88 and close[1] & 0x80
    assert unmask(close[6:8], close[2:6]) == (1001).to_bytes(2, "big")
    assert down[:4] == b"\x88" + bytes((2 + len(b"message too big"),)) + (1009).to_bytes(2, "big")
    assert t.note is not None and "too large websocket message: 1001 bytes" in t.note[1]


@pytest.mark.parametrize(("size", "refused"), [(500, False), (501, True)])
def test_frame_limit_at_and_over(loop: asyncio.AbstractEventLoop, size: int, refused: bool) -> None:
    t = tunnel(loop, WsFeatures(max_frame_upstream=500))
    data = frame(0x2, b"a" * 500, fin=False, mask=False)
    data += frame(0x0, b"b" * size, mask=False)
    t.upstream.data_received(data)
    down, up = written(t, "client"), written(t, "upstream")
    if not refused:
        assert down == data and up == b""
        return
    # The sender (the upstream) gets 1009, masked; the client 1001 after the relayed frame.
    assert down.startswith(data[:504]) and down[504:508] == b"\x88\x0c\x03\xe9"
    assert up[0] == 0x88 and unmask(up[6:8], up[2:6]) == (1009).to_bytes(2, "big")


def test_rate_with_burst(loop: asyncio.AbstractEventLoop) -> None:
    now = [100.0]
    # 1 r/s burst=2
    t = tunnel(loop, WsFeatures(rate_client=1000, burst=2000), clock=lambda: now[0])
    msg = frame(0x1, b"m")
    for _ in range(3):  # the first, then a burst of 2
        t.client.data_received(msg)
    assert t.note is None and written(t, "upstream") == msg * 3
    now[0] += 1.0  # one drained
    t.client.data_received(msg)
    assert t.note is None
    assert written(t, "upstream") == msg * 4
    t.client.data_received(msg + msg)  # the next one is over: neither is relayed
    assert written(t, "upstream")[: len(msg) * 4] == msg * 4
    assert written(t, "upstream")[len(msg) * 4] == 0x88  # the Close 1001, nothing else
    assert t.note is not None and "limiting websocket messages from client" in t.note[1]
    assert "excess: 3.000" in t.note[1]
    assert written(t, "client")[2:4] == (1008).to_bytes(2, "big")


@pytest.mark.parametrize("seed", range(8))
def test_rate_is_limit_reqs_account(loop: asyncio.AbstractEventLoop, seed: int) -> None:
    """Random arrival times (many at one instant): every message is relayed or refused as
    nginx's ``limit_req`` account decides (``excess = max(0, excess - elapsed * rate + 1)``,
    refused over the burst), the first refusal with its excess."""
    import random

    rng = random.Random(seed)
    rate_milli, burst_milli = rng.choice(((1000, 2000), (3000, 5000), (16, 2000), (500, 0)))
    now = [rng.uniform(1, 1e6)]
    t = tunnel(
        loop,
        WsFeatures(rate_client=rate_milli, burst=burst_milli),
        clock=lambda: now[0],
        read_timeout=1e9,
    )
    rate, burst = rate_milli / 1000, burst_milli / 1000
    excess, stamp = 0.0, -1e18
    msg = frame(0x1, b"m")
    for i in range(200):
        now[0] += rng.choice((0.0, 0.0, 0.5 / rate, 1 / rate, rng.uniform(0, 3 / rate)))
        want = max(0.0, excess - (now[0] - stamp) * rate + 1.0)
        t.client.data_received(msg)
        if want > burst + 1e-6:
            assert t.note is not None, i
            assert f"excess: {want:.3f} by" in t.note[1]
            up = written(t, "upstream")
            assert up[: len(msg) * i] == msg * i and up[len(msg) * i] == 0x88  # then the Close
            return
        assert t.note is None, (i, want, t.note)
        excess, stamp = want, now[0]
    assert written(t, "upstream") == msg * 200


def test_ping_waits_for_a_boundary_and_its_pong_is_consumed(
    loop: asyncio.AbstractEventLoop,
) -> None:
    now = [0.0]
    t = tunnel(
        loop,
        WsFeatures(ping_interval=10, ping_timeout=5, ping_client=True),
        clock=lambda: now[0],
        read_timeout=600,
    )
    big = frame(0x2, b"q" * 1000, mask=False)
    t.upstream.data_received(big[:100])  # the upstream is mid-frame towards the client
    keep = t.client.keep  # type: ignore[attr-defined]
    now[0] = 10.0
    keep.idle_check()
    assert written(t, "client") == big[:100]  # no Ping inside a frame
    t.upstream.data_received(big[100:])
    ping = control_frame(PING, PING_PAYLOAD)
    assert written(t, "client") == big + ping
    now[0] = 12.0
    t.client.data_received(frame(PONG, PING_PAYLOAD))
    assert written(t, "upstream") == b""
    keep.idle_check()
    assert not t.closed
    now[0] = 30.0  # silent: pinged again ...
    keep.idle_check()
    assert written(t, "client") == big + ping + ping
    now[0] = 35.0  # ... and no Pong within the timeout
    keep.idle_check()
    assert t.closed and t.client.transport.aborted  # type: ignore[attr-defined]
    assert written(t, "upstream")[0] == 0x88
    assert t.note == (
        "info",
        "client timed out (110: Connection timed out) waiting for websocket pong",
    )


def test_ping_sides_are_plain_but_while_a_ping_is_owed_or_awaited(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Pings alone: both sides relay with the plain side's method; the sender towards the
    pinged side is engaged while its Ping waits for a frame boundary (here, the end of a
    header split across reads, already relayed), the pinged side while its Pong is awaited;
    both go plain again at the next check."""
    now = [0.0]
    t = tunnel(
        loop,
        WsFeatures(ping_interval=10, ping_timeout=5, ping_client=True),
        clock=lambda: now[0],
        read_timeout=600,
    )
    assert type(t.client) is type(t.upstream) is _PingSide
    assert _PingSide.data_received is _WsSide.data_received
    big = frame(0x2, b"q" * 300, mask=False)
    t.upstream.data_received(big[:1])  # one byte of a header: relayed, split
    keep = t.client.keep  # type: ignore[attr-defined]
    now[0] = 10.0
    keep.idle_check()
    assert type(t.upstream) is _FeatSide and type(t.client) is _PingSide
    assert written(t, "client") == big[:1]  # no Ping inside a header
    after = frame(0x1, b"next", mask=False)
    t.upstream.data_received(big[1:] + after)
    ping = control_frame(PING, PING_PAYLOAD)
    assert written(t, "client") == big + ping + after  # at the first boundary
    assert type(t.client) is _FeatSide  # its Pong awaited
    now[0] = 12.0
    pong = frame(PONG, PING_PAYLOAD)
    t.client.data_received(pong[:3])
    hi = frame(0x1, b"hi")
    t.client.data_received(pong[3:] + hi)
    assert written(t, "upstream") == hi  # the Pong consumed
    now[0] = 15.0
    keep.idle_check()
    assert not t.closed
    assert type(t.client) is type(t.upstream) is _PingSide
    assert t.messages_to_upstream == 1 and t.messages_to_client == 2
    t.client.data_received(pong)  # awaited by nobody: an unsolicited Pong, relayed
    assert written(t, "upstream") == hi + pong


def test_going_away_relays_a_held_pong_first(loop: asyncio.AbstractEventLoop) -> None:
    """A graceful stop while a feature side holds part of a Pong: the held bytes are relayed,
    the rest of the Pong follows, then the Close (never a byte of a frame lost)."""
    t = tunnel(loop, WsFeatures(max_message_client=100))
    pong = frame(PONG, b"p" * len(PING_PAYLOAD))
    t.client.data_received(pong[:5])
    assert written(t, "upstream") == b""  # held until whole
    t.going_away()
    t.client.data_received(pong[5:])
    up = written(t, "upstream")
    assert up[: len(pong)] == pong
    assert up[len(pong)] == 0x88  # the Close, after the Pong's last byte
    assert unmask(up[len(pong) + 6 : len(pong) + 8], up[len(pong) + 2 : len(pong) + 6]) == (
        (1001).to_bytes(2, "big")
    )


def test_no_ping_after_the_direction_is_shut(loop: asyncio.AbstractEventLoop) -> None:
    """Half-close: once the upstream's FIN was passed to the client, nothing may be written
    to the client, so it is not pinged (nor closed for not answering)."""
    now = [0.0]
    t = tunnel(
        loop,
        WsFeatures(ping_interval=10, ping_timeout=5, ping_client=True),
        clock=lambda: now[0],
        read_timeout=600,
    )
    t.upstream.eof_received()
    keep = t.client.keep  # type: ignore[attr-defined]
    for now[0] in (10.0, 20.0, 40.0):
        keep.idle_check()
    assert written(t, "client") == b"" and not t.closed


def _without_ours_after(parts: list[bytes], cut: int, ours: bytes, held: bool) -> bytes:
    """``parts`` joined, less wsgate's Pongs that begin at ``cut`` or later, or, when the
    side holds an incomplete Pong back (``held``: a limit side), that end after ``cut``."""
    out, offset = [], 0
    for p in parts:
        if not (p == ours and (offset + len(p) if held else offset + 1) > cut):
            out.append(p)
        offset += len(p)
    return b"".join(out)


def test_random_streams_and_garbage(loop: asyncio.AbstractEventLoop) -> None:
    """Random frame sequences cut at random: all relayed but wsgate's Pongs once wsgate has
    sent its Ping (before, nothing is awaited: a Pong with wsgate's payload is an
    unsolicited one, relayed), messages counted as the plain scanner counts them; random
    bytes never raise."""
    import random

    from wsgate.proxy.frames import ScanState, scan

    rng = random.Random(15)
    ours = frame(PONG, PING_PAYLOAD)
    for _ in range(200):
        parts = []
        for _ in range(rng.randrange(1, 12)):
            kind = rng.random()
            if kind < 0.15:
                parts.append(ours)
            elif kind < 0.35:
                parts.append(frame(rng.choice((PING, PONG)), rng.randbytes(rng.randrange(0, 126))))
            else:
                n = rng.choice((0, 1, 125, 126, 127, 65535, 65536, rng.randrange(0, 3000)))
                parts.append(frame(rng.choice((0, 1, 2)), b"d" * n, fin=rng.random() < 0.7))
        stream = b"".join(parts)
        # Pings alone (_PingSide), generous limits (_LimitSide) or both.
        limits = {"max_message_client": 1 << 40, "rate_client": 10**9, "burst": 10**9}
        features = rng.choice(
            (
                WsFeatures(ping_interval=3600, ping_client=True),
                WsFeatures(**limits),  # type: ignore[arg-type]
                WsFeatures(ping_interval=3600, ping_client=True, **limits),  # type: ignore[arg-type]
            )
        )
        t = tunnel(loop, features)
        pinged = rng.random() < 0.8
        cut = 0  # where wsgate's Ping was sent
        i = 0
        while i < len(stream):
            step = rng.choice((1, 2, 5, 9, 100, 4096, 1 << 20))
            t.client.data_received(stream[i : i + step])
            i += step
            if pinged and not cut:
                cut = min(i, len(stream))
                t.ping(t.client)  # engaged in the middle of the stream, maybe of a header
        # Before the Ping: relayed as they come; after it, wsgate's Pongs dropped.
        held = features.limits
        expected = _without_ours_after(parts, cut, ours, held) if pinged else stream
        assert written(t, "upstream") == expected
        assert t.messages_to_upstream == scan(stream, ScanState()).messages
        t.abort()
    for _ in range(200):
        t = tunnel(loop, WsFeatures(max_message_client=1000, rate_client=10**6, burst=10**6))
        garbage = rng.randbytes(rng.randrange(1, 5000))
        for i in range(0, len(garbage), 37):
            t.client.data_received(garbage[i : i + 37])
        assert len(written(t, "upstream")) <= len(garbage)
        t.abort()


def test_dead_side_mid_frame_gets_no_close_into_its_stream(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The silent client stopped in the middle of a frame: no Close can follow that frame,
    so the upstream only gets the end of the connection (its library sees 1006)."""
    now = [0.0]
    t = tunnel(
        loop,
        WsFeatures(ping_interval=10, ping_timeout=5, ping_client=True),
        clock=lambda: now[0],
        read_timeout=600,
    )
    half = frame(0x2, b"h" * 500)[:100]
    t.client.data_received(half)
    keep = t.client.keep  # type: ignore[attr-defined]
    now[0] = 10.0
    keep.idle_check()  # the stream towards the client is between frames: pinged at once
    assert written(t, "client") == control_frame(PING, PING_PAYLOAD)
    now[0] = 15.0
    keep.idle_check()
    assert t.closed and t.client.transport.aborted  # type: ignore[attr-defined]
    assert written(t, "upstream") == half  # no Close inside the frame
    assert t.upstream.transport.closed  # type: ignore[attr-defined]
