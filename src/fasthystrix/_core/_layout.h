/* The C structs of a circuit's state, private or in a shared circuit file.
 *
 * A private circuit embeds them in its Python objects; a shared one points them into the
 * mapping of its file (_shared.py's layout: each struct is a region there, with the size
 * checked below and in tests/test_shared_layout.py). Every word is an int64 accessed through
 * _atomic.h, in both cases: a process sharing the file is just one more thread.
 */
#ifndef FASTHYSTRIX_LAYOUT_H
#define FASTHYSTRIX_LAYOUT_H

#include <stdint.h>

/* The settings the call path reads (LIMITS region, 256 bytes; _shared.LIMIT_* indices). */
typedef struct {
    int64_t timeout_ns;
    int64_t sleep_window_ns;
    int64_t max_concurrent;
    int64_t volume_threshold;
    int64_t error_threshold;
    int64_t semaphore;
    int64_t version;        /* bumped by every settings write */
    /* Booleans stored negated, so that a zeroed word is the default (enabled, counted). */
    int64_t breaker_disabled;           /* circuit_breaker_enabled=False */
    int64_t rejections_not_errors;      /* rejections_count_as_errors=False */
    int64_t sleep_extra_ppm;            /* (sleep_window_multiplier - 1) in millionths */
    int64_t max_sleep_ns;               /* max_sleep_window (0: none) */
    int64_t sleep_jitter_ppm;           /* sleep_window_jitter in millionths */
    int64_t half_open_calls;            /* half_open_max_calls (0 reads as 1) */
    int64_t half_open_wait_ns;          /* half_open_max_wait (0: no bound) */
    int64_t slow_us;                    /* slow_call_duration in us (0: off) */
    int64_t slow_rate;                  /* slow_call_rate_threshold (1..100) */
    int64_t window_bucket_ns;           /* rolling_window / rolling_buckets in ns (0: the default, 1 s) */
    int64_t window_buckets;             /* rolling_buckets (0: the default, 10) */
    int64_t reserved[14];
} fh_limits;

/* The state word and what changes with it (STATE region, one cache line). */
typedef struct {
    int64_t state_word;
    int64_t opened_ns;      /* when it opened, then when its last trial started */
    int64_t episode;        /* open episodes so far: a trial belongs to one */
    int64_t lock;           /* the circuit's spinlock (holder's pid) */
    int64_t trial_slot;     /* process slot of the last trial (shared circuits) */
    int64_t reopens;        /* failed trials since the circuit opened (backoff) */
    int64_t sleep_raw_ns;   /* this episode's wait before jitter (0: the sleep window as set now) */
    int64_t sleep_ns;       /* this episode's wait before a trial (0: the sleep window as set now) */
} fh_state;

/* Tickets in use (TICKETS region, a cache line of its own: every call writes it twice). */
typedef struct {
    int64_t in_use;
    /* A half-open phase's trials (several trials only): admitted, finished, failed, 21 bits
     * each; 0 outside a phase. Written only under the circuit's lock, in half-open. */
    int64_t probes;
    int64_t reserved[6];
} fh_tickets;

#define FH_COUNTER_BUCKETS 10
#define FH_BUCKET_WIDTH 13  /* events 0..8, executed, max active, bad requests, slow calls */
#define FH_LATENCY_SLOTS 4

/* The rolling window's counters and latency statistics (WINDOW region, 1440 bytes). */
typedef struct {
    int64_t buckets[FH_COUNTER_BUCKETS][FH_BUCKET_WIDTH];
    int64_t requests;
    int64_t errors;
    int64_t second;
    int64_t lock;
    int64_t stats[FH_LATENCY_SLOTS][2][3];
    int64_t stamp[FH_LATENCY_SLOTS];
    /* What expired buckets and reused latency slots held, so that window plus retired is
     * every count since the circuit was created: the 9 events, then run count, run sum (us),
     * total count, total sum (us), bad requests, slow calls. */
    int64_t retired[16];
    int64_t rejections;     /* running total of the window's rejections (health may leave them out) */
    int64_t slow;           /* running total of the window's slow calls (slow_call_duration) */
} fh_window;

#define FH_MAX_BUCKETS 80  /* _config.MAX_ROLLING_BUCKETS */

/* A rolling window's geometry and its buckets (rows of FH_BUCKET_WIDTH words after the header).
 * A private window other than the default allocates one per geometry configured: never changed
 * once published, linked through prev. A shared circuit's file holds one (GEOM region, room for
 * FH_MAX_BUCKETS rows), used for every geometry, the default included: its width and count
 * change in place under the window's lock (readers load them atomically; every row is counted). */
typedef struct fh_geometry {
    int64_t width_ns;
    int64_t n;
    union {
        struct fh_geometry *prev;   /* private geometries only */
        int64_t link;               /* (the word's size in a file on every platform) */
    };
    int64_t reserved;
    int64_t buckets[];
} fh_geometry;

/* One process' slot in a shared file (PROCS region). */
typedef struct {
    int64_t pid;
    int64_t start;
    int64_t tickets;        /* tickets this process holds */
    int64_t probe_phase;    /* the half-open phase whose trials it runs (their verdict) */
    int64_t probes;         /* how many of them it runs now (the reaper counts a dead one's as failed) */
    int64_t reserved[3];
} fh_proc;

#define FH_LAYOUT_CHECK(name, cond) typedef char fh_layout_##name[(cond) ? 1 : -1]
FH_LAYOUT_CHECK(limits, sizeof(fh_limits) == 256);
FH_LAYOUT_CHECK(state, sizeof(fh_state) == 64);
FH_LAYOUT_CHECK(tickets, sizeof(fh_tickets) == 64);
FH_LAYOUT_CHECK(window, sizeof(fh_window) == 1440);
FH_LAYOUT_CHECK(proc, sizeof(fh_proc) == 64);
FH_LAYOUT_CHECK(geometry, sizeof(fh_geometry) == 32);

#endif /* FASTHYSTRIX_LAYOUT_H */
