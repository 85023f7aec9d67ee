"""``wsgate``: nginx's command line (https://nginx.org/en/docs/switches.html).

Options bundle (``-tq``) and take their value attached (``-cFILE``) or as the next argument,
as ``ngx_get_options`` reads them.  Messages go to stderr with the program name first
(``wsgate: [emerg] ...``), except the ``-T`` dump, which goes to stdout.

Start-up order follows nginx: read and check the configuration, open the log files, bind the
listening sockets (errors so far are printed and exit 1), then detach when ``daemon on`` (the
default, as in nginx), then write the pid file: a harness that waits for the pid file knows the
listeners are open.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from wsgate import NAME, SERVER_TOKEN
from wsgate.config.loader import DEFAULT_CONF, load
from wsgate.config.model import Config, ErrorLog
from wsgate.config.modules import version_lines
from wsgate.errors import ConfigError
from wsgate.loop import new_event_loop
from wsgate.observability.logs import AccessLogs, ErrorLogger, access_log_paths, location_error_logs
from wsgate.server.gateway import (
    BindKey,
    Gateway,
    ListenGroup,
    announce,
    dropped_sockets,
    open_groups,
    pid_write,
    remove_unix_sockets,
)
from wsgate.server.upgrade import inherited_groups, oldbin_path

__all__ = ["main"]

USAGE = f"""Usage: {NAME} [-?hvVtTq] [-s signal] [-p prefix]
             [-e filename] [-c filename] [-g directives]

Options:
  -?,-h         : this help
  -v            : show version and exit
  -V            : show version and configure options then exit
  -t            : test configuration and exit
  -T            : test configuration, dump it and exit
  -q            : suppress non-error messages during configuration testing
  -s signal     : send signal to a master process: stop, quit, reopen, reload
  -p prefix     : set prefix path (default: current directory)
  -e filename   : set error log file (default: logs/error.log)
  -c filename   : set configuration file (default: {DEFAULT_CONF})
  -g directives : set global directives out of configuration file
"""

SIGNALS = {
    "stop": signal.SIGTERM,
    "quit": signal.SIGQUIT,
    "reopen": signal.SIGUSR1,
    "reload": signal.SIGHUP,
}


class Options:
    def __init__(self) -> None:
        self.conf = DEFAULT_CONF
        self.prefix: str | None = None
        self.error_log: str | None = None
        self.globals: str | None = None
        self.test = False
        self.dump = False
        self.quiet = False
        self.version = False
        self.configure = False
        self.help = False
        self.signal: str | None = None


def _say(msg: str) -> None:
    sys.stderr.write(f"{NAME}: {msg}\n")
    sys.stderr.flush()


def parse_args(argv: list[str]) -> Options:
    """nginx's ``ngx_get_options``; raises ``SystemExit(1)`` on a bad option."""
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or len(arg) < 2:
            _say(f'invalid option: "{arg}"')
            raise SystemExit(1)
        j = 1
        while j < len(arg):
            c = arg[j]
            j += 1
            if c in "?h":
                opts.help = True
            elif c == "v":
                opts.version = True
            elif c == "V":
                opts.version = opts.configure = True
            elif c == "t":
                opts.test = True
            elif c == "T":
                opts.test = opts.dump = True
            elif c == "q":
                opts.quiet = True
            elif c in "cpegs":
                if j < len(arg):
                    value = arg[j:]
                elif i < len(argv):
                    value = argv[i]
                    i += 1
                else:
                    what = {"c": "-c", "p": "-p", "e": "-e", "g": "-g", "s": "-s"}[c]
                    _say(
                        f'option "{what}" requires '
                        + {
                            "c": "file name",
                            "p": "directory name",
                            "e": "file name",
                            "g": "parameter",
                            "s": "parameter",
                        }[c]
                    )
                    raise SystemExit(1)
                j = len(arg)
                if c == "c":
                    opts.conf = value
                elif c == "p":
                    opts.prefix = value
                elif c == "e":
                    opts.error_log = value
                elif c == "g":
                    opts.globals = value
                else:
                    if value not in SIGNALS:
                        _say(f'invalid option: "-s {value}"')
                        raise SystemExit(1)
                    opts.signal = value
            else:
                _say(f'invalid option: "{arg[j - 1 :]}"')
                raise SystemExit(1)
    return opts


