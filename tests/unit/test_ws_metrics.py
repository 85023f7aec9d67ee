"""Per-message WebSocket figures without sockets: the message-size scanner against a whole-stream
reference for every way reads may split a stream, the tunnel sides that keep the histogram
(plain and with features on), the first Close's code on a feature side, the metrics store's
close-code, duration and size series, and the ``$ws_*`` values."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from tests.prometheus_text import parse
from tests.unit.test_frames import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    header,
)
from tests.unit.test_metrics import FakeTunnel
from tests.unit.test_ws_features import tunnel as make_tunnel
from wsgate.config.variables import WS_VARIABLES, RequestContext
from wsgate.observability.metrics import (
    CLOSE_CODES,
    TUNNEL_BUCKETS,
    MetricsStore,
    close_code_label,
)
from wsgate.proxy.frames import SIZE_BUCKETS, close_frame, scan_sizes, size_bucket
from wsgate.proxy.tunnel import Tunnel, WsFeatures, websocket_figures

CELLS = len(SIZE_BUCKETS) + 2


def test_bucket_bounds_are_powers_of_four_from_64_bytes_to_16_mib() -> None:
    assert SIZE_BUCKETS[0] == 64 and SIZE_BUCKETS[-1] == 16 << 20
    assert all(b * 4 == c for b, c in zip(SIZE_BUCKETS, SIZE_BUCKETS[1:], strict=False))
    for i, bound in enumerate(SIZE_BUCKETS):  # le is inclusive
        assert size_bucket(bound) == i
        assert size_bucket(bound + 1) == i + 1
    assert size_bucket(0) == 0 and size_bucket(1) == 0
    assert size_bucket(1 << 63) == len(SIZE_BUCKETS)  # +Inf, never out of range
    assert size_bucket((1 << 64) + 5) == len(SIZE_BUCKETS)


def stream(rng: random.Random, count: int) -> tuple[bytes, list[int]]:
    """Random frames (fragmented messages with control frames between their fragments,
    masked or not, every length encoding) and the sizes of the complete messages."""
    data = bytearray()
    sizes: list[int] = []
    in_message: int | None = None
    for _ in range(count):
        masked = rng.random() < 0.5
        if in_message is not None and rng.random() < 0.3:
            opcode = rng.choice((PING, PONG))
            length = rng.choice((0, 5, 125))
            data += header(True, opcode, length, masked) + rng.randbytes(length)
            continue
        length = rng.choice((0, 1, 63, 64, 65, 125, 126, 255, 256, 1000, 4096, 65535, 65536, 70000))
        fin = rng.random() < 0.6
        opcode = CONT if in_message is not None else rng.choice((TEXT, BINARY))
        data += header(fin, opcode, length, masked, rsv=rng.choice((0, 4))) + rng.randbytes(length)
        total = (in_message or 0) + length
        if fin:
            sizes.append(total)
            in_message = None
        else:
            in_message = total
    return bytes(data), sizes


def reference(sizes: list[int]) -> list[int]:
    counts = [0] * CELLS
    for s in sizes:
        counts[size_bucket(s)] += 1
    counts[-1] = sum(sizes)
    return counts


def cuts(rng: random.Random, n: int) -> list[int]:
    out, pos = [], 0
    while pos < n:
        pos = min(n, pos + rng.choice((1, 2, 3, 7, 64, 70, 131, 4100, 70000)))
        out.append(pos)
    return out


def test_scan_sizes_matches_the_reference_however_the_reads_split() -> None:
    rng = random.Random(15)
    for _ in range(60):
        data, sizes = stream(rng, rng.randint(1, 40))
        counts = [0] * CELLS
        skip, partial, now, prev = 0, b"", 0, 0
        for cut in cuts(rng, len(data)):
            skip, partial, now = scan_sizes(data[prev:cut], skip, partial, now, counts)
            prev = cut
        assert counts == reference(sizes)
        assert (skip, partial) == (0, b"")


def test_a_fragmented_message_counts_once_at_its_total_size() -> None:
    data = (
        header(False, TEXT, 40, True)
        + bytes(40)
        + header(True, PING, 3, True)
        + b"abc"
        + header(False, CONT, 30, True)
        + bytes(30)
        + header(True, CONT, 0, True)
    )
    counts = [0] * CELLS
    assert scan_sizes(data, 0, b"", 0, counts) == (0, b"", 0)
    assert counts == reference([70])


@pytest.fixture(params=["plain", "features"])
def sized(request: pytest.FixtureRequest) -> Iterator[Tunnel]:
    loop = asyncio.new_event_loop()
    features = None
    if request.param == "features":  # limits the streams stay within: every header read
        features = WsFeatures(max_message_client=1 << 40, max_frame_client=1 << 40)
    t = make_tunnel(loop, features, sizes=True)
    t.start(b"", b"", False, False)
    yield t
    t.abort()
    loop.close()


def test_a_sized_side_agrees_with_the_reference(sized: Tunnel) -> None:
    rng = random.Random(6455)
    data, sizes = stream(rng, 300)
    prev = 0
    taken = [0] * CELLS
    for cut in cuts(rng, len(data)):
        sized.client.data_received(data[prev:cut])
        prev = cut
        if rng.random() < 0.1:  # a flush in between: counts are handed over and zeroed
            got = sized.take_sizes()
            assert got is not None
            taken = [a + b for a, b in zip(taken, got[0], strict=True)]
    got = sized.take_sizes()
    assert got is not None
    taken = [a + b for a, b in zip(taken, got[0], strict=True)]
    assert taken == reference(sizes)
    assert got[1] == [0] * CELLS  # nothing came from the upstream
    assert sized.messages_to_upstream == len(sizes)
    assert bytes(sized.upstream.transport.data) == data  # type: ignore[attr-defined]


def test_one_message_per_read_takes_the_fast_path(sized: Tunnel) -> None:
    sizes = [0, 5, 64, 65, 125, 126, 4096, 65536, 70000]
    for s in sizes:
        sized.client.data_received(header(True, BINARY, s, True) + bytes(s))
        sized.upstream.data_received(header(True, TEXT, s, False) + bytes(s))
    got = sized.take_sizes()
    assert got == (reference(sizes), reference(sizes))
    assert sized.take_sizes() == ([0] * CELLS, [0] * CELLS)


def test_a_tunnel_without_websocket_metrics_keeps_no_sizes() -> None:
    loop = asyncio.new_event_loop()
    t = make_tunnel(loop, None)
    assert not t.sized and t.take_sizes() is None
    t.abort()
    loop.close()


def test_a_feature_side_holds_a_split_close_until_its_code(sized: Tunnel) -> None:
    frame = close_frame(4321, b"why", mask=True)
    side = sized.client
    for i in range(len(frame)):
        side.data_received(frame[i : i + 1])
    assert sized.close_code_client == 4321
    assert sized.close_code_upstream is None
    assert bytes(sized.upstream.transport.data) == frame  # type: ignore[attr-defined]
    second = close_frame(1000, mask=True)  # only the first Close counts
    side.data_received(second)
    assert sized.close_code_client == 4321


def test_websocket_figures() -> None:
    t = FakeTunnel(websocket=True)
    t.bytes_to_upstream, t.bytes_to_client = 120, 80
    t.messages_to_upstream, t.messages_to_client = 3, 2
    t.close_code_client = 1005
    figures = websocket_figures(t, 1.23456)  # type: ignore[arg-type]
    assert figures == {
        "ws_messages_in": "3",
        "ws_messages_out": "2",
        "ws_bytes_in": "120",
        "ws_bytes_out": "80",
        "ws_close_code_client": "1005",
        "ws_close_code_upstream": "none",
        "ws_duration": "1.235",
    }
    assert set(figures) == WS_VARIABLES
    ctx = RequestContext()
    assert all(ctx.lookup(name) == "" for name in WS_VARIABLES)  # logged as "-"
    assert not any(ctx.found_empty(name) for name in WS_VARIABLES)
    ctx.set_websocket_figures(figures)
    assert ctx.lookup("ws_messages_in") == "3" and ctx.lookup("ws_duration") == "1.235"


@pytest.mark.parametrize(
    ("code", "label"),
    [
        (None, "none"),
        (1000, "1000"),
        (1005, "1005"),
        (1015, "1015"),
        (1016, "invalid"),
        (0, "invalid"),
        (2999, "invalid"),
        (3000, "3xxx"),
        (3999, "3xxx"),
        (4000, "4xxx"),
        (4999, "4xxx"),
        (5000, "invalid"),
    ],
)
def test_close_code_labels_take_few_values(code: int | None, label: str) -> None:
    assert close_code_label(code) == label


def test_store_counts_close_codes_durations_and_sizes() -> None:
    store = MetricsStore.single_process()
    try:
        labels = ("s", "/ws", "u", "127.0.0.1:1")
        ls = dict(zip(CLOSE_CODES.labels, labels, strict=False))
        for seconds, client, upstream in ((0.05, 1000, 1000), (700.0, 4001, None)):
            t = FakeTunnel(websocket=True, sizes=True)
            store.tunnel_opened(t, labels, 0.01)
            t.close_code_client, t.close_code_upstream = client, upstream
            sent = [0] * CELLS
            sent[0], sent[3], sent[-1] = 2, 1, 10 + 20 + 4000
            t.pending = (sent, [0] * CELLS)
            store.tunnel_closed(t, None, seconds)
        raw = FakeTunnel()  # not a WebSocket tunnel: a duration, no close codes
        store.tunnel_opened(raw, labels, 0.01)
        store.tunnel_closed(raw, None, 2.0)
        page = parse(store.exposition().decode())
        codes = {
            (dict(k)["side"], dict(k)["code"]): v
            for k, v in page.series("wsgate_tunnel_close_codes_total").items()
        }
        assert codes == {
            ("client", "1000"): 1,
            ("upstream", "1000"): 1,
            ("client", "4xxx"): 1,
            ("upstream", "none"): 1,
        }
        durations = dict(page.buckets("wsgate_tunnel_duration_seconds", **ls))
        assert list(durations) == [*TUNNEL_BUCKETS, float("inf")]
        assert durations[0.1] == 1 and durations[5.0] == 2 and durations[600.0] == 2
        assert durations[1800.0] == 3
        assert page.value("wsgate_tunnel_duration_seconds_sum", **ls) == 702.05
        up = dict(ls, direction="to_upstream")
        sizes = page.buckets("wsgate_tunnel_message_size_bytes", **up)
        assert [le for le, _ in sizes] == [*map(float, SIZE_BUCKETS), float("inf")]
        assert dict(sizes)[64.0] == 4 and dict(sizes)[4096.0] == 6
        assert page.value("wsgate_tunnel_message_size_bytes_sum", **up) == 2 * 4030
        assert page.value("wsgate_tunnel_message_size_bytes_count", **up) == 6
        # The bounds are written as integers, never as 1.67772e+07.
        assert 'le="16777216"' in store.exposition().decode()
    finally:
        store.close()


def test_close_frame_opcodes_are_not_messages() -> None:
    counts = [0] * CELLS
    data = close_frame(1000) + header(True, CLOSE, 0, False)
    scan_sizes(data, 0, b"", 0, counts)
    assert counts == [0] * CELLS
