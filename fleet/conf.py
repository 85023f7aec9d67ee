"""The configuration files of the simulated hosts: wsgate's (one per node), HAProxy's, and
dnsmasq's hosts file.

Timings, and why they fit together:

* HAProxy checks each node's ``readiness`` every 500 ms and takes it out after 2 failures
  (``inter 500ms fall 2``): about 1 s. ``shutdown_grace 3s`` is longer, so a node told to
  stop is out of the pool before its listeners close and no client is refused meanwhile.
* ``close_spread_time 10s``: a stopping node's tunnels get their 1001 spread over 10 s.
* The resolver caches an answer ``valid=2s``; wsgate resolves again one second after it
  expires, so a DNS change reaches every worker of every node within about 3 s.
* ``websocket_drain_time 5s``: the tunnels to a backend that left DNS get their 1012 spread
  over 5 s.

One ``server NAME resolve`` line per backend, not one name with several addresses: the
consistent-hash ring is built from the ``server`` lines as written (nginx's
``ngx_http_upstream_update_chash`` hashes ``peer->server``, the name), so the addresses of one
name share the same ring points and a key is spread over them by weighted round robin. A
name per backend gives each backend its own points: that is how a key stays on one backend
and a change of DNS moves only the keys of the backend that came or went.
(:data:`SINGLE_NAME` keeps one name for all, to show the difference.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fleet.net import host

__all__ = [
    "BACKEND_PORT",
    "BACKENDS",
    "CAP",
    "DENIED_SOURCE",
    "NODES",
    "NODE_PORT",
    "READY_PORT",
    "SINGLE_NAME",
    "Features",
    "backend_name",
    "dns_hosts",
    "haproxy_cfg",
    "node_conf",
    "server_name",
]

NODES = ("node1", "node2", "node3")
BACKENDS = ("backend1", "backend2", "backend3")
NODE_PORT = 8080
READY_PORT = 8081
BACKEND_PORT = 9000
LB_PORT = 8080
REDIS_PORT = 6379
#: Tunnels per user, fleet-wide (``limit_conn users 5``).
CAP = 5
#: Tunnels per client address, fleet-wide, on the ``/percap`` location.
ADDR_CAP = 2
#: Handshakes per client address and minute, fleet-wide, on ``/rate`` (no burst: a second
#: one within 2 s is refused).
RATE_PER_MIN = 30
#: The DNS zone of the backends (dnsmasq answers it; nothing else).
ZONE = "fleet.test"
#: One name with every backend's address: the upstream that shows why each backend has one.
SINGLE_NAME = f"backends.{ZONE}"
#: A client address every node denies (``deny``), to show that the rule sees the client.
DENIED_SOURCE = "198.18.7.100"
CLOSE_SPREAD = 10.0
SHUTDOWN_GRACE = 3.0
DRAIN_TIME = 5.0
RESOLVER_VALID = 2.0


def backend_name(backend: str) -> str:
    """The DNS name of a backend (``backend2.fleet.test``)."""
    return f"{backend}.{ZONE}"


def server_name(backend: str) -> str:
    """The backend's ``server`` address as written (its ring points are its IP:PORT's:
    :func:`fleet.ring.point_name`)."""
    return f"{backend_name(backend)}:{BACKEND_PORT}"


@dataclass(frozen=True, slots=True)
class Features:
    """The directives of issue 17 that the installed wsgate accepts (the run leaves the
    others out and says so)."""

    shutdown_grace: bool
    readiness: bool
    redis: bool

    def missing(self) -> list[str]:
        out = []
        if not self.shutdown_grace:
            out.append("shutdown_grace")
        if not self.readiness:
            out.append("readiness")
        if not self.redis:
            out.append("limit_conn_zone ... redis=")
        return out


def _servers(names: Iterable[str]) -> str:
    return "\n".join(f"        server {server_name(b)} resolve;" for b in names)


def node_conf(node: str, features: Features, workers: int = 1) -> str:
    """wsgate's configuration for one node (its prefix holds ``logs/``)."""
    me = host(node).addr
    dns = host("dns").addr
    redis = f"{host('redis').addr}:{REDIS_PORT}"
    grace = f"shutdown_grace {SHUTDOWN_GRACE:g}s;" if features.shutdown_grace else ""
    shared = f" redis={redis} redis_fail=open" if features.redis else ""
    ready = "readiness;" if features.readiness else 'return 200 "ready\\n";'
    servers = _servers(BACKENDS)
    return f"""\
# node {node} of the fleet simulation (fleet/conf.py)
worker_processes {workers};
pid logs/wsgate.pid;
error_log logs/error.log notice;
worker_rlimit_nofile 20000;
close_spread_time {CLOSE_SPREAD:g}s;
{grace}
worker_shutdown_timeout 30s;
events {{ worker_connections 8000; }}
http {{
    resolver {dns} valid={RESOLVER_VALID:g}s ipv6=off;
    resolver_timeout 2s;
    log_format fleet '$remote_addr $realip_remote_addr "$request_uri" $status '
                     '$upstream_addr $ws_close_code_client/$ws_close_code_upstream';
    access_log logs/access.log fleet;
    limit_conn_zone $arg_user zone=users:1m{shared};
    limit_conn_zone $binary_remote_addr zone=addrs:1m{shared};
    limit_req_zone $binary_remote_addr zone=rate:1m rate={RATE_PER_MIN}r/m{shared};
    limit_conn_status 503;
    limit_conn_log_level info;
    limit_req_status 503;
    limit_req_log_level info;
    upstream app {{
        zone app 64k;
        hash $arg_user consistent;
{servers}
        websocket_drain_time {DRAIN_TIME:g}s;
    }}
    upstream byip {{
        zone byip 64k;
        hash $remote_addr consistent;
{servers}
    }}
    upstream iphash {{
        zone iphash 64k;
        ip_hash;
{servers}
    }}
    upstream single {{
        zone single 64k;
        hash $arg_user consistent;
        server {SINGLE_NAME}:{BACKEND_PORT} resolve;
    }}
    server {{
        listen {me}:{NODE_PORT} proxy_protocol backlog=4096;
        set_real_ip_from 198.18.0.0/15;
        real_ip_header proxy_protocol;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Node {node};
        proxy_read_timeout 1h;
        proxy_send_timeout 1h;
        location /ws {{
            limit_conn users {CAP};
            proxy_pass http://app;
        }}
        location /route {{ proxy_pass http://app; }}
        location /single {{ proxy_pass http://single; }}
        location /byip {{ proxy_pass http://byip; }}
        location /iphash {{ proxy_pass http://iphash; }}
        location /deny {{
            deny {DENIED_SOURCE};
            allow all;
            proxy_pass http://app;
        }}
        location /percap {{
            limit_conn addrs {ADDR_CAP};
            proxy_pass http://byip;
        }}
        location /rate {{
            limit_req zone=rate;
            proxy_pass http://byip;
        }}
    }}
    server {{
        listen {me}:{READY_PORT};
        access_log off;
        location = /ready {{ {ready} }}
    }}
}}
"""


