"""``max_queue_wait``: a call that finds no free ticket waits for one, first come first served.

Every test waits for events (a call queued, a ticket back), never for a span of wall-clock time.
"""

from __future__ import annotations

import asyncio
import random
import threading
import types
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings as hsettings, strategies as st

import fasthystrix
from fasthystrix import Context, ContextCanceledError, ContextDeadlineExceededError
from fasthystrix._core import _clock, _events, _queue
from fasthystrix._observability import _stream_messages
from support import WAIT, wait_until

LONG = 60_000  # ms: a timeout or wait no test reaches


def circuit(name: str) -> Any:
    return fasthystrix.get_circuit(name)[0]


def configure(name: str, **fields: Any) -> Any:
    fields.setdefault("isolation", "semaphore")
    fields.setdefault("timeout", LONG)
    fields.setdefault("max_queue_wait", LONG)
    fasthystrix.configure_command(name, fasthystrix.CommandConfig(**fields))
    return circuit(name)


class Holders:
    """``n`` calls of ``name`` that hold their tickets until let go, one by one or all."""

    def __init__(self, name: str, n: int, runner: Callable[[str, Callable[[], Any]], Any] | None = None) -> None:
        self.gates = [threading.Event() for _ in range(n)]
        self.results: list[Any] = []
        do = runner or fasthystrix.do
        self.threads = [threading.Thread(target=self._hold, args=(do, name, g)) for g in self.gates]
        for t in self.threads:
            t.start()
        wait_until(lambda: circuit(name).tickets_in_use == n, "holders took their tickets")

    def _hold(self, do: Callable[[str, Callable[[], Any]], Any], name: str, gate: threading.Event) -> None:
        try:
            self.results.append(do(name, lambda: gate.wait(WAIT) and "held"))
        except Exception as exc:  # e.g. a holder that ran past a short timeout
            self.results.append(exc)

    def release(self, i: int) -> None:
        self.gates[i].set()

    def release_all(self) -> None:
        for g in self.gates:
            g.set()
        for t in self.threads:
            t.join(WAIT)


