"""Context: cancellation, deadlines and their inheritance; do_c/go_c honour the context (spec test 15)."""

from __future__ import annotations

import gc
import math
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

import fasthystrix
from conftest import FakeClock
from fasthystrix import Context, ContextCanceledError, ContextDeadlineExceededError
from fasthystrix._core._context import MAX_TIMEOUT_SECONDS
from support import WAIT, wait_until

# -- Context on its own ---------------------------------------------------------------------------


def test_background_is_never_done_and_cannot_be_cancelled() -> None:
    bg = Context.background()
    assert Context.background() is bg
    assert not bg.done()
    assert bg.err() is None
    assert bg.remaining() is None
    with pytest.raises(RuntimeError):
        bg.cancel()
    assert not bg.done()
    assert bg.err() is None


def test_background_children_cancel_on_their_own() -> None:
    bg = Context.background()
    child = bg.with_cancel()
    child.cancel()
    assert child.done()
    assert not bg.done()
    assert not bg.with_cancel().done()


def test_new_root_is_cancellable() -> None:
    ctx = Context()
    assert not ctx.done()
    assert ctx.err() is None
    assert ctx.remaining() is None
    ctx.cancel()
    assert ctx.done()
    err = ctx.err()
    assert isinstance(err, ContextCanceledError)
    assert str(err) == "context canceled"
    ctx.cancel()
    assert isinstance(ctx.err(), ContextCanceledError)


def test_err_is_a_fresh_instance() -> None:
    ctx = Context()
    ctx.cancel()
    assert ctx.err() is not ctx.err()


def test_child_cancelled_with_parent_including_grandchildren() -> None:
    root = Context()
    child = root.with_cancel()
    timed = root.with_timeout(60)
    grandchild = child.with_timeout(60).with_cancel()
    assert not any(c.done() for c in (child, timed, grandchild))
    root.cancel()
    for ctx in (child, timed, grandchild):
        assert ctx.done()
        assert isinstance(ctx.err(), ContextCanceledError)


def test_child_created_after_parent_cancelled_is_done() -> None:
    root = Context()
    middle = root.with_cancel()
    root.cancel()
    for late in (root.with_cancel(), root.with_timeout(60), middle.with_cancel(), middle.with_timeout(5).with_cancel()):
        assert late.done()
        assert isinstance(late.err(), ContextCanceledError)


def test_cancelling_child_leaves_parent_and_siblings() -> None:
    root = Context()
    child = root.with_cancel()
    sibling = root.with_cancel()
    grandchild = child.with_cancel()
    child.cancel()
    assert child.done() and grandchild.done()
    assert not root.done()
    assert not sibling.done()
    root.cancel()
    assert sibling.done()


def test_with_timeout_deadline_and_remaining(clock: FakeClock) -> None:
    ctx = Context().with_timeout(1.0)
    assert ctx.remaining() == pytest.approx(1.0)
    assert not ctx.done()
    clock.advance(0.4)
    assert ctx.remaining() == pytest.approx(0.6)
    assert ctx.err() is None
    clock.advance(0.6)
    assert ctx.done()
    assert ctx.remaining() == 0.0
    err = ctx.err()
    assert isinstance(err, ContextDeadlineExceededError)
    assert str(err) == "context deadline exceeded"
    clock.advance(5)
    assert ctx.remaining() == 0.0


def test_with_timeout_zero_is_done_at_once(clock: FakeClock) -> None:
    ctx = Context.background().with_timeout(0)
    assert ctx.done()
    assert isinstance(ctx.err(), ContextDeadlineExceededError)


def test_child_deadline_never_later_than_parent(clock: FakeClock) -> None:
    parent = Context().with_timeout(1.0)
    later = parent.with_timeout(5.0)
    earlier = parent.with_timeout(0.25)
    cancellable = parent.with_cancel()
    unbounded = parent.with_timeout(math.inf)
    grandchild = later.with_timeout(10.0)
    assert later.remaining() == pytest.approx(1.0)
    assert earlier.remaining() == pytest.approx(0.25)
    assert cancellable.remaining() == pytest.approx(1.0)
    assert unbounded.remaining() == pytest.approx(1.0)
    assert grandchild.remaining() == pytest.approx(1.0)
    clock.advance(0.5)
    assert earlier.done() and not later.done()
    clock.advance(0.5)
    for ctx in (later, cancellable, unbounded, grandchild):
        assert ctx.done()
        assert isinstance(ctx.err(), ContextDeadlineExceededError)


