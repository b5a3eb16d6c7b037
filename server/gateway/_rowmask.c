/* The native core of DataRow masking (server.gateway._rowmask).
 *
 * RowMasker (server/gateway/masking/rows.py) uses this module when it was built
 * (``pip install -e .``, setup.py) and the plan has no ``hash`` column;
 * ``RowMasker.native`` says whether a masker uses it, ``masking.NATIVE``
 * whether the module loaded at all.  Without a compiler the package still
 * installs and the generated pure-Python loop does the same work.
 *
 * How it works: ``Masker.rewrite(buf, pos, out)`` walks a run of complete
 * DataRow messages in ``buf`` from ``pos`` exactly as the generated Python
 * loop does -- header and column count, then the length words up to the last
 * masked column -- and writes each row's new message straight into one bytes
 * object for the whole run: the unmasked stretches copied, the masked values
 * replaced by a constant (``***``, NULL), ``***`` and the last N bytes of an
 * ASCII tail, or ``***`` and the e-mail domain.  Every length word is checked
 * against the end of its message before it is used.  A row it does not take
 * on this path -- a value the Python loop would send to its slow path (NULL,
 * too short, a non-ASCII tail, no '@'), or anything malformed (a negative
 * length other than -1, a value past the message, a wrong column count, no
 * column count) -- is handed to ``slow(buf, pos, out)``, the Python loop for
 * that one row, which masks it or raises the ProtocolViolation the pure-Python
 * path raises.  So the bytes out, and the errors, are those of the Python loop.
 * The run ends at the first message that is not a DataRow or is not complete.
 *
 * ``scan(buf, hooked)`` and ``run(buf, pos)`` are the relay's header walks
 * (server/gateway/relay.py): the per-message work of every result the gateway
 * forwards, whether or not it masks.  ``scan`` walks the whole messages of a
 * chunk from the server and says where they end, how many ReadyForQuery it
 * holds, whether any message's type is flagged in ``hooked`` (256 bytes, or
 * None) and how many DataRow and CopyData messages it holds with their size
 * on the wire (what the result limits count).  ``run`` measures the run of
 * DataRows that starts at ``pos``.  Neither copies a byte.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { K_CONST = 0, K_KEEP_LAST = 1, K_DOMAIN = 2 };

typedef struct {
    Py_ssize_t index; /* column position in the row */
    int kind;
    Py_ssize_t keep;      /* K_KEEP_LAST: characters kept */
    PyObject *value;      /* K_CONST: the whole new value with its length word;
                             K_KEEP_LAST: length word and "***" */
} Column;

typedef struct {
    PyObject_HEAD
    Py_ssize_t count; /* columns a row must have */
    Py_ssize_t nmasked;
    Py_ssize_t growth; /* the most a row can grow by */
    Column *cols;
    PyObject *slow;
} Masker;

typedef struct {
    Py_ssize_t start; /* where the value's length word starts */
    Py_ssize_t stop;  /* where the value ends */
    Py_ssize_t at;    /* K_DOMAIN: the '@' */
} Span;

static inline uint32_t be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void Masker_dealloc(Masker *self)
{
    if (self->cols != NULL) {
        for (Py_ssize_t i = 0; i < self->nmasked; i++)
            Py_XDECREF(self->cols[i].value);
        PyMem_Free(self->cols);
    }
    Py_XDECREF(self->slow);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Masker(count, columns, slow): columns is a sequence of (index, kind, value, keep)
 * in column order. */
static int Masker_init(Masker *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"count", "columns", "slow", NULL};
    Py_ssize_t count;
    PyObject *columns, *slow;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nOO", kwlist, &count, &columns, &slow))
        return -1;
    if (self->cols != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Masker is already initialised");
        return -1;
    }
    if (count < 0 || count > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "column count out of range");
        return -1;
    }
    if (!PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_TypeError, "slow must be callable");
        return -1;
    }
    PyObject *seq = PySequence_Fast(columns, "columns must be a sequence");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    self->cols = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Column));
    if (self->cols == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    self->count = count;
    self->growth = 0;
    Py_ssize_t last = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Column *c = &self->cols[i];
        Py_ssize_t index, keep;
        int kind;
        PyObject *value;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "niSn", &index, &kind, &value,
                              &keep))
            goto fail;
        if (index <= last || index >= count || kind < K_CONST || kind > K_DOMAIN || keep < 0) {
            PyErr_SetString(PyExc_ValueError, "bad masked column");
            goto fail;
        }
        if ((kind == K_CONST && PyBytes_GET_SIZE(value) < 4) ||
            (kind == K_KEEP_LAST && PyBytes_GET_SIZE(value) != 7)) {
            PyErr_SetString(PyExc_ValueError, "a replacement needs its length word");
            goto fail;
        }
        last = index;
        c->index = index;
        c->kind = kind;
        c->keep = keep;
        Py_INCREF(value);
        c->value = value;
        self->nmasked = i + 1;
        /* A value is at least 4 bytes (its length word) on the wire: what replaces
         * it adds at most this.  keep-last: more than `keep` bytes become 3 + keep;
         * domain: the '@' is not the first byte, so "***" + domain is at most n + 2. */
        if (kind == K_CONST)
            self->growth += PyBytes_GET_SIZE(value) - 4;
        else
            self->growth += 3;
    }
    Py_DECREF(seq);
    Py_INCREF(slow);
    self->slow = slow;
    return 0;