class Caller:
    """One call on a thread of its own; its answer (value or exception) kept."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.answer: Any = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(call,))
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.answer = call()
        except BaseException as exc:
            self.answer = exc
        self.done.set()

    def result(self) -> Any:
        assert self.done.wait(WAIT), "the call did not end"
        self.thread.join(WAIT)
        return self.answer


def queued(name: str, n: int) -> None:
    wait_until(lambda: circuit(name).queue_size == n, f"{n} calls waiting")


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (-1, ValueError, "max_queue_wait must not be negative, got -1"),
        (timedelta(milliseconds=-5), ValueError, "max_queue_wait must not be negative"),
        ("10", TypeError, "max_queue_wait must be an int .* not '10'"),
        (True, TypeError, "max_queue_wait must be an int .* not True"),
        (1.5, TypeError, "max_queue_wait must be an int .* not 1.5"),
        (366 * 24 * 3600 * 1000, ValueError, "max_queue_wait must be at most"),
    ],
)
def test_bad_values_are_refused_naming_the_field_and_leave_the_settings_alone(
    value: object, error: type[Exception], message: str
) -> None:
    configure("valid", max_queue_wait=25)
    with pytest.raises(error, match=message):
        fasthystrix.CommandConfig(max_queue_wait=value)  # type: ignore[arg-type]
    with pytest.raises(error, match="command 'valid': " + message):
        fasthystrix.configure({"valid": {"max_queue_wait": value}})
    assert fasthystrix.get_circuit_settings()["valid"].max_queue_wait == timedelta(milliseconds=25)


def test_the_setting_takes_ms_or_a_timedelta_and_defaults_to_zero() -> None:
    configure("ms", max_queue_wait=250)
    configure("td", max_queue_wait=timedelta(seconds=2))
    fasthystrix.configure_command("default", fasthystrix.CommandConfig())
    table = fasthystrix.get_circuit_settings()
    assert table["ms"].max_queue_wait == timedelta(milliseconds=250)
    assert table["td"].max_queue_wait_ns == 2_000_000_000
    assert table["default"].max_queue_wait == timedelta(0)
    fasthystrix.set_defaults(fasthystrix.CommandConfig(max_queue_wait=7))
    fasthystrix.configure_command("from-defaults", fasthystrix.CommandConfig())
    assert fasthystrix.get_circuit_settings()["from-defaults"].max_queue_wait == timedelta(milliseconds=7)


def test_without_max_queue_wait_a_call_with_no_ticket_is_rejected_at_once() -> None:
    c = configure("no-wait", max_concurrent_requests=1, max_queue_wait=0)
    holders = Holders("no-wait", 1)
    with pytest.raises(fasthystrix.MaxConcurrencyError):
        fasthystrix.do("no-wait", lambda: "ran")
    assert c.queue_size == 0
    holders.release_all()
    assert c.metrics().rejects == 1


# -- order and bound -------------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
def test_waiters_get_tickets_in_the_order_they_came(isolation: str) -> None:
    c = configure("fifo", max_concurrent_requests=4, isolation=isolation)
    holders = Holders("fifo", 4)
    admitted: list[int] = []
    finish = threading.Event()
    callers = []
    for i in range(4):
        # Each waiter keeps its ticket until the end: tickets come back one by one, the holders'.
        callers.append(
            Caller(lambda i=i: fasthystrix.do("fifo", lambda: admitted.append(i) or (finish.wait(WAIT) and i)))
        )
        queued("fifo", i + 1)
    for i in range(4):
        holders.release(i)
        wait_until(lambda i=i: len(admitted) == i + 1, f"waiter {i} admitted")
        assert c.queue_size == 3 - i
    assert admitted == [0, 1, 2, 3]
    finish.set()
    assert [caller.result() for caller in callers] == [0, 1, 2, 3]
    holders.release_all()
    assert c.queue_size == 0
    assert c.metrics().successes == 8
    assert c.metrics().rejects == 0


def test_a_given_back_ticket_goes_to_the_oldest_waiter_not_to_a_newcomer() -> None:
    c = configure("no-barging", max_concurrent_requests=1)
    holders = Holders("no-barging", 1)
    first_gate = threading.Event()
    order: list[str] = []
    first = Caller(lambda: fasthystrix.do("no-barging", lambda: order.append("first") or first_gate.wait(WAIT)))
    queued("no-barging", 1)
    holders.release_all()
    # The ticket is the first waiter's before it even runs: a newcomer queues behind it.
    wait_until(lambda: order == ["first"], "the waiter ran")
    assert c.tickets_in_use == 1
    newcomer = Caller(lambda: fasthystrix.do("no-barging", lambda: order.append("newcomer") or "new"))
    queued("no-barging", 1)
    first_gate.set()
    assert first.result() is True
    assert newcomer.result() == "new"
    assert order == ["first", "newcomer"]


def test_at_most_max_concurrent_requests_calls_wait_the_next_is_rejected_at_once() -> None:
    c = configure("bound", max_concurrent_requests=2)
    holders = Holders("bound", 2)
    callers = [Caller(lambda: fasthystrix.do("bound", lambda: "waited")) for _ in range(2)]
    queued("bound", 2)
    with pytest.raises(fasthystrix.MaxConcurrencyError):
        fasthystrix.do("bound", lambda: "ran")
    assert c.queue_size == 2
    assert c.metrics().rejects == 1
    holders.release_all()
    assert [caller.result() for caller in callers] == ["waited", "waited"]
    assert c.metrics().rejects == 1


def test_with_max_concurrent_requests_zero_nothing_waits() -> None:
    c = configure("zero", max_concurrent_requests=0)
    with pytest.raises(fasthystrix.MaxConcurrencyError):
        fasthystrix.do("zero", lambda: "ran")
    assert c.queue_size == 0


# -- what ends a wait ------------------------------------------------------------------------------


def test_a_wait_that_runs_out_is_a_rejection() -> None:
    c = configure("runs-out", max_concurrent_requests=1, max_queue_wait=30)
    holders = Holders("runs-out", 1)
    seen: list[BaseException] = []
    assert fasthystrix.do("runs-out", lambda: "ran", lambda err: seen.append(err) or "fallback") == "fallback"
    assert isinstance(seen[0], fasthystrix.MaxConcurrencyError)
    assert c.queue_size == 0
    holders.release_all()
    assert c.metrics().rejects == 1
    assert c.metrics().successes == 1


def test_the_timeout_ends_a_wait_as_a_timeout() -> None:
    c = configure("times-out", max_concurrent_requests=1, timeout=50)
    holders = Holders("times-out", 1)
    ran: list[str] = []
    with pytest.raises(fasthystrix.TimeoutError):
        fasthystrix.do("times-out", lambda: ran.append("ran"))
    assert ran == []
    assert c.queue_size == 0
    holders.release_all()  # the holder ran past the timeout too
    m = c.metrics()
    assert (m.timeouts, m.rejects, m.successes) == (2, 0, 0)


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
def test_a_cancelled_context_ends_a_wait(isolation: str) -> None:
    c = configure("cancel", max_concurrent_requests=1, isolation=isolation)
    holders = Holders("cancel", 1)
    ctx = Context()
    caller = Caller(lambda: fasthystrix.do_c(ctx, "cancel", lambda child: "ran"))
    queued("cancel", 1)
    ctx.cancel()
    assert isinstance(caller.result(), ContextCanceledError)
    assert c.queue_size == 0
    holders.release_all()
    m = c.metrics()
    assert (m.context_canceled, m.successes, m.rejects) == (1, 1, 0)


def test_a_context_deadline_ends_a_wait() -> None:
    c = configure("deadline", max_concurrent_requests=1)
    holders = Holders("deadline", 1)
    with pytest.raises(ContextDeadlineExceededError):
        fasthystrix.do_c(Context().with_timeout(0.05), "deadline", lambda child: "ran")
    assert c.queue_size == 0
    holders.release_all()
    m = c.metrics()
    assert (m.context_deadline_exceeded, m.successes) == (1, 1)


def test_a_call_that_waited_has_what_is_left_of_its_timeout() -> None:
    c = configure("left", max_concurrent_requests=1)
    holders = Holders("left", 1)
    seen: list[Context] = []
    caller = Caller(lambda: fasthystrix.do_c(Context(), "left", lambda child: seen.append(child) or "ran"))
    queued("left", 1)
    holders.release_all()
    assert caller.result() == "ran"
    assert c.metrics().successes == 2


def test_a_waiter_granted_a_ticket_as_its_wait_ends_passes_it_on() -> None:
    # The moment itself, made certain: a ticket is free as the call queues, and its context
    # is already cancelled. It must not keep (nor lose) that ticket.
    queue = _queue.TicketQueue()
    tickets = [0]
    given: list[int] = []

    def take() -> int:
        if tickets[0] >= 1:
            return -1
        tickets[0] += 1
        return tickets[0]

    def untake() -> None:
        tickets[0] -= 1

    def give() -> None:
        given.append(tickets[0])
        tickets[0] -= 1

    ops = _queue._Ops(threading.Lock(), 4, take, untake, give, lambda n: None)
    ctx = Context()
    ctx.cancel()
    now = _clock.now_ns()
    verdict, _ = _queue.wait(queue, ops, now, now, 10**9, 10**10, ctx, _clock.now_ns)
    assert verdict == _events.QUEUE_CANCELED
    assert given == [1] and tickets == [0]
    assert len(queue) == 0
    # Past its timeout when granted: passed on too, and reported as a timeout.
    verdict, _ = _queue.wait(queue, ops, 0, 0, 10**9, 10, None, lambda: 10)
    assert verdict == _events.QUEUE_TIMEOUT
    assert given == [1, 1] and tickets == [0]


# -- the queue on its own: grants follow arrivals, tickets are conserved --------------------------


@hsettings(max_examples=200, deadline=None)
@given(
    limit=st.integers(0, 3),
    steps=st.lists(st.tuples(st.sampled_from(["arrive", "give", "leave"]), st.integers(0, 10)), max_size=60),
)
def test_the_queue_grants_in_arrival_order_and_never_loses_a_ticket(limit: int, steps: list[tuple[str, int]]) -> None:
    queue = _queue.TicketQueue()
    in_use = [limit]  # every ticket taken at the start
    held = limit  # tickets the calls that hold them will give back
    waiting: list[_queue.Waiter] = []
    granted_order: list[_queue.Waiter] = []
    arrivals: list[_queue.Waiter] = []

    def take() -> int:
        if in_use[0] >= limit:
            return -1
        in_use[0] += 1
        return in_use[0]

    def untake() -> None:
        in_use[0] -= 1

    for step, pick in steps:
        if step == "arrive":
            w = _queue.Waiter()
            if queue.enqueue_locked(w, max(limit, 1), take, untake, lambda n: None):
                arrivals.append(w)
                waiting.append(w)
        elif step == "give" and held:
            held -= 1
            in_use[0] -= 1
            queue.drain_locked(take, untake)
        elif step == "leave" and waiting:
            w = waiting.pop(pick % len(waiting))
            if queue.leave_locked(w, lambda n: None):
                in_use[0] -= 1  # it held a ticket as it left: passed on
                queue.drain_locked(take, untake)
            arrivals.remove(w)
        for w in list(waiting):
            if w.granted:
                waiting.remove(w)
                granted_order.append(w)
                held += 1
                assert w.event is not None and w.event.is_set()
        # Granted in the order they arrived, skipping only those that left.
        assert granted_order == [w for w in arrivals if w.granted]
        assert all(not w.granted for w in waiting)
        assert list(queue.waiters) == waiting
        # Conservation: every ticket in use is held by a call, and none is free while calls wait.
        assert in_use[0] == held
        assert not waiting or in_use[0] == limit
        assert len(queue) <= max(limit, 1)


# -- stress: no ticket lost, every call answered --------------------------------------------------


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
def test_no_ticket_leaks_under_eight_threads_with_timeouts_and_cancellations(isolation: str) -> None:
    # The breaker stays out of it (so many timeouts would open it): every call meets the queue.
    c = configure(
        "stress",
        max_concurrent_requests=2,
        max_queue_wait=20,
        timeout=40,
        isolation=isolation,
        circuit_breaker_enabled=False,
    )
    calls_per_thread = 60
    answers: list[str] = []
    lock = threading.Lock()
    to_cancel: list[Context] = []
    stop = threading.Event()

    def canceller() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            with lock:
                if to_cancel:
                    to_cancel.pop(rng.randrange(len(to_cancel))).cancel()
            stop.wait(0.001)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(calls_per_thread):
            pause = rng.random() * 0.004
            kind = rng.randrange(3)
            try:
                if kind == 0:
                    fasthystrix.do("stress", lambda pause=pause: threading.Event().wait(pause))
                else:
                    ctx = Context() if kind == 1 else Context().with_timeout(rng.random() * 0.01)
                    with lock:
                        to_cancel.append(ctx)
                    fasthystrix.do_c(
                        ctx, "stress", lambda child, pause=pause: child.done() or threading.Event().wait(pause)
                    )
                outcome = "ok"
            except fasthystrix.MaxConcurrencyError:
                outcome = "rejected"
            except fasthystrix.TimeoutError:
                outcome = "timeout"
            except (ContextCanceledError, ContextDeadlineExceededError):
                outcome = "context"
            with lock:
                answers.append(outcome)

    cancel_thread = threading.Thread(target=canceller)
    cancel_thread.start()
    workers = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(WAIT * 4)
    stop.set()
    cancel_thread.join(WAIT)
    assert len(answers) == 8 * calls_per_thread  # every call answered, once
    assert "ok" in answers
    wait_until(lambda: c.tickets_in_use == 0, "every ticket back")
    assert c.queue_size == 0


# -- the decorator --------------------------------------------------------------------------------


def test_decorated_calls_wait_too() -> None:
    c = configure("decorated", max_concurrent_requests=1)

    @fasthystrix.command("decorated")
    def double(x: int) -> int:
        return 2 * x

    holders = Holders("decorated", 1)
    caller = Caller(lambda: double(21))
    queued("decorated", 1)
    holders.release_all()
    assert caller.result() == 42
    assert c.metrics().successes == 2


# -- asyncio ---------------------------------------------------------------------------------------


async def until(condition: Callable[[], object], what: str) -> None:
    """Let the event loop run until ``condition`` holds (fail, naming ``what``, after ``WAIT``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"{what}: not within {WAIT:g} s")
        await asyncio.sleep(0.002)


