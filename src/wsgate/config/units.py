"""nginx value syntaxes: times (``60s``, ``1m30s``, ``500ms``), sizes (``8k``, ``1m``) and flags.

Quoted from https://nginx.org/en/docs/syntax.html: "Time intervals can be specified in
milliseconds, seconds, minutes, hours, days and so on, using the following suffixes: ms, s, m,
h, d, w, M (30 days), y (365 days) ... A value without a suffix means seconds."
"Sizes can be specified in bytes, kilobytes (suffixes k and K) or megabytes (suffixes m and M)
... and gigabytes (g or G)."
"""

from __future__ import annotations

import re

__all__ = [
    "ExpiresError",
    "parse_expires",
    "parse_flag",
    "parse_seconds",
    "parse_size",
    "parse_time",
]

_TIME_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "M": 30 * 86400.0,
    "y": 365 * 86400.0,
}
_TIME_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|M|y)?")
_SIZE = re.compile(r"(\d+)([kKmMgG]?)")


def parse_time(text: str) -> float | None:
    """Seconds for an nginx time value, or ``None`` when it is not one."""
    if not text:
        return None
    pos, total, last_scale = 0, 0.0, float("inf")
    while pos < len(text):
        m = _TIME_PART.match(text, pos)
        if m is None:
            return None
        unit = m.group(2)
        if unit is None:
            if m.end() != len(text) or pos != 0:
                return None
            unit = "s"
        scale = _TIME_UNITS[unit]
        if scale >= last_scale:
            return None
        last_scale = scale
        total += int(m.group(1)) * scale
        pos = m.end()
    return total


def parse_size(text: str) -> int | None:
    """Bytes for an nginx size value, or ``None`` when it is not one."""
    m = _SIZE.fullmatch(text)
    if m is None:
        return None
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    return int(m.group(1)) * scale


def parse_flag(text: str) -> bool | None:
    """``on``/``off`` as nginx's ``ngx_conf_set_flag_slot`` reads them (case-insensitive)."""
    low = text.lower()
    if low == "on":
        return True
    if low == "off":
        return False
    return None


_MAX_INT = (1 << 63) - 1
#: ``ngx_parse_time``'s steps, in the order a value must name them, with their scales.
_SEC_STEPS = {"y": (1, 365 * 86400), "M": (2, 30 * 86400), "w": (3, 7 * 86400), "d": (4, 86400)}
_SEC_STEPS |= {"h": (5, 3600), "m": (6, 60), "s": (7, 1), " ": (8, 1)}


def parse_seconds(text: str) -> int | None:
    """``ngx_parse_time(value, 1)`` exactly, as ``expires`` reads its time: whole seconds, the
    units ``y M w d h m s`` each at most once and in that order, spaces after a unit (a
    space also ends a bare number), a trailing number without a unit counted as seconds
    (``1h30``), no ``ms``; ``None`` when nginx says ``NGX_ERROR``."""
    value = total = 0
    step = 0
    valid = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if "0" <= c <= "9":
            value = value * 10 + ord(c) - 48
            if value > _MAX_INT:
                return None
            valid = True
            i += 1
            continue
        i += 1
        if c == "m" and i < n and text[i] == "s":
            return None  # "ms" with is_sec
        if c not in _SEC_STEPS:
            return None
        new, scale = _SEC_STEPS[c]
        if step >= min(new, 7):  # each unit once, in order; a space not after seconds
            return None
        step = new
        if value > _MAX_INT // scale:
            return None
        value *= scale
        if total > _MAX_INT - value:
            return None
        total += value
        value = 0
        while i < n and text[i] == " ":
            i += 1
    if not valid or total > _MAX_INT - value:
        return None
    return total + value


class ExpiresError(ValueError):
    """``ngx_http_parse_expires``'s error, with nginx's words."""


def parse_expires(text: str, kind: str) -> tuple[str, int]:
    """``ngx_http_parse_expires``: ``text`` read for an ``expires`` whose kind so far is
    ``kind`` (``access``, or ``modified`` after that word) → (kind, seconds).

    ``epoch``, ``max`` and ``off`` are words only without ``modified``; ``@time`` is a time
    of day (at most 24 hours, not with ``modified``); ``+``/``-`` sign a time."""
    if kind != "modified":
        if text in ("epoch", "max", "off"):
            return text, 0
    minus = False
    if text[:1] == "@":
        text = text[1:]
        if kind == "modified":
            raise ExpiresError('daily time cannot be used with "modified" parameter')
        kind = "daily"
    elif text[:1] in ("+", "-"):
        minus = text[0] == "-"
        text = text[1:]
    seconds = parse_seconds(text)
    if seconds is None:
        raise ExpiresError("invalid value")
    if kind == "daily" and seconds > 24 * 60 * 60:
        raise ExpiresError("daily time value must be less than 24 hours")
    return kind, -seconds if minus else seconds
