"""Listening sockets: which to open for a configuration, with ``listen``'s options, and how
they are kept, cloned (``reuseport``) and dropped across reloads and upgrades.

Which sockets (``ngx_http_init_listening``): on a port where a wildcard address is listened
on, specific addresses of the same family are served by the wildcard socket, unless their
``listen`` has ``bind`` or another socket option; each ``listen ADDR:0`` (wsgate's, for
tests) and each ``unix:`` path is a socket of its own.  The options are set as nginx's
``ngx_open_listening_sockets`` and ``ngx_configure_listening_sockets`` set them.
"""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wsgate.config.model import Config, Listen, Server, SslServer
from wsgate.errors import ConfigError
from wsgate.server.tls import GroupTls

if TYPE_CHECKING:
    from wsgate.observability.logs import ErrorLogger
    from wsgate.server.gateway import _Acceptor, _Listener

__all__ = [
    "BACKLOG",
    "BindKey",
    "ListenGroup",
    "addr_text",
    "bind_keys",
    "close_dropped",
    "close_group",
    "configure_socket",
    "delete_dropped_unix_sockets",
    "dropped_sockets",
    "open_groups",
    "remove_unix_sockets",
    "socket_options",
]

#: nginx's default ``listen ... backlog=`` (NGX_LISTEN_BACKLOG) on Linux.
BACKLOG = 511

BindKey = tuple[str, int, int]  # host, configured port, index (port-0 listens stay apart)


def bind_keys(config: Config) -> dict[BindKey, list[tuple[Server, Listen]]]:
    """Which sockets to open and which (server, listen) pairs each one serves.

    ``ngx_http_init_listening``: on a port with a wildcard address, a specific address is
    served by the wildcard's socket unless its ``listen`` has ``bind`` or another socket
    option (``lsopt.bind``); a ``unix:`` path is a socket of its own."""
    wildcard_ports = {
        (lst.port, lst.family_v6)
        for s in config.http.servers
        for lst in s.listens
        if lst.is_wildcard and lst.port != 0
    }
    own = {(lst.host, lst.port) for s in config.http.servers for lst in s.listens if lst.bind}
    keys: dict[BindKey, list[tuple[Server, Listen]]] = {}
    for server in config.http.servers:
        for lst in server.listens:
            if (
                lst.port != 0
                and not lst.is_wildcard
                and (lst.host, lst.port) not in own
                and (lst.port, lst.family_v6) in wildcard_ports
            ):
                host = "::" if lst.family_v6 else "0.0.0.0"
            else:
                host = lst.host
            # Each ``listen ADDR:0`` gets a socket (and an ephemeral port) of its own.
            index = len(keys) if lst.port == 0 and not lst.is_unix else 0
            keys.setdefault((host, lst.port, index), []).append((server, lst))
    return keys


def socket_options(key: BindKey, pairs: list[tuple[Server, Listen]]) -> tuple[Listen, float]:
    """The ``listen`` whose options the socket of ``key`` gets (the one of its address with
    options, as nginx copies ``lsopt`` of that line to the address; else the first of its
    address, else defaults), and ``client_header_timeout`` of its first server (``deferred``'s
    ``TCP_DEFER_ACCEPT`` time, nginx's ``post_accept_timeout``)."""
    host, port, _ = key
    mine = [lst for _, lst in pairs if lst.host == host]
    chosen = next((lst for lst in mine if lst.options), mine[0] if mine else Listen(host, port))
    return chosen, pairs[0][0].client_header_timeout if pairs else 60.0


