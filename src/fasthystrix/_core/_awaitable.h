/* What the compiled awaitables (_isolation/_do_async, _integrations/_asgi_core) need to end an
 * `await` as a coroutine ends it.
 *
 * Why C: `await x` steps x through its tp_iternext, and x's result travels in a
 * StopIteration. A Cython __next__ that raises it adds a traceback entry (a frame object)
 * on every call; these set it as a coroutine's return does, and nothing else.
 */
#ifndef FASTHYSTRIX_AWAITABLE_H
#define FASTHYSTRIX_AWAITABLE_H

#include <Python.h>

/* One step of an awaitable (a Cython cdef function): what it waits on, or with *finished set
 * its result; a new reference, or NULL with an exception set. */
typedef PyObject *(*fh_step_t)(PyObject *self, int *finished);
/* The same, resumed with a value (send_into's direct step of a compiled awaitable). */
typedef PyObject *(*fh_send_t)(PyObject *self, PyObject *value, int *finished);

/* StopIteration carrying value, as a coroutine's return sets it (_PyGen_SetStopIterationValue):
 * a tuple or an exception would be taken for the exception's arguments or for the exception
 * itself, so those are wrapped first. */
static inline void fh_set_stop_iteration(PyObject *value) {
    if (value == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
        return;
    }
    if (PyTuple_Check(value) || PyExceptionInstance_Check(value)) {
        PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, value);
        if (stop != NULL) {
            PyErr_SetObject(PyExc_StopIteration, stop);
            Py_DECREF(stop);
        }
        return;
    }
    PyErr_SetObject(PyExc_StopIteration, value);
}

/* A tp_iternext's body: one step, its result given back as an iterator's next or as a return. */
static inline PyObject *fh_iternext(fh_step_t step, PyObject *self) {
    int finished = 0;
    PyObject *result = step(self, &finished);
    if (result == NULL || !finished) {
        return result;
    }
    if (result != Py_None) {
        fh_set_stop_iteration(result);
    }
    /* A result of None ends without an exception at all: a tp_iternext that returns NULL with
     * none set is exhausted, and `await` (PyIter_Send, _PyGen_FetchStopIterationValue) reads
     * that as a return of None. Most awaits end so (every ASGI send()): no StopIteration to
     * make, set and fetch at once. */
    Py_DECREF(result);
    return NULL;
}

/* The iterator `await o` would step (o's am_await slot: a class with __await__ has it), a new
 * reference; NULL with an exception set if that fails; NULL without one if o has no such slot. */
static inline PyObject *fh_await_iterator(PyObject *o) {
    PyAsyncMethods *am = Py_TYPE(o)->tp_as_async;
    if (am == NULL || am->am_await == NULL) {
        return NULL;
    }
    return am->am_await(o);
}

/* Once, at import: the type's tp_iternext becomes `next` (its Python-visible __next__ stays
 * Cython's: the same step, with a traceback entry when it ends). */
static inline void fh_install_iternext(PyObject *type, iternextfunc next) {
    ((PyTypeObject *)type)->tp_iternext = next;
    PyType_Modified((PyTypeObject *)type);
}

#endif
