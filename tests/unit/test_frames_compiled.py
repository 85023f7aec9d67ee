"""The compiled frame scanner (``wsgate.proxy._frames``) returns what the Python one does.

Both are run on the same chunks of the same streams, with the same state carried between
reads, and every return value is compared: well-formed streams of every frame kind and
length encoding split at random points, garbage, Close frames split in their code, and the
cases the C code hands back to Python (64-bit lengths past 2**62, arguments of other types).
tests/unit/test_frames.py checks the scanner the tunnel uses against a whole-stream parse,
so with the extension built it checks the compiled one, and under ``WSGATE_PURE=1`` the
Python one.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_frames import build, random_stream
from wsgate.proxy import frames

py_fields, py_sizes = frames.PURE_SCANNERS

try:
    from wsgate.proxy import _frames
except ImportError:  # pragma: no cover - only where no compiler built it
    if (shutil.which("cc") or shutil.which("gcc")) and not os.environ.get("CC"):
        raise  # a compiler is here: the extension must have been built (pip install -e .)
    # No compiler, or one chosen with CC (``CC=/bin/false make test`` hides it: a machine
    # without one, whose install goes on without the extension).
    pytest.skip("no C compiler: the extension was not built", allow_module_level=True)
# (frames.py registers them when it uses the extension; under WSGATE_PURE it does not.)
_frames.fallback(py_fields, py_sizes)


def both_fields(chunks: list[bytes], skip: int = 0, partial: bytes = b"") -> None:
    """Scan ``chunks`` with both implementations, comparing after every chunk."""
    state = (skip, partial, 0, 0)
    for chunk in chunks:
        want = py_fields(chunk, *state)
        got = _frames.scan_fields(chunk, *state)
        assert got == want, (chunk[:32], state)
        state = want


def both_sizes(chunks: list[bytes], skip: int = 0, partial: bytes = b"") -> None:
    state = (skip, partial, 0)
    n = len(frames.SIZE_BUCKETS) + 2
    want_counts, got_counts = [0] * n, [0] * n
    for chunk in chunks:
        want = py_sizes(chunk, *state, want_counts)
        got = _frames.scan_sizes(chunk, *state, got_counts)
        assert got == want and got_counts == want_counts, (chunk[:32], state)
        state = want


def chunked(rng: random.Random, data: bytes, most: int = 60) -> list[bytes]:
    if len(data) < 2:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, most))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_random_streams_split_at_random_points() -> None:
    rng = random.Random(16)
    for _ in range(300):
        data, _ = random_stream(rng, rng.randint(1, 30))
        chunks = chunked(rng, data)
        both_fields(chunks)
        both_sizes(chunks)


def test_every_split_of_a_stream_of_every_kind() -> None:
    rng = random.Random(3)
    data, refs = random_stream(rng, 25)
    for k in range(len(data) + 1):
        if any(r.known + 20 < k < r.end - 3 for r in refs):
            continue  # inside a long payload: the same case as its neighbours
        both_fields([data[:k], data[k:]])
        both_sizes([data[:k], data[k:]])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=8))
def test_garbage(chunks: list[bytes]) -> None:
    both_fields(chunks)
    both_sizes(chunks)


@pytest.mark.parametrize("masked", [False, True])
def test_a_close_split_inside_its_code(masked: bool) -> None:
    key = b"\x01\x02\x03\x04" if masked else b""
    close = bytes((0x88, (0x80 if masked else 0) | 4)) + key + b"\x03\xe8ok"
    stream = b"\x81\x02hi" + close + b"\x82\x01x"
    for k in range(len(stream) + 1):
        for j in range(k, len(stream) + 1):
            both_fields([stream[:k], stream[k:j], stream[j:]])


def test_lengths_past_2_62_are_handed_to_python() -> None:
    for top in (0x40, 0x7F, 0x80, 0xFF):
        huge = bytes((0x82, 127, top)) + bytes(7)
        both_fields([huge + b"xyz"])
        both_fields([b"\x81\x00" + huge[:5], huge[5:] + b"more"])
        both_sizes([huge + b"xyz"])
        both_sizes([b"\x82\x00" + huge[:4], huge[4:]])
    # a skip or a message size past what C keeps, carried in from Python
    assert _frames.scan_fields(b"abc", 1 << 70, b"", 5, 0) == py_fields(b"abc", 1 << 70, b"", 5, 0)
    counts_c, counts_py = [0] * 12, [0] * 12
    assert _frames.scan_sizes(b"\x80\x01x", 0, b"", 1 << 63, counts_c) == py_sizes(
        b"\x80\x01x", 0, b"", 1 << 63, counts_py
    )
    assert counts_c == counts_py and counts_py[-1] == (1 << 63) + 1


def test_other_argument_types_are_handed_to_python() -> None:
    data = bytearray(b"\x81\x02hi\x82")
    assert _frames.scan_fields(data, 0, b"", 0, 0) == py_fields(data, 0, b"", 0, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _frames.scan_fields(b"x", 0, b"", 0)  # type: ignore[call-arg]


def test_the_tunnel_uses_the_compiled_scanner_unless_told_not_to() -> None:
    assert frames.SCANNER == (
        "pure Python (WSGATE_PURE)" if os.environ.get("WSGATE_PURE") else "compiled"
    )
    code = "from wsgate.proxy import frames; print(frames.SCANNER, frames.scan_fields.__module__)"
    for env, want in (
        ("1", "pure Python (WSGATE_PURE) wsgate.proxy.frames"),
        ("", "compiled wsgate.proxy._frames"),
    ):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "WSGATE_PURE": env},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == want


class _Out:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


def _side_class(base: type) -> type:
    """A side on ``base`` whose ``_frames`` is the tunnel's relaying branch of it."""

    class Side(base):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def __init__(self) -> None:
            self.out = _Out()
            ticks = iter(range(1, 1 << 30))
            self.clock = lambda: float(next(ticks))
            self.last = 0.0
            self.nbytes = self.skip = self.messages = self.close_seen = self.phase = 0
            self.partial = b""

        def _frames(self, data: bytes) -> None:
            self.out.write(data)
            skip, self.partial, self.messages, _ = py_fields(
                data, max(self.skip, 0), self.partial, self.messages, 0
            )
            self.skip = -1 if self.partial else skip

    return Side


