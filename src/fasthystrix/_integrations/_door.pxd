# cython: language_level=3
# The middleware's door in C, shared by the compiled ASGI and WSGI cores (an inline function: a .pxd
# holds it, no module of its own).
from libc.stdint cimport int64_t

from fasthystrix._core._atomic cimport fh_load_acquire, fh_load_relaxed
from fasthystrix._core._circuit cimport STATE_FORCED, STATE_FORCED_CLOSED, CircuitBreaker


cdef extern from "_capi.h":
    object fh_lookup(object table, object name)  # a strong reference


cdef inline CircuitBreaker door_open(object circuits, object name):
    """The circuit of command ``name`` (in the registry's table ``circuits``) when the door lets the
    request through without a doubt: closed (or forced closed, or disabled) with a ticket free or a
    wait for one allowed. Else ``None``: anything else (no circuit yet, open, full) is for the
    middleware's ``_door`` to decide, in Python."""
    cdef CircuitBreaker circuit
    cdef int64_t word
    found = fh_lookup(circuits, name)
    if type(found) is not CircuitBreaker:
        return None
    circuit = <CircuitBreaker>found
    if not fh_load_relaxed(&circuit.lim.breaker_disabled):
        word = fh_load_acquire(&circuit.st.state_word)
        if word != 0 and (word & STATE_FORCED or not (word & STATE_FORCED_CLOSED)):
            return None  # open, or forced open
    if fh_load_relaxed(&circuit.queue_wait_ns):
        return circuit
    if fh_load_relaxed(circuit.tickets.count) < fh_load_relaxed(&circuit.lim.max_concurrent):
        return circuit
    return None
