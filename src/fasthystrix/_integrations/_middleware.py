"""What the ASGI and WSGI middlewares share: command naming, exclusions, the request body's bound,
the door (requests the route's circuit would turn away, answered before anything else), and the
503 and 413 answers."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .._core import _errors
from .._core._config import CommandConfig, _count
from .._core._events import NO_EVENT, REJECTED, SHORT_CIRCUIT
from .._core._outcomes import error_for
from .._registry import _circuits, configure_command, get_circuit_settings

#: The route template of a request that matches no route.
UNMATCHED = "<unmatched>"

#: The default ``max_body_size``: the largest request body read before the command, in bytes (1 MiB).
DEFAULT_MAX_BODY_SIZE = 1 << 20

#: The default ``retry_after_rejected``: the ``Retry-After`` of a 503 for want of a ticket, in seconds.
DEFAULT_RETRY_AFTER_REJECTED = 1

# The methods a command name may carry; any other method string a client invents becomes
# "OTHER", so methods cannot multiply circuits either.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def _method(method: str) -> str:
    return method if method in _METHODS else "OTHER"


class _ServerError(_errors.FailedResultError):
    """The app answered with a status ``is_failure`` accepts (a 5xx by default): a failure of the
    command, whose ``result`` is the status, though the client has its response."""

    @property
    def status(self) -> int:
        """The status the app answered."""
        return self.args[0]  # type: ignore[no-any-return]

    def __str__(self) -> str:
        return f"the app answered {self.status}"


def _server_error(status: int) -> bool:
    """The middlewares' default ``is_failure``: a 5xx status."""
    return status >= 500


#: What a middleware's ``is_failure`` may be: a predicate of the status, or the failing statuses.
StatusRule = Callable[[int], bool] | Collection[int]


def _status_rule(value: object) -> Callable[[int], bool]:
    """A middleware's ``is_failure``: ``None`` (a 5xx), a predicate ``(status) -> bool``, or a
    collection of the statuses that are failures; else ``TypeError`` naming it."""
    if value is None:
        return _server_error
    if callable(value):
        return value
    if (
        isinstance(value, Collection)
        and not isinstance(value, (str, bytes))
        and all(isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in value)
    ):
        return frozenset(value).__contains__
    raise TypeError(
        f"is_failure must be a predicate (status) -> bool or a collection of statuses (ints 100..599), not {value!r}"
    )


class _Names:
    """Applies a middleware's ``config`` to each command name the first time it is seen.

    A name configured already (``configure_command`` for one route) keeps its settings.
    """

    __slots__ = ("_config", "_lock", "_seen")

    def __init__(self, config: CommandConfig | Mapping[str, Any] | None) -> None:
        self._config = None if config is None else CommandConfig.from_mapping(config)
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def prepare(self, name: str) -> None:
        if self._config is None or name in self._seen:
            return
        with self._lock:
            if name not in self._seen:
                if name not in get_circuit_settings():
                    configure_command(name, self._config)
                self._seen.add(name)


def _excluded(prefixes: Collection[str]) -> Callable[[str], bool]:
    if isinstance(prefixes, str) or not all(isinstance(p, str) for p in prefixes):
        raise TypeError(f"exclude must be a collection of path prefixes (str), not {prefixes!r}")
    cleaned = tuple(p.rstrip("/") for p in prefixes)

    def excluded(path: str) -> bool:
        return any(path == p or path.startswith(p + "/") or not p for p in cleaned)

    return excluded


def _size(field: str, value: object) -> int:
    """A size option in bytes: an int >= 0, else ``ValueError`` naming it."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"{field} must be an int >= 0, not {value!r}")


def _optional_size(field: str, value: object) -> int | None:
    """A size option in bytes that may be ``None`` (no bound)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"{field} must be an int >= 0 or None, not {value!r}")


def _content_length(value: str | bytes | None) -> int | None:
    """The Content-Length header's value, or ``None`` when absent or not a number (the server's to refuse)."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


def _too_large(name: str, limit: int) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer to a request whose body is larger than ``max_body_size``: the app never runs.

    The connection is closed after it: the rest of the body is never read.
    """
    body = json.dumps({"error": "request body too large", "command": name, "max_body_size": limit}).encode()
    return (
        413,
        [("content-type", "application/json"), ("content-length", str(len(body))), ("connection", "close")],
        body,
    )


