"""WSGI middleware: every request runs as a command named after its route (Flask, any WSGI app).

``CircuitBreakerMiddleware(app)`` runs each request under :func:`fasthystrix.do`, as the
command ``"<METHOD> <rule>"`` (``"GET /items/<int:item_id>"`` with Flask), never the raw
URL: a client choosing URLs cannot create circuits without bound. Requests that match no
rule share one command per method (``"GET <unmatched>"``), as does every request to a
WSGI app without a werkzeug URL map.

The app's exceptions, and the statuses ``is_failure`` accepts (a 5xx by default), are
failures of the command, other answers are successes; either way the client gets the app's
own response. When the app is not run (the circuit is open, every ticket is taken) or does
not answer in time, the client gets a 503 with a small JSON body naming the reason, or the
response of ``fallback``.

**Shedding at the door.** A request the route's circuit would turn away now (it is open
and no trial is due, or every ticket is taken) is answered at once, before its body is
read and without a worker thread: a 503 with ``Retry-After`` (what remains of the sleep
window, rounded up to whole seconds, at least 1; ``retry_after_rejected`` seconds, default
1, for want of a ticket), or the ``fallback``'s answer. It is counted as the command would
count it (``short_circuits`` or ``rejects``).

**What the command covers: the app, not the client.** The call of the app up to its
status (``start_response``): with Flask, the view function and its request hooks. Nothing
reaches the server before the command has ended, so a timed-out request can always be
answered with a 503. The request body is read before the command starts, on the server's
thread (at most ``max_body_size`` bytes; a larger one is answered 413 and the app never
runs), and handed to the app as ``wsgi.input`` (an ``io.BytesIO``): a client that sends
its body slowly, or never finishes it, holds no ticket and adds nothing to the route's
latency; only the server's own timeouts end it. The response is sent afterwards, by the
server, outside the command's timeout and ticket: a client that reads slowly holds its
server thread, not the route. A body the app streams (a generator) is produced then too,
and an error while streaming it is not counted.

**Thread or semaphore isolation** (the command's ``isolation`` setting):

- ``"thread"`` (the default) calls the app on a worker thread of the process's pool; the
  server's thread waits for it, and at the timeout answers the 503 while the app keeps
  running on its worker (holding its ticket) until it returns; its response is then
  closed and discarded. Real timeouts, for a thread hand-off per request (30 to 65 µs of
  CPU: a trivial Flask view keeps about 83 % of its throughput) and up to
  ``max_concurrent_requests`` worker threads per route (``set_max_threads`` in all).
- ``"semaphore"`` calls the app on the server's thread: nothing interrupts a slow view,
  and one that returns after its deadline is recorded as a timeout and answered with
  the 503 (its response discarded). Use it when the views enforce their own timeouts,
  or under gevent/eventlet workers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Collection, Iterable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from . import _impl
from ._core import _errors
from ._core._config import CommandConfig
from ._integrations._middleware import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_RETRY_AFTER_REJECTED,
    UNMATCHED,
    StatusRule,
    _content_length,
    _door,
    _door_error,
    _excluded,
    _method,
    _Names,
    _optional_size,
    _rejection,
    _response_triple,
    _retry_after,
    _retry_after_rejected,
    _server_error,
    _status_rule,
    _too_large,
)

if TYPE_CHECKING:
    from ._integrations._wsgi_core_py import RequestKey as _RequestKey  # what _core.request_key gives

__all__ = ["DEFAULT_MAX_BODY_SIZE", "DEFAULT_RETRY_AFTER_REJECTED", "UNMATCHED", "CircuitBreakerMiddleware"]

_READ_SIZE = 65536
_TEMPLATES = 4096  # rules (and command names) remembered per middleware, by method, path and host
_UNSEEN: Any = object()  # a key not in the table of command names
# The per-request core of the implementation in use (chosen once per process, at import): the
# compiled core serves the common request in C.
if _impl.current().name == "compiled":
    from ._integrations import _wsgi_core as _core
else:
    from ._integrations import _wsgi_core_py as _core  # type: ignore[no-redef]
_Exchange = _core.Exchange


Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
#: What a fallback may return: ``None`` (the default 503), ``(status, headers, body)``, or a WSGI app
#: (a Flask or werkzeug ``Response`` is one).
FallbackResult = None | tuple[int, Any, bytes | str] | WSGIApp


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def _incomplete(name: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer to a request whose body ended before its Content-Length: the app never runs."""
    body = json.dumps({"error": "incomplete request body", "command": name}).encode()
    return (
        400,
        [("content-type", "application/json"), ("content-length", str(len(body))), ("connection", "close")],
        body,
    )


