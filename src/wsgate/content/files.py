"""Static files, the file system side: ``try_files``, ``index``, ``autoindex`` and the static
handler, as nginx's content phase runs them for a location with no other handler.

These functions open, stat and list files (system calls, no sockets, no event loop, as
nginx does them on its worker's thread); the rules they apply are in
:mod:`wsgate.http.static` and :mod:`wsgate.http.autoindex`, and the bytes are sent by
:mod:`wsgate.content.sender`.  The phase handlers in :mod:`wsgate.http.phases` turn what
they return into decisions (an internal redirect, a 301, a response).

Why a ``content`` package: a location's content is made either by proxying
(:mod:`wsgate.proxy`) or here, from files; the two share the phases and the front
connection, and nothing else.

Paths never leave ``root``/``alias``: ``$uri`` is normalised before any location is chosen
(``..`` above ``/`` and ``%00`` are 400, ``%2e%2e`` and ``%2f`` are decoded first, see
:func:`wsgate.routing.normalize_uri`), and symbolic links are followed or refused per
``disable_symlinks``, component by component with ``O_NOFOLLOW`` as nginx's
``ngx_open_file_wrapper`` does.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from wsgate.config.model import DocRoot, LocationSettings
from wsgate.config.variables import RequestContext
from wsgate.errors import HttpError
from wsgate.http import autoindex
from wsgate.http.charset import apply_charset, split_charset
from wsgate.http.gzip import gzip_applies, gzip_ok
from wsgate.http.headers import http_date
from wsgate.http.headers_filter import add_headers, filter_headers
from wsgate.http.static import (
    NOT_SATISFIABLE,
    FileResponse,
    content_type,
    etag_for,
    map_uri_to_path,
    multipart,
    not_modified,
    parse_http_time,
    parse_ranges,
    range_applies,
    root_path,
)
from wsgate.routing import escape_uri

__all__ = ["Internal", "Listing", "Moved", "document_root", "serve", "try_files"]

Log = Callable[[str, str], None]
_NOT_FOUND = (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG)


@dataclass(frozen=True, slots=True)
class Internal:
    """An internal redirect to ``uri`` (an index file, a ``try_files`` fallback)."""

    uri: str


@dataclass(frozen=True, slots=True)
class Moved:
    """A directory asked for without its slash: 301 to ``target`` (a path and query)."""

    target: str


@dataclass(frozen=True, slots=True)
class Listing:
    """An ``autoindex`` page."""

    body: bytes
    content_type: str


def _why(exc: OSError) -> str:
    return f"({exc.errno}: {exc.strerror or os.strerror(exc.errno or 0)})"


# -- confinement -------------------------------------------------------------------------------
def _confined_dir(root: DocRoot) -> str | None:
    """The directory every file name of ``root``/``alias`` must stay in: its value up to the
    last ``/`` before its first variable, absolute and normalised (None: it starts with a
    variable, nothing to hold it to)."""
    lit = root.path.parts[0]
    if not root.path.is_static:
        lit = lit[: lit.rfind("/") + 1]
        if not lit:
            return None
    if not os.path.isabs(lit):
        lit = os.path.join(root.prefix, lit)
    return os.path.normpath(lit)


def _leaves(settings: LocationSettings, path: str) -> str | None:
    """The directory ``path`` climbs out of with a ``..`` component, or None.

    A normalised ``$uri`` has no ``..``, but gluing it to an alias can make one: ``location
    /img { alias /data/img/; }`` and ``/img../secret`` name ``/data/img/../secret``, and a
    capture in a regex location's alias can hold ``..`` where the location's prefix is not a
    whole segment.  nginx opens such a name; wsgate refuses it (docs/differences.md)."""
    if "/.." not in path or settings.root is None:
        return None
    top = _confined_dir(settings.root)
    if top is None:
        return None
    norm = os.path.normpath(path)
    if norm == top or norm.startswith(top.rstrip("/") + "/"):
        return None
    return top


# -- opening with disable_symlinks -------------------------------------------------------------
def _symlink_start(settings: LocationSettings, ctx: RequestContext, path: str) -> int | None:
    """Where symbolic-link checks begin in ``path`` (None: ``disable_symlinks off``);
    ``from=`` names a leading part that is not checked, when ``path`` starts with it."""
    mode, start = settings.disable_symlinks
    if mode == "off":
        return None
    if start is not None:
        prefix = start.render(ctx.lookup)
        if prefix and path.startswith(prefix):
            return len(prefix)
    return 0


def open_path(
    settings: LocationSettings, ctx: RequestContext, path: str, flags: int = os.O_RDONLY
) -> int:
    """``path`` opened read-only (non-blocking, close-on-exec); with ``disable_symlinks on``
    every component after the ``from=`` part is opened with ``O_NOFOLLOW`` (a link is
    ``ELOOP``), with ``if_not_owner`` a link is followed only when it and its target have one
    owner (nginx's ``ngx_openat_file_owner``)."""
    if "\0" in path:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
    top = _leaves(settings, path)
    if top is not None:
        raise PermissionError(errno.EACCES, f'the name leaves "{top}"', path)
    flags |= os.O_NONBLOCK | os.O_CLOEXEC
    start = _symlink_start(settings, ctx, path)
    if start is None:
        return os.open(path, flags)
    owner_check = settings.disable_symlinks[0] == "if_not_owner"
    head, rest = path[:start] or "/", path[start:]
    names = [n for n in rest.split("/") if n]
    dirfd = os.open(head, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(names):
            last = i == len(names) - 1
            # Not O_DIRECTORY on the way: with it Linux reports a link as ENOTDIR, not ELOOP.
            want = flags if last else os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
            fd = _open_at(dirfd, name, want, owner_check)
            os.close(dirfd)
            dirfd = fd
        if not names:
            return os.dup(dirfd)
        fd, dirfd = dirfd, -1
        return fd
    finally:
        if dirfd != -1:
            os.close(dirfd)


def _open_at(dirfd: int, name: str, flags: int, owner_check: bool) -> int:
    try:
        return os.open(name, flags | os.O_NOFOLLOW, dir_fd=dirfd)
    except OSError as exc:
        err = exc.errno
        if err == errno.ENOTDIR and flags & os.O_DIRECTORY:
            # With O_DIRECTORY Linux reports a link as ENOTDIR: it is still a link.
            if stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode):
                err = errno.ELOOP
        if err != errno.ELOOP:
            raise
        if not owner_check:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name) from None
    link = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    fd = os.open(name, flags, dir_fd=dirfd)
    if os.fstat(fd).st_uid != link.st_uid:
        os.close(fd)
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name)
    return fd


