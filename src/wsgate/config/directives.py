"""The directive table: which nginx directives wsgate accepts, where, and with how many arguments.

This mirrors nginx's module command tables (``ngx_command_t``: name, context mask, argument
count) and crossplane's analyzer.  A directive nginx has but wsgate does not implement is
refused by name (``"ssl_certificate" directive is not supported by wsgate``), except the short
list in :data:`NO_OP` that changes nothing for a streaming proxy, accepted with a ``[warn]``.
A directive nobody knows gives nginx's ``unknown directive "x"``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DIRECTIVES", "NO_OP", "NO_OP_VALUES", "Directive"]

MAIN, EVENTS, HTTP, SERVER, LOCATION, UPSTREAM = (
    "main",
    "events",
    "http",
    "server",
    "location",
    "upstream",
)


@dataclass(frozen=True, slots=True)
class Directive:
    """``contexts`` where it may appear; ``nargs`` as (min, max) with max ``-1`` for any;
    ``block`` for directives that take ``{ }``."""

    contexts: frozenset[str]
    nargs: tuple[int, int]
    block: bool = False


def _d(contexts: str, lo: int, hi: int | None = None, block: bool = False) -> Directive:
    return Directive(frozenset(contexts.split()), (lo, lo if hi is None else hi), block)


_HSL = f"{HTTP} {SERVER} {LOCATION}"

DIRECTIVES: dict[str, Directive] = {
    # main
    "pid": _d(MAIN, 1),
    "error_log": _d(f"{MAIN} {HTTP} {SERVER} {LOCATION}", 1, 2),
    "daemon": _d(MAIN, 1),
    "master_process": _d(MAIN, 1),
    "worker_processes": _d(MAIN, 1),
    "worker_shutdown_timeout": _d(MAIN, 1),
    "worker_rlimit_nofile": _d(MAIN, 1),
    "worker_cpu_affinity": _d(MAIN, 1, -1),
    # wsgate: HAProxy's ``close-spread-time`` (see wsgate.server.gateway)
    "close_spread_time": _d(MAIN, 1),
    "events": _d(MAIN, 0, block=True),
    "http": _d(MAIN, 0, block=True),
    # events
    "worker_connections": _d(EVENTS, 1),
    # http
    "map": _d(HTTP, 2, block=True),
    "upstream": _d(HTTP, 1, block=True),
    "server": _d(f"{HTTP} {UPSTREAM}", 0, -1),
    "log_format": _d(HTTP, 2, -1),
    # upstream
    "least_conn": _d(UPSTREAM, 0),
    "ip_hash": _d(UPSTREAM, 0),
    "hash": _d(UPSTREAM, 1, 2),
    "random": _d(UPSTREAM, 0, 2),
    "keepalive": _d(UPSTREAM, 1),
    "health_check": _d(UPSTREAM, 0, -1),
    # server
    "listen": _d(SERVER, 1, -1),
    "server_name": _d(SERVER, 1, -1),
    "location": _d(f"{SERVER} {LOCATION}", 1, 2, block=True),
    # ngx_http_stub_status_module: "stub_status;" (before 1.7.5 it took an argument)
    "stub_status": _d(f"{SERVER} {LOCATION}", 0, 1),
    # wsgate's own: a Prometheus text page (see wsgate.observability.metrics)
    "prometheus": _d(LOCATION, 0),
    # per-location settings
    "proxy_pass": _d(LOCATION, 1),
    "proxy_http_version": _d(_HSL, 1),
    "proxy_set_header": _d(_HSL, 2),
    "proxy_connect_timeout": _d(_HSL, 1),
    "proxy_read_timeout": _d(_HSL, 1),
    "proxy_send_timeout": _d(_HSL, 1),
    "proxy_next_upstream": _d(_HSL, 1, -1),
    "proxy_next_upstream_tries": _d(_HSL, 1),
    "proxy_next_upstream_timeout": _d(_HSL, 1),
    "proxy_buffer_size": _d(_HSL, 1),
    "send_timeout": _d(_HSL, 1),
    "keepalive_timeout": _d(f"{_HSL} {UPSTREAM}", 1, 2),
    "keepalive_requests": _d(f"{_HSL} {UPSTREAM}", 1),
    "keepalive_time": _d(f"{_HSL} {UPSTREAM}", 1),
    "client_max_body_size": _d(_HSL, 1),
    "server_tokens": _d(_HSL, 1),
    "return": _d(f"{SERVER} {LOCATION}", 1, 2),
    "access_log": _d(_HSL, 1, -1),
    "allow": _d(_HSL, 1),
    "deny": _d(_HSL, 1),
    # ngx_http_limit_conn_module, ngx_http_limit_req_module (see wsgate.limits)
    "limit_conn_zone": _d(HTTP, 2),
    "limit_conn": _d(_HSL, 2),
    "limit_conn_status": _d(_HSL, 1),
    "limit_conn_log_level": _d(_HSL, 1),
    "limit_conn_dry_run": _d(_HSL, 1),
    "limit_req_zone": _d(HTTP, 3, 3),
    "limit_req": _d(_HSL, 1, 3),
    "limit_req_status": _d(_HSL, 1),
    "limit_req_log_level": _d(_HSL, 1),
    "limit_req_dry_run": _d(_HSL, 1),
    # wsgate's own: the protocols a request may upgrade to (see wsgate.access)
    "proxy_upgrade_protocols": _d(_HSL, 1, -1),
    # TLS towards clients (ngx_http_ssl_module): http and server
    **{
        name: _d(f"{HTTP} {SERVER}", lo, hi)
        for name, lo, hi in (
            ("ssl_certificate", 1, 1),
            ("ssl_certificate_key", 1, 1),
            ("ssl_protocols", 1, -1),
            ("ssl_ciphers", 1, 1),
            ("ssl_prefer_server_ciphers", 1, 1),
            ("ssl_session_cache", 1, 2),
            ("ssl_session_timeout", 1, 1),
            ("ssl_session_tickets", 1, 1),
            ("ssl_client_certificate", 1, 1),
            ("ssl_verify_client", 1, 1),
            ("ssl_verify_depth", 1, 1),
        )
    },
    # TLS towards upstreams (ngx_http_proxy_module)
    **{
        name: _d(_HSL, 1, hi)
        for name, hi in (
            ("proxy_ssl_verify", 1),
            ("proxy_ssl_verify_depth", 1),
            ("proxy_ssl_trusted_certificate", 1),
            ("proxy_ssl_server_name", 1),
            ("proxy_ssl_name", 1),
            ("proxy_ssl_protocols", -1),
            ("proxy_ssl_ciphers", 1),
            ("proxy_ssl_certificate", 1),
            ("proxy_ssl_certificate_key", 1),
            ("proxy_ssl_session_reuse", 1),
        )
    },
    # server-level (nginx allows them in http too, inherited by servers)
    "client_header_timeout": _d(f"{HTTP} {SERVER}", 1),
    "client_header_buffer_size": _d(f"{HTTP} {SERVER}", 1),
    "large_client_header_buffers": _d(f"{HTTP} {SERVER}", 2),
    "max_headers": _d(f"{HTTP} {SERVER}", 1),
}

#: Accepted with a ``[warn]``: they tune what nginx does with files, kernels or hash tables and
#: change nothing wsgate's streaming proxy does.  ``proxy_buffering``/``proxy_request_buffering``
#: are here because wsgate always streams (it behaves as ``off``).
NO_OP: dict[str, Directive] = {
    "user": _d(MAIN, 1, 2),
    "worker_rlimit_core": _d(MAIN, 1),
    "pcre_jit": _d(MAIN, 1),
    "use": _d(EVENTS, 1),
    "multi_accept": _d(EVENTS, 1),
    "accept_mutex": _d(EVENTS, 1),
    "accept_mutex_delay": _d(EVENTS, 1),
    "sendfile": _d(_HSL, 1),
    "tcp_nopush": _d(_HSL, 1),
    "tcp_nodelay": _d(_HSL, 1),
    "default_type": _d(_HSL, 1),
    "types_hash_max_size": _d(_HSL, 1),
    "types_hash_bucket_size": _d(_HSL, 1),
    "server_names_hash_max_size": _d(HTTP, 1),
    "server_names_hash_bucket_size": _d(HTTP, 1),
    "map_hash_max_size": _d(HTTP, 1),
    "map_hash_bucket_size": _d(HTTP, 1),
    "variables_hash_max_size": _d(HTTP, 1),
    "variables_hash_bucket_size": _d(HTTP, 1),
    "proxy_headers_hash_max_size": _d(_HSL, 1),
    "proxy_headers_hash_bucket_size": _d(_HSL, 1),
    "client_body_temp_path": _d(_HSL, 1, 4),
    "proxy_temp_path": _d(_HSL, 1, 4),
    "fastcgi_temp_path": _d(_HSL, 1, 4),
    "uwsgi_temp_path": _d(_HSL, 1, 4),
    "scgi_temp_path": _d(_HSL, 1, 4),
    "proxy_buffering": _d(_HSL, 1),
    "proxy_request_buffering": _d(_HSL, 1),
    "proxy_buffers": _d(_HSL, 2),
    "proxy_busy_buffers_size": _d(_HSL, 1),
    "proxy_max_temp_file_size": _d(_HSL, 1),
    "proxy_temp_file_write_size": _d(_HSL, 1),
    "reset_timedout_connection": _d(_HSL, 1),
    "types": _d(_HSL, 0, block=True),
    "proxy_redirect": _d(_HSL, 1, 2),
    # One wsgate process keeps upstream state in memory; a shared zone adds nothing yet.
    "zone": _d(UPSTREAM, 1, 2),
}

#: No-op directives whose other values would change behaviour: only these values are accepted.
#: ``proxy_redirect off``: wsgate never rewrites ``Location``.
NO_OP_VALUES: dict[str, frozenset[str]] = {"proxy_redirect": frozenset({"off"})}
