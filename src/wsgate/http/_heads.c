/*
 * wsgate.http._heads: the header lines of a common HTTP/1.x head split in C (issue 16).
 *
 * split_fields(buf, start, end, max_line) -> list[(name, value)] | None
 *
 * The header lines of buf[start:end] (each ending with CRLF; the blank line that ends the
 * head is not in the range) as (name, value) pairs of str, the value without the optional
 * whitespace around it.  It answers only for the lines that every check of the Python parsers
 * (wsgate.http.request, wsgate.http.response: nginx's rules, then llhttp's) would accept as
 * they are: a name of letters, digits and "-" right before its ":", a value of visible ASCII,
 * spaces and tabs, CRLF line ends, no line longer than max_line with its CRLF.  For anything
 * else (an underscore, obs-text, a bare LF or CR, a control byte, a line too long) it returns
 * None and the Python parser reads the head, with nginx's answer for whatever is wrong or
 * unusual in it.  The pure-Python fallback is that parser: without this module (no compiler,
 * or WSGATE_PURE=1) every head takes it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* 1: a byte of a header name nginx and llhttp both take as it is ([A-Za-z0-9-]). */
static unsigned char name_ok[256];
/* 1: a byte of a value taken as it is (HTAB, SP and visible ASCII). */
static unsigned char value_ok[256];

static PyObject *
split_fields(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "split_fields(buf, start, end, max_line)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_line = PyLong_AsSsize_t(args[3]);
    PyObject *out = NULL;
    if (PyErr_Occurred())
        goto done;
    if (start < 0 || end > view.len || start > end) {
        PyErr_SetString(PyExc_ValueError, "range outside the buffer");
        goto done;
    }
    const unsigned char *p = (const unsigned char *)view.buf;
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    Py_ssize_t i = start;
    while (i < end) {
        Py_ssize_t line = i;
        while (i < end && name_ok[p[i]])
            i++;
        if (i == line || i >= end || p[i] != ':')
            goto fallback;
        Py_ssize_t name_end = i++;
        while (i < end && (p[i] == ' ' || p[i] == '\t'))
            i++;
        Py_ssize_t value = i;
        while (i < end && value_ok[p[i]])
            i++;
        /* the line must end here, with CRLF */
        if (i + 1 >= end || p[i] != '\r' || p[i + 1] != '\n')
            goto fallback;
        Py_ssize_t value_end = i;
        while (value_end > value && (p[value_end - 1] == ' ' || p[value_end - 1] == '\t'))
            value_end--;
        i += 2;
        if (i - line > max_line)
            goto fallback;
        PyObject *pair = Py_BuildValue(
            "(NN)", PyUnicode_DecodeLatin1((const char *)p + line, name_end - line, NULL),
            PyUnicode_DecodeLatin1((const char *)p + value, value_end - value, NULL));
        if (pair == NULL || PyList_Append(out, pair) < 0) {
            Py_XDECREF(pair);
            Py_CLEAR(out);
            goto done;
        }
        Py_DECREF(pair);
    }
    goto done;
fallback:
    Py_CLEAR(out);
    out = Py_None;
    Py_INCREF(out);
done:
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"split_fields", (PyCFunction)(void (*)(void))split_fields, METH_FASTCALL,
     "split_fields(buf, start, end, max_line): the header lines of a common head, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "wsgate.http._heads",
    "The header lines of a common HTTP/1.x head split in C (request.py, response.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__heads(void)
{
    for (int c = 0; c < 256; c++) {
        name_ok[c] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                     (c >= '0' && c <= '9') || c == '-';
        value_ok[c] = c == '\t' || (c >= 0x20 && c <= 0x7e);
    }
    return PyModule_Create(&module);
}
