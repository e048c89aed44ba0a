"""The process-wide worker threads of thread isolation, and the one deadline timer ``go()`` needs.

Every thread-isolated command runs on one pool, ``workers``, whatever its name (each
circuit holds a ``CommandWorkers`` view of it): a command's concurrency is bounded by
its own tickets, and the threads of the whole process by the pool's maximum
(``set_max_threads``). Threads are created on
demand, reused while busy, and exit after ``IDLE_TIMEOUT`` seconds without work,
so an idle process holds none. A task that finds every thread busy at the maximum,
or that the OS will not give a thread, is refused at once (``NoWorkerThread``),
never queued: a run that itself waits for a nested command cannot deadlock the pool.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import _impl
from .._core import _clock
from .._core._config import _count
from .._core._errors import MaxConcurrencyError, safe_repr
from .._core._log import logger

__all__ = [
    "DEFAULT_MAX_THREADS",
    "IDLE_TIMEOUT",
    "CommandWorkers",
    "DeadlineTimer",
    "NoWorkerThread",
    "WorkerPool",
    "get_max_threads",
    "set_max_threads",
    "timer",
    "workers",
]

#: Seconds a worker thread waits for its next task before it exits.
IDLE_TIMEOUT = 30.0
#: The default maximum number of worker threads of thread isolation, for the whole process.
DEFAULT_MAX_THREADS = 1000
_MIN_COMPACT = 256  # heap size below which finished entries are left for the timer thread


class NoWorkerThread(RuntimeError):
    """No thread can take the task: the pool is at its maximum and every worker is busy, or the
    OS refused to start a thread. Nothing of the task ran."""


def no_worker_error() -> MaxConcurrencyError:
    """The error a command refused for want of a worker thread ends with (a rejection).

    Made where ``NoWorkerThread`` is handled: a traceback shows it alone, not that exception too.
    """
    error = MaxConcurrencyError("max concurrency: no worker thread free")
    error.__suppress_context__ = True
    return error


class _Worker:
    __slots__ = ("generation", "task", "thread", "wake")

    def __init__(self, wake: Any, generation: int) -> None:
        self.task: Callable[[], object] | None = None
        self.wake = wake
        self.thread: threading.Thread | None = None
        # Workers of an earlier generation (or -1: of a shut-down pool) exit once their task is done.
        self.generation = generation


class WorkerPool:
    """Threads that run submitted callables; idle threads are reused, then retire.

    At most ``max_threads`` threads at once (``None``: no bound): a task that finds
    them all busy, or whose new thread the OS refuses, raises ``NoWorkerThread``.

    Each kind of wait has its spin budget: ``result_waits`` for threads waiting for a
    task's outcome (``completion()`` makes their signals), ``task_waits`` for idle
    workers waiting for their next task, ``nudge_waits`` for posted workers waiting
    for their nudge. The compiled implementation spins briefly before sleeping (or
    starting, for a posted worker) only while recent waits of that kind ended within
    the spin.
    """

    def __init__(self, name: str, idle_timeout: float = IDLE_TIMEOUT, max_threads: int | None = None) -> None:
        self.name = name
        self.idle_timeout = idle_timeout
        self.max_threads = max_threads
        # The implementation live when the pool was made, for all its signals: never a mix.
        impl = _impl.current()
        self._completion = impl.Completion
        self._budget = impl.SpinBudget
        self.result_waits = impl.SpinBudget()
        self.task_waits = impl.SpinBudget()
        self.nudge_waits = impl.SpinBudget()
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._closed = False
        self._generation = 0
        self._counter = itertools.count(1)

    def completion(self) -> Any:
        """A new signal for a thread that waits for a task's outcome (spin budget ``result_waits``)."""
        return self._completion(self.result_waits)

    def new_budget(self) -> Any:
        """A new spin budget of the pool's implementation."""
        return self._budget()

    def for_command(self) -> CommandWorkers:
        """The pool as one command uses it (``circuit._workers``): with its own ``result_waits``."""
        return CommandWorkers(self)

    def submit(self, task: Callable[[], object], defer: bool = False, post: bool = False) -> Any:
        """Run ``task()`` on an idle worker, or on a new thread if none is idle.

        Raises ``NoWorkerThread`` (and ``task`` never runs) when no worker is idle
        and none can start: ``max_threads`` are alive, or the OS refused a thread.

        ``task`` may return a ``Completion``: the worker sets it once it has let
        go of the GIL. With ``defer``, an idle worker is not woken here: its
        ``Completion`` is returned for the caller to pass as ``kick`` to its own
        wait (``None`` if the task already started); the caller must wait. With
        ``post``, an idle worker is posted: it starts by itself within a short
        grace period, or as soon as the returned ``Completion`` is nudged (pass it
        as ``nudge`` to a wait), for callers that may never wait.
        """
        with self._lock:
            # A shut-down pool still serves commands that were in flight (their fallbacks):
            # each gets a thread that exits after its task, so nothing lingers.
            if self._idle and not self._closed:
                worker = self._idle.pop()
                worker.task = task
                if defer:
                    return worker.wake
                if post:
                    worker.wake.post()
                    return worker.wake
                worker.wake.set()
                return None
            limit = self.max_threads
            if limit is not None and len(self._workers) >= limit:
                raise NoWorkerThread(f"all {limit} worker threads are busy")
            # The compiled Completion spins briefly before sleeping while tasks come soon after
            # a worker went idle, so a busy worker picks up its next one without a kernel round trip.
            worker = _Worker(
                self._completion(self.task_waits, self.nudge_waits), -1 if self._closed else self._generation
            )
            worker.task = task
            # Counted before its thread starts, so that racing submits never exceed the maximum.
            self._workers.add(worker)
            number = next(self._counter)
        thread = threading.Thread(
            target=self._loop, args=(worker,), name=f"fasthystrix-{self.name}-{number}", daemon=True
        )
        worker.thread = thread
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": the OS's limit, not ours
            with self._lock:
                self._workers.discard(worker)
            worker.task = None
            raise NoWorkerThread(f"no new thread: {exc}") from None
        return None

    def _loop(self, worker: _Worker) -> None:
        kick: Any = None
        try:
            while True:
                task, worker.task = worker.task, None
                if task is None:
                    return
                kick = None  # not the last task's, should running this one fail past its log
                kick = self._run(task)
                del task
                with self._lock:
                    # Retired (flush, a lower maximum) or the pool shut down: exit, not idle.
                    closed = worker.generation != self._generation
                    if not closed:
                        # Only the first idle worker may spin for its next task (if task_waits
                        # advises it): submit() takes the most recently idled worker, and several
                        # spinning threads would starve the ones doing work on a small machine.
                        # The others sleep at once and leave task_waits alone: their waits are
                        # longer by design and say nothing about the first one's.
                        spin = not self._idle
                        self._idle.append(worker)
                if closed:
                    if kick is not None:
                        kick.set()
                    return
                if not worker.wake.wait(self.idle_timeout, kick, spin):
                    with self._lock:
                        if worker in self._idle:
                            self._idle.remove(worker)
                            return
                    # submit() popped this worker just as the wait timed out: its task is coming.
                    worker.wake.wait()
                worker.wake.clear()
        except BaseException:
            # The pool's own bookkeeping failed (out of memory), not a task: this worker ends,
            # and nothing is left waiting on it.
            self._worker_failed(worker, kick)
        finally:
            with self._lock:
                self._workers.discard(worker)

    def _worker_failed(self, worker: _Worker, kick: Any) -> None:
        if kick is not None:
            kick.set()  # the caller of its last task, woken now rather than at its deadline
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
            task, worker.task = worker.task, None
        try:
            logger.error("fasthystrix worker of pool %s ended on an error of its own", self.name, exc_info=True)
        except BaseException:  # the log is best effort: out of memory may fail it too
            pass
        if task is not None:
            # Handed to it as it failed: run here before the thread ends, not lost (its caller's
            # kick then sets this worker's signal, which nobody waits on: harmless).
            kick = self._run(task)
            if kick is not None:
                kick.set()

    def _run(self, task: Callable[[], Any]) -> Any:
        """Run one task: what wakes its caller (its kick), or ``None`` if it raised."""
        try:
            return task()
        except BaseException:  # tasks handle their own errors; this is a last resort
            logger.exception("fasthystrix worker task failed in pool %s", self.name)
            return None

    def _after_fork_in_child(self) -> None:
        """In a forked child, before any other thread runs: forget the parent's threads.

        Only the forking thread exists in the child. An idle worker left in the list would
        take a task that no thread runs, and the lock may have been held by a thread that is
        gone: both are replaced, and the next task starts a new thread. If the forking thread
        is one of this pool's workers (its run forked), it stays one.
        """
        current = threading.current_thread()
        self._lock = threading.Lock()
        self._idle = []
        self._workers = {worker for worker in self._workers if worker.thread is current}

    def threads(self) -> list[threading.Thread]:
        """The live threads of this pool."""
        with self._lock:
            return [w.thread for w in self._workers if w.thread is not None]

    def retire(self, timeout: float | None = 1.0) -> None:
        """Stop idle workers now (waiting up to ``timeout`` for them) and busy ones after their task.

        Unlike :meth:`shutdown`, the pool goes on serving: a later task starts a new thread.
        """
        with self._lock:
            self._generation += 1
            threads = self._stop_idle_locked(len(self._idle))
        self._join(threads, timeout)

    def set_max_threads(self, max_threads: int | None) -> None:
        """Change the maximum. Below the threads alive, idle threads beyond it exit now, and
        busy ones once their task is done (the pool then starts threads as tasks come)."""
        with self._lock:
            self.max_threads = max_threads
            if max_threads is not None and len(self._workers) > max_threads:
                self._generation += 1
                self._stop_idle_locked(len(self._workers) - max_threads)

    def _stop_idle_locked(self, count: int) -> list[threading.Thread]:
        # The longest idle first: submit() takes the most recently idled worker.
        stopped, self._idle = self._idle[: max(count, 0)], self._idle[max(count, 0) :]
        for worker in stopped:
            worker.task = None
            worker.wake.set()
        return [w.thread for w in stopped if w.thread is not None]

    @staticmethod
    def _join(threads: list[threading.Thread], timeout: float | None) -> None:
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join(timeout)

    def shutdown(self, timeout: float | None = 1.0) -> None:
        """Stop idle workers now (waiting up to ``timeout`` for them) and busy ones after their task.

        Busy workers are not waited for: their run may take arbitrarily long, and
        they exit on their own as soon as it ends.
        """
        with self._lock:
            self._closed = True
            self._generation += 1
            threads = self._stop_idle_locked(len(self._idle))
        self._join(threads, timeout)


