"""Stub of the compiled ``_asgi_core`` module; it mirrors its pure twin ``_asgi_core_py``."""

from collections.abc import Awaitable, Callable, Generator, MutableMapping
from typing import Any

__all__ = ["ENDED", "ExchangeCore", "OutboxCore", "Resumed", "serve_asgi"]

ENDED: Any
Message = MutableMapping[str, Any]

class Resumed:
    """The rest of an awaitable's iterator that was stepped once by hand."""

    def __init__(self, iterator: Generator[Any, None, Any], blocked_on: Any) -> None: ...
    def __await__(self) -> Generator[Any, None, Any]: ...

class OutboxCore:
    """The app's response messages on their way to the client (``put`` in C)."""

    _send: Callable[[Message], Awaitable[None]]
    _queue: Any
    _task: Any
    _raised: bool
    buffered: int
    error: BaseException | None
    def __init__(self, send: Callable[[Message], Awaitable[None]]) -> None: ...
    def put(self, message: Message) -> None: ...

class ExchangeCore(OutboxCore):
    """One request's run of the app (``send``, ``receive`` and ``run``'s first step in C)."""

    app: Any
    app_steps: Any
    body: bytes | None
    buffer_size: int
    complete: bool
    detached: bool
    disconnected: bool
    is_failure: Callable[[int], bool] | None
    late_error: BaseException | None
    raised: BaseException | None
    receive_upstream: Callable[[], Awaitable[Message]]
    scope: MutableMapping[str, Any]
    started: bool
    status: int
    trailers: bool
    waiting: Any
    wake: Any
    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        scope: MutableMapping[str, Any],
        body: bytes | None,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
        buffer_size: int,
        is_failure: Callable[[int], bool] | None,
    ) -> None: ...
    def receive(self) -> Awaitable[Message]: ...
    def send(self, message: Message, /) -> Awaitable[None]: ...
    def run(self) -> Awaitable[None]: ...

def serve_asgi(self: Any, scope: MutableMapping[str, Any], receive: Any, send: Any) -> Awaitable[None]:
    """``CircuitBreakerMiddleware.__call__``: the request (the common case in C)."""
