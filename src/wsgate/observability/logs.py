"""The error log and access logs, in nginx's formats.

Error log lines follow ``ngx_log_error_core``:
``YYYY/MM/DD HH:MM:SS [level] PID#TID: *CONN message, client: IP, server: NAME, request: "..."``.
wsgate has no threads, so TID is 0 as in nginx's single-threaded workers.
Access log lines render the configured ``log_format`` with nginx's ``default`` escaping
(``"`` , ``\\`` and bytes outside 0x20-0x7e as ``\\xXX``) or ``json`` escaping; a variable
not found is written as ``-`` and one found but empty as nothing (ngx_http_log_variable;
``RequestContext.found_empty`` tells the two apart), except with ``escape=json`` and
``escape=none``, where it is an empty string (``ngx_http_log_unescaped_variable``).  nginx:
"For json escaping, all characters not allowed in JSON strings will be escaped: characters
“"” and “\\” are escaped as “\\"” and “\\\\”, characters with values less
than 32 are escaped as “\\n”, “\\r”, “\\t”, “\\b”, “\\f”, or “\\u00XX”."
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import zlib
from collections import OrderedDict
from typing import TYPE_CHECKING, TextIO

from wsgate.config.model import (
    AccessLog,
    Config,
    ErrorLog,
    Location,
    LocationSettings,
    LogFormat,
    OpenLogFileCache,
)
from wsgate.config.variables import RequestContext

if TYPE_CHECKING:
    from wsgate.config.template import Template

__all__ = [
    "LEVELS",
    "AccessLogs",
    "ErrorLogger",
    "access_log_paths",
    "location_error_logs",
    "render_access",
]

LEVELS = {
    "debug": 7,
    "info": 6,
    "notice": 5,
    "warn": 4,
    "error": 3,
    "crit": 2,
    "alert": 1,
    "emerg": 0,
}


class ErrorLogger:
    """Writes nginx-format lines to every configured error log at or above its level.

    ``scoped`` are the ``error_log`` lists of http/server/location levels: a line about a
    request whose location has one (``ctx.error_logs``) goes there instead, as nginx's
    ``r->connection->log`` is switched to the location's log (``ngx_http_set_log``).  They
    are opened with the main logs, so each file exists from the start, as in nginx."""

    def __init__(
        self,
        targets: tuple[ErrorLog, ...] = (),
        stderr_fallback: bool = True,
        scoped: tuple[tuple[ErrorLog, ...], ...] = (),
    ) -> None:
        self.targets = targets
        self.files: list[tuple[TextIO, int, bool]] = []
        self.stderr_fallback = stderr_fallback
        self.scoped = scoped
        self.children: dict[tuple[ErrorLog, ...], ErrorLogger] = {}
        self.open()

    def configure(self, config: Config) -> None:
        """Log to ``config``'s main and per-level targets from now on (start and reload)."""
        self.targets = config.error_logs
        self.scoped = location_error_logs(config)
        self.open()

    def open(self) -> None:
        """(Re)open the files: USR1 and reloads call this (logrotate's ``postrotate``)."""
        old = self.files
        files: list[tuple[TextIO, int, bool]] = []
        for t in self.targets:
            if t.path == "stderr":
                files.append((sys.stderr, LEVELS[t.level], False))
                continue
            files.append((_open_log(t.path), LEVELS[t.level], True))
        self.files = files
        for fh, _, owned in old:
            if owned:
                fh.close()
        for child in self.children.values():
            child.close()
        self.children = {t: ErrorLogger(t, stderr_fallback=False) for t in self.scoped}

    def close(self) -> None:
        for fh, _, owned in self.files:
            if owned:
                fh.close()
        self.files = []
        for child in self.children.values():
            child.close()

    @property
    def max_level(self) -> int:
        return max((lvl for _, lvl, _ in self.files), default=LEVELS["error"])

    def enabled(self, level: str) -> bool:
        return LEVELS[level] <= self.max_level

    def log(
        self,
        level: str,
        msg: str,
        conn: int | None = None,
        ctx: RequestContext | None = None,
        upstream: str | None = None,
        scoped: bool = True,
    ) -> None:
        if scoped and ctx is not None and ctx.error_logs:
            child = self.children.get(ctx.error_logs) or _child_of(self, ctx.error_logs)
            if child is not self:
                child.log(level, msg, conn, ctx, upstream, scoped=False)
                return
        lvl = LEVELS[level]
        if not self.files and not self.stderr_fallback:
            return
        line = format_error_line(level, msg, conn, ctx, upstream)
        if not self.files:
            sys.stderr.write(line)
            return
        for fh, max_lvl, _ in self.files:
            if lvl <= max_lvl:
                fh.write(line)


