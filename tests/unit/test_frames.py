"""The frame-boundary scanner and the Close frame builder (RFC 6455 §5.2, §5.5.1).

Every chunking of a stream must give the state a whole-stream reference parse gives at that
offset: a relay's reads split frames anywhere, headers included.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from wsgate.proxy.frames import (
    CLOSE_SEEN,
    GOING_AWAY,
    REASONS,
    SERVICE_RESTART,
    TRY_AGAIN_LATER,
    ScanState,
    close_code,
    close_frame,
    is_websocket,
    next_boundary,
    scan,
)
from wsgate.proxy.tunnel import Tunnel

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def header(fin: bool, opcode: int, length: int, masked: bool, rsv: int = 0) -> bytes:
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if masked else 0
    if length < 126:
        out = bytes((b0, m | length))
    elif length < 65536:
        out = bytes((b0, m | 126)) + length.to_bytes(2, "big")
    else:
        out = bytes((b0, m | 127)) + length.to_bytes(8, "big")
    return out + (os.urandom(4) if masked else b"")


@dataclass
class Ref:
    """One frame of a reference stream: where it starts, where its length bytes end, where
    it ends, and what it counts for."""

    start: int
    known: int  # offset after the length bytes: from here the scanner knows the frame
    end: int
    message: bool
    close: int  # 0, or the close_seen value of a Close frame (frames.CLOSE_SEEN | its code)


def build(frames: list[tuple[bool, int, int, bool]], rsv: int = 0) -> tuple[bytes, list[Ref]]:
    data = bytearray()
    refs = []
    first_close = True
    for fin, opcode, length, masked in frames:
        start = len(data)
        head = header(fin, opcode, length, masked, rsv)
        known = start + len(head) - (4 if masked else 0)
        payload = os.urandom(length)
        close = 0
        if opcode == CLOSE:
            # The code as the receiver reads it: the first two payload bytes, unmasked.
            key = head[-4:] if masked else bytes(4)
            code = (payload[0] ^ key[0]) << 8 | (payload[1] ^ key[1]) if length >= 2 else 1005
            close = CLOSE_SEEN | code
            if first_close:  # its header is known once the code's bytes are in too
                if length >= 2:  # (without a code: at its length, as any frame)
                    known = start + len(head) + 2
                first_close = False
        data += head + payload
        refs.append(Ref(start, known, len(data), fin and opcode < 3, close))
    return bytes(data), refs


def expected(data: bytes, refs: list[Ref], k: int) -> ScanState:
    """The state after the first ``k`` bytes, from the whole-stream parse."""
    messages = sum(r.message for r in refs if r.known <= k)
    close_seen = next((r.close for r in refs if r.close and r.known <= k), 0)
    for r in refs:
        if r.start <= k < r.end:
            if k == r.start:
                return ScanState(0, b"", messages, close_seen)
            if k < r.known:
                return ScanState(0, data[r.start : k], messages, close_seen)
            return ScanState(r.end - k, b"", messages, close_seen)
    return ScanState(0, b"", messages, close_seen)


def scan_chunks(data: bytes, cuts: list[int]) -> ScanState:
    state = ScanState()
    prev = 0
    for cut in [*cuts, len(data)]:
        state = scan(data[prev:cut], state)
        prev = cut
    return state


LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 70000]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_every_length_encoding_in_one_chunk(length: int, masked: bool) -> None:
    data, _ = build([(True, BINARY, length, masked)])
    state = scan(data, ScanState())
    assert state == ScanState(0, b"", 1, 0)
    assert state.at_boundary


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("length", [5, 125, 126, 300, 65535, 65536, 70000])
def test_header_split_at_every_byte(length: int, masked: bool) -> None:
    data, refs = build([(True, TEXT, length, masked), (True, BINARY, 3, masked)])
    head_len = refs[0].known + (4 if masked else 0)
    for k in range(1, head_len + 3):
        first = scan(data[:k], ScanState())
        assert first == expected(data, refs, k), k
        assert scan(data[k:], first) == ScanState(0, b"", 2, 0), k


def test_carried_header_is_at_most_nine_bytes() -> None:
    data, refs = build([(True, BINARY, 70000, True)])
    for k in range(1, 10):
        assert scan(data[:k], ScanState()).partial == data[:k]
    # With the 8 length bytes in, the masking key is skipped like payload.
    assert scan(data[:10], ScanState()) == ScanState(70004, b"", 1, 0)


def test_header_split_over_several_reads() -> None:
    data, refs = build([(True, BINARY, 70000, False), (True, TEXT, 2, True)])
    state = ScanState()
    for i in range(10):  # one byte at a time through the 64-bit header
        state = scan(data[i : i + 1], state)
        assert state == expected(data, refs, i + 1), i
    assert scan(data[10:], state) == ScanState(0, b"", 2, 0)


def test_many_frames_in_one_chunk() -> None:
    frames = [(True, TEXT, n % 130, n % 2 == 0) for n in range(500)]
    data, _ = build(frames)
    assert scan(data, ScanState()) == ScanState(0, b"", 500, 0)
    # Ending inside the last frame's payload leaves the rest to skip.
    assert scan(data[:-3], ScanState()).skip == 3


def test_fragmented_message_with_interleaved_control_frames() -> None:
    frames = [
        (False, TEXT, 10, True),
        (True, PING, 4, True),
        (False, CONT, 200, True),
        (True, PONG, 0, True),
        (True, CONT, 70000, True),  # the final fragment: the message counts here
        (True, BINARY, 0, True),
    ]
    data, refs = build(frames)
    counts = [scan(data[: r.known], ScanState()).messages for r in refs]
    assert counts == [0, 0, 0, 0, 1, 2]
    assert scan(data, ScanState()) == ScanState(0, b"", 2, 0)


def test_close_frame_is_seen_and_is_not_a_message() -> None:
    data, refs = build([(True, TEXT, 3, False), (True, CLOSE, 12, False)])
    assert scan(data[: refs[1].start], ScanState()).close_seen == 0
    state = scan(data[: refs[1].known], ScanState())
    # Seen at its header and code, the rest of its payload still to come.
    assert state == ScanState(10, b"", 1, refs[1].close)


def test_permessage_deflate_rsv1_is_ignored() -> None:
    data, _ = build([(False, TEXT, 40, True), (True, CONT, 9, True)], rsv=4)
    assert scan(data, ScanState()).messages == 1


def random_stream(
    rng: random.Random,
    count: int,
    opcodes: tuple[int, ...] = (TEXT, BINARY, CONT, PING, PONG, CLOSE),
) -> tuple[bytes, list[Ref]]:
    frames = []
    for _ in range(count):
        opcode = rng.choice(opcodes)
        size = rng.choice([0, 1, 2, 7, 125, 126, 127, 128, 1000, 65535, 65536, 65537])
        if opcode >= 8:
            size = min(size, 125)
        frames.append((rng.random() < 0.7 or opcode >= 8, opcode, size, rng.random() < 0.5))
    return build(frames)


def test_every_chunk_boundary_of_a_random_stream_matches_the_reference() -> None:
    rng = random.Random(6455)
    data, refs = random_stream(rng, 40)
    # Every position, but the long payload runs only at their ends (the rest is the same case).
    positions: set[int] = set()
    for r in refs:
        positions.update(range(r.start, min(r.end, r.known + 6) + 1))
        positions.update(range(max(r.start, r.end - 3), r.end + 1))
    for k in sorted(positions):
        first = scan(data[:k], ScanState())
        assert first == expected(data, refs, k), k
        assert scan(data[k:], first) == expected(data, refs, len(data)), k


def test_random_chunkings_match_the_reference() -> None:
    rng = random.Random(1)
    for _ in range(200):
        data, refs = random_stream(rng, rng.randint(1, 30))
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 60))))
        state = ScanState()
        prev = 0
        for cut in [*cuts, len(data)]:
            state = scan(data[prev:cut], state)
            assert state == expected(data, refs, cut), (cut, cuts)
            prev = cut
        assert state.at_boundary


def test_a_chunk_of_one_byte_at_a_boundary_is_carried() -> None:
    assert scan(b"\x81", ScanState()) == ScanState(0, b"\x81", 0, 0)
    assert scan(b"\x05", ScanState(0, b"\x81")) == ScanState(5, b"", 1, 0)


def test_garbage_never_raises() -> None:
    rng = random.Random(7)
    for _ in range(500):
        state = ScanState()
        for _ in range(5):
            chunk = rng.randbytes(rng.randint(1, 40))
            state = scan(chunk, state)
            assert state.skip >= 0 and len(state.partial) <= 9
            assert next_boundary(rng.randbytes(rng.randint(1, 20)), state) >= -1


def test_next_boundary() -> None:
    data, refs = build([(True, BINARY, 300, True), (True, TEXT, 5, False)])
    end = refs[0].end
    assert next_boundary(data, ScanState()) == 0
    for k in range(1, end):
        state = scan(data[:k], ScanState())
        assert next_boundary(data[k:], state) == end - k, k
        # The chunk stops before the frame's end: no boundary in it.
        if k < end - 1:
            assert next_boundary(data[k : end - 1], state) == -1, k
    state = scan(data[:3], ScanState())  # a 16-bit length still incomplete
    assert next_boundary(b"", state) == -1


def parse(frame: bytes, mask: bool) -> Frame:
    reader = StreamReader()
    reader.feed_data(frame)
    gen = Frame.parse(reader.read_exact, mask=mask)
    try:
        next(gen)
    except StopIteration as stop:
        result: Frame = stop.value
        return result
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("code", [GOING_AWAY, SERVICE_RESTART, TRY_AGAIN_LATER])
def test_close_frame_unmasked_toward_the_client(code: int) -> None:
    frame = close_frame(code, REASONS[code])
    assert frame[:2] == bytes((0x88, 2 + len(REASONS[code])))
    parsed = parse(frame, mask=False)
    assert parsed.opcode is Opcode.CLOSE and parsed.fin
    assert Close.parse(parsed.data) == Close(code, REASONS[code].decode())
    assert scan(frame, ScanState()) == ScanState(0, b"", 0, CLOSE_SEEN | code)


def test_close_frame_masked_toward_the_upstream() -> None:
    frame = close_frame(GOING_AWAY, b"going away", mask=True, key=b"\x01\x02\x03\x04")
    assert frame[:6] == b"\x88\x8c\x01\x02\x03\x04"
    assert frame[6:8] == bytes((0x03 ^ 1, 0xE9 ^ 2))  # 1001 = 0x03E9, masked (§5.3)
    assert close_code(scan(frame, ScanState()).close_seen) == GOING_AWAY
    parsed = parse(frame, mask=True)
    assert Close.parse(parsed.data) == Close(1001, "going away")
    # A fresh key each time.
    keys = {close_frame(GOING_AWAY, mask=True)[2:6] for _ in range(20)}
    assert len(keys) > 15


@pytest.mark.parametrize("masked", [False, True])
def test_the_first_close_code_is_read_however_the_reads_split_it(masked: bool) -> None:
    data = b"\x81\x02hi" + close_frame(4000, b"bye", mask=masked) + close_frame(1000, mask=masked)
    for cut in range(1, len(data)):
        state = scan(data[cut:], scan(data[:cut], ScanState()))
        assert close_code(state.close_seen) == 4000, cut  # the first, not the second
        assert state.messages == 1 and state.at_boundary, cut
    one_by_one = ScanState()
    for i in range(len(data)):
        one_by_one = scan(data[i : i + 1], one_by_one)
        assert len(one_by_one.partial) <= 8
    assert close_code(one_by_one.close_seen) == 4000 and one_by_one.at_boundary


def test_a_close_without_a_code_is_1005_and_code_zero_is_still_seen() -> None:
    assert close_code(scan(b"\x88\x00", ScanState()).close_seen) == 1005
    assert close_code(scan(b"\x88\x80abcd", ScanState()).close_seen) == 1005
    assert close_code(scan(b"\x88\x01x", ScanState()).close_seen) == 1005  # one byte: no code
    zero = scan(b"\x88\x02\x00\x00", ScanState())
    assert zero.close_seen and close_code(zero.close_seen) == 0
    assert close_code(ScanState().close_seen) is None


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 5000])
def test_close_codes_that_may_not_be_sent(code: int) -> None:
    with pytest.raises(ValueError, match=str(code)):
        close_frame(code)


def test_close_reason_limit() -> None:
    assert len(close_frame(1000, b"x" * 123)) == 127
    with pytest.raises(ValueError, match="123"):
        close_frame(1000, b"x" * 124)


@pytest.mark.parametrize(
    ("value", "ws"),
    [
        ("websocket", True),
        ("WebSocket", True),
        (" websocket ", True),
        ("h2c", False),
        ("websocket, h2c", False),
        ("", False),
        (None, False),
    ],
)
def test_is_websocket(value: str | None, ws: bool) -> None:
    assert is_websocket(value) is ws


# The tunnel's inline fast path (tunnel.py reads the common headers itself) -------------------
class FakeTransport:
    """Just enough of an asyncio transport for a Tunnel driven by hand, without a loop."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def set_protocol(self, protocol: object) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close