def _state(side: object) -> tuple[object, ...]:
    s: Any = side
    return (s.skip, s.messages, s.nbytes, s.last, s.partial, s.out.chunks)


def test_the_compiled_side_relays_as_the_python_one() -> None:
    """``SideBase.relay_ws``/``relay`` against ``_PySideBase``'s, chunk by chunk: the same
    writes, skip, message count, byte count and read stamps."""
    from wsgate.proxy.tunnel import _PySideBase

    compiled, python = _side_class(_frames.SideBase), _side_class(_PySideBase)
    rng = random.Random(8)
    for _ in range(200):
        data, _ = random_stream(rng, rng.randint(1, 20))
        c, p = compiled(), python()
        for chunk in chunked(rng, data):
            c.relay_ws(chunk)
            p.relay_ws(chunk)
            assert _state(c) == _state(p), chunk[:16]
        c.relay(b"raw")
        p.relay(b"raw")
        assert _state(c) == _state(p)


def _plain_class(base: type, frames_method: object, scan_method: object = None) -> type:
    """``_side_class``'s side with ``frames_method`` as ``_frames`` (and ``held``, ``tunnel``
    and ``_scan``: what _WsSide._frames uses outside the relaying phase)."""

    class Plain(_side_class(base)):  # type: ignore[misc]
        __slots__ = ("held", "tunnel")
        _frames = frames_method
        _scan = scan_method

    return Plain


