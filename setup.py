"""Build script: the compiled hot-path modules, fail-safe.

Every name in ``EXTENSIONS`` is a Cython module under ``src/fasthystrix``
with a pure-Python twin (``<name>_py.py``). Without a C compiler (or with
``FASTHYSTRIX_NO_EXTENSIONS=1``) the package installs pure and says so loudly;
under cibuildwheel a failed build is an error, so no wheel ships pure by accident.

``FASTHYSTRIX_SANITIZE=address,undefined`` (or ``thread``) builds the extensions
with those gcc/clang sanitizers, for the ``sanitize-*`` nox sessions; such a build
must not fall back to pure either, or the sanitizers would check nothing.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The compiled modules (none yet: the hot path moves to Cython in its own change).
EXTENSIONS: list[str] = [
    "_core._rolling",
    "_core._pool",
    "_core._circuit",
    "_isolation._handoff",
    "_isolation._deadlines",
    "_isolation._do_async",
    "_integrations._asgi_core",
    "_integrations._wsgi_core",
]

NO_EXTENSIONS = os.environ.get("FASTHYSTRIX_NO_EXTENSIONS", "") not in ("", "0")
UNDER_CIBUILDWHEEL = os.environ.get("CIBUILDWHEEL", "") == "1"
SANITIZERS = ("address", "undefined", "thread")


def _sanitize() -> list[str]:
    """The sanitizers ``FASTHYSTRIX_SANITIZE`` asks for (comma-separated), checked."""
    wanted = [s.strip() for s in os.environ.get("FASTHYSTRIX_SANITIZE", "").split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SANITIZERS]
    if unknown:
        known = ", ".join(SANITIZERS)
        raise SystemExit(f"FASTHYSTRIX_SANITIZE: unknown sanitizer {', '.join(unknown)} (known: {known})")
    return wanted


SANITIZE = _sanitize()


def _warn(message: str) -> None:
    bar = "*" * 78
    sys.stderr.write(f"\n{bar}\n{message}\n{bar}\n\n")


class OptionalBuildExt(build_ext):
    """Build the extensions, falling back to the pure-Python twins if that fails."""

    def initialize_options(self) -> None:
        super().initialize_options()
        if SANITIZE:
            # Never reuse an object built with other flags (build_ext only compares timestamps).
            self.force = True

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
        if UNDER_CIBUILDWHEEL or SANITIZE:
            raise exc
        _warn(
            f"fasthystrix: building the compiled modules failed ({exc}).\n"
            "Installing the pure-Python implementation instead: it behaves the same, but is slower.\n"
            "Install a C compiler and Python headers, then reinstall, for the compiled hot path."
        )


def _sanitizer_flags() -> tuple[list[str], list[str]]:
    """Compile and link arguments for ``SANITIZE``: debug info and frame pointers for readable
    reports, asserts on, every UBSan finding fatal."""
    if not SANITIZE:
        return [], []
    flag = "-fsanitize=" + ",".join(SANITIZE)
    # After Python's own CFLAGS: -O1 overrides their -O3 (faster to build, stack traces that
    # follow the source), -UNDEBUG their -DNDEBUG (the C asserts, CPython's headers' included).
    compile_args = [flag, "-fno-omit-frame-pointer", "-g", "-O1", "-UNDEBUG"]
    if "undefined" in SANITIZE:
        compile_args.append("-fno-sanitize-recover=undefined")
    return compile_args, [flag]


def extensions() -> list[Extension]:
    if SANITIZE and (NO_EXTENSIONS or sys.implementation.name != "cpython"):
        raise SystemExit("FASTHYSTRIX_SANITIZE needs the compiled modules: CPython, without FASTHYSTRIX_NO_EXTENSIONS")
    if NO_EXTENSIONS or not EXTENSIONS or sys.implementation.name != "cpython":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if SANITIZE:
            raise
        _warn("fasthystrix: Cython is not installed; installing the pure-Python implementation.")
        return []
    compile_args, link_args = _sanitizer_flags()
    modules = [
        Extension(
            f"fasthystrix.{name}",
            [f"src/fasthystrix/{name.replace('.', '/')}.pyx"],
            # The C headers (_atomic.h, _capi.h) live with the core.
            include_dirs=["src/fasthystrix/_core"],
            # C line numbers in tracebacks cost a dictionary lookup per traceback entry.
            define_macros=[("CYTHON_CLINE_IN_TRACEBACK", "0")],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
        for name in EXTENSIONS
    ]
    directives = {"boundscheck": False, "wraparound": False, "cdivision": True, "embedsignature": True}
    if os.environ.get("FASTHYSTRIX_CYTHON_TRACE"):
        directives.update(linetrace=True, profile=True)
    return cythonize(modules, compiler_directives=directives, quiet=True)


# A sanitized build keeps its objects apart: a later normal build must not find (and ship) them.
BUILD_OPTIONS = {"build": {"build_base": "build/sanitize-" + "-".join(SANITIZE)}} if SANITIZE else {}

setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt}, options=BUILD_OPTIONS)
