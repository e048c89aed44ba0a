/* A cheaper clock for the semaphore-mode fast path.
 *
 * Two clock_gettime(CLOCK_MONOTONIC) calls were a third of do()'s cost (about
 * 25 ns each on x86-64 Linux: the vDSO fences rdtsc and converts its value).
 * The fast path needs two different things from a clock:
 *
 * - "now", to pick the one-second bucket, read the window's health and compare
 *   with the sleep window: CLOCK_MONOTONIC_COARSE (about 6 ns), the kernel's
 *   CLOCK_MONOTONIC as of its last tick, so at most one tick (1 to 10 ms)
 *   behind it and never ahead. Timestamps the state machine stores (when a
 *   circuit opened, when its last trial started) are always read precisely.
 * - the time run() took, for latency samples and the timeout check: the CPU's
 *   time-stamp counter (rdtsc, about 10 ns, no fence: a sample may be off by
 *   a few cycles, not by microseconds), scaled to nanoseconds.
 *
 * The TSC is used only where the kernel itself drives CLOCK_MONOTONIC with it
 * (current clocksource "tsc", which the kernel picks only for an invariant TSC
 * synchronised across CPUs; the caller checks that at import), and only once
 * its rate has been calibrated against CLOCK_MONOTONIC over at least
 * FH_CALIBRATION_NS. Until then, and on every other system, the fast path
 * reads CLOCK_MONOTONIC at both ends as before.
 */
#ifndef FASTHYSTRIX_FASTCLOCK_H
#define FASTHYSTRIX_FASTCLOCK_H

#include <stdint.h>
#include <string.h>
#include "_atomic.h"

#define FH_CALIBRATION_NS 200000000LL

#if defined(__linux__) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <time.h>
#include <x86intrin.h>
#define FH_HAVE_TSC 1
static inline int64_t fh_ticks(void) { return (int64_t)__rdtsc(); }
static inline int64_t fh_coarse_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
#else
#define FH_HAVE_TSC 0
static inline int64_t fh_ticks(void) { return 0; }
static inline int64_t fh_coarse_ns(void) { return fh_monotonic_ns(); }
#endif

/* Set once at import, then read-only: whether the TSC may be used at all. */
static int fh_tsc_allowed = 0;
/* The calibration's starting point (written before fh_tsc_allowed is set). */
static int64_t fh_tsc_origin_ticks = 0, fh_tsc_origin_ns = 0;
/* Nanoseconds per tick as the bits of a double; 0 until calibrated (or when disabled). */
static int64_t fh_tsc_scale_bits = 0;

/* Allow the TSC (if `allowed` and this build can read it) and start calibrating.
 * Allowing it while allowed keeps the calibration; forbidding it drops it. */
static void fh_fastclock_init(int allowed) {
    if (allowed && fh_tsc_allowed) return;
    fh_store_relaxed(&fh_tsc_scale_bits, 0);
    fh_tsc_allowed = 0;
    if (!allowed || !FH_HAVE_TSC || !FH_HAVE_MONOTONIC_NS) return;
    fh_tsc_origin_ns = fh_monotonic_ns();
    fh_tsc_origin_ticks = fh_ticks();
    fh_tsc_allowed = 1;
}

/* Whether the TSC may be used (it is then used once calibrated). */
static inline int fh_fastclock_allowed(void) { return fh_tsc_allowed; }

/* The scale (bits), or 0 when the fast path must read CLOCK_MONOTONIC instead. */
static inline int64_t fh_fastclock_scale(void) { return fh_load_relaxed(&fh_tsc_scale_bits); }

/* Called by the slow path with CLOCK_MONOTONIC's `now`: calibrate once enough time has passed.
 * Racing callers compute nearly the same value; whichever store lands last is kept. */
static void fh_fastclock_calibrate(int64_t now_ns) {
    int64_t ticks, ns;
    double scale;
    if (!fh_tsc_allowed || now_ns - fh_tsc_origin_ns < FH_CALIBRATION_NS || fh_fastclock_scale() != 0) return;
    ticks = fh_ticks();
    ns = fh_monotonic_ns();
    if (ticks <= fh_tsc_origin_ticks) return;  /* a TSC that went backwards: never use it */
    scale = (double)(ns - fh_tsc_origin_ns) / (double)(ticks - fh_tsc_origin_ticks);
    /* Between 0.01 and 100 ns per tick (100 GHz to 10 MHz), or the reading is nonsense. */
    if (!(scale > 0.01 && scale < 100.0)) return;
    {
        int64_t bits;
        memcpy(&bits, &scale, sizeof bits);
        fh_store_relaxed(&fh_tsc_scale_bits, bits);
    }
}

/* Ticks to nanoseconds with a scale from fh_fastclock_scale() (never negative). */
static inline int64_t fh_ticks_to_ns(int64_t ticks, int64_t scale_bits) {
    double scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return ticks > 0 ? (int64_t)((double)ticks * scale) : 0;
}

#endif /* FASTHYSTRIX_FASTCLOCK_H */
