"""The pieces of ``python -m fasthystrix demo``; the public entry is :mod:`fasthystrix.demo`."""
