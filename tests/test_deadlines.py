"""The per-loop deadline timer of ``do_async`` (``_deadlines`` and its pure twin ``_deadlines_py``).

The class is driven here by a loop whose clock the test sets (only ``time()`` and
``call_at()``, all ``Deadlines`` uses), so that each deadline's firing is exact;
``test_asyncio`` covers the same code under real event loops (timeouts, cancellation).
Both classes are tested in one process when the compiled one is built, and a property
test runs the same random operations on each against a model.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from fasthystrix import _impl
from fasthystrix._isolation import _deadlines_py

IMPLEMENTATIONS = [pytest.param(_deadlines_py.Deadlines, id="pure")]
if _impl.COMPILED is not None:
    from fasthystrix._isolation import _deadlines

    IMPLEMENTATIONS.append(pytest.param(_deadlines.Deadlines, id="compiled"))


class Handle:
    def __init__(self, loop: ClockLoop, when: float, callback: Any) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        loop.handles.append(self)

    def cancel(self) -> None:
        self.cancelled = True


class ClockLoop:
    """The two methods of an event loop that ``Deadlines`` calls, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.handles: list[Handle] = []
        self.failing: BaseException | None = None  # what call_at raises, if set (a closed loop, out of memory)

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> Handle:
        if self.failing is not None:
            raise self.failing
        return Handle(self, when, callback)

    def armed(self) -> list[Handle]:
        return [h for h in self.handles if not h.cancelled and h.callback is not None]

    def advance(self, to: float) -> None:
        """Move the clock to ``to``, running each timer that falls due on the way, in order."""
        while True:
            due = sorted((h for h in self.armed() if h.when <= to), key=lambda h: h.when)
            if not due:
                break
            handle = due[0]
            self.now = max(self.now, handle.when)
            callback, handle.callback = handle.callback, None  # a TimerHandle runs once
            callback()
        self.now = max(self.now, to)


class Task:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cancels = 0

    def cancel(self) -> bool:
        self.cancels += 1
        return True


@pytest.fixture(params=IMPLEMENTATIONS)
def deadlines_class(request: pytest.FixtureRequest) -> Any:
    return request.param


def test_constants_match_the_twin() -> None:
    if _impl.COMPILED is None:
        pytest.skip(_impl.WHY_PURE)
    for name in _deadlines_py.__all__:
        if name != "Deadlines":
            assert getattr(_deadlines, name) == getattr(_deadlines_py, name), name


def test_a_deadline_that_passes_cancels_its_task_once(deadlines_class: Any) -> None:
    loop = ClockLoop()
    deadlines = deadlines_class(loop)
    task = Task("a")
    entry = deadlines.add(100.05, task)
    loop.advance(100.049)
    assert task.cancels == 0
    loop.advance(100.05)
    assert task.cancels == 1
    loop.advance(200.0)
    assert task.cancels == 1
    assert deadlines.done(entry) is True  # the call learns its deadline fired first
    assert deadlines.live == 0


def test_a_call_done_in_time_is_never_cancelled(deadlines_class: Any) -> None:
    loop = ClockLoop()
    deadlines = deadlines_class(loop)
    task = Task("a")
    entry = deadlines.add(100.05, task)
    loop.advance(100.04)
    assert deadlines.done(entry) is False
    loop.advance(101.0)
    assert task.cancels == 0
    assert deadlines.heap == [] and deadlines.live == 0


def test_deadlines_fire_in_order_of_time_then_arrival(deadlines_class: Any) -> None:
    loop = ClockLoop()
    deadlines = deadlines_class(loop)
    fired: list[str] = []

    class Recording(Task):
        def cancel(self) -> bool:
            fired.append(self.name)
            return True

    whens = {"c": 100.03, "a": 100.01, "b1": 100.02, "b2": 100.02, "d": 100.5, "e": 100.04}
    for name, when in whens.items():
        deadlines.add(when, Recording(name))
    loop.advance(100.035)
    assert fired == ["a", "b1", "b2", "c"]  # b1 and b2 tie: the first added fires first
    loop.advance(101.0)
    assert fired == ["a", "b1", "b2", "c", "e", "d"]


def test_the_timer_never_sleeps_past_the_cap_and_stops_when_idle(deadlines_class: Any) -> None:
    loop = ClockLoop()
    deadlines = deadlines_class(loop)
    entry = deadlines.add(160.0, Task("far"))  # a minute away
    (handle,) = loop.armed()
    assert handle.when == pytest.approx(100.0 + _deadlines_py.MAX_TIMER_DELAY)
    loop.advance(100.25)  # the timer re-arms itself every 100 ms while the call is in flight
    assert deadlines.handle is not None
    deadlines.done(entry)
    loop.advance(101.0)
    assert deadlines.handle is None  # nothing in flight: not re-armed
    assert loop.armed() == []


def test_an_earlier_deadline_rearms_the_timer(deadlines_class: Any) -> None:
    loop = ClockLoop()
    deadlines = deadlines_class(loop)
    deadlines.add(100.08, Task("late"))
    early = Task("early")
    deadlines.add(100.01, early)
    assert [h.when for h in loop.armed()] == [pytest.approx(100.01)]
    loop.advance(100.01)
    assert early.cancels == 1


