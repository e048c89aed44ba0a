# cython: language_level=3
# The compiled awaitables' base (its coroutine protocol over one C method), shared with
# _integrations/_asgi_core.
from cpython.object cimport PyObject


cdef extern from "Python.h":
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT


cdef class Awaitable:
    cdef object step(self, object value, object exc, bint *finished)


cdef object send_into(object iterator, object value, object exc, PySendResult *sent)
cdef PyObject *awaitable_next(PyObject *awaitable) noexcept
