/*
 * _bounce: a prototype of DmaPool.map/unmap (src/virtio_msg/memory/pool.py)
 * as one C call each, to measure what a compiled helper would buy.  It is a
 * benchmark artefact, not part of the package: benchmarks/native/build.py
 * compiles it, benchmarks/bench_pool.py --native times it, and
 * tests/memory/test_bounce_native.py checks it gives DmaPool's results.
 *
 * The work is DmaPool's, check for check: one byte per slot (0 free, 1 used),
 * first fit from a hint below which every slot is used, the empty-mapping and
 * segment-cap checks, the mapping record (a Mapping tuple, in a dict by bus
 * address, told apart by identity on unmap), the copy into the pool's span
 * (or zeros for an int length) and, on unmap, the copy out as bytes and into
 * the caller's writable buffer, and the same statistics.  Errors are the
 * pool's exception classes with the pool's messages; the classes, Mapping and
 * DmaDirection.TO_DEVICE are passed to the constructor.
 *
 * Thread safety: DmaPool takes a lock; here the GIL serialises calls.  The
 * slot search and the slot map update run with no allocation in between (an
 * allocation may run the garbage collector, hence finalizers, hence another
 * thread), and a mapping leaves the live dict before its slots are freed, so
 * a thread switch inside an allocation sees a consistent pool.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    Py_buffer view;           /* the pool's span: writable, contiguous */
    int have_view;
    int busy;                 /* calls inside map/unmap (close waits for none) */
    unsigned char *used;      /* one byte per slot */
    Py_ssize_t nslots;
    Py_ssize_t slot_size;
    Py_ssize_t max_slots;
    unsigned long long base;  /* bus address of slot 0 */
    Py_ssize_t hint;
    Py_ssize_t slots_used;
    Py_ssize_t high_water;
    Py_ssize_t failures;
    unsigned long long to_device;
    unsigned long long from_device;
    PyObject *live;           /* dict: bus address -> Mapping */
    PyTypeObject *mapping_type;
    PyObject *dir_to_device;
    PyObject *exc_empty;
    PyObject *exc_too_large;
    PyObject *exc_exhausted;
    PyObject *exc_unknown;
} Pool;

static int
pool_traverse(Pool *self, visitproc visit, void *arg)
{
    Py_VISIT(self->live);
    Py_VISIT(self->mapping_type);
    Py_VISIT(self->dir_to_device);
    Py_VISIT(self->exc_empty);
    Py_VISIT(self->exc_too_large);
    Py_VISIT(self->exc_exhausted);
    Py_VISIT(self->exc_unknown);
    /* Not self->view.obj: the collector would clear that memoryview while our
     * export is live (memory_clear drops its managed buffer), and the release
     * in pool_dealloc would then touch freed memory.  The view cannot lead
     * back to the pool, so leaving it out hides no cycle. */
    return 0;
}

static int
pool_clear(Pool *self)
{
    Py_CLEAR(self->live);
    Py_CLEAR(self->mapping_type);
    Py_CLEAR(self->dir_to_device);
    Py_CLEAR(self->exc_empty);
    Py_CLEAR(self->exc_too_large);
    Py_CLEAR(self->exc_exhausted);
    Py_CLEAR(self->exc_unknown);
    return 0;
}