def _conf_path(opts: Options) -> str:
    prefix = os.path.abspath(opts.prefix or os.getcwd())
    return opts.conf if os.path.isabs(opts.conf) else os.path.join(prefix, opts.conf)


def _early_log(opts: Options) -> ErrorLogger:
    """The log used until the configuration is read (``-e``); stderr as well, like nginx."""
    if opts.error_log and opts.error_log != "stderr":
        prefix = os.path.abspath(opts.prefix or os.getcwd())
        path = (
            opts.error_log
            if os.path.isabs(opts.error_log)
            else os.path.join(prefix, opts.error_log)
        )
        try:
            return ErrorLogger((ErrorLog(path, "notice"),), stderr_fallback=False)
        except OSError:
            pass
    return ErrorLogger((), stderr_fallback=False)


def _load(opts: Options) -> Config:
    return load(opts.conf, prefix=opts.prefix, globals_=opts.globals)


def cmd_test(opts: Options) -> int:
    path = _conf_path(opts)
    try:
        config = _load(opts)
    except ConfigError as exc:
        _say(f"[emerg] {exc}")
        _say(f"configuration file {path} test failed")
        return 1
    for w in config.warnings:
        _say(f"[warn] {w}")
    if not opts.quiet:
        _say(f"the configuration file {path} syntax is ok")
        _say(f"configuration file {path} test is successful")
    if opts.dump:
        for file, text in config.files:
            sys.stdout.write(f"# configuration file {file}:\n{text}")
            if not text.endswith("\n"):
                sys.stdout.write("\n")
            sys.stdout.write("\n")
        sys.stdout.flush()
    return 0


def cmd_signal(opts: Options) -> int:
    try:
        config = _load(opts)
    except ConfigError as exc:
        _say(f"[emerg] {exc}")
        return 1
    try:
        with open(config.pid) as fh:
            text = fh.read().strip()
    except OSError as exc:
        _say(f'[error] open() "{config.pid}" failed ({exc.errno}: {exc.strerror})')
        return 1
    if not text.isdigit():
        _say(f'[error] invalid PID number "{text}" in "{config.pid}"')
        return 1
    assert opts.signal is not None
    try:
        os.kill(int(text), SIGNALS[opts.signal])
    except OSError as exc:
        _say(
            f"[alert] kill({text}, {int(SIGNALS[opts.signal])}) failed "
            f"({exc.errno}: {exc.strerror})"
        )
        return 1
    return 0


