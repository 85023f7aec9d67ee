/*
 * wsgate.proxy._relay: plain TCP connections and their tunnels outside uvloop (issue 16).
 *
 * Since the handshake work, a plain TCP connection is on an FdTransport from its start:
 * accept() takes a client (accept4, the peer's address from it) and FdTransport.connect()
 * opens an upstream connection (connect in the set; SO_ERROR when writable, then
 * connection_made and reading), so the HTTP phase runs on it too and nothing is handed over
 * after the 101 (fdrelay.py).  What follows describes the tunnel's use of it.
 *
 * After the 101 a tunnel of two plain TCP connections relays on the FdTransport objects its
 * connections already are, of one Poller per worker.  The Poller owns an epoll set that
 * the event loop watches as one descriptor (loop.add_reader(epfd, poller.run)); when it is
 * ready, run() takes every ready socket in one epoll_wait and, for each, does what uvloop
 * does for a readable or writable stream, in C: one read of up to 256 KiB, the bytes given to
 * the protocol's data_received (the tunnel side's compiled relay), whose write() to the peer
 * transport is one send() when nothing is queued for it.
 *
 * FdTransport is an asyncio.Transport for what wsgate uses (write, write_eof,
 * can_write_eof, close, abort, is_closing, pause_reading, resume_reading, is_reading,
 * get_write_buffer_size, get_write_buffer_limits, set_write_buffer_limits, set_protocol,
 * get_protocol; get_extra_info in fdrelay.py's subclass) with asyncio's semantics:
 *
 * - write() sends at once if nothing is queued, else queues (bytes objects are kept, not
 *   copied); past the high-water mark (64 KiB) the protocol's pause_writing() is called,
 *   and resume_writing() once the queue is at the low-water mark (16 KiB) or below;
 * - a read of 0 bytes is EOF: reading stops and eof_received() is called; a false answer
 *   closes the transport;
 * - close() stops reading and closes the socket once the queue is sent; abort() closes it
 *   now, dropping the queue; a read or write error is abort() with that error;
 * - connection_lost(exc) is called once, from the loop (call_soon), never from within a
 *   method of the transport;
 * - write_eof() shuts the sending direction down once the queue is sent.
 *
 * Interest in epoll follows the state: EPOLLIN while reading, EPOLLOUT while something is
 * queued; a socket with neither is removed from the set (a hung-up socket would otherwise be
 * reported for ever) and added back when it needs one.  The Poller keeps a reference to each
 * transport in its set, and run() keeps one to each transport of its batch while it works
 * through it, so a callback that closes another transport of the batch is safe.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024)
#define BATCH 128
#define HIGH_WATER (64 * 1024)

static char *read_buf = NULL;

static PyObject *str_data_received, *str_eof_received, *str_connection_lost, *str_pause_writing,
    *str_resume_writing, *str_call_soon, *str_call_exception_handler, *str_connection_made;

/* --- Poller ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    int epfd;
    PyObject *loop_ref; /* a weak reference: the loop holds the poller (its reader) */
    Py_ssize_t count;   /* transports in the set */
} Poller;

/* The poller's loop (borrowed), or NULL with an error set once it is gone. */
static PyObject *
poller_loop(Poller *p)
{
    PyObject *loop = PyWeakref_GetObject(p->loop_ref);
    if (loop == NULL)
        return NULL;
    if (loop == Py_None) {
        PyErr_SetString(PyExc_RuntimeError, "the event loop is gone");
        return NULL;
    }
    return loop;
}

typedef struct {
    PyObject_HEAD
    Poller *poller;
    PyObject *protocol;
    PyObject *data_received; /* protocol.data_received, bound (as uvloop keeps it) */
    int fd;                  /* -1 once closed */
    unsigned int registered; /* the events in the epoll set; 0: not in it */
    char reading;
    char closing;
    char eof;     /* write_eof() called */
    char paused;  /* pause_writing() sent */
    char lost;    /* connection_lost scheduled */
    char connecting; /* connect() in progress: on_connect is called when it completes */
    PyObject *on_connect;
    PyObject *queue; /* list of bytes waiting to be sent, or NULL */
    Py_ssize_t head_sent; /* bytes of queue[0] already sent */
    Py_ssize_t queued;    /* bytes in the queue, not sent */
    Py_ssize_t high, low;
} FdTransport;

