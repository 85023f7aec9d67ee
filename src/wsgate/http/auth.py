"""The access phase: ``allow``/``deny``, ``auth_basic``, ``auth_request``, combined by
``satisfy`` (no sockets, no loop).

nginx runs the access phase's handlers in this order (modules registered last run first:
access, auth_basic, auth_request) through ``ngx_http_core_access_phase``, and settles the
result in ``ngx_http_core_post_access_phase``:

- ``satisfy all``: a handler that allows goes on to the next; the first denial (401, 403,
  or an error such as 500) ends the request with its status.
- ``satisfy any``: the first handler that allows ends the phase, and the request goes on
  (the ``WWW-Authenticate`` fields denials added are dropped); a 401 or 403 is remembered
  ("r->access_code") and the next handler runs, a 403 never replacing a 401; when no handler
  allowed, the remembered status ends the request (a 403 logged "access forbidden by rule").
- A handler with nothing configured declines and is skipped.  Subrequests skip the phase.
- A 401 waits ``auth_delay`` first ("delaying unauthorized request").

``auth_basic`` (https://nginx.org/en/docs/http/ngx_http_auth_basic_module.html) reads the
``auth_basic_user_file`` per request, as nginx opens and reads it for every request (no
cache: an edited file applies to the next request); the read and the password hash
(:func:`wsgate.http.crypt.ngx_crypt`; bcrypt and yescrypt take tens of milliseconds on
purpose) are one :class:`PasswordCheck` job run in the worker's bounded thread pool (an
:class:`~wsgate.http.suspend.Offload` decision), never on the event loop.  nginx's answers:
no or malformed credentials is 401 with ``WWW-Authenticate: Basic realm="..."`` (an ``info``
line); a user not in the file and a wrong password are 401 with an ``error`` line; a file
that does not exist is **403** with ``[error] open() "..." failed (2: No such file or
directory)``, one that cannot be opened otherwise or read is 500 with a ``[crit]`` line.

``auth_request`` (https://nginx.org/en/docs/http/ngx_http_auth_request_module.html) makes a
subrequest (an :class:`~wsgate.http.suspend.Subrequest` decision, performed by
:mod:`wsgate.proxy.subrequest`): "If the subrequest returns a 2xx response code, the access
is allowed.  If it returns 401 or 403, the access is denied with the corresponding error
code.  Any other response code returned by the subrequest is considered an error."  A 401
passes the upstream's ``WWW-Authenticate`` fields on.  ``auth_request_set`` variables are
set from the subrequest's values when it is done.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wsgate.access import check_access
from wsgate.config.units import parse_size
from wsgate.errors import HttpError
from wsgate.http.crypt import CryptError, decode_base64, ngx_crypt
from wsgate.http.fields import first_value
from wsgate.http.suspend import Offload, Pause, Subrequest, Suspend

if TYPE_CHECKING:
    from wsgate.http.phases import Request

__all__ = [
    "AccessState",
    "PasswordCheck",
    "access_phase",
    "basic_credentials",
    "find_password",
]


class _Ok(enum.Enum):
    """``NGX_OK`` of an access handler: access allowed."""

    OK = "ok"


OK = _Ok.OK
#: What an access handler returns: None (declined), :data:`OK`, 401 or 403, or a wait.
Result = _Ok | int | Suspend | None


def basic_credentials(headers: Sequence[tuple[str, str]]) -> tuple[bytes, bytes] | None:
    """``ngx_http_auth_basic_user``: the user and password of ``Authorization: Basic``
    (scheme case-insensitive, spaces after it skipped, ``ngx_decode_base64``), split at the
    first colon; None without one, or when the user is empty or there is no colon."""
    value = first_value(headers, "authorization")
    if value is None or len(value) < 6 or value[:6].lower() != "basic ":
        return None
    encoded = value[6:].lstrip(" ").encode("latin-1")
    if not encoded:
        return None
    auth = decode_base64(encoded)
    if auth is None:
        return None
    user, colon, password = auth.partition(b":")
    if not user or not colon:
        return None
    return user, password


def find_password(data: bytes, user: bytes) -> bytes | None:
    """The password field of ``user`` in a user file, exactly as nginx's state machine in
    ``ngx_http_auth_basic_handler`` finds it: at the start of a line, ``#`` and CR start a
    comment and empty lines are skipped; a line matches when it starts with ``user:``; the
    field ends at LF, CR, ``:`` or the end of the file.  A byte that does not match sends
    the reader to the next LF after it (that byte itself is not checked)."""
    key = user + b":"
    n, p = len(data), 0
    while p < n:
        c = data[p]
        if c == 0x0A:
            p += 1
            continue
        if c in (0x23, 0x0D):  # '#', CR
            q = data.find(b"\n", p + 1)
            if q < 0:
                return None
            p = q + 1
            continue
        m = 0
        while m < len(key) and p + m < n and data[p + m] == key[m]:
            m += 1
        if m == len(key):
            start = end = p + m
            while end < n and data[end] not in (0x0A, 0x0D, 0x3A):
                end += 1
            return data[start:end]
        if p + m >= n:
            return None
        q = data.find(b"\n", p + m + 1)
        if q < 0:
            return None
        p = q + 1
    return None


class PasswordCheck:
    """One ``auth_basic`` check: open and read the user file, find the user, hash the
    password; a blocking job for the thread pool.  ``status`` is then None (allowed), 401,
    403 or 500, and ``level``/``log`` the error-log line nginx writes (``log`` empty: none)."""

    __slots__ = ("path", "user", "password", "status", "level", "log")

    def __init__(self, path: str, user: bytes, password: bytes) -> None:
        self.path = path
        self.user = user
        self.password = password
        self.status: int | None = 500
        self.level = "crit"
        self.log = ""

    def __call__(self) -> None:
        path = self.path
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            code = exc.errno or 0
            # "if (err == NGX_ENOENT) { level = NGX_LOG_ERR; rc = NGX_HTTP_FORBIDDEN; }"
            self.status, self.level = (403, "error") if code == 2 else (500, "crit")
            self.log = f'open() "{path}" failed ({code}: {os.strerror(code)})'
            return
        try:
            chunks: list[bytes] = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        except OSError as exc:
            code = exc.errno or 0
            self.status, self.level = 500, "crit"
            self.log = f'pread() "{path}" failed ({code}: {os.strerror(code)})'
            return
        finally:
            os.close(fd)
        user = self.user.decode("latin-1")
        stored = find_password(b"".join(chunks), self.user)
        self.status, self.level = 401, "error"
        if stored is None:
            self.log = f'user "{user}" was not found in "{path}"'
            return
        try:
            encrypted = ngx_crypt(self.password, stored)
        except CryptError as exc:
            self.status, self.level = 500, "crit"
            self.log = f"crypt_r() failed ({exc.errno}: {os.strerror(exc.errno)})"
            return
        if encrypted == stored.split(b"\0", 1)[0]:
            self.status, self.log = None, ""
        else:
            self.log = f'user "{user}": password mismatch'


class AccessState:
    """The access phase of one pass through the phases (an internal redirect starts a new
    one, as nginx clears the modules' contexts): the next handler, ``r->access_code``, the
    ``WWW-Authenticate`` fields of denials, and a wait under way."""

    __slots__ = ("next", "code", "authenticate", "check", "sub", "delayed")

    def __init__(self) -> None:
        self.next = 0
        self.code = 0
        self.authenticate: list[tuple[str, str]] = []
        self.check: PasswordCheck | None = None
        self.sub: Subrequest | None = None
        self.delayed = False


def _rules(r: Request, st: AccessState) -> Result:
    """``ngx_http_access_handler``: declined without rules or when none matches; a ``deny``
    under ``satisfy all`` ends the request here with "access forbidden by rule" (under
    ``any`` that line is written when the phase ends with the 403)."""
    rules = r.settings.access_rules
    if not rules:
        return None
    rule = check_access(rules, r.ctx.remote_addr)
    if rule is None:
        return None
    if rule.allow:
        return OK
    if r.settings.satisfy == "all":
        raise HttpError(403, "access forbidden by rule")
    return 403


def _realm(st: AccessState, realm: str) -> int:
    """``ngx_http_auth_basic_set_realm``."""
    st.authenticate.append(("WWW-Authenticate", f'Basic realm="{realm}"'))
    return 401


def _auth_basic(r: Request, st: AccessState) -> Result:
    """``ngx_http_auth_basic_handler``."""
    settings = r.settings
    if settings.auth_basic is None or settings.auth_basic_user_file is None:
        return None
    lookup = r.ctx.lookup
    realm = settings.auth_basic.render(lookup)
    if realm == "off":
        return None
    check = st.check
    if check is None:
        creds = basic_credentials(r.ctx.headers)
        if creds is None:
            r.log("info", "no user/password was provided for basic authentication")
            return _realm(st, realm)
        path = settings.auth_basic_user_file.render(lookup)
        st.check = PasswordCheck(path, creds[0], creds[1])
        return Offload(st.check)
    st.check = None
    if check.log:
        r.log(check.level, check.log)
    if check.status is None:
        return OK
    if check.status == 401:
        return _realm(st, realm)
    return check.status


def _auth_request(r: Request, st: AccessState) -> Result:
    """``ngx_http_auth_request_handler``: start the subrequest, then judge its status."""
    uri = r.settings.auth_request
    if uri is None:
        return None
    sub = st.sub
    if sub is None or not sub.done:
        st.sub = Subrequest(uri)
        return st.sub
    st.sub = None
    _set_variables(r, sub)
    if sub.status == 403:
        return 403
    if sub.status == 401:
        st.authenticate.extend(sub.www_authenticate)
        return 401
    if 200 <= sub.status < 300:
        return OK
    r.log("error", f"auth request unexpected status: {sub.status}")
    raise HttpError(500)


def _set_variables(r: Request, sub: Subrequest) -> None:
    """``ngx_http_auth_request_set_variables``: each value evaluated in the subrequest, set
    in the main request ("explicitly set ... to make sure it will be available after
    internal redirects"); ``$args`` and ``$limit_rate`` through their set handlers."""
    sets = r.settings.auth_request_set
    if not sets or sub.ctx is None:
        return
    lookup = sub.ctx.lookup
    ctx = r.ctx
    for av in sets:
        value = av.value.render(lookup)
        if av.variable == "args":
            ctx.args = value
        elif av.variable == "limit_rate":
            # ngx_http_variable_request_set_size
            size = parse_size(value)
            if size is None:
                r.log("error", f'invalid size "{value}"')
            else:
                ctx.limit_rate = size
        else:
            ctx.set_variable(av.variable, value)
    ctx.invalidate()


_HANDLERS = (_rules, _auth_basic, _auth_request)


def access_phase(r: Request) -> Suspend | None:
    """``ngx_http_core_access_phase`` for every access handler, then
    ``ngx_http_core_post_access_phase``.  Returns a wait (the same call goes on with it when
    it is over), or None when access is allowed; raises nginx's error otherwise."""
    if r.subrequest:
        return None
    st = r.access
    if st is None:
        settings = r.settings
        if not (settings.access_rules or settings.auth_basic or settings.auth_request):
            return None  # every handler would decline: no state to keep
        st = r.access = AccessState()
    satisfy_any = r.settings.satisfy == "any"
    while st.next < len(_HANDLERS) and not st.delayed:
        rc = _HANDLERS[st.next](r, st)
        if isinstance(rc, Offload | Pause | Subrequest):
            return rc
        st.next += 1
        if rc is None:
            continue
        if rc is OK:
            if satisfy_any:
                st.code = 0
                st.authenticate.clear()
                st.next = len(_HANDLERS)
            continue
        assert isinstance(rc, int)
        if satisfy_any and rc in (401, 403):
            if st.code != 401:
                st.code = rc
            continue
        if rc == 401:
            st.code = 401
            st.next = len(_HANDLERS)
            break
        raise HttpError(rc)
    code = st.code
    if not code:
        return None
    if code == 401:
        delay = r.settings.auth_delay
        if delay and not st.delayed:
            st.delayed = True
            r.log("info", "delaying unauthorized request")
            return Pause(delay)
        raise HttpError(401, headers=tuple(st.authenticate))
    raise HttpError(code, "access forbidden by rule" if code == 403 else "")
