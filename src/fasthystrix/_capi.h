/* The do() entry point as a C function, and the exception hand-off it needs.
 *
 * Why C: every Cython function an exception passes through adds a traceback
 * entry (a new frame object, ~100 ns). A failing run() without a fallback is
 * the path users hit hardest in an outage, so run()'s exception must reach the
 * caller untouched, exactly as it left run(). The Cython code catches it with
 * the C API (no traceback entry), does its bookkeeping, stashes it in a
 * thread-local slot and returns a marker; the C entry point re-raises it.
 */
#ifndef FASTHYSTRIX_CAPI_H
#define FASTHYSTRIX_CAPI_H

#include <Python.h>

#if defined(_MSC_VER) && !defined(__clang__)
#define FH_THREAD_LOCAL __declspec(thread)
#else
#define FH_THREAD_LOCAL _Thread_local
#endif

static FH_THREAD_LOCAL PyObject *fh_stashed = NULL;
static PyObject *fh_reraise_marker = NULL;
static PyObject *(*fh_do_impl)(PyObject *, PyObject *, PyObject *) = NULL;

/* Call f() without letting Cython see the error: NULL means an exception is set. */
static inline PyObject *fh_call0(PyObject *f) { return PyObject_CallNoArgs(f); }

/* Call f(*args, **kwargs) (kwargs may be None) the same way. */
static inline PyObject *fh_call(PyObject *f, PyObject *args, PyObject *kwargs) {
    return PyObject_Call(f, args, kwargs == Py_None ? NULL : kwargs);
}

/* Take ownership of a new reference returned by fh_call0. */
static inline PyObject *fh_own(PyObject *o) { return o; }

/* The exception currently set (normalized, traceback attached), cleared from the thread state. */
static PyObject *fh_fetch(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
        Py_DECREF(tb);
    }
    Py_XDECREF(type);
    return value;
#endif
}

/* Set exc (a reference is taken) as the current exception, its traceback unchanged. */
static void fh_restore(PyObject *exc) {
#if PY_VERSION_HEX >= 0x030C0000
    Py_INCREF(exc);
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), Py_NewRef(exc), PyException_GetTraceback(exc));
#endif
}

/* Keep exc (a reference is taken) for the entry point to raise; returns the marker (new reference). */
static PyObject *fh_stash(PyObject *exc) {
    Py_INCREF(exc);
    Py_XSETREF(fh_stashed, exc);
    return Py_NewRef(fh_reraise_marker);
}

/* The stashed exception (new reference), or None. */
static PyObject *fh_take_stash(void) {
    PyObject *exc = fh_stashed;
    fh_stashed = NULL;
    return exc ? exc : Py_NewRef(Py_None);
}

static void fh_init(PyObject *marker, PyObject *(*impl)(PyObject *, PyObject *, PyObject *)) {
    Py_INCREF(marker);
    fh_reraise_marker = marker;
    fh_do_impl = impl;
}

static const char *fh_do_params[3] = {"name", "run", "fallback"};

static PyObject *fh_do_fastcall(PyObject *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), nkw, i, k;
    PyObject *slots[3] = {NULL, NULL, NULL}, *result;
    (void)self;
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError, "do() takes from 2 to 3 positional arguments but %zd were given", nargs);
        return NULL;
    }
    for (i = 0; i < nargs; i++) slots[i] = args[i];
    nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int found = -1;
        for (i = 0; i < 3; i++) {
            if (PyUnicode_CompareWithASCIIString(key, fh_do_params[i]) == 0) { found = (int)i; break; }
        }
        if (found < 0) {
            PyErr_Format(PyExc_TypeError, "do() got an unexpected keyword argument '%U'", key);
            return NULL;
        }
        if (slots[found] != NULL) {
            PyErr_Format(PyExc_TypeError, "do() got multiple values for argument '%s'", fh_do_params[found]);
            return NULL;
        }
        slots[found] = args[nargs + k];
    }
    for (i = 0; i < 2; i++) {
        if (slots[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "do() missing required argument '%s'", fh_do_params[i]);
            return NULL;
        }
    }
    result = fh_do_impl(slots[0], slots[1], slots[2] ? slots[2] : Py_None);
    if (result == fh_reraise_marker) {
        PyObject *exc = fh_take_stash();
        Py_DECREF(result);
        fh_restore(exc);
        Py_DECREF(exc);
        return NULL;
    }
    return result;
}

static PyMethodDef fh_do_def = {
    "do",
    (PyCFunction)(void (*)(void))fh_do_fastcall,
    METH_FASTCALL | METH_KEYWORDS,
    "do(name, run, fallback=None)\n--\n\n"
    "Run ``run()`` as command ``name``; see :func:`fasthystrix.do`.",
};

static PyObject *fh_make_do(PyObject *module_name) {
    return PyCFunction_NewEx(&fh_do_def, NULL, module_name);
}

#endif /* FASTHYSTRIX_CAPI_H */
