"""What ``wsgate -V`` says it was "built with": nginx's modules, from the directive table.

nginx's ``-V`` prints the ``configure`` arguments it was built with, and tools read them: nginx's
own test suite (``has(qw/rewrite auth_basic/)`` in ``lib/Test/Nginx.pm``) runs a test file only
when every module it needs is there, by looking for ``--without-http_rewrite_module`` (a module
built by default) or ``--with-http_realip_module`` (one that is not).  wsgate has no configure
step, so it prints the arguments that describe what it implements: a module is "built" when the
directive that stands for it is in the table and not refused.  Nothing here is a claim kept by
hand: implementing ``rewrite`` turns ``--without-http_rewrite_module`` off by itself.

wsgate follows current nginx's behaviour (see docs/differences.md), and says which nginx that is
in a second version line, which the test suite's ``has_version()`` reads: tests that current
nginx changed are then held to the current behaviour, not marked "TODO".
"""

from __future__ import annotations

import ssl

__all__ = ["NGINX_BEHAVIOUR", "built_with", "configure_arguments"]

#: The nginx release whose documented behaviour wsgate follows (its source was read for it).
NGINX_BEHAVIOUR = "1.31.5"

#: Modules nginx builds unless told ``--without-…``: module → the directive that stands for it.
_DEFAULT_ON: tuple[tuple[str, str], ...] = (
    ("http_charset_module", "charset"),
    ("http_gzip_module", "gzip"),
    ("http_ssi_module", "ssi"),
    ("http_userid_module", "userid"),
    ("http_access_module", "allow"),
    ("http_auth_basic_module", "auth_basic"),
    ("http_mirror_module", "mirror"),
    ("http_autoindex_module", "autoindex"),
    ("http_geo_module", "geo"),
    ("http_map_module", "map"),
    ("http_split_clients_module", "split_clients"),
    ("http_referer_module", "valid_referers"),
    ("http_rewrite_module", "rewrite"),
    ("http_proxy_module", "proxy_pass"),
    ("http_fastcgi_module", "fastcgi_pass"),
    ("http_uwsgi_module", "uwsgi_pass"),
    ("http_scgi_module", "scgi_pass"),
    ("http_grpc_module", "grpc_pass"),
    ("http_memcached_module", "memcached_pass"),
    ("http_limit_conn_module", "limit_conn"),
    ("http_limit_req_module", "limit_req"),
    ("http_empty_gif_module", "empty_gif"),
    ("http_browser_module", "ancient_browser"),
    ("http_upstream_hash_module", "hash"),
    ("http_upstream_ip_hash_module", "ip_hash"),
    ("http_upstream_least_conn_module", "least_conn"),
    ("http_upstream_random_module", "random"),
    ("http_upstream_keepalive_module", "keepalive"),
    ("http_upstream_zone_module", "zone"),
    ("http_upstream_sticky", "sticky"),
    ("http_tunnel_module", "tunnel_pass"),
    ("http-cache", "proxy_cache_path"),
)
#: Modules nginx builds only when told ``--with-…``.
_DEFAULT_OFF: tuple[tuple[str, str], ...] = (
    ("http_ssl_module", "ssl_certificate"),
    ("http_v2_module", "http2"),
    ("http_v3_module", "http3"),
    ("http_realip_module", "set_real_ip_from"),
    ("http_addition_module", "add_before_body"),
    ("http_sub_module", "sub_filter"),
    ("http_dav_module", "dav_methods"),
    ("http_flv_module", "flv"),
    ("http_mp4_module", "mp4"),
    ("http_gunzip_module", "gunzip"),
    ("http_gzip_static_module", "gzip_static"),
    ("http_auth_request_module", "auth_request"),
    ("http_random_index_module", "random_index"),
    ("http_secure_link_module", "secure_link"),
    ("http_degradation_module", "degradation"),
    ("http_slice_module", "slice"),
    ("http_stub_status_module", "stub_status"),
)


def built_with(directive: str) -> bool:
    """Whether the table has ``directive`` and does not refuse it."""
    from wsgate.config.directives import TABLE
    from wsgate.config.table import Kind

    return any(d.kind is not Kind.REFUSED for d in TABLE.get(directive, ()))


def configure_arguments() -> str:
    """nginx's ``configure arguments:`` line for what wsgate implements.

    The stream and mail modules (off by default in nginx) are simply not named; wsgate's
    regular expressions are Python's ``re`` (nginx's ``pcre`` feature: on).
    """
    args = [f"--with-{m}" for m, d in _DEFAULT_OFF if built_with(d)]
    args += [f"--without-{m}" for m, d in _DEFAULT_ON if not built_with(d)]
    return " ".join(args)


def version_lines(server_token: str) -> str:
    """What ``wsgate -V`` prints (nginx's layout: version, compiler, TLS library, arguments),
    with which WebSocket frame scanner runs (compiled, or pure Python: see frames.py), what
    relays a tunnel's sockets (see fdrelay.py) and what splits header lines (request.py)."""
    from wsgate.http.request import HEADS
    from wsgate.proxy.fdrelay import RELAY
    from wsgate.proxy.frames import SCANNER

    return (
        f"wsgate version: {server_token}\n"
        f"follows nginx version: nginx/{NGINX_BEHAVIOUR}\n"
        f"built with {ssl.OPENSSL_VERSION}\n"
        f"frame scanner: {SCANNER}\n"
        f"tunnel relay: {RELAY}\n"
        f"header splitter: {HEADS}\n"
        "TLS SNI support enabled\n"
        f"configure arguments: {configure_arguments()}\n"
    )
