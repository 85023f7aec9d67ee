"""The error log and access logs, in nginx's formats.

Error log lines follow ``ngx_log_error_core``:
``YYYY/MM/DD HH:MM:SS [level] PID#TID: *CONN message, client: IP, server: NAME, request: "..."``.
wsgate has no threads, so TID is 0 as in nginx's single-threaded workers.
Access log lines render the configured ``log_format`` with nginx's ``default`` escaping
(``"`` , ``\\`` and bytes outside 0x20-0x7e as ``\\xXX``) or ``json`` escaping; an empty
variable is written as ``-`` (ngx_http_log_variable).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from wsgate.config.model import AccessLog, Config, ErrorLog, Location, LocationSettings, LogFormat
from wsgate.config.variables import RequestContext

__all__ = ["LEVELS", "AccessLogs", "ErrorLogger", "access_log_paths", "render_access"]

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
    """Writes nginx-format lines to every configured error log at or above its level."""

    def __init__(self, targets: tuple[ErrorLog, ...] = (), stderr_fallback: bool = True) -> None:
        self.targets = targets
        self.files: list[tuple[TextIO, int, bool]] = []
        self.stderr_fallback = stderr_fallback
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

    def close(self) -> None:
        for fh, _, owned in self.files:
            if owned:
                fh.close()
        self.files = []

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
    ) -> None:
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
                    ch, f"\\u{ord(ch):04x}"
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
        if not value:
            return "-"
        return value if escape == "none" else _escape_default(value)

    return fmt.template.render(lookup) + "\n"


def access_log_paths(config: Config) -> list[str]:
    """Every access-log file the configuration names, in order, once each."""
    paths: dict[str, None] = {}

    def visit(settings: LocationSettings, locations: tuple[Location, ...]) -> None:
        for log in settings.access_logs:
            paths.setdefault(log.path)
        for loc in locations:
            visit(loc.settings, loc.locations)

    for server in config.http.servers:
        visit(server.settings, server.locations)
    return list(paths)


class AccessLogs:
    """Open access-log files, shared by path and written with line buffering.

    Like nginx, every file is opened when the configuration is applied (start, reload,
    USR1), so a path that cannot be opened is an ``[emerg]`` at start rather than a lost
    line later.
    """

    def __init__(self) -> None:
        self.files: dict[str, TextIO] = {}

    def open(self, paths: list[str]) -> None:
        """Open ``paths`` (closing the previous files): raises OSError like ``open()``."""
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

    def write(self, logs: tuple[AccessLog, ...], ctx: RequestContext) -> None:
        for log in logs:
            fh = self.files.get(log.path)
            if fh is None:  # a file of a configuration older than the last reload
                fh = self.files[log.path] = _open_log(log.path)
            fh.write(render_access(log.format, ctx))

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()
        self.files = {}