class CircuitBreakerMiddleware:
    """Run each request of a WSGI app as a fasthystrix command (``do``).

    ``app``: the WSGI app to wrap. With Flask, wrap its ``wsgi_app`` so that
    ``app.run()``, the test client and every server keep working::

        app.wsgi_app = CircuitBreakerMiddleware(app.wsgi_app)

    ``name``: the command of a request. By default ``"<METHOD> <rule>"``, the werkzeug
    rule the request matches (``"GET /items/<int:item_id>"``), from ``url_map`` or the
    Flask app's own ``url_map`` (found from ``app`` or ``app.wsgi_app``); a request no
    rule matches (404, 405, a redirect), or any request when there is no URL map, is
    ``"<METHOD> <unmatched>"``. Methods outside the standard ones are ``OTHER``. A string
    names one command for every request; a callable ``name(environ)`` returns the name,
    or ``None`` to pass the request through without a command.

    ``exclude``: path prefixes passed through without a command (``("/ops", "/health")``),
    matched against ``PATH_INFO`` on ``/`` boundaries.

    ``config``: a :class:`~fasthystrix.CommandConfig` for every command this middleware
    runs, applied with ``configure_command`` the first time each name is seen, unless
    that name is configured already. Without it the commands get the defaults: 1 s
    timeout, 10 concurrent requests per route, thread isolation (see the module's notes).

    ``fallback(environ, err)`` answers when the app was not run or did not answer in time
    (``err`` is a ``CircuitOpenError``, ``MaxConcurrencyError`` or ``TimeoutError``): it
    returns ``(status, headers, body)``, a WSGI app (a Flask ``Response``; it is called
    outside Flask's request context), or ``None`` for the default 503.

    ``max_body_size``: the largest request body, in bytes, read before the command
    (default 1 MiB); a larger one (by its Content-Length, or once that many bytes have
    come) is answered 413 with a small JSON body, the connection closed, and counts
    nowhere. ``None`` reads bodies of any size (into memory). Exclude routes that stream
    large uploads.

    ``is_failure``: which of the app's statuses are failures of the command (counted, and
    able to open the circuit; the client still gets the app's response): a predicate
    ``(status) -> bool`` or a collection of statuses (``{500, 502, 503, 504}``); default
    ``status >= 500``. A predicate that raises makes the request a failure.

    ``retry_after_rejected``: the ``Retry-After`` (whole seconds, default 1) of a 503 for
    want of a ticket. A short-circuit's is what remains of the sleep window (at least 1).
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        name: str | Callable[[Environ], str | None] | None = None,
        fallback: Callable[[Environ, _errors.CircuitError], FallbackResult] | None = None,
        config: CommandConfig | Mapping[str, Any] | None = None,
        exclude: Collection[str] = (),
        url_map: Any = None,
        max_body_size: int | None = DEFAULT_MAX_BODY_SIZE,
        is_failure: StatusRule | None = None,
        retry_after_rejected: int = DEFAULT_RETRY_AFTER_REJECTED,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI app, not {app!r}")
        if name is not None and not isinstance(name, str) and not callable(name):
            raise TypeError(f"name must be a str, a callable or None, not {name!r}")
        if fallback is not None and not callable(fallback):
            raise TypeError(f"fallback must be callable or None, not {fallback!r}")
        self.app = app
        if url_map is None:
            url_map = getattr(app, "url_map", None)
        if url_map is None:
            url_map = getattr(getattr(app, "__self__", None), "url_map", None)  # flask_app.wsgi_app
        self.url_map = url_map
        self._templates: dict[_RequestKey, str] = {}
        # The command of each request key seen, unless a callable ``name`` decides it.
        self._commands: dict[_RequestKey, str | None] = {}
        self._name = name
        self._fallback = fallback
        self._names = _Names(config)
        self._excluded = _excluded(exclude)
        self._max_body_size = _optional_size("max_body_size", max_body_size)
        self._is_failure = _status_rule(is_failure)
        # What the compiled __call__ reads per request: the table of command names, and the status
        # rule (None for the default, a 5xx, which the exchange tests without a call).
        self._fast = (self._commands, None if self._is_failure is _server_error else self._is_failure)
        self._retry_after_rejected = _retry_after_rejected(retry_after_rejected)

    def command_name(self, environ: Environ) -> str | None:
        """The command a request runs as, or ``None`` when it passes through."""
        if self._excluded(environ.get("PATH_INFO", "")):
            return None
        name = self._name
        if name is None:
            return f"{_method(environ.get('REQUEST_METHOD', 'GET'))} {self.route_template(environ)}"
        if isinstance(name, str):
            return name
        return name(environ)

    def route_template(self, environ: Environ) -> str:
        """The rule the request matches (``"/items/<int:item_id>"``), or ``"<unmatched>"``."""
        if self.url_map is None:
            return UNMATCHED
        # The app matches each request again: remember the answer per method, path and host (a
        # bounded table, emptied when full).
        key = _core.request_key(environ)
        template = self._templates.get(key)
        if template is not None:
            return template
        try:
            rule, _ = self.url_map.bind_to_environ(environ).match(return_rule=True)
            template = str(rule.rule)
        except Exception:  # NotFound, MethodNotAllowed, RequestRedirect: all one name
            template = UNMATCHED
        templates = self._templates
        if len(templates) >= _TEMPLATES:
            templates.clear()
        templates[key] = template
        return template

    def _command_of(self, environ: Environ, key: _RequestKey) -> str | None:
        """:meth:`command_name`, its ``config`` applied, remembered for ``key`` (a bounded table,
        emptied when full) unless a callable ``name`` decides it."""
        name = self.command_name(environ)
        if name is not None:
            self._names.prepare(name)
        naming = self._name
        if naming is not None and not isinstance(naming, str):
            return name
        if len(self._commands) >= _TEMPLATES:
            self._commands.clear()
        self._commands[key] = name
        return name

    #: A WSGI app: ``middleware(environ, start_response)``. In C for a request on the common path (its
    #: command known, its circuit closed with a ticket free, no body), else :meth:`_serve`
    #: (``_integrations/_wsgi_core``: ``serve_wsgi``).
    __call__ = _core.serve_wsgi

    def _serve(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """The request, the whole way: what ``__call__`` does, for any request."""
        key = _core.request_key(environ)
        name = self._commands.get(key, _UNSEEN)
        if name is _UNSEEN:
            name = self._command_of(environ, key)
        if name is None:
            return self.app(environ, start_response)
        shed = _door(name)
        if shed is not None:
            unread = bool(environ.get("HTTP_TRANSFER_ENCODING")) or (environ.get("CONTENT_LENGTH") or "0") != "0"
            return self._answer(name, _door_error(shed[1]), environ, start_response, unread)
        refused = self._read_body(name, environ)
        if refused is not None:
            status, headers, body = refused
            start_response(_status_line(status), headers)
            return [body]
        return _core.run_command(self, name, _Exchange(self.app, environ, self._fast[1]), environ, start_response)

    def _read_body(self, name: str, environ: Environ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """Read the whole request body into ``wsgi.input``, before the command; else the answer to give."""
        stream = environ.get("wsgi.input")
        if stream is None:
            return None
        if (
            (environ.get("CONTENT_LENGTH") or "0") == "0"
            and not environ.get("HTTP_TRANSFER_ENCODING")
            and environ.get("SERVER_PROTOCOL") in ("HTTP/1.0", "HTTP/1.1")
        ):
            return None  # no body (RFC 9112, 6.3): nothing to read, the app's stream stays the server's
        limit = self._max_body_size
        length = _content_length(environ.get("CONTENT_LENGTH") or None)
        if limit is not None and length is not None and length > limit:
            return _too_large(name, limit)
        chunks: list[bytes] = []
        size = 0
        if environ.get("wsgi.input_terminated"):
            # A stream that ends by itself (chunked, or a server such as gunicorn): read to its end.
            while chunk := stream.read(_READ_SIZE if limit is None else min(_READ_SIZE, limit - size + 1)):
                size += len(chunk)
                if limit is not None and size > limit:
                    return _too_large(name, limit)
                chunks.append(chunk)
        elif length:
            # PEP 3333: read no more than CONTENT_LENGTH (the stream need not end there).
            while size < length and (chunk := stream.read(min(_READ_SIZE, length - size))):
                size += len(chunk)
                chunks.append(chunk)
            if size < length:
                return _incomplete(name)  # the client went away mid-body
        environ["wsgi.input"] = io.BytesIO(b"".join(chunks))
        return None

    def _answer(
        self, name: str, err: _errors.CircuitError, environ: Environ, start_response: StartResponse, close: bool = False
    ) -> Iterable[bytes]:
        """The fallback's answer, or the 503; ``close``: the request's body is left unread."""
        result: Any = None if self._fallback is None else self._fallback(environ, err)
        if result is not None and not isinstance(result, tuple) and callable(result):
            return result(environ, start_response)  # type: ignore[no-any-return]
        if result is None:
            status, headers, body = _rejection(name, err, _retry_after(name, err, self._retry_after_rejected))
        else:
            status, headers, body = _response_triple(result)
        if close:
            headers.append(("connection", "close"))
        start_response(_status_line(status), headers)
        return [body]
