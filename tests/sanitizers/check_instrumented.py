"""Exit non-zero unless fasthystrix runs compiled, from modules built with every sanitizer named.

``python check_instrumented.py address undefined``: run in the sanitizer sessions before the tests,
so that a build that fell back to pure, or modules left from a build without the sanitizers, cannot
pass them unchecked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fasthystrix
from fasthystrix import _impl

# A symbol that every object built with the sanitizer refers to.
MARKERS = {"address": b"__asan_init", "undefined": b"__ubsan_handle_", "thread": b"__tsan_init"}


def main(sanitizers: list[str]) -> str | None:
    if fasthystrix.implementation != "compiled":
        return f"fasthystrix runs pure: {_impl.WHY_PURE}"
    # The compiled modules live in the layer packages (_core/, _isolation/).
    modules = sorted(Path(fasthystrix.__file__).parent.rglob("*.so"))
    if len(modules) != len(_impl.COMPILED_MODULES):
        found = ", ".join(m.name for m in modules) or "none"
        return f"expected {len(_impl.COMPILED_MODULES)} compiled modules under {fasthystrix.__file__}, found {found}"
    for module in modules:
        data = module.read_bytes()
        missing = [s for s in sanitizers if MARKERS[s] not in data]
        if missing:
            return f"{module} is not built with {', '.join(missing)}"
    print(f"{', '.join(sanitizers)}: {', '.join(m.name for m in modules)}")
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