def test_do_async_waits_in_order_without_blocking_the_loop() -> None:
    c = configure("async-fifo", max_concurrent_requests=2)
    holders = Holders("async-fifo", 2)

    async def scenario() -> list[int]:
        admitted: list[int] = []
        ticks = 0
        finish = asyncio.Event()

        async def waiter(i: int) -> int:
            admitted.append(i)
            await finish.wait()  # keeps its ticket: tickets come back one by one, the holders'
            return i

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        tick_task = asyncio.ensure_future(ticker())
        waiters = []
        for i in range(2):
            waiters.append(asyncio.ensure_future(fasthystrix.do_async("async-fifo", lambda i=i: waiter(i))))
            await until(lambda i=i: c.queue_size == i + 1, f"waiter {i} queued")
        seen = ticks
        await until(lambda: ticks > seen + 10, "the loop runs while calls wait")
        for i in range(2):
            holders.release(i)
            await until(lambda i=i: len(admitted) == i + 1, f"waiter {i} admitted")
        finish.set()
        assert await asyncio.gather(*waiters) == [0, 1]
        tick_task.cancel()
        return admitted

    assert asyncio.run(scenario()) == [0, 1]
    holders.release_all()
    assert c.queue_size == 0
    assert c.metrics().successes == 4


async def ran() -> str:
    return "ran"


