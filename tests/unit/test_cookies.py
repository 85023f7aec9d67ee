"""``proxy_cookie_domain``, ``proxy_cookie_path`` and ``proxy_cookie_flags`` on one
``Set-Cookie`` value (pure: :mod:`wsgate.http.cookies`)."""

from __future__ import annotations

import re

from wsgate.config.model import CookieFlags, RewriteRule
from wsgate.config.template import compile_template
from wsgate.http.cookies import parse_cookie, rewrite_cookie, rewrite_set_cookies

VARS = {"f": "secure", "bad": "sometimes"}


def lookup(name: str) -> str:
    return VARS.get(name, "")


def flags(cookie: str, *values: str) -> CookieFlags:
    tpls = tuple(compile_template(v) for v in values)
    if cookie.startswith("~"):
        return CookieFlags(tpls, regex=re.compile(cookie[1:], re.IGNORECASE))
    return CookieFlags(tpls, cookie=compile_template(cookie))


def f(value: str, *entries: CookieFlags) -> str | None:
    return rewrite_cookie(value, (), (), entries, lookup)


def test_parse_cookie() -> None:
    assert parse_cookie(" a = b ;  Path=/x ; Secure;") == [
        ("a", "b"),
        ("Path", "/x"),
        ("Secure", None),
        ("", None),
    ]


def test_domain_and_path() -> None:
    domain = RewriteRule(compile_template("b.org"), pattern=compile_template("a.com"), domain=True)
    path = RewriteRule(compile_template("/new/"), pattern=compile_template("/old/"))
    value = "v=1;domain=.A.com; path=/old/x;Max-Age=3"
    assert rewrite_cookie(value, (domain,), (path,), (), lookup) == (
        "v=1; domain=.b.org; path=/new/x; Max-Age=3"
    )
    # Nothing matched: left exactly as it was; no "=" in the first part: never touched.
    assert rewrite_cookie("v=1;path=/p", (domain,), (path,), (), lookup) is None
    assert rewrite_cookie("v;path=/old/", (), (path,), (), lookup) is None
    # A Domain without a value is not rewritten (nginx: "value->data" is NULL).
    assert rewrite_cookie("v=1; Domain", (domain,), (), (), lookup) is None


def test_flags_set_in_place_or_added() -> None:
    all_ = flags("a", "secure", "httponly", "samesite=none")
    assert f("a=1", all_) == "a=1; Secure; HttpOnly; SameSite=None"
    assert f("A=1;secure;SameSite=Lax", all_) == "A=1; secure; SameSite=None; HttpOnly"
    # Already as asked: the cookie is written back, in nginx's form.
    assert f("a=1;SameSite=none", flags("a", "samesite=none")) == "a=1; SameSite=none"
    # A SameSite without a value gets one.
    assert f("a=1; samesite", flags("a", "samesite=lax")) == "a=1; SameSite=Lax"


def test_flags_removed() -> None:
    off = flags("d", "nosecure", "nohttponly", "nosamesite")
    assert f("d=1;secure;httponly;samesite=lax; Path=/", off) == "d=1; Path=/"
    # Removing what is not there changes nothing but the form.
    assert f("d=1;Path=/", off) == "d=1; Path=/"


def test_flags_matching_and_values() -> None:
    # The first directive whose name matches decides, even if its flags do nothing.
    assert f("a=1", flags("a", "$bad"), flags("a", "secure")) is None
    assert f("a=1", flags("x", "secure"), flags("~^A$", "$f")) == "a=1; Secure"
    assert f("a=1", flags("b", "secure")) is None
    assert f("foobarbaz=1", flags("~BAR", "httponly")) == "foobarbaz=1; HttpOnly"
    assert f("a=1", flags("A", "SECURE")) == "a=1; Secure"


def test_set_cookie_fields() -> None:
    entry = flags("a", "secure")
    headers = [("Set-Cookie", "a=1"), ("X", "a=1"), ("set-cookie", "b=2")]
    out = rewrite_set_cookies(headers, (), (), (entry,), lookup)
    assert out == [("Set-Cookie", "a=1; Secure"), ("X", "a=1"), ("set-cookie", "b=2")]
    assert rewrite_set_cookies(headers, (), (), (), lookup) is headers
