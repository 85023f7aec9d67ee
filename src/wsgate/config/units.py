"""nginx value syntaxes: times (``60s``, ``1m30s``, ``500ms``), sizes (``8k``, ``1m``) and flags.

Quoted from https://nginx.org/en/docs/syntax.html: "Time intervals can be specified in
milliseconds, seconds, minutes, hours, days and so on, using the following suffixes: ms, s, m,
h, d, w, M (30 days), y (365 days) ... A value without a suffix means seconds."
"Sizes can be specified in bytes, kilobytes (suffixes k and K) or megabytes (suffixes m and M)
... and gigabytes (g or G)."
"""

from __future__ import annotations

import re

__all__ = ["parse_flag", "parse_size", "parse_time"]

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
