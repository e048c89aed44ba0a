# cython: language_level=3, boundscheck=True, wraparound=False, freethreading_compatible=True
"""The deadlines of the ``do_async`` calls in flight on one event loop (compiled twin of ``_deadlines_py``).

The same heap, timer and rules as the twin, whose docstring tells them; here an entry
is a small object with a C ``double`` and a C counter, and the heap compares them in
C. That is most of what a deadline cost ``do_async`` in Python: the tuple-like
comparisons of ``heapq`` and the entry list. One loop's thread touches its
``Deadlines`` (the event loop calls ``_fire``, its tasks ``add`` and ``done``), so
nothing here needs a lock; ``boundscheck`` stays on: the heap is indexed by hand.
"""

cimport cython
from libc.stdint cimport uint64_t

__all__ = ["DONE", "FIRED", "MAX_TIMER_DELAY", "PENDING", "SWEEP_SLACK", "Deadlines"]

# C constants on the hot path (a module global would be a dictionary lookup and a Python
# addition); the Python names mirror the twin's (tests/test_deadlines.py compares them).
cdef enum:
    _PENDING = 0
    _DONE = 1
    _FIRED = 2
    _SWEEP_SLACK = 64
cdef double _MAX_TIMER_DELAY = 0.1

PENDING, DONE, FIRED = _PENDING, _DONE, _FIRED
MAX_TIMER_DELAY = _MAX_TIMER_DELAY
SWEEP_SLACK = _SWEEP_SLACK


@cython.freelist(16)  # a call's entry is short-lived: reuse the memory of the last ones
cdef class _Entry:
    """One call's deadline: loop time ``when``, order of arrival ``seq``, the task to cancel."""

    cdef double when
    cdef uint64_t seq
    cdef object task
    cdef int state

    def __repr__(self):
        return f"<deadline {self.when!r} #{self.seq} state={self.state}>"


cdef inline bint _before(_Entry a, _Entry b):
    # heapq's order on [when, seq, ...]: seq is unique, so no two entries tie.
    return a.when < b.when or (a.when == b.when and a.seq < b.seq)


cdef void _sift_down(list heap, Py_ssize_t start, Py_ssize_t pos) except *:
    # heapq._siftdown: move heap[pos] up towards start while it is before its parent.
    cdef _Entry item = <_Entry?>heap[pos]
    cdef _Entry parent
    cdef Py_ssize_t parent_pos
    while pos > start:
        parent_pos = (pos - 1) >> 1
        parent = <_Entry?>heap[parent_pos]
        if _before(item, parent):
            heap[pos] = parent
            pos = parent_pos
            continue
        break
    heap[pos] = item


cdef void _sift_up(list heap, Py_ssize_t pos) except *:
    # heapq._siftup: move the smaller child up until a leaf, then sift the item down into place.
    cdef Py_ssize_t end = len(heap)
    cdef Py_ssize_t start = pos
    cdef Py_ssize_t child = 2 * pos + 1
    cdef Py_ssize_t right
    cdef _Entry item = <_Entry?>heap[pos]
    while child < end:
        right = child + 1
        if right < end and not _before(<_Entry?>heap[child], <_Entry?>heap[right]):
            child = right
        heap[pos] = heap[child]
        pos = child
        child = 2 * pos + 1
    heap[pos] = item
    _sift_down(heap, start, pos)


cdef _Entry _pop(list heap):
    # heapq.heappop
    cdef _Entry last = <_Entry?>heap.pop()
    cdef _Entry first
    if not heap:
        return last
    first = <_Entry?>heap[0]
    heap[0] = last
    _sift_up(heap, 0)
    return first


cdef class Deadlines:
    """One timer per event loop for every ``do_async`` in flight on it."""

    cdef readonly object loop
    cdef readonly list heap
    cdef readonly object handle
    cdef readonly double armed_at
    cdef readonly Py_ssize_t live
    cdef readonly uint64_t seq
    cdef object __weakref__

    def __init__(self, loop):
        self.loop = loop
        self.heap = []
        self.handle = None
        self.armed_at = 0.0
        self.live = 0
        self.seq = 0

    def add(self, double when, task):
        """Cancel ``task`` at loop time ``when`` unless :meth:`done` comes first; the entry for :meth:`done`."""
        cdef _Entry entry = _Entry.__new__(_Entry)
        cdef list heap = self.heap
        cdef Py_ssize_t i
        self.seq += 1
        entry.when = when
        entry.seq = self.seq
        entry.task = task
        entry.state = _PENDING
        if len(heap) > 2 * self.live + _SWEEP_SLACK:
            # Finished calls wait at their place in the heap; sweep them out whenever they
            # outnumber the live ones (amortised O(1) per call).
            heap[:] = [e for e in heap if (<_Entry?>e).state == _PENDING]
            for i in reversed(range(len(heap) // 2)):
                _sift_up(heap, i)
        heap.append(entry)
        _sift_down(heap, 0, len(heap) - 1)
        self.live += 1
        if self.handle is None or when < self.armed_at:
            try:
                self._arm(when)
            except BaseException:
                # As in the twin: the call ends on this error without its entry.
                self.done(entry)
                raise
        return entry

    def done(self, _Entry entry not None):
        """The call of ``entry`` has ended; whether its deadline fired first."""
        cdef bint fired = entry.state == _FIRED
        entry.state = _DONE
        self.live -= 1
        if self.live == 0:
            # Keep the timer: cancelling and re-arming it around every call is what costs.
            self.heap.clear()
        return fired

    cdef int _arm(self, double when) except -1:
        when = min(when, <double>self.loop.time() + _MAX_TIMER_DELAY)
        handle = self.loop.call_at(when, self._fire)
        # The old timer goes once the new one is armed: should arming fail, it still serves.
        if self.handle is not None:
            self.handle.cancel()
        self.handle = handle
        self.armed_at = when
        return 0

    def _fire(self):
        cdef list heap = self.heap
        cdef _Entry entry
        cdef double now
        self.handle = None
        now = self.loop.time()
        while heap and ((<_Entry?>heap[0]).when <= now or (<_Entry?>heap[0]).state != _PENDING):
            entry = _pop(heap)
            if entry.state == _PENDING:
                entry.state = _FIRED
                entry.task.cancel()
        if self.live:
            self._arm((<_Entry?>heap[0]).when if heap else now + _MAX_TIMER_DELAY)
