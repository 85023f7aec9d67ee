"""``expires`` (nginx's headers filter, ``ngx_http_set_expires``) as a pure function, its
value syntax (``ngx_http_parse_expires``, ``ngx_parse_time(value, 1)``) and its directive;
the cases of nginx-tests' headers.t and the branches of the C code."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsgate.config.directives.headers import _expires
from wsgate.config.level import Level
from wsgate.config.loader import Loader
from wsgate.config.model import AddHeader, Expires, Source
from wsgate.config.parse import Stmt
from wsgate.config.template import compile_template
from wsgate.config.units import ExpiresError, parse_expires, parse_seconds
from wsgate.errors import ConfigError
from wsgate.http.headers_filter import SAFE_STATUSES, filter_headers, set_expires

#: 2001-09-09 01:46:40 UTC.
NOW = 1_000_000_000
NOW_DATE = "Sun, 09 Sep 2001 01:46:40 GMT"
LM = "Mon, 28 Sep 1970 06:00:00 GMT"  # headers.t's upstream Last-Modified
LM_TIME = 23349600


def lookup(name: str) -> str:
    return {"arg_e": "2048", "empty": ""}.get(name, "")


def exp(text: str, modified: bool = False) -> Expires:
    kind, seconds = parse_expires(text, "modified" if modified else "access")
    return Expires(kind, seconds)


def var(text: str, modified: bool = False) -> Expires:
    return Expires("modified" if modified else "access", 0, compile_template(text))


Fields = list[tuple[str, str]]


def run(e: Expires, headers: Fields | None = None, status: int = 200) -> tuple[Fields, Fields]:
    return set_expires(status, headers or [], e, lookup, NOW)


@pytest.fixture
def utc() -> Iterator[None]:
    yield from _tz("UTC0")


@pytest.fixture
def plus3() -> Iterator[None]:
    yield from _tz("XXX-3")  # POSIX: three hours east of UTC


def _tz(tz: str) -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    mp.setenv("TZ", tz)
    time.tzset()
    try:
        yield
    finally:
        mp.undo()
        time.tzset()


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


# -- the filter ----------------------------------------------------------------------------------
def test_epoch_and_max() -> None:
    assert run(exp("epoch")) == (
        [],
        [("Expires", "Thu, 01 Jan 1970 00:00:01 GMT"), ("Cache-Control", "no-cache")],
    )
    assert run(exp("max")) == (
        [],
        [("Expires", "Thu, 31 Dec 2037 23:55:55 GMT"), ("Cache-Control", "max-age=315360000")],
    )


def test_off_and_other_statuses_change_nothing() -> None:
    ups = [("Expires", "x"), ("Cache-Control", "private")]
    assert run(Expires(), ups) == (ups, [])
    for status in (101, 404, 500, 502, 205, 300):
        got, added = run(exp("1h"), ups, status)
        assert got is ups and added == []


@pytest.mark.parametrize("status", sorted(SAFE_STATUSES))
def test_every_safe_status(status: int) -> None:
    assert run(exp("2048"), status=status)[1][1] == ("Cache-Control", "max-age=2048")


def test_access_time() -> None:
    assert run(exp("2048"))[1] == [
        ("Expires", "Sun, 09 Sep 2001 02:20:48 GMT"),
        ("Cache-Control", "max-age=2048"),
    ]


def test_zero_is_now_and_max_age_0() -> None:
    assert run(exp("0"))[1] == [("Expires", NOW_DATE), ("Cache-Control", "max-age=0")]
    # modified 0 too: nginx does not look at Last-Modified for it
    assert run(exp("0", True), [("Last-Modified", LM)])[1][0] == ("Expires", NOW_DATE)


def test_negative_time_is_no_cache_with_a_past_expires() -> None:
    assert run(exp("-2048"))[1] == [
        ("Expires", "Sun, 09 Sep 2001 01:12:32 GMT"),
        ("Cache-Control", "no-cache"),
    ]


def test_modified_counts_from_last_modified() -> None:
    got, added = run(exp("2048", True), [("Last-Modified", LM)])
    assert got == [("Last-Modified", LM)]
    # headers.t: "Expires: Mon, 28 Sep 1970 06:34:08 GMT"; long past, so no-cache
    assert added == [("Expires", "Mon, 28 Sep 1970 06:34:08 GMT"), ("Cache-Control", "no-cache")]


def test_modified_in_the_future_gives_the_time_left() -> None:
    lm = "Sun, 09 Sep 2001 01:46:00 GMT"  # 40 s ago
    assert run(exp("1h", True), [("Last-Modified", lm)])[1] == [
        ("Expires", "Sun, 09 Sep 2001 02:46:00 GMT"),
        ("Cache-Control", "max-age=3560"),
    ]


@pytest.mark.parametrize("headers", [[], [("Last-Modified", "not a date")]])
def test_modified_without_last_modified_counts_from_now(headers: list[tuple[str, str]]) -> None:
    """``last_modified_time == -1``: nginx takes the access branch."""
    assert run(exp("2048", True), headers)[1] == run(exp("2048"))[1]


def test_modified_uses_the_first_last_modified() -> None:
    lm2 = "Sun, 09 Sep 2001 01:46:00 GMT"
    added = run(exp("2048", True), [("Last-Modified", LM), ("Last-Modified", lm2)])[1]
    assert added[0] == ("Expires", "Mon, 28 Sep 1970 06:34:08 GMT")


def test_daily_later_today(utc: None) -> None:
    assert run(exp("@15h30m33s"))[1] == [
        ("Expires", "Sun, 09 Sep 2001 15:30:33 GMT"),
        ("Cache-Control", f"max-age={15 * 3600 + 30 * 60 + 33 - (3600 + 46 * 60 + 40)}"),
    ]


def test_daily_passed_today_is_tomorrow(utc: None) -> None:
    assert run(exp("@1h"))[1] == [
        ("Expires", "Mon, 10 Sep 2001 01:00:00 GMT"),
        ("Cache-Control", f"max-age={86400 - 46 * 60 - 40}"),
    ]


def test_daily_now_exactly_is_tomorrow(utc: None) -> None:
    assert run(exp("@1h46m40s"))[1][1] == ("Cache-Control", "max-age=86400")


def test_daily_is_local_time(plus3: None) -> None:
    # 01:46:40 UTC is 04:46:40 at UTC+3; 15:30:33 there is 12:30:33 UTC
    assert run(exp("@15h30m33s"))[1][0] == ("Expires", "Sun, 09 Sep 2001 12:30:33 GMT")


def test_daily_midnight(utc: None) -> None:
    """``@0``: the next midnight, not "now" (the zero branch is for other kinds only)."""
    assert run(exp("@0"))[1][0] == ("Expires", "Mon, 10 Sep 2001 00:00:00 GMT")


def test_the_response_fields_are_replaced_where_they_stand() -> None:
    ups = [
        ("Cache-Control", "private"),
        ("X-A", "a"),
        ("Expires", "Mon, 01 Jan 2001 00:00:00 GMT"),
        ("cache-control", "no-store"),
        ("expires", "0"),
    ]
    got, added = run(exp("2048"), ups)
    assert got == [
        ("Cache-Control", "max-age=2048"),
        ("X-A", "a"),
        ("Expires", "Sun, 09 Sep 2001 02:20:48 GMT"),
    ]
    assert added == []
    assert ups[0] == ("Cache-Control", "private")  # not changed


def test_a_missing_field_is_added() -> None:
    got, added = run(exp("epoch"), [("Expires", "x"), ("X-A", "a")])
    assert got == [("Expires", "Thu, 01 Jan 1970 00:00:01 GMT"), ("X-A", "a")]
    assert added == [("Cache-Control", "no-cache")]
    got, added = run(exp("epoch"), [("Cache-Control", "x")])
    assert got == [("Cache-Control", "no-cache")]
    assert added == [("Expires", "Thu, 01 Jan 1970 00:00:01 GMT")]


# -- variables (headers.t's /var, /var_modified) -------------------------------------------------
@pytest.mark.parametrize(
    ("value", "cc"),
    [
        ("epoch", "no-cache"),
        ("max", "max-age=315360000"),
        ("2048", "max-age=2048"),
        ("-2048", "no-cache"),
        ("+2048", "max-age=2048"),
    ],
)
def test_variable_values(value: str, cc: str) -> None:
    e = var("$v")
    got = set_expires(200, [], e, lambda n: value, NOW)[1]
    assert got[1] == ("Cache-Control", cc)


@pytest.mark.parametrize("value", ["off", "", "bad", "@25h", "1ms"])
def test_variable_off_or_bad_sets_nothing(value: str) -> None:
    assert set_expires(200, [("Expires", "x")], var("$v"), lambda n: value, NOW) == (
        [("Expires", "x")],
        [],
    )


def test_variable_daily_and_modified(utc: None) -> None:
    assert set_expires(200, [], var("$v"), lambda n: "@33s", NOW)[1][0] == (
        "Expires",
        "Mon, 10 Sep 2001 00:00:33 GMT",
    )
    e = var("$v", modified=True)
    assert set_expires(200, [], e, lambda n: "epoch", NOW) == ([], [])
    assert set_expires(200, [], e, lambda n: "@1h", NOW) == ([], [])
    added = set_expires(200, [("Last-Modified", LM)], e, lambda n: "2048", NOW)[1]
    assert added[0] == ("Expires", "Mon, 28 Sep 1970 06:34:08 GMT")


def test_variable_template_with_text() -> None:
    assert set_expires(200, [], var("$arg_e"), lookup, NOW)[1][1] == (
        "Cache-Control",
        "max-age=2048",
    )


# -- with add_header -----------------------------------------------------------------------------
def test_expires_first_then_add_header() -> None:
    entries = (
        AddHeader("Cache-Control", compile_template("public")),
        AddHeader("X-A", compile_template("1")),
    )
    ups = [("Cache-Control", "private"), ("Last-Modified", LM)]
    got, added = filter_headers(200, ups, entries, exp("2048"), lookup, NOW)
    assert got == [("Cache-Control", "max-age=2048"), ("Last-Modified", LM)]
    assert added == [
        ("Expires", "Sun, 09 Sep 2001 02:20:48 GMT"),
        ("Cache-Control", "public"),
        ("X-A", "1"),
    ]


def test_filter_without_expires_is_add_header() -> None:
    entries = (AddHeader("X-A", compile_template("1")),)
    assert filter_headers(404, [], entries, exp("1h"), lookup, NOW) == ([], [])
    assert filter_headers(200, [], (), Expires(), lookup, NOW) == ([], [])


# -- the directive -------------------------------------------------------------------------------
def test_directive_values(tmp_path: Path) -> None:
    ld = Loader(prefix=str(tmp_path), conf_file=str(tmp_path / "nginx.conf"))
    level = Level(ld, None)
    src = Source("t.conf", 1)

    def parse(*args: str) -> Expires:
        return _expires(Stmt("expires", list(args), src, None), level)

    assert parse("off") == Expires()
    assert parse("epoch") == Expires("epoch")
    assert parse("-1h") == Expires("access", -3600)
    assert parse("modified", "1h") == Expires("modified", 3600)
    assert parse("@15h30m") == Expires("daily", 55800)
    v = parse("modified", "$arg_e")
    assert v.kind == "modified" and v.time == 0 and v.value is not None
    for args, words in [
        (("modified", "epoch"), '"expires" directive invalid value'),
        (("access", "1h"), '"expires" directive invalid value'),
        (("Modified", "1h"), '"expires" directive invalid value'),
        (("modified", "@1h"), '"expires" directive daily time cannot be used with "modified"'),
        (("1x",), '"expires" directive invalid value'),
        (("@25h",), '"expires" directive daily time value must be less than 24 hours'),
    ]:
        with pytest.raises(ConfigError, match=words):
            parse(*args)
