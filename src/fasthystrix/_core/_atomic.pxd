# cython: language_level=3
# Declarations of _atomic.h: C11 atomics on int64 words, a spinlock and the monotonic clock.
from libc.stdint cimport int64_t, uint32_t


cdef extern from "_atomic.h" nogil:
    int64_t fh_load_relaxed(int64_t *p)
    int64_t fh_load_acquire(int64_t *p)
    void fh_store_relaxed(int64_t *p, int64_t v)
    void fh_store_release(int64_t *p, int64_t v)
    int64_t fh_add_relaxed(int64_t *p, int64_t v)
    int64_t fh_add_acq_rel(int64_t *p, int64_t v)
    int64_t fh_exchange_acq_rel(int64_t *p, int64_t v)
    void fh_pause()
    void fh_yield()
    bint fh_cas_acq_rel(int64_t *p, int64_t *expected, int64_t desired)
    void fh_add32_relaxed(uint32_t *p, uint32_t v)
    uint32_t fh_load32_relaxed(uint32_t *p)
    void fh_store32_relaxed(uint32_t *p, uint32_t v)
    uint32_t fh_exchange32_relaxed(uint32_t *p, uint32_t v)
    void *fh_load_ptr_acquire(void **p)
    void fh_store_ptr_release(void **p, void *v)
    void fh_spin_lock(int64_t *lock)
    void fh_spin_unlock(int64_t *lock)
    void fh_pid_init()
    int64_t fh_monotonic_ns()