def test_the_compiled_side_scans_what_the_fast_path_leaves_as_the_python_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A side whose ``_frames`` is the tunnel's own (``_WsSide._frames``), relaying: the
    compiled ``relay_ws`` writes and scans the chunks its fast path leaves (several headers,
    split headers, Close frames) itself, as the Python twin's ``_frames`` does with the pure
    scanner: the same writes, skip, partial header, message count and Close code after every
    chunk.  That the C side really does it without Python is shown by the tunnel's
    ``scan_fields`` (the one ``_WsSide._frames`` calls) never being called for it."""
    from wsgate.proxy import tunnel

    def reference(self: Any, data: bytes) -> None:  # _WsSide._frames's relaying case, pure
        self.out.write(data)
        skip = self.skip
        skip, self.partial, self.messages, self.close_seen = py_fields(
            data, skip if skip > 0 else 0, self.partial, self.messages, self.close_seen
        )
        self.skip = -1 if self.partial else skip

    calls: list[bytes] = []
    compiled_scan = tunnel.scan_fields

    def counted(data: bytes, *rest: Any) -> Any:
        calls.append(data)
        return compiled_scan(data, *rest)

    monkeypatch.setattr(tunnel, "scan_fields", counted)
    _frames.SideBase.plain_frames(tunnel._WsSide._frames)  # tunnel.py's, unless WSGATE_PURE
    compiled = _plain_class(_frames.SideBase, tunnel._WsSide._frames, tunnel._WsSide._scan)
    python = _plain_class(tunnel._PySideBase, reference)
    rng = random.Random(41)
    for _ in range(300):
        data, _ = random_stream(rng, rng.randint(1, 25))
        c, p = compiled(), python()
        for chunk in chunked(rng, data, most=rng.choice((5, 60, 400))):
            c.relay_ws(chunk)
            p.relay_ws(chunk)
            assert _state(c) + (c.close_seen,) == _state(p) + (p.close_seen,), chunk[:16]
    assert calls == []
    # Outside the relaying phase the chunk goes to ``_frames`` itself (and so to the scanner).
    c = compiled()
    c.phase, c.held, c.skip = 2, 0, -1  # _DROP: a going-away direction's
    c.relay_ws(b"\x81\x01a\x81\x01b")
    assert calls == [b"\x81\x01a\x81\x01b"] and c.messages == 2


def test_the_compiled_side_keeps_skip_in_62_bits() -> None:
    side = _side_class(_frames.SideBase)()
    side.skip = 1 << 70
    assert side.skip == 1 << 62  # a frame that long is never reached
    side.skip = -1
    assert side.skip == -1
    huge = bytes((0x82, 127, 0xFF)) + bytes(7) + b"x"
    side.skip = 0
    side.relay_ws(huge)  # past 2**62: the scanner's path, then clamped
    assert side.skip == 1 << 62 and side.out.chunks == [huge]


def _limit_class(base: type, method: object) -> type:
    """A side on ``base`` with _FeatSide's limit fields, relaying with ``method``; its
    ``_many`` (the feature side's general path) records what it is given, relays it and
    scans it.  (With a ``_many`` that left ``skip`` at 0, the rest of a split frame was read
    as a header: random payload bytes, and now and then a 64-bit length past 2**62, which C
    hands to ``_many`` where Python's fast path takes it, by design.)"""

    class Limited(base):  # type: ignore[misc, valid-type]
        __slots__ = ("max_whole", "period", "window", "tat", "many")
        data_received = method

        def __init__(self, max_whole: int, rate: float, burst: float) -> None:
            self.out = _Out()
            ticks = iter(range(1, 1 << 30))
            self.clock = lambda: next(ticks) / 1000.0  # a message every millisecond
            self.last = 0.0
            self.nbytes = self.skip = self.messages = 0
            self.max_whole = max_whole
            self.period = 1.0 / rate if rate else 0.0
            self.window = burst / rate if rate else 0.0
            self.tat = -1e18
            self.many: list[tuple[bytes, int, float]] = []
            self.partial = b""

        def _many(self, data: bytes, n: int, now: float) -> None:
            self.many.append((data, n, now))
            self.out.write(data)
            # Where the stream stands after it, as the real one leaves it: a frame's rest is
            # then payload to both sides, never read as a header.
            skip, self.partial, _, _ = py_fields(data, max(self.skip, 0), self.partial, 0, 0)
            self.skip = -1 if self.partial else skip

    return Limited


def test_the_compiled_limit_side_checks_as_the_python_one() -> None:
    """``SideBase.relay_limited`` against ``_LimitSide``'s Python method: the same chunks
    relayed, the same ones handed to ``_many``, the same rate account, on messages of every
    length encoding against size limits and rates that are passed and not."""
    from wsgate.proxy.tunnel import _LimitSide, _PySideBase

    compiled = _limit_class(_frames.SideBase, _frames.SideBase.relay_limited)
    python = _limit_class(_PySideBase, _LimitSide._relay_limited)
    rng = random.Random(15)
    fast = handed = refused_by_rate = 0
    for _ in range(300):
        limit = rng.choice([125, 126, 200, 65535, 65536, 1 << 20, 1 << 63])
        rate, burst = rng.choice([(0.0, 0.0), (500.0, 0.0), (1000.0, 5.0), (2000.0, 50.0)])
        c, p = compiled(limit, rate, burst), python(limit, rate, burst)
        for _ in range(40):
            size = rng.choice([0, 5, 125, 126, 200, 65535, 65536, 70000])
            b0 = rng.choice([0x81, 0x82, 0xC2, 0x02, 0x80, 0x89, 0x88])
            frame = build([(b0 & 0x80 != 0, b0 & 0x0F, size, rng.random() < 0.5)])[0]
            frame = bytes((b0,)) + frame[1:]  # keep the RSV bits too
            cut = rng.choice([len(frame), len(frame), 1, 5, 9, 11])
            for chunk in (frame[:cut], frame[cut:]):
                if chunk:
                    c.data_received(chunk)
                    p.data_received(chunk)
                    fields = ("tat", "many", "skip", "messages", "nbytes", "last")
                    assert [getattr(c, f) for f in fields] == [getattr(p, f) for f in fields]
                    assert c.out.chunks == p.out.chunks
            c.skip = p.skip = 0
        fast += c.messages
        handed += len(c.many)
        refused_by_rate += bool(rate) and any(n > 1 and d[0] in (0x81, 0x82) for d, n, _ in c.many)
    assert fast > 1000 and handed > 1000 and refused_by_rate > 10  # every branch was taken
