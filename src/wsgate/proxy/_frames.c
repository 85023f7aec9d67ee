/*
 * wsgate.proxy._frames: the WebSocket frame scanner of wsgate.proxy.frames, compiled, and
 * the per-chunk relaying of a tunnel side (SideBase, below).
 *
 * scan_fields() and scan_sizes() here return exactly what the pure-Python functions of
 * frames.py return (tests/unit/test_frames_compiled.py checks it on random streams split
 * at random points).  frames.py uses these when the extension was built and WSGATE_PURE
 * is not set; a machine without a compiler installs without it (the extension is optional
 * in pyproject.toml) and runs the Python ones.
 *
 * Only headers are read (RFC 6455 section 5.2); payload is stepped over by its length.
 * A stream whose lengths do not fit 62 bits (a 64-bit length with its top bits set, a
 * malformed stream the endpoints will fail), or arguments of another type, are handed to
 * the Python function given to fallback(): Python's integers have no bound, and the rare
 * case keeps their exact answer.  Neither function has side effects before it decides
 * that, so handing over at any point gives the same result.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

#define CLOSE_SEEN 0x10000L
#define NO_STATUS 1005L
#define HUGE_LENGTH ((uint64_t)1 << 62)
#define BUCKETS 10 /* frames.SIZE_BUCKETS; the counts list has BUCKETS + 2 cells */

static PyObject *py_scan_fields = NULL;
static PyObject *py_scan_sizes = NULL;

/* The header at d[pos]: 1 with its length (masking key included) and payload length,
 * 0 while its length bytes are incomplete, -1 for a length of 2**62 or more. */
static int
header_at(const unsigned char *d, Py_ssize_t n, Py_ssize_t pos, Py_ssize_t *head,
          uint64_t *length)
{
    if (pos + 2 > n)
        return 0;
    unsigned int b1 = d[pos + 1];
    unsigned int len7 = b1 & 0x7F;
    Py_ssize_t h = 2;
    uint64_t len = len7;
    if (len7 == 126) {
        if (pos + 4 > n)
            return 0;
        len = ((uint64_t)d[pos + 2] << 8) | d[pos + 3];
        h = 4;
    }
    else if (len7 == 127) {
        if (pos + 10 > n)
            return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | d[pos + 2 + i];
        h = 10;
    }
    if (b1 & 0x80)
        h += 4;
    *head = h;
    *length = len;
    return len >= HUGE_LENGTH ? -1 : 1;
}

/* frames.FRAME_KIND: 1 for the final frame of a data message, -1 for a Close, else 0. */
static inline int
frame_kind(unsigned int b0)
{
    if ((b0 & 0x0F) == 0x8)
        return -1;
    b0 &= 0x8F;
    return b0 == 0x80 || b0 == 0x81 || b0 == 0x82;
}

/* frames.close_code_at: CLOSE_SEEN | the code of the Close at d[pos], 0 while incomplete. */
static long
close_code_at(const unsigned char *d, Py_ssize_t n, Py_ssize_t pos)
{
    Py_ssize_t head;
    uint64_t length;
    if (header_at(d, n, pos, &head, &length) == 0)
        return 0;
    if (length < 2)
        return CLOSE_SEEN | NO_STATUS;
    Py_ssize_t start = pos + head;
    if (start + 2 > n)
        return 0;
    unsigned int hi = d[start], lo = d[start + 1];
    if (d[pos + 1] & 0x80) { /* masked: the key is the header's last 4 bytes */
        hi ^= d[start - 4];
        lo ^= d[start - 3];
    }
    return CLOSE_SEEN | (long)(hi << 8) | (long)lo;
}

/* An int argument as a long long within [0, 2**62), or -1 (not an int, or out of range). */
static long long
small_int(PyObject *o)
{
    if (!PyLong_CheckExact(o))
        return -1;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || v < 0 || (uint64_t)v >= HUGE_LENGTH) {
        if (v == -1 && PyErr_Occurred())
            PyErr_Clear();
        return -1;
    }
    return v;
}

static PyObject *
hand_over(PyObject *fn, PyObject *const *args, Py_ssize_t nargs)
{
    if (fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "wsgate.proxy._frames: fallback() not called");
        return NULL;
    }
    return PyObject_Vectorcall(fn, args, nargs, NULL);
}

