"""nginx's HTTP/2 flood defences as :class:`~wsgate.http.http2.FrameGuard` counts them, over
raw frame bytes (no sockets): each limit at and over."""

from __future__ import annotations

from wsgate.http.http2 import (
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    NO_ERROR,
    FrameGuard,
    Violation,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, payload: bytes = b"", flags: int = 0, sid: int = 0) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + payload


def guard(**kw: int) -> FrameGuard:
    args = {"header_limit": 100, "data_limit": 1000, "frame_limit": 500, "concurrent": 4}
    args.update(kw)
    g = FrameGuard(**args)
    assert g.feed(PREFACE) is None
    return g


def test_header_block_at_and_over_the_limit_across_continuations() -> None:
    g = guard()
    assert g.feed(frame(1, b"x" * 60, sid=1)) is None
    assert g.block_sid == 1  # no END_HEADERS: the block goes on
    assert g.feed(frame(9, b"x" * 40, flags=4, sid=1)) is None  # 100: at the limit
    assert g.block_sid == 0
    g.feed(frame(1, b"x" * 60, sid=3))
    got = g.feed(frame(9, b"x" * 41, sid=3)[:9])  # seen at the frame header, before its body
    assert got == Violation(ENHANCE_YOUR_CALM, "client sent too large header", 3)


def test_empty_continuations_keep_the_block_open_and_count_as_overhead() -> None:
    g = guard()
    g.feed(frame(1, b"x", sid=1))
    for _ in range(1000):
        assert g.feed(frame(9, sid=1)) is None
    assert g.block_sid == 1 and g.total == len(PREFACE) + 10 + 9000 and g.payload == 0


def test_frame_split_over_reads() -> None:
    g = guard()
    data = frame(1, b"y" * 10, flags=4, sid=5) + frame(6, b"12345678")
    for i in range(len(data)):
        assert g.feed(data[i : i + 1]) is None
        if 8 <= i < 18:  # from its frame header to its last byte
            assert g.block_sid == 5
    assert g.block_sid == 0 and g.owed == 1  # the PING is answered


def test_data_and_other_frame_sizes() -> None:
    g = guard()
    assert g.feed(frame(0, b"d" * 1000, sid=1)) is None
    got = g.feed(frame(0, b"d" * 1001, sid=1))
    assert got is not None and got.code == FLOW_CONTROL_ERROR
    assert "available window 1000" in got.text
    g = guard()
    assert g.feed(frame(0xFA, b"u" * 500)) is None
    got = g.feed(frame(0xFA, b"u" * 501))
    assert got is not None and got.code == FRAME_SIZE_ERROR


def test_priority_limit_grows_with_streams() -> None:
    g = guard(concurrent=4)  # max(4, 100) = 100 PRIORITY frames, 4 more per stream
    prio = frame(2, b"\0\0\0\0\x10", sid=7)
    assert all(g.feed(prio) is None for _ in range(99))
    g.feed(frame(1, b"h", flags=4, sid=1))
    assert all(g.feed(prio) is None for _ in range(4))
    assert g.feed(prio) == Violation(ENHANCE_YOUR_CALM, "client sent too many PRIORITY frames")


def test_flood_ratio_at_and_over() -> None:
    g = guard()
    g.total = 0
    g.credit(10)
    g.total = (FrameGuard.GRACE + 10) * 8 + 7  # total / 8 == payload + grace: not yet
    assert g.flooded() is None
    g.total += 1
    assert g.flooded() == Violation(NO_ERROR, "http2 flood detected")


def test_ping_and_settings_answers_count_and_owed_frames() -> None:
    g = guard()
    base = g.total
    g.feed(frame(6, b"12345678") + frame(6, b"12345678", flags=1) + frame(4) + frame(4, flags=1))
    assert g.owed == 2  # the ACKs are not answered
    assert g.total == base + 17 * 2 + 9 * 2 + 17 + 9
    g.sent(0)
    assert g.owed == 0
    for _ in range(FrameGuard.MAX_OWED):
        g.answered(17)
    g.sent(100)
    assert g.flooded() is None
    g.answered(17)
    assert g.flooded() == Violation(None, "http2 flood detected")


def test_settings_flood_is_detected_by_the_ratio() -> None:
    g = guard(frame_limit=1 << 20)
    settings = frame(4, b"\0\x09\0\0\0\0" * 2500)
    sent = 0
    while g.flooded() is None:
        assert g.feed(settings) is None
        sent += len(settings)
    assert FrameGuard.GRACE * 8 - 16000 < sent < FrameGuard.GRACE * 8 + 16000


def test_cut_is_where_the_refused_frame_starts() -> None:
    g = guard()
    ok = frame(1, b"h", flags=4, sid=1) + frame(6, b"12345678")
    bad = frame(0, b"d" * 1001, sid=1)
    assert g.feed(ok + bad[:5]) is None
    assert g.feed(bad[5:]) is not None and g.cut == 0  # its header began in the read before
    g = guard()
    assert g.feed(ok + bad) is not None and g.cut == len(ok)


def test_idle_reads_at_and_over() -> None:
    g = guard(idle_limit=100)  # nginx: h2c->idle++ > 10 * keepalive_requests
    assert all(g.idle_read() is None for _ in range(101))
    assert g.idle_read() == Violation(NO_ERROR, "http2 flood detected")
