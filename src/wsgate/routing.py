"""Request routing: request-target parsing, ``server_name`` and ``location`` selection.

Pure functions, no sockets: the front connection hands in strings and gets back model objects.
Each function follows one piece of nginx and names it; see NGINX-SEMANTICS.md §1 and §2.

Text convention: nginx works on bytes.  wsgate keeps URIs as ``str`` where every byte that is
not valid UTF-8 is a lone surrogate (``bytes.decode("utf-8", "surrogateescape")``), so a
decoded ``%C3%A9`` is ``"é"`` and a decoded ``%FF`` survives a round trip unchanged.  Callers
that hold the raw request line as bytes should decode it the same way.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping, Sequence

from wsgate.config.model import Listen, Location, ProxyPass, Server
from wsgate.errors import HttpError

__all__ = [
    "candidates_for",
    "escape_uri",
    "find_location",
    "find_location_match",
    "find_named_location",
    "needs_slash_redirect",
    "normalize_uri",
    "proxy_uri",
    "request_uri",
    "select_server",
    "select_server_match",
    "split_target",
    "target_host",
]

_INVALID_REQUEST = "client sent invalid request"

# --------------------------------------------------------------------------------------------
# Request target
# --------------------------------------------------------------------------------------------

_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://([^/?#]*)")


def split_target(target: str) -> tuple[str, str]:
    """Split a request-target into ``(path, args)``, the raw (still escaped) parts.

    Absolute-form ``http://host/p?x`` gives ``("/p", "x")`` and ``http://host`` gives
    ``("/", "")`` (nginx's ``empty_path_in_uri``).  ``*`` (asterisk-form) comes back as
    ``("*", "")``; nginx answers it with 400, which :func:`normalize_uri` raises.  A fragment
    (``#...``) is dropped: nginx's parser ends the URI and the arguments at ``#``.
    """
    if target == "*":
        return "*", ""
    if not target.startswith("/"):
        m = _ABSOLUTE.match(target)
        if m is None:
            raise HttpError(400, _INVALID_REQUEST)
        target = target[m.end() :]
        if not target.startswith("/"):
            target = "/" + target
    target = target.split("#", 1)[0]
    path, _, args = target.partition("?")
    return path, args


def target_host(target: str) -> str | None:
    """The ``host[:port]`` of an absolute-form request-target, else ``None``.

    nginx: the host in the request line overrides the ``Host`` header (RFC 9112 §3.2.2).
    The caller validates and lowercases it like a ``Host`` value.
    """
    m = _ABSOLUTE.match(target)
    if m is None:
        return None
    return m.group(1).rpartition("@")[2]


def request_uri(target: str) -> str:
    """``$request_uri``: the request-target without scheme and host, as the client sent it.

    For absolute-form nginx keeps the part from the path on (``r->unparsed_uri``).
    """
    if target.startswith("/") or target == "*":
        return target
    m = _ABSOLUTE.match(target)
    return target if m is None else target[m.end() :]


_USUAL, _SLASH, _DOT, _DOT_DOT, _QUOTED, _QUOTED_SECOND = range(6)
_C_SLASH, _C_DOT, _C_PCT, _C_QM, _C_HASH = (ord(c) for c in "/.%?#")
_HEX = {ord(c): int(c, 16) for c in "0123456789abcdefABCDEF"}
_COMPLEX = ("%", "/.", "//", "#")


def _dot_dot(u: bytearray) -> None:
    # ``u`` ends with "/..": drop that and the segment before it (nginx: ``u -= 4`` and scan
    # back to the previous "/"); there is none above the root.
    i = len(u) - 4
    while True:
        if i < 0:
            raise HttpError(400, _INVALID_REQUEST)
        if u[i] == _C_SLASH:
            del u[i + 1 :]
            return
        i -= 1


def normalize_uri(path: str, *, merge_slashes: bool = True) -> str:
    """``$uri`` from the path part of a request-target (``ngx_http_parse_complex_uri``).

    "nginx checks locations against the normalized URI: it decodes text encoded in the
    ``%XX`` form, resolves references to relative path components ``.`` and ``..``, and
    possibly compresses two or more adjacent slashes into a single slash" (core module docs,
    ``location``).  A decoded byte goes through the same state machine, so ``%2F`` is a
    ``/`` and ``%2E%2E`` a ``..``; decoded ``%``, ``#``, ``?`` stay literal; ``%00``, a bad
    escape or ``..`` above the root is ``400`` ("client sent invalid request").
    """
    if not path.startswith("/"):
        raise HttpError(400, _INVALID_REQUEST)
    if not any(s in path for s in _COMPLEX):
        return path  # nginx runs the complex parser only when the request line needs it
    data = path.encode("utf-8", "surrogateescape")
    u = bytearray()
    state = quoted_state = _USUAL
    decoded = 0
    ch = 0
    i, n = 0, len(data)
    again = False  # re-run the state machine on a decoded byte
    finished = False  # ended at "#" or "?": nginx's ``goto done`` skips the end fix-ups
    while True:
        if again:
            again = False
        elif i < n:
            ch = data[i]
            i += 1
        else:
            break
        if state == _USUAL:
            if ch == _C_SLASH:
                state = _SLASH
                u.append(ch)
            elif ch == _C_PCT:
                quoted_state, state = state, _QUOTED
            elif ch in (_C_QM, _C_HASH):
                finished = True
                break
            else:
                u.append(ch)
        elif state == _SLASH:
            if ch == _C_SLASH:
                if not merge_slashes:
                    u.append(ch)
            elif ch == _C_DOT:
                state = _DOT
                u.append(ch)
            elif ch == _C_PCT:
                quoted_state, state = state, _QUOTED
            elif ch in (_C_QM, _C_HASH):
                finished = True
                break
            else:
                state = _USUAL
                u.append(ch)
        elif state == _DOT:
            if ch == _C_SLASH:
                state = _SLASH
                u.pop()
            elif ch == _C_DOT:
                state = _DOT_DOT
                u.append(ch)
            elif ch == _C_PCT:
                quoted_state, state = state, _QUOTED
            elif ch in (_C_QM, _C_HASH):
                u.pop()
                finished = True
                break
            else:
                state = _USUAL
                u.append(ch)
        elif state == _DOT_DOT:
            if ch in (_C_SLASH, _C_QM, _C_HASH):
                _dot_dot(u)
                if ch != _C_SLASH:
                    finished = True
                    break
                state = _SLASH
            elif ch == _C_PCT:
                quoted_state, state = state, _QUOTED
            else:
                state = _USUAL
                u.append(ch)
        elif state == _QUOTED:
            if ch not in _HEX:
                raise HttpError(400, _INVALID_REQUEST)
            decoded = _HEX[ch]
            state = _QUOTED_SECOND
        else:  # _QUOTED_SECOND
            if ch not in _HEX:
                raise HttpError(400, _INVALID_REQUEST)
            ch = (decoded << 4) + _HEX[ch]
            if ch in (_C_PCT, _C_HASH, _C_QM):
                state = _USUAL
                u.append(ch)
            elif ch == 0:
                raise HttpError(400, _INVALID_REQUEST)
            else:
                state = quoted_state
                again = True
    if not finished:
        if state in (_QUOTED, _QUOTED_SECOND):
            raise HttpError(400, _INVALID_REQUEST)
        if state == _DOT:
            u.pop()
        elif state == _DOT_DOT:
            _dot_dot(u)
    return u.decode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------------------------
# Server selection
# --------------------------------------------------------------------------------------------


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _listen_matches(listen: Listen, local: str, local_ip: object) -> bool:
    if listen.is_wildcard:
        if listen.host == "0.0.0.0":
            return isinstance(local_ip, ipaddress.IPv4Address)
        # "::" takes IPv6 and, with ipv6only=off, IPv4 (mapped or not).
        return isinstance(local_ip, ipaddress.IPv6Address) or (
            not listen.ipv6only and isinstance(local_ip, ipaddress.IPv4Address)
        )
    if local_ip is None:
        return listen.host == local
    return _ip(listen.host) == local_ip


def candidates_for(
    servers: Sequence[Server],
    local_host: str,
    port: int,
    bound_ports: Mapping[tuple[str, int], int] | None = None,
) -> tuple[list[Server], Server]:
    """The servers that may answer a connection accepted on ``local_host:port``, and the default.

    "nginx first tests the IP address and port of the request against the listen directives
    of the server blocks" (request_processing.html).  Servers with a ``listen`` on exactly
    that IP:port are the only candidates when any exists; otherwise those with a wildcard
    listen on the port.  The default is the candidate whose matching ``listen`` has
    ``default_server``, else the first one.

    ``bound_ports`` maps a configured ``(listen.host, listen.port)`` to the port the socket
    really got; the listener layer fills it for ``listen ...:0`` (a wsgate extension: the
    kernel picks the port).  The result depends only on the local address, so the caller
    computes it once per listening socket, not per request.  Raises :class:`LookupError` if
    no server listens there (the caller only asks for addresses it bound).
    """
    ports = bound_ports or {}
    local_ip = _ip(local_host)
    exact: list[tuple[Server, Listen]] = []
    wild: list[tuple[Server, Listen]] = []
    for server in servers:
        got_exact = got_wild = False
        for listen in server.listens:
            if ports.get((listen.host, listen.port), listen.port) != port:
                continue
            if not _listen_matches(listen, local_host, local_ip):
                continue
            if listen.is_wildcard:
                if not got_wild:
                    wild.append((server, listen))
                    got_wild = True
            elif not got_exact:
                exact.append((server, listen))
                got_exact = True
    chosen = exact or wild
    if not chosen:
        raise LookupError(f"no server listens on {local_host}:{port}")
    default = next((s for s, lst in chosen if lst.default_server), chosen[0][0])
    return [s for s, _ in chosen], default


def select_server_match(
    servers: Sequence[Server], host: str | None, default: Server
) -> tuple[Server, tuple[str, ...]]:
    """:func:`select_server` plus the regex captures of a regex ``server_name`` (else ``()``).

    Unmatched groups are ``""``, as nginx's ``$1``..``$9`` are.
    """
    if not host:
        # "If no server_name is defined in a server block then nginx uses the empty name
        # as the server name" (server_names.html); a request with no Host looks it up.
        for server in servers:
            if server.has_empty_name:
                return server, ()
        return default, ()
    host = host.lower()
    prefix: Server | None = None
    prefix_len = 0
    suffix: Server | None = None
    suffix_len = 0
    for server in servers:
        for name in server.names:
            kind, value = name.kind, name.value
            if kind == "exact":
                if value == host:
                    return server, ()
            elif kind == "prefix_wildcard":
                # ".x.org" is also the exact name "x.org" (nginx adds it to the exact hash).
                if name.also_bare and host == value[1:]:
                    return server, ()
                if len(value) > prefix_len and host.endswith(value):
                    prefix, prefix_len = server, len(value)
            elif kind == "suffix_wildcard":
                if len(value) > suffix_len and len(host) > len(value) and host.startswith(value):
                    suffix, suffix_len = server, len(value)
    if prefix is not None:
        return prefix, ()
    if suffix is not None:
        return suffix, ()
    for server in servers:
        for name in server.names:
            if name.kind == "regex" and name.regex is not None:
                m = name.regex.search(host)
                if m is not None:
                    return server, tuple(g or "" for g in m.groups())
    return default, ()


def select_server(servers: Sequence[Server], host: str | None, default: Server) -> Server:
    """Choose the virtual server for ``host`` among the candidates of one listen address.

    "When searching for a virtual server by name, if name matches more than one of the
    specified variants ... the first matching variant will be chosen, in the following order
    of precedence: exact name; longest wildcard name starting with an asterisk ...; longest
    wildcard name ending with an asterisk ...; first matching regular expression (in order of
    appearance in a configuration file)" (server_names.html).  ``host`` must already be
    validated (``ngx_http_validate_host``: port and trailing dot cut); ``None`` or ``""``
    (HTTP/1.0 without Host) looks up the empty name.  Ties between equal names go to the
    server listed first, as nginx keeps the first of "conflicting server name"s.
    """
    return select_server_match(servers, host, default)[0]


# --------------------------------------------------------------------------------------------
# Location selection
# --------------------------------------------------------------------------------------------

_OK, _DONE, _AGAIN, _DECLINED = range(4)


@functools.lru_cache(maxsize=256)
def _compile(name: str, caseless: bool) -> re.Pattern[str]:
    return re.compile(name, re.IGNORECASE if caseless else 0)


def _regex(location: Location) -> re.Pattern[str]:
    if location.regex is not None:
        return location.regex
    return _compile(location.name, location.modifier == "~*")


def _auto_redirect(location: Location) -> bool:
    # ngx_http_proxy_pass: "if (clcf->name.len && clcf->name.data[clcf->name.len - 1] == '/')
    # clcf->auto_redirect = 1;"
    return location.settings.proxy_pass is not None and location.name.endswith("/")


def _static(locations: Sequence[Location], uri: str) -> tuple[int, Location | None]:
    """One level of ``ngx_http_core_find_static_location`` (the tree walk, as a scan).

    Names compare case-sensitively (``ngx_filename_cmp`` on Linux).  A name equal to the URI
    is final whether it is ``=`` or a prefix (nginx returns NGX_OK for both, preferring the
    ``=``); a location named URI + "/" with auto_redirect gives NGX_DONE; otherwise the
    longest prefix (plain or ``^~``) gives NGX_AGAIN.
    """
    exact: Location | None = None
    equal: Location | None = None
    redirect: Location | None = None
    longest: Location | None = None
    slash = uri + "/"
    for loc in locations:
        if loc.is_regex or loc.modifier not in ("", "=", "^~"):
            continue
        name = loc.name
        if name == uri:
            if loc.is_exact:
                exact = exact or loc
            else:
                equal = equal or loc
        elif name == slash:
            if _auto_redirect(loc) and (redirect is None or loc.is_exact):
                redirect = loc
        elif not loc.is_exact and uri.startswith(name):
            if longest is None or len(name) > len(longest.name):
                longest = loc
    if exact or equal:
        return _OK, exact or equal
    if redirect is not None:
        return _DONE, redirect
    if longest is not None:
        return _AGAIN, longest
    return _DECLINED, None


class _Found:
    __slots__ = ("location", "match")

    def __init__(self) -> None:
        self.location: Location | None = None
        self.match: re.Match[str] | None = None


def _find(locations: Sequence[Location], uri: str, found: _Found) -> int:
    # ngx_http_core_find_location, with ``locations`` the children of r->loc_conf.
    rc, loc = _static(locations, uri)
    noregex = False
    if rc != _DECLINED:
        found.location = loc
    if rc == _AGAIN and loc is not None:
        noregex = loc.is_noregex
        rc = _find(loc.locations, uri, found)
    if rc in (_OK, _DONE):
        return rc
    if not noregex:
        for loc in locations:
            if not loc.is_regex:
                continue
            m = _regex(loc).search(uri)
            if m is None:
                continue
            found.location = loc
            found.match = m
            _find(loc.locations, uri, found)
            return _OK
    return rc


def find_location(server: Server, uri: str) -> tuple[Location | None, tuple[str, ...]]:
    """The location for the normalised ``uri`` and the captures of the regex that matched.

    "nginx first searches for the most specific prefix location given by literal strings
    regardless of the listed order ... Then regular expressions are checked, in the order of
    their appearance in the configuration file.  The search of regular expressions terminates
    on the first match ... If no match with a regular expression is found then the
    configuration of the prefix location remembered earlier is used" (core module,
    ``location``).  Nested levels are searched first, so inner regexes win; ``^~`` mutes only
    the regexes of its own level; a URI equal to a prefix location's name skips the regexes
    too (NGX_OK in ``ngx_http_core_find_static_location``).  ``None`` means no location
    matched: the server-level settings apply.  When :func:`needs_slash_redirect` is true for
    the result, the caller answers 301.
    """
    location, match = find_location_match(server, uri)
    return location, () if match is None else tuple(g or "" for g in match.groups())


def find_location_match(server: Server, uri: str) -> tuple[Location | None, re.Match[str] | None]:
    """:func:`find_location` with the match of the regex location that won (None for a
    prefix or exact location), for ``$0``..``$9`` and named captures."""
    found = _Found()
    _find(server.locations, uri, found)
    return found.location, found.match


def find_named_location(server: Server, name: str) -> Location | None:
    """The server's ``location @name`` for ``name`` (with its ``@``), as
    ``ngx_http_named_location`` looks it up: named locations are "not used for a regular
    request processing, but instead used for request redirection" (core module,
    ``location``); the first of a name wins."""
    return next((loc for loc in server.named_locations if loc.name == name), None)


def needs_slash_redirect(location: Location | None, uri: str) -> bool:
    """Whether ``uri`` gets nginx's 301 to ``location.name`` (plus ``?args``).

    "If a location is defined by a prefix string that ends with the slash character, and
    requests are processed by one of proxy_pass, ... then in response to a request with URI
    equal to this string, but without the trailing slash, a permanent redirect with the code
    301 will be returned to the requested URI with the slash appended" (core module,
    ``location``).  Use it on the result of :func:`find_location`.
    """
    return (
        location is not None
        and not location.is_regex
        and location.name == uri + "/"
        and _auto_redirect(location)
    )


# --------------------------------------------------------------------------------------------
# proxy_pass URI
# --------------------------------------------------------------------------------------------

# ngx_escape_uri NGX_ESCAPE_URI: space " # % < > ? \ ^ ` { | }, control bytes, DEL, >= 0x80.
_ESCAPE = frozenset(range(0x21)) | frozenset(b'"#%<>?\\^`{|}') | frozenset(range(0x7F, 0x100))
_ESCAPE_TABLE = [f"%{b:02X}" if b in _ESCAPE else chr(b) for b in range(256)]


def escape_uri(uri: str) -> str:
    """``ngx_escape_uri(..., NGX_ESCAPE_URI)`` over the UTF-8 bytes of ``uri`` (upper-case hex)."""
    data = uri.encode("utf-8", "surrogateescape")
    return "".join(_ESCAPE_TABLE[b] for b in data)


def proxy_uri(
    pp: ProxyPass,
    location: Location | None,
    raw_target: str,
    uri: str,
    args: str,
    had_escapes: bool,
    *,
    valid_unparsed_uri: bool = True,
    valid_location: bool = True,
) -> str:
    """The URI of the request line sent upstream (``ngx_http_proxy_create_request``).

    "If the proxy_pass directive is specified with a URI, then when a request is passed to
    the server, the part of a normalized request URI matching the location is replaced by a
    URI specified in the directive ... If proxy_pass is specified without a URI, the request
    URI is passed to the server in the same form as sent by a client when the original
    request is processed" (proxy module, ``proxy_pass``).  "When the URI is changed inside a
    proxied location using the rewrite directive, and this same configuration will be used
    to process a request (break) ... the URI specified in the directive is ignored and the
    full changed request URI is passed to the server."

    ``raw_target`` is the request-target as received, ``uri`` the normalised ``$uri``,
    ``args`` the raw ``$args``, ``had_escapes`` whether the rest is to be re-escaped
    (nginx's ``r->quoted_uri || r->internal``: the path had ``%``, or a rewrite changed it).
    ``valid_unparsed_uri`` is false once ``$uri`` or ``$args`` changed (the request line's
    URI may not be sent then), ``valid_location`` false after ``rewrite ... break``.  A URL
    with variables (``pp.template``), no location or a regex location is treated as "no URI
    part"; the caller handles a rendered URL that has one (it replaces the request URI as
    is).
    """
    query = "?" + args if args else ""
    if pp.uri is None or pp.template is not None or location is None or location.is_regex:
        raw = request_uri(raw_target)
        # r->valid_unparsed_uri is off for a space in the URI (and wsgate treats an empty
        # absolute-form path the same way): then $uri is sent, escaped, with the args.
        if valid_unparsed_uri and raw.startswith("/") and " " not in raw:
            return raw
        return (escape_uri(uri) if had_escapes else uri) + query
    if not valid_location:
        return (escape_uri(uri) if had_escapes else uri) + query
    # loc_len = ngx_min(plcf->location.len, r->uri.len)
    rest = uri[len(location.name) :] if uri.startswith(location.name) else uri
    return pp.uri + (escape_uri(rest) if had_escapes else rest) + query
