# cython: language_level=3
# Declarations of _fastclock.h: the coarse clock and the calibrated TSC of the fast path.
from libc.stdint cimport int64_t


cdef extern from "_fastclock.h" nogil:
    int FH_HAVE_TSC
    int64_t fh_ticks()
    int64_t fh_coarse_ns()
    void fh_fastclock_init(int allowed)
    int fh_fastclock_allowed()
    int64_t fh_fastclock_scale()
    void fh_fastclock_calibrate(int64_t now_ns)
    int64_t fh_ticks_to_ns(int64_t ticks, int64_t scale_bits)
