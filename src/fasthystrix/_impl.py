"""The one choice between the compiled modules and their pure-Python twins, made once per process.

All compiled or all pure, never a mix, and never changed after import (as in propcache and
frozenlist): no hot path or cache has to check which is live. ``FASTHYSTRIX_NO_EXTENSIONS=1``,
a non-CPython interpreter, or a failed import of a compiled module selects pure. The test
suite runs once per implementation, in separate processes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from types import ModuleType
from typing import Any

from ._core import _circuit_py, _rolling_py
from ._integrations import _asgi_core_py
from ._isolation import _deadlines_py, _handoff_py

__all__ = ["EVENT_NAMES", "Implementation", "available", "current"]

EVENT_NAMES = _rolling_py.EVENT_NAMES

# The compiled modules; each replaces its pure twin ``<name>_py``.
COMPILED_MODULES: tuple[str, ...] = (
    "_core._circuit",
    "_isolation._handoff",
    "_core._pool",
    "_core._rolling",
    "_isolation._deadlines",
    # Imported by _isolation._asyncio, not here: it needs the registry, which needs this module.
    "_isolation._do_async",
    "_integrations._asgi_core",
    # Imported by wsgi, not here: it imports the middleware helpers, which need the registry.
    "_integrations._wsgi_core",
)


class Implementation:
    """One consistent set of hot-path modules (``name`` is ``"compiled"`` or ``"pure"``)."""

    def __init__(
        self,
        name: str,
        circuit: ModuleType,
        rolling: ModuleType,
        handoff: ModuleType,
        deadlines: ModuleType,
        asgi_core: ModuleType,
    ) -> None:
        self.name = name
        self.CircuitBreaker: Any = circuit.CircuitBreaker
        self.do: Any = circuit.do
        self.CommandFunction: Any = circuit.CommandFunction
        self.bind: Any = circuit.bind
        self.RollingMetrics: Any = rolling.RollingMetrics
        self.summarize: Any = rolling.summarize
        self.Completion: Any = handoff.Completion
        self.SpinBudget: Any = handoff.SpinBudget
        self.Deadlines: Any = deadlines.Deadlines
        self.OutboxCore: Any = asgi_core.OutboxCore
        self.ExchangeCore: Any = asgi_core.ExchangeCore
        self.serve_asgi: Any = asgi_core.serve_asgi

    def __repr__(self) -> str:
        return f"<fasthystrix implementation {self.name!r}>"


PURE = Implementation("pure", _circuit_py, _rolling_py, _handoff_py, _deadlines_py, _asgi_core_py)


def _load_compiled() -> tuple[Implementation | None, str]:
    if os.environ.get("FASTHYSTRIX_NO_EXTENSIONS", "") not in ("", "0"):
        return None, "FASTHYSTRIX_NO_EXTENSIONS is set"
    if sys.implementation.name != "cpython":
        return None, f"{sys.implementation.name} runs the pure implementation"
    if not COMPILED_MODULES:
        return None, "this version has no compiled modules"
    missing = [name for name in COMPILED_MODULES if importlib.util.find_spec(f"{__package__}.{name}") is None]
    if missing:
        return None, f"compiled modules not built: {', '.join(missing)} (was a C compiler available at install?)"
    try:
        from ._core import _circuit, _pool, _rolling  # noqa: F401
        from ._integrations import _asgi_core
        from ._isolation import _deadlines, _handoff
    except ImportError as exc:
        return None, f"compiled modules not importable: {exc}"
    return Implementation("compiled", _circuit, _rolling, _handoff, _deadlines, _asgi_core), ""


COMPILED, WHY_PURE = _load_compiled()
if COMPILED is None and WHY_PURE.startswith("compiled modules"):
    # Not asked for, so say it: the pure twin is correct but several times slower.
    warnings.warn(
        f"fasthystrix is running its pure-Python implementation: {WHY_PURE}. "
        "Set FASTHYSTRIX_NO_EXTENSIONS=1 to choose it explicitly.",
        RuntimeWarning,
        stacklevel=2,
    )
_current = COMPILED or PURE


def current() -> Implementation:
    """The live implementation (the same for the whole life of the process)."""
    return _current


def available() -> dict[str, Implementation]:
    """Every implementation importable in this process, by name (only one of them is live)."""
    found = {"pure": PURE}
    if COMPILED is not None:
        found["compiled"] = COMPILED
    return found
