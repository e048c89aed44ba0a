/* C11 atomics behind small static inline wrappers, one memory order named in each.
 *
 * Counters are "relaxed": each is an independent tally read for statistics, and
 * nothing else is published through them. The circuit state word and the bucket
 * stamps use acquire/release, because a reader that sees a new stamp must also
 * see the zeroed bucket behind it. MSVC (no C11 atomics in C mode) gets volatile
 * accesses and Interlocked intrinsics, mapped per target below.
 */
#ifndef FASTHYSTRIX_ATOMIC_H
#define FASTHYSTRIX_ATOMIC_H

#include <stdint.h>

#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#include <windows.h>

/* MSVC's C mode has no <stdatomic.h> we can rely on. Relaxed operations are plain accesses
 * through volatile (no tearing for aligned 64-bit words on either target). Ordered ones:
 * on x64 every load is an acquire and every store a release in hardware, so a compiler
 * barrier is all that is needed; on ARM64 they are not, so acquire loads and release stores
 * go through interlocked operations, which are full barriers there (stronger than asked,
 * never weaker). Any other target has no reviewed mapping: refuse to build. */
#if defined(_M_X64)
static inline int64_t fh_load_acquire(int64_t *p) { int64_t v = *(volatile int64_t *)p; _ReadWriteBarrier(); return v; }
static inline void fh_store_release(int64_t *p, int64_t v) { _ReadWriteBarrier(); *(volatile int64_t *)p = v; _ReadWriteBarrier(); }
static inline void *fh_load_ptr_acquire(void **p) { void *v = *(void *volatile *)p; _ReadWriteBarrier(); return v; }
static inline void fh_store_ptr_release(void **p, void *v) { _ReadWriteBarrier(); *(void *volatile *)p = v; _ReadWriteBarrier(); }
#elif defined(_M_ARM64)
static inline int64_t fh_load_acquire(int64_t *p) { return _InterlockedOr64((volatile long long *)p, 0); }
static inline void fh_store_release(int64_t *p, int64_t v) { (void)_InterlockedExchange64((volatile long long *)p, v); }
static inline void *fh_load_ptr_acquire(void **p) { return (void *)_InterlockedOr64((volatile long long *)p, 0); }
static inline void fh_store_ptr_release(void **p, void *v) { (void)_InterlockedExchange64((volatile long long *)p, (long long)v); }
#else
#error "fasthystrix: no reviewed atomics for this MSVC target (x64 and ARM64 only); build with clang-cl, or install the pure implementation (FASTHYSTRIX_NO_EXTENSIONS=1)"
#endif
static inline int64_t fh_load_relaxed(int64_t *p) { return *(volatile int64_t *)p; }
static inline void fh_store_relaxed(int64_t *p, int64_t v) { *(volatile int64_t *)p = v; }
static inline int64_t fh_add_relaxed(int64_t *p, int64_t v) { return _InterlockedExchangeAdd64((volatile long long *)p, v); }
static inline int64_t fh_add_acq_rel(int64_t *p, int64_t v) { return _InterlockedExchangeAdd64((volatile long long *)p, v); }
static inline int64_t fh_exchange_acq_rel(int64_t *p, int64_t v) { return _InterlockedExchange64((volatile long long *)p, v); }
static inline int fh_cas_acq_rel(int64_t *p, int64_t *expected, int64_t desired) {
    int64_t seen = _InterlockedCompareExchange64((volatile long long *)p, desired, *expected);
    if (seen == *expected) return 1;
    *expected = seen;
    return 0;
}
static inline void fh_add32_relaxed(uint32_t *p, uint32_t v) { _InterlockedExchangeAdd((volatile long *)p, (long)v); }
static inline uint32_t fh_load32_relaxed(uint32_t *p) { return *(volatile uint32_t *)p; }
static inline void fh_store32_relaxed(uint32_t *p, uint32_t v) { *(volatile uint32_t *)p = v; }
static inline uint32_t fh_exchange32_relaxed(uint32_t *p, uint32_t v) { return (uint32_t)_InterlockedExchange((volatile long *)p, (long)v); }
static inline void fh_pause(void) { YieldProcessor(); }
static inline int __builtin_clzll(unsigned long long x) { unsigned long i; _BitScanReverse64(&i, x); return 63 - (int)i; }
static inline void fh_yield(void) { SwitchToThread(); }

