"""The compiled modules and their pure twins expose the same names and signatures, and the stubs match."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from fasthystrix import _impl

PAIRS = [
    ("_core._circuit", "_core._circuit_py"),
    ("_core._rolling", "_core._rolling_py"),
    ("_core._pool", "_core._pool_py"),
    ("_isolation._handoff", "_isolation._handoff_py"),
    ("_isolation._deadlines", "_isolation._deadlines_py"),
    ("_isolation._do_async", "_isolation._do_async_py"),
    ("_integrations._asgi_core", "_integrations._asgi_core_py"),
    ("_integrations._wsgi_core", "_integrations._wsgi_core_py"),
]
PACKAGE_DIR = Path(_impl.__file__).parent

pytestmark = pytest.mark.skipif(_impl.COMPILED is None, reason=f"compiled modules not in use: {_impl.WHY_PURE}")


def _public(obj: object) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("__")}


def _params(func: object) -> list[str]:
    return [p.name for p in inspect.signature(func).parameters.values()]  # type: ignore[arg-type]


@pytest.mark.parametrize(("compiled", "pure"), PAIRS)
def test_module_exports_match(compiled: str, pure: str) -> None:
    c = importlib.import_module(f"fasthystrix.{compiled}")
    p = importlib.import_module(f"fasthystrix.{pure}")
    assert sorted(c.__all__) == sorted(p.__all__)
    for name in p.__all__:
        assert hasattr(c, name), name
        value = getattr(p, name)
        if isinstance(value, (int, tuple, str)):
            assert getattr(c, name) == value, name
        elif inspect.isfunction(value):
            assert _params(getattr(c, name)) == _params(value), name


@pytest.mark.parametrize(("compiled", "pure"), PAIRS)
def test_classes_have_the_same_public_methods_and_signatures(compiled: str, pure: str) -> None:
    c = importlib.import_module(f"fasthystrix.{compiled}")
    p = importlib.import_module(f"fasthystrix.{pure}")
    for name in p.__all__:
        pure_cls = getattr(p, name)
        if not inspect.isclass(pure_cls) or pure_cls.__module__ != p.__name__:
            continue
        compiled_cls = getattr(c, name)
        pure_methods = {n for n in _public(pure_cls) if callable(getattr(pure_cls, n)) and not n.startswith("_")}
        pure_methods |= {
            "_acquire",
            "_release",
            "_report",
            "_finish",
            "_after_fork_in_child",
            # The shared-circuit contract (_core/_shared.py and the registry call these).
            "_attach",
            "_attach_slot",
            "_reclaim_slot",
            "_reset_state",
        } & _public(pure_cls)
        for method in sorted(pure_methods):
            assert hasattr(compiled_cls, method), f"{name}.{method}"
            assert _params(getattr(compiled_cls, method))[:1] == ["self"]
            pure_params = _params(getattr(pure_cls, method))
            compiled_params = _params(getattr(compiled_cls, method))
            assert compiled_params[: len(pure_params)] == pure_params, f"{name}.{method}"
        # The compiled docstring may start with the signature Cython embeds.
        assert pure_cls.__doc__.split("\n")[0] in compiled_cls.__doc__, name


@pytest.mark.parametrize(("compiled", "pure"), PAIRS)
def test_stub_declares_every_export(compiled: str, pure: str) -> None:
    stub = ast.parse((PACKAGE_DIR / (compiled.replace(".", "/") + ".pyi")).read_text())
    declared: set[str] = set()
    for node in stub.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            declared.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            declared.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared.add(node.target.id)  # a constant: `PENDING: int`
    p = importlib.import_module(f"fasthystrix.{pure}")
    assert set(p.__all__) <= declared