def _daemonize(error_log: str | None) -> None:
    """Detach like ``ngx_daemon``: fork, setsid, stdin and stdout to /dev/null, and stderr to
    the error log file (``ngx_log_redirect_stderr``), so no pipe of the caller stays open."""
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    os.umask(0o022)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    if error_log is not None:
        err = os.open(error_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(err, 2)
        os.close(err)
    if null > 2:
        os.close(null)


def cmd_run(opts: Options) -> int:
    early = _early_log(opts)
    try:
        config = _load(opts)
    except ConfigError as exc:
        _say(f"[emerg] {exc}")
        early.log("emerg", str(exc))
        return 1
    for w in config.warnings:
        _say(f"[warn] {w}")
    access_logs = AccessLogs()
    try:
        error_log = ErrorLogger(config.error_logs, scoped=location_error_logs(config))
        access_logs.open(access_log_paths(config))
    except OSError as exc:
        _say(f'[emerg] open() "{exc.filename}" failed ({exc.errno}: {exc.strerror})')
        return 1
    # A new master started by USR2 serves on the old one's sockets (wsgate.server.upgrade).
    inherited = inherited_groups(error_log)
    try:
        workers = config.worker_processes if config.master_process else 1
        groups = open_groups(config, inherited, workers)
    except ConfigError as exc:
        _say(f"[emerg] {exc}")
        error_log.log("emerg", str(exc))
        return 1
    for sock in dropped_sockets(inherited, groups):
        sock.close()
    # nginx does not detach again when it inherited its sockets: the old master started it.
    if config.daemon and not inherited:
        files = [e.path for e in config.error_logs if e.path != "stderr"]
        _daemonize(files[0] if files else None)
    # A master started by USR2 leaves unix: socket files to its parent while that runs.
    parent = os.getppid() if inherited else 0
    try:
        if config.master_process:
            return _run_master(opts, config, error_log, access_logs, groups)
        return _run_single(opts, config, error_log, access_logs, groups)
    finally:
        if not _UPGRADED and (not parent or os.getppid() != parent):
            remove_unix_sockets(groups)


#: The master exited with a new binary running on its sockets (USR2, then QUIT).
_UPGRADED = False


def _started(config: Config, error_log: ErrorLogger) -> None:
    pid_write(config.pid)
    error_log.log("notice", f"{SERVER_TOKEN} started, pid {os.getpid()}")


def _remove_pid(path: str) -> None:
    """Remove the pid file, or its ``.oldbin`` name after an upgrade, if it is ours."""
    for name in (path, oldbin_path(path)):
        try:
            with open(name) as fh:
                if fh.read().strip() == str(os.getpid()):
                    os.unlink(name)
        except OSError:
            pass


def _run_master(
    opts: Options,
    config: Config,
    error_log: ErrorLogger,
    access_logs: AccessLogs,
    groups: dict[BindKey, ListenGroup],
) -> int:
    """nginx's default: a master that forks ``worker_processes`` workers (the access logs
    are opened by each worker; the master only checked that they open)."""
    from wsgate.server.master import Master
    from wsgate.server.shared import Shared

    access_logs.close()
    for group in groups.values():
        announce(error_log, group)
    shared = Shared.inherited(error_log)
    master = Master(
        config, error_log, groups, lambda: _load(opts), shared, max_slots=shared.max_slots
    )
    try:
        return master.run(lambda: _started(config, error_log))
    finally:
        global _UPGRADED
        _UPGRADED = master.new_binary != 0
        groups.update(master.groups)
        _remove_pid(master.config.pid)
        error_log.log("notice", "exit")
        error_log.close()


def _run_single(
    opts: Options,
    config: Config,
    error_log: ErrorLogger,
    access_logs: AccessLogs,
    groups: dict[BindKey, ListenGroup],
) -> int:
    """``master_process off``: one process accepts, proxies and reloads in place."""
    from wsgate.server.shared import Shared
    from wsgate.server.worker import serve

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    gw = Gateway(config, loop, error_log, access_logs, reload_config=lambda: _load(opts))
    shared = Shared.inherited(error_log, max_slots=1)
    shared.configure(config)
    shared.attach(gw, 0)
    gw.on_reload = shared.configure
    gw.install_signals()
    try:
        serve(gw, groups, lambda: _started(config, error_log))
    finally:
        groups.update(gw.groups)
        _remove_pid(gw.config.pid)
        error_log.log("notice", "exit")
        gw.access_logs.close()
        error_log.close()
        loop.close()
    return gw.exit_code


def main(argv: list[str] | None = None) -> int:
    if sys.stderr is None:
        # Started with descriptor 2 closed (nginx-tests' try_run does it): nginx carries on
        # and so does wsgate, its console lines going nowhere.
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts.help:
        sys.stderr.write(f"{NAME} version: {SERVER_TOKEN}\n{USAGE}")
        return 0
    if opts.version:
        if opts.configure:
            sys.stderr.write(version_lines(SERVER_TOKEN))
        else:
            sys.stderr.write(f"{NAME} version: {SERVER_TOKEN}\n")
        return 0
    if opts.test:
        return cmd_test(opts)
    if opts.signal:
        return cmd_signal(opts)
    return cmd_run(opts)


if __name__ == "__main__":
    raise SystemExit(main())