fail:
    Py_DECREF(seq);
    return -1;
}

/* Append the bytes written so far to `out` and start afresh. */
static int flush(PyObject **acc, Py_ssize_t *used, Py_ssize_t *cap, PyObject *out)
{
    if (*acc == NULL)
        return 0;
    if (*used == 0) {
        Py_CLEAR(*acc);
        *cap = 0;
        return 0;
    }
    if (*used != *cap && _PyBytes_Resize(acc, *used) < 0) {
        *acc = NULL;
        return -1;
    }
    int rc = PyList_Append(out, *acc);
    Py_CLEAR(*acc);
    *used = 0;
    *cap = 0;
    return rc;
}

static int reserve(PyObject **acc, Py_ssize_t used, Py_ssize_t *cap, Py_ssize_t need,
                   Py_ssize_t hint)
{
    if (*acc == NULL) {
        Py_ssize_t size = need > hint ? need : hint;
        *acc = PyBytes_FromStringAndSize(NULL, size);
        if (*acc == NULL)
            return -1;
        *cap = size;
        return 0;
    }
    if (used + need <= *cap)
        return 0;
    Py_ssize_t size = *cap + (*cap >> 1);
    if (size < used + need)
        size = used + need;
    if (_PyBytes_Resize(acc, size) < 0) {
        *acc = NULL;
        return -1;
    }
    *cap = size;
    return 0;
}

/* Hand the row at `pos` to the Python path; returns where it left off, or -1. */
static Py_ssize_t call_slow(Masker *self, PyObject *bufobj, Py_ssize_t pos, PyObject *out)
{
    PyObject *r = PyObject_CallFunction(self->slow, "OnO", bufobj, pos, out);
    if (r == NULL)
        return -1;
    Py_ssize_t next = PyLong_AsSsize_t(r);
    Py_DECREF(r);
    if (next == -1 && PyErr_Occurred())
        return -1;
    return next;
}

