"""Server Side Includes, the I/O half: a response body streamed through the parser of
:mod:`wsgate.http.ssi`, its commands performed, ``include virtual`` as a subrequest whose body
takes the command's place.

:class:`SsiFilter` is nginx's SSI body filter for one document: the static file sender and the
proxied-response relay hand it the body as it comes (:meth:`SsiFilter.feed`, then
:meth:`SsiFilter.finish`) and it writes the output through ``write`` (theirs, which frames it
for the client), in order.  An ``include`` runs its subrequest
(:meth:`wsgate.proxy.subrequest.SubExchange.output`: the phases for the URI, the response
made as for a client but its body handed here) and writes that body in place, or keeps it in
a variable (``set=``).  nginx runs the subrequests of a document side by side and its
postpone filter puts their bodies in order; wsgate runs them one after the other (what
``wait="yes"`` asks for), so the output is the same.

The SSI variables (``set``, ``include ... set=``) belong to the main request
(``ngx_http_ssi_get_variable`` reads ``r->main``'s): every document of one request, the
included ones too, sees them.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from wsgate.config.variables import is_known_variable
from wsgate.http.framing import ClientFraming, client_framing
from wsgate.http.headers import encode_chunk
from wsgate.http.ssi import (
    COMMANDS,
    DEFAULT_ERRMSG,
    DEFAULT_TIMEFMT,
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
from wsgate.proxy.endpoint import PeerClosed

if TYPE_CHECKING:
    from wsgate.config.model import LocationSettings
    from wsgate.http.gzip import GzipStream
    from wsgate.http.request import RequestHead
    from wsgate.proxy.exchange import Exchange

__all__ = [
    "SsiFilter",
    "Terminated",
    "send_through_ssi",
    "ssi_applies",
    "ssi_framing",
    "ssi_headers",
]

Write = Callable[[bytes], Awaitable[None]]

#: The statuses of a subrequest that end the main request too (``ngx_http_terminate_request``).
_TERMINATE = frozenset({408, 444, 499})
#: Nested includes stop here (nginx: "subrequests cycle" at 50, ``NGX_HTTP_MAX_SUBREQUESTS``).
MAX_DEPTH = 50


class Terminated(PeerClosed):
    """A subrequest ended the main request (``connection upgrade in subrequest``, ``return
    444``, a client gone): its response stops and its connection closes."""


class _TooBig(Exception):
    """An ``include ... set=`` body longer than ``subrequest_output_buffer_size``."""


def ssi_applies(settings: LocationSettings, status: int, headers: list[tuple[str, str]]) -> bool:
    """``ngx_http_ssi_header_filter``: ``ssi on``, a body that may not be empty, a type of
    ``ssi_types`` ("text/html" always, ``*`` any).  wsgate filters only ``200`` responses (a
    ``206`` or ``304`` was decided before the filter; nginx clears the validators first)."""
    if not settings.ssi or status != 200:
        return False
    ctype = ""
    for name, value in headers:
        low = name.lower()
        if low == "content-length" and value.strip() == "0":
            return False
        if low == "content-type":
            ctype = value.split(";", 1)[0].strip().lower()
    types = settings.ssi_types
    return ctype == "text/html" or ctype in types or "*" in types


def ssi_headers(
    settings: LocationSettings, headers: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The response's fields as the SSI filter leaves them: no ``Content-Length`` or
    ``Accept-Ranges``; ``Last-Modified`` and ``ETag`` gone, unless ``ssi_last_modified on``,
    which keeps the first and makes the ETag weak (``ngx_http_weak_etag``)."""
    out = []
    for name, value in headers:
        low = name.lower()
        if low in ("content-length", "accept-ranges"):
            continue
        if low in ("last-modified", "etag") and not settings.ssi_last_modified:
            continue
        if low == "etag" and not value.startswith("W/"):
            value = "W/" + value
        out.append((name, value))
    return out


async def send_through_ssi(
    ex: Exchange,
    head: bytes,
    pieces: Iterable[bytes],
    chunked: bool,
    timeout: float,
    gz: GzipStream | None = None,
) -> int:
    """The response head, then ``pieces`` of a body through an :class:`SsiFilter`, to the
    client (``chunked``: as HTTP/1.1 chunks, the last one not written); returns the bytes
    written.  Each wait for the client is at most ``timeout`` (``send_timeout``).

    The head goes with the first output, as nginx's write filter holds it until there is a
    body to send (``postpone_output``): a document whose first ``include`` ends the request
    (``include ... set=`` of a body too big, an upgrade in a subrequest) sends nothing."""
    ep = ex.front.ep
    sent = 0
    pending = head

    async def write(data: bytes) -> None:
        nonlocal sent, pending
        if gz is not None and not (data := gz.compress(data)):
            return
        framed = encode_chunk(data) if chunked else data
        if pending:
            framed, pending = pending + framed, b""
        ep.write(framed)
        sent += len(framed)
        async with asyncio.timeout(timeout):
            await ep.drain()

    filt = SsiFilter(ex, write)
    for piece in pieces:
        await filt.feed(piece)
    await filt.finish()
    if gz is not None:
        # The gzip filter after SSI's: its output's end, the head first if still held.
        tail = gz.finish()
        framed = encode_chunk(tail) if chunked else tail
        ep.write(pending + framed)
        sent += len(pending) + len(framed)
        pending = b""
    if pending:
        ep.write(pending)
        sent += len(pending)
    return sent