static PyTypeObject FdTransportType;

/* --- small helpers ------------------------------------------------------------------------- */

/* protocol.<name>(*args) with errors reported to the loop's exception handler. */
static void
report(FdTransport *t, const char *what)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *ctx = Py_BuildValue("{s:s,s:O,s:O,s:O}", "message", what, "exception",
                                  value ? value : Py_None, "transport", (PyObject *)t,
                                  "protocol", t->protocol ? t->protocol : Py_None);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    PyObject *loop = ctx != NULL ? poller_loop(t->poller) : NULL;
    if (loop == NULL) {
        Py_XDECREF(ctx);
        PyErr_WriteUnraisable((PyObject *)t);
        return;
    }
    PyObject *r = PyObject_CallMethodOneArg(loop, str_call_exception_handler, ctx);
    Py_DECREF(ctx);
    if (r == NULL)
        PyErr_WriteUnraisable((PyObject *)t);
    Py_XDECREF(r);
}

static int
epoll_set(FdTransport *t, unsigned int want)
{
    if (t->fd < 0 || want == t->registered)
        return 0;
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = want;
    ev.data.ptr = t;
    int op = t->registered == 0 ? EPOLL_CTL_ADD : (want == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD);
    if (epoll_ctl(t->poller->epfd, op, t->fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (t->registered == 0) {
        Py_INCREF(t); /* the set's reference */
        t->poller->count++;
    }
    t->registered = want;
    if (want == 0) {
        t->poller->count--;
        Py_DECREF(t); /* the caller holds one of its own */
    }
    return 0;
}

static inline unsigned int
wanted(FdTransport *t)
{
    if (t->fd < 0)
        return 0;
    if (t->connecting)
        return EPOLLOUT;
    return (t->reading && !t->closing ? EPOLLIN : 0) | (t->queued > 0 ? EPOLLOUT : 0);
}

/* A read or send that would block (or was interrupted): try again when the socket is ready. */
static inline int
would_block(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK || err == EINTR;
}

static void
drop_queue(FdTransport *t)
{
    Py_CLEAR(t->queue);
    t->head_sent = 0;
    t->queued = 0;
}

/* The socket closed and connection_lost(exc) scheduled (once). */
static void
finish(FdTransport *t, PyObject *exc)
{
    t->closing = 1;
    t->reading = 0;
    drop_queue(t);
    if (t->fd >= 0) {
        if (t->registered)
            (void)epoll_set(t, 0);
        PyErr_Clear();
        close(t->fd);
        t->fd = -1;
    }
    if (t->connecting) {
        /* The protocol never had connection_made: it gets no connection_lost either. */
        t->connecting = 0;
        t->lost = 1;
        Py_CLEAR(t->on_connect);
    }
    if (t->lost)
        return;
    t->lost = 1;
    if (t->protocol == NULL)
        return;
    PyObject *cb = PyObject_GetAttr(t->protocol, str_connection_lost);
    if (cb == NULL) {
        report(t, "protocol has no connection_lost");
        return;
    }
    PyObject *loop = poller_loop(t->poller);
    PyObject *r = loop == NULL ? NULL
                               : PyObject_CallMethodObjArgs(loop, str_call_soon, cb,
                                                            exc ? exc : Py_None, NULL);
    Py_DECREF(cb);
    if (r == NULL)
        report(t, "call_soon(connection_lost) failed");
    Py_XDECREF(r);
}

/* abort() with the error in errno (a failed read or write). */
static void
fail_errno(FdTransport *t, int err)
{
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
    if (exc == NULL) {
        PyErr_Clear();
        finish(t, NULL);
        return;
    }
    /* OSError(errno, ...) is ConnectionResetError etc. for those errnos. */
    finish(t, exc);
    Py_DECREF(exc);
}

static void
call_protocol(FdTransport *t, PyObject *name, const char *what)
{
    if (t->protocol == NULL)
        return;
    PyObject *r = PyObject_CallMethodNoArgs(t->protocol, name);
    if (r == NULL)
        report(t, what);
    Py_XDECREF(r);
}

/* Interest in epoll as the state now wants; on a failure the transport ends (-1). */
static int
rearm(FdTransport *t)
{
    if (epoll_set(t, wanted(t)) == 0)
        return 0;
    report(t, "epoll_ctl");
    finish(t, NULL);
    return -1;
}

/* close(): reading stops, and the socket closes once the queue is sent. */
static int
begin_close(FdTransport *t)
{
    t->closing = 1;
    t->reading = 0;
    if (t->queued == 0) {
        finish(t, NULL);
        return 0;
    }
    return epoll_set(t, wanted(t));
}

/* Send what is queued, as much as the socket takes. */
static void
flush(FdTransport *t)
{
    while (t->queue != NULL && PyList_GET_SIZE(t->queue) > 0 && t->fd >= 0) {
        PyObject *item = PyList_GET_ITEM(t->queue, 0);
        const char *p = PyBytes_AS_STRING(item) + t->head_sent;
        Py_ssize_t left = PyBytes_GET_SIZE(item) - t->head_sent;
        ssize_t n = send(t->fd, p, (size_t)left, MSG_NOSIGNAL);
        if (n < 0) {
            if (would_block(errno))
                break;
            fail_errno(t, errno);
            return;
        }
        t->queued -= n;
        if (n < left) {
            t->head_sent += n;
            break;
        }
        t->head_sent = 0;
        if (PyList_SetSlice(t->queue, 0, 1, NULL) < 0) {
            report(t, "write queue");
            finish(t, NULL);
            return;
        }
    }
    if (t->fd < 0)
        return;
    if (t->queued == 0) {
        Py_CLEAR(t->queue);
        if (t->closing) {
            finish(t, NULL);
            return;
        }
        if (t->eof && shutdown(t->fd, SHUT_WR) < 0 && errno != ENOTCONN) {
            fail_errno(t, errno);
            return;
        }
    }
    if (rearm(t) < 0)
        return;
    if (t->paused && t->queued <= t->low) {
        t->paused = 0;
        call_protocol(t, str_resume_writing, "protocol.resume_writing() failed");
    }
}

/* One read, its bytes to data_received (or EOF to eof_received). */
static void
readable(FdTransport *t)
{
    ssize_t n = read(t->fd, read_buf, READ_SIZE);
    if (n < 0) {
        if (!would_block(errno))
            fail_errno(t, errno);
        return;
    }
    if (n == 0) {
        t->reading = 0;
        if (rearm(t) < 0)
            return;
        if (t->protocol == NULL)
            return;
        PyObject *r = PyObject_CallMethodNoArgs(t->protocol, str_eof_received);
        if (r == NULL) {
            report(t, "protocol.eof_received() call failed.");
            finish(t, NULL);
            return;
        }
        int keep = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (keep <= 0 && !t->closing) {
            if (keep < 0)
                PyErr_Clear();
            if (begin_close(t) < 0) {
                PyErr_Clear();
                finish(t, NULL);
            }
        }
        return;
    }
    PyObject *data = PyBytes_FromStringAndSize(read_buf, n);
    if (data == NULL) {
        report(t, "out of memory");
        finish(t, NULL);
        return;
    }
    PyObject *r = PyObject_Vectorcall(t->data_received, &data, 1, NULL);
    Py_DECREF(data);
    if (r == NULL) {
        report(t, "Fatal error: protocol.data_received() call failed.");
        finish(t, NULL);
        return;
    }
    Py_DECREF(r);
}

/* A connect() in progress completed (writable, or an error): connection_made(transport) and
 * on_connect(0), reading from now on; or, with the socket's error, the socket closed and
 * on_connect(errno). */
static void
connected(FdTransport *t)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    PyObject *cb = t->on_connect;
    t->on_connect = NULL; /* the reference is ours now */
    if (err == 0) {
        /* Reading from now on: EPOLLOUT becomes EPOLLIN in one epoll_ctl. */
        t->reading = 1;
        t->connecting = 0;
        if (epoll_set(t, wanted(t)) < 0) {
            report(t, "epoll_ctl");
            t->connecting = 1; /* never made: finish() tells the protocol nothing */
            err = ECONNABORTED;
        }
    }
    if (err != 0) {
        finish(t, NULL); /* still connecting: no connection_lost */
    }
    else {
        PyObject *r = PyObject_CallMethodOneArg(t->protocol, str_connection_made, (PyObject *)t);
        if (r == NULL) {
            report(t, "protocol.connection_made() failed");
            finish(t, NULL);
            err = ECONNABORTED;
        }
        Py_XDECREF(r);
    }
    if (cb == NULL)
        return;
    PyObject *code = PyLong_FromLong(err);
    PyObject *r = code == NULL ? NULL : PyObject_CallOneArg(cb, code);
    Py_XDECREF(code);
    if (r == NULL)
        report(t, "on_connect() failed");
    Py_XDECREF(r);
    Py_DECREF(cb);
}

/* --- Poller methods ------------------------------------------------------------------------ */

static PyObject *
poller_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *loop;
    static char *kwlist[] = {"loop", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kwlist, &loop))
        return NULL;
    Poller *self = (Poller *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->epfd = -1;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    self->loop_ref = PyWeakref_NewRef(loop, NULL);
    if (self->loop_ref == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
poller_dealloc(Poller *self)
{
    if (self->epfd >= 0)
        close(self->epfd);
    Py_CLEAR(self->loop_ref);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The event loop's reader callback: every ready socket, once. */
static PyObject *
poller_run(Poller *self, PyObject *Py_UNUSED(ignored))
{
    struct epoll_event evs[BATCH];
    int n = epoll_wait(self->epfd, evs, BATCH, 0);
    if (n < 0) {
        if (errno == EINTR)
            Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    for (int i = 0; i < n; i++)
        Py_INCREF((PyObject *)evs[i].data.ptr);
    for (int i = 0; i < n; i++) {
        FdTransport *t = (FdTransport *)evs[i].data.ptr;
        unsigned int ev = evs[i].events;
        if (t->fd < 0)
            continue;
        if (t->connecting) {
            connected(t);
            continue;
        }
        /* A hang-up or an error with something queued: the send says which (and ends it). */
        if ((ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && t->queued > 0)
            flush(t);
        if (t->fd < 0)
            continue;
        if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
            if (t->reading && !t->closing)
                readable(t);
            else if (t->queued == 0 && t->registered) {
                /* Hung up while not read: out of the set until it is read again. */
                if (epoll_set(t, 0) < 0)
                    PyErr_Clear();
            }
        }
    }
    for (int i = 0; i < n; i++)
        Py_DECREF((PyObject *)evs[i].data.ptr);
    Py_RETURN_NONE;
}

static PyObject *
poller_fileno(Poller *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(self->epfd);
}

static PyObject *
poller_get_count(Poller *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->count);
}

static PyMethodDef poller_methods[] = {
    {"run", (PyCFunction)poller_run, METH_NOARGS,
     "The loop's reader callback: relay every ready socket once."},
    {"fileno", (PyCFunction)poller_fileno, METH_NOARGS, "The epoll descriptor."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef poller_getset[] = {
    {"count", (getter)poller_get_count, NULL, "transports in the epoll set", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsgate.proxy._relay.Poller",
    .tp_basicsize = sizeof(Poller),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Poller(loop): one epoll set of tunnel sockets, watched by the loop as one.",
    .tp_new = poller_new,
    .tp_dealloc = (destructor)poller_dealloc,
    .tp_methods = poller_methods,
    .tp_getset = poller_getset,
};

/* --- FdTransport methods -------------------------------------------------------------------- */

static int
set_protocol(FdTransport *t, PyObject *protocol)
{
    PyObject *dr = PyObject_GetAttr(protocol, str_data_received);
    if (dr == NULL)
        return -1;
    Py_INCREF(protocol);
    Py_XSETREF(t->protocol, protocol);
    Py_XSETREF(t->data_received, dr);
    return 0;
}

static PyObject *
fdt_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *poller, *protocol;
    int fd;
    static char *kwlist[] = {"poller", "fd", "protocol", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!iO", kwlist, &PollerType, &poller, &fd,
                                     &protocol))
        return NULL;
    FdTransport *t = (FdTransport *)type->tp_alloc(type, 0);
    if (t == NULL)
        return NULL;
    t->fd = -1;
    Py_INCREF(poller);
    t->poller = (Poller *)poller;
    t->high = HIGH_WATER;
    t->low = HIGH_WATER / 4;
    if (set_protocol(t, protocol) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    t->fd = fd; /* owned from here on: closed by the transport */
    return (PyObject *)t;
}

static int
fdt_traverse(FdTransport *t, visitproc visit, void *arg)
{
    Py_VISIT(t->poller);
    Py_VISIT(t->protocol);
    Py_VISIT(t->data_received);
    Py_VISIT(t->queue);
    Py_VISIT(t->on_connect);
    return 0;
}

static int
fdt_clear(FdTransport *t)
{
    Py_CLEAR(t->protocol);
    Py_CLEAR(t->data_received);
    Py_CLEAR(t->queue);
    Py_CLEAR(t->on_connect);
    return 0;
}

static void
fdt_dealloc(FdTransport *t)
{
    PyObject_GC_UnTrack(t);
    if (t->fd >= 0) /* never in the set here: the set holds a reference */
        close(t->fd);
    fdt_clear(t);
    Py_CLEAR(t->poller);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *
fdt_write(FdTransport *t, PyObject *data)
{
    if (!PyBytes_Check(data)) {
        if (!PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
            PyErr_Format(PyExc_TypeError, "data: expecting a bytes-like instance, got %s",
                         Py_TYPE(data)->tp_name);
            return NULL;
        }
        PyObject *copy = PyBytes_FromObject(data);
        if (copy == NULL)
            return NULL;
        PyObject *r = fdt_write(t, copy);
        Py_DECREF(copy);
        return r;
    }
    if (t->eof) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
        return NULL;
    }
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    if (len == 0 || t->fd < 0)
        Py_RETURN_NONE; /* asyncio: writes after the connection is lost are dropped */
    Py_ssize_t sent = 0;
    if (t->queued == 0 && !t->connecting) {
        ssize_t n = send(t->fd, PyBytes_AS_STRING(data), (size_t)len, MSG_NOSIGNAL);
        if (n == len)
            Py_RETURN_NONE;
        if (n < 0) {
            if (!would_block(errno)) {
                fail_errno(t, errno);
                Py_RETURN_NONE;
            }
            n = 0;
        }
        sent = n;
    }
    if (t->queue == NULL) {
        t->queue = PyList_New(0);
        if (t->queue == NULL)
            return NULL;
    }
    if (PyList_Append(t->queue, data) < 0)
        return NULL;
    if (PyList_GET_SIZE(t->queue) == 1)
        t->head_sent = sent;
    t->queued += len - sent;
    if (epoll_set(t, wanted(t)) < 0)
        return NULL;
    if (!t->paused && t->queued > t->high) {
        t->paused = 1;
        call_protocol(t, str_pause_writing, "protocol.pause_writing() failed");
    }
    Py_RETURN_NONE;
}

static PyObject *
fdt_write_eof(FdTransport *t, PyObject *Py_UNUSED(ignored))
{
    if (t->closing || t->eof)
        Py_RETURN_NONE;
    t->eof = 1;
    if (t->queued == 0 && t->fd >= 0 && shutdown(t->fd, SHUT_WR) < 0 && errno != ENOTCONN)
        fail_errno(t, errno);
    Py_RETURN_NONE;
}

static PyObject *
fdt_can_write_eof(FdTransport *t, PyObject *Py_UNUSED(ignored))
{
    Py_RETURN_TRUE;
}

static PyObject *
fdt_close(FdTransport *t, PyObject *Py_UNUSED(ignored))
{
    if (t->closing)
        Py_RETURN_NONE;
    if (begin_close(t) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
fdt_abort(FdTransport *t, PyObject *Py_UNUSED(ignored))
{
    finish(t, NULL);
    Py_RETURN_NONE;
}

static PyObject *
fdt_is_closing(FdTransport *t, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(t->closing);
}

static PyObject *
fdt_pause_reading(FdTransport *t, PyObject *Py_UNUSED(ignored))
{
    if (t->closing || !t->reading)
        Py_RETURN_NONE;
    t->reading = 0;
    if (epoll_set(t, wanted(t)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
fdt_resume_reading(FdTransport *t, PyObject *Py_UNUSED(ignored))
{
    if (t->closing || t->reading)
        Py_RETURN_NONE;
    t->reading = 1;
    if (epoll_set(t, wanted(t)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
fdt_is_reading(FdTransport *t, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(t->reading && !t->closing);
}

static PyObject *
fdt_get_write_buffer_size(FdTransport *t, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(t->queued);
}

static PyObject *
fdt_get_write_buffer_limits(FdTransport *t, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("(nn)", t->low, t->high);
}

static PyObject *
fdt_set_write_buffer_limits(FdTransport *t, PyObject *args, PyObject *kwds)
{
    PyObject *high_o = Py_None, *low_o = Py_None;
    static char *kwlist[] = {"high", "low", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO", kwlist, &high_o, &low_o))
        return NULL;
    /* asyncio's rule: high defaults to 64 KiB, or 4 × low; low to high / 4. */
    Py_ssize_t high, low;
    if (high_o == Py_None) {
        if (low_o == Py_None)
            high = HIGH_WATER;
        else {
            low = PyLong_AsSsize_t(low_o);
            if (low == -1 && PyErr_Occurred())
                return NULL;
            high = 4 * low;
        }
    }
    else {
        high = PyLong_AsSsize_t(high_o);
        if (high == -1 && PyErr_Occurred())
            return NULL;
    }
    if (low_o == Py_None)
        low = high / 4;
    else {
        low = PyLong_AsSsize_t(low_o);
        if (low == -1 && PyErr_Occurred())
            return NULL;
    }
    if (!(high >= low && low >= 0)) {
        PyErr_Format(PyExc_ValueError, "high (%zd) must be >= low (%zd) must be >= 0", high,
                     low);
        return NULL;
    }
    t->high = high;
    t->low = low;
    if (!t->paused && t->queued > t->high) {
        t->paused = 1;
        call_protocol(t, str_pause_writing, "protocol.pause_writing() failed");
    }
    Py_RETURN_NONE;
}

static PyObject *
fdt_set_protocol(FdTransport *t, PyObject *protocol)
{
    if (set_protocol(t, protocol) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
fdt_get_protocol(FdTransport *t, PyObject *Py_UNUSED(ignored))
{
    PyObject *p = t->protocol ? t->protocol : Py_None;
    Py_INCREF(p);
    return p;
}

static PyObject *
fdt_fileno(FdTransport *t, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(t->fd);
}

/* A sockaddr for a numeric host (IPv4 or IPv6, no scope) and port; 0 if host is not one. */
static int
numeric_addr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
        return AF_INET;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return AF_INET6;
    }
    return 0;
}

static void
set_nodelay(int fd)
{
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* FdTransport.connect(poller, host, port, protocol, on_connect): a new TCP socket connecting
 * to a numeric host, as a transport of the class it is called on; None if host is not numeric.
 * When the connect completes, the transport reads and protocol.connection_made(transport) is
 * called, then on_connect(0); if it fails, the socket is closed and on_connect(errno) called
 * (the protocol hears nothing).  An error at once (no descriptor, a refusal the kernel gives
 * at once) raises OSError.  abort() before the end closes it silently. */
static PyObject *
fdt_connect(PyTypeObject *cls, PyObject *args)
{
    PyObject *poller, *protocol, *on_connect;
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "O!siOO", &PollerType, &poller, &host, &port, &protocol,
                          &on_connect))
        return NULL;
    struct sockaddr_storage ss;
    socklen_t len;
    int family = numeric_addr(host, port, &ss, &len);
    if (family == 0)
        Py_RETURN_NONE;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    set_nodelay(fd); /* as uvloop and asyncio do on every TCP transport */
    if (connect(fd, (struct sockaddr *)&ss, len) < 0 && errno != EINPROGRESS) {
        int err = errno;
        close(fd);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    FdTransport *t = (FdTransport *)PyObject_CallFunction((PyObject *)cls, "OiO", poller, fd,
                                                          protocol);
    if (t == NULL) {
        close(fd);
        return NULL;
    }
    t->connecting = 1;
    Py_INCREF(on_connect);
    t->on_connect = on_connect;
    if (epoll_set(t, EPOLLOUT) < 0) {
        Py_DECREF(t); /* closes fd */
        return NULL;
    }
    return (PyObject *)t;
}

/* accept(fd) -> (fd, address): accept4() on a listening TCP socket, the new socket
 * non-blocking, close-on-exec and with TCP_NODELAY; the address as Python's socket module
 * gives it ((host, port) or (host, port, flowinfo, scope_id)).  BlockingIOError when nobody
 * waits, OSError otherwise. */
static PyObject *
relay_accept(PyObject *Py_UNUSED(module), PyObject *arg)
{
    int lfd = PyLong_AsLong(arg);
    if (lfd == -1 && PyErr_Occurred())
        return NULL;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int fd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    char text[INET6_ADDRSTRLEN];
    PyObject *addr = NULL;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
        addr = Py_BuildValue("(si)", text, ntohs(a->sin_port));
    }
    else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
        addr = Py_BuildValue("(siII)", text, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo),
                             a->sin6_scope_id);
    }
    else {
        addr = PyUnicode_FromString("");
    }
    if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)
        set_nodelay(fd);
    if (addr == NULL) {
        close(fd);
        return NULL;
    }
    PyObject *r = Py_BuildValue("(iN)", fd, addr);
    if (r == NULL)
        close(fd);
    return r;
}

static PyMethodDef fdt_methods[] = {
    {"connect", (PyCFunction)fdt_connect, METH_VARARGS | METH_CLASS,
     "connect(poller, host, port, protocol, on_connect): a new connection, or None."},
    {"write", (PyCFunction)fdt_write, METH_O, "Send data (queued while the socket is full)."},
    {"write_eof", (PyCFunction)fdt_write_eof, METH_NOARGS,
     "Shut the sending direction down once the queue is sent."},
    {"can_write_eof", (PyCFunction)fdt_can_write_eof, METH_NOARGS, "True."},
    {"close", (PyCFunction)fdt_close, METH_NOARGS, "Close once the queue is sent."},
    {"abort", (PyCFunction)fdt_abort, METH_NOARGS, "Close now, dropping the queue."},
    {"is_closing", (PyCFunction)fdt_is_closing, METH_NOARGS, "close() or abort() was called."},
    {"pause_reading", (PyCFunction)fdt_pause_reading, METH_NOARGS, "Stop reading."},
    {"resume_reading", (PyCFunction)fdt_resume_reading, METH_NOARGS, "Read again."},
    {"is_reading", (PyCFunction)fdt_is_reading, METH_NOARGS, "Whether it reads."},
    {"get_write_buffer_size", (PyCFunction)fdt_get_write_buffer_size, METH_NOARGS,
     "Bytes queued, not sent."},
    {"get_write_buffer_limits", (PyCFunction)fdt_get_write_buffer_limits, METH_NOARGS,
     "(low, high)."},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))fdt_set_write_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, "asyncio's set_write_buffer_limits."},
    {"set_protocol", (PyCFunction)fdt_set_protocol, METH_O, "Hand the transport over."},
    {"get_protocol", (PyCFunction)fdt_get_protocol, METH_NOARGS, "The protocol."},
    {"fileno", (PyCFunction)fdt_fileno, METH_NOARGS, "The socket's descriptor, -1 once closed."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FdTransportType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsgate.proxy._relay.FdTransport",
    .tp_basicsize = sizeof(FdTransport),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "FdTransport(poller, fd, protocol): a socket of a tunnel, relayed by a Poller.",
    .tp_new = fdt_new,
    .tp_traverse = (traverseproc)fdt_traverse,
    .tp_clear = (inquiry)fdt_clear,
    .tp_dealloc = (destructor)fdt_dealloc,
    .tp_methods = fdt_methods,
};

/* --- module ---------------------------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"accept", (PyCFunction)relay_accept, METH_O,
     "accept(fd) -> (fd, address): one connection of a listening TCP socket."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "wsgate.proxy._relay",
    "Plain TCP connections on compiled transports, outside the event loop's (fdrelay.py).", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

#define INTERN(var, text)                                                                     \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                     \
        return NULL;

PyMODINIT_FUNC
PyInit__relay(void)
{
    if (PyType_Ready(&PollerType) < 0 || PyType_Ready(&FdTransportType) < 0)
        return NULL;
    INTERN(str_data_received, "data_received");
    INTERN(str_eof_received, "eof_received");
    INTERN(str_connection_lost, "connection_lost");
    INTERN(str_pause_writing, "pause_writing");
    INTERN(str_resume_writing, "resume_writing");
    INTERN(str_call_soon, "call_soon");
    INTERN(str_call_exception_handler, "call_exception_handler");
    INTERN(str_connection_made, "connection_made");
    read_buf = PyMem_RawMalloc(READ_SIZE);
    if (read_buf == NULL)
        return PyErr_NoMemory();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&PollerType);
    Py_INCREF(&FdTransportType);
    if (PyModule_AddObject(m, "Poller", (PyObject *)&PollerType) < 0 ||
        PyModule_AddObject(m, "FdTransport", (PyObject *)&FdTransportType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
