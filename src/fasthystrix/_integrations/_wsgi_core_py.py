"""The per-request hot path of the WSGI middleware in Python (the pure twin of ``_wsgi_core``).

- :class:`Exchange`: one request's call of the app, its status, headers and body captured
  until the command has ended (:meth:`~Exchange.run` is the command), then handed to the
  server (:meth:`~Exchange.respond`), or closed unseen (:meth:`~Exchange.abandon`) when
  the client is answered without it.
- :func:`request_key`: what a request's rule and command name depend on (the key of the
  middleware's tables).
- :func:`serve_wsgi`: ``CircuitBreakerMiddleware.__call__``. Here it is the middleware's
  ``_serve``, the whole way in Python; the compiled twin serves the common request in C
  (its command known, its circuit closed with a ticket free, no body) and hands any other
  to ``_serve``.

Both are held to the middleware's tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import _impl
from .._core import _errors
from ._middleware import _ServerError

__all__ = ["Exchange", "request_key", "run_command", "serve_wsgi"]

# The command function of the implementation in use (imported after it is chosen: by wsgi.py).
_do = _impl.current().do

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
RequestKey = tuple[str, str, str, str, str]


def request_key(environ: Environ) -> RequestKey:
    """What a request's rule and command name depend on: its method, path, script name, host and scheme."""
    return (
        environ.get("REQUEST_METHOD", ""),
        environ.get("PATH_INFO", ""),
        environ.get("SCRIPT_NAME", ""),
        environ.get("HTTP_HOST", ""),
        environ.get("wsgi.url_scheme", ""),
    )


def _close(result: Iterable[bytes] | None) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


class _Body:
    """The response body after chunks were pulled early to learn the status: those, then the rest."""

    __slots__ = ("_head", "_rest", "_result")

    def __init__(self, head: list[bytes], rest: Iterator[bytes] | None, result: Iterable[bytes]) -> None:
        self._head = head
        self._rest = rest
        self._result = result

    def __iter__(self) -> Iterator[bytes]:
        yield from self._head
        if self._rest is not None:
            yield from self._rest

    def close(self) -> None:
        _close(self._result)


class Exchange:
    """One request's call of the app: its status, headers and body, captured until the command has ended.

    ``is_failure``: the status rule, or ``None`` for the default (a 5xx is a failure).
    """

    __slots__ = (
        "_abandoned",
        "app",
        "downstream_start",
        "environ",
        "head",
        "headers",
        "is_failure",
        "lock",
        "raised",
        "rest",
        "result",
        "status_line",
    )

    def __init__(self, app: Any, environ: Environ, is_failure: Callable[[int], bool] | None) -> None:
        self.app = app
        self.environ = environ
        self.is_failure = is_failure
        self.status_line: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.head: list[bytes] = []  # write() calls and chunks pulled before the status was known
        self.rest: Iterator[bytes] | None = None
        self.result: Iterable[bytes] | None = None
        self.raised: BaseException | None = None
        self._abandoned = False
        self.downstream_start: StartResponse | None = None
        self.lock = threading.Lock()

    @property
    def abandoned(self) -> bool:
        """The caller answered without the app's response."""
        return self._abandoned

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        """The app's ``start_response``: the status and headers kept until the command has ended."""
        downstream = self.downstream_start
        if downstream is not None:
            # Called again while the body streams (an error with exc_info): the server decides.
            return downstream(status, headers, exc_info)
        if exc_info is None and self.status_line is not None:
            raise RuntimeError("start_response() called a second time without exc_info")
        self.status_line = status
        self.headers = list(headers)
        return self.head.append

    def run(self) -> None:
        """The command: call the app and pull its body until it has called ``start_response``."""
        try:
            result = self.app(self.environ, self.start_response)
        except BaseException as exc:
            self.raised = exc
            raise
        rest: Iterator[bytes] | None = None
        try:
            if self.status_line is None:
                # PEP 3333 lets an app call start_response as late as its first non-empty chunk.
                rest = iter(result)
                while self.status_line is None:
                    chunk = next(rest, None)
                    if chunk is None:
                        raise RuntimeError("the WSGI app returned without calling start_response()")
                    self.head.append(chunk)
        except BaseException as exc:
            self.raised = exc
            _close(result)
            raise
        with self.lock:
            abandoned = self._abandoned
            if not abandoned:
                self.result, self.rest = result, rest
        if abandoned:
            _close(result)  # the caller answered without it (thread isolation, after the timeout)
            return
        status = int(self.status_line[:3])
        if status >= 500 if self.is_failure is None else self.is_failure(status):
            raise _ServerError(status)

    def abandon(self) -> None:
        """The caller answers without the app's response: close it, now or when it arrives."""
        with self.lock:
            self._abandoned = True
            result, self.result = self.result, None
        _close(result)

    def respond(self, start_response: StartResponse) -> Iterable[bytes]:
        """Hand the app's status, headers and body to the server."""
        result = self.result
        assert result is not None and self.status_line is not None
        start_response(self.status_line, self.headers)
        self.downstream_start = start_response
        if not self.head and self.rest is None:
            return result  # untouched: keeps wsgi.file_wrapper and the app's close()
        return _Body(self.head, self.rest, result)


def run_command(
    middleware: Any, name: str, exchange: Exchange, environ: Environ, start_response: StartResponse
) -> Iterable[bytes]:
    """Run ``exchange.run`` as command ``name`` and answer: the app's response, or the
    middleware's own answer (``_answer``: its fallback, or the 503) when the command did not run
    the app or not in time. The exchange is abandoned on every way out but the app's response."""
    try:
        _do(name, exchange.run)
    except _ServerError:
        pass  # counted as a failure; the client gets the app's response
    except _errors.CircuitError as err:
        exchange.abandon()
        if err is exchange.raised:
            raise  # the app's own (a nested command's) error: a plain failure, already counted
        return middleware._answer(name, err, environ, start_response)  # type: ignore[no-any-return]
    except BaseException:
        exchange.abandon()
        raise
    return exchange.respond(start_response)


def serve_wsgi(self: Any, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """``CircuitBreakerMiddleware.__call__``: the request, as the middleware's ``_serve`` runs it."""
    return self._serve(environ, start_response)  # type: ignore[no-any-return]