def _retry_after_rejected(value: object) -> int:
    """The ``retry_after_rejected`` option: whole seconds, an int >= 0 (``TypeError``/``ValueError`` naming it)."""
    return _count("retry_after_rejected", value)


def _door(name: str) -> tuple[Any, int] | None:
    """``(circuit, event)`` when the route's circuit would turn the request away now (the event is
    counted, as the command would count it), else ``None``: the request goes on to its command.
    The sleep window is the circuit's own (``_shed_until``): with host-wide circuits, one that
    another worker opened is shed here too.

    Read without taking anything: a request that races another past the door is decided by
    its command, which answers the same 503 after reading the body. Not shed here: trials
    (their window has passed), and rejections by a full worker pool (thread isolation).
    """
    circuit = _circuits.get(name)
    if circuit is None:
        return None  # the first request: its command makes the circuit
    state = circuit.state()
    if state == "closed":
        if circuit.settings.max_queue_wait_ns or circuit.tickets_in_use < circuit.concurrency_limit:
            return None  # a ticket is free (the current limit, adaptive or not), or the command may wait for one
        event = REJECTED
    elif state == "open":
        if circuit._clock() > circuit._shed_until():
            return None  # a trial may be due (or several trials are on): the command decides
        event = SHORT_CIRCUIT
    else:
        event = SHORT_CIRCUIT  # forced open
    now = circuit._clock()
    # As do_async reports a call turned away: never ran, no ticket to give back.
    circuit._report(event, NO_EVENT, now, -1, -1, 0, False)
    return circuit, event


def _door_error(event: int) -> _errors.CircuitError:
    """The error a request turned away at the door stands for (what its command would raise)."""
    return error_for(event)  # type: ignore[return-value]


def _sleep_ns(circuit: Any) -> int:
    wait = circuit.sleep_window_now
    return (wait.days * 86_400 + wait.seconds) * 1_000_000_000 + wait.microseconds * 1000  # type: ignore[no-any-return]


def _retry_after(name: str, err: _errors.CircuitError, rejected: int) -> int | None:
    """The ``Retry-After`` of a 503, in whole seconds: for a short-circuit what remains of the
    sleep window, rounded up, at least 1 (the whole window when forced open, or in a half-open
    phase of several trials); for a rejection ``rejected``; none for a timeout."""
    if isinstance(err, _errors.MaxConcurrencyError):
        return rejected
    if not isinstance(err, _errors.CircuitOpenError):
        return None
    circuit = _circuits.get(name)
    if circuit is None:
        return 1
    left = _sleep_ns(circuit)
    until = circuit._shed_until()
    if until:
        left = max(until - circuit._clock(), 0)
    return max(1, math.ceil(left / 1e9))


_bodies: dict[tuple[str, str], bytes] = {}


def _rejection(
    name: str, err: _errors.CircuitError, retry_after: int | None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """The default answer when the app was not run or did not answer in time."""
    key = (name, err.message)
    body = _bodies.get(key)
    if body is None:
        if len(_bodies) >= 1024:
            _bodies.clear()  # names come and go with flush(): keep the cache bounded
        body = _bodies[key] = json.dumps({"error": err.message, "command": name}).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    if retry_after is not None:
        headers.append(("retry-after", str(retry_after)))
    return 503, headers, body


def _header_pairs(headers: Any) -> list[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    pairs = []
    for key, value in items:
        key = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        value = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        pairs.append((key, value))
    return pairs


def _response_triple(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """``(status, headers, body)`` from a fallback's tuple, with a content-length."""
    try:
        status, headers, body = result
    except (TypeError, ValueError):
        raise TypeError(f"a fallback returns None, (status, headers, body) or a response, not {result!r}") from None
    if isinstance(body, str):
        body = body.encode()
    pairs = _header_pairs(headers)
    if not any(key.lower() == "content-length" for key, _ in pairs):
        pairs.append(("content-length", str(len(body))))
    return int(status), pairs, bytes(body)