def _child_of(parent: ErrorLogger, targets: tuple[ErrorLog, ...]) -> ErrorLogger:
    """The logger of a level of an older configuration (a request or tunnel that began
    before a reload), opened now and kept; ``parent`` if it cannot be opened."""
    try:
        child = ErrorLogger(targets, stderr_fallback=False)
    except OSError:
        return parent
    parent.children[targets] = child
    return child


def _open_log(path: str) -> TextIO:
    """Open a log for appending, creating its directory when it can (nginx requires it to
    exist; wsgate is friendlier).  A failure raises OSError naming ``path``."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    except OSError:
        pass
    return open(path, "a", buffering=1, encoding="utf-8")


def format_error_line(
    level: str,
    msg: str,
    conn: int | None = None,
    ctx: RequestContext | None = None,
    upstream: str | None = None,
) -> str:
    stamp = time.strftime("%Y/%m/%d %H:%M:%S")
    head = f"{stamp} [{level}] {os.getpid()}#0: "
    if conn is not None:
        head += f"*{conn} "
    text = head + msg
    if ctx is not None:
        text += f", client: {ctx.remote_addr}, server: {ctx.server_name}"
        if ctx.request_line:
            text += f', request: "{ctx.request_line}"'
        subrequest = getattr(ctx, "subrequest", None)  # an auth_request subrequest's URI
        if subrequest:
            text += f', subrequest: "{subrequest}"'
        if upstream:
            text += f', upstream: "{upstream}"'
        host = ctx.header("host")
        if host:
            text += f', host: "{host}"'
        referer = ctx.header("referer")
        if referer:
            text += f', referrer: "{referer}"'
    return text + "\n"


def _escape_default(value: str) -> str:
    out = []
    for ch in value:
        o = ord(ch)
        if ch in '"\\' or o < 0x20 or o > 0x7E:
            for b in ch.encode("utf-8", "surrogateescape"):
                out.append(f"\\x{b:02X}")
        else:
            out.append(ch)
    return "".join(out)


def _escape_json(value: str) -> str:
    out = []
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20:
            out.append(
                {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}.get(
                    ch, f"\\u{ord(ch):04X}"
                )
            )
        else:
            out.append(ch)
    return "".join(out)


def render_access(fmt: LogFormat, ctx: RequestContext) -> str:
    """One access-log line for ``ctx`` in ``fmt``."""
    escape = fmt.escape

    def lookup(name: str) -> str:
        value = ctx.lookup(name)
        if escape == "json":
            return _escape_json(value)
        if escape == "none":
            # ngx_http_log_unescaped_variable: a value not found writes nothing, not "-".
            return value
        if value:
            return _escape_default(value)
        # ngx_http_log_variable: "-" only for a value not found; found but empty is "".
        return "" if ctx.found_empty(name) else "-"

    return fmt.template.render(lookup) + "\n"


def location_error_logs(config: Config) -> tuple[tuple[ErrorLog, ...], ...]:
    """Every ``error_log`` list of an http/server/location level, once each."""
    found: dict[tuple[ErrorLog, ...], None] = {}

    def visit(settings: LocationSettings, locations: tuple[Location, ...]) -> None:
        if settings.error_logs:
            found.setdefault(settings.error_logs)
        for loc in locations:
            visit(loc.settings, loc.locations)

    for server in config.http.servers:
        visit(server.settings, server.locations)
    return tuple(found)


def access_log_paths(config: Config) -> list[str]:
    """Every access-log file the configuration names, in order, once each."""
    paths: dict[str, None] = {}

    def visit(settings: LocationSettings, locations: tuple[Location, ...]) -> None:
        for log in settings.access_logs:
            if log.name is None:  # a name with variables is opened when written
                paths.setdefault(log.path)
        for loc in locations:
            visit(loc.settings, loc.locations)

    for server in config.http.servers:
        visit(server.settings, server.every_location)
    return list(paths)


class _Buffer:
    """The pending lines of one buffered access-log file (``access_log ... buffer=SIZE``)."""

    __slots__ = ("size", "flush", "gzip", "chunks", "used", "timer")

    def __init__(self, size: int, flush: float | None, gzip: int) -> None:
        self.size = size
        self.flush = flush
        self.gzip = gzip
        self.chunks: list[str] = []
        self.used = 0
        self.timer: asyncio.TimerHandle | None = None


class AccessLogs:
    """Open access-log files, shared by path and written with line buffering, or held in a
    buffer when the ``access_log`` has ``buffer=``.

    Like nginx, every file is opened when the configuration is applied (start, reload,
    USR1), so a path that cannot be opened is an ``[emerg]`` at start rather than a lost
    line later.

    Buffering (https://nginx.org/en/docs/http/ngx_http_log_module.html#access_log): "If
    either the buffer or gzip parameter is used, writes to log will be buffered", and "the
    buffered data will be written to the file: if the next log line does not fit into the
    buffer; if the buffered data is older than specified by the flush parameter; when a
    worker process is re-opening log files or is shutting down."  Here that is
    :meth:`write`, a timer armed by the first line of an empty buffer, and :meth:`open` /
    :meth:`close` (USR1, reload, stop).  There is one buffer per path: its size and flush
    time come from the first buffered ``access_log`` that writes to the path, and an
    unbuffered ``access_log`` to the same path writes the buffer out first, so lines keep
    their order.
    """

    def __init__(self) -> None:
        self.files: dict[str, TextIO] = {}
        self.buffers: dict[str, _Buffer] = {}
        #: Where a log that cannot be opened is reported (``[crit] open() ... failed``).
        self.error_log: ErrorLogger | None = None
        #: ``open_log_file_cache``: the descriptors each cache keeps.
        self.named: dict[OpenLogFileCache, _NamedLogs] = {}

    def open(self, paths: list[str]) -> None:
        """Open ``paths`` (flushing and closing the previous files): raises OSError like
        ``open()``."""
        files: dict[str, TextIO] = {}
        try:
            for path in paths:
                files[path] = _open_log(path)
        except OSError:
            for fh in files.values():
                fh.close()
            raise
        self.close()
        self.files = files

    def _file(self, path: str) -> TextIO:
        fh = self.files.get(path)
        if fh is None:  # a file of a configuration older than the last reload
            fh = self.files[path] = _open_log(path)
        return fh

    def write(
        self,
        logs: tuple[AccessLog, ...],
        ctx: RequestContext,
        cache: OpenLogFileCache | None = None,
    ) -> None:
        """Log ``ctx`` to ``logs``; ``cache``: the level's ``open_log_file_cache``."""
        for log in logs:
            # "A request will not be logged if the condition evaluates to "0" or an empty
            # string."
            if log.condition is not None and log.condition.render(ctx.lookup) in ("", "0"):
                continue
            line = render_access(log.format, ctx)
            if log.name is not None:
                self._write_named(log.name, line, ctx, cache)
                continue
            buf = self.buffers.get(log.path)
            if not log.buffer and buf is None:
                self._file(log.path).write(line)
                continue
            if buf is None:
                buf = self.buffers[log.path] = _Buffer(log.buffer, log.flush, log.gzip)
            size = len(line.encode("utf-8", "surrogateescape"))
            if not log.buffer or size > buf.size - buf.used:
                self.flush(log.path)
            if not log.buffer or size > buf.size:  # nginx writes a too-long line directly
                self._file(log.path).write(line)
                continue
            buf.chunks.append(line)
            buf.used += size
            if buf.flush is not None and buf.timer is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # no loop (unit tests): flushed by open/close only
                    continue
                buf.timer = loop.call_later(buf.flush, self.flush, log.path)

    def flush(self, path: str | None = None) -> None:
        """Write out the buffer of ``path``, or of every path."""
        for p in [path] if path is not None else list(self.buffers):
            buf = self.buffers.get(p)
            if buf is None:
                continue
            if buf.timer is not None:
                buf.timer.cancel()
                buf.timer = None
            if buf.chunks:
                data = "".join(buf.chunks)
                buf.chunks = []
                buf.used = 0
                fh = self._file(p)
                if buf.gzip:
                    # ngx_http_log_gzip: each buffer written out is one gzip member.
                    z = zlib.compressobj(buf.gzip, zlib.DEFLATED, 31)
                    raw = data.encode("utf-8", "surrogateescape")
                    fh.flush()
                    fh.buffer.write(z.compress(raw) + z.flush())
                    fh.buffer.flush()
                else:
                    fh.write(data)

    def _write_named(
        self, name: Template, line: str, ctx: RequestContext, cache: OpenLogFileCache | None
    ) -> None:
        """A log whose name has variables (``ngx_http_log_script_write``): skipped when the
        request's root directory does not exist; opened for this line and closed, or kept
        by ``open_log_file_cache``.  No directory is created (nginx creates none); a file
        that cannot be opened is a ``[crit]`` and the line is lost, as in nginx."""
        root = ctx.lookup("document_root")
        if root and not os.path.isdir(root):
            return
        path = name.render(ctx.lookup)
        data = line.encode("utf-8", "surrogateescape")
        try:
            if cache is None:
                fd = os.open(path, _LOG_FLAGS, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                return
            named = self.named.get(cache)
            if named is None:
                named = self.named[cache] = _NamedLogs(cache)
            named.write(path, data, time.monotonic())
        except OSError as exc:
            if self.error_log is not None:
                self.error_log.log(
                    "crit",
                    f'open() "{path}" failed ({exc.errno}: {exc.strerror})',
                    ctx.connection,
                    ctx,
                )

    def close(self) -> None:
        """Flush every buffer, then close the files ("no line lost" on USR1, reload, stop)."""
        self.flush()
        self.buffers = {}
        for named in self.named.values():
            named.close()
        self.named = {}
        for fh in self.files.values():
            fh.close()
        self.files = {}


_LOG_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


class _Named:
    __slots__ = ("fd", "uses", "used", "opened")

    def __init__(self, now: float) -> None:
        self.fd = -1  # not kept open
        self.uses = 0
        self.used = now
        self.opened = now


class _NamedLogs:
    """One ``open_log_file_cache`` (``ngx_open_cached_file`` for logs): up to ``max``
    names, least recently used first out; a name's descriptor is kept once it was used
    ``min_uses`` times (within ``inactive``), and reopened after ``valid`` (a log rotated
    away is then followed); names unused for ``inactive`` are dropped."""

    __slots__ = ("spec", "entries")

    def __init__(self, spec: OpenLogFileCache) -> None:
        self.spec = spec
        self.entries: OrderedDict[str, _Named] = OrderedDict()

    def write(self, path: str, data: bytes, now: float) -> None:
        """Write ``data`` to ``path``; OSError when it cannot be opened (then the name is
        not cached: ``ngx_open_cached_file``'s "failed" path)."""
        spec, entries = self.spec, self.entries
        while entries:  # the inactive ones, least recently used first
            oldest, first = next(iter(entries.items()))
            if now - first.used <= spec.inactive:
                break
            self._drop(oldest)
        entry = entries.get(path)
        if entry is not None:
            entries.move_to_end(path)
            entry.uses += 1
            entry.used = now
            if entry.fd >= 0 and now - entry.opened > spec.valid:
                # The retest: the same file keeps its descriptor, a rotated one is reopened.
                try:
                    same = os.stat(path).st_ino == os.fstat(entry.fd).st_ino
                except OSError:
                    same = False
                if same:
                    entry.opened = now
                else:
                    os.close(entry.fd)
                    entry.fd = -1
            if entry.fd >= 0:
                os.write(entry.fd, data)
                return
            try:
                fd = os.open(path, _LOG_FLAGS, 0o644)
            except OSError:
                del entries[path]
                raise
        else:
            fd = os.open(path, _LOG_FLAGS, 0o644)
            if len(entries) >= spec.max:
                self._drop(next(iter(entries)))
            entry = entries[path] = _Named(now)
            entry.uses = 1
        if entry.uses >= spec.min_uses:
            entry.fd, entry.opened = fd, now
            os.write(fd, data)
            return
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _drop(self, path: str) -> None:
        entry = self.entries.pop(path)
        if entry.fd >= 0:
            os.close(entry.fd)

    def close(self) -> None:
        for path in list(self.entries):
            self._drop(path)
