"""Build script: the compiled hot-path modules, fail-safe.

Every name in ``EXTENSIONS`` is a Cython module under ``src/fasthystrix``
with a pure-Python twin (``<name>_py.py``). Without a C compiler (or with
``FASTHYSTRIX_NO_EXTENSIONS=1``) the package installs pure and says so loudly;
under cibuildwheel a failed build is an error, so no wheel ships pure by accident.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The compiled modules (none yet: the hot path moves to Cython in its own change).
EXTENSIONS: list[str] = ["_rolling", "_pool", "_circuit", "_handoff"]

NO_EXTENSIONS = os.environ.get("FASTHYSTRIX_NO_EXTENSIONS", "") not in ("", "0")
UNDER_CIBUILDWHEEL = os.environ.get("CIBUILDWHEEL", "") == "1"


def _warn(message: str) -> None:
    bar = "*" * 78
    sys.stderr.write(f"\n{bar}\n{message}\n{bar}\n\n")


class OptionalBuildExt(build_ext):
    """Build the extensions, falling back to the pure-Python twins if that fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers...
            self._fallback(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fallback(exc)

    def _fallback(self, exc: Exception) -> None:
        if UNDER_CIBUILDWHEEL:
            raise exc
        _warn(
            f"fasthystrix: building the compiled modules failed ({exc}).\n"
            "Installing the pure-Python implementation instead: it behaves the same, but is slower.\n"
            "Install a C compiler and Python headers, then reinstall, for the compiled hot path."
        )


def extensions() -> list[Extension]:
    if NO_EXTENSIONS or not EXTENSIONS or sys.implementation.name != "cpython":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn("fasthystrix: Cython is not installed; installing the pure-Python implementation.")
        return []
    modules = [
        Extension(
            f"fasthystrix.{name}",
            [f"src/fasthystrix/{name}.pyx"],
            include_dirs=["src/fasthystrix"],
            # C line numbers in tracebacks cost a dictionary lookup per traceback entry.
            define_macros=[("CYTHON_CLINE_IN_TRACEBACK", "0")],
        )
        for name in EXTENSIONS
    ]
    directives = {"boundscheck": False, "wraparound": False, "cdivision": True, "embedsignature": True}
    if os.environ.get("FASTHYSTRIX_CYTHON_TRACE"):
        directives.update(linetrace=True, profile=True)
    return cythonize(modules, compiler_directives=directives, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
