# cython: language_level=3
# Declarations of _layout.h: the structs of a circuit's state, embedded or in a shared file.
from libc.stdint cimport int64_t


cdef extern from "_layout.h" nogil:
    ctypedef struct fh_limits:
        int64_t timeout_ns
        int64_t sleep_window_ns
        int64_t max_concurrent
        int64_t volume_threshold
        int64_t error_threshold
        int64_t semaphore
        int64_t version
        int64_t breaker_disabled
        int64_t rejections_not_errors
        int64_t sleep_extra_ppm
        int64_t max_sleep_ns
        int64_t sleep_jitter_ppm
        int64_t half_open_calls
        int64_t half_open_wait_ns
        int64_t slow_us
        int64_t slow_rate
        int64_t window_bucket_ns
        int64_t window_buckets

    ctypedef struct fh_state:
        int64_t state_word
        int64_t opened_ns
        int64_t episode
        int64_t lock
        int64_t trial_slot
        int64_t reopens
        int64_t sleep_raw_ns
        int64_t sleep_ns

    ctypedef struct fh_tickets:
        int64_t in_use
        int64_t probes

    ctypedef struct fh_window:
        int64_t buckets[10][13]
        int64_t requests
        int64_t errors
        int64_t second
        int64_t lock
        int64_t stats[4][2][3]
        int64_t stamp[4]
        int64_t retired[16]
        int64_t rejections
        int64_t slow

    enum: FH_MAX_BUCKETS

    ctypedef struct fh_geometry:
        int64_t width_ns
        int64_t n
        fh_geometry *prev
        int64_t buckets[1]  # a flexible array member: n rows of 13 words

    ctypedef struct fh_proc:
        int64_t pid
        int64_t start
        int64_t tickets
        int64_t probe_phase
        int64_t probes
