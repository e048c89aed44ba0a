"""pytest plugin for the sanitizer sessions: run only the compiled implementation's tests.

The sanitizers instrument the compiled extensions; the pure twin's tests would only run
CPython's own code under them, at the cost of a second run. Loaded with
``-p compiled_only`` (``tests/sanitizers`` on ``PYTHONPATH``). It reads the ``impl``
fixture's parameter: if the suite comes to choose its implementation once per process
instead, choose compiled that way in the sanitizer sessions and drop this plugin.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests parametrized with ``impl="pure"``; every other test stays."""
    keep: list[pytest.Item] = []
    pure: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        (pure if callspec is not None and callspec.params.get("impl") == "pure" else keep).append(item)
    if pure:
        config.hook.pytest_deselected(items=pure)
        items[:] = keep
