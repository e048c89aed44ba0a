"""``@fasthystrix.command``: run a function's every call as a command, sync or async."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from .. import _impl
from .._core._config import CommandConfig
from .._registry import configure_command
from ._asyncio import do_async

__all__ = ["command"]

F = TypeVar("F", bound=Callable[..., Any])


def command(
    name: str | None = None,
    fallback: Callable[..., Any] | None = None,
    config: CommandConfig | None = None,
) -> Callable[[F], F]:
    """Decorate a function (sync or async) so each call runs as command ``name``.

    ``name`` defaults to the function's qualified name. The call's arguments pass
    through to the function and, when given, to the fallback, which also gets the
    error as the keyword argument ``err``: ``fallback(*args, err=err, **kwargs)``
    (sync or async). ``config``, if given, is applied with ``configure_command``
    when the function is decorated.

    An ``async def`` function, or an object whose ``__call__`` is one, gets an async
    wrapper that runs under :func:`do_async`. An async fallback needs an async
    function: with a sync one its coroutine could never be awaited, so that pairing
    is a ``TypeError`` here rather than at the first failure.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, not {name!r}")
    if fallback is not None and not callable(fallback):
        raise TypeError(f"fallback must be callable or None, not {fallback!r}")
    if config is not None and not isinstance(config, CommandConfig):
        raise TypeError(f"config must be a CommandConfig or None, not {config!r}")

    def decorate(function: F) -> F:
        if not callable(function):
            raise TypeError(f"@command decorates a callable, not {function!r}")
        command_name = name if name is not None else getattr(function, "__qualname__", None)
        if not isinstance(command_name, str):
            raise TypeError(f"@command needs a name for {function!r}, which has no __qualname__")
        is_async = _is_async(function)
        if not is_async and fallback is not None and _is_async(fallback):
            raise TypeError(
                f"the fallback {fallback!r} is async but {function!r} is not: use an async function, or a sync fallback"
            )
        if config is not None:
            configure_command(command_name, config)

        def fallback_for(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[BaseException], Any] | None:
            if fallback is None:
                return None
            return lambda err: fallback(*args, err=err, **kwargs)

        if is_async:

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await do_async(
                    command_name, functools.partial(function, *args, **kwargs), fallback_for(args, kwargs)
                )

            async_wrapper.command_name = command_name  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        # Sync functions get a callable of the live implementation (compiled: the call
        # goes straight to the circuit with its arguments, no closure per call).
        wrapper = _impl.current().CommandFunction(command_name, function, fallback)
        functools.update_wrapper(wrapper, function)
        return wrapper  # type: ignore[no-any-return]

    return decorate


def _is_async(function: Callable[..., Any]) -> bool:
    """Whether calling ``function`` returns a coroutine: an ``async def`` or an object with one as ``__call__``."""
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(type(function).__call__)