def test_a_cancelled_task_ends_its_wait_without_leaking_a_ticket() -> None:
    c = configure("async-cancel", max_concurrent_requests=2)
    holders = Holders("async-cancel", 2)

    async def scenario() -> None:
        first = asyncio.ensure_future(fasthystrix.do_async("async-cancel", ran))
        await until(lambda: c.queue_size == 1, "the first waiter queued")
        second = asyncio.ensure_future(fasthystrix.do_async("async-cancel", ran))
        await until(lambda: c.queue_size == 2, "the second waiter queued")
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert c.queue_size == 1
        holders.release(0)
        assert await second == "ran"  # the ticket went to the waiter still there

    asyncio.run(scenario())
    holders.release_all()
    assert c.tickets_in_use == 0 and c.queue_size == 0
    m = c.metrics()
    assert (m.context_canceled, m.successes) == (1, 3)


def test_a_task_cancelled_as_its_ticket_comes_passes_it_on() -> None:
    c = configure("async-race", max_concurrent_requests=2)
    holders = Holders("async-race", 2)

    async def scenario() -> None:
        first = asyncio.ensure_future(fasthystrix.do_async("async-race", ran))
        await until(lambda: c.queue_size == 1, "the first waiter queued")
        second = asyncio.ensure_future(fasthystrix.do_async("async-race", ran))
        await until(lambda: c.queue_size == 2, "the second waiter queued")
        # A ticket is handed to the first waiter (from another thread), which is cancelled
        # before it resumes: it must pass the ticket on to the second.
        holders.release(0)
        wait_until(lambda: c.queue_size == 1, "the ticket handed to the first waiter")  # the loop stays put
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await second == "ran"

    asyncio.run(scenario())
    holders.release_all()
    assert c.tickets_in_use == 0 and c.queue_size == 0
    m = c.metrics()
    assert (m.context_canceled, m.successes) == (1, 3)