class CommandWorkers:
    """A command's side of a shared ``WorkerPool``: the pool's threads, the command's own
    ``result_waits`` budget (how long its runs take decides whether its callers spin, whatever
    the other commands' runs take)."""

    __slots__ = ("_completion", "pool", "result_waits", "submit")

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.result_waits = pool.new_budget()
        self._completion = pool._completion
        # The pool's own bound method: the per-call lookup costs what the pool's did.
        self.submit = pool.submit

    def completion(self) -> Any:
        """A new signal for a thread that waits for this command's outcome."""
        return self._completion(self.result_waits)


class DeadlineTimer:
    """One thread that calls callbacks at monotonic deadlines; it exits when it has none."""

    def __init__(self, idle_timeout: float = 1.0) -> None:
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._heap: list[tuple[int, int, Callable[[], object], Callable[[], bool]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop_when_empty = False
        self._compact_at = _MIN_COMPACT

    def schedule(self, at_ns: int, callback: Callable[[], object], pending: Callable[[], bool]) -> None:
        """Call ``callback()`` at ``at_ns`` unless ``pending()`` is false by then."""
        # The condition's lock itself: entering it directly skips Condition.__enter__'s frame.
        with self._lock:
            heap = self._heap
            if len(heap) >= self._compact_at:
                # Entries of finished commands wait for their deadline to be popped; at high call
                # rates they would pile up (rate x timeout). Drop them whenever the heap has
                # doubled since the last sweep: amortised O(1) per schedule.
                heap[:] = [entry for entry in heap if entry[3]()]
                heapq.heapify(heap)
                self._compact_at = max(2 * len(heap), _MIN_COMPACT)
            heapq.heappush(heap, (at_ns, next(self._seq), callback, pending))
            self._stop_when_empty = False
            if self._thread is None:
                self._start()
            elif self._heap[0][0] == at_ns:
                self._cond.notify()

    def _start(self) -> None:
        # With the lock held (or in a forked child, before any other thread runs).
        self._thread = threading.Thread(target=self._loop, name="fasthystrix-deadlines", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while True:
                    # Entries whose command already finished are dropped without waiting for them.
                    while self._heap and not self._heap[0][3]():
                        heapq.heappop(self._heap)
                    if not self._heap:
                        if not self._stop_when_empty:
                            cond.wait(self.idle_timeout)
                        if not self._heap:
                            self._thread = None
                            return
                        continue
                    at_ns = self._heap[0][0]
                    now = _clock.now_ns()
                    if at_ns <= now:
                        callback = heapq.heappop(self._heap)[2]
                        break
                    cond.wait(min((at_ns - now) / 1e9, self.idle_timeout))
            try:
                callback()
            except BaseException:
                logger.exception("fasthystrix deadline callback failed")
            del callback

    def discard_finished(self) -> None:
        """Drop entries of finished commands, and stop the thread if nothing is left."""
        with self._cond:
            self._heap = [entry for entry in self._heap if entry[3]()]
            heapq.heapify(self._heap)
            thread = self._thread
            empty = not self._heap
            if empty:
                self._stop_when_empty = True
            self._cond.notify()
        if thread is None or not empty or thread is threading.current_thread():
            return
        # Wait for the thread to stop, but not for a thread that has work again: a command that
        # started meanwhile (flush() may run inside another command's run) keeps it busy, and
        # waiting for it would only delay that run.
        until = time.monotonic() + self.idle_timeout + 1.0
        while thread.is_alive() and time.monotonic() < until:
            with self._cond:
                if self._heap:
                    return
            thread.join(0.01)

    def pending(self) -> int:
        """How many deadlines are scheduled (including finished ones not yet dropped)."""
        with self._cond:
            return len(self._heap)

    def callbacks(self) -> list[Callable[[], object]]:
        """The callbacks still scheduled (including those of finished commands)."""
        with self._cond:
            return [entry[2] for entry in self._heap]

    def resume(self) -> None:
        """Start the thread if deadlines are scheduled and no thread serves them."""
        with self._lock:
            if self._heap and self._thread is None:
                self._stop_when_empty = False
                self._start()

    def _after_fork_in_child(self) -> None:
        """In a forked child, before any other thread runs: a new lock and condition, no thread.

        The parent's timer thread does not exist in the child, and the condition's lock may have
        been held by a thread that is gone (the timer thread itself, between two waits). The
        deadlines stay: :meth:`resume` gives them a thread once the child is ready for their
        callbacks, so that a ``go()`` started before the fork still resolves in the child at its
        deadline (its run's worker is gone).
        """
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._thread = None


timer = DeadlineTimer()

#: The worker threads of every thread-isolated command of the process.
workers = WorkerPool("worker", max_threads=DEFAULT_MAX_THREADS)


def set_max_threads(max_threads: int | None = None) -> int:
    """Set how many worker threads thread isolation may use at once, for the whole process.

    A thread-isolated command that finds them all busy is rejected at once, as when its
    own tickets are all taken: its fallback gets a ``MaxConcurrencyError`` and it counts
    as ``rejected``. ``None`` restores the default (``DEFAULT_MAX_THREADS``). Lowering it
    stops idle threads beyond the new maximum now and busy ones when they are done.
    Returns the new maximum.
    """
    if max_threads is None:
        max_threads = DEFAULT_MAX_THREADS
    else:
        _count("max_threads", max_threads)
        if max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, got {safe_repr(max_threads)}")
    workers.set_max_threads(max_threads)
    return max_threads


def get_max_threads() -> int:
    """The maximum number of worker threads of thread isolation (see :func:`set_max_threads`)."""
    limit = workers.max_threads
    assert limit is not None
    return limit
