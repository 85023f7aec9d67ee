"""HTTP/1.1 for wsgate, sans-I/O: request/response parsing, header rewriting, error pages.

Nothing here touches a socket or the event loop; the asyncio layer in :mod:`wsgate.proxy` feeds
bytes in and writes bytes out.  Submodules (import them directly; this package imports nothing):

- :mod:`wsgate.http.request` -- client request parser with nginx's limits and errors;
- :mod:`wsgate.http.response` -- upstream response parser;
- :mod:`wsgate.http.body` -- body events, framing, chunked decoder;
- :mod:`wsgate.http.headers` -- upstream request / client response heads, dates, chunk encoding;
- :mod:`wsgate.http.pages` -- byte-exact nginx error pages.
"""

__all__: list[str] = []
