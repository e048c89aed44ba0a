"""Edge settings of the circuit on the fast path, in both isolations."""

from __future__ import annotations

import pytest

import fasthystrix


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
def test_zero_volume_threshold_on_an_empty_window(isolation: str) -> None:
    """No request in the window and a volume threshold of 0: the call runs (no division by zero)."""
    fasthystrix.configure_command(
        "edge-volume-0", fasthystrix.CommandConfig(request_volume_threshold=0, isolation=isolation)
    )
    circuit = fasthystrix.get_circuit("edge-volume-0")[0]
    assert circuit.metrics().requests == 0  # reading the window moves it to this second
    assert fasthystrix.do("edge-volume-0", lambda: "ran") == "ran"
    metrics = fasthystrix.get_circuit("edge-volume-0")[0].metrics()
    assert (metrics.requests, metrics.successes, metrics.errors) == (1, 1, 0)


@pytest.mark.parametrize("isolation", ["semaphore", "thread"])
def test_zero_volume_threshold_trips_on_the_first_error(isolation: str) -> None:
    name = "edge-volume-0-trip"
    fasthystrix.configure_command(name, fasthystrix.CommandConfig(request_volume_threshold=0, isolation=isolation))
    with pytest.raises(ZeroDivisionError):
        fasthystrix.do(name, lambda: 1 // 0)
    with pytest.raises(fasthystrix.CircuitOpenError):
        fasthystrix.do(name, lambda: "never")
    assert fasthystrix.get_circuit(name)[0].state() == "open"