@dataclass
class ListenGroup:
    """One listening socket and the servers that answer on it."""

    key: BindKey
    pairs: list[tuple[Server, Listen]]
    sock: socket.socket | None = None
    #: Accepting on ``sock`` (None while paused or not started).
    server: _Listener | None = None
    port: int = 0
    #: TLS contexts when any ``listen`` on this socket has ``ssl`` (built from this config).
    tls: GroupTls | None = None
    #: The socket's protocol factory; a reload that keeps the socket points it at the new group.
    acceptor: _Acceptor | None = None
    #: ``listen ... reuseport`` under a master: one more socket per worker after the first,
    #: bound to the same address with ``SO_REUSEPORT`` (nginx's ``ngx_clone_listening``);
    #: worker N accepts on ``clones[N - 1]``, worker 0 on ``sock``.
    clones: list[socket.socket] = field(default_factory=list)
    _cache: dict[str, tuple[list[Server], Server]] = field(default_factory=dict)
    _locals: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    _proxy_protocol: dict[str, bool] = field(default_factory=dict)

    def for_worker(self, index: int) -> ListenGroup:
        """The group as worker ``index`` sees it: with ``reuseport``, its own socket."""
        if not self.clones or index == 0:
            return self
        sock = self.clones[(index - 1) % len(self.clones)]
        return ListenGroup(self.key, self.pairs, sock, None, self.port, self.tls)

    def sockets(self) -> list[socket.socket]:
        """Every socket of the group (its clones too)."""
        return ([self.sock] if self.sock is not None else []) + self.clones

    def local_address(self, host: str, port: int) -> tuple[str, int]:
        """``(host, port)``, one copy per local address for all the connections that arrive
        on it (each keeps them, and its tunnel's request too, for as long as it is open)."""
        key = (host, port)
        return self._locals.setdefault(key, key)

    def proxy_protocol(self, local_addr: str) -> bool:
        """Whether connections to ``local_addr`` begin with a PROXY protocol header
        (``listen ... proxy_protocol``; the ``listen`` chosen as for :meth:`candidates`)."""
        hit = self._proxy_protocol.get(local_addr)
        if hit is None:
            listens = [lst for _, lst in self.pairs]
            exact = [lst for lst in listens if lst.host == local_addr]
            chosen = exact or [lst for lst in listens if lst.is_wildcard] or listens
            hit = self._proxy_protocol[local_addr] = any(lst.proxy_protocol for lst in chosen)
        return hit

    def candidates(self, local_addr: str) -> tuple[list[Server], Server]:
        """Servers for a connection that arrived on ``local_addr`` (nginx: address first)."""
        hit = self._cache.get(local_addr)
        if hit is not None:
            return hit
        exact = [(s, lst) for s, lst in self.pairs if lst.host == local_addr]
        chosen = exact or [(s, lst) for s, lst in self.pairs if lst.is_wildcard] or self.pairs
        servers: list[Server] = []
        for s, _ in chosen:
            if s not in servers:
                servers.append(s)
        default = next((s for s, lst in chosen if lst.default_server), servers[0])
        self._cache[local_addr] = (servers, default)
        return servers, default


def dropped_sockets(
    old: dict[BindKey, ListenGroup], new: dict[BindKey, ListenGroup]
) -> list[socket.socket]:
    """The sockets of ``old`` that ``new`` does not keep (a ``reuseport`` clone too)."""
    kept = {id(sock) for g in new.values() for sock in g.sockets()}
    return [sock for g in old.values() for sock in g.sockets() if id(sock) not in kept]


def close_dropped(old: ListenGroup, new: ListenGroup) -> None:
    kept = {id(sock) for sock in new.sockets()}
    for sock in old.clones:
        if id(sock) not in kept:
            sock.close()


def close_group(group: ListenGroup) -> None:
    """Stop accepting on ``group`` and close this process's copy of its socket."""
    if group.server is not None:
        group.server.close()
        group.server = None
    for sock in group.sockets():
        sock.close()


def _open(key: BindKey, lst: Listen, defer: float, port: int | None = None) -> socket.socket:
    """A listening socket for ``key`` with ``lst``'s options (``ngx_open_listening_sockets``
    and ``ngx_configure_listening_sockets``); ``port`` overrides the key's (a ``reuseport``
    clone of a ``listen ADDR:0`` socket binds the port its first socket got)."""
    host, key_port, _ = key
    if host.startswith("unix:"):
        family = socket.AF_UNIX
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            sock.bind(host[5:])
            # nginx: "chmod() ... S_IRUSR|S_IWUSR|S_IRGRP|S_IWGRP|S_IROTH|S_IWOTH".
            os.chmod(host[5:], 0o666)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if lst.reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(lst.ipv6only))
            sock.bind((host, key_port if port is None else port))
        configure_socket(sock, lst, defer)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def configure_socket(sock: socket.socket, lst: Listen, defer: float) -> None:
    """``listen``'s options on a bound socket, then ``listen(backlog)``; also applied to a
    socket a reload keeps, as nginx's ``ngx_configure_listening_sockets`` does."""
    tcp = sock.family != socket.AF_UNIX
    if lst.rcvbuf != -1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, lst.rcvbuf)
    if lst.sndbuf != -1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, lst.sndbuf)
    if lst.so_keepalive:
        # Accepted sockets inherit SO_KEEPALIVE and the TCP_KEEP* values on Linux.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(lst.so_keepalive == 1))
        if tcp:
            for opt, value in (
                (socket.TCP_KEEPIDLE, lst.keepidle),
                (socket.TCP_KEEPINTVL, lst.keepintvl),
                (socket.TCP_KEEPCNT, lst.keepcnt),
            ):
                if value:
                    sock.setsockopt(socket.IPPROTO_TCP, opt, value)
    if tcp and lst.fastopen != -1:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, lst.fastopen)
    if tcp and lst.deferred:
        # nginx: "timeout = ls->post_accept_timeout / 1000" (client_header_timeout).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, max(int(defer), 1))
    sock.listen(lst.backlog)