def ssi_framing(
    settings: LocationSettings, head: RequestHead, status: int, keep: bool, trailers: bool = False
) -> ClientFraming:
    """The framing of an SSI output, whose length is unknown: chunked for HTTP/1.1 (with
    ``chunked_transfer_encoding``), else delimited by the close (the connection not kept)."""
    return client_framing(
        head.method,
        head.version,
        status,
        None,
        keep,
        trailers=trailers,
        chunked=settings.chunked_transfer_encoding,
    )


class SsiFilter:
    """One SSI document of a request (the main one's or an included one's)."""

    __slots__ = ("ex", "write", "parser", "cond", "errmsg", "timefmt", "encoding", "block")

    def __init__(self, ex: Exchange, write: Write) -> None:
        self.ex = ex
        self.write = write
        settings = ex.r.settings
        self.parser = SsiParser(settings.ssi_value_length)
        self.cond = Conditionals()
        self.errmsg = DEFAULT_ERRMSG
        self.timefmt = DEFAULT_TIMEFMT
        #: ``echo``'s encoding: ``entity`` until an ``encoding=`` changes it for the rest.
        self.encoding = "entity"
        #: The text of the ``block`` being read (None: none).
        self.block: tuple[str, bytearray] | None = None

    @property
    def vars(self) -> dict[str, str]:
        r = self.ex.r
        if r.ssi_vars is None:
            r.ssi_vars = {}
        return r.ssi_vars

    async def feed(self, data: bytes) -> None:
        """A piece of the body: its text written, its commands performed, in order."""
        await self._events(self.parser.feed(data))

    async def finish(self) -> None:
        """The body's end (a ``<!--`` held back is text)."""
        await self._events(self.parser.finish())

    async def _events(self, events: list[Text | Command | ParseError]) -> None:
        out = bytearray()
        for ev in events:
            if isinstance(ev, Text):
                if self.cond.output and self.block is None:
                    out += ev.data
                elif self.block is not None:
                    self.block[1].extend(ev.data)
                continue
            if out:
                await self.write(bytes(out))
                out.clear()
            if isinstance(ev, ParseError):
                if ev.log is not None:
                    self.ex.r.log("error", ev.log)
                await self._error()
                continue
            await self._command(ev)
        if out:
            await self.write(bytes(out))

    async def _error(self, log: str | None = None) -> None:
        """``ssi_error``: the log line, and ``config errmsg``'s text unless
        ``ssi_silent_errors``."""
        if log is not None:
            self.ex.r.log("error", log)
        if not self.ex.r.settings.ssi_silent_errors:
            await self.write(self.errmsg.encode("latin-1", "replace"))

    async def _command(self, cmd: Command) -> None:
        spec = COMMANDS.get(cmd.name)
        output = self.cond.output and self.block is None
        if spec is None:
            if output:
                await self._error(f'invalid SSI command: "{cmd.name}"')
            return
        if not output and not spec.block:
            if self.block is not None:
                # Inside a block, a command is kept as text (nginx reconstructs it).
                params = "".join(f' {k}="{v}"' for k, v in cmd.params)
                self.block[1].extend(f"<!--#{cmd.name}{params} -->".encode("latin-1"))
                return
            if not spec.conditional:
                return
        if self.cond.context_error(cmd.name):
            await self._error(f'invalid context of SSI command: "{cmd.name}"')
            return
        checked = check_params(cmd)
        if isinstance(checked, str):
            await self._error(checked)
            return
        try:
            await self._perform(cmd.name, checked)
        except SsiError as exc:
            await self._error(str(exc))

    def lookup(self, name: str) -> str:
        """A variable as SSI reads it: its own first, then nginx's; ``$date_local`` and
        ``$date_gmt`` with ``config timefmt``."""
        value = self.vars.get(name)
        if value is not None:
            return value
        if name in ("date_local", "date_gmt"):
            return format_date(self.timefmt, name == "date_gmt")
        return self.ex.r.ctx.lookup(name)

    def _found(self, name: str) -> str | None:
        """``name``'s value, or None when nginx would find it "not found"."""
        value = self.lookup(name)
        if value or name in self.vars:
            return value
        ctx = self.ex.r.ctx
        if name.startswith("arg_"):
            args = urllib.parse.parse_qsl(ctx.args, keep_blank_values=True)
            return "" if any(k.lower() == name[4:] for k, _ in args) else None
        if name.startswith("http_"):
            return "" if ctx.header(name[5:].replace("_", "-")) is not None else None
        if name.startswith(("cookie_", "upstream_http_", "sent_http_")):
            return None
        return value if is_known_variable(name, set(ctx.maps)) else None

    async def _perform(self, name: str, params: dict[str, str]) -> None:
        if name in ("if", "elif", "else", "endif"):
            expr = params.get("expr", "")
            failed: list[SsiError] = []

            def taken() -> bool:
                try:
                    holds, match = expression(expr, self.lookup)
                except SsiError as exc:
                    failed.append(exc)
                    return False
                if match is not None:
                    # ngx_http_ssi_regex_match: $1... for what follows, the named captures
                    # as SSI variables.
                    ctx = self.ex.r.ctx
                    ctx.captures = (match.group(0), *(g or "" for g in match.groups()))
                    for key in match.re.groupindex:
                        self.vars[key.lower()] = match.group(key) or ""
                return holds

            log = self.cond.branch(name, taken)
            if failed:
                raise failed[0]
            if log is not None:
                raise SsiError(log)
        elif name == "echo":
            await self._echo(params)
        elif name == "set":
            self.vars[params["var"].lower()] = evaluate(params["value"], self.lookup)
        elif name == "config":
            if "errmsg" in params:
                self.errmsg = params["errmsg"]
            if "timefmt" in params:
                self.timefmt = params["timefmt"]
        elif name == "block":
            self.block = (params["name"], bytearray())
        elif name == "endblock":
            if self.block is not None:
                blocks = self.ex.r.ssi_blocks
                if blocks is None:
                    blocks = self.ex.r.ssi_blocks = {}
                blocks[self.block[0]] = bytes(self.block[1])
                self.block = None
        else:
            await self._include(params)

    async def _echo(self, params: dict[str, str]) -> None:
        value = self._found(params["var"].lower())
        if value is None:
            value = params.get("default", "(none)")
        elif not value:
            return
        enc = params.get("encoding")
        if enc is not None:
            if enc in ("none", "url", "entity"):
                self.encoding = enc
            else:
                self.ex.r.log("error", f'unknown encoding "{enc}" in the "echo" command')
        if value:
            await self.write(encode(value, self.encoding).encode("latin-1", "replace"))

    async def _include(self, params: dict[str, str]) -> None:
        uri, file = params.get("virtual"), params.get("file")
        wait, set_, stub = params.get("wait"), params.get("set"), params.get("stub")
        if uri is not None and file is not None:
            raise SsiError(f'inclusion may be either virtual="{uri}" or file="{file}"')
        if uri is None and file is None:
            raise SsiError('no parameter in "include" SSI command')
        if set_ is not None and stub is not None:
            raise SsiError('"set" and "stub" cannot be used together in "include" SSI command')
        if wait is not None:
            if uri is None:
                raise SsiError(f'"wait" cannot be used with file="{file}"')
            if wait.lower() not in ("yes", "no"):
                raise SsiError(f'invalid value "{wait}" in the "wait" parameter')
        target = evaluate(uri if uri is not None else file or "", self.lookup)
        if not target.startswith("/"):
            # NGX_HTTP_SSI_ADD_PREFIX: relative to the document's URI.
            here = self.ex.r.ctx.uri
            target = here[: here.rfind("/") + 1] + target
        path, args = _unsafe_uri(target)
        if path is None:
            raise SsiError(f'unsafe URI "{target}" was detected')
        stub_text: bytes | None = None
        if stub is not None:
            blocks = self.ex.r.ssi_blocks or {}
            stub_text = blocks.get(stub)
            if stub_text is None:
                raise SsiError(f'"stub"="{stub}" for "include" not found')
        if self.ex.r.ssi_depth >= MAX_DEPTH:
            raise SsiError(f'subrequests cycle while processing "{path}"')
        from wsgate.proxy.subrequest import SubExchange  # it builds on Exchange

        sub = SubExchange(self.ex, path, args)
        kept = bytearray()
        if set_ is not None or stub_text is not None:

            async def keep(data: bytes) -> None:
                kept.extend(data)
                # "Sets the size of the buffer used for storing the response body of a
                # subrequest"; a longer body is an error that ends the main request.
                if set_ is not None and len(kept) > sub.r.settings.subrequest_output_buffer_size:
                    raise _TooBig(f"too big subrequest response: {len(kept)}")

            try:
                status = await sub.output(keep)
            except _TooBig as exc:
                sub.r.log("error", str(exc))
                raise Terminated(str(exc)) from None
        else:
            status = await sub.output(self.write)
        if status in _TERMINATE:
            raise Terminated(f"subrequest ended with {status}")
        if set_ is not None:
            self.vars[set_.lower()] = kept.decode("latin-1")
        elif stub_text is not None:
            if kept and status < 400:
                await self.write(bytes(kept))
            else:
                await self._events(SsiParser(self.parser.value_len).feed(stub_text))


_UNSAFE = re.compile(r"(^|/)\.\.?(/|$)")


def _unsafe_uri(uri: str) -> tuple[str | None, str]:
    """``ngx_http_parse_unsafe_uri``: the path and the arguments after ``?``, the path's
    ``%XX`` decoded; None for a path with ``.``/``..`` segments or a NUL (logged by nginx
    as "unsafe URI")."""
    path, _, args = uri.partition("?")
    if "%" in path:
        path = urllib.parse.unquote(path, encoding="latin-1")
    if "\0" in path or _UNSAFE.search(path):
        return None, args
    return path, args
