"""The request body store (:mod:`wsgate.http.reqbody`): memory, then a temporary file."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wsgate.errors import HttpError
from wsgate.http.reqbody import BodyStore, TempPath, memory_limit, read_request_body


def test_memory_limit_of_known_length_is_a_quarter_more() -> None:
    # ngx_http_read_client_request_body: "size += size >> 2"; "rb->rest < size" fits.
    assert memory_limit(2048, 100) == 2559
    assert memory_limit(2048, None) == 2048
    assert memory_limit(2048, 100, http2=True) == 2048


def test_temp_path_levels_name_directories_from_the_end() -> None:
    assert TempPath("/t", (1, 2)).file_name(123) == "/t/3/12/0000000123"
    assert TempPath("/t").file_name(7) == "/t/0000000007"


def store(tmp_path: Path, limit: int, mode: str = "off") -> tuple[BodyStore, list[str]]:
    lines: list[str] = []
    st = BodyStore(TempPath(str(tmp_path / "b"), (1,)), limit, mode, lambda lv, t: lines.append(lv))
    return st, lines


async def _events(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


def test_body_at_the_limit_stays_in_memory(tmp_path: Path) -> None:
    st, lines = store(tmp_path, 10)
    body = asyncio.run(read_request_body(_events(b"01234", b"56789"), st, 0))
    assert (body.path, body.data, list(body.pieces()), lines) == (
        None,
        b"0123456789",
        [b"0123456789"],
        [],
    )


def test_body_over_the_limit_goes_to_a_file_removed_on_close(tmp_path: Path) -> None:
    st, lines = store(tmp_path, 10)
    body = asyncio.run(read_request_body(_events(b"01234", b"567890", b"x"), st, 0))
    assert body.path is not None and lines == ["warn"]
    assert b"".join(body.pieces()) == b"01234567890x" and body.size == 12
    assert b"".join(body.pieces()) == b"01234567890x"  # again, for a next upstream
    body.close()
    assert not os.path.exists(body.path)


@pytest.mark.parametrize(("mode", "kept"), [("on", True), ("clean", False)])
def test_file_only(tmp_path: Path, mode: str, kept: bool) -> None:
    st, lines = store(tmp_path, 100, mode)
    body = asyncio.run(read_request_body(_events(b"ab"), st, 0))
    assert body.path is not None and lines == ["notice"]
    body.close()
    assert os.path.exists(body.path) is kept


def test_over_max_size_is_413_and_removes_the_file(tmp_path: Path) -> None:
    st, _ = store(tmp_path, 2)
    with pytest.raises(HttpError) as err:
        asyncio.run(read_request_body(_events(b"abc", b"de"), st, 4))
    assert err.value.status == 413
    assert [p for p in (tmp_path / "b").rglob("*") if p.is_file()] == []


def test_at_max_size_is_read(tmp_path: Path) -> None:
    st, _ = store(tmp_path, 100)
    assert asyncio.run(read_request_body(_events(b"abcd"), st, 4)).data == b"abcd"
