"""``error_page``: "Defines the URI that will be shown for the specified errors"
(https://nginx.org/en/docs/http/ngx_http_core_module.html#error_page).

:func:`error_page` is the error handler :func:`wsgate.http.phases.on_error` consults (nginx's
``ngx_http_special_response_handler`` and ``ngx_http_send_error_page``); the I/O layer gives
:data:`ERROR_HANDLERS` to :func:`wsgate.http.phases.run`.  It decides, without sockets:
nothing (nginx's own page), an internal redirect (:func:`~wsgate.http.phases.internal_redirect`
or :func:`~wsgate.http.phases.named_location`), or a redirect.  The status the response then
gets is ``r.err_status`` (nginx's ``r->err_status``), which every response the request makes
afterwards carries.
"""

from __future__ import annotations

from wsgate.errors import HttpError
from wsgate.http.phases import (
    ErrorHandler,
    Redirect,
    Request,
    Restart,
    internal_redirect,
    named_location,
)
from wsgate.http.xar import x_accel_redirect

__all__ = ["ERROR_HANDLERS", "error_page"]

#: Redirect codes an ``error_page ... =CODE URL`` may answer with (else 302).
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def error_page(r: Request, exc: HttpError) -> Restart | Redirect | None:
    """``error_page`` (``ngx_http_special_response_handler`` and
    ``ngx_http_send_error_page``): "Defines the URI that will be shown for the specified
    errors."  Used once per request unless ``recursive_error_pages``, never once the
    request is out of internal redirects.  ``=CODE`` answers with CODE, ``=`` with the
    status of the response the URI gives; a URI is an internal redirect ("the method is
    changed to GET for all methods other than GET and HEAD") with its own ``?args``, a
    ``@name`` a named location with ``$uri`` and ``$args`` as they are, anything else a
    redirect (302, or ``=301``/``=303``/``=307``/``=308``)."""
    settings = r.settings
    if r.error_page or not settings.error_pages or r.uri_changes == 0:
        return None
    if not settings.recursive_error_pages:
        r.error_page = True
    page = next((p for p in settings.error_pages if p.status == exc.status), None)
    if page is None:
        return None
    ctx = r.ctx
    r.err_status = exc.status if page.overwrite < 0 else page.overwrite
    uri = page.uri.render(ctx.lookup)
    if uri.startswith("/"):
        args = page.args
        if not page.uri.is_static:  # ngx_http_split_args
            uri, _, args = uri.partition("?")
        if r.head.method != "HEAD":
            r.head.method = ctx.method = "GET"
        ctx.status = r.err_status  # $status in the page
        return internal_redirect(r, uri, args)
    if uri.startswith("@"):
        ctx.status = r.err_status
        return named_location(r, uri)
    if page.overwrite not in _REDIRECTS:
        r.err_status = 302
    return Redirect(r.err_status, uri)


#: The error handlers of a request, in order (an upstream's X-Accel-Redirect first).
ERROR_HANDLERS: tuple[ErrorHandler, ...] = (x_accel_redirect, error_page)