def haproxy_cfg(stats_socket: str, nodes: Iterable[str] = NODES) -> str:
    """HAProxy 2.6 as the layer-4 balancer: TCP mode, PROXY protocol v2 to the nodes, a
    health check on each node's ``readiness`` (plain HTTP on another port)."""
    lb = host("lb").addr
    servers = "\n".join(f"    server {n} {host(n).addr}:{NODE_PORT}" for n in nodes)
    return f"""\
# the balancer of the fleet simulation (fleet/conf.py)
global
    # Two descriptors a connection: under the machine's hard limit of open files.
    maxconn 8000
    stats socket {stats_socket} mode 600 level admin
    log stdout format short local0 notice
defaults
    mode tcp
    log global
    option dontlognull
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout client-fin 5s
    timeout server-fin 5s
    retries 3
    option redispatch
frontend ws
    bind {lb}:{LB_PORT} backlog 4096
    maxconn 8000
    default_backend nodes
backend nodes
    balance roundrobin
    option httpchk
    http-check send meth GET uri /ready
    http-check expect status 200
    default-server send-proxy-v2 check port {READY_PORT} inter 500ms fall 2 rise 2
{servers}
"""


def dns_hosts(backends: Iterable[str]) -> str:
    """dnsmasq's ``--addn-hosts`` file: one name per backend in DNS, and the one name that
    has them all."""
    names = list(backends)
    lines = [f"{host(b).addr} {backend_name(b)} {SINGLE_NAME}" for b in names]
    return "\n".join(lines) + "\n"