@pytest.fixture
def tunnel() -> Iterator[tuple[Tunnel, FakeTransport, FakeTransport]]:
    loop = asyncio.new_event_loop()
    client, upstream = FakeTransport(), FakeTransport()
    t = Tunnel(
        loop,
        client,  # type: ignore[arg-type]
        upstream,  # type: ignore[arg-type]
        read_timeout=60,
        send_timeout_upstream=60,
        send_timeout_client=60,
        on_close=lambda t: None,
        websocket=True,
    )
    t.start(b"", b"", False, False)
    yield t, client, upstream
    t.abort()
    loop.close()


def test_the_tunnel_fast_path_agrees_with_the_scanner(
    tunnel: tuple[Tunnel, FakeTransport, FakeTransport],
) -> None:
    t, _, upstream = tunnel
    rng = random.Random(2)
    data, refs = random_stream(rng, 300)
    prev = 0
    while prev < len(data):
        # Whole frames, single bytes, and everything between.
        cut = min(len(data), prev + rng.choice([1, 2, 5, 64, 70, 4100, 70000, 200000]))
        t.client.data_received(data[prev:cut])
        prev = cut
        want = expected(data, refs, cut)
        assert t.messages_to_upstream == want.messages, cut
        assert t.client.close_seen == want.close_seen, cut
        assert (t.client.skip, t.client.partial) == (want.skip or -bool(want.partial), want.partial)
    assert bytes(upstream.out) == data and t.bytes_to_upstream == len(data)