#else
#include <stdatomic.h>
#include <sched.h>

#define FH_A(p) ((_Atomic int64_t *)(p))
static inline int64_t fh_load_relaxed(int64_t *p) { return atomic_load_explicit(FH_A(p), memory_order_relaxed); }
static inline int64_t fh_load_acquire(int64_t *p) { return atomic_load_explicit(FH_A(p), memory_order_acquire); }
static inline void fh_store_relaxed(int64_t *p, int64_t v) { atomic_store_explicit(FH_A(p), v, memory_order_relaxed); }
static inline void fh_store_release(int64_t *p, int64_t v) { atomic_store_explicit(FH_A(p), v, memory_order_release); }
static inline int64_t fh_add_relaxed(int64_t *p, int64_t v) { return atomic_fetch_add_explicit(FH_A(p), v, memory_order_relaxed); }
static inline int64_t fh_add_acq_rel(int64_t *p, int64_t v) { return atomic_fetch_add_explicit(FH_A(p), v, memory_order_acq_rel); }
static inline int64_t fh_exchange_acq_rel(int64_t *p, int64_t v) { return atomic_exchange_explicit(FH_A(p), v, memory_order_acq_rel); }
static inline int fh_cas_acq_rel(int64_t *p, int64_t *expected, int64_t desired) {
    return atomic_compare_exchange_strong_explicit(FH_A(p), expected, desired, memory_order_acq_rel, memory_order_acquire);
}
static inline void fh_add32_relaxed(uint32_t *p, uint32_t v) { atomic_fetch_add_explicit((_Atomic uint32_t *)p, v, memory_order_relaxed); }
static inline uint32_t fh_load32_relaxed(uint32_t *p) { return atomic_load_explicit((_Atomic uint32_t *)p, memory_order_relaxed); }
static inline void fh_store32_relaxed(uint32_t *p, uint32_t v) { atomic_store_explicit((_Atomic uint32_t *)p, v, memory_order_relaxed); }
static inline uint32_t fh_exchange32_relaxed(uint32_t *p, uint32_t v) { return atomic_exchange_explicit((_Atomic uint32_t *)p, v, memory_order_relaxed); }
static inline void *fh_load_ptr_acquire(void **p) { return atomic_load_explicit((void *_Atomic *)p, memory_order_acquire); }
static inline void fh_store_ptr_release(void **p, void *v) { atomic_store_explicit((void *_Atomic *)p, v, memory_order_release); }
#if defined(__x86_64__) || defined(__i386__)
static inline void fh_pause(void) { __builtin_ia32_pause(); }
#elif defined(__aarch64__)
static inline void fh_pause(void) { __asm__ __volatile__("yield"); }
#else
static inline void fh_pause(void) { }
#endif
static inline void fh_yield(void) { sched_yield(); }
#endif

/* The monotonic clock, in nanoseconds, read the way CPython's time.monotonic_ns() reads it on
 * each platform, so that times taken in C and in Python code compare: CLOCK_MONOTONIC on Linux
 * and the BSDs, CLOCK_UPTIME_RAW (mach_absolute_time) on macOS, QueryPerformanceCounter on
 * Windows. Never the TSC directly: a kernel may stop trusting it at any time (it demotes an
 * unstable TSC on many VMs), and the clock_gettime vDSO follows such a change, a raw rdtsc does not. */
