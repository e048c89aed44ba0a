# cython: language_level=3
# The compiled awaitables' base (its coroutine protocol over one C method), shared with
# _integrations/_asgi_core.
from cpython.object cimport PyObject
from libc.stdint cimport int64_t

from fasthystrix._core._circuit cimport CircuitBreaker


cdef extern from "Python.h":
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT


cdef class Awaitable:
    cdef object step(self, object value, object exc, bint *finished)


cdef object send_into(object iterator, object value, object exc, PySendResult *sent)
cdef PyObject *awaitable_next(PyObject *awaitable) noexcept
cdef object command_running(object name, CircuitBreaker circuit, object iterator, int64_t start, int64_t verdict)
cdef object conclusion(
    CircuitBreaker circuit, int64_t start, int64_t verdict, PySendResult sent, object value, object error,
    bint timed_out, object task, object fallback,
)
cdef object turned_away(CircuitBreaker circuit, int64_t start, int64_t verdict, object run)