/* The result of scan_fields; takes the reference to ``partial`` (NULL: an error is set). */
static PyObject *
fields_result(long long skip, PyObject *partial, long long messages, long close_seen)
{
    return Py_BuildValue("(LNLl)", skip, partial, messages, close_seen);
}

/* ``partial`` and at most ``most`` first bytes of ``d`` into ``buf`` (64 bytes; ``partial``
 * has at most 48): the carried-over header, completed.  Returns its length. */
static Py_ssize_t
carry(unsigned char *buf, PyObject *partial, const unsigned char *d, Py_ssize_t n,
      Py_ssize_t most)
{
    Py_ssize_t plen = PyBytes_GET_SIZE(partial);
    Py_ssize_t take = n < most ? n : most;
    memcpy(buf, PyBytes_AS_STRING(partial), plen);
    memcpy(buf + plen, d, take);
    return plen + take;
}

/* The scan of frames.scan_fields on C values: ``n`` bytes at ``d``, ``pos`` (skip) bytes into
 * them the next header, ``partial`` (bytes, at most 48) a header carried over.  Returns 1
 * with the new skip in ``*skip``, the new partial (a new reference) in ``*rest`` and
 * ``*messages``/``*close_seen`` updated; 0 for what only Python answers exactly (a length
 * past 2**62, a partial longer than its frame), nothing changed; -1 with an error set. */
static int
scan_core(const unsigned char *d, Py_ssize_t n, Py_ssize_t pos, PyObject *partial,
          long long *messages_io, long *close_seen_io, long long *skip, PyObject **rest)
{
    long long messages = *messages_io;
    long close_seen = *close_seen_io;
    Py_ssize_t plen = PyBytes_GET_SIZE(partial);
    Py_ssize_t head;
    uint64_t length;
    if (plen) {
        /* the carried-over header, completed with at most 15 bytes of data */
        unsigned char buf[64];
        Py_ssize_t blen = carry(buf, partial, d, n, 15);
        int r = header_at(buf, blen, 0, &head, &length);
        if (r == 0) {
            pos = n;
            *rest = PyBytes_FromStringAndSize((char *)buf, blen);
            goto done;
        }
        int kind = frame_kind(buf[0]);
        if (kind > 0)
            messages++;
        else if (kind && !close_seen) {
            close_seen = close_code_at(buf, blen, 0);
            if (!close_seen) {
                messages = *messages_io;
                pos = n;
                *rest = PyBytes_FromStringAndSize((char *)buf, blen);
                goto done;
            }
        }
        if (r < 0)
            return 0;
        pos = head + (Py_ssize_t)length - plen;
        if (pos < 0) /* a partial longer than its frame: not what the tunnel passes */
            return 0;
    }
    Py_ssize_t last = n - 1; /* a header needs its second byte */
    while (pos < last) {
        unsigned int b1 = d[pos + 1];
        unsigned int len7 = b1 & 0x7F;
        Py_ssize_t size;
        if (len7 < 126)
            size = len7 + ((b1 & 0x80) ? 6 : 2);
        else if (len7 == 126) {
            if (pos + 4 > n)
                break;
            size = (((Py_ssize_t)d[pos + 2] << 8) | d[pos + 3]) + ((b1 & 0x80) ? 8 : 4);
        }
        else {
            if (pos + 10 > n)
                break;
            uint64_t len = 0;
            for (int i = 0; i < 8; i++)
                len = (len << 8) | d[pos + 2 + i];
            if (len >= HUGE_LENGTH)
                return 0;
            size = (Py_ssize_t)len + ((b1 & 0x80) ? 14 : 10);
        }
        int kind = frame_kind(d[pos]);
        if (kind > 0)
            messages++;
        else if (kind && !close_seen) {
            close_seen = close_code_at(d, n, pos);
            if (!close_seen)
                break; /* its code is still to come: carried over as a split header */
        }
        pos += size;
    }
    if (pos < n) {
        *rest = PyBytes_FromStringAndSize((const char *)d + pos, n - pos);
        pos = n;
    }
    else
        *rest = PyBytes_FromStringAndSize(NULL, 0);
done:
    if (*rest == NULL)
        return -1;
    *skip = pos - n;
    *messages_io = messages;
    *close_seen_io = close_seen;
    return 1;
}

