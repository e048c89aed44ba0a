"""Stub of the compiled ``do_async`` (its pure twin: ``_do_async_py``)."""

from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

__all__ = ["do_async"]

class DoAsync:
    """One ``do_async`` call, run when awaited; the coroutine protocol."""

    def __await__(self) -> Generator[Any, None, Any]: ...
    def __iter__(self) -> Coroutine[Any, Any, Any]: ...  # a DoAsync, registered as a collections.abc.Coroutine
    def __next__(self) -> Any: ...
    def send(self, value: Any) -> Any: ...
    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any: ...
    def close(self) -> None: ...

def do_async(
    name: str,
    run: Callable[[], Awaitable[Any]],
    fallback: Callable[[BaseException], Any] | None = None,
) -> Coroutine[Any, Any, Any]: ...  # a DoAsync, registered as a collections.abc.Coroutine
