"""Upgrading the running binary in place, nginx's way (https://nginx.org/en/docs/control.html#upgrade).

USR2 to the master: the pid file is renamed to ``PID.oldbin``, and the installed ``wsgate`` is
started again, as a child of the old master, with the listening sockets open and their
descriptors in the ``WSGATE`` environment variable (nginx passes them in ``NGINX``).  The new
master reads the variable, serves on those sockets instead of binding (so no connection is
ever refused: the kernel's queue of each socket is shared by both generations), does not
detach again, and writes the pid file.  What runs is what is installed *now*: a ``pip
install -U`` between the start and the USR2 upgrades the code.

Which command starts the new master (:func:`new_binary_argv`):

* ``python -m wsgate.cli ...``: the same interpreter and arguments (``sys.orig_argv``);
* the ``wsgate`` console script (or a symlink to one): that path again, executed by the kernel,
  so that its ``#!`` line picks the interpreter, which may be another virtual environment's
  when the path now points elsewhere.

The variable holds one ``FD,HOST,PORT,INDEX`` entry per socket, ``;``-separated: the socket's
bind key (:data:`wsgate.server.gateway.BindKey`), so that a new master reading the same
configuration takes each socket for the ``listen`` it was opened for (``listen ADDR:0``
included, which keeps its port).  A socket the new configuration does not use is closed.

The shared memory of ``stub_status`` and the ``limit_conn``/``limit_req`` zones is carried
over (nginx starts its zones afresh; wsgate goes further): it is made of ``memfd`` mappings
(:class:`wsgate.shm.Arena`), whose descriptors go to the new master with a description in
``WSGATE_SHM`` (:meth:`wsgate.shm.SharedState.handover`).  The new master maps the same
memory, so the counters go on, and a ``limit_conn`` slot held by a tunnel of the old
generation is still counted until that tunnel ends (the old master releases it when it reaps
the worker, in the same memory).  Both masters take worker slots from one shared table.  A
zone whose key or size the new configuration changed starts empty, and a new binary with
another memory layout (:data:`wsgate.shm.LAYOUT`) starts all of it afresh, saying so at
``notice``.  The Prometheus metrics start afresh (a counter reset, as after a restart).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable

from wsgate.observability.logs import ErrorLogger
from wsgate.server.listening import BindKey, ListenGroup

__all__ = [
    "ENV",
    "exec_new_binary",
    "inherited_groups",
    "new_binary_argv",
    "oldbin_path",
]

#: The environment variable that carries the listening sockets to the new master.
ENV = "WSGATE"


def oldbin_path(pid_path: str) -> str:
    """Where the old master's pid file goes during an upgrade (nginx's ``NGX_OLDPID_EXT``)."""
    return pid_path + ".oldbin"


def new_binary_argv() -> list[str]:
    """The command line that starts the installed wsgate again with our arguments."""
    orig = list(sys.orig_argv)
    if len(orig) >= 3 and orig[1] == "-m":
        return orig
    return [sys.argv[0], *sys.argv[1:]]


def encode(groups: dict[BindKey, ListenGroup]) -> str:
    """``FD,HOST,PORT,INDEX;`` for every open listening socket, then
    ``FD,HOST,PORT,INDEX+N;`` for the Nth ``reuseport`` clone of each (last, so that an
    older binary, which stops at the first entry it cannot read, still takes the rest)."""
    first = "".join(
        f"{g.sock.fileno()},{host},{port},{index};"
        for (host, port, index), g in groups.items()
        if g.sock is not None
    )
    clones = "".join(
        f"{sock.fileno()},{host},{port},{index}+{n};"
        for (host, port, index), g in groups.items()
        for n, sock in enumerate(g.clones, 1)
    )
    return first + clones


def decode(value: str) -> dict[BindKey, list[int]]:
    """The bind keys and descriptors of :func:`encode` (the socket, then its clones in
    order); a malformed entry ends the list (nginx: ``invalid socket number "..." in NGINX
    environment variable, ignoring the rest``)."""
    keys: dict[BindKey, list[int]] = {}
    for entry in value.split(";"):
        if not entry:
            continue
        fd, _, rest = entry.partition(",")
        host, _, rest = rest.rpartition(",")  # an IPv6 host holds no comma, but colons
        host, _, port = host.rpartition(",")
        index, plus, clone = rest.partition("+")
        if not (fd.isdigit() and port.isdigit() and index.isdigit() and host):
            break
        if plus and not clone.isdigit():
            break
        key = (host, int(port), int(index))
        if plus:
            if key in keys:
                keys[key].append(int(fd))
            continue
        keys[key] = [int(fd)]
    return keys


def _listening(fd: int) -> socket.socket | None:
    """The listening stream socket of descriptor ``fd``, or None (left alone)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        sock.detach()
        return None
    sock.setblocking(False)
    return sock


def inherited_groups(error_log: ErrorLogger | None = None) -> dict[BindKey, ListenGroup]:
    """In a new master: the listening sockets the old one passed, as groups that
    :func:`~wsgate.server.gateway.open_groups` reuses by key (the variable is removed, so
    that workers and later upgrades do not see it).  A descriptor that is not a listening
    stream socket is ignored."""
    value = os.environ.pop(ENV, None)
    if not value:
        return {}
    if error_log is not None:
        error_log.log("notice", f'using inherited sockets from "{value}"')
    groups: dict[BindKey, ListenGroup] = {}
    for key, fds in decode(value).items():
        sock = _listening(fds[0])
        if sock is None:
            continue
        port = sock.getsockname()[1] if sock.family != socket.AF_UNIX else 0
        group = groups[key] = ListenGroup(key, [], sock, None, port)
        for fd in fds[1:]:
            clone = _listening(fd)
            if clone is not None:
                group.clones.append(clone)
    return groups


def exec_new_binary(
    pid_path: str,
    groups: dict[BindKey, ListenGroup],
    error_log: ErrorLogger,
    in_child: Callable[[], None],
    extra_env: dict[str, str],
    extra_fds: list[int],
) -> int:
    """Rename the pid file to ``.oldbin``, then fork and execute the new binary with the
    sockets of ``groups`` (and ``extra_fds``, named in ``extra_env``: the shared memory);
    returns its pid, or 0 if it could not be started (logged, and the pid file keeps its
    name).  ``in_child`` runs in the child before ``execve``."""
    oldbin = oldbin_path(pid_path)
    try:
        os.rename(pid_path, oldbin)
    except OSError as exc:
        error_log.log(
            "alert", f'rename() "{pid_path}" to "{oldbin}" failed ({exc.errno}: {exc.strerror})'
        )
        return 0
    argv = new_binary_argv()
    env = dict(os.environ)
    env[ENV] = encode(groups)
    env.update(extra_env)
    try:
        pid = os.fork()
    except OSError as exc:
        error_log.log("alert", f"fork() failed while spawning new binary ({exc.errno})")
        os.rename(oldbin, pid_path)
        return 0
    if pid == 0:
        code = 1
        try:
            in_child()
            for g in groups.values():
                for sock in g.sockets():
                    os.set_inheritable(sock.fileno(), True)
            for fd in extra_fds:
                os.set_inheritable(fd, True)
            os.execve(argv[0] if "/" in argv[0] else sys.executable, argv, env)
        except OSError as exc:
            error_log.log(
                "alert",
                f'execve() failed while executing new binary process "{argv[0]}" '
                f"({exc.errno}: {exc.strerror})",
            )
        finally:
            os._exit(code)
    return pid