def _stat(settings: LocationSettings, ctx: RequestContext, path: str) -> os.stat_result:
    fd = open_path(settings, ctx, path)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


# -- variables -----------------------------------------------------------------------------
def document_root(settings: LocationSettings, ctx: RequestContext) -> str:
    """``$document_root``: "root or alias directive's value for the current request"."""
    return root_path(settings.root, ctx.lookup) if settings.root is not None else ""


# -- try_files (ngx_http_core_try_files_phase) ------------------------------------------------
def try_files(settings: LocationSettings, ctx: RequestContext) -> Internal | int | None:
    """ngx_http_try_files_handler: "Checks the existence of files in the specified order and
    uses the first found file for request processing; ... If none of the files were found,
    an internal redirect to the uri specified in the last parameter is made."  Returns None
    when a file was found (``$uri`` is now its URI), an :class:`Internal` redirect (its
    arguments, after a ``?``, replace the request's; a ``@name`` keeps them), or the
    ``=code`` status."""
    tf = settings.try_files
    assert tf is not None and settings.root is not None
    root = settings.root
    alias = (root.alias_len if root.alias_len >= 0 else -1) if root.alias else 0
    base = root_path(root, ctx.lookup)
    for tpl in tf.files:
        name = tpl.render(ctx.lookup)
        # "It is possible to check directory's existence by specifying a slash at the end
        # of a name"; the slash is not part of the name tried.
        test_dir = tpl.raw.endswith("/") and len(name) > 0
        if test_dir and name.endswith("/"):
            name = name[:-1]
        if alias > 0 and not tpl.is_static and name[:alias] == ctx.uri[:alias]:
            name = name[alias:]
        try:
            st = _stat(settings, ctx, base + name)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) != test_dir:
            continue
        if not alias:
            ctx.uri = name
        elif alias < 0:
            if not test_dir:
                ctx.uri = name
                ctx.add_uri_to_alias = True
        else:
            ctx.uri = ctx.uri[:alias] + name
        ctx.invalidate()
        return None
    if tf.code is not None:
        return tf.code
    uri = tf.fallback.render(ctx.lookup)
    if uri.startswith("@"):
        # "(void) ngx_http_named_location(r, &path)": the arguments stay as they are.
        return Internal(uri)
    uri, _, args = uri.partition("?")
    ctx.args = args
    return Internal(uri)


