"""What the HTTP client wrappers (``fasthystrix.httpx``, ``fasthystrix.requests``) share.

The command name of a request, the hand-off of a command's remaining time to a
socket timeout, and :class:`FailedResponseError`, the error a response that
counts as a failure (a 5xx by default) is reported with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["FailedResponseError", "cap_timeout", "check_options", "command_name_of", "host_command_name"]

_DEFAULT_PORTS = {"http": 80, "https": 443}

#: The smallest socket timeout handed on, in seconds: a timeout of 0 would make the socket
#: non-blocking (an immediate, confusing error) instead of one that gives up at once.
MIN_TIMEOUT = 0.001


class FailedResponseError(Exception):
    """The server answered, but the response counts as a failure of the command (by default: a 5xx).

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
        super().__init__(f"the response status {status_code} counts as a failure")

    def __reduce__(self) -> tuple[type[FailedResponseError], tuple[Any, int]]:
        return (type(self), (self.response, self.status_code))


def host_command_name(scheme: str, host: str, port: int | None) -> str:
    """``"api.example.com"``, or ``"host:port"`` when the port is not the scheme's default.

    The host is lower-cased and, for IPv6, bracketed (``"[::1]:8080"``).
    """
    host = host.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or _DEFAULT_PORTS.get(scheme.lower()) == port:
        return host
    return f"{host}:{port}"


def check_options(name: object, fallback: object, is_failure: object) -> None:
    """Raise ``TypeError`` naming the option and the value for a bad ``name``/``fallback``/``is_failure``."""
    if name is not None and not isinstance(name, str) and not callable(name):
        raise TypeError(f"name must be a str, a callable(request) -> str or None, not {name!r}")
    if fallback is not None and not callable(fallback):
        raise TypeError(f"fallback must be callable or None, not {fallback!r}")
    if is_failure is not None and not callable(is_failure):
        raise TypeError(f"is_failure must be callable or None, not {is_failure!r}")


def command_name_of(name: str | Callable[[Any], str] | None, request: Any, default: Callable[[Any], str]) -> str:
    """The command name for ``request``: ``name`` itself, ``name(request)``, or ``default(request)``."""
    if isinstance(name, str):
        return name
    chosen = default(request) if name is None else name(request)
    if not isinstance(chosen, str):
        raise TypeError(f"name(request) must return a str, not {chosen!r}")
    return chosen


def cap_timeout(value: float | None, remaining: float | None) -> float | None:
    """``value`` lowered to ``remaining`` seconds (``None`` means no limit on either side)."""
    if remaining is None:
        return value
    remaining = max(remaining, MIN_TIMEOUT)
    if value is None or value > remaining:
        return remaining
    return value