def test_a_timer_that_cannot_be_armed_leaves_nothing_pending(deadlines_class: Any) -> None:
    """``add`` raises when the loop cannot arm its timer; the call it was for ends on that error,
    so its entry must not stay pending (to cancel its task later, at whatever it then awaits), and
    the timer already armed for the other calls must stay armed."""
    loop = ClockLoop()
    deadlines = deadlines_class(loop)
    loop.failing = MemoryError()
    alone = Task("alone")
    with pytest.raises(MemoryError):
        deadlines.add(100.02, alone)  # the first call: no timer yet
    assert (deadlines.live, deadlines.handle) == (0, None)
    loop.failing = None
    first = Task("first")
    deadlines.add(100.05, first)
    loop.failing = RuntimeError("Event loop is closed")
    early = Task("early")
    with pytest.raises(RuntimeError):
        deadlines.add(100.01, early)  # earlier than the timer: re-arming it fails
    assert deadlines.live == 1
    loop.failing = None
    loop.advance(101.0)
    assert (alone.cancels, early.cancels) == (0, 0)  # their calls ended on the error
    assert first.cancels == 1  # its timer was still armed
    later = Task("later")
    deadlines.add(101.03, later)  # and the timer is armed again for the calls that follow
    loop.advance(101.03)
    assert later.cancels == 1


def test_finished_entries_are_swept_under_steady_load(deadlines_class: Any) -> None:
    # Calls that end before their deadline leave their entry in the heap; the heap stays
    # within twice the live calls plus the slack, however many calls go by.
    loop = ClockLoop()
    deadlines = deadlines_class(loop)
    live = [deadlines.add(200.0 + i, Task(str(i))) for i in range(10)]
    largest = 0
    for i in range(5000):
        deadlines.done(deadlines.add(150.0 - i * 1e-6, Task("short")))
        largest = max(largest, len(deadlines.heap))
    assert largest <= 2 * len(live) + _deadlines_py.SWEEP_SLACK + 1
    assert deadlines.live == 10
    loop.advance(300.0)
    assert all(deadlines.done(entry) for entry in live)


def test_a_loop_and_its_deadlines_are_collected(deadlines_class: Any) -> None:
    # The timer's handle refers back to the Deadlines (a cycle): the collector frees it.
    loop = ClockLoop()
    deadlines = deadlines_class(loop)
    deadlines.add(100.05, Task("a"))
    ref = weakref.ref(deadlines)
    del deadlines, loop
    gc.collect()
    assert ref() is None


def test_done_takes_only_an_entry_of_its_own_kind(deadlines_class: Any) -> None:
    deadlines = deadlines_class(ClockLoop())
    deadlines.add(100.05, Task("a"))
    if deadlines_class is _deadlines_py.Deadlines:
        pytest.skip("the pure twin's entries are lists: it trusts do_async, its one caller")
    with pytest.raises(TypeError):
        deadlines.done([100.05, 1, Task("a"), 0])
    assert deadlines.live == 1  # untouched


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(min_value=0, max_value=300)),  # deadline in ms from now
        st.tuples(st.just("done"), st.integers(min_value=0, max_value=1000)),  # which live call ends
        st.tuples(st.just("advance"), st.integers(min_value=0, max_value=200)),  # ms
    ),
    max_size=120,
)


def _run(deadlines_class: Any, operations: list[tuple[str, int]]) -> list[Any]:
    """The observable trace of ``operations``: what each ``done`` returns, and who is cancelled when."""
    loop = ClockLoop()
    deadlines = deadlines_class(loop)
    trace: list[Any] = []
    in_flight: list[tuple[Any, Task, float]] = []
    cancelled_seen: set[str] = set()
    for step, (op, arg) in enumerate(operations):
        if op == "add":
            task = Task(f"t{step}")
            when = loop.now + arg / 1000
            in_flight.append((deadlines.add(when, task), task, when))
        elif op == "done" and in_flight:
            entry, task, when = in_flight.pop(arg % len(in_flight))
            fired = deadlines.done(entry)
            # The model: a call learns its deadline fired exactly when its task was cancelled,
            # which happens only once its deadline has passed.
            assert fired == (task.cancels == 1)
            assert task.cancels <= 1
            if fired:
                assert loop.now >= when
            trace.append(("done", task.name, fired))
        elif op == "advance":
            loop.advance(loop.now + arg / 1000)
            # Every deadline passed by now has fired.
            assert all(task.cancels == 1 for _, task, when in in_flight if when <= loop.now)
        for _, task, when in in_flight:
            assert task.cancels <= 1
            if task.cancels and task.name not in cancelled_seen:
                cancelled_seen.add(task.name)
                assert when <= loop.now
                trace.append(("cancelled", task.name))
        assert deadlines.live == len(in_flight)
        assert len(deadlines.heap) <= 2 * deadlines.live + _deadlines_py.SWEEP_SLACK + 1
    # Whatever is left fires by its deadline, once.
    loop.advance(loop.now + 1.0)
    assert all(task.cancels == 1 for _, task, _ in in_flight)
    return trace


@settings(max_examples=300, deadline=None)
@given(OPERATIONS)
def test_random_operations_keep_the_model_and_both_twins_agree(operations: list[tuple[str, int]]) -> None:
    traces = [_run(param.values[0], operations) for param in IMPLEMENTATIONS]
    assert all(trace == traces[0] for trace in traces)
