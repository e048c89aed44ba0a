"""The asyncio front: ``do_async`` and ``go_async`` on the same circuits, tickets and metrics as ``do``.

``run`` is awaited in the caller's task, under a deadline that cancels it: at the
timeout the work really stops (hystrix-go could only abandon it) and its ticket
comes back once the cancelled ``run`` has finished unwinding. Cancelling the
caller cancels ``run`` too: that is recorded as ``context_canceled`` and the
``CancelledError`` propagates, never turned into a fallback result.

``do_async`` is the compiled awaitable of ``_do_async`` when the compiled modules are
in use, else the coroutine function of ``_do_async_py`` (``_impl`` picks, once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from .. import _impl
from .._core._outcomes import check_arguments

if _impl.current().name == "compiled":
    from ._do_async import do_async
else:
    from ._do_async_py import do_async

__all__ = ["do_async", "go_async"]


def go_async(
    name: str,
    run: Callable[[], Awaitable[Any]],
    fallback: Callable[[BaseException], Any] | None = None,
) -> asyncio.Task[Any]:
    """Start :func:`do_async` as a task (the asyncio twin of :func:`fasthystrix.go`)."""
    check_arguments(name, run, fallback)
    return asyncio.get_running_loop().create_task(do_async(name, run, fallback))