# -- index, autoindex, static ------------------------------------------------------------------
def _index(settings: LocationSettings, ctx: RequestContext, log: Log) -> Internal | None:
    """ngx_http_index_handler: the first index file that exists is an internal redirect to
    it; an absolute name is one without a test."""
    assert settings.root is not None
    dir_path, _ = map_uri_to_path(settings.root, ctx.uri, ctx.lookup)
    dir_tested = False
    for tpl in settings.index:
        name = tpl.render(ctx.lookup)
        if name.startswith("/"):
            return Internal(name)
        path = dir_path + name
        try:
            _stat(settings, ctx, path)
        except OSError as exc:
            if exc.errno in (errno.EMLINK, errno.ELOOP):
                raise HttpError(403) from None
            if exc.errno in (errno.ENOTDIR, errno.ENAMETOOLONG, errno.EACCES):
                _index_error(settings, path, exc, log)
            if not dir_tested:
                _test_dir(settings, ctx, dir_path, log)
                dir_tested = True
            if exc.errno == errno.ENOENT:
                continue
            raise HttpError(500, f'stat() "{path}" failed {_why(exc)}') from None
        return Internal(ctx.uri + name)
    return None


def _index_error(settings: LocationSettings, path: str, exc: OSError, log: Log) -> None:
    if exc.errno == errno.EACCES:
        raise HttpError(403, f'"{path}" is forbidden {_why(exc)}')
    if settings.log_not_found:
        log("error", f'"{path}" is not found {_why(exc)}')
    raise HttpError(404)


def _test_dir(settings: LocationSettings, ctx: RequestContext, dir_path: str, log: Log) -> None:
    """ngx_http_index_test_dir: a missing directory is 404 ("... is not found")."""
    path = dir_path[:-1] if dir_path.endswith("/") and len(dir_path) > 1 else dir_path
    try:
        st = _stat(settings, ctx, path)
    except OSError as exc:
        if exc.errno in (errno.EMLINK, errno.ELOOP):
            raise HttpError(403) from None
        if exc.errno == errno.ENOENT:
            _index_error(settings, path, exc, log)
        if exc.errno == errno.EACCES:
            return
        raise HttpError(500, f'stat() "{path}" failed {_why(exc)}') from None
    if not stat.S_ISDIR(st.st_mode):
        raise HttpError(500, f'"{path}" is not a directory')


