"""A request body read whole before the upstream is contacted (``proxy_request_buffering on``).

nginx's ``ngx_http_read_client_request_body``: the body is kept in memory while it fits the
buffer (``client_body_buffer_size``; for a body of known length a buffer up to a quarter
larger is allocated, "size += size >> 2"), the rest goes to a temporary file under
``client_body_temp_path`` with "a client request body is buffered to a temporary file" at
``[warn]``.  ``client_body_in_file_only on|clean`` writes every body to a file (its line at
``[notice]``); ``on`` keeps the file after the request, ``clean`` and ``off`` remove it.

wsgate keeps a temporary file on disk until the request ends (nginx unlinks a non-persistent
one as soon as it is opened), so ``$request_body_file`` names a file that exists; every path
out (a client reset mid-body, a 413, an upstream failure) closes and removes it.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from wsgate.cache.rules import hashed_name
from wsgate.errors import HttpError

__all__ = ["BodyStore", "RequestBody", "TempPath", "memory_limit", "read_request_body"]

#: Temporary file numbers (nginx's ``ngx_temp_number``), ten digits as nginx prints them.
_numbers = itertools.count((os.getpid() * 7919) % 1_000_000_000)
_PIECE = 65536


@dataclass(frozen=True, slots=True)
class TempPath:
    """``client_body_temp_path path [level1 [level2 [level3]]]``."""

    path: str
    levels: tuple[int, ...] = ()

    def file_name(self, number: int) -> str:
        return os.path.join(self.path, hashed_name(f"{number:010d}", self.levels))


def memory_limit(buffer_size: int, content_length: int | None, http2: bool = False) -> int:
    """The largest body kept in memory: a known length below ``buffer_size`` and a quarter
    gets a buffer of its own size; a chunked body has ``buffer_size``, and so has any body
    of an HTTP/2 stream (``ngx_http_v2_read_request_body``: "len > client_body_buffer_size")."""
    if content_length is None or http2:
        return buffer_size
    return buffer_size + (buffer_size >> 2) - 1


class RequestBody:
    """A whole request body: ``data`` in memory, or in the file ``path``."""

    __slots__ = ("data", "path", "fd", "size", "keep")

    def __init__(self, data: bytes = b"") -> None:
        self.data = data
        self.path: str | None = None
        self.fd = -1
        self.size = len(data)
        #: ``client_body_in_file_only on``: the file outlives the request.
        self.keep = False

    def pieces(self) -> Iterator[bytes]:
        """The body as it is sent upstream (again for each try)."""
        if self.path is None:
            if self.data:
                yield self.data
            return
        offset = 0
        while offset < self.size:
            piece = os.pread(self.fd, min(_PIECE, self.size - offset), offset)
            if not piece:
                return
            offset += len(piece)
            yield piece

    def close(self) -> None:
        """The request ended: close the file, remove it unless it is kept."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if self.path is not None and not self.keep:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass


class BodyStore:
    """Where a body being read goes: memory, then a file past ``limit``."""

    __slots__ = ("body", "temp", "limit", "chunks", "file_only", "note")

    def __init__(
        self, temp: TempPath, limit: int, file_only: str, note: Callable[[str, str], None]
    ) -> None:
        self.body = RequestBody()
        self.temp = temp
        self.limit = limit
        self.file_only = file_only
        self.chunks: list[bytes] = []
        #: ``note(level, text)``: the error-log line for the new file.
        self.note = note
        if file_only != "off":
            self._open()

    def _open(self) -> None:
        body = self.body
        while True:
            name = self.temp.file_name(next(_numbers) % 10_000_000_000)
            try:
                body.fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            except FileNotFoundError:
                os.makedirs(os.path.dirname(name), 0o700, exist_ok=True)
                continue
            except OSError as exc:
                code = exc.errno or errno.EIO
                raise HttpError(
                    500, f'open() "{name}" failed ({code}: {os.strerror(code)})'
                ) from None
            break
        body.path = name
        body.keep = self.file_only == "on"
        level = "warn" if self.file_only == "off" else "notice"
        self.note(level, f"a client request body is buffered to a temporary file {name}")

    def add(self, data: bytes) -> None:
        body = self.body
        body.size += len(data)
        if body.fd < 0:
            self.chunks.append(data)
            if body.size <= self.limit:
                return
            self._open()
            data = b"".join(self.chunks)
            self.chunks = []
        view = memoryview(data)
        while view:
            view = view[os.write(body.fd, view) :]

    def finish(self) -> RequestBody:
        body = self.body
        if body.fd < 0:
            body.data = b"".join(self.chunks)
        self.chunks = []
        return body


async def read_request_body(
    events: AsyncIterator[bytes],
    store: BodyStore,
    max_size: int,
) -> RequestBody:
    """Read the whole body into ``store`` (``client_max_body_size``: a chunked body found
    larger is 413); the file is removed when reading fails."""
    try:
        async for data in events:
            if max_size and store.body.size + len(data) > max_size:
                raise HttpError(
                    413,
                    "client intended to send too large chunked body: "
                    f"{store.body.size + len(data)} bytes",
                )
            store.add(data)
    except BaseException:
        store.body.close()
        raise
    return store.finish()
