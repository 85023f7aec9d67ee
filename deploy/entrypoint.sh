#!/bin/sh
# wsgate's container entrypoint (POSIX sh), installed in the image as
# /usr/local/bin/wsgate-entrypoint (deploy/Containerfile).
#
#   wsgate-entrypoint [WSGATE-ARGS...]  run wsgate in the foreground and watch its configuration
#   wsgate-entrypoint stop              graceful stop (QUIT), then wait until wsgate has exited:
#                                       the Kubernetes preStop hook (deploy/kubernetes/)
#   wsgate-entrypoint reload            `wsgate -t`, then a reload (HUP) if the test passed
#
# Run mode starts the watcher below in the background, then *execs* wsgate: wsgate's master is
# then the container's PID 1 and receives every signal sent to the container (QUIT: graceful
# stop; TERM, INT: fast stop; HUP: reload; USR1: reopen logs) with no shell in between to
# forward them, and it reaps children it did not start, as PID 1 must. The master's pid is
# recorded in $WSGATE_PREFIX/wsgate-entrypoint.pid for `stop` and `reload`.
#
# The watcher: a mounted ConfigMap changes by an atomic swap of a symlink (..data), not by a
# write to the file wsgate read. Every WSGATE_WATCH_INTERVAL seconds the watcher takes a
# checksum of the files in WSGATE_CONF_DIR (the kubelet's ..* folders pruned, the visible names
# followed); when it changes it runs `wsgate -t` and, if that passes, sends HUP to the master
# (what `wsgate -s reload` does: new workers on the new configuration, the old ones keep their
# tunnels). A configuration that fails `wsgate -t` is not loaded: its errors are logged and
# wsgate keeps the running configuration until the next change. The watcher ends with wsgate.
#
# `stop` and `reload` signal the recorded pid rather than run `wsgate -s quit|reload`: `-s`
# reads the configuration on disk to find the pid file, so it fails when a broken configuration
# has been mounted meanwhile (one the watcher refused to load), and reads the new `pid` path if
# the change moved it. Without the record (wsgate started some other way) they fall back to -s.
#
# Environment (defaults in brackets):
#   WSGATE_BIN             the wsgate command [wsgate]
#   WSGATE_CONF            configuration file [/etc/wsgate/nginx.conf]
#   WSGATE_CONF_DIR        folder watched for changes [the folder of WSGATE_CONF]
#   WSGATE_PREFIX          wsgate's prefix (-p): relative paths in the configuration (the pid
#                          file, client_body_temp) are under it; created if missing
#                          [/var/lib/wsgate]
#   WSGATE_GLOBALS         directives given with -g ['daemon off;']: the master must stay in the
#                          foreground, so the configuration itself must not say `daemon`
#   WSGATE_WATCH_INTERVAL  seconds between two checksums; 0 turns the watcher off [5]
#                          (whole seconds are portable; Debian's sleep also takes fractions)
#   WSGATE_STOP_TIMEOUT    `stop` gives up waiting after this many seconds; 0: wait as long as
#                          it takes (the kubelet's terminationGracePeriodSeconds bounds it) [0]
# Messages go to stderr (the container's log), prefixed "wsgate-entrypoint:".

set -u

WSGATE_BIN=${WSGATE_BIN:-wsgate}
WSGATE_CONF=${WSGATE_CONF:-/etc/wsgate/nginx.conf}
WSGATE_CONF_DIR=${WSGATE_CONF_DIR:-$(dirname -- "$WSGATE_CONF")}
WSGATE_PREFIX=${WSGATE_PREFIX:-/var/lib/wsgate}
WSGATE_GLOBALS=${WSGATE_GLOBALS-daemon off;}
WSGATE_WATCH_INTERVAL=${WSGATE_WATCH_INTERVAL:-5}
WSGATE_STOP_TIMEOUT=${WSGATE_STOP_TIMEOUT:-0}
RECORD=$WSGATE_PREFIX/wsgate-entrypoint.pid

log() {
    printf '%s\n' "wsgate-entrypoint: $*" >&2
}

# Each line of $1, indented, to stderr (wsgate's own messages under ours).
log_output() {
    printf '%s\n' "$1" | sed 's/^/  /' >&2
}

# wsgate with the prefix, configuration and -g directives that every call shares.
wsgate_cmd() {
    if [ -n "$WSGATE_GLOBALS" ]; then
        "$WSGATE_BIN" -p "$WSGATE_PREFIX" -c "$WSGATE_CONF" -g "$WSGATE_GLOBALS" "$@"
    else
        "$WSGATE_BIN" -p "$WSGATE_PREFIX" -c "$WSGATE_CONF" "$@"
    fi
}

# True while process $1 runs (a zombie, exited but not yet reaped by its parent, does not).
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    if [ -r "/proc/$1/stat" ]; then
        state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
        [ "$state" != Z ] || return 1
    fi
    return 0
}