def open_groups(
    config: Config, current: dict[BindKey, ListenGroup], workers: int = 1
) -> dict[BindKey, ListenGroup]:
    """The listen groups for ``config``: sockets already open in ``current`` are kept, the
    others are bound now (before any event loop exists, so the CLI can bind, then daemonize).
    A bind failure closes what this call opened and raises nginx's ``bind() ... failed``.
    ``workers``: how many workers accept (a ``reuseport`` socket is opened once for each).
    """
    groups: dict[BindKey, ListenGroup] = {}
    opened: list[socket.socket] = []
    keys = bind_keys(config)
    # Certificates are read now, before any socket is touched, so a bad one keeps the old
    # configuration on reload (nginx: the new cycle fails, the old one goes on).
    contexts: dict[SslServer, ssl.SSLContext] = {}
    tls = {
        key: GroupTls(pairs, contexts)
        for key, pairs in keys.items()
        if any(lst.ssl for _, lst in pairs)
    }
    for key, pairs in keys.items():
        lst, defer = socket_options(key, pairs)
        old = current.get(key)
        clones = workers - 1 if lst.reuseport and not lst.is_unix else 0
        try:
            if old is not None and old.sock is not None:
                for kept in old.sockets():
                    try:
                        configure_socket(kept, lst, defer)
                    except OSError:
                        pass  # nginx logs "setsockopt() ... failed, ignored" and goes on
                group = ListenGroup(
                    key, pairs, old.sock, old.server, old.port, tls.get(key), old.acceptor
                )
                # A reload with fewer workers drops the clones nobody would accept on.
                group.clones = list(old.clones[:clones])
            else:
                sock = _open(key, lst, defer)
                opened.append(sock)
                port = sock.getsockname()[1] if sock.family != socket.AF_UNIX else 0
                group = ListenGroup(key, pairs, sock, None, port, tls.get(key))
            while len(group.clones) < clones:
                clone = _open(key, lst, defer, group.port)
                opened.append(clone)
                group.clones.append(clone)
        except OSError as exc:
            for opened_sock in opened:
                opened_sock.close()
            raise ConfigError(
                f"bind() to {addr_text(key)} failed ({exc.errno}: {exc.strerror})"
            ) from exc
        groups[key] = group
    return groups


def addr_text(key: BindKey) -> str:
    """nginx's ``addr_text`` of a bind key: ``127.0.0.1:80``, ``[::1]:80``, ``unix:/path``."""
    host, port, _ = key
    if host.startswith("unix:"):
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def remove_unix_sockets(groups: dict[BindKey, ListenGroup]) -> None:
    """The files of ``listen unix:`` sockets, removed when the instance exits
    (``ngx_close_listening_sockets``: by the master or the single process, unless a new
    binary runs on them or they were inherited from a master that still runs)."""
    for host, _, _ in groups:
        if host.startswith("unix:"):
            try:
                os.unlink(host[5:])
            except OSError:
                pass


def delete_dropped_unix_sockets(
    old: dict[BindKey, ListenGroup], new: dict[BindKey, ListenGroup], error_log: ErrorLogger
) -> None:
    """A reload that drops a ``listen unix:`` removes its file (``ngx_init_cycle``:
    ``[warn] deleting socket PATH``)."""
    for key in old:
        if key[0].startswith("unix:") and key not in new:
            path = key[0][5:]
            error_log.log("warn", f"deleting socket {path}")
            try:
                os.unlink(path)
            except OSError as exc:
                error_log.log("emerg", f"unlink() {path} failed ({exc.errno}: {exc.strerror})")
