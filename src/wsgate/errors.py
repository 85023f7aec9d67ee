"""One exception tree for wsgate.

Every error wsgate raises on purpose derives from :class:`WsgateError`.  Configuration errors
carry the file and line that caused them (nginx's ``[emerg] ... in FILE:LINE``); HTTP errors
carry the status nginx would send.  Library exceptions (crossplane, httptools, OSError) are
converted at the boundary of the module that calls the library.
"""

from __future__ import annotations

__all__ = ["ConfigError", "HttpError", "WsgateError"]


class WsgateError(Exception):
    """Root of every exception wsgate raises deliberately."""


class ConfigError(WsgateError):
    """A configuration problem, reported like nginx's ``[emerg]`` lines.

    ``str(err)`` is the message nginx would print after ``[emerg]``, e.g.
    ``unknown directive "foo" in /etc/nginx/nginx.conf:3``.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.file is None:
            return self.message
        if self.line is None:
            return f"{self.message} in {self.file}"
        return f"{self.message} in {self.file}:{self.line}"


class HttpError(WsgateError):
    """A request that must be answered with an error status (or closed, for 408/444/499).

    ``status`` is what nginx logs; 494 is logged as 494 but sent as ``400 Bad Request``.
    ``log`` is the INFO-level message nginx writes, e.g. ``client sent invalid header line``.
    ``headers`` are fields the error response carries after nginx's own (``WWW-Authenticate``
    of a 401, which nginx's handlers add to ``r->headers_out``).
    """

    def __init__(
        self, status: int, log: str = "", *, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.status = status
        self.log = log
        self.headers = headers
        super().__init__(f"{status} {log}".strip())

    @property
    def log_level(self) -> str | None:
        """The error-log level of ``log``: [error] for 403, 413, 500, 502 and 504, [info]
        for the client's faults; None when there is no line (no text, or a 404)."""
        if not self.log or self.status == 404:
            return None
        return "error" if self.status in (403, 413, 500, 502, 504) else "info"
