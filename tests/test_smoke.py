"""The package imports, reports its implementation, and runs a command."""

from __future__ import annotations

import fasthystrix


def test_implementation_is_reported(impl: str) -> None:
    assert fasthystrix.implementation == impl


def test_do_returns_run_value() -> None:
    assert fasthystrix.do("smoke", lambda: 42) == 42
    assert fasthystrix.get_circuit("smoke")[0].metrics().successes == 1