def test_with_timeout_infinite_has_no_deadline() -> None:
    ctx = Context().with_timeout(math.inf)
    assert ctx.remaining() is None
    assert not ctx.done()


def test_err_cancel_before_deadline_says_canceled(clock: FakeClock) -> None:
    ctx = Context().with_timeout(1.0)
    clock.advance(0.5)
    ctx.cancel()
    clock.advance(1.0)
    assert isinstance(ctx.err(), ContextCanceledError)


def test_err_deadline_before_cancel_says_deadline(clock: FakeClock) -> None:
    ctx = Context().with_timeout(1.0)
    clock.advance(2.0)
    ctx.cancel()
    assert isinstance(ctx.err(), ContextDeadlineExceededError)


def test_child_deadline_before_parent_cancel_says_deadline(clock: FakeClock) -> None:
    parent = Context()
    child = parent.with_timeout(0.1)
    clock.advance(0.2)
    parent.cancel()
    assert isinstance(child.err(), ContextDeadlineExceededError)
    assert isinstance(parent.err(), ContextCanceledError)


def test_parent_cancel_before_child_deadline_says_canceled(clock: FakeClock) -> None:
    parent = Context()
    child = parent.with_timeout(1.0)
    clock.advance(0.2)
    parent.cancel()
    clock.advance(2.0)
    assert isinstance(child.err(), ContextCanceledError)


@pytest.mark.parametrize(
    ("seconds", "exc"),
    [
        ("1", TypeError),
        (None, TypeError),
        (True, TypeError),
        ([1], TypeError),
        (-1, ValueError),
        (-0.001, ValueError),
        (math.nan, ValueError),
        (-math.inf, ValueError),
    ],
    ids=repr,
)
def test_with_timeout_rejects_bad_seconds(seconds: object, exc: type[Exception]) -> None:
    parent = Context()
    with pytest.raises(exc):
        parent.with_timeout(seconds)  # type: ignore[arg-type]
    with pytest.raises(exc):
        Context.background().with_timeout(seconds)  # type: ignore[arg-type]
    assert not parent.done()


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (1e300, "1e+300"),
        (sys.float_info.max, repr(sys.float_info.max)),
        (10**400, repr(10**400)),
        (10**5000, "<int of 16610 bits>"),  # past int's str() limit: still a ValueError that says which argument
        (MAX_TIMEOUT_SECONDS + 1, repr(MAX_TIMEOUT_SECONDS + 1)),
        (MAX_TIMEOUT_SECONDS + 0.5, repr(MAX_TIMEOUT_SECONDS + 0.5)),
    ],
    ids=["1e300", "float-max", "10**400", "10**5000", "max+1", "max+0.5"],
)
def test_with_timeout_too_large_names_the_argument(seconds: float, shown: str) -> None:
    """``with_timeout(1e300)`` failed with OverflowError: cannot convert float infinity to integer."""
    parent = Context()
    with pytest.raises(ValueError) as info:
        parent.with_timeout(seconds)
    message = str(info.value)
    assert message.startswith("with_timeout: seconds must be at most 31536000 (365 days), or math.inf")
    assert message.endswith(f"got {shown}")
    assert not parent.done()


def test_with_timeout_largest_finite_value_works() -> None:
    ctx = Context().with_timeout(MAX_TIMEOUT_SECONDS)
    assert ctx.remaining() == pytest.approx(MAX_TIMEOUT_SECONDS, abs=5)
    for isolation in ("semaphore", "thread"):
        fasthystrix.configure_command("long-ctx", {"isolation": isolation})
        # The command's 1 s timeout, not the context's 365 days, is what run has left.
        assert 0 < fasthystrix.do_c(ctx, "long-ctx", lambda c: c.remaining()) <= 1.0
        assert fasthystrix.go_c(ctx, "long-ctx", lambda c: "ok").result(WAIT) == "ok"


@pytest.mark.parametrize(("seconds", "exc"), [("1", TypeError), (math.nan, ValueError), (-1, ValueError)], ids=repr)
def test_with_timeout_errors_name_the_argument(seconds: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=r"^with_timeout: seconds must .*, (not|got) "):
        Context().with_timeout(seconds)  # type: ignore[arg-type]