static PyObject *Masker_rewrite(Masker *self, PyObject *args)
{
    PyObject *bufobj, *out;
    Py_ssize_t pos;
    if (!PyArg_ParseTuple(args, "OnO!", &bufobj, &pos, &PyList_Type, &out))
        return NULL;
    if (self->slow == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Masker is not initialised");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (pos < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "negative position");
        return NULL;
    }
    const unsigned char *b = view.buf;
    const Py_ssize_t end = view.len;
    const Py_ssize_t nmasked = self->nmasked;
    const Column *cols = self->cols;
    PyObject *acc = NULL;
    Py_ssize_t used = 0, cap = 0;
    Span small[16];
    Span *spans = small;
    if (nmasked > 16) {
        spans = PyMem_Malloc((size_t)nmasked * sizeof(Span));
        if (spans == NULL) {
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
    }

    while (end - pos >= 7) {
        const unsigned char *m = b + pos;
        uint32_t length = be32(m + 1);
        Py_ssize_t stop = pos + 1 + (Py_ssize_t)length;
        if (m[0] != 'D' || stop > end)
            goto done;
        if (length < 6 || (Py_ssize_t)(((Py_ssize_t)m[5] << 8) | m[6]) != self->count)
            goto slow;
        Py_ssize_t p = pos + 7;
        Py_ssize_t column = 0;
        Py_ssize_t d = 0;
        for (Py_ssize_t i = 0; i < nmasked; i++) {
            const Column *c = &cols[i];
            for (; column < c->index; column++) {
                if (stop - p < 4)
                    goto slow;
                int32_t n = (int32_t)be32(b + p);
                if (n < -1 || (n > 0 && stop - p - 4 < n))
                    goto slow;
                p += n > 0 ? 4 + (Py_ssize_t)n : 4;
            }
            column++;
            if (stop - p < 4)
                goto slow;
            int32_t n = (int32_t)be32(b + p);
            if (n < 0 || stop - p - 4 < n)
                goto slow;
            Span *s = &spans[i];
            s->start = p;
            p += 4 + (Py_ssize_t)n;
            s->stop = p;
            if (c->kind == K_CONST) {
                d += PyBytes_GET_SIZE(c->value) - 4 - n;
            }
            else if (c->kind == K_KEEP_LAST) {
                if (n <= c->keep)
                    goto slow;
                for (Py_ssize_t k = p - c->keep; k < p; k++)
                    if (b[k] & 0x80)
                        goto slow;
                d += 3 + c->keep - n;
            }
            else {
                /* The '@' is looked for after the first character, as mask_value does. */
                Py_ssize_t a = p - 1;
                Py_ssize_t first = s->start + 5;
                while (a >= first && b[a] != '@')
                    a--;
                if (a < first || 3 + p - a > 255)
                    goto slow;
                s->at = a;
                d += 3 + p - a - n;
            }
        }
        {
            Py_ssize_t size = 1 + (Py_ssize_t)length + d;
            if (reserve(&acc, used, &cap, size, end - pos + self->growth + 64) < 0)
                goto error;
            unsigned char *w = (unsigned char *)PyBytes_AS_STRING(acc) + used;
            w[0] = 'D';
            put32(w + 1, (uint32_t)(length + d));
            w += 5;
            Py_ssize_t from = pos + 5;
            for (Py_ssize_t i = 0; i < nmasked; i++) {
                const Column *c = &cols[i];
                const Span *s = &spans[i];
                memcpy(w, b + from, (size_t)(s->start - from));
                w += s->start - from;
                if (c->kind == K_CONST) {
                    Py_ssize_t len = PyBytes_GET_SIZE(c->value);
                    memcpy(w, PyBytes_AS_STRING(c->value), (size_t)len);
                    w += len;
                }
                else if (c->kind == K_KEEP_LAST) {
                    memcpy(w, PyBytes_AS_STRING(c->value), 7);
                    w += 7;
                    memcpy(w, b + s->stop - c->keep, (size_t)c->keep);
                    w += c->keep;
                }
                else {
                    Py_ssize_t tail = s->stop - s->at;
                    put32(w, (uint32_t)(3 + tail));
                    memcpy(w + 4, "***", 3);
                    memcpy(w + 7, b + s->at, (size_t)tail);
                    w += 7 + tail;
                }
                from = s->stop;
            }
            memcpy(w, b + from, (size_t)(stop - from));
            used += size;
            pos = stop;
            continue;
        }
    slow:
        if (flush(&acc, &used, &cap, out) < 0)
            goto error;
        {
            Py_ssize_t next = call_slow(self, bufobj, pos, out);
            if (next < 0)
                goto error;
            if (next <= pos || next > end)
                goto done; /* the Python path did not take it either */
            pos = next;
        }
    }
    if (end - pos >= 5 && b[pos] == 'D') {
        /* Too short even for a header and column count: the Python path's verdict. */
        if (flush(&acc, &used, &cap, out) < 0)
            goto error;
        Py_ssize_t next = call_slow(self, bufobj, pos, out);
        if (next < 0)
            goto error;
        pos = next;
    }
done:
    if (flush(&acc, &used, &cap, out) < 0)
        goto error;
    if (spans != small)
        PyMem_Free(spans);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(pos);
error:
    Py_XDECREF(acc);
    if (spans != small)
        PyMem_Free(spans);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef Masker_methods[] = {
    {"rewrite", (PyCFunction)Masker_rewrite, METH_VARARGS,
     "rewrite(buf, pos, out) -> int: mask the run of DataRows in buf from pos, appending "
     "the new messages to the list out; returns where the run ends."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MaskerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "server.gateway._rowmask.Masker",
    .tp_basicsize = sizeof(Masker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Masker(count, columns, slow): rewrites runs of DataRows of one result shape.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Masker_init,
    .tp_dealloc = (destructor)Masker_dealloc,
    .tp_methods = Masker_methods,
};

/* scan(buf, hooked) -> (end, ready, hit, rows, size)
 * end: the offset after the last whole message whose length word is at least 4;
 * the walk stops at an incomplete message or a bad length word, which the caller
 * looks at itself.  ready: ReadyForQuery ('Z') messages; hit: 1 if a message's
 * type byte is flagged in hooked; rows, size: DataRow ('D') and CopyData ('d')
 * messages and their bytes on the wire. */
static PyObject *rowmask_scan(PyObject *module, PyObject *args)
{
    Py_buffer view, flags;
    PyObject *hooked;
    if (!PyArg_ParseTuple(args, "y*O", &view, &hooked))
        return NULL;
    const unsigned char *flag = NULL;
    int have_flags = 0;
    if (hooked != Py_None) {
        if (PyObject_GetBuffer(hooked, &flags, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
        have_flags = 1;
        if (flags.len != 256) {
            PyBuffer_Release(&flags);
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_ValueError, "hooked must be 256 flag bytes");
            return NULL;
        }
        flag = (const unsigned char *)flags.buf;
    }
    const unsigned char *b = (const unsigned char *)view.buf;
    Py_ssize_t end = view.len, pos = 0, ready = 0, rows = 0, size = 0;
    int hit = 0;
    while (end - pos >= 5) {
        unsigned char t = b[pos];
        uint32_t length = be32(b + pos + 1);
        if (length < 4 || (Py_ssize_t)length > end - pos - 1)
            break;
        Py_ssize_t stop = pos + 1 + (Py_ssize_t)length;
        if (t == 'D' || t == 'd') {
            rows++;
            size += stop - pos;
        } else if (t == 'Z') {
            ready++;
        }
        if (flag != NULL && flag[t])
            hit = 1;
        pos = stop;
    }
    if (have_flags)
        PyBuffer_Release(&flags);
    PyBuffer_Release(&view);
    return Py_BuildValue("(nninn)", pos, ready, hit, rows, size);
}

/* run(buf, pos) -> (stop, rows, size): the run of whole DataRows from pos. */
static PyObject *rowmask_run(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos;
    if (!PyArg_ParseTuple(args, "y*n", &view, &pos))
        return NULL;
    const unsigned char *b = (const unsigned char *)view.buf;
    Py_ssize_t end = view.len, start = pos, rows = 0;
    if (pos < 0)
        pos = start = end;
    while (end - pos >= 5 && b[pos] == 'D') {
        uint32_t length = be32(b + pos + 1);
        if (length < 4 || (Py_ssize_t)length > end - pos - 1)
            break;
        pos += 1 + (Py_ssize_t)length;
        rows++;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(nnn)", pos, rows, pos - start);
}

static PyMethodDef rowmask_functions[] = {
    {"scan", rowmask_scan, METH_VARARGS,
     "scan(buf, hooked) -> (end, ready, hit, rows, size): the relay's walk of a server chunk."},
    {"run", rowmask_run, METH_VARARGS,
     "run(buf, pos) -> (stop, rows, size): the run of whole DataRows from pos."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef rowmask_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "server.gateway._rowmask",
    .m_doc = "The native core of DataRow masking; see server/gateway/_rowmask.c.",
    .m_size = -1,
    .m_methods = rowmask_functions,
};

PyMODINIT_FUNC PyInit__rowmask(void)
{
    if (PyType_Ready(&MaskerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&rowmask_module);
    if (m == NULL)
        return NULL;
    PyModule_AddIntConstant(m, "CONST", K_CONST);
    PyModule_AddIntConstant(m, "KEEP_LAST", K_KEEP_LAST);
    PyModule_AddIntConstant(m, "DOMAIN", K_DOMAIN);
    Py_INCREF(&MaskerType);
    if (PyModule_AddObject(m, "Masker", (PyObject *)&MaskerType) < 0) {
        Py_DECREF(&MaskerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
