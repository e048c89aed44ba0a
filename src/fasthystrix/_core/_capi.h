/* The do() entry point as a C function, and the C-API pieces the core's failure path needs.
 *
 * Why C: every Cython function an exception passes through adds a traceback
 * entry (a new frame object). A failing run() without a fallback is
 * the path users hit hardest in an outage, and run's exception should reach the
 * caller exactly as it left run(). So the core takes it from the thread state at
 * once (fh_fetch), does its bookkeeping, and hands it back through an explicit
 * out-parameter; this entry point raises it without adding a frame of its own.
 */
#ifndef FASTHYSTRIX_CAPI_H
#define FASTHYSTRIX_CAPI_H

#include <Python.h>
#include <stdint.h>

/* The core's do(): returns the command's value, or NULL with an exception set (an error of
 * fasthystrix's own, or a failing fallback's), or None with *raised set to an exception (a new
 * reference) that the caller must raise: run's, or CircuitOpenError... when there is no fallback. */
typedef PyObject *(*fh_do_impl_t)(PyObject *name, PyObject *run, PyObject *fallback, PyObject **raised);
static fh_do_impl_t fh_do_impl = NULL;

/* Call f() without letting Cython see the error: NULL means an exception is set. */
static inline PyObject *fh_call0(PyObject *f) { return PyObject_CallNoArgs(f); }

/* Call f(*args, **kwargs) (kwargs may be None) the same way. */
static inline PyObject *fh_call(PyObject *f, PyObject *args, PyObject *kwargs) {
    return PyObject_Call(f, args, kwargs == Py_None ? NULL : kwargs);
}

/* Take ownership of a new (non-NULL) reference returned by fh_call0 or fh_call. */
static inline PyObject *fh_own(PyObject *o) { return o; }

/* The exception currently set (normalized, traceback attached), cleared from the thread state. */
static PyObject *fh_fetch(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    /* An exception raised by Python code is already an instance of its type: normalizing
     * and re-attaching the same traceback would only cost time on the failure path. */
    if (value == NULL || (PyObject *)Py_TYPE(value) != type) {
        PyErr_NormalizeException(&type, &value, &tb);
    }
    if (tb != NULL) {
        if (((PyBaseExceptionObject *)value)->traceback != tb) {
            PyException_SetTraceback(value, tb);
        }
        Py_DECREF(tb);
    }
    Py_XDECREF(type);
    return value;
#endif
}

/* What kind of exception run() raised, in one walk of its type's MRO (PyObject_TypeCheck
 * walks it once per class asked about): FH_NOT_EXCEPTION (a BaseException such as
 * KeyboardInterrupt), FH_EXCEPTION, or one of the two context errors. */
enum { FH_NOT_EXCEPTION = -1, FH_EXCEPTION = 0, FH_CONTEXT_CANCELED = 1, FH_CONTEXT_DEADLINE = 2 };

static int fh_kind_of_type(PyTypeObject *type, PyObject *canceled, PyObject *deadline) {
    PyObject *mro = type->tp_mro;
    Py_ssize_t i, n;
    int kind = FH_NOT_EXCEPTION, seen_deadline = 0;
    if (mro == NULL || !PyTuple_Check(mro)) {
        if (PyType_IsSubtype(type, (PyTypeObject *)canceled)) return FH_CONTEXT_CANCELED;
        if (PyType_IsSubtype(type, (PyTypeObject *)deadline)) return FH_CONTEXT_DEADLINE;
        return PyType_IsSubtype(type, (PyTypeObject *)PyExc_Exception) ? FH_EXCEPTION : FH_NOT_EXCEPTION;
    }
    n = PyTuple_GET_SIZE(mro);
    for (i = 0; i < n; i++) {
        PyObject *base = PyTuple_GET_ITEM(mro, i);
        if (base == canceled) return FH_CONTEXT_CANCELED;  /* first, as classify() asks */
        if (base == deadline) seen_deadline = 1;
        else if (base == PyExc_Exception) kind = FH_EXCEPTION;
    }
    return seen_deadline ? FH_CONTEXT_DEADLINE : kind;
}

static inline int fh_kind_of(PyObject *exc, PyObject *canceled, PyObject *deadline) {
    return fh_kind_of_type(Py_TYPE(exc), canceled, deadline);
}

/* A new instance of one of fasthystrix's own error classes (CircuitOpenError...), without
 * arguments: what calling the class does, minus the generic call machinery, which costs more
 * than the object (the open-circuit path makes one per call). Their __init__ is BaseException's,
 * which would only set the empty args again; any other __init__ is still called. */
static PyObject *fh_empty_args = NULL;

static PyObject *fh_new_error(PyObject *cls) {
    PyTypeObject *type = (PyTypeObject *)cls;
    PyObject *exc;
    if (fh_empty_args == NULL && (fh_empty_args = PyTuple_New(0)) == NULL) return NULL;
    exc = type->tp_new(type, fh_empty_args, NULL);
    if (exc != NULL && type->tp_init != ((PyTypeObject *)PyExc_BaseException)->tp_init
            && type->tp_init(exc, fh_empty_args, NULL) < 0) {
        Py_CLEAR(exc);
    }
    return exc;
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

/* Raise exc, stealing the reference: for the core's Cython callers (returns -1 for `except -1`). */
static int fh_reraise(PyObject *exc) {
    fh_restore(exc);
    Py_DECREF(exc);
    return -1;
}

static void fh_init(void *impl) { fh_do_impl = (fh_do_impl_t)impl; }

/* The circuit of `name` in `table` as a new (strong) reference, None (new reference) if
 * absent, or NULL with an error set. The caller owns the circuit for the whole command: a
 * flush() or an eviction that drops the table's reference while run() executes cannot free it.
 * On free-threaded builds the table may change under us, so a borrowed pointer from the dict
 * would not be safe even for an instant: PyDict_GetItemRef takes the reference atomically. */
static PyObject *fh_lookup(PyObject *table, PyObject *name) {
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *found = NULL;
    if (PyDict_GetItemRef(table, name, &found) < 0) return NULL;
    return found ? found : Py_NewRef(Py_None);
#else
    /* With the GIL nothing runs between the lookup and the INCREF. */
    PyObject *found = PyDict_GetItemWithError(table, name);
    if (found == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    return Py_NewRef(found);
#endif
}

static const char *fh_do_params[3] = {"name", "run", "fallback"};

static PyObject *fh_do_fastcall(PyObject *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), nkw, i, k;
    PyObject *slots[3] = {NULL, NULL, NULL}, *result, *raised = NULL;
    (void)self;
    if (kwnames == NULL && (nargs == 2 || nargs == 3)) {
        /* do(name, run) and do(name, run, fallback): no keyword to match. */
        result = fh_do_impl(args[0], args[1], nargs == 3 ? args[2] : Py_None, &raised);
        goto done;
    }
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
    result = fh_do_impl(slots[0], slots[1], slots[2] ? slots[2] : Py_None, &raised);
done:
    if (raised != NULL) {
        /* run's exception (or fasthystrix's, without a fallback), raised as it is: no frame of ours. */
        Py_XDECREF(result);
        fh_restore(raised);
        Py_DECREF(raised);
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