def test_one_frame_per_read(tunnel: tuple[Tunnel, FakeTransport, FakeTransport]) -> None:
    t, client, _ = tunnel
    for length in [0, 64, 125, 126, 4096, 65535, 65536]:
        data, _ = build([(True, BINARY, length, False)])
        t.upstream.data_received(data)
        assert t.upstream.skip == 0
    assert t.messages_to_client == 7 and len(client.out) == t.bytes_to_client


@pytest.mark.parametrize("seed", range(4))
def test_going_away_puts_the_close_at_the_next_boundary(seed: int) -> None:
    """Wherever the stream stands when going away starts (a split header included), the
    upstream gets the rest of that frame, then the Close, then nothing."""
    rng = random.Random(seed)
    data, refs = random_stream(rng, 12, (TEXT, BINARY, CONT, PING, PONG))
    points = sorted(
        {rng.randrange(len(data)) for _ in range(40)}
        | {r.start + 1 for r in refs}
        | {r.start for r in refs}
    )
    for k in points:
        loop = asyncio.new_event_loop()
        client, upstream = FakeTransport(), FakeTransport()
        t = Tunnel(
            loop,
            client,  # type: ignore[arg-type]
            upstream,  # type: ignore[arg-type]
            read_timeout=60,
            send_timeout_upstream=60,
            send_timeout_client=60,
            on_close=lambda t: None,
            websocket=True,
        )
        t.start(b"", data[:k], False, False)
        t.going_away(SERVICE_RESTART)
        prev = k
        while prev < len(data):
            cut = min(len(data), prev + rng.choice([1, 3, 100, 5000]))
            t.client.data_received(data[prev:cut])
            prev = cut
        boundary = next(r.start if r.start == k else r.end for r in refs if r.start <= k < r.end)
        sent = bytes(upstream.out)
        assert sent[:boundary] == data[:boundary], k
        close = parse(sent[boundary:], mask=True)
        assert Close.parse(close.data) == Close(1012, "service restart"), k
        assert t.messages_to_upstream == expected(data, refs, boundary).messages, k
        # The client's stream was at a boundary: its Close went at once, unmasked.
        assert bytes(client.out) == close_frame(1012, b"service restart")
        t.abort()
        loop.close()