/* scan_fields(data, skip, partial, messages, close_seen) -> (skip, partial, messages,
 * close_seen): frames.scan_fields. */
static PyObject *
scan_fields(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "scan_fields() takes 5 arguments");
        return NULL;
    }
    PyObject *data = args[0], *partial = args[2];
    long long skip = small_int(args[1]);
    long long messages = small_int(args[3]);
    long long seen = small_int(args[4]);
    if (!PyBytes_CheckExact(data) || !PyBytes_CheckExact(partial) || skip < 0 ||
        messages < 0 || seen < 0 || seen > LONG_MAX || PyBytes_GET_SIZE(partial) > 48)
        return hand_over(py_scan_fields, args, nargs);
    long close_seen = (long)seen;
    PyObject *rest;
    int r = scan_core((const unsigned char *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                      (Py_ssize_t)skip, partial, &messages, &close_seen, &skip, &rest);
    if (r < 0)
        return NULL;
    if (r == 0)
        return hand_over(py_scan_fields, args, nargs);
    return fields_result(skip, rest, messages, close_seen);
}

/* frames.BUCKET_BY_BITS[min((size - 1).bit_length(), 64)] */
static inline int
bucket(uint64_t size)
{
    int bits = size == 0 ? 1 : (size == 1 ? 0 : 64 - __builtin_clzll(size - 1));
    int b = (bits - 5) / 2;
    if (bits < 5)
        b = 0;
    return b > BUCKETS ? BUCKETS : b;
}

/* scan_sizes(data, skip, partial, size, counts) -> (skip, partial, size): frames.scan_sizes.
 * The counts are summed here and added to the list at the end, so that a hand-over to
 * Python (which adds its own) never counts a message twice. */
static PyObject *
scan_sizes(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "scan_sizes() takes 5 arguments");
        return NULL;
    }
    PyObject *data = args[0], *partial = args[2], *counts = args[4];
    long long skip = small_int(args[1]);
    long long size0 = small_int(args[3]);
    if (!PyBytes_CheckExact(data) || !PyBytes_CheckExact(partial) || skip < 0 || size0 < 0 ||
        !PyList_CheckExact(counts) || PyList_GET_SIZE(counts) != BUCKETS + 2 ||
        PyBytes_GET_SIZE(partial) > 48)
        return hand_over(py_scan_sizes, args, nargs);
    uint64_t size = (uint64_t)size0;
    uint64_t add[BUCKETS + 2] = {0};
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    Py_ssize_t pos = (Py_ssize_t)skip;
    Py_ssize_t plen = PyBytes_GET_SIZE(partial);
    Py_ssize_t head;
    uint64_t length;
    PyObject *rest;
    if (plen) {
        unsigned char buf[64];
        Py_ssize_t blen = carry(buf, partial, d, n, 9);
        int r = header_at(buf, blen, 0, &head, &length);
        if (r == 0) {
            rest = PyBytes_FromStringAndSize((char *)buf, blen);
            pos = n; /* skip 0 */
            goto done;
        }
        if (r < 0)
            return hand_over(py_scan_sizes, args, nargs);
        unsigned int b0 = buf[0];
        if (!(b0 & 0x08)) { /* a data frame (opcodes 0x0-0x7) */
            size += length;
            if (b0 & 0x80) {
                add[bucket(size)] += 1;
                add[BUCKETS + 1] += size;
                size = 0;
            }
        }
        pos = head + (Py_ssize_t)length - plen;
        if (pos < 0) /* a partial longer than its frame: not what the tunnel passes */
            return hand_over(py_scan_sizes, args, nargs);
    }
    Py_ssize_t last = n - 1;
    while (pos < last) {
        int r = header_at(d, n, pos, &head, &length);
        if (r == 0)
            break;
        if (r < 0 || size >= HUGE_LENGTH)
            return hand_over(py_scan_sizes, args, nargs);
        unsigned int b0 = d[pos];
        if (!(b0 & 0x08)) {
            size += length;
            if (b0 & 0x80) {
                add[bucket(size)] += 1;
                add[BUCKETS + 1] += size;
                size = 0;
            }
        }
        pos += head + (Py_ssize_t)length;
    }
    if (size >= HUGE_LENGTH || add[BUCKETS + 1] >= HUGE_LENGTH)
        return hand_over(py_scan_sizes, args, nargs);
    if (pos < n) {
        rest = PyBytes_FromStringAndSize((const char *)d + pos, n - pos);
        pos = n;
    }
    else
        rest = PyBytes_FromStringAndSize(NULL, 0);
