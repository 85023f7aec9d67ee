"""The SSI parser and command rules (wsgate.http.ssi), bytes in, events out."""

from __future__ import annotations

import pytest

from wsgate.http.ssi import (
    Command,
    Conditionals,
    ParseError,
    SsiError,
    SsiParser,
    Text,
    check_params,
    encode,
    evaluate,
    expression,
    format_date,
)


def _parse(data: bytes, value_len: int = 256, step: int = 0) -> list[object]:
    """Events for ``data`` fed whole, or ``step`` bytes at a time; texts joined."""
    p = SsiParser(value_len)
    events: list[object] = []
    pieces = [data] if not step else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        events += p.feed(piece)
    events += p.finish()
    out: list[object] = []
    for ev in events:
        if isinstance(ev, Text) and out and isinstance(out[-1], Text):
            out[-1] = Text(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


DOC = b'a<b<!-x<!--y<!--#echo var="x" -->z<!--#include virtual="/a"-->end<!-'


@pytest.mark.parametrize("step", [0, 1, 2, 3, 5, 7])
def test_commands_between_texts_whatever_the_reads(step: int) -> None:
    assert _parse(DOC, step=step) == [
        Text(b"a<b<!-x<!--y"),
        Command("echo", (("var", "x"),)),
        Text(b"z"),
        Command("include", (("virtual", "/a"),)),
        Text(b"end<!-"),
    ]


def test_text_without_command_passes_as_it_comes() -> None:
    p = SsiParser()
    assert p.feed(b"hello <b>") == [Text(b"hello <b>")]
    # A possible command's start is held back until the next byte decides.
    assert p.feed(b"x<!--") == [Text(b"x")]
    assert p.feed(b" comment") == [Text(b"<!-- comment")]


def test_quotes_whitespace_and_escapes() -> None:
    doc = b'<!--#set\r\n var = \'a"b\'\tvalue="c\\"d" -->'
    assert _parse(doc) == [Command("set", (("var", 'a"b'), ("value", 'c\\"d')))]
    assert evaluate('c\\"d', lambda n: "") == 'c"d'


def test_command_with_no_params() -> None:
    assert _parse(b"<!--#endif-->") == [Command("endif", ())]


@pytest.mark.parametrize(
    ("doc", "log"),
    [
        (
            b'<!--#echo x-y="1" -->',
            'unexpected "-" symbol after "x" parameter in "echo" SSI command',
        ),
        (
            b"<!--#echo var x -->",
            'unexpected "x" symbol after "var" parameter in "echo" SSI command',
        ),
        (
            b"<!--#echo var=x -->",
            'unexpected "x" symbol before value of "var" parameter in "echo" SSI command',
        ),
        (
            b'<!--#echo var="a"b -->',
            'unexpected "b" symbol after "a" value of "var" parameter in "echo" SSI command',
        ),
        (b"<!--#echo -x -->", 'unexpected "x" symbol in "echo" SSI command'),
        (b"<!--#" + b"c" * 33 + b" -->", f'the "{"c" * 32}c..." SSI command is too long'),
        (
            b"<!--#echo " + b"p" * 33 + b'="1" -->',
            f'too long "{"p" * 32}p..." parameter in "echo" SSI command',
        ),
    ],
)
def test_malformed_commands_are_errors_at_their_end(doc: bytes, log: str) -> None:
    assert _parse(doc + b"after") == [ParseError(log), Text(b"after")]


def test_value_length_at_and_over_the_limit() -> None:
    assert _parse(b'<!--#echo var="abcd" -->', value_len=4) == [Command("echo", (("var", "abcd"),))]
    assert _parse(b'<!--#echo var="abcde" -->x', value_len=4) == [
        ParseError('too long "abcde..." value of "var" parameter in "echo" SSI command'),
        Text(b"x"),
    ]


def test_unfinished_command_at_the_end_is_dropped() -> None:
    assert _parse(b'x<!--#echo var="a"') == [Text(b"x")]


def test_check_params() -> None:
    assert check_params(Command("echo", (("var", "a"),))) == {"var": "a"}
    assert check_params(Command("echo", ())) == (
        'mandatory "var" parameter is absent in "echo" SSI command'
    )
    assert check_params(Command("echo", (("var", "a"), ("nope", "1")))) == (
        'invalid parameter name: "nope" in "echo" SSI command'
    )
    assert check_params(Command("echo", (("var", "a"), ("var", "b")))) == (
        'duplicate "var" parameter in "echo" SSI command'
    )
    many = tuple(("var", "a") for _ in range(17))
    assert check_params(Command("echo", many)) == 'too many SSI command parameters: "echo"'


def _walk(steps: list[tuple[str, bool]]) -> list[bool]:
    cond = Conditionals()
    seen = []
    for name, value in steps:
        assert cond.branch(name, lambda v=value: v) is None  # type: ignore[misc]
        seen.append(cond.output)
    return seen


def test_conditionals() -> None:
    assert _walk([("if", False), ("elif", True), ("elif", True), ("else", False)]) == [
        False,
        True,
        False,
        False,
    ]
    assert _walk([("if", True), ("else", False), ("endif", False)]) == [True, False, True]
    cond = Conditionals()
    assert cond.context_error("else") and cond.context_error("endif")
    cond.branch("if", lambda: True)
    assert cond.branch("if", lambda: True) == 'the "if" command inside the "if" command'
    cond.branch("else", lambda: True)
    assert cond.context_error("elif") and not cond.context_error("endif")


VARS = {"a": "foo", "empty": "", "q": "<x>"}


def test_evaluate() -> None:
    look = lambda n: VARS.get(n, "")  # noqa: E731
    assert evaluate("$a-${a}x$nope.", look) == "foo-foox."
    assert evaluate("\\$a \\\\ \\d", look) == "$a \\ \\d"
    with pytest.raises(SsiError, match="invalid variable name"):
        evaluate("cost: $", look)
    with pytest.raises(SsiError, match="closing bracket"):
        evaluate("${a", look)


@pytest.mark.parametrize(
    ("expr", "result"),
    [
        ("$a", True),
        ("$empty", False),
        ("$a = foo", True),
        ("$a != foo", False),
        ("$a = bar", False),
        ("$a = /^f.o/", True),
        ("$a != /^bar/", True),
        ("$A = foo", True),
        ("$a = \\/x", False),
    ],
)
def test_expression(expr: str, result: bool) -> None:
    assert expression(expr, lambda n: VARS.get(n, ""))[0] is result


def test_expression_regex_match() -> None:
    holds, match = expression("$a = /(?<first>f)(o+)/", lambda n: VARS.get(n, ""))
    assert holds and match is not None
    assert match.groups() == ("f", "oo") and match.group("first") == "f"
    assert expression("$a = foo", lambda n: VARS.get(n, "")) == (True, None)


def test_invalid_expression() -> None:
    with pytest.raises(SsiError, match='invalid expression in "\\$a < b"'):
        expression("$a < b", lambda n: "")
    with pytest.raises(SsiError, match="invalid expression"):
        expression("$a = /open", lambda n: "")


def test_encode() -> None:
    assert encode("<a b='c'>&", "entity") == "&lt;a b='c'&gt;&amp;"
    assert encode('<a b="c">&[x]?\\ \xe9', "url") == "%3Ca%20b=%22c%22%3E&[x]?%5C%20%E9"
    assert encode("<b>", "none") == "<b>"


def test_format_date() -> None:
    assert format_date("%s", True, 1000.5) == "1000"
    assert format_date("%A, %d-%b-%Y %H:%M:%S %Z", True, 0) == "Thursday, 01-Jan-1970 00:00:00 GMT"


def test_an_error_swallows_up_to_its_end() -> None:
    """After a malformed command nginx's parser waits for ``-->``: text before it is lost."""
    assert _parse(b"<!--#echo -x> lost -- text") == []
