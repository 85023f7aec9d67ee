"""``expires``'s value syntax: ``ngx_http_parse_expires`` and ``ngx_parse_time(value, 1)``."""

from __future__ import annotations

import pytest

from wsgate.config.units import ExpiresError, parse_expires, parse_seconds


# -- the time syntax -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2048", 2048),
        ("1h", 3600),
        ("1h30", 3630),  # a last number without a unit is seconds
        ("1h 30m", 5400),  # a space after a unit
        ("30 ", 30),
        ("1s 2", 3),  # spaces after a unit are skipped, then a bare number
        ("1d2h", 93600),
        ("1y1M1w1d1h1m1s", 365 * 86400 + 30 * 86400 + 7 * 86400 + 86400 + 3600 + 61),
        ("15h30m33s", 55833),
    ],
)
def test_seconds(text: str, seconds: int) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1ms", "2h1d", "1h1h", " 1h", "5x", "1 2 3", "1.5h"])
def test_seconds_refused(text: str) -> None:
    assert parse_seconds(text) is None


def test_parse_expires_words_signs_and_errors() -> None:
    assert parse_expires("epoch", "access") == ("epoch", 0)
    assert parse_expires("max", "access") == ("max", 0)
    assert parse_expires("off", "access") == ("off", 0)
    assert parse_expires("-1h", "access") == ("access", -3600)
    assert parse_expires("+1h", "modified") == ("modified", 3600)
    assert parse_expires("@15h30m33s", "access") == ("daily", 55833)
    assert parse_expires("@24h", "access") == ("daily", 86400)
    with pytest.raises(ExpiresError, match="^invalid value$"):
        parse_expires("epoch", "modified")  # no words after "modified"
    with pytest.raises(ExpiresError, match='^daily time cannot be used with "modified"'):
        parse_expires("@1h", "modified")
    with pytest.raises(ExpiresError, match="^daily time value must be less than 24 hours$"):
        parse_expires("@24h1s", "access")
    with pytest.raises(ExpiresError, match="^invalid value$"):
        parse_expires("@-1h", "access")