def test_cancel_from_another_thread_is_seen() -> None:
    root = Context()
    child = root.with_timeout(60)
    seen = threading.Event()

    def watch() -> None:
        while not child.done():
            time.sleep(0.001)
        seen.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    root.cancel()
    assert seen.wait(WAIT)
    watcher.join(WAIT)


# -- do_c / go_c -------------------------------------------------------------------------------


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Released at the end of the test so abandoned runs end and give their tickets back."""
    event = threading.Event()
    yield event
    event.set()


def _call(via: str, ctx: Context, name: str, run: Callable[..., Any], fallback: Any = None) -> Any:
    if via == "do_c":
        return fasthystrix.do_c(ctx, name, run, fallback)
    future: Future[Any] = fasthystrix.go_c(ctx, name, run, fallback)
    return future.result(WAIT)


def _wait_tickets(name: str) -> None:
    circuit = fasthystrix.get_circuit(name)[0]
    wait_until(lambda: circuit.tickets_in_use == 0, f"every ticket of {name} back")


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("via", ["do_c", "go_c"])
def test_run_context_remaining_is_at_most_the_timeout(isolation: str, via: str) -> None:
    # Long limits: each call must succeed before them, even on a busy machine.
    fasthystrix.configure_command("rem", {"timeout": 10_000, "isolation": isolation})
    seen: list[float | None] = []

    def run(ctx: Context) -> str:
        seen.append(ctx.remaining())
        return "ok"

    assert _call(via, Context.background(), "rem", run) == "ok"
    assert _call(via, Context(), "rem", run) == "ok"
    assert _call(via, Context().with_timeout(5), "rem", run) == "ok"
    assert _call(via, Context().with_timeout(30), "rem", run) == "ok"
    assert all(r is not None for r in seen)
    values = [r for r in seen if r is not None]
    assert all(0 < r <= 10 for r in values), values
    assert values[2] <= 5


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_run_context_is_cancelled_with_the_callers(isolation: str) -> None:
    fasthystrix.configure_command("follow", {"timeout": 1000, "isolation": isolation})
    outer = Context()
    states: list[bool] = []

    def run(ctx: Context) -> str:
        states.append(ctx.done())
        outer.cancel()
        states.append(ctx.done())
        return "ignored"

    with pytest.raises(ContextCanceledError):
        fasthystrix.do_c(outer, "follow", run)
    _wait_tickets("follow")
    assert states == [False, True]


@pytest.mark.parametrize("via", ["do_c", "go_c"])
@pytest.mark.parametrize("with_fallback", [False, True])
def test_cancel_during_thread_run_ends_command(via: str, with_fallback: bool, gate: threading.Event) -> None:
    # Neither the timeout nor the end of run can end the command before the test does: only the
    # cancellation can (the error and the counts below say which did).
    fasthystrix.configure_command("cancel", {"timeout": 120_000})
    outer = Context()
    calls: list[tuple[Context, BaseException]] = []

    def run(ctx: Context) -> str:
        threading.Timer(0.02, outer.cancel).start()
        gate.wait(2 * WAIT)
        return "too late"

    def fallback(ctx: Context, err: BaseException) -> str:
        calls.append((ctx, err))
        return "fallback"

    if with_fallback:
        assert _call(via, outer, "cancel", run, fallback) == "fallback"
        assert len(calls) == 1
        assert calls[0][0] is outer
        assert isinstance(calls[0][1], ContextCanceledError)
    else:
        with pytest.raises(ContextCanceledError) as info:
            _call(via, outer, "cancel", run)
        assert str(info.value) == "context canceled"
    assert not gate.is_set()  # run was still blocked: the cancellation ended the command
    gate.set()
    _wait_tickets("cancel")
    metrics = fasthystrix.get_circuit("cancel")[0].metrics()
    assert metrics.requests == 1
    assert metrics.context_canceled == 1
    assert (metrics.timeouts, metrics.failures, metrics.successes, metrics.errors) == (0, 0, 0, 0)
    assert metrics.fallback_successes == (1 if with_fallback else 0)


# Spec test 15 (TestContextHandling): the context ends (20 ms) before the command's timeout, and run
# outlasts it. The timeout is 15 times the context's 20 ms, so that a timer thread woken late on a
# busy machine cannot reorder the two. A thread-isolated run waits for the test instead of sleeping;
# a semaphore-isolated one (on the caller's thread) returns once its context has ended.
TIMEOUT_MS = 300
RUN_S = 0.400
CTX_S = 0.020


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("via", ["do_c", "go_c"])
@pytest.mark.parametrize("with_fallback", [False, True])
@pytest.mark.parametrize("kind", ["background", "deadline", "canceled"])
def test_context_handling(kind: str, with_fallback: bool, via: str, isolation: str, gate: threading.Event) -> None:
    name = "ctx-handling"
    fasthystrix.configure_command(name, {"timeout": TIMEOUT_MS, "isolation": isolation})
    timer: threading.Timer | None = None
    if kind == "background":
        ctx = Context.background()
    elif kind == "deadline":
        ctx = Context.background().with_timeout(CTX_S)
    else:
        ctx = Context()
        timer = threading.Timer(CTX_S, ctx.cancel)

    fallback_errors: list[BaseException] = []

    def run(inner: Context) -> str:
        if isolation == "thread":
            gate.wait(2 * WAIT)
        elif kind == "background":
            time.sleep(RUN_S)  # past the timeout: nothing else can end it
        else:
            wait_until(inner.done, "the caller's context to end")
        return "run"

    def fallback(_: Context, err: BaseException) -> str:
        fallback_errors.append(err)
        return "fallback"

    expected_text = {
        "background": "hystrix: timeout",
        "deadline": "context deadline exceeded",
        "canceled": "context canceled",
    }[kind]
    if timer is not None:
        timer.start()
    try:
        if with_fallback:
            assert _call(via, ctx, name, run, fallback) == "fallback"
            assert [str(e) for e in fallback_errors] == [expected_text]
        else:
            with pytest.raises(Exception) as info:
                _call(via, ctx, name, run)
            assert str(info.value) == expected_text
    finally:
        gate.set()
        if timer is not None:
            timer.join()
    _wait_tickets(name)
    metrics = fasthystrix.get_circuit(name)[0].metrics()
    assert metrics.requests == 1
    assert metrics.failures == 0
    assert metrics.successes == 0
    assert metrics.timeouts == (1 if kind == "background" else 0)
    assert metrics.context_deadline_exceeded == (1 if kind == "deadline" else 0)
    assert metrics.context_canceled == (1 if kind == "canceled" else 0)
    assert metrics.fallback_successes == (1 if with_fallback else 0)
    assert metrics.fallback_failures == 0


def _done_ctx(kind: str) -> Context:
    if kind == "canceled":
        ctx = Context()
        ctx.cancel()
        return ctx
    return Context.background().with_timeout(0)


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
@pytest.mark.parametrize("via", ["do_c", "go_c"])
@pytest.mark.parametrize("kind", ["canceled", "deadline"])
@pytest.mark.parametrize("with_fallback", [False, True])
def test_already_done_context_never_runs(isolation: str, via: str, kind: str, with_fallback: bool) -> None:
    name = "done-already"
    fasthystrix.configure_command(name, {"isolation": isolation})
    ran: list[Context] = []
    fallback_calls: list[tuple[Context, BaseException]] = []
    expected = ContextCanceledError if kind == "canceled" else ContextDeadlineExceededError

    def fallback(ctx: Context, err: BaseException) -> str:
        fallback_calls.append((ctx, err))
        return "fallback"

    for _ in range(3):
        ctx = _done_ctx(kind)
        if with_fallback:
            assert _call(via, ctx, name, ran.append, fallback) == "fallback"
            assert fallback_calls[-1][0] is ctx
            assert type(fallback_calls[-1][1]) is expected
        else:
            with pytest.raises(expected):
                _call(via, ctx, name, ran.append)
    assert ran == []
    metrics = fasthystrix.get_circuit(name)[0].metrics()
    assert metrics.requests == 3
    assert metrics.executed == 0
    assert metrics.context_canceled == (3 if kind == "canceled" else 0)
    assert metrics.context_deadline_exceeded == (3 if kind == "deadline" else 0)
    assert metrics.errors == 0
    assert metrics.fallback_successes == (3 if with_fallback else 0)


def test_semaphore_run_noticing_cancellation_records_context_canceled() -> None:
    name = "notice"
    fasthystrix.configure_command(name, {"isolation": "semaphore", "timeout": 2000})
    outer = Context()
    caller = threading.current_thread()
    ran_on: list[threading.Thread] = []

    def run(ctx: Context) -> str:
        ran_on.append(threading.current_thread())
        give_up = time.monotonic() + WAIT
        while not ctx.done() and time.monotonic() < give_up:
            time.sleep(0.001)
        err = ctx.err()
        assert isinstance(err, ContextCanceledError)
        raise err

    timer = threading.Timer(0.02, outer.cancel)
    timer.start()
    try:
        with pytest.raises(ContextCanceledError):
            fasthystrix.do_c(outer, name, run)
    finally:
        timer.join()
    assert ran_on == [caller]
    metrics = fasthystrix.get_circuit(name)[0].metrics()
    assert metrics.context_canceled == 1
    assert (metrics.failures, metrics.timeouts, metrics.errors) == (0, 0, 0)


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_run_raising_context_errors_is_classified_as_context_event(isolation: str) -> None:
    name = "self-classified"
    fasthystrix.configure_command(name, {"isolation": isolation})

    def canceled(_: Context) -> None:
        raise ContextCanceledError()

    def deadline(_: Context) -> None:
        raise ContextDeadlineExceededError()

    with pytest.raises(ContextCanceledError):
        fasthystrix.do_c(Context(), name, canceled)
    with pytest.raises(ContextDeadlineExceededError):
        fasthystrix.do_c(Context(), name, deadline)
    metrics = fasthystrix.get_circuit(name)[0].metrics()
    assert (metrics.context_canceled, metrics.context_deadline_exceeded, metrics.failures) == (1, 1, 0)


def test_semaphore_ctx_deadline_shorter_than_timeout(clock: FakeClock) -> None:
    name = "short-ctx"
    fasthystrix.configure_command(name, {"isolation": "semaphore", "timeout": 1000})
    ctx = Context.background().with_timeout(0.05)

    def run(inner: Context) -> str:
        assert inner.remaining() == pytest.approx(0.05)
        clock.advance(ms=80)
        return "late"

    with pytest.raises(ContextDeadlineExceededError):
        fasthystrix.do_c(ctx, name, run)
    metrics = fasthystrix.get_circuit(name)[0].metrics()
    assert (metrics.context_deadline_exceeded, metrics.timeouts, metrics.successes) == (1, 0, 0)


def test_semaphore_timeout_before_ctx_deadline_is_timeout(clock: FakeClock) -> None:
    name = "short-timeout"
    fasthystrix.configure_command(name, {"isolation": "semaphore", "timeout": 50})
    ctx = Context.background().with_timeout(1.0)

    def run(inner: Context) -> str:
        assert inner.remaining() == pytest.approx(0.05)
        clock.advance(ms=80)
        return "late"

    with pytest.raises(fasthystrix.TimeoutError):
        fasthystrix.do_c(ctx, name, run)
    metrics = fasthystrix.get_circuit(name)[0].metrics()
    assert (metrics.timeouts, metrics.context_deadline_exceeded) == (1, 0)


@pytest.mark.parametrize("isolation", ["thread", "semaphore"])
def test_run_contexts_are_not_kept_alive_by_a_long_lived_context(isolation: str) -> None:
    """Each command's child context detaches from the caller's context when the command ends."""
    fasthystrix.configure_command("detach", {"isolation": isolation})
    outer = Context()
    children: list[weakref.ref[Context]] = []

    def run(ctx: Context) -> None:
        children.append(weakref.ref(ctx))

    for _ in range(20):
        fasthystrix.do_c(outer, "detach", run)
        fasthystrix.go_c(outer, "detach", run).result(WAIT)
    _wait_tickets("detach")
    gc.collect()
    assert len(children) == 40
    assert [ref() for ref in children] == [None] * 40


@pytest.mark.parametrize("via", ["do_c", "go_c"])
def test_run_context_is_done_when_the_command_times_out(via: str) -> None:
    """In thread isolation the abandoned run can see, through its context, that its command timed out."""
    name = "cooperative"
    fasthystrix.configure_command(name, {"timeout": 30})
    seen: list[BaseException | None] = []

    def run(ctx: Context) -> str:
        give_up = time.monotonic() + WAIT / 2
        while not ctx.done() and time.monotonic() < give_up:
            time.sleep(0.001)
        seen.append(ctx.err())  # None if it gave up: the context never said the command had ended
        return "stopped"

    with pytest.raises(fasthystrix.TimeoutError):
        _call(via, Context(), name, run)
    _wait_tickets(name)
    assert len(seen) == 1
    assert isinstance(seen[0], ContextDeadlineExceededError)
