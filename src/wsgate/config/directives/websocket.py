"""wsgate's WebSocket features: keepalive pings, message limits and per-message metrics on a
tunnel.

nginx has none of these (a tunnel is opaque bytes to it).  They are location settings,
inherited as any ``ngx_conf_merge_*_value`` is, and read when a WebSocket tunnel opens
(:func:`wsgate.proxy.tunnel.ws_features`); see docs/configuration.md, "WebSocket features".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsgate.config.model import LocationSettings
from wsgate.config.table import FLAG, HSL, TAKE1, TAKE12, TAKE123, Directive, flag, size, time
from wsgate.config.values import config_error

if TYPE_CHECKING:
    from wsgate.config.level import Level
    from wsgate.config.parse import Stmt

__all__ = ["ENTRIES"]

_err = config_error
_LS = LocationSettings
_SIDES = ("client", "upstream", "both")


def _side(s: Stmt, i: int, default: str) -> str:
    if len(s.args) <= i:
        return default
    if s.args[i] not in _SIDES:
        raise _err(f'invalid parameter "{s.args[i]}"', s.src)
    return s.args[i]


def _ping_interval(s: Stmt, level: Level | None = None) -> tuple[float, str]:
    """``websocket_ping_interval off | time [client | upstream | both]``."""
    if s.args[0] == "off":
        if len(s.args) > 1:
            raise _err(f'invalid parameter "{s.args[1]}"', s.src)
        return 0.0, "both"
    value = time(s)
    if value <= 0:
        raise _err(f'"{s.name}" directive invalid value', s.src)
    return value, _side(s, 1, "both")


def _ping_timeout(s: Stmt, level: Level | None = None) -> float:
    value = time(s)
    if value <= 0:
        raise _err(f'"{s.name}" directive invalid value', s.src)
    return value


def _limit(s: Stmt, level: Level | None = None) -> tuple[int, str]:
    """``websocket_max_message_size size [client | upstream | both]`` (0: no limit)."""
    return size(s), _side(s, 1, "client")


def _rate(s: Stmt, level: Level | None = None) -> tuple[int, int, str]:
    """``websocket_message_rate off | rate [burst=number] [client | upstream | both]``, the
    rate in ``limit_req_zone``'s words (``Nr/s``, ``Nr/m``), kept as milli-messages per
    second as :mod:`wsgate.limits` keeps it, the burst in milli-messages."""
    if s.args[0] == "off":
        if len(s.args) > 1:
            raise _err(f'invalid parameter "{s.args[1]}"', s.src)
        return 0, 0, "client"
    text, scale = s.args[0], 1
    if text.endswith("r/s"):
        text = text[:-3]
    elif text.endswith("r/m"):
        text, scale = text[:-3], 60
    rate = int(text) if text.isascii() and text.isdigit() else 0
    if rate <= 0:
        raise _err(f'invalid rate "{s.args[0]}"', s.src)
    burst, which = 0, ""
    for a in s.args[1:]:
        if a.startswith("burst=") and not burst:
            digits = a[6:]
            burst = int(digits) if digits.isascii() and digits.isdigit() else 0
            if burst <= 0:
                raise _err(f'invalid burst value "{a}"', s.src)
        elif a in _SIDES and not which:
            which = a
        else:
            raise _err(f'invalid parameter "{a}"', s.src)
    return rate * 1000 // scale, burst * 1000, which or "client"


def _entry(name: str, arity: object, parse: object, default: str, syntax: str) -> Directive:
    return Directive(
        name,
        HSL,
        arity,  # type: ignore[arg-type]
        parse=parse,  # type: ignore[arg-type]
        target=_LS,
        fields=(name,),
        default=default,
        syntax=syntax,
        note="wsgate's",
    )


ENTRIES: tuple[Directive, ...] = (
    _entry(
        "websocket_ping_interval",
        TAKE12,
        _ping_interval,
        "off",
        "off | time [client | upstream | both]",
    ),
    _entry("websocket_ping_timeout", TAKE1, _ping_timeout, "30s", "time"),
    _entry(
        "websocket_max_message_size",
        TAKE12,
        _limit,
        "0",
        "size [client | upstream | both]",
    ),
    _entry(
        "websocket_max_frame_size",
        TAKE12,
        _limit,
        "0",
        "size [client | upstream | both]",
    ),
    _entry(
        "websocket_message_rate",
        TAKE123,
        _rate,
        "off",
        "off | rate [burst=number] [client | upstream | both]",
    ),
    _entry("websocket_metrics", FLAG, flag, "off", "on | off"),
)