done:
    if (rest == NULL)
        return NULL;
    for (int i = 0; i < BUCKETS + 2; i++) {
        if (!add[i])
            continue;
        PyObject *old = PyList_GET_ITEM(counts, i);
        PyObject *inc = PyLong_FromUnsignedLongLong(add[i]);
        PyObject *sum = inc ? PyNumber_Add(old, inc) : NULL;
        Py_XDECREF(inc);
        if (sum == NULL) {
            Py_DECREF(rest);
            return NULL;
        }
        PyList_SetItem(counts, i, sum); /* steals sum, releases old */
    }
    return Py_BuildValue("(nNK)", pos - n, rest, (unsigned long long)size);
}

/* fallback(scan_fields, scan_sizes): the pure-Python functions for what C hands over. */
static PyObject *
fallback(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyCallable_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "fallback() takes two functions");
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    Py_XSETREF(py_scan_fields, args[0]);
    Py_XSETREF(py_scan_sizes, args[1]);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------------------
 * SideBase: the hot fields of a tunnel side (proxy/tunnel.py's _Side) and its per-chunk
 * relaying, data_received of the plain side (relay) and of a WebSocket side (relay_ws).
 * tunnel.py's _Side subclasses it (and asyncio.Protocol), adding the rest as __slots__; its
 * pure-Python twin there (_PySideBase) has the same fields and methods.  Each method does
 * what the Python one does, step for step: one write of the chunk to ``out``, the byte
 * count, the read stamp ``last = clock()``, and for a WebSocket side the frame-boundary
 * arithmetic of the fast path; every other chunk goes to the side's own ``_frames``.
 *
 * ``skip`` is kept in 62 bits: a frame longer than 2**62 bytes (4 EiB, only a malformed
 * 64-bit length) is taken as that long, which no stream reaches.
 * ------------------------------------------------------------------------------------- */
typedef struct {
    PyObject_HEAD
    PyObject *out;   /* the peer's transport, or the discarding sink */
    PyObject *clock; /* the worker's clock (loop.time) */
    double last;     /* when this side was last read */
    long long nbytes;
    long long skip;
    long long messages;
    PyObject *partial; /* a header split across reads (bytes), see _WsSide */
    long close_seen;   /* frames.ScanState.close_seen */
    int phase;         /* tunnel._RELAY, _WAIT or _DROP */
} SideBase;

/* _WsSide._frames, registered by tunnel.py (SideBase.plain_frames): for a side whose
 * ``_frames`` is this one, relay_ws does its first case (the relaying phase) itself. */
static PyObject *plain_frames = NULL;

static PyObject *str_write = NULL;
static PyObject *str_frames = NULL;
static PyObject *str_many = NULL;
static PyObject *str_max_whole = NULL;
static PyObject *str_period = NULL;
static PyObject *str_window = NULL;
static PyObject *str_tat = NULL;

static int
side_traverse(SideBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->out);
    Py_VISIT(self->clock);
    Py_VISIT(self->partial);
    return 0;
}

static int
side_clear(SideBase *self)
{
    Py_CLEAR(self->out);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->partial);
    return 0;
}

