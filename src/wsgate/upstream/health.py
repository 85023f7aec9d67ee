"""Active health checks, the pure part: rise/fall accounting and what a probe sends and expects.

wsgate's ``health_check`` (inside ``upstream``) follows nginx Plus's directive of the same name
(https://nginx.org/en/docs/http/ngx_http_upstream_hc_module.html): "The server will be
considered unhealthy after ``fails`` number of consecutive failed health checks" and "healthy
after ``passes`` number of consecutive passed health checks".  Nothing here touches a socket or
the event loop; :mod:`wsgate.server.health` runs the probes and feeds the results in.

Rules, in the order :meth:`HealthState.record` applies them:

* A peer starts **unknown** and is routed to (``Peer.healthy`` is True), so a configuration
  without reachable checks behaves as one without ``health_check``.  The **first** probe decides
  at once: one failure takes an unknown peer out of rotation, whatever ``fails`` says, so a server
  that is dead when wsgate starts (or reloads) leaves rotation before a client is sent to it.
* A healthy peer becomes unhealthy after ``fails`` consecutive failed probes.
* An unhealthy peer becomes healthy after ``passes`` consecutive good probes.
* A good probe resets the failure streak and a failed one the success streak.

Probe contents (RFC 9110 / RFC 9112 for ``type=http``, RFC 6455 §4.1 for ``type=websocket``):
``GET URI HTTP/1.1`` with ``Host: <upstream name>`` and ``Connection: close``; the websocket
probe adds ``Upgrade: websocket``, ``Connection: Upgrade``, ``Sec-WebSocket-Version: 13`` and a
random 16-byte ``Sec-WebSocket-Key``, checks ``Sec-WebSocket-Accept`` (RFC 6455 §4.2.2) and
ends with a masked close frame, status 1000 (RFC 6455 §5.5.1, §7.4.1).
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wsgate.config.model import HealthCheck

__all__ = [
    "HealthState",
    "accept_key",
    "close_frame",
    "expected_statuses",
    "probe_request",
    "response_problem",
    "websocket_key",
]

Clock = Callable[[], float]

#: RFC 6455 §1.3: the GUID appended to ``Sec-WebSocket-Key`` before hashing.
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass(slots=True)
class HealthState:
    """Consecutive-result accounting for one peer (``fails``/``passes`` of ``health_check``).

    ``healthy`` is what the balancer should see; ``known`` turns True with the first probe.
    ``checked`` is the clock time of the last probe (``None`` before the first) and ``since``
    the time of the last change of ``healthy`` (or of creation), for status pages.
    """

    fails: int = 1
    passes: int = 1
    clock: Clock = time.monotonic
    healthy: bool = field(default=True, init=False)
    known: bool = field(default=False, init=False)
    failed: int = field(default=0, init=False)
    passed: int = field(default=0, init=False)
    checks: int = field(default=0, init=False)
    checked: float | None = field(default=None, init=False)
    since: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.fails < 1 or self.passes < 1:
            raise ValueError("fails and passes must be at least 1")
        self.since = self.clock()

    def record(self, ok: bool) -> bool | None:
        """Account one probe result; return the new ``healthy`` value when it changed, else
        ``None`` (the caller logs the transition and updates ``Peer.healthy``)."""
        now = self.clock()
        self.checks += 1
        self.checked = now
        first = not self.known
        self.known = True
        if ok:
            self.passed += 1
            self.failed = 0
            if not self.healthy and self.passed >= self.passes:
                return self._change(True, now)
            return None
        self.failed += 1
        self.passed = 0
        if self.healthy and (first or self.failed >= self.fails):
            return self._change(False, now)
        return None

    def _change(self, healthy: bool, now: float) -> bool:
        self.healthy = healthy
        self.since = now
        return healthy


def expected_statuses(check: HealthCheck) -> tuple[int, ...] | None:
    """The codes a good response may carry; ``None`` means "any 2xx or 3xx" (nginx Plus's
    default: "the response status code is 2xx or 3xx").  ``type=websocket`` expects 101
    unless ``status=`` says otherwise."""
    if check.status:
        return check.status
    if check.kind == "websocket":
        return (101,)
    return None


def websocket_key(nonce: bytes) -> str:
    """``Sec-WebSocket-Key`` for a 16-byte random ``nonce`` (RFC 6455 §4.1, item 7)."""
    if len(nonce) != 16:
        raise ValueError("the nonce must be 16 bytes")
    return base64.b64encode(nonce).decode("ascii")


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key`` (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1((key + _WS_GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def probe_request(check: HealthCheck, host: str, key: str | None = None) -> bytes:
    """The request head a probe sends: ``GET uri`` with ``Host: host``; for
    ``type=websocket`` an Upgrade handshake carrying ``key``."""
    lines = [f"GET {check.uri} HTTP/1.1", f"Host: {host}"]
    if check.kind == "websocket":
        if key is None:
            raise ValueError("a websocket probe needs a key")
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
    else:
        lines.append("Connection: close")
    lines.append("User-Agent: wsgate-health-check")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response_problem(
    check: HealthCheck, status: int, headers: list[tuple[str, str]], key: str | None = None
) -> str | None:
    """Why a response head fails the check, as the tail of nginx Plus's "peer is unhealthy
    while ..." line, or ``None`` when it passes.

    A 101 to a websocket probe must also be a valid handshake (RFC 6455 §4.1, the client's
    checks 1-4): ``Upgrade: websocket``, ``Connection`` containing ``upgrade``, and
    ``Sec-WebSocket-Accept`` matching ``key``.
    """
    allowed = expected_statuses(check)
    if allowed is None:
        if not 200 <= status < 400:
            return "checking status code"
    elif status not in allowed:
        return "checking status code"
    if check.kind == "websocket" and status == 101:
        fields: dict[str, list[str]] = {}
        for name, value in headers:
            fields.setdefault(name.lower(), []).append(value.strip())
        upgrade = ",".join(fields.get("upgrade", [])).lower()
        connection = {
            token.strip().lower()
            for value in fields.get("connection", [])
            for token in value.split(",")
        }
        accept = fields.get("sec-websocket-accept", [])
        if (
            upgrade != "websocket"
            or "upgrade" not in connection
            or key is None
            or accept != [accept_key(key)]
        ):
            return "checking websocket handshake"
    return None


def close_frame(mask: bytes, code: int = 1000) -> bytes:
    """A client close frame (FIN, opcode 0x8) with status ``code``, masked with the 4-byte
    ``mask`` as RFC 6455 §5.3 requires of every client frame."""
    if len(mask) != 4:
        raise ValueError("the mask must be 4 bytes")
    payload = struct.pack("!H", code)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + mask + masked
