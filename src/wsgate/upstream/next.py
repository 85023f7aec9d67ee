"""``proxy_next_upstream``: whether a failed try is passed to the next server (pure rules).

nginx's ``ngx_http_upstream_next``/``ngx_http_upstream_test_next``
(https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_next_upstream, NGINX-SEMANTICS.md
§8) written as functions of values, so they are tested without a loop or a socket: the asyncio
layer (:mod:`wsgate.proxy.attempt`) classifies what happened into a :class:`Failure` and asks
:func:`may_retry`.

``error``/``timeout``/``invalid_header`` always count against ``max_fails``; listed
``http_5xx``/``http_429`` count only when the retry happens; ``http_403``/``http_404`` never
(:attr:`Failure.counts_as_failure`).  Only before anything was sent to the client, so never after
a ``101``.
"""

from __future__ import annotations

import enum
from collections.abc import Collection

__all__ = ["NON_IDEMPOTENT", "Failure", "may_retry", "replayable", "status_failure"]

#: "non_idempotent: normally, requests with a non-idempotent method (POST, LOCK, PATCH) are not
#: passed to the next server if a request has been sent to an upstream server".
NON_IDEMPOTENT = frozenset({"POST", "LOCK", "PATCH"})


class Failure(enum.Enum):
    """How a try failed, by the name ``proxy_next_upstream`` gives it (``ft_type``)."""

    ERROR = "error"
    TIMEOUT = "timeout"
    INVALID_HEADER = "invalid_header"
    HTTP_500 = "http_500"
    HTTP_502 = "http_502"
    HTTP_503 = "http_503"
    HTTP_504 = "http_504"
    HTTP_403 = "http_403"
    HTTP_404 = "http_404"
    HTTP_429 = "http_429"

    @property
    def counts_as_failure(self) -> bool:
        """Whether a retry on it counts against ``max_fails`` (``NGX_PEER_FAILED``): all but
        403 and 404, which nginx passes on as ``NGX_PEER_NEXT``."""
        return self not in (Failure.HTTP_403, Failure.HTTP_404)


_BY_STATUS = {
    500: Failure.HTTP_500,
    502: Failure.HTTP_502,
    503: Failure.HTTP_503,
    504: Failure.HTTP_504,
    403: Failure.HTTP_403,
    404: Failure.HTTP_404,
    429: Failure.HTTP_429,
}


def status_failure(status: int) -> Failure | None:
    """The failure kind of an upstream status ``proxy_next_upstream`` can name
    (``ngx_http_upstream_next_errors``), or None for any other status."""
    return _BY_STATUS.get(status)


def may_retry(
    kind: Failure,
    allowed: Collection[str],
    *,
    left: int,
    attempts: int,
    tries_limit: int,
    elapsed: float,
    timeout: float,
    sent: bool,
    streamed: bool,
    method: str,
) -> bool:
    """Whether ``proxy_next_upstream`` passes this try to the next server.

    ``ngx_http_upstream_next``: "if (u->peer.tries == 0 || (next_upstream & ft_type) !=
    ft_type || (u->request_sent && r->request_body_no_buffering) || (timeout &&
    ngx_current_msec - u->peer.start_time >= timeout))" finalize, where ``ft_type`` gains
    ``NON_IDEMPOTENT`` for a POST, LOCK or PATCH already sent.  wsgate streams request bodies
    (nginx's ``proxy_request_buffering off``), so a try that ``sent`` a ``streamed`` body is
    never repeated.  ``left`` is what remains of the tries after this one;
    ``proxy_next_upstream_tries`` (``tries_limit``) caps them ("0 turns off this limitation"),
    and ``proxy_next_upstream_timeout`` (``timeout``) bounds ``elapsed`` since the first try.
    """
    if kind.value not in allowed or left <= 0:
        return False
    if tries_limit and attempts >= tries_limit:
        return False
    if sent:
        if streamed:
            return False
        if method in NON_IDEMPOTENT and "non_idempotent" not in allowed:
            return False
    return not (timeout and elapsed >= timeout)


def replayable(streamed: bool, method: str, allowed: Collection[str]) -> bool:
    """Whether a request may be sent again on a new connection after a kept one was found
    closed: never once its body was streamed, and a non-idempotent one only with
    ``non_idempotent``."""
    if streamed:
        return False
    return method not in NON_IDEMPOTENT or "non_idempotent" in allowed