static void
side_dealloc(SideBase *self)
{
    PyObject_GC_UnTrack(self);
    side_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* out.write(data): every chunk's one write. */
static inline int
side_write(SideBase *self, PyObject *data)
{
    PyObject *args[2] = {self->out, data};
    if (self->out == NULL) {
        PyErr_SetString(PyExc_AttributeError, "out");
        return -1;
    }
    PyObject *r = PyObject_VectorcallMethod(str_write, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                            NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* clock(): the time object (a new reference, NULL on an error), and its value in ``*t``. */
static inline PyObject *
side_now(SideBase *self, double *t)
{
    if (self->clock == NULL) {
        PyErr_SetString(PyExc_AttributeError, "clock");
        return NULL;
    }
    PyObject *now = PyObject_CallNoArgs(self->clock);
    if (now == NULL)
        return NULL;
    *t = PyFloat_AsDouble(now);
    if (*t == -1.0 && PyErr_Occurred()) {
        Py_DECREF(now);
        return NULL;
    }
    return now;
}

/* nbytes += n, last = clock(): the end of every chunk's relaying. */
static inline PyObject *
side_stamp(SideBase *self, Py_ssize_t n)
{
    self->nbytes += n;
    double t;
    PyObject *now = side_now(self, &t);
    if (now == NULL)
        return NULL;
    Py_DECREF(now);
    self->last = t;
    Py_RETURN_NONE;
}

/* self._frames(data), then the stamp: what the WebSocket fast path leaves.  In the
 * relaying phase, for a side whose ``_frames`` is _WsSide's, its first case is done here:
 * the chunk written, then its headers scanned from the side's state (scan_core, as the
 * Python one calls scan_fields); what scan_core leaves to Python goes to ``_frames``. */
static PyObject *
side_frames(SideBase *self, PyObject *data, Py_ssize_t n)
{
    PyObject *partial = self->partial;
    if (self->phase == 0 && plain_frames != NULL && PyBytes_CheckExact(data) &&
        partial != NULL && PyBytes_CheckExact(partial) && PyBytes_GET_SIZE(partial) <= 48 &&
        self->messages >= 0 && self->close_seen >= 0 &&
        _PyType_Lookup(Py_TYPE(self), str_frames) == plain_frames) {
        long long messages = self->messages, skip;
        long close_seen = self->close_seen;
        PyObject *rest;
        int r = scan_core((const unsigned char *)PyBytes_AS_STRING(data), n,
                          self->skip > 0 ? (Py_ssize_t)self->skip : 0, partial, &messages,
                          &close_seen, &skip, &rest);
        if (r < 0)
            return NULL;
        if (r > 0) {
            if (side_write(self, data) < 0) {
                Py_DECREF(rest);
                return NULL;
            }
            self->messages = messages;
            self->close_seen = close_seen;
            self->skip = PyBytes_GET_SIZE(rest) ? -1 : skip;
            Py_SETREF(self->partial, rest);
            return side_stamp(self, n);
        }
    }
    PyObject *r = PyObject_CallMethodOneArg((PyObject *)self, str_frames, data);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    return side_stamp(self, n);
}

/* _Side.data_received: a byte stream, relayed as it comes. */
static PyObject *
side_relay(SideBase *self, PyObject *data)
{
    Py_ssize_t n = PyObject_Length(data);
    if (n < 0 || side_write(self, data) < 0)
        return NULL;
    return side_stamp(self, n);
}

/* _WsSide.data_received: as side_relay, keeping ``skip`` (bytes to the next frame header)
 * and ``messages``; a chunk that is not inside one frame and not one frame (or the start of
 * one) with no other header goes to ``self._frames(data)``. */
static PyObject *
side_relay_ws(SideBase *self, PyObject *data)
{
    if (!PyBytes_CheckExact(data)) {
        Py_ssize_t n = PyObject_Length(data);
        return n < 0 ? NULL : side_frames(self, data, n);
    }
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    long long skip = self->skip;
    if (n <= skip) {
        /* inside one frame's payload, up to its end at most: no header in this chunk */
        self->skip = skip - n;
        if (side_write(self, data) < 0)
            return NULL;
        return side_stamp(self, n);
    }
    if (skip == 0 && n > 1) {
        unsigned int b1 = d[1], len7 = b1 & 0x7F;
        long long size = -1;
        if (len7 < 126)
            size = len7 + ((b1 & 0x80) ? 6 : 2);
        else if (n > 9) {
            if (len7 == 126)
                size = (((long long)d[2] << 8) | d[3]) + ((b1 & 0x80) ? 8 : 4);
            else {
                uint64_t len = 0;
                for (int i = 0; i < 8; i++)
                    len = (len << 8) | d[2 + i];
                size = len < HUGE_LENGTH ? (long long)len + ((b1 & 0x80) ? 14 : 10) : -1;
            }
        }
        int kind = frame_kind(d[0]);
        if (size >= n && kind >= 0) {
            self->skip = size - n;
            if (side_write(self, data) < 0)
                return NULL;
            self->messages += kind;
            return side_stamp(self, n);
        }
    }
    return side_frames(self, data, n);
}

/* A float attribute of a Python slot of the side (_FeatSide's limit fields). */
static inline int
side_float(PyObject *self, PyObject *name, double *out)
{
    PyObject *v = PyObject_GetAttr(self, name);
    if (v == NULL)
        return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *
side_many(SideBase *self, PyObject *data, Py_ssize_t n, PyObject *now)
{
    PyObject *count = PyLong_FromSsize_t(n);
    if (count == NULL)
        return NULL;
    PyObject *args[4] = {(PyObject *)self, data, count, now};
    PyObject *r = PyObject_VectorcallMethod(str_many, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                            NULL);
    Py_DECREF(count);
    return r;
}

/* _LimitSide.data_received: a message of one data frame within the size limits is checked
 * against the rate (limit_req's account in GCRA form, tunnel.py's _FeatSide._check) and
 * relayed; anything else goes to ``self._many(data, n, now)``.  The limit fields
 * (max_whole, period, window, tat) are the Python slots of _FeatSide, read only for a
 * chunk that starts with a header. */
static PyObject *
side_relay_limited(SideBase *self, PyObject *data)
{
    Py_ssize_t n = PyObject_Length(data);
    if (n < 0)
        return NULL;
    double now;
    PyObject *nowobj = side_now(self, &now);
    if (nowobj == NULL)
        return NULL;
    PyObject *result = NULL;
    self->nbytes += n;
    self->last = now;
    long long skip = self->skip;
    if (n <= skip) {
        self->skip = skip - n;
        if (side_write(self, data) == 0)
            result = Py_NewRef(Py_None);
        goto done;
    }
    if (skip == 0 && n > 1 && PyBytes_CheckExact(data)) {
        const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
        unsigned int b0 = d[0], b1 = d[1], len7 = b1 & 0x7F;
        long long size = -1;
        if (len7 < 126)
            size = len7 + ((b1 & 0x80) ? 6 : 2); /* 125 bytes at most: within every limit */
        else if (n > 9) {
            uint64_t len = 0;
            if (len7 == 126)
                len = ((uint64_t)d[2] << 8) | d[3];
            else
                for (int i = 0; i < 8; i++)
                    len = (len << 8) | d[2 + i];
            PyObject *most = PyObject_GetAttr((PyObject *)self, str_max_whole);
            if (most == NULL)
                goto done;
            int overflow;
            long long limit = PyLong_AsLongLongAndOverflow(most, &overflow);
            Py_DECREF(most);
            if (limit == -1 && PyErr_Occurred())
                goto done;
            if (len < HUGE_LENGTH && (overflow > 0 || (long long)len <= limit))
                size = (long long)len + (len7 == 126 ? 4 : 10) + ((b1 & 0x80) ? 4 : 0);
        }
        /* a final text or binary frame (any RSV bits): a message of one frame */
        if (size >= n && (b0 & 0x80) && ((b0 & 0x0F) == 1 || (b0 & 0x0F) == 2)) {
            double period;
            if (side_float((PyObject *)self, str_period, &period) < 0)
                goto done;
            if (period != 0.0) {
                double tat, window;
                if (side_float((PyObject *)self, str_tat, &tat) < 0 ||
                    side_float((PyObject *)self, str_window, &window) < 0)
                    goto done;
                double due = tat + period;
                if (due - now > window) {
                    result = side_many(self, data, n, nowobj);
                    goto done;
                }
                PyObject *t = PyFloat_FromDouble(due > now ? due : now);
                if (t == NULL)
                    goto done;
                int bad = PyObject_SetAttr((PyObject *)self, str_tat, t);
                Py_DECREF(t);
                if (bad < 0)
                    goto done;
            }
            self->skip = size - n;
            if (side_write(self, data) < 0)
                goto done;
            self->messages += 1;
            result = Py_NewRef(Py_None);
            goto done;
        }
    }
    result = side_many(self, data, n, nowobj);
done:
    Py_DECREF(nowobj);
    if (result != NULL && result != Py_None) {
        Py_DECREF(result);
        result = Py_NewRef(Py_None);
    }
    return result;
}

static PyObject *
side_get_skip(SideBase *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(self->skip);
}

static int
side_set_skip(SideBase *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete skip");
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0 || v > (long long)HUGE_LENGTH)
        v = (long long)HUGE_LENGTH; /* a frame past 2**62 bytes: never reached */
    else if (overflow < 0)
        v = -1;
    self->skip = v;
    return 0;
}

static PyMemberDef side_members[] = {
    {"out", T_OBJECT, offsetof(SideBase, out), 0, "the peer's transport (or the sink)"},
    {"clock", T_OBJECT, offsetof(SideBase, clock), 0, "the worker's clock"},
    {"last", T_DOUBLE, offsetof(SideBase, last), 0, "when this side was last read"},
    {"nbytes", T_LONGLONG, offsetof(SideBase, nbytes), 0, "bytes read from this side"},
    {"messages", T_LONGLONG, offsetof(SideBase, messages), 0, "data messages read"},
    {"partial", T_OBJECT_EX, offsetof(SideBase, partial), 0, "a header split across reads"},
    {"close_seen", T_LONG, offsetof(SideBase, close_seen), 0, "frames.ScanState.close_seen"},
    {"phase", T_INT, offsetof(SideBase, phase), 0, "tunnel._RELAY, _WAIT or _DROP"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef side_getset[] = {
    {"skip", (getter)side_get_skip, (setter)side_set_skip,
     "bytes to the next frame header (-1: see _WsSide)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* SideBase.plain_frames(func): _WsSide._frames, whose relaying case relay_ws does itself. */
static PyObject *
side_plain_frames(PyObject *Py_UNUSED(cls), PyObject *func)
{
    if (!PyFunction_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "plain_frames() takes a function");
        return NULL;
    }
    Py_INCREF(func);
    Py_XSETREF(plain_frames, func);
    Py_RETURN_NONE;
}

static PyMethodDef side_methods[] = {
    {"relay", (PyCFunction)side_relay, METH_O, "_Side.data_received, compiled."},
    {"relay_ws", (PyCFunction)side_relay_ws, METH_O, "_WsSide.data_received, compiled."},
    {"relay_limited", (PyCFunction)side_relay_limited, METH_O,
     "_LimitSide.data_received, compiled."},
    {"plain_frames", (PyCFunction)side_plain_frames, METH_O | METH_CLASS,
     "plain_frames(_WsSide._frames): the _frames whose relaying case relay_ws does itself."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SideBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsgate.proxy._frames.SideBase",
    .tp_basicsize = sizeof(SideBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The hot fields and per-chunk relaying of a tunnel side (tunnel.py's _Side).",
    .tp_traverse = (traverseproc)side_traverse,
    .tp_clear = (inquiry)side_clear,
    .tp_dealloc = (destructor)side_dealloc,
    .tp_methods = side_methods,
    .tp_members = side_members,
    .tp_getset = side_getset,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef methods[] = {
    {"scan_fields", (PyCFunction)(void (*)(void))scan_fields, METH_FASTCALL,
     "frames.scan_fields, compiled."},
    {"scan_sizes", (PyCFunction)(void (*)(void))scan_sizes, METH_FASTCALL,
     "frames.scan_sizes, compiled."},
    {"fallback", (PyCFunction)(void (*)(void))fallback, METH_FASTCALL,
     "fallback(scan_fields, scan_sizes): the Python functions for what C hands over."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "wsgate.proxy._frames",
    "The WebSocket frame scanner of wsgate.proxy.frames, compiled.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__frames(void)
{
    if (PyType_Ready(&SideBaseType) < 0)
        return NULL;
    str_write = PyUnicode_InternFromString("write");
    str_frames = PyUnicode_InternFromString("_frames");
    str_many = PyUnicode_InternFromString("_many");
    str_max_whole = PyUnicode_InternFromString("max_whole");
    str_period = PyUnicode_InternFromString("period");
    str_window = PyUnicode_InternFromString("window");
    str_tat = PyUnicode_InternFromString("tat");
    if (!str_write || !str_frames || !str_many || !str_max_whole || !str_period || !str_window ||
        !str_tat)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SideBaseType);
    if (PyModule_AddObject(m, "SideBase", (PyObject *)&SideBaseType) < 0) {
        Py_DECREF(&SideBaseType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