static void
pool_dealloc(Pool *self)
{
    PyObject_GC_UnTrack(self);
    if (self->have_view) {
        self->have_view = 0;
        PyBuffer_Release(&self->view);
    }
    pool_clear(self);
    PyMem_Free(self->used);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
is_power_of_two(Py_ssize_t v)
{
    return v > 0 && (v & (v - 1)) == 0;
}

static int
pool_init(Pool *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"view", "base", "slot_size", "max_segment_slots", "mapping_type",
                             "to_device", "empty", "too_large", "exhausted", "unknown", NULL};
    PyObject *view, *base_obj, *mapping_type, *to_device, *empty, *too_large, *exhausted;
    PyObject *unknown;
    unsigned long long base;
    Py_ssize_t slot_size, max_slots;

    if (self->have_view || self->live != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Pool is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!nnOOOOOO:Pool", kwlist, &view,
                                     &PyLong_Type, &base_obj,
                                     &slot_size, &max_slots, &mapping_type, &to_device, &empty,
                                     &too_large, &exhausted, &unknown)) {
        return -1;
    }
    base = PyLong_AsUnsignedLongLong(base_obj);  /* OverflowError below 0 or past 2**64 */
    if (base == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (!is_power_of_two(slot_size)) {
        PyErr_Format(PyExc_ValueError, "slot_size must be a power of two, not %zd", slot_size);
        return -1;
    }
    if (max_slots <= 0 || max_slots > PY_SSIZE_T_MAX / slot_size) {
        PyErr_Format(PyExc_ValueError, "max_segment_slots must be positive, not %zd", max_slots);
        return -1;
    }
    if (base % (unsigned long long)slot_size) {
        PyObject *hex = PyNumber_ToBase(base_obj, 16);
        if (hex != NULL) {
            PyErr_Format(PyExc_ValueError, "pool base %U is not aligned to the slot size %zd",
                         hex, slot_size);
            Py_DECREF(hex);
        }
        return -1;
    }
    /* A Mapping is built like tuple.__new__(Mapping, ...): a tuple subclass with
     * the tuple's layout (a NamedTuple has empty __slots__) is filled in place. */
    if (!PyType_Check(mapping_type)
        || !PyType_IsSubtype((PyTypeObject *)mapping_type, &PyTuple_Type)
        || ((PyTypeObject *)mapping_type)->tp_basicsize != PyTuple_Type.tp_basicsize
        || ((PyTypeObject *)mapping_type)->tp_itemsize != PyTuple_Type.tp_itemsize
        || ((PyTypeObject *)mapping_type)->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError,
                        "mapping_type must be a tuple subclass with the tuple's layout");
        return -1;
    }
    PyObject *const excs[] = {empty, too_large, exhausted, unknown};
    for (size_t i = 0; i < sizeof excs / sizeof excs[0]; i++) {
        if (!PyExceptionClass_Check(excs[i])) {
            PyErr_Format(PyExc_TypeError, "%R is not an exception class", excs[i]);
            return -1;
        }
    }
    if (PyObject_GetBuffer(view, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    self->have_view = 1;
    Py_ssize_t nslots = self->view.len / slot_size;
    if (nslots <= 0) {
        PyErr_Format(PyExc_ValueError, "pool span of %zd bytes holds no %zd-byte slot",
                     self->view.len, slot_size);
        goto fail;
    }
    if ((unsigned long long)(nslots * slot_size) > ~0ULL - base) {
        PyErr_SetString(PyExc_ValueError, "pool span wraps past 2**64");
        goto fail;
    }
    self->used = PyMem_Calloc((size_t)nslots, 1);
    if (self->used == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    self->live = PyDict_New();
    if (self->live == NULL) {
        goto fail;
    }
    self->nslots = nslots;
    self->slot_size = slot_size;
    self->max_slots = max_slots;
    self->base = base;
    self->mapping_type = (PyTypeObject *)Py_NewRef(mapping_type);
    self->dir_to_device = Py_NewRef(to_device);
    self->exc_empty = Py_NewRef(empty);
    self->exc_too_large = Py_NewRef(too_large);
    self->exc_exhausted = Py_NewRef(exhausted);
    self->exc_unknown = Py_NewRef(unknown);
    return 0;
fail:
    PyMem_Free(self->used);
    self->used = NULL;
    Py_CLEAR(self->live);
    self->have_view = 0;
    PyBuffer_Release(&self->view);
    return -1;
}

static int
check_open(Pool *self)
{
    if (self->live == NULL) {
        PyErr_SetString(PyExc_ValueError, "Pool is not initialised");
        return -1;
    }
    if (!self->have_view) {
        PyErr_SetString(PyExc_ValueError, "Pool is closed");
        return -1;
    }
    return 0;
}

/* The error of an int length that does not fit a C long long (Python ints are
 * unbounded): the same messages, computed with Python ints. */
static PyObject *
huge_length(Pool *self, PyObject *data)
{
    PyObject *length = PyNumber_Index(data);
    if (length == NULL) {
        return NULL;
    }
    PyObject *zero = PyLong_FromLong(0);
    int positive = zero ? PyObject_RichCompareBool(length, zero, Py_GT) : -1;
    Py_XDECREF(zero);
    if (positive < 0) {
        Py_DECREF(length);
        return NULL;
    }
    if (!positive) {
        PyErr_Format(self->exc_empty, "cannot map %S bytes", length);
        Py_DECREF(length);
        return NULL;
    }
    PyObject *size = PyLong_FromSsize_t(self->slot_size);
    PyObject *sum = size ? PyNumber_Add(length, size) : NULL;
    PyObject *one = sum ? PyLong_FromLong(1) : NULL;
    PyObject *last = one ? PyNumber_Subtract(sum, one) : NULL;
    PyObject *nslots = last ? PyNumber_FloorDivide(last, size) : NULL;
    if (nslots != NULL) {
        PyErr_Format(self->exc_too_large,
                     "mapping of %S bytes needs %S slots; the limit is %zd slots (%zd bytes)",
                     length, nslots, self->max_slots, self->max_slots * self->slot_size);
    }
    Py_XDECREF(nslots);
    Py_XDECREF(last);
    Py_XDECREF(one);
    Py_XDECREF(sum);
    Py_XDECREF(size);
    Py_DECREF(length);
    return NULL;
}

/* Lowest slot >= hint that starts a run of n free slots, or -1 (bytearray.find). */
static Py_ssize_t
find_run(const unsigned char *used, Py_ssize_t nslots, Py_ssize_t hint, Py_ssize_t n)
{
    Py_ssize_t i = hint;
    while (i + n <= nslots) {
        Py_ssize_t k = i + n;
        while (k > i && !used[k - 1]) {
            k--;
        }
        if (k == i) {
            return i;
        }
        i = k;  /* used[k - 1]: no run starting at or before k - 1 fits */
    }
    return -1;
}

static void
release_slots(Pool *self, Py_ssize_t slot, Py_ssize_t n)
{
    memset(self->used + slot, 0, (size_t)n);
    self->slots_used -= n;
    if (slot < self->hint) {
        self->hint = slot;
    }
}

static PyObject *
pool_map(Pool *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "map() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (check_open(self) < 0) {
        return NULL;
    }
    PyObject *data = args[0], *direction = args[1];
    const char *src = NULL;        /* NULL: zeros */
    long long length;
    Py_buffer buf;
    int have_buf = 0;
    PyObject *cast = NULL;         /* memoryview(data).cast("B"), the slow path */
    PyObject *target = Py_None;    /* borrowed, or cast */

    if (PyBytes_CheckExact(data)) {
        src = PyBytes_AS_STRING(data);
        length = PyBytes_GET_SIZE(data);
    }
    else if (PyLong_Check(data)) {  /* bool and int subclasses too, like DmaPool */
        int overflow;
        length = PyLong_AsLongLongAndOverflow(data, &overflow);
        if (overflow) {
            return huge_length(self, data);
        }
        if (length == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    else {
        /* DmaPool's _source: bytes subclasses as bytes, anything else through
         * memoryview(data).cast("B"), writable originals become the target. */
        if (PyBytes_Check(data)) {
            cast = Py_NewRef(data);
        }
        else {
            PyObject *mv = PyMemoryView_FromObject(data);
            if (mv == NULL) {
                return NULL;
            }
            cast = PyObject_CallMethod(mv, "cast", "s", "B");
            Py_DECREF(mv);
            if (cast == NULL) {
                return NULL;
            }
        }
        if (PyObject_GetBuffer(cast, &buf, PyBUF_SIMPLE) < 0) {
            Py_DECREF(cast);
            return NULL;
        }
        have_buf = 1;
        src = buf.buf;
        length = buf.len;
        if (!PyBytes_Check(data) && !buf.readonly && direction != self->dir_to_device) {
            target = cast;
        }
    }

    PyObject *result = NULL;
    if (length <= 0) {
        PyErr_Format(self->exc_empty, "cannot map %lld bytes", length);
        goto done;
    }
    long long nslots_ll = length / self->slot_size + (length % self->slot_size != 0);
    if (nslots_ll > self->max_slots) {
        PyErr_Format(self->exc_too_large,
                     "mapping of %lld bytes needs %lld slots; the limit is %zd slots (%zd bytes)",
                     length, nslots_ll, self->max_slots, self->max_slots * self->slot_size);
        goto done;
    }
    Py_ssize_t n = (Py_ssize_t)nslots_ll;

    /* Search and claim with no allocation in between (see the top of the file). */
    Py_ssize_t hint = self->hint;
    Py_ssize_t slot = find_run(self->used, self->nslots, hint, n);
    if (slot < 0) {
        self->failures++;
        PyErr_Format(self->exc_exhausted,
                     "swiotlb full: no run of %zd free slots (%zd/%zd slots in use, %zd live "
                     "mappings)", n, self->slots_used, self->nslots, PyDict_GET_SIZE(self->live));
        goto done;
    }
    memset(self->used + slot, 1, (size_t)n);
    if (slot == hint) {
        self->hint = slot + n;
    }
    self->slots_used += n;
    if (self->slots_used > self->high_water) {
        self->high_water = self->slots_used;
    }
    self->busy++;

    Py_ssize_t off = slot * self->slot_size;
    PyObject *addr = PyLong_FromUnsignedLongLong(self->base + (unsigned long long)off);
    PyObject *len_obj = addr ? PyLong_FromLongLong(length) : NULL;
    PyObject *slot_obj = len_obj ? PyLong_FromSsize_t(slot) : NULL;
    PyObject *n_obj = slot_obj ? PyLong_FromSsize_t(n) : NULL;
    PyObject *mapping = n_obj ? self->mapping_type->tp_alloc(self->mapping_type, 6) : NULL;
    if (mapping == NULL) {
        Py_XDECREF(n_obj);
        Py_XDECREF(slot_obj);
        Py_XDECREF(len_obj);
        Py_XDECREF(addr);
        release_slots(self, slot, n);
        self->busy--;
        goto done;
    }
    PyTuple_SET_ITEM(mapping, 0, addr);
    PyTuple_SET_ITEM(mapping, 1, len_obj);
    PyTuple_SET_ITEM(mapping, 2, Py_NewRef(direction));
    PyTuple_SET_ITEM(mapping, 3, slot_obj);
    PyTuple_SET_ITEM(mapping, 4, n_obj);
    PyTuple_SET_ITEM(mapping, 5, Py_NewRef(target));
    if (PyDict_SetItem(self->live, addr, mapping) < 0) {
        Py_DECREF(mapping);
        release_slots(self, slot, n);
        self->busy--;
        goto done;
    }
    char *dst = (char *)self->view.buf + off;
    if (src == NULL) {
        memset(dst, 0, (size_t)length);
    }
    else {
        memcpy(dst, src, (size_t)length);
        self->to_device += (unsigned long long)length;
    }
    self->busy--;
    result = mapping;
done:
    if (have_buf) {
        PyBuffer_Release(&buf);
    }
    Py_XDECREF(cast);
    return result;
}

static PyObject *
unknown_address(Pool *self, PyObject *addr)
{
    PyObject *hex = PyNumber_ToBase(addr, 16);  /* like f"{addr:#x}" */
    if (hex != NULL) {
        PyErr_Format(self->exc_unknown, "no live mapping at %U (double unmap or never mapped)",
                     hex);
        Py_DECREF(hex);
    }
    return NULL;
}

/* A field of a live Mapping: the pool's own int, in range by construction. */
static int
field(PyObject *mapping, Py_ssize_t i, Py_ssize_t *out)
{
    *out = PyLong_AsSsize_t(PyTuple_GET_ITEM(mapping, i));
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *
pool_unmap(Pool *self, PyObject *arg)
{
    if (check_open(self) < 0) {
        return NULL;
    }
    PyObject *entry;
    if (Py_IS_TYPE(arg, self->mapping_type)) {
        if (PyTuple_GET_SIZE(arg) != 6) {
            PyErr_Format(PyExc_ValueError, "%s values to unpack (expected 6, got %zd)",
                         PyTuple_GET_SIZE(arg) < 6 ? "not enough" : "too many",
                         PyTuple_GET_SIZE(arg));
            return NULL;
        }
        entry = PyDict_GetItemWithError(self->live, PyTuple_GET_ITEM(arg, 0));
        if (entry != arg) {
            if (entry == NULL && PyErr_Occurred()) {
                return NULL;
            }
            PyErr_Format(self->exc_unknown, "%R is not live (double unmap or stale)", arg);
            return NULL;
        }
    }
    else if (PyLong_Check(arg)) {
        entry = PyDict_GetItemWithError(self->live, arg);
        if (entry == NULL) {
            return PyErr_Occurred() ? NULL : unknown_address(self, arg);
        }
    }
    else {
        PyErr_Format(PyExc_TypeError, "unmap takes a Mapping or a bus address, not %R", arg);
        return NULL;
    }
    /* entry is the live record the pool built: its fields are the pool's own. */
    Py_ssize_t length, slot, n;
    if (field(entry, 1, &length) < 0 || field(entry, 3, &slot) < 0 || field(entry, 4, &n) < 0) {
        return NULL;
    }
    Py_INCREF(entry);
    /* Out of the live dict first: no other thread can unmap it from here on. */
    if (PyDict_DelItem(self->live, PyTuple_GET_ITEM(entry, 0)) < 0) {
        Py_DECREF(entry);
        return NULL;
    }
    PyObject *data = NULL;
    int from_device = PyTuple_GET_ITEM(entry, 2) != self->dir_to_device;
    if (from_device) {
        self->busy++;
        data = PyBytes_FromStringAndSize((char *)self->view.buf + slot * self->slot_size, length);
        self->busy--;
    }
    release_slots(self, slot, n);
    if (!from_device) {
        Py_DECREF(entry);
        Py_RETURN_NONE;
    }
    if (data == NULL) {
        Py_DECREF(entry);
        return NULL;
    }
    self->from_device += (unsigned long long)length;
    PyObject *target = PyTuple_GET_ITEM(entry, 5);
    if (target != Py_None) {  /* target[:] = data */
        Py_buffer tb;
        if (PyObject_GetBuffer(target, &tb, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            goto fail;
        }
        if (tb.len == length) {
            memcpy(tb.buf, PyBytes_AS_STRING(data), (size_t)length);
            PyBuffer_Release(&tb);
        }
        else {  /* cannot happen for a cast("B") view; the slice assignment's own error */
            PyBuffer_Release(&tb);
            PyObject *all = PySlice_New(NULL, NULL, NULL);
            int rc = all ? PyObject_SetItem(target, all, data) : -1;
            Py_XDECREF(all);
            if (rc < 0) {
                goto fail;
            }
        }
    }
    Py_DECREF(entry);
    return data;
fail:
    Py_DECREF(data);
    Py_DECREF(entry);
    return NULL;
}

static PyObject *
pool_stats(Pool *self, PyObject *Py_UNUSED(ignored))
{
    if (self->live == NULL) {
        PyErr_SetString(PyExc_ValueError, "Pool is not initialised");
        return NULL;
    }
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:K,s:K,s:n}",
                         "slot_size", self->slot_size, "slots_total", self->nslots,
                         "slots_used", self->slots_used, "high_water", self->high_water,
                         "live_mappings", PyDict_GET_SIZE(self->live),
                         "bytes_bounced_to_device", self->to_device,
                         "bytes_bounced_from_device", self->from_device,
                         "map_failures", self->failures);
}

static PyObject *
pool_used_map(Pool *self, PyObject *Py_UNUSED(ignored))
{
    if (self->used == NULL) {
        PyErr_SetString(PyExc_ValueError, "Pool is not initialised");
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)self->used, self->nslots);
}

static PyObject *
pool_close(Pool *self, PyObject *Py_UNUSED(ignored))
{
    if (self->busy) {
        PyErr_SetString(PyExc_BufferError, "Pool is in use by another thread");
        return NULL;
    }
    if (self->have_view) {
        self->have_view = 0;
        PyBuffer_Release(&self->view);
    }
    Py_RETURN_NONE;
}

static PyMethodDef pool_methods[] = {
    {"map", (PyCFunction)(void (*)(void))pool_map, METH_FASTCALL,
     "map(data, direction) -> Mapping: DmaPool.map in one C call."},
    {"unmap", (PyCFunction)pool_unmap, METH_O,
     "unmap(mapping_or_addr) -> bytes | None: DmaPool.unmap in one C call."},
    {"stats", (PyCFunction)pool_stats, METH_NOARGS, "The usage counters, as a dict."},
    {"used_map", (PyCFunction)pool_used_map, METH_NOARGS, "The slot map: one byte per slot."},
    {"close", (PyCFunction)pool_close, METH_NOARGS, "Release the pool's buffer."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PoolType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_bounce.Pool",
    .tp_doc = PyDoc_STR("Pool(view, base, slot_size, max_segment_slots, mapping_type, "
                        "to_device, empty, too_large, exhausted, unknown): DmaPool's "
                        "streaming mappings over a writable buffer, in C."),
    .tp_basicsize = sizeof(Pool),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)pool_init,
    .tp_dealloc = (destructor)pool_dealloc,
    .tp_traverse = (traverseproc)pool_traverse,
    .tp_clear = (inquiry)pool_clear,
    .tp_methods = pool_methods,
};

static struct PyModuleDef bounce_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_bounce",
    .m_doc = "A C prototype of DmaPool.map/unmap (benchmarks only).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__bounce(void)
{
    if (PyType_Ready(&PoolType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&bounce_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Pool", (PyObject *)&PoolType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
