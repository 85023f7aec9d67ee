"""Opening a connection to an upstream server: TCP or a unix socket, then TLS for
``proxy_pass https://``.

The handshake is part of connecting and is bounded by the caller's ``proxy_connect_timeout``,
as in nginx (``ngx_http_upstream_ssl_init_connection`` arms the connect timeout).  A failed
handshake, a chain that does not verify or a certificate that does not match
``proxy_ssl_name`` raises :class:`HandshakeFailed` with nginx's words for the error log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from wsgate.proxy import fdrelay
from wsgate.proxy.endpoint import Endpoint
from wsgate.upstream.tls import (
    PENDING_SESSION,
    UpstreamTls,
    chain_too_long,
    handshake_error,
    match_name,
    sni_name,
)

if TYPE_CHECKING:
    from wsgate.upstream.roundrobin import Peer

__all__ = [
    "CONNECTING",
    "HANDSHAKING",
    "HandshakeFailed",
    "UpstreamOpen",
    "save_session",
]

CONNECTING = "connecting to upstream"
HANDSHAKING = "SSL handshaking to upstream"


class HandshakeFailed(Exception):
    """The TLS handshake with an upstream failed; ``args[0]`` is nginx's text for it."""


class UpstreamOpen:
    """One connection to an upstream server, TCP (or Unix socket) then TLS when ``tls`` is set.

    :meth:`run` raises ``OSError`` for a failed connect, :class:`HandshakeFailed` for TLS;
    the caller bounds it with a timeout and reads :attr:`phase` ("connecting to upstream" or
    "SSL handshaking to upstream") to word a timeout, and aborts :attr:`ep` if it is set.
    """

    __slots__ = ("loop", "peer", "tls", "name", "key", "phase", "ep", "factory")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        peer: Peer,
        tls: UpstreamTls | None = None,
        name: str = "",
        key: Hashable = None,
        factory: Callable[[], Endpoint] | None = None,
    ) -> None:
        """``factory`` makes the connection's protocol (a plain :class:`Endpoint` if None)."""
        self.loop = loop
        self.factory = factory or (lambda: Endpoint(loop))
        self.peer = peer
        self.tls = tls
        self.name = name
        self.key = key if key is not None else peer
        self.phase = CONNECTING
        self.ep: Endpoint | None = None

    async def run(self) -> Endpoint:
        loop, peer, tls = self.loop, self.peer, self.tls
        # Set before connecting: uvloop runs the TLS protocol in the context the transport
        # copied when it was created (wsgate.upstream.tls, session reuse).  Only for TLS: the
        # context a plain transport copies would keep a changed one as long as it lives.
        token = PENDING_SESSION.set(tls.session(self.key)) if tls is not None else None
        try:
            if peer.name.startswith("unix:"):
                _, ep = await loop.create_unix_connection(self.factory, peer.host)
            elif tls is None and fdrelay.AVAILABLE:
                # Plain TCP on the compiled transport from the start (fdrelay.py); a name
                # that is not a numeric address goes through the loop.
                proto = self.factory()
                if not await fdrelay.open_connection(loop, peer.host, peer.port, proto):
                    await loop.create_connection(lambda: proto, peer.host, peer.port)
                ep = proto
            else:
                _, ep = await loop.create_connection(self.factory, peer.host, peer.port)
            self.ep = ep
            if tls is None:
                return ep
            self.phase = HANDSHAKING
            await self._handshake(ep, tls)
            return ep
        finally:
            if token is not None:
                PENDING_SESSION.reset(token)

    async def _handshake(self, ep: Endpoint, tls: UpstreamTls) -> None:
        settings = tls.settings
        assert ep.transport is not None
        try:
            transport = await self.loop.start_tls(
                ep.transport,
                ep,
                tls.context,
                server_hostname=sni_name(settings, self.name),
                ssl_handshake_timeout=3600.0,  # the caller's proxy_connect_timeout bounds it
            )
        except (OSError, EOFError) as exc:
            tls.forget(self.key)
            raise HandshakeFailed(handshake_error(exc)) from None
        if transport is None:  # pragma: no cover - only when the loop is closing
            raise HandshakeFailed("peer closed connection in SSL handshake")
        ep.transport = transport
        if not settings.verify:
            return
        # "proxy_ssl_verify: Enables or disables verification of the proxied HTTPS server
        # certificate": the chain was verified in the handshake; depth and name are checked
        # here, as ngx_http_upstream_ssl_handshake does after SSL_do_handshake.
        sslobj = transport.get_extra_info("ssl_object")
        inner = getattr(sslobj, "_sslobj", None)
        chain = getattr(inner, "get_verified_chain", lambda: None)()
        if chain:
            too_long = chain_too_long(len(chain), settings.verify_depth)
            if too_long is not None:
                tls.forget(self.key)
                code, text = too_long
                raise HandshakeFailed(f"upstream SSL certificate verify error: ({code}:{text})")
        cert = transport.get_extra_info("peercert") or {}
        if not match_name(cert, self.name):
            tls.forget(self.key)
            raise HandshakeFailed(f'upstream SSL certificate does not match "{self.name}"')


def save_session(tls: UpstreamTls, key: Hashable, ep: Endpoint) -> None:
    """Keep the TLS session of ``ep`` for the next connection (TLS 1.3 tickets arrive after
    the handshake, so this is called once the response head was read)."""
    if ep.transport is None or ep.closed:
        return
    sslobj = ep.transport.get_extra_info("ssl_object")
    if sslobj is not None:
        tls.save(key, sslobj.session)
