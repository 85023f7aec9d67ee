"""Directives wsgate accepts with a ``[warn]`` because they change nothing a streaming proxy
does, and directives it refuses by name with a reason.

Any other directive nginx has (crossplane's analyzer knows them all) is refused the same way,
``"X" directive is not supported by wsgate``; a name nobody knows is ``unknown directive "X"``.
"""

from __future__ import annotations

from wsgate.config.table import (
    ANY,
    EVENTS,
    FLAG,
    HSL,
    HTTP,
    MAIN,
    TAKE1,
    TAKE2,
    TAKE12,
    TAKE1234,
    Arity,
    Directive,
    Kind,
    Parser,
    ctx,
    number,
    size,
)

__all__ = ["ENTRIES"]


def _noop(
    name: str,
    contexts: frozenset[str],
    arity: Arity,
    note: str = "",
    parse: Parser | None = None,
    values: frozenset[str] | None = None,
    refusal: str = "",
) -> Directive:
    """Accepted with a ``[warn]``; ``parse`` checks the value as nginx does (its words for a
    bad one), ``values`` limits it to the harmless ones."""
    return Directive(
        name,
        contexts,
        arity,
        kind=Kind.NO_OP,
        note=note,
        parse=parse,
        values=values,
        refusal=refusal,
    )


def _refused(name: str, note: str) -> Directive:
    return Directive(name, frozenset(), ANY, kind=Kind.REFUSED, note=note)


_M, _E, _H = ctx(MAIN), ctx(EVENTS), ctx(HTTP)
_HASH = (
    "hash table sizes: wsgate looks names up in Python dicts, which size themselves; "
    "the value is checked as nginx checks it"
)
_POOL = "nginx's memory pools: Python allocates as it goes; the value is checked"
_TEMP = "wsgate writes no temporary files"
_STREAM = "wsgate always streams, as with `off`"
_LOOP = "the event loop (uvloop or asyncio) accepts connections its own way"

ENTRIES: tuple[Directive, ...] = (
    _noop("user", _M, TAKE12, "wsgate does not switch users"),
    _noop("worker_rlimit_core", _M, TAKE1, "no core file limit is set"),
    _noop("pcre_jit", _M, FLAG, "regular expressions are Python's `re`"),
    _noop("use", _E, TAKE1, _LOOP),
    _noop("accept_mutex", _E, FLAG, _LOOP),
    _noop("accept_mutex_delay", _E, TAKE1, _LOOP),
    _noop("types_hash_max_size", HSL, TAKE1, _HASH, number),
    _noop("types_hash_bucket_size", HSL, TAKE1, _HASH, size),
    _noop("server_names_hash_max_size", _H, TAKE1, _HASH, number),
    _noop("server_names_hash_bucket_size", _H, TAKE1, _HASH, size),
    _noop("map_hash_max_size", _H, TAKE1, _HASH, number),
    _noop("map_hash_bucket_size", _H, TAKE1, _HASH, size),
    _noop("variables_hash_max_size", _H, TAKE1, _HASH, number),
    _noop("variables_hash_bucket_size", _H, TAKE1, _HASH, size),
    _noop("proxy_headers_hash_max_size", HSL, TAKE1, _HASH, number),
    _noop("proxy_headers_hash_bucket_size", HSL, TAKE1, _HASH, size),
    _noop("connection_pool_size", ctx("http server"), TAKE1, _POOL, size),
    _noop("request_pool_size", ctx("http server"), TAKE1, _POOL, size),
    _noop(
        "log_subrequest",
        HSL,
        FLAG,
        "wsgate's subrequests are never written to the access log, as with `off`",
        values=frozenset({"off"}),
        refusal="wsgate does not log subrequests",
    ),
    _noop("send_lowat", HSL, TAKE1, "nginx ignores it on Linux too (no SO_SNDLOWAT)", size),
    _noop(
        "msie_refresh",
        HSL,
        FLAG,
        "no refresh pages instead of redirects for MSIE, as with `off`",
        values=frozenset({"off"}),
        refusal="wsgate sends MSIE the redirect itself",
    ),
    _noop("proxy_temp_path", HSL, TAKE1234, _TEMP),
    _noop("fastcgi_temp_path", HSL, TAKE1234, _TEMP),
    _noop("uwsgi_temp_path", HSL, TAKE1234, _TEMP),
    _noop("scgi_temp_path", HSL, TAKE1234, _TEMP),
    _noop("proxy_buffers", HSL, TAKE2, _STREAM),
    _noop("proxy_busy_buffers_size", HSL, TAKE1, _STREAM),
    _noop("proxy_max_temp_file_size", HSL, TAKE1, _TEMP),
    _noop("proxy_temp_file_write_size", HSL, TAKE1, _TEMP),
    # Refused with a reason (docs/differences.md, "Not yet supported").
    _refused("ssl_crl", "not yet"),
    _refused("proxy_ssl_crl", "not yet"),
    _refused("proxy_ssl_password_file", "not yet"),
    _refused("sticky", "commercial edition"),
    _refused("ntlm", "commercial edition"),
    _refused("queue", "commercial edition"),
)
