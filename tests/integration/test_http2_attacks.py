"""The known HTTP/2 attacks (issue 13) performed against a real wsgate on loopback, each
checking nginx's answer (``src/http/v2/ngx_http_v2.c``, 1.31): the GOAWAY code, the
``[info]`` line (never ``[alert]``), the connection closed, an innocent connection opened
before the attack still served after it, and the worker's memory not growing with the
attack.

The floods nginx detects by its ratio (``total_bytes / 8 > payload_bytes + 1 MiB``) need
8 MiB of overhead; they are sent in the largest frames each kind allows (SETTINGS with many
parameters, DATA with only padding), except WINDOW_UPDATE, whose frames have one size.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from h2.events import StreamEnded, StreamReset
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hpack import Encoder
from hpack.hpack import encode_integer
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.conftest import WsgateProcess
from tests.integration import test_http2
from tests.integration.h2raw import PREFACE, frames_of, headers_frame, raw_connection
from tests.integration.loopback import Loop, loop_fixture, silent, wait_for
from tests.integration.test_http2 import conf

Factory = Callable[..., WsgateProcess]
bg = pytest.fixture(loop_fixture)
pytestmark = pytest.mark.timeout(90)

REQUEST = [(":method", "GET"), (":scheme", "http"), (":authority", "localhost"), (":path", "/")]
MiB = 1 << 20

#: Every socket a test opens, closed at its end whether it passed or failed: a failed
#: assertion would otherwise leave them to the garbage collector, whose ResourceWarning lands
#: on whichever test runs next in this worker.
OPENED: list[test_http2.Client | socket.socket] = []


@pytest.fixture(autouse=True)
def _close_what_the_test_opened() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


class Client(test_http2.Client):
    def __init__(self, port: int) -> None:
        super().__init__(port)
        OPENED.append(self)


def until_closed(sock: socket.socket) -> list[Frame]:
    """Every frame the server sends until it closes (a reset ends the reading too)."""
    data = b""
    sock.settimeout(30)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return frames_of(data)


def goaways(frames: list[Frame]) -> list[tuple[int, int]]:
    return [(f.last_stream_id, f.error_code) for f in frames if isinstance(f, GoAwayFrame)]


def goaways_at_close(sock: socket.socket) -> list[tuple[int, int]]:
    """The GOAWAYs the server sends until it closes; ``sock`` is closed then."""
    frames = until_closed(sock)
    sock.close()
    return goaways(frames)


def flood(sock: socket.socket, chunk: bytes, limit: int) -> int:
    """Send ``chunk`` again and again until the server closes (or ``limit`` bytes)."""
    sent = 0
    try:
        while sent < limit:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def attacker(port: int, rcvbuf: int = 0) -> socket.socket:
    sock = raw_connection(port, 30, rcvbuf)
    OPENED.append(sock)
    return sock


def rss(gw: WsgateProcess) -> int:
    """The worker's resident memory in KiB."""
    pids = gw.worker_pids() or [gw.proc.pid]
    for line in Path(f"/proc/{pids[0]}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def served(c: Client) -> None:
    """The innocent connection, opened before the attack, is still served."""
    assert c.get("/")[0] == 200
    c.close()


def no_alert(gw: WsgateProcess) -> None:
    assert "[alert]" not in gw.errors() and "[crit]" not in gw.errors()


# -- 1. rapid reset (CVE-2023-44487) ----------------------------------------------------------


def test_rapid_reset(wsgate: Factory) -> None:
    """HEADERS + RST_STREAM in a loop: the streams beyond http2_max_concurrent_streams are
    refused (REFUSED_STREAM: a reset stream holds its slot until its request has ended), and
    at keepalive_requests (1000) the connection says GOAWAY NO_ERROR and closes, nginx's
    answers (ngx_http_v2_state_headers)."""
    gw = wsgate(conf("http2_max_concurrent_streams 8; location / { return 200 ok; }"))
    innocent = Client(gw.port)
    before = rss(gw)
    c = Client(gw.port)

    def pairs(n: int) -> bytes:
        for _ in range(n):
            sid = c.h2.get_next_available_stream_id()
            c.h2.send_headers(sid, REQUEST, end_stream=True)
            c.h2.reset_stream(sid)
        return c.h2.data_to_send()

    c.sock.sendall(pairs(200))  # a burst: one read holds far more than 8 streams
    raw = bytearray()  # what the server sent (the client's h2 stops at its GOAWAY)
    ended: set[int] = set()
    while not goaways(frames_of(bytes(raw))) and c.h2.highest_outbound_stream_id < 12000:
        # Then batches paced by one ordinary request each (the reset streams' requests end).
        c.sock.sendall(pairs(20))
        sid = c.request("/")
        while sid not in ended and not goaways(frames_of(bytes(raw))):
            data = c.sock.recv(65536)
            assert data, "closed without GOAWAY"
            raw += data
            with contextlib.suppress(ProtocolError):
                events = c.h2.receive_data(data)
                ended.update(
                    e.stream_id for e in events if isinstance(e, StreamEnded | StreamReset)
                )
    frames = frames_of(bytes(raw)) + until_closed(c.sock)  # closed once its streams ended
    c.close()
    (last, code), *_ = goaways(frames)
    assert code == 0 and last < c.h2.highest_outbound_stream_id  # before the attack's end
    assert [f for f in frames if isinstance(f, RstStreamFrame) and f.error_code == 7]
    assert "concurrent streams exceeded" in gw.errors()
    served(innocent)
    # keepalive_requests: the attack's connection had 1000 requests, the innocent one 1.
    wait_for(lambda: len(gw.access_log.read_text().splitlines()) == 1001, "the log lines")
    no_alert(gw)
    assert rss(gw) - before < 20 * 1024


# -- 2. CONTINUATION flood (2024) -------------------------------------------------------------


def test_continuation_flood_is_cut_at_the_header_limit(wsgate: Factory) -> None:
    """An endless header block in 16 KiB CONTINUATION frames: GOAWAY ENHANCE_YOUR_CALM as
    soon as the block passes twice large_client_header_buffers, seen at the frame header,
    so nothing of it is held; the attack cannot send more than the socket buffers take."""
    gw = wsgate(conf("location / { return 200 ok; }"))
    innocent = Client(gw.port)
    before = rss(gw)
    sock = attacker(gw.port)
    sock.sendall(headers_frame(1, REQUEST, ()))
    sent = flood(sock, ContinuationFrame(1, b"\x40" * 16384).serialize(), 512 * MiB)
    assert goaways_at_close(sock) == [(1, 11)]
    assert sent < 64 * MiB
    wait_for(lambda: "client sent too large header" in gw.errors(), "the info line")
    served(innocent)
    no_alert(gw)
    assert rss(gw) - before < 20 * 1024


def test_continuation_flood_of_empty_frames(wsgate: Factory) -> None:
    """Empty CONTINUATION frames without END_HEADERS: h2 takes at most 64 frames of one
    header block, then GOAWAY PROTOCOL_ERROR (nginx would count them as flood overhead)."""
    gw = wsgate(conf("location / { return 200 ok; }"))
    innocent = Client(gw.port)
    sock = attacker(gw.port)
    sock.sendall(headers_frame(1, REQUEST, ()))
    flood(sock, ContinuationFrame(1, b"").serialize() * 1000, 64 * MiB)
    assert goaways_at_close(sock) == [(0, 1)]
    wait_for(lambda: "Too many continuation frames" in gw.errors(), "the info line")
    served(innocent)
    no_alert(gw)


def test_unfinished_header_block_times_out(wsgate: Factory) -> None:
    """HEADERS without END_HEADERS and then nothing: client_header_timeout resets the stream
    (RST_STREAM PROTOCOL_ERROR, "client timed out"), the connection goes on."""
    gw = wsgate(conf("client_header_timeout 1s; location / { return 200 ok; }"))
    sock = attacker(gw.port)
    sock.sendall(headers_frame(1, REQUEST, ("END_STREAM",)))
    data = b""
    while not any(isinstance(f, RstStreamFrame) for f in frames_of(data)):
        data += sock.recv(65536)
    (rst,) = [f for f in frames_of(data) if isinstance(f, RstStreamFrame)]
    assert (rst.stream_id, rst.error_code) == (1, 1)
    assert "client timed out" in gw.errors()
    # The rest of the block, late, is dropped; the connection still answers.
    end = ContinuationFrame(1, b"")
    end.flags.add("END_HEADERS")
    sock.sendall(end.serialize() + PingFrame(0, b"SEE-THIS").serialize())
    data = b""
    while not any(isinstance(f, PingFrame) for f in frames_of(data)):
        data += sock.recv(65536)
    assert not [f for f in frames_of(data) if isinstance(f, HeadersFrame | RstStreamFrame)]
    sock.sendall(headers_frame(3, REQUEST, ("END_HEADERS", "END_STREAM")))
    while not any(isinstance(f, DataFrame) and f.stream_id == 3 for f in frames_of(data)):
        data += sock.recv(65536)
    sock.close()
    no_alert(gw)


# -- 3. HPACK bomb ----------------------------------------------------------------------------


def test_dynamic_table_size_update_over_the_setting(wsgate: Factory) -> None:
    """A dynamic table size update above SETTINGS_HEADER_TABLE_SIZE (4096): GOAWAY
    COMPRESSION_ERROR (RFC 7541 §4.2; nginx: "client sent invalid table size update")."""
    gw = wsgate(conf("location / { return 200 ok; }"))
    innocent = Client(gw.port)
    sock = attacker(gw.port)
    block = bytes(encode_integer(1 << 20, 5))
    block = bytes([block[0] | 0x20]) + block[1:] + Encoder().encode(REQUEST)
    sock.sendall(headers_frame(1, block, ("END_HEADERS", "END_STREAM")))
    assert goaways_at_close(sock) == [(1, 9)]
    wait_for(lambda: "client sent invalid table size update" in gw.errors(), "the info line")
    served(innocent)
    no_alert(gw)


def test_header_list_bomb(wsgate: Factory) -> None:
    """One 4000-byte field in the dynamic table referenced 10,000 times: a 5 KiB block that
    decodes to 40 MB. The decoder stops at its bound (twice large_client_header_buffers):
    GOAWAY ENHANCE_YOUR_CALM, "client sent too large header", memory unchanged."""
    gw = wsgate(conf("location / { return 200 ok; }"))
    innocent = Client(gw.port)
    before = rss(gw)
    sock = attacker(gw.port)
    encoder = Encoder()
    block = encoder.encode([*REQUEST, ("x-bomb", "A" * 4000)])
    block += encoder.encode([("x-bomb", "A" * 4000)]) * 10000  # one byte each
    assert len(block) < 16384
    sock.sendall(headers_frame(1, block, ("END_HEADERS", "END_STREAM")))
    assert goaways_at_close(sock) == [(1, 11)]
    wait_for(lambda: "client sent too large header" in gw.errors(), "the info line")
    served(innocent)
    no_alert(gw)
    assert rss(gw) - before < 20 * 1024


def test_client_header_table_size_does_not_grow_our_table(wsgate: Factory) -> None:
    """SETTINGS_HEADER_TABLE_SIZE 2^32-1 from a client: our encoder keeps at most nginx's
    4096 bytes (it announces the size it uses), whatever the responses' fields."""
    gw = wsgate(conf('location / { add_header X-Uri "$request_uri$request_uri"; return 204; }'))
    c = Client(gw.port)
    c.h2.update_settings({SettingCodes.HEADER_TABLE_SIZE: (1 << 32) - 1})
    c.h2.decoder.max_allowed_table_size = (1 << 32) - 1
    c.send()
    for i in range(200):
        assert c.get(f"/{i:04d}" + "u" * 200)[0] == 204
    assert c.h2.decoder.header_table_size <= 4096
    assert c.h2.decoder.header_table._current_size <= 4096
    c.close()
    no_alert(gw)


# -- 4. SETTINGS, PING, empty DATA, WINDOW_UPDATE, PRIORITY floods ----------------------------


def ratio_flood(gw: WsgateProcess, chunk: bytes, limit: int = 64 * MiB) -> None:
    """A flood nginx's ratio catches: GOAWAY NO_ERROR, "http2 flood detected"."""
    innocent = Client(gw.port)
    before = rss(gw)
    sock = attacker(gw.port)
    sent = flood(sock, chunk, limit)
    assert goaways_at_close(sock) == [(0, 0)]
    assert 8 * MiB <= sent < 32 * MiB
    wait_for(lambda: "http2 flood detected" in gw.errors(), "the info line")
    served(innocent)
    no_alert(gw)
    assert rss(gw) - before < 20 * 1024


def test_settings_flood(wsgate: Factory) -> None:
    gw = wsgate(conf("location / { return 200 ok; }"))
    params = struct.pack(">HI", 0xF0, 0) * 2500
    frame = len(params).to_bytes(3, "big") + b"\x04\x00\x00\x00\x00\x00" + params
    ratio_flood(gw, frame * 16)


@pytest.mark.timeout(240)  # 645,000 frames through h2: seconds of the worker's CPU
def test_window_update_flood(wsgate: Factory) -> None:
    gw = wsgate(conf("location / { return 200 ok; }"))
    ratio_flood(gw, WindowUpdateFrame(0, 1).serialize() * 5000)


def test_empty_data_flood(wsgate: Factory, bg: Loop) -> None:
    """DATA frames carrying nothing (padding only) on a request whose body is being read:
    no payload, so the ratio catches them."""
    backend = bg.backend("b")
    gw = wsgate(conf(f"location / {{ proxy_pass http://127.0.0.1:{backend.port}; }}"))
    innocent = Client(gw.port)
    c = Client(gw.port)
    sid = c.h2.get_next_available_stream_id()
    c.h2.send_headers(sid, [(":method", "POST"), *REQUEST[1:]])
    c.send()
    sent = 0
    closed = False
    try:
        while not closed and sent < 64 * MiB:
            # A round of at most 256 frames: the body is read whole, so its window is open
            # to 2^31-1 (ngx_http_v2_read_request_body), and the server's answer (GOAWAY)
            # is looked for between rounds.
            for _ in range(256):
                if c.h2.local_flow_control_window(sid) < 256:
                    break
                c.h2.send_data(sid, b"", pad_length=255)
                sent += 265
            c.send()
            if c.h2.local_flow_control_window(sid) < 256 or select.select([c.sock], [], [], 0)[0]:
                closed = not c.read() or c.goaway is not None
    except (BrokenPipeError, ConnectionResetError):
        pass
    # A stream is being processed, so the connection closes at once after its GOAWAY, as
    # nginx's (c->error): the client, still sending, may see the reset before the GOAWAY.
    assert c.goaway is None or c.goaway.error_code == 0
    assert 8 * MiB <= sent < 32 * MiB  # the flood was cut, after nginx's 8 MiB allowance
    c.close()
    wait_for(lambda: "http2 flood detected" in gw.errors(), "the info line")
    served(innocent)
    no_alert(gw)


def test_ping_flood_without_reading(wsgate: Factory) -> None:
    """PINGs from a client that never reads the acks: past 10000 control frames owed, "http2
    flood detected" and the connection closes without GOAWAY (ngx_http_v2_get_frame)."""
    gw = wsgate(conf("location / { return 200 ok; }"))
    innocent = Client(gw.port)
    before = rss(gw)
    sock = attacker(gw.port, rcvbuf=4096)
    sent = flood(sock, PingFrame(0, b"12345678").serialize() * 1000, 64 * MiB)
    assert not goaways_at_close(sock) and sent < 64 * MiB
    wait_for(lambda: "http2 flood detected" in gw.errors(), "the info line")
    served(innocent)
    no_alert(gw)
    assert rss(gw) - before < 20 * 1024


def test_slow_ping_flood_on_an_idle_connection(wsgate: Factory) -> None:
    """One PING per read on a connection with no stream open: past 10 * keepalive_requests
    such reads, "http2 flood detected", GOAWAY NO_ERROR (ngx_http_v2_idle_handler), however
    few bytes they carry."""
    gw = wsgate(conf("keepalive_requests 10; location / { return 200 ok; }"))
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    # The first read: the preface, our SETTINGS and the ACK of the server's.
    ack = SettingsFrame(0)
    ack.flags.add("ACK")
    sock.sendall(PREFACE + SettingsFrame(0).serialize() + ack.serialize())
    data = b""
    while not any(isinstance(f, SettingsFrame) and "ACK" in f.flags for f in frames_of(data)):
        data += sock.recv(65536)  # that first read has been processed
    answered = 0
    for n in range(1, 200):
        sock.sendall(PingFrame(0, n.to_bytes(8, "big")).serialize())
        while True:  # its ACK, or the end
            frames = frames_of(data)
            pongs = [f for f in frames if isinstance(f, PingFrame) and "ACK" in f.flags]
            if len(pongs) == n or goaways(frames):
                break
            chunk = sock.recv(65536)
            assert chunk, "closed without GOAWAY"
            data += chunk
        if goaways(frames):
            break
        answered = n
    frames = frames_of(data) + until_closed(sock)
    sock.close()
    assert goaways(frames) == [(0, 0)]
    assert answered == 101  # 101 idle reads pass, the 102nd is the flood
    assert "http2 flood detected" in gw.errors()
    no_alert(gw)


def test_priority_flood(wsgate: Factory) -> None:
    """PRIORITY frames beyond max(http2_max_concurrent_streams, 100) plus that many per
    stream: GOAWAY ENHANCE_YOUR_CALM (ngx_http_v2_state_priority)."""
    gw = wsgate(conf("location / { return 200 ok; }"))
    sock = attacker(gw.port)
    prio = (5).to_bytes(3, "big") + b"\x02\x00\x00\x00\x00\x03" + b"\x00\x00\x00\x01\x10"
    flood(sock, prio * 200, 64 * MiB)
    assert goaways_at_close(sock) == [(0, 11)]
    assert "client sent too many PRIORITY frames" in gw.errors()
    no_alert(gw)


def test_oversized_frames_are_refused_at_their_header(wsgate: Factory) -> None:
    """A DATA frame announced longer than any window we grant is FLOW_CONTROL_ERROR, another
    frame longer than http2_recv_buffer_size FRAME_SIZE_ERROR, before its body arrives."""
    gw = wsgate(conf("location / { return 200 ok; }"))
    sock = attacker(gw.port)
    sock.sendall(headers_frame(1, REQUEST, ("END_HEADERS",)))
    sock.sendall((16 * MiB - 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01" + b"x" * 100)
    assert goaways_at_close(sock) == [(1, 3)]
    sock = attacker(gw.port)
    sock.sendall((1 * MiB).to_bytes(3, "big") + b"\xfa\x00\x00\x00\x00\x00" + b"x" * 100)
    assert goaways_at_close(sock) == [(0, 6)]
    assert "client violated flow control for stream 1" in gw.errors()
    no_alert(gw)


# -- 5. zero-window stalls --------------------------------------------------------------------


def test_zero_window_stall_times_out_and_spares_the_other_streams(
    wsgate: Factory, tmp_path: Path
) -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE 0: a stream whose window the client never opens is reset
    after send_timeout and freed; a stream whose window it opens completes meanwhile, and
    the connection serves a new stream afterwards."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "big").write_bytes(b"b" * 200_000)
    gw = wsgate(
        conf(f"root {root}; send_timeout 1s; http2_max_concurrent_streams 4; location / {{ }}")
    )
    c = Client(gw.port)
    c.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
    c.send()
    while c.h2.local_settings.initial_window_size != 0:  # until the server's ACK
        assert c.read()
    stalled = [c.request("/big") for _ in range(3)]
    moving = c.request("/big")
    c.h2.increment_flow_control_window(1 << 20)
    c.h2.increment_flow_control_window(1 << 20, stream_id=moving)
    c.send()
    c.wait(moving)
    assert bytes(c.bodies[moving]) == b"b" * 200_000
    c.wait(*stalled)
    assert all(c.resets.get(s) == 2 for s in stalled)  # INTERNAL_ERROR after send_timeout
    c.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    c.send()
    status, body = c.get("/big")
    assert status == 200 and len(body) == 200_000
    c.close()
    no_alert(gw)


def test_client_that_never_reads(wsgate: Factory, tmp_path: Path) -> None:
    """Windows wide open, nothing read: the streams time out after send_timeout, and the
    connection, its output stuck for send_timeout, is closed with what it held
    (ngx_http_v2_write_handler); memory does not grow with the responses' size."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "big").write_bytes(b"b" * 20_000_000)
    # Streams reset with nothing left to send make an idle connection: keepalive_timeout
    # ends it (the stuck-output close ends it when output is still queued).
    gw = wsgate(
        conf(
            f"root {root}; send_timeout 1s; keepalive_timeout 3s; location = / {{ return 200 ok; }}"
        )
    )
    innocent = Client(gw.port)
    before = rss(gw)
    sock = attacker(gw.port, rcvbuf=4096)
    big = [*REQUEST[:3], (":path", "/big")]
    sock.sendall(
        SettingsFrame(0, {SettingCodes.INITIAL_WINDOW_SIZE: (1 << 31) - 1}).serialize()
        + WindowUpdateFrame(0, (1 << 31) - 1 - 65535).serialize()
        # 80 MB asked for, never read
        + b"".join(headers_frame(sid, big, ("END_HEADERS", "END_STREAM")) for sid in (1, 3, 5, 7))
    )
    wait_for(lambda: "client timed out" in gw.errors(), "send_timeout", timeout=30)
    got = 0
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 20):  # what the socket buffers held, then the end
            got += len(chunk)
    sock.close()
    assert got < 20_000_000
    served(innocent)
    no_alert(gw)
    assert rss(gw) - before < 20 * 1024


# -- 6. stream-limit exhaustion ---------------------------------------------------------------


def test_streams_never_finished_are_freed_by_client_body_timeout(wsgate: Factory, bg: Loop) -> None:
    """Streams holding every http2_max_concurrent_streams slot with bodies that never come:
    one more is refused (REFUSED_STREAM); after client_body_timeout they end and new streams
    are served."""
    backend = bg.backend("b", respond=silent)
    gw = wsgate(
        conf(
            "http2_max_concurrent_streams 2; client_body_timeout 1s; location / {"
            f" proxy_pass http://127.0.0.1:{backend.port}; }}"
            " location = /d { return 200 ok; }"
        )
    )
    c = Client(gw.port)
    c.h2.update_settings({})
    c.send()
    held = []
    for path in ("/a", "/b"):
        sid = c.h2.get_next_available_stream_id()
        c.h2.send_headers(sid, [(":method", "POST"), *REQUEST[1:3], (":path", path)])
        held.append(sid)
    c.send()
    third = c.request("/c")
    c.wait(third)
    assert c.resets.get(third) == 7
    c.wait(*held)  # client_body_timeout: 408 or a reset, each frees its slot
    assert all(c.headers.get(s, {}).get(b":status") == b"408" or s in c.resets for s in held)
    assert c.get("/d") == (200, b"ok")  # a slot is free again
    c.close()
    no_alert(gw)
