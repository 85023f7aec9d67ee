"""HTTP/2 errors answered as nginx answers them (``src/http/v2/ngx_http_v2.c``, 1.31), with a
raw frame client (hyperframe and hpack, no state machine: it sends what nginx-tests sends).

https://nginx.org/en/docs/http/ngx_http_v2_module.html
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hpack import Decoder, Encoder
from hyperframe.frame import (
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
from tests.integration.h2raw import next_frame, raw_connection
from tests.integration.loopback import Loop, dead_port, loop_fixture

Factory = Callable[..., WsgateProcess]
bg = pytest.fixture(loop_fixture)
pytestmark = pytest.mark.timeout(30)


def conf(server: str) -> str:
    return (
        "error_log logs/error.log info;\nevents {}\n"
        f"http {{ server {{ listen 127.0.0.1:0; http2 on; {server} }} }}\n"
    )


class Raw:
    """One connection: frames out as given, frames in as parsed."""

    def __init__(self, port: int) -> None:
        self.sock = raw_connection(port, 10)
        self.hpack = Encoder()
        self.decoder = Decoder()
        #: Each stream's response fields (decoded in order: the table is the connection's).
        self.fields: dict[int, dict[bytes, bytes]] = {}
        self.buf = b""
        self.frames: list[Frame] = []

    def send(self, *frames: Frame | bytes) -> None:
        self.sock.sendall(b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames))

    def headers(
        self, sid: int, path: str = "/", end: bool = True, extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        frame = HeadersFrame(sid)
        frame.data = self.hpack.encode(
            [(":method", "GET"), (":scheme", "http"), (":authority", "localhost")]
            + [(":path", path), *extra]
        )
        frame.flags.add("END_HEADERS")
        if end:
            frame.flags.add("END_STREAM")
        self.send(frame)

    def data(self, sid: int, data: bytes, end: bool = False) -> None:
        frame = DataFrame(sid, data)
        if end:
            frame.flags.add("END_STREAM")
        self.send(frame)

    def until(self, done: Callable[[Frame], bool]) -> list[Frame]:
        """Frames read until one satisfies ``done`` (or the connection closes)."""
        start = len(self.frames)
        while True:
            while (got := next_frame(self.buf)) is not None:
                frame, self.buf = got
                self.frames.append(frame)
                if isinstance(frame, HeadersFrame):
                    fields = self.decoder.decode(frame.data, raw=True)
                    self.fields[frame.stream_id] = dict(fields)  # type: ignore[arg-type]
                if done(frame):
                    return self.frames[start:]
            chunk = self.sock.recv(65536)
            if not chunk:
                return self.frames[start:]
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def ended(sid: int) -> Callable[[Frame], bool]:
    return lambda f: (
        f.stream_id == sid and ("END_STREAM" in f.flags or isinstance(f, RstStreamFrame))
    )


def is_goaway(f: Frame) -> bool:
    return isinstance(f, GoAwayFrame)


@pytest.mark.parametrize(
    ("declared", "body", "log"),
    [
        (5, b"TEST", "only 4 out of 5 bytes of request body received"),
        (3, b"TEST", "client intended to send body data larger than declared"),
    ],
)
def test_body_unlike_content_length_is_the_streams_400(
    wsgate: Factory, bg: Loop, declared: int, body: bytes, log: str
) -> None:
    """ngx_http_v2_filter_request_body: a stream's 400; the connection goes on (h2 itself
    would end it with PROTOCOL_ERROR)."""
    backend = bg.backend("b")
    gw = wsgate(conf(f"location / {{ proxy_pass http://127.0.0.1:{backend.port}; }}"))
    c = Raw(gw.port)
    c.headers(1, end=False, extra=(("content-length", str(declared)),))
    c.data(1, body, end=True)
    frames = c.until(ended(1))
    assert c.fields[1].get(b":status") == b"400"
    assert not any(isinstance(f, GoAwayFrame) for f in frames)
    c.headers(3, extra=(("content-length", "0"),))
    c.until(ended(3))
    assert c.fields[3].get(b":status") == b"200"
    c.close()
    assert log in gw.errors()
    assert [r.body for r in backend.requests] == [b""]  # the body is refused before proxying


def test_body_at_content_length_is_proxied(wsgate: Factory, bg: Loop) -> None:
    backend = bg.backend("b")
    gw = wsgate(conf(f"location / {{ proxy_pass http://127.0.0.1:{backend.port}; }}"))
    c = Raw(gw.port)
    c.headers(1, end=False, extra=(("content-length", "4"),))
    c.data(1, b"TE")
    c.data(1, b"ST", end=True)
    c.until(ended(1))
    assert c.fields[1].get(b":status") == b"200"
    c.close()
    assert [r.body for r in backend.requests] == [b"TEST"]


def test_initial_window_size_change_resumes_a_blocked_stream(
    wsgate: Factory, tmp_path: Path
) -> None:
    """A stream blocked on its window: SETTINGS_INITIAL_WINDOW_SIZE repeated in one frame
    (42, then 65536) leaves it 1 byte; a later SETTINGS 65616 the 80 more
    (ngx_http_v2_state_settings_params, h2.t "iws duplicate")."""
    (tmp_path / "t1.html").write_bytes(b"x" * 65616)
    gw = wsgate(conf(f"location / {{ root {tmp_path}; }}"))
    c = Raw(gw.port)
    c.send(WindowUpdateFrame(0, 1 << 17))
    c.headers(1, "/t1.html")
    got = 0

    def counted(target: int) -> Callable[[Frame], bool]:
        def done(f: Frame) -> bool:
            nonlocal got
            if isinstance(f, DataFrame) and f.stream_id == 1:
                got += len(f.data)
            return got >= target

        return done

    c.until(counted(65535))
    c.send(b"\x00\x00\x0c\x04\x00\x00\x00\x00\x00" + struct.pack(">HIHI", 4, 42, 4, 65536))
    c.until(counted(65536))
    assert got == 65536
    c.send(SettingsFrame(0, {4: 65616}))
    frames = c.until(counted(65616))
    assert got == 65616 and "END_STREAM" in frames[-1].flags
    c.close()


@pytest.mark.parametrize(
    ("first", "second", "last"),
    [(None, 2, 0), (1, 1, 1), (3, 1, 3)],
    ids=["even", "duplicate", "backward"],
)
def test_headers_with_a_used_or_even_stream_id(
    wsgate: Factory, first: int | None, second: int, last: int
) -> None:
    """ngx_http_v2_state_headers: an even id or one not above the last is GOAWAY
    PROTOCOL_ERROR naming the last stream opened."""
    gw = wsgate(conf("location / { return 204; }"))
    c = Raw(gw.port)
    if first is not None:
        c.headers(first)
        c.until(ended(first))
    c.headers(second)
    goaway = c.until(is_goaway)[-1]
    c.close()
    assert isinstance(goaway, GoAwayFrame)
    assert (goaway.error_code, goaway.last_stream_id) == (1, last)


def test_push_promise_from_a_client(wsgate: Factory) -> None:
    """The frame's header alone is enough (ngx_http_v2_state_push_promise): GOAWAY
    PROTOCOL_ERROR without waiting for its payload."""
    gw = wsgate(conf("location / { return 204; }"))
    c = Raw(gw.port)
    c.send(b"\x00\x00\x04\x05\x00\x00\x00\x00\x01")
    goaway = c.until(is_goaway)[-1]
    c.close()
    assert isinstance(goaway, GoAwayFrame)
    assert (goaway.error_code, goaway.last_stream_id) == (1, 0)


@pytest.mark.parametrize("kind", [0xA, 0xC, 0x10, 0xFF])
def test_unknown_frame_types_are_skipped(wsgate: Factory, kind: int) -> None:
    """ngx_http_v2_state_head: a type nginx does not know (ALTSVC and ORIGIN among them, a
    body it does not parse) is skipped."""
    gw = wsgate(conf("location / { return 204; }"))
    c = Raw(gw.port)
    c.send(b"\x00\x00\x07" + bytes([kind]) + b"\x00\x00\x00\x00\x00payload")
    c.send(PingFrame(0, b"SEE-THIS"))
    pong = c.until(lambda f: isinstance(f, PingFrame | GoAwayFrame))[-1]
    c.close()
    assert isinstance(pong, PingFrame) and pong.opaque_data == b"SEE-THIS"


def test_client_body_timeout_resets_with_protocol_error(wsgate: Factory, bg: Loop) -> None:
    """ngx_http_v2_close_stream: a stream whose client timed out (``fc->timedout``) is reset
    with PROTOCOL_ERROR; the connection goes on."""
    backend = bg.backend("b")
    gw = wsgate(
        conf(
            f"client_body_timeout 1s; location / {{ proxy_pass http://127.0.0.1:{backend.port}; }}"
        )
    )
    c = Raw(gw.port)
    c.headers(1, end=False, extra=(("content-length", "10"),))
    c.data(1, b"TEST")
    rst = c.until(ended(1))[-1]
    assert isinstance(rst, RstStreamFrame) and rst.error_code == 1
    c.send(PingFrame(0, b"SEE-THIS"))
    assert isinstance(c.until(lambda f: isinstance(f, PingFrame))[-1], PingFrame)
    c.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x00\x00\x01\x01\x05\x00\x00\x00\x01\xff", 6),  # index cut by the block's end
        (b"\x00\x00\x02\x01\x05\x00\x00\x00\x01\x42\xff", 6),  # a length cut
        (b"\x00\x00\x05\x01\x05\x00\x00\x00\x01\xff\xff\xff\xff", 9),  # 4 octets, 1 to come
        (b"\x00\x00\x06\x01\x05\x00\x00\x00\x01\x42\xff\xff\xff\xff", 9),
    ],
)
def test_hpack_integer_errors(wsgate: Factory, frame: bytes, code: int) -> None:
    """ngx_http_v2_parse_int: FRAME_SIZE_ERROR for an integer the block cuts,
    COMPRESSION_ERROR for one longer than 4 octets, known before the frame's end (the last
    two frames never get their last byte)."""
    gw = wsgate(conf("location / { return 204; }"))
    c = Raw(gw.port)
    c.send(frame)
    goaway = c.until(is_goaway)[-1]
    c.close()
    assert isinstance(goaway, GoAwayFrame)
    assert (goaway.error_code, goaway.last_stream_id) == (code, 1)


def test_every_byte_of_a_value_echoed(wsgate: Factory) -> None:
    """h2_headers.t "all chars": a value with every byte but NUL, CR and LF, echoed by
    add_header, comes back whole; a string Huffman makes longer goes raw ("rare chars")."""
    gw = wsgate(
        conf(
            "large_client_header_buffers 2 64k;"
            " location / { add_header X-Sent-Foo $http_x_foo; return 200; }"
        )
    )
    field = b"a" * 862 + bytes(range(1, 10)) + b"\x0b\x0c" + bytes(range(14, 256))
    c = Raw(gw.port)
    for sid, value in ((1, field), (3, b"{{{{{")):
        frame = HeadersFrame(sid)
        frame.data = c.hpack.encode(
            [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")]
            + [(b":authority", b"localhost"), (b"x-foo", value)]
        )
        frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
        c.send(frame)
        frames = c.until(ended(sid))
        assert c.fields[sid][b"x-sent-foo"] == value
    c.close()
    (head,) = [f for f in frames if isinstance(f, HeadersFrame)]
    assert b"{{{{{" in head.data


@pytest.mark.parametrize("buffering", ["on", "off"])
def test_body_read_whole_opens_the_stream_window(wsgate: Factory, bg: Loop, buffering: str) -> None:
    """ngx_http_v2_read_request_body: a body read whole before proxying leaves flow control,
    its window opened to 2^31-1 in one WINDOW_UPDATE (h2_request_body.t "big request body");
    with proxy_request_buffering off the window is given back as the body is sent on."""
    backend = bg.backend("b")
    gw = wsgate(
        conf(
            f"proxy_request_buffering {buffering};"
            f" location / {{ proxy_pass http://127.0.0.1:{backend.port}; }}"
        )
    )
    c = Raw(gw.port)
    body = b"01234567" * 2048 * 5
    c.headers(1, end=False, extra=(("content-length", str(len(body))),))
    for n in range(0, 65536, 16384):  # the stream's initial window (http2_body_preread_size)
        c.data(1, body[n : n + 16384])
    frames = c.until(lambda f: isinstance(f, WindowUpdateFrame) and f.stream_id == 1)
    c.data(1, body[65536:], end=True)
    frames += c.until(ended(1))
    c.close()
    updates = [f.window_increment for f in frames if isinstance(f, WindowUpdateFrame)]
    stream_updates = [
        f.window_increment for f in frames if isinstance(f, WindowUpdateFrame) and f.stream_id == 1
    ]
    assert c.fields[1][b":status"] == b"200"
    assert [r.body for r in backend.requests] == [body]
    assert updates  # the connection's window is given back in either case
    if buffering == "on":
        assert len(stream_updates) == 1 and stream_updates[0] >= 2**31 - 1 - 65536
    else:
        assert stream_updates and max(stream_updates) <= 65536


def test_data_frames_read_together_are_one_chunk(wsgate: Factory) -> None:
    """h2_proxy_request_buffering.t "chunked many": two DATA frames that arrive together
    go to a streamed (chunked) upstream body as one chunk, as nginx reads them into one
    buffer."""
    upstream = socket.create_server(("127.0.0.1", 0))
    upstream.settimeout(10)
    port = upstream.getsockname()[1]
    gw = wsgate(
        conf(
            "proxy_request_buffering off; proxy_http_version 1.1;"
            f" location / {{ proxy_pass http://127.0.0.1:{port}; }}"
        )
    )
    c = Raw(gw.port)
    c.headers(1, end=False)
    conn, _ = upstream.accept()
    conn.settimeout(10)
    got = b""
    while b"\r\n\r\n" not in got:
        got += conn.recv(65536)
    head, _, got = got.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    c.send(DataFrame(1, b"01234"), DataFrame(1, b"many"))
    while not got.endswith(b"many\r\n"):
        got += conn.recv(65536)
    assert got == b"9\r\n01234many\r\n"
    c.data(1, b"", end=True)
    while not got.endswith(b"0\r\n\r\n"):
        got += conn.recv(65536)
    conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
    conn.close()
    upstream.close()
    c.until(ended(1))
    c.close()
    assert c.fields[1][b":status"] == b"204"


@pytest.mark.parametrize(("default_h2", "named_h2"), [("off", "on"), ("on", "off")])
def test_sni_to_a_server_without_its_own_ssl_listen_picks_alpn(
    wsgate: Factory, tmp_path: Path, default_h2: str, named_h2: str
) -> None:
    """h2_http2.t "sni to enabled": the server SNI names, whose listen lacks ``ssl``, keeps
    the default's certificate but its own ``http2`` decides ALPN (ngx_http_ssl_alpn_select
    reads the server ngx_http_ssl_servername chose)."""
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "named")
    crt, key = tmp_path / "l.crt", tmp_path / "l.key"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    port = dead_port()  # one address for both servers (a port nothing listens on now)
    gw = wsgate(
        "events {}\nhttp { "
        f"ssl_certificate {crt}; ssl_certificate_key {key};"
        f" server {{ listen 127.0.0.1:{port} ssl; server_name default; http2 {default_h2}; }}"
        f" server {{ listen 127.0.0.1:{port}; server_name named; http2 {named_h2}; }} }}\n"
    )
    assert gw.port == port
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    chosen = {}
    for sni in ("default", "named"):
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        ctx.check_hostname = sni == "named"
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            chosen[sni] = s.selected_alpn_protocol()
    want = {"on": "h2", "off": "http/1.1"}
    assert chosen == {"default": want[default_h2], "named": want[named_h2]}


def test_data_beyond_the_stream_window_resets_only_that_stream(wsgate: Factory, bg: Loop) -> None:
    """h2_request_body_preread.t "beyond preread limited": http2_body_preread_size 10 and a
    body not read yet (limit_req delays the request): 40 bytes of DATA are the stream's
    FLOW_CONTROL_ERROR; the connection goes on."""
    backend = bg.backend("b")
    gw = wsgate(
        "error_log logs/error.log info;\nevents {}\nhttp {"
        " limit_req_zone $binary_remote_addr zone=req:1m rate=20r/m;"
        " server { listen 127.0.0.1:0; http2 on; http2_body_preread_size 10;"
        f" location / {{ limit_req zone=req burst=2; proxy_pass http://127.0.0.1:{backend.port}; }}"
        " } }\n"
    )
    c = Raw(gw.port)
    c.send(SettingsFrame(0, flags=["ACK"]))
    c.headers(1)  # takes the rate's only immediate slot
    c.until(ended(1))
    c.headers(3, end=False)
    c.data(3, b"TEST" * 10, end=True)
    rst = c.until(ended(3))[-1]
    assert isinstance(rst, RstStreamFrame) and rst.error_code == 3
    c.send(PingFrame(0, b"SEE-THIS"))
    assert isinstance(c.until(lambda f: isinstance(f, PingFrame | GoAwayFrame))[-1], PingFrame)
    c.close()


@pytest.mark.parametrize(("preread", "code"), [("10", 7), ("64k", None)])
def test_body_before_settings_ack(
    wsgate: Factory, bg: Loop, preread: str, code: int | None
) -> None:
    """ngx_http_v2_state_headers: before the client acknowledges SETTINGS, a stream with a
    body is REFUSED_STREAM when http2_body_preread_size is below the default window."""
    backend = bg.backend("b")
    gw = wsgate(
        conf(
            f"http2_body_preread_size {preread};"
            f" location / {{ proxy_pass http://127.0.0.1:{backend.port}; }}"
        )
    )
    c = Raw(gw.port)  # sends no SETTINGS ACK
    c.headers(1, end=False)
    c.data(1, b"TEST", end=True)
    last = c.until(ended(1))[-1]
    c.close()
    if code is None:
        assert c.fields[1][b":status"] == b"200"
    else:
        assert isinstance(last, RstStreamFrame) and last.error_code == code
        assert "client sent stream with data before settings were acknowledged" in gw.errors()
