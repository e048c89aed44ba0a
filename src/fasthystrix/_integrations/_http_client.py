"""What the HTTP client wrappers (``fasthystrix.httpx``, ``fasthystrix.requests``) share.

The command name of a request (:class:`CommandNames`, within ``max_hosts``), the
hand-off of a command's remaining time to a socket timeout, and
:class:`FailedResponseError`, the error a response that counts as a failure (a 5xx
by default) is reported with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .._core._errors import FailedResultError
from .._core._log import logger

__all__ = [
    "DEFAULT_MAX_HOSTS",
    "HOST",
    "HOST_PORT",
    "OTHER_HOSTS",
    "CommandNames",
    "FailedResponseError",
    "cap_timeout",
    "check_options",
    "host_command_name",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}

#: ``command=HOST`` (the default): the host, with the port when it is not the scheme's default.
HOST = "host"
#: ``command=HOST_PORT``: the host and its port, always (``"api.example.com:443"``).
HOST_PORT = "host:port"
#: The command that requests to hosts past ``max_hosts`` share.
OTHER_HOSTS = "<other hosts>"
#: The default ``max_hosts``: distinct command names a wrapper makes from URLs before the rest share one.
DEFAULT_MAX_HOSTS = 100

#: The smallest socket timeout handed on, in seconds: a timeout of 0 would make the socket
#: non-blocking (an immediate, confusing error) instead of one that gives up at once.
MIN_TIMEOUT = 0.001


class FailedResponseError(FailedResultError):
    """The server answered, but ``is_failure`` says the response is a failure of the command
    (by default: a 5xx): the wrappers' :class:`~fasthystrix.FailedResultError`, ``result``
    being the response.

    The command records a ``failure`` (so such answers can trip the circuit), and the
    fallback, if any, receives this error with the response as ``.response`` (its
    body already read). Without a fallback the caller gets the response itself, not
    this error: the client behaves as it would without fasthystrix.
    """

    response: Any
    status_code: int

    def __init__(self, response: Any, status_code: int) -> None:
        self.response = response
        self.status_code = status_code
        super().__init__(response)

    def __str__(self) -> str:
        return f"the response status {self.status_code} counts as a failure"

    def __reduce__(self) -> tuple[type[FailedResponseError], tuple[Any, int]]:
        return (type(self), (self.response, self.status_code))


def host_command_name(scheme: str, host: str, port: int | None, command: str = HOST) -> str:
    """``"api.example.com"``, or ``"host:port"`` when the port is not the scheme's default
    (always, with ``command="host:port"``, when the scheme has a default port).

    The host is lower-cased and, for IPv6, bracketed (``"[::1]:8080"``).
    """
    host = host.lower()
    if ":" in host:
        host = f"[{host}]"
    default = _DEFAULT_PORTS.get(scheme.lower())
    if port is None:
        if command != HOST_PORT or default is None:
            return host
        port = default
    elif command != HOST_PORT and default == port:
        return host
    return f"{host}:{port}"


def check_options(fallback: object, is_failure: object) -> None:
    """Raise ``TypeError`` naming the option and the value for a bad ``fallback``/``is_failure``."""
    if fallback is not None and not callable(fallback):
        raise TypeError(f"fallback must be callable or None, not {fallback!r}")
    if is_failure is not None and not callable(is_failure):
        raise TypeError(f"is_failure must be callable or None, not {is_failure!r}")


class CommandNames:
    """How a client wrapper names each request's command: ``command`` (from the URL) or ``name``
    (from the whole request), within ``max_hosts`` distinct names.

    ``split(request) -> (scheme, host, port)`` and ``url(request)`` read a request of the
    wrapper's library. Thread-safe: one is shared by every request of a transport.
    """

    __slots__ = ("_command", "_fixed", "_lock", "_max_hosts", "_name", "_seen", "_split", "_url", "_warned")

    def __init__(
        self,
        command: object,
        name: object,
        max_hosts: object,
        split: Callable[[Any], tuple[str, str, int | None]],
        url: Callable[[Any], Any],
    ) -> None:
        if isinstance(command, str):
            if not command:
                raise ValueError("command must not be empty")
        elif not callable(command):
            raise TypeError(
                f"command must be 'host', 'host:port', a command name (str) or a callable(url) -> str, not {command!r}"
            )
        if name is not None:
            if not isinstance(name, str) and not callable(name):
                raise TypeError(f"name must be a str, a callable(request) -> str or None, not {name!r}")
            if command != HOST:
                raise TypeError(f"pass command or name, not both (command={command!r}, name={name!r})")
        if max_hosts is not None and (isinstance(max_hosts, bool) or not isinstance(max_hosts, int) or max_hosts < 1):
            raise ValueError(f"max_hosts must be an int >= 1 or None, not {max_hosts!r}")
        self._command: Any = command
        self._name: Any = name
        self._max_hosts = max_hosts
        self._split = split
        self._url = url
        # One name for every request: nothing to choose, nothing to bound.
        self._fixed: str | None = None
        if isinstance(name, str):
            self._fixed = name
        elif name is None and isinstance(command, str) and command not in (HOST, HOST_PORT):
            self._fixed = command
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._warned = False

    def __call__(self, request: Any) -> str:
        """The command of ``request``."""
        fixed = self._fixed
        if fixed is not None:
            return fixed
        name = self._name
        if name is not None:
            chosen = name(request)
            if not isinstance(chosen, str):
                raise TypeError(f"name(request) must return a str, not {chosen!r}")
        elif self._command == HOST or self._command == HOST_PORT:
            chosen = host_command_name(*self._split(request), command=self._command)
        else:
            chosen = self._command(self._url(request))
            if not isinstance(chosen, str) or not chosen:
                raise TypeError(f"command(url) must return a non-empty str, not {chosen!r}")
        return self._bounded(chosen)

    def _bounded(self, name: str) -> str:
        """``name``, or :data:`OTHER_HOSTS` when it is new and ``max_hosts`` names are taken."""
        limit = self._max_hosts
        if limit is None or name in self._seen:
            return name
        with self._lock:
            if name in self._seen:
                return name
            if len(self._seen) < limit:
                self._seen.add(name)
                return name
            warn, self._warned = not self._warned, True
        if warn:
            logger.warning(
                "%d hosts have a circuit of their own (max_hosts): requests to other hosts, %r first, share %r",
                limit,
                name,
                OTHER_HOSTS,
            )
        return OTHER_HOSTS


def cap_timeout(value: float | None, remaining: float | None) -> float | None:
    """``value`` lowered to ``remaining`` seconds (``None`` means no limit on either side)."""
    if remaining is None:
        return value
    remaining = max(remaining, MIN_TIMEOUT)
    if value is None or value > remaining:
        return remaining
    return value