# The recorded master pid if that process still runs wsgate, else nothing (a record left by a
# wsgate that died may name a pid given to another process since).
master_pid() {
    pid=$(cat "$RECORD" 2>/dev/null) || return 1
    case $pid in '' | *[!0-9]*) return 1 ;; esac
    alive "$pid" || return 1
    if [ -r "/proc/$pid/cmdline" ]; then
        tr '\000' ' ' <"/proc/$pid/cmdline" | grep -q wsgate || return 1
    fi
    printf '%s\n' "$pid"
}

# One line that changes whenever a file in the watched folder does (content, name, a file
# added or removed). A ConfigMap volume keeps the real files in a ..TIMESTAMP folder behind the
# ..data symlink: the ..* entries are pruned and the visible names (symlinks into ..data)
# followed.
conf_sum() {
    find -L "$WSGATE_CONF_DIR" -path "$WSGATE_CONF_DIR/..*" -prune -o -type f \
        -exec cksum {} + 2>/dev/null | LC_ALL=C sort | cksum
}

# `wsgate -t`; if it passed, HUP to master $1 (`wsgate -s reload` without $1).
check_and_reload() {
    if ! out=$(wsgate_cmd -t 2>&1); then
        log "configuration test failed: not loaded, wsgate keeps its running configuration"
        log_output "$out"
        return 1
    fi
    if [ -n "${1-}" ]; then
        if kill -HUP "$1" 2>/dev/null; then
            log "configuration test passed: reload signalled (HUP to pid $1)"
            return 0
        fi
        log "configuration test passed, but wsgate (pid $1) could not be signalled"
        return 1
    fi
    if err=$(wsgate_cmd -s reload 2>&1); then
        log "configuration test passed: reload signalled (wsgate -s reload)"
        return 0
    fi
    log "configuration test passed, but wsgate -s reload failed"
    log_output "$err"
    return 1
}

# In the background, while master $1 lives; $2 is the checksum wsgate started with.
watch_config() {
    master=$1
    last=$2
    while alive "$master"; do
        if ! sleep "$WSGATE_WATCH_INTERVAL"; then
            log "watcher stopped: WSGATE_WATCH_INTERVAL=$WSGATE_WATCH_INTERVAL is not a duration"
            return
        fi
        alive "$master" || break
        now=$(conf_sum)
        if [ "$now" != "$last" ]; then
            last=$now
            log "configuration changed in $WSGATE_CONF_DIR: testing it"
            check_and_reload "$master" || :
        fi
    done
}

# The preStop hook: QUIT, then wait until the master has exited.
stop() {
    if ! pid=$(master_pid); then
        if [ -f "$RECORD" ]; then
            log "wsgate (pid $(cat "$RECORD" 2>/dev/null)) is not running: nothing to stop"
            return 0
        fi
        log "no wsgate recorded in $RECORD: sending QUIT with wsgate -s quit (cannot wait)"
        wsgate_cmd -s quit
        return
    fi
    if ! kill -QUIT "$pid"; then
        log "could not send QUIT to wsgate (pid $pid)"
        return 1
    fi
    log "QUIT sent to wsgate (pid $pid): waiting for it to exit"
    start=$(date +%s)
    while alive "$pid"; do
        if [ "$WSGATE_STOP_TIMEOUT" -gt 0 ] &&
            [ $(($(date +%s) - start)) -ge "$WSGATE_STOP_TIMEOUT" ]; then
            log "wsgate (pid $pid) still running after ${WSGATE_STOP_TIMEOUT}s: giving up"
            return 1
        fi
        sleep 0.2 2>/dev/null || sleep 1
    done
    log "wsgate (pid $pid) exited, $(($(date +%s) - start))s after the QUIT"
    return 0
}

case ${1-} in
    stop)
        stop
        exit
        ;;
    reload)
        pid=$(master_pid) || pid=
        check_and_reload "$pid"
        exit
        ;;
esac

mkdir -p "$WSGATE_PREFIX/logs" || exit 1
# $$ is this shell's pid, which the exec below hands on to wsgate's master.
printf '%s\n' "$$" >"$RECORD" || exit 1

case $WSGATE_WATCH_INTERVAL in
    0 | 0.0 | '')
        log "configuration watcher off (WSGATE_WATCH_INTERVAL=0)"
        ;;
    *)
        first=$(conf_sum)
        watch_config "$$" "$first" </dev/null &
        log "watching $WSGATE_CONF_DIR every ${WSGATE_WATCH_INTERVAL}s for configuration changes"
        ;;
esac

if [ -n "$WSGATE_GLOBALS" ]; then
    exec "$WSGATE_BIN" -p "$WSGATE_PREFIX" -c "$WSGATE_CONF" -g "$WSGATE_GLOBALS" "$@"
fi
exec "$WSGATE_BIN" -p "$WSGATE_PREFIX" -c "$WSGATE_CONF" "$@"
