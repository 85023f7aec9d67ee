"""``limit_rate``: nginx's write-filter arithmetic for the speed of a response, pure.

``ngx_http_write_filter`` (src/http/ngx_http_write_filter_module.c), for a request whose
``r->limit_rate`` is not 0, before each send::

    limit = limit_rate * (ngx_time() - r->start_sec + 1) - (c->sent - limit_rate_after)
    if (limit <= 0): wait (-limit * 1000 / limit_rate + 1) ms, then try again
    send at most limit bytes (and at most sendfile_max_chunk)

and after a send of ``sent`` → ``nsent`` bytes (each less ``limit_rate_after``, not below 0) it
waits ``(nsent - sent) * 1000 / limit_rate`` ms.  ``c->sent`` counts the response head too and
starts at 0 for each request of a keep-alive connection; ``ngx_time()`` and ``r->start_sec``
are whole seconds.  The rate is read once, at the first write (``r->limit_rate_set``): from
``$limit_rate`` if ``set`` or ``X-Accel-Limit-Rate`` gave it, else from the ``limit_rate``
directive (variables allowed; a value that is not a size logs ``invalid size "..."`` and
means 0, ``ngx_http_complex_value_size``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WriteRate"]


@dataclass(slots=True)
class WriteRate:
    """One response's ``limit_rate`` (bytes per second, > 0) and ``limit_rate_after``."""

    rate: int
    after: int
    #: ``r->start_sec``: the request's start, whole seconds.
    start_sec: int

    def allowance(self, sent: int, now: float) -> int:
        """Bytes that may be sent now, having sent ``sent`` (head included); ``<= 0``: wait
        :meth:`wait` first."""
        return self.rate * (int(now) - self.start_sec + 1) - (sent - self.after)

    def wait(self, allowance: int) -> float:
        """Seconds to wait when :meth:`allowance` is ``allowance <= 0``."""
        return ((-allowance * 1000) // self.rate + 1) / 1000

    def pause_after(self, before: int, after: int) -> float:
        """Seconds to wait after the counter went from ``before`` to ``after``."""
        if self.after:
            before = max(0, before - self.after)
            after = max(0, after - self.after)
        return ((after - before) * 1000 // self.rate) / 1000
