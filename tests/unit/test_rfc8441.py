"""RFC 8441 without sockets: an extended CONNECT as the upgrade the pipeline knows, the
``:status 200`` made from the upstream's 101, and when SETTINGS_ENABLE_CONNECT_PROTOCOL is
offered (``http2_websocket``, a proxying location)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from wsgate.config.loader import load
from wsgate.http.http2 import H2Refused, request_head, tunnel_fields, websocket_key
from wsgate.proxy.http2 import websocket_offered

CONNECT = [
    (b":method", b"CONNECT"),
    (b":protocol", b"websocket"),
    (b":scheme", b"https"),
    (b":path", b"/chat?room=1"),
    (b":authority", b"example.org"),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-protocol", b"chat, superchat"),
    (b"sec-websocket-extensions", b"permessage-deflate"),
]


def test_extended_connect_becomes_an_upgrade() -> None:
    head = request_head(CONNECT, False, connect_protocol=True, key="dGhlIHNhbXBsZSBub25jZQ==")
    assert (head.method, head.target, head.upgrade) == ("GET", "/chat?room=1", "websocket")
    assert head.request_line == "CONNECT /chat?room=1 HTTP/2.0"
    assert head.headers == [
        ("host", "example.org"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-protocol", "chat, superchat"),
        ("sec-websocket-extensions", "permessage-deflate"),
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]
    # Not a body: the DATA frames are the tunnel's.
    assert not head.chunked and head.content_length is None


def test_generated_key_is_16_random_bytes() -> None:
    one = dict(request_head(CONNECT, False, connect_protocol=True).headers)
    two = dict(request_head(CONNECT, False, connect_protocol=True).headers)
    assert len(base64.b64decode(one["sec-websocket-key"])) == 16
    assert one["sec-websocket-key"] != two["sec-websocket-key"]
    assert websocket_key(bytes(16)) == "AAAAAAAAAAAAAAAAAAAAAA=="


def test_a_client_key_is_replaced() -> None:
    fields = [*CONNECT, (b"sec-websocket-key", b"client")]
    headers = request_head(fields, False, connect_protocol=True, key="k").headers
    assert [v for n, v in headers if n == "sec-websocket-key"] == ["k"]


def _status(fields: list[tuple[bytes, bytes]], **kw: object) -> int:
    with pytest.raises(H2Refused) as info:
        request_head(fields, False, **kw)  # type: ignore[arg-type]
    return info.value.status


def test_refusals() -> None:
    # Not offered: :protocol is an unknown pseudo-header (nginx's 400).
    assert _status(CONNECT) == 400
    # CONNECT without :protocol stays nginx's 405.
    plain = [f for f in CONNECT if f[0] != b":protocol"]
    assert _status(plain, connect_protocol=True) == 405
    # :protocol without CONNECT is malformed (RFC 8441 §4).
    get = [(b":method", b"GET"), *CONNECT[1:]]
    assert _status(get, connect_protocol=True) == 400
    # An extended CONNECT needs :path and :scheme (RFC 8441 §4).
    assert _status([f for f in CONNECT if f[0] != b":path"], connect_protocol=True) == 400
    assert _status([f for f in CONNECT if f[0] != b":scheme"], connect_protocol=True) == 400
    # The client may not send the HTTP/1.1 upgrade fields itself.
    assert _status([*CONNECT, (b"upgrade", b"websocket")], connect_protocol=True) == 400


def test_tunnel_fields_from_the_101() -> None:
    fields = tunnel_fields(
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("Sec-WebSocket-Protocol", "chat"),
            ("Sec-WebSocket-Extensions", "permessage-deflate"),
            ("Server", "wsgate"),
        ]
    )
    assert fields == [
        (b":status", b"200"),
        (b"sec-websocket-protocol", b"chat"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
        (b"server", b"wsgate"),
    ]


@pytest.mark.parametrize(
    ("server", "offered"),
    [
        ("location / { proxy_pass http://127.0.0.1:1; }", True),
        ("location / { location /in { proxy_pass http://127.0.0.1:1; } }", True),
        ("location @named { proxy_pass http://127.0.0.1:1; }", True),
        ("http2_websocket off; location / { proxy_pass http://127.0.0.1:1; }", False),
        ("location / { return 200; }", False),
    ],
)
def test_offered_where_a_location_proxies(tmp_path: Path, server: str, offered: bool) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"events {{}}\nhttp {{ server {{ listen 80; http2 on; {server} }} }}\n")
    config = load("nginx.conf", prefix=str(tmp_path))
    assert websocket_offered(config.http.servers[0]) is offered