def test_do_async_wait_ends_at_the_timeout() -> None:
    c = configure("async-timeout", max_concurrent_requests=1, timeout=50)
    holders = Holders("async-timeout", 1)

    async def scenario() -> None:
        with pytest.raises(fasthystrix.TimeoutError):
            await fasthystrix.do_async("async-timeout", ran)
        assert c.queue_size == 0

    asyncio.run(scenario())
    holders.release_all()
    assert c.metrics().timeouts == 2  # the waiter, and the holder that ran past its timeout


# -- what the metrics and the stream show ---------------------------------------------------------


def test_metrics_and_the_stream_show_the_waiting_calls() -> None:
    c = configure("shown", max_concurrent_requests=3)
    command, pool = _stream_messages.messages(c)
    assert (command["currentQueueCount"], pool["currentQueueSize"]) == (0, 0)
    assert pool["propertyValue_queueSizeRejectionThreshold"] == 3  # the bound: max_concurrent_requests
    holders = Holders("shown", 3)
    callers = [Caller(lambda: fasthystrix.do("shown", lambda: "waited")) for _ in range(2)]
    queued("shown", 2)
    assert c.metrics().queue_size == 2
    command, pool = _stream_messages.messages(c)
    assert (command["currentQueueCount"], pool["currentQueueSize"]) == (2, 2)
    text = _stream_messages.render([c], 1700000000123)
    assert b'"currentQueueCount":2}' in text and b'"currentQueueSize":2,' in text
    holders.release_all()
    assert [caller.result() for caller in callers] == ["waited", "waited"]
    assert c.metrics().queue_size == 0
    assert _stream_messages.messages(c)[1]["currentQueueSize"] == 0
    fasthystrix.configure_command("no-queue", fasthystrix.CommandConfig(max_concurrent_requests=3))
    assert _stream_messages.messages(circuit("no-queue"))[1]["propertyValue_queueSizeRejectionThreshold"] == 0