#if defined(_WIN32)
static int64_t fh_qpc_frequency = 0;
static inline int64_t fh_monotonic_ns(void) {
    LARGE_INTEGER now;
    int64_t f = fh_load_relaxed(&fh_qpc_frequency), t;
    if (f == 0) {
        LARGE_INTEGER freq;
        QueryPerformanceFrequency(&freq);  /* fixed at boot, never fails since Windows XP */
        f = (int64_t)freq.QuadPart;
        fh_store_relaxed(&fh_qpc_frequency, f);
    }
    QueryPerformanceCounter(&now);
    t = (int64_t)now.QuadPart;
    /* ticks * 1e9 / f without overflowing int64 for centuries of uptime. */
    return (t / f) * 1000000000 + ((t % f) * 1000000000) / f;
}
#elif defined(__APPLE__)
#include <time.h>
static inline int64_t fh_monotonic_ns(void) { return (int64_t)clock_gettime_nsec_np(CLOCK_UPTIME_RAW); }
#else
#include <time.h>
static inline int64_t fh_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
#endif

/* A spinlock for the rare multi-field transitions (bucket expiry, opening and
 * closing the circuit). Holders never call into Python, so a waiter only ever
 * waits for a few hundred instructions; it yields the CPU if it waits longer.
 *
 * The lock word holds the holder's pid, because a shared circuit's lock lives in a file
 * that several processes map: if a process is killed inside its few hundred instructions,
 * a waiter that has yielded for long finds its holder gone (kill(pid, 0) fails with ESRCH)
 * and takes the lock over instead of waiting forever. So does a waiter that finds a word no
 * process can hold (not a pid: a corrupt file), and one that has waited FH_LOCK_STEAL_NS for
 * a live holder: holders run a few hundred instructions, so only a holder stopped (SIGSTOP,
 * a debugger) inside them holds on that long, and a stopped worker must not stop the others.
 * fh_self_pid is per compilation unit: each module sets it at import (fh_pid_init) and
 * again in a forked child. */
#define FH_LOCK_STEAL_NS 1000000000
#if defined(_WIN32)
static int64_t fh_self_pid = 1;
static inline void fh_pid_init(void) { fh_self_pid = (int64_t)GetCurrentProcessId(); }
static inline int fh_holder_gone(int64_t holder) { return holder <= 0 || holder > 0xffffffffLL; }
#else
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>
static int64_t fh_self_pid = 1;
static inline void fh_pid_refresh(void) { fh_store_relaxed(&fh_self_pid, (int64_t)getpid()); }
static inline void fh_pid_init(void) {
    fh_pid_refresh();
    (void)pthread_atfork(NULL, NULL, fh_pid_refresh);
}
static inline int fh_holder_gone(int64_t holder) {
    if (holder <= 0 || holder > INT32_MAX) return 1;  /* no process has that pid: a corrupt word */
    return holder != fh_load_relaxed(&fh_self_pid) && kill((pid_t)holder, 0) == -1 && errno == ESRCH;
}
#endif

static inline void fh_spin_lock(int64_t *lock) {
    int spins = 0, yields = 0;
    int64_t me = fh_load_relaxed(&fh_self_pid), since = -1;
    for (;;) {
        int64_t expected = 0;
        if (fh_load_relaxed(lock) == 0 && fh_cas_acq_rel(lock, &expected, me)) return;
        if (++spins < 64) { fh_pause(); continue; }
        fh_yield();
        spins = 0;
        if (++yields >= 1024) {
            /* Held for a thousand yields: by a process that died holding it, a corrupt word,
             * or a stopped holder? */
            int64_t holder = fh_load_relaxed(lock), now = fh_monotonic_ns();
            yields = 0;
            if (since < 0) since = now;
            if (holder != 0 && (fh_holder_gone(holder) || now - since > FH_LOCK_STEAL_NS)
                    && fh_cas_acq_rel(lock, &holder, me))
                return;
        }
    }
}
static inline void fh_spin_unlock(int64_t *lock) { fh_store_release(lock, 0); }

#endif /* FASTHYSTRIX_ATOMIC_H */