def _listing(settings: LocationSettings, ctx: RequestContext, log: Log) -> Listing:
    """ngx_http_autoindex_handler: the directory's entries (not those starting with ``.``)."""
    assert settings.root is not None
    path, _ = map_uri_to_path(settings.root, ctx.uri, ctx.lookup)
    if len(path) > 1:
        path = path[:-1] if path.endswith("/") else path
    callback = ""
    if settings.autoindex_format == "jsonp":
        got = autoindex.jsonp_callback(ctx.args)
        if got is None:
            raise HttpError(400, "client sent invalid callback name")
        callback = got
    try:
        fd = open_path(settings, ctx, path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        code = 404 if exc.errno in _NOT_FOUND else 403 if exc.errno == errno.EACCES else 500
        if code == 404:
            log("error", f'opendir() "{path}" failed {_why(exc)}')
            raise HttpError(404) from None
        raise HttpError(code, f'opendir() "{path}" failed {_why(exc)}') from None
    entries = []
    try:
        with os.scandir(fd) as it:
            for de in it:
                name = os.fsencode(de.name)
                if name.startswith(b"."):
                    continue
                try:
                    st = os.stat(de.name, dir_fd=fd)
                except OSError:
                    try:
                        st = os.stat(de.name, dir_fd=fd, follow_symlinks=False)
                    except OSError:
                        continue
                entries.append(
                    autoindex.Entry(
                        name,
                        stat.S_ISDIR(st.st_mode),
                        stat.S_ISREG(st.st_mode),
                        int(st.st_mtime),
                        st.st_size,
                    )
                )
    finally:
        os.close(fd)
    # The charset filter runs when the head is sent, before the page is made: the page
    # counts characters when the response is utf-8 (nginx reads r->headers_out.charset).
    fmt = settings.autoindex_format
    ctype, _ = apply_charset(settings, autoindex.content_type(fmt, callback), ctx.lookup, log)
    assert ctype is not None
    body = autoindex.render(
        fmt,
        ctx.uri,
        autoindex.sort(entries),
        utf8=split_charset(ctype)[1].lower() == "utf-8",
        exact_size=settings.autoindex_exact_size,
        localtime=settings.autoindex_localtime,
        callback=callback,
    )
    return Listing(body, ctype)


def serve(
    settings: LocationSettings,
    ctx: RequestContext,
    method: str,
    log: Log,
    main: bool = True,
) -> Internal | Moved | Listing | FileResponse:
    """The content phase of a location without a handler: index, autoindex, static, in
    nginx's order; errors are :class:`~wsgate.errors.HttpError` with nginx's log text (a 404
    is logged here, per ``log_not_found``).  ``main``: not a subrequest (which gzip does
    not compress, and for which ``gzip_static on`` finds the client does not accept it)."""
    uri = ctx.uri
    if uri.endswith("/"):
        if method in ("GET", "HEAD", "POST"):
            found = _index(settings, ctx, log)
            if found is not None:
                return found
        if settings.autoindex and method in ("GET", "HEAD"):
            return _listing(settings, ctx, log)
        if method not in ("GET", "HEAD", "POST"):
            raise HttpError(405)
        assert settings.root is not None
        path, _ = map_uri_to_path(settings.root, uri, ctx.lookup)
        raise HttpError(403, f'directory index of "{path}" is forbidden')
    if method not in ("GET", "HEAD", "POST"):
        raise HttpError(405)
    assert settings.root is not None
    path, _ = map_uri_to_path(settings.root, uri, ctx.lookup, ctx.add_uri_to_alias)
    vary = False
    if settings.gzip_static != "off" and method != "POST":
        static_gz = _gzip_static(settings, ctx, path, log, main)
        if isinstance(static_gz, FileResponse):
            return static_gz
        vary = static_gz
    try:
        fd = open_path(settings, ctx, path)
    except OSError as exc:
        if exc.errno in _NOT_FOUND:
            if settings.log_not_found:
                log("error", f'open() "{path}" failed {_why(exc)}')
            raise HttpError(404) from None
        if exc.errno in (errno.EACCES, errno.EMLINK, errno.ELOOP):
            raise HttpError(403, f'open() "{path}" failed {_why(exc)}') from None
        log("crit", f'open() "{path}" failed {_why(exc)}')
        raise HttpError(500) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            # ngx_http_static_handler: the URI escaped (NGX_ESCAPE_URI), a slash, the args.
            return Moved(escape_uri(uri) + "/" + (f"?{ctx.args}" if ctx.args else ""))
        if not stat.S_ISREG(st.st_mode):
            log("crit", f'"{path}" is not a regular file')
            raise HttpError(404)
        if method == "POST":
            raise HttpError(405)
        resp = _response(settings, ctx, fd, st, path, log, gzip=main and settings.gzip)
        resp.vary = vary
        return resp
    except BaseException:
        os.close(fd)
        raise


def _gzip_static(
    settings: LocationSettings, ctx: RequestContext, path: str, log: Log, main: bool
) -> FileResponse | bool:
    """``ngx_http_gzip_static_handler``: ``FILE.gz`` as the response, with
    ``Content-Encoding: gzip``, when the client accepts gzip (``on``: ``ngx_http_gzip_ok``,
    ``gzip_proxied`` and ``gzip_disable`` included) or always (``always``); its
    ``Last-Modified``, ``ETag`` and length are the ``.gz`` file's, its type the URI's.  Else
    whether the response earns ``Vary: Accept-Encoding`` (``on`` and a ``.gz`` there)."""
    ok = settings.gzip_static == "always" or (main and gzip_ok(settings, ctx.headers, ctx.version))
    if not ok and not settings.gzip_vary:
        return False
    gz_path = path + ".gz"
    try:
        fd = open_path(settings, ctx, gz_path)
    except OSError as exc:
        if exc.errno not in _NOT_FOUND:
            level = "error" if exc.errno in (errno.EACCES, errno.EMLINK, errno.ELOOP) else "crit"
            log(level, f'open() "{gz_path}" failed {_why(exc)}')
        return False
    try:
        if not ok:
            return True
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return False
        if not stat.S_ISREG(st.st_mode):
            log("crit", f'"{gz_path}" is not a regular file')
            raise HttpError(404)
        # gunzip on, for a client that does not accept gzip (gzip_static always): the
        # body is decompressed as it is sent, so it is no range and takes the charset.
        gunzip = settings.gunzip and not (main and gzip_ok(settings, ctx.headers, ctx.version))
        resp = _response(settings, ctx, fd, st, gz_path, log, encoded=not gunzip, gunzip=gunzip)
        fd = -1
        resp.vary = settings.gzip_static == "on"
        return resp
    finally:
        if fd != -1:
            os.close(fd)


def _gzip_filter_takes(
    settings: LocationSettings, ctx: RequestContext, headers: list[tuple[str, str]], size: int
) -> bool:
    """Whether the gzip filter will compress this file's 200: it runs before the range
    filter and clears the length, so such a response is never cut into ranges."""
    from wsgate.content.ssi import ssi_applies  # the SSI filter runs before gzip's

    length = None if size and ssi_applies(settings, 200, headers) else size
    fields, added = filter_headers(
        200, headers, settings.add_headers, settings.expires, ctx.lookup, time.time()
    )
    both = [*fields, *added]
    return gzip_applies(settings, 200, both, length) and gzip_ok(
        settings, ctx.headers, ctx.version, both
    )


def _response(
    settings: LocationSettings,
    ctx: RequestContext,
    fd: int,
    st: os.stat_result,
    path: str,
    log: Log,
    encoded: bool = False,
    gzip: bool = False,
    gunzip: bool = False,
) -> FileResponse:
    """The static handler's 200, through the not_modified and range filters (``encoded``:
    a ``gzip_static`` file, its body gzip already; ``gzip``: the gzip filter may take it;
    ``gunzip``: a ``gzip_static`` file the gunzip filter will decompress)."""
    mtime, size = int(st.st_mtime), st.st_size
    etag = etag_for(mtime, size) if settings.etag else None
    ctype, recode = apply_charset(
        settings, content_type(settings, ctx.uri), ctx.lookup, log, encoded=encoded
    )
    assert ctype is not None
    headers = [("Content-Type", ctype), ("Last-Modified", http_date(mtime))]
    if etag is not None:
        headers.append(("ETag", etag))
    status = not_modified(settings, ctx.headers, mtime, etag)
    if status == 412:
        raise HttpError(412)
    if status == 304:
        # "not modified": no type, no length, no Accept-Ranges, no Content-Encoding.
        return FileResponse(304, fd, headers[1:], -1, [], path)
    if encoded or gunzip:
        headers.append(("Content-Encoding", "gzip"))
    if gunzip or (not encoded and gzip and _gzip_filter_takes(settings, ctx, headers, size)):
        resp = FileResponse(200, fd, headers, size, [(0, size)] if size else [], path)
        resp.recode = recode
        return resp
    resp = _ranged(settings, ctx, fd, headers, size, etag, mtime, ctype, path)
    resp.recode = recode
    return resp


def _ranged(
    settings: LocationSettings,
    ctx: RequestContext,
    fd: int,
    headers: list[tuple[str, str]],
    size: int,
    etag: str | None,
    mtime: int,
    ctype: str,
    path: str,
) -> FileResponse:
    """The range filter: 206 (one range, or ``multipart/byteranges``), 416, or the 200.
    nginx runs it after the headers filter: ``If-Range`` is compared with the
    ``Last-Modified`` and ``ETag`` an ``add_header`` may have replaced or removed."""
    if settings.add_headers:
        fields, added = add_headers(200, headers, settings.add_headers, ctx.lookup)
        final = dict((k.lower(), v) for k, v in [*fields, *added])
        etag = final.get("etag")
        modified = final.get("last-modified")
        if modified != headers[1][1]:
            mtime = -1 if modified is None else parse_http_time(modified)
    spec = range_applies(settings, ctx.headers, etag, mtime) if ctx.version != "0.9" else None
    ranges = parse_ranges(spec, size, settings.max_ranges) if spec is not None else None
    if ranges == NOT_SATISFIABLE:
        # ngx_http_range_not_satisfiable: "Content-Range: bytes */SIZE".
        raise HttpError(416, headers=(("Content-Range", f"bytes */{size}"),))
    if isinstance(ranges, list):
        if len(ranges) == 1:
            start, end = ranges[0]
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
            return FileResponse(206, fd, headers, end - start, [(start, end - start)], path)
        mtype, parts = multipart(ranges, size, ctype)
        headers[0] = ("Content-Type", mtype)
        length = sum(p[1] if isinstance(p, tuple) else len(p) for p in parts)
        return FileResponse(206, fd, headers, length, parts, path)
    if settings.max_ranges != 0:
        headers.append(("Accept-Ranges", "bytes"))
    return FileResponse(200, fd, headers, size, [(0, size)] if size else [], path)