# -- go and go_c: they wait without a thread of their own ----------------------------------------


def test_go_waits_in_order_and_returns_at_once() -> None:
    c = configure("go-fifo", max_concurrent_requests=2, isolation="thread")
    holders = Holders("go-fifo", 2)
    admitted: list[int] = []
    finish = threading.Event()
    futures = []
    for i in range(2):
        futures.append(fasthystrix.go("go-fifo", lambda i=i: admitted.append(i) or (finish.wait(WAIT) and i)))
        queued("go-fifo", i + 1)  # go() returned: the call waits without the caller
    assert not any(f.done() for f in futures)
    for i in range(2):
        holders.release(i)
        wait_until(lambda i=i: len(admitted) == i + 1, f"waiter {i} admitted")
    finish.set()
    assert [f.result(WAIT) for f in futures] == [0, 1]
    holders.release_all()
    assert c.queue_size == 0
    assert c.metrics().successes == 4


def test_go_beyond_the_bound_is_rejected_and_a_wait_that_runs_out_too() -> None:
    c = configure("go-bound", max_concurrent_requests=1, isolation="thread", max_queue_wait=50)
    holders = Holders("go-bound", 1)
    waiting = fasthystrix.go("go-bound", lambda: "ran", lambda err: type(err).__name__)
    full = fasthystrix.go("go-bound", lambda: "ran", lambda err: type(err).__name__)
    assert full.result(WAIT) == "MaxConcurrencyError"  # the one place in the queue was taken
    assert waiting.result(WAIT) == "MaxConcurrencyError"  # its 50 ms ran out
    assert c.queue_size == 0
    holders.release_all()
    assert c.metrics().rejects == 2


def test_go_wait_ends_at_the_timeout() -> None:
    c = configure("go-timeout", max_concurrent_requests=1, isolation="thread", timeout=50)
    holders = Holders("go-timeout", 1)
    future = fasthystrix.go("go-timeout", lambda: "ran")
    with pytest.raises(fasthystrix.TimeoutError):
        future.result(WAIT)
    holders.release_all()
    assert c.queue_size == 0
    assert c.metrics().timeouts == 2


def test_go_c_wait_ends_when_the_context_is_cancelled() -> None:
    c = configure("go-cancel", max_concurrent_requests=1, isolation="thread")
    holders = Holders("go-cancel", 1)
    ctx = Context()
    future = fasthystrix.go_c(ctx, "go-cancel", lambda child: "ran")
    queued("go-cancel", 1)
    ctx.cancel()
    with pytest.raises(ContextCanceledError):
        future.result(WAIT)
    assert c.queue_size == 0
    holders.release_all()
    m = c.metrics()
    assert (m.context_canceled, m.successes) == (1, 1)


def test_no_ticket_leaks_with_go_under_eight_threads() -> None:
    c = configure("go-stress", max_concurrent_requests=2, max_queue_wait=20, timeout=40, isolation="thread",
                  circuit_breaker_enabled=False)  # fmt: skip
    futures: list[Any] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(40):
            pause = rng.random() * 0.004
            ctx = Context()
            f = fasthystrix.go_c(ctx, "go-stress", lambda child, pause=pause: threading.Event().wait(pause))
            if rng.random() < 0.3:
                ctx.cancel()
            with lock:
                futures.append(f)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    answered = 0
    for f in futures:
        try:
            f.result(WAIT)
        except (fasthystrix.MaxConcurrencyError, fasthystrix.TimeoutError, ContextCanceledError):
            pass
        answered += 1
    assert answered == 8 * 40
    wait_until(lambda: c.tickets_in_use == 0, "every ticket back")
    assert c.queue_size == 0


def test_a_call_interrupted_while_it_waits_is_a_failure_and_leaves_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    c = configure("interrupted", max_concurrent_requests=1)
    holders = Holders("interrupted", 1)

    class InterruptedEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            raise KeyboardInterrupt

    # Only the queue's waiters get this event (not the threading module's other users).
    monkeypatch.setattr(_queue, "threading", types.SimpleNamespace(Event=InterruptedEvent, Lock=threading.Lock))
    with pytest.raises(KeyboardInterrupt):
        fasthystrix.do("interrupted", lambda: "ran")
    monkeypatch.undo()
    assert c.queue_size == 0
    holders.release_all()
    m = c.metrics()
    assert (m.failures, m.successes, m.rejects) == (1, 1, 0)
