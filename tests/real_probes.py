"""Requests sent to each configuration of the real-configuration corpus, and what must come of
them (``tests/integration/test_real_configs.py``).

The values are nginx's behaviour, read as current nginx where it differs from Debian's 1.22
(``proxy_http_version`` 1.1 and no default ``Connection: close``): the test checks them against
nginx for every configuration nginx loads, and against wsgate for every one wsgate loads.
Values may name ports as ``@@P443@@`` (a listen placeholder) or ``@@U8080@@`` (an upstream).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PROBES", "STATIC_FILES", "Probe"]


@dataclass(frozen=True)
class Probe:
    """One GET (a WebSocket handshake when ``ws``) on listen ``listen`` with ``Host: host``."""

    listen: str
    host: str
    target: str
    status: int
    #: The backend that must receive it (an upstream placeholder), or None.
    upstream: str | None = None
    #: The request target the backend receives, when not ``target``.
    path: str | None = None
    #: Headers the backend must receive (lower-case names, exact values; "" = absent).
    headers: dict[str, str] = field(default_factory=dict)
    location: str | None = None
    ws: bool = False
    tls: bool = False
    #: A documented difference: the status wsgate gives instead, and why.  Asserted exactly, so
    #: the probe fails (asking for this to be removed) the day wsgate behaves as nginx.
    differs: tuple[int, str] | None = None

    @property
    def line(self) -> str:
        """The request line the backend must receive."""
        return f"GET {self.path or self.target} HTTP/1.1" if self.upstream else ""


#: docs/differences.md, "Locations with no handler": wsgate serves no files yet (issue 12).
STATIC_FILES = "a location with no handler answers 404; static files are issue 12"

# fmt: off
PROBES: dict[str, list[Probe]] = {
    "coder": [
        Probe("P80", "coder.example.com", "/api/v2/buildinfo", 301,
            location="https://coder.example.com/api/v2/buildinfo"),
        Probe("P443", "coder.example.com", "/api/v2/workspaceagents/me/rpc", 101, "U3000",
            ws=True, tls=True,
            headers={"host": "coder.example.com", "upgrade": "websocket", "connection": "upgrade",
                     "x-real-ip": "127.0.0.1", "x-forwarded-for": "127.0.0.1",
                     "x-forwarded-proto": ""},
        ),
        Probe("P443", "coder.example.com", "/api/v2/buildinfo", 200, "U3000", tls=True,
            headers={"host": "coder.example.com", "upgrade": "", "connection": "upgrade",
                     "x-forwarded-proto": ""},
        ),
    ],
    "gotify": [
        Probe("P80", "push.example.com", "/stream?token=T", 101, "U1245", ws=True,
            headers={"host": "push.example.com", "upgrade": "websocket", "connection": "upgrade",
                     "x-real-ip": "127.0.0.1", "x-forwarded-for": "127.0.0.1",
                     "x-forwarded-proto": "http"},
        ),
        Probe("P80", "push.example.com", "/message?limit=5", 200, "U1245",
            headers={"host": "push.example.com", "upgrade": "", "connection": "upgrade"}),
    ],
    "gotify-subpath": [
        Probe("P80", "localhost", "/gotify/stream?token=T", 101, "U8080", path="/stream?token=T",
            ws=True,
            headers={"host": "localhost", "upgrade": "websocket", "connection": "upgrade",
                     "x-forwarded-proto": "http"},
        ),
        Probe("P80", "localhost", "/gotify/application?x=1", 200, "U8080",
            path="/application?x=1",
            headers={"host": "localhost", "upgrade": "", "connection": "upgrade"}),
    ],
    "grafana": [
        Probe("P80", "grafana.example.com", "/api/live/ws", 101, "U3000", ws=True,
            headers={"host": "grafana.example.com", "upgrade": "websocket",
                     "connection": "upgrade"}),
        Probe("P80", "grafana.example.com", "/api/health", 200, "U3000",
            headers={"host": "grafana.example.com", "upgrade": "", "connection": ""}),
    ],
    "home-assistant": [
        Probe("P80", "example.com", "/lovelace/0", 301, location="https://example.com/lovelace/0"),
        Probe("P443", "example.com", "/api/websocket", 101, "U8123", ws=True, tls=True,
            headers={"host": "example.com", "x-forwarded-for": "127.0.0.1",
                     "upgrade": "websocket", "connection": "upgrade"},
        ),
        Probe("P443", "example.com", "/auth/authorize?x=1", 200, "U8123", tls=True,
            headers={"host": "example.com", "upgrade": "", "connection": "close"}),
    ],
    "jellyfin": [
        Probe("P80", "jellyfin.example.org", "/web/", 301,
            location="https://jellyfin.example.org/web/"),
        Probe("P443", "jellyfin.example.org", "/socket?api_key=K", 101, "U8096", ws=True,
            tls=True,
            headers={"host": "jellyfin.example.org", "upgrade": "websocket",
                     "connection": "upgrade", "x-forwarded-proto": "https",
                     "x-forwarded-protocol": "https", "x-forwarded-host": "jellyfin.example.org"},
        ),
        Probe("P443", "jellyfin.example.org", "/System/Info/Public", 200, "U8096", tls=True,
            headers={"host": "jellyfin.example.org", "upgrade": "", "connection": "",
                     "x-forwarded-proto": "https", "x-forwarded-host": "jellyfin.example.org"},
        ),
    ],
    "jenkins": [
        Probe("P80", "jenkins.example.com", "/wsagents/", 101, "U8080", ws=True,
            headers={"host": "jenkins.example.com", "upgrade": "websocket",
                     "connection": "upgrade", "x-real-ip": "127.0.0.1",
                     "x-forwarded-for": "127.0.0.1", "x-forwarded-proto": "http"},
        ),
        Probe("P80", "jenkins.example.com", "/login?from=%2F", 200, "U8080",
            headers={"host": "jenkins.example.com", "upgrade": "", "connection": "close"}),
        Probe("P80", "jenkins.example.com", "/static/0123abcd/css/style.css", 200, "U8080",
            path="/css/style.css",
            headers={"host": "jenkins.example.com", "upgrade": "", "connection": "close"}),
    ],
    "jitsi-meet": [
        Probe("P80", "jitsi-meet.example.com", "/room1", 301,
            location="https://jitsi-meet.example.com/room1"),
        Probe("P443", "jitsi-meet.example.com", "/xmpp-websocket?room=r1", 101, "U5280",
            path="/xmpp-websocket?prefix=&room=r1", ws=True, tls=True,
            headers={"host": "jitsi-meet.example.com", "upgrade": "websocket",
                     "connection": "upgrade"},
        ),
        Probe("P443", "jitsi-meet.example.com", "/team/xmpp-websocket?room=r1", 101, "U5280",
            path="/xmpp-websocket?prefix=&room=r1", ws=True, tls=True,
            headers={"host": "jitsi-meet.example.com", "upgrade": "websocket",
                     "connection": "upgrade"},
        ),
        Probe("P443", "jitsi-meet.example.com", "/http-bind?room=r1", 200, "U5280", tls=True,
            headers={"host": "jitsi-meet.example.com", "x-forwarded-for": "127.0.0.1",
                     "upgrade": "", "connection": ""},
        ),
    ],
    "mastodon": [
        Probe("P80", "example.com", "/@alice", 301, location="https://example.com/@alice"),
        Probe("P443", "example.com", "/api/v1/streaming?stream=user", 101, "U4000", ws=True,
            tls=True,
            headers={"host": "example.com", "x-real-ip": "127.0.0.1",
                     "x-forwarded-for": "127.0.0.1", "x-forwarded-proto": "https",
                     "upgrade": "websocket", "connection": "upgrade", "proxy": ""},
        ),
        Probe("P443", "example.com", "/api/v1/instance", 200, "U3000", tls=True,
            headers={"host": "example.com", "x-forwarded-proto": "https", "upgrade": "",
                     "connection": "close", "proxy": ""},
        ),
    ],
    "mattermost": [
        Probe("P80", "mattermost.example.com", "/login", 301,
            location="https://mattermost.example.com/login"),
        Probe("P443", "mattermost.example.com", "/api/v4/websocket", 101, "U8065", ws=True,
            tls=True,
            headers={"host": "mattermost.example.com", "upgrade": "websocket",
                     "connection": "upgrade", "x-forwarded-proto": "https",
                     "x-frame-options": "SAMEORIGIN"},
        ),
        Probe("P443", "mattermost.example.com", "/api/v4/system/ping", 200, "U8065", tls=True,
            headers={"host": "mattermost.example.com", "upgrade": "", "connection": "",
                     "x-frame-options": "SAMEORIGIN"},
        ),
    ],
    "misskey": [
        Probe("P80", "example.tld", "/notes", 301, location="https://example.tld/notes"),
        Probe("P443", "example.tld", "/streaming?i=T", 101, "U3000", ws=True, tls=True,
            headers={"host": "example.tld", "x-forwarded-proto": "https", "upgrade": "websocket",
                     "connection": "upgrade"},
        ),
        Probe("P443", "example.tld", "/api/meta", 200, "U3000", tls=True,
            headers={"host": "example.tld", "x-forwarded-proto": "https", "upgrade": "",
                     "connection": "close"},
        ),
    ],
    "netdata": [
        Probe("P80", "netdata.example.com", "/api/v1/info", 200, "U19999",
            headers={"host": "backend", "x-forwarded-host": "netdata.example.com",
                     "x-forwarded-server": "netdata.example.com", "x-forwarded-for": "127.0.0.1",
                     "connection": "keep-alive"},
        ),
        Probe("P80", "netdata.example.com", "/api/v1/stream", 200, "U19999", ws=True,
            headers={"host": "backend", "upgrade": "", "connection": "keep-alive"}),
    ],
    "nextcloud-aio": [
        Probe("P80", "cloud.example.com", "/login", 301,
            location="https://cloud.example.com/login"),
        Probe("P443", "cloud.example.com", "/push/ws", 101, "U11000", ws=True, tls=True,
            headers={"host": "cloud.example.com", "x-forwarded-port": "@@P443@@",
                     "x-forwarded-scheme": "https", "x-forwarded-proto": "https",
                     "x-real-ip": "127.0.0.1", "upgrade": "websocket", "connection": "upgrade"},
        ),
        Probe("P443", "cloud.example.com", "/status.php?format=json", 200, "U11000", tls=True,
            headers={"host": "cloud.example.com", "x-forwarded-port": "@@P443@@", "upgrade": "",
                     "connection": "close"},
        ),
    ],
    "ntfy": [
        Probe("P80", "ntfy.sh", "/mytopic", 302, location="https://ntfy.sh/mytopic"),
        Probe("P80", "ntfy.sh", "/mytopic/ws", 101, "U2586", ws=True,
            headers={"host": "ntfy.sh", "upgrade": "websocket", "connection": "upgrade",
                     "x-forwarded-for": "127.0.0.1"},
        ),
        Probe("P80", "ntfy.sh", "/mytopic/json?poll=1", 200, "U2586",
            headers={"host": "ntfy.sh", "upgrade": "", "connection": "upgrade"}),
        Probe("P443", "ntfy.sh", "/v1/health", 200, "U2586", tls=True,
            headers={"host": "ntfy.sh", "upgrade": "", "connection": "upgrade"}),
    ],
    "odoo": [
        Probe("P80", "odoo.mycompany.com", "/web/login", 301,
            location="https://odoo.mycompany.com/web/login"),
        Probe("P443", "odoo.mycompany.com", "/websocket", 101, "U8072", ws=True, tls=True,
            headers={"host": "odoochat", "upgrade": "websocket", "connection": "upgrade",
                     "x-forwarded-host": "odoo.mycompany.com", "x-forwarded-proto": "https",
                     "x-real-ip": "127.0.0.1"},
        ),
        Probe("P443", "odoo.mycompany.com", "/web/login", 200, "U8069", tls=True,
            headers={"host": "odoo", "upgrade": "", "connection": "",
                     "x-forwarded-host": "odoo.mycompany.com", "x-forwarded-proto": "https"},
        ),
    ],
    "overleaf": [
        Probe("P80", "overleaf.example.com", "/socket.io/?EIO=3&transport=websocket", 101,
            "U3026", ws=True,
            headers={"host": "overleaf.example.com", "x-forwarded-host": "overleaf.example.com",
                     "x-forwarded-proto": "http", "upgrade": "websocket", "connection": "upgrade"},
        ),
        Probe("P80", "overleaf.example.com", "/project", 200, "U4000",
            headers={"host": "overleaf.example.com", "x-forwarded-proto": "", "upgrade": "",
                     "connection": "upgrade"},
        ),
        Probe("P80", "overleaf.example.com", "/project/0123abcd/build/0a-1/output/output.pdf",
            200, "U8080",
            headers={"host": "127.0.0.1:@@U8080@@", "upgrade": "", "connection": ""}),
        Probe("P80", "overleaf.example.com", "/metrics", 404),
    ],
    "rocketchat": [
        Probe("P443", "your_hostname.com", "/websocket", 101, "U3000", ws=True, tls=True,
            headers={"host": "your_hostname.com", "upgrade": "websocket", "connection": "upgrade",
                     "x-forwarded-proto": "https", "x-nginx-proxy": "true"},
        ),
        Probe("P443", "your_hostname.com", "/api/info", 200, "U3000", tls=True,
            headers={"host": "your_hostname.com", "upgrade": "", "connection": "upgrade",
                     "x-nginx-proxy": "true"},
        ),
    ],
    "seafile": [
        Probe("P80", "seafile.example.com", "/notification", 101, "U8083", path="/", ws=True,
            headers={"host": "127.0.0.1:@@U8083@@", "upgrade": "websocket",
                     "connection": "upgrade"}),
        Probe("P80", "seafile.example.com", "/notification/ping", 200, "U8083", path="/ping",
            headers={"host": "127.0.0.1:@@U8083@@", "upgrade": "", "connection": ""}),
    ],
    "signalr": [
        Probe("P80", "example.com", "/hubroute?id=abc", 101, "U5000", ws=True,
            headers={"host": "example.com", "upgrade": "websocket", "connection": "Upgrade",
                     "x-forwarded-proto": "http"},
        ),
        Probe("P80", "example.com", "/hubroute/negotiate?negotiateVersion=1", 200, "U5000",
            headers={"host": "example.com", "upgrade": "", "connection": "keep-alive"}),
    ],
    "uptime-kuma": [
        Probe("P443", "sub.domain.com", "/socket.io/?EIO=4&transport=websocket", 101, "U3001",
            ws=True, tls=True,
            headers={"host": "sub.domain.com", "x-real-ip": "127.0.0.1", "upgrade": "websocket",
                     "connection": "upgrade"},
        ),
        Probe("P443", "sub.domain.com", "/dashboard", 200, "U3001", tls=True,
            headers={"host": "sub.domain.com", "upgrade": "", "connection": "upgrade"}),
    ],
    "vaultwarden": [
        Probe("P80", "vaultwarden.example.tld", "/admin", 301,
            location="https://vaultwarden.example.tld/admin"),
        Probe("P443", "vaultwarden.example.tld", "/notifications/hub?access_token=T", 101,
            "U8080", ws=True, tls=True,
            headers={"x-forwarded-for": "127.0.0.1", "host": "vaultwarden.example.tld",
                     "x-real-ip": "127.0.0.1", "x-forwarded-proto": "https",
                     "upgrade": "websocket", "connection": "upgrade"},
        ),
        Probe("P443", "vaultwarden.example.tld", "/api/alive", 200, "U8080", tls=True,
            headers={"x-forwarded-for": "127.0.0.1", "host": "vaultwarden.example.tld",
                     "upgrade": "", "connection": ""},
        ),
    ],
    "zammad": [
        Probe("P80", "localhost", "/ws", 101, "U6042", ws=True,
            headers={"host": "zammad-websocket", "upgrade": "websocket", "connection": "Upgrade",
                     "client_ip": "127.0.0.1", "x-forwarded-proto": "http"},
        ),
        Probe("P80", "localhost", "/api/v1/getting_started", 200, "U3000",
            headers={"host": "localhost", "client_ip": "127.0.0.1", "x-forwarded-user": "",
                     "upgrade": "", "connection": ""},
        ),
    ],
    "code-server": [
        Probe("P80", "mydomain.com", "/stable-1/?reconnectionToken=x", 101, "U8080", ws=True,
            headers={"host": "mydomain.com", "upgrade": "websocket", "connection": "upgrade",
                     "accept-encoding": "gzip"},
        ),
        Probe("P80", "mydomain.com", "/?folder=/home", 200, "U8080",
            headers={"host": "mydomain.com", "upgrade": "", "connection": "upgrade",
                     "accept-encoding": "gzip"},
        ),
    ],
    "gitea": [
        Probe("P80", "git.example.com", "/user/login?redirect_to=%2F", 200, "U3000",
            headers={"x-forwarded-for": "127.0.0.1", "host": "git.example.com",
                     "x-real-ip": "127.0.0.1", "x-forwarded-proto": "http", "connection": "close",
                     "upgrade": ""},
        ),
        Probe("P80", "git.example.com", "/-/ws", 101, "U3000", ws=True,
            headers={"x-forwarded-for": "127.0.0.1", "host": "git.example.com",
                     "upgrade": "websocket", "connection": "Upgrade"},
        ),
    ],
    "guacamole": [
        Probe("P80", "guac.example.com", "/guacamole", 301,
            location="http://guac.example.com:@@P80@@/guacamole/"),
        Probe("P80", "guac.example.com", "/guacamole/websocket-tunnel?token=T", 101, "U8080",
            ws=True,
            headers={"x-forwarded-for": "127.0.0.1", "host": "127.0.0.1:@@U8080@@",
                     "upgrade": "websocket", "connection": "Upgrade"},
        ),
        Probe("P80", "guac.example.com", "/guacamole/api/tokens", 200, "U8080",
            headers={"x-forwarded-for": "127.0.0.1", "host": "127.0.0.1:@@U8080@@", "upgrade": "",
                     "connection": "close"},
        ),
    ],
    "immich": [
        Probe("P80", "immich.example.org", "/api/socket.io/?EIO=4&transport=websocket", 101,
            "U2283", ws=True,
            headers={"x-forwarded-for": "127.0.0.1", "host": "immich.example.org",
                     "x-real-ip": "127.0.0.1", "x-forwarded-proto": "http",
                     "upgrade": "websocket", "connection": "upgrade"},
        ),
        Probe("P80", "immich.example.org", "/api/server/ping", 200, "U2283",
            headers={"x-forwarded-for": "127.0.0.1", "host": "immich.example.org", "upgrade": "",
                     "connection": "upgrade"},
        ),
    ],
    "jupyterhub": [
        Probe("P443", "HUB.DOMAIN.TLD", "/.well-known/acme-challenge/t", 404, tls=True),
        Probe("P80", "HUB.DOMAIN.TLD", "/hub/login?next=%2F", 302,
            location="https://hub.domain.tld/hub/login?next=%2F"),
        Probe("P443", "HUB.DOMAIN.TLD", "/user/ada/api/kernels/k1/channels", 101, "U8000",
            ws=True, tls=True,
            headers={"x-forwarded-for": "127.0.0.1", "host": "HUB.DOMAIN.TLD",
                     "x-real-ip": "127.0.0.1", "upgrade": "websocket", "connection": "upgrade",
                     "x-scheme": "https"},
        ),
        Probe("P443", "HUB.DOMAIN.TLD", "/hub/api", 200, "U8000", tls=True,
            headers={"x-forwarded-for": "127.0.0.1", "host": "HUB.DOMAIN.TLD", "upgrade": "",
                     "connection": "close", "x-scheme": "https"},
        ),
    ],
    "nginx-websocket": [
        Probe("P80", "chat.example.com", "/chat/room1", 101, "U8000", ws=True,
            headers={"host": "backend", "upgrade": "websocket", "connection": "upgrade"}),
        Probe("P80", "chat.example.com", "/chat/history", 200, "U8000",
            headers={"host": "backend", "upgrade": "", "connection": "close"}),
    ],
    "plausible": [
        Probe("P80", "example.com", "/api/event", 200, "U8000",
            headers={"x-forwarded-for": "127.0.0.1", "host": "127.0.0.1:@@U8000@@",
                     "connection": ""}),
        Probe("P80", "example.com", "/live/websocket?vsn=2.0.0", 200, "U8000", ws=True,
            headers={"x-forwarded-for": "127.0.0.1", "host": "127.0.0.1:@@U8000@@", "upgrade": "",
                     "connection": ""},
        ),
    ],
    "socketio": [
        Probe("P80", "example.com", "/", 200, differs=(404, STATIC_FILES)),
        Probe("P80", "example.com", "/socket.io/?EIO=4&transport=websocket", 101, "U3000",
            ws=True,
            headers={"x-forwarded-for": "127.0.0.1", "host": "example.com",
                     "upgrade": "websocket", "connection": "upgrade"},
        ),
        Probe("P80", "example.com", "/socket.io/?EIO=4&transport=polling", 200, "U3000",
            headers={"x-forwarded-for": "127.0.0.1", "host": "example.com", "upgrade": "",
                     "connection": "upgrade"},
        ),
    ],
    "synapse": [
        Probe("P443", "matrix.example.com", "/", 200, tls=True, differs=(404, STATIC_FILES)),
        Probe("P443", "matrix.example.com", "/_matrix/client/versions", 200, "U8008", tls=True,
            headers={"x-forwarded-for": "127.0.0.1", "host": "matrix.example.com:@@P443@@",
                     "x-forwarded-proto": "https", "connection": ""},
        ),
        Probe("P8448", "example.com", "/_matrix/federation/v1/version", 200, "U8008", tls=True,
            headers={"x-forwarded-for": "127.0.0.1", "host": "example.com:@@P8448@@",
                     "x-forwarded-proto": "https", "connection": ""},
        ),
    ],
}
# fmt: on
