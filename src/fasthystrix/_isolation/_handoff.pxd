# cython: language_level=3
from cpython.pythread cimport PyThread_type_lock
from libc.stdint cimport int64_t


cdef class Completion:
    cdef int64_t state
    cdef PyThread_type_lock lock

    cdef void set_nogil(self) noexcept nogil
    cdef void post_nogil(self) noexcept nogil
    cdef void nudge_nogil(self) noexcept nogil
    cdef bint spin(self, int64_t limit_ns, bint posted) noexcept nogil
    cdef void grace(self) noexcept nogil
    cdef bint _stop_sleeping(self) except -1
