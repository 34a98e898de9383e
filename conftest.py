"""Session rules shared by tests/ and parity_tests/: the `torch` marker and strict deprecations.

- A test module that needs PyTorch (imports torch or torch_reference) declares
  `pytestmark = pytest.mark.torch`. When a run deselects that marker (`-m "not torch"`, the
  compatibility job, whose Python has no torch), those modules are not even imported (they import
  torch at the top), the report says which were left out, and importing torch from any other test
  is an error that names the missing marker: a torch-free test never silently needs torch.
- JAX_DDPM_STRICT_DEPRECATIONS=1 turns DeprecationWarnings into errors when they are attributed to
  jax, jaxlib, flax, optax or orbax, or to this project's code. Python's filters match the module a
  warning is *attributed* to (its `stacklevel`), not the one that called `warnings.warn`: JAX's
  deprecations point at their caller, so a deprecated JAX call in our code is attributed to our
  module, and a deprecated call inside flax or orbax to theirs. Third-party code outside these
  (matplotlib, scikit-learn, ...) keeps pytest's default of showing its warnings.
"""

from __future__ import annotations

import importlib.abc
import os
import re
import sys
from pathlib import Path

STRICT_ENV = "JAX_DDPM_STRICT_DEPRECATIONS"
STRICT_MODULES = (
    r"((jax|jaxlib|flax|optax|orbax|jax_ddpm|torch_reference|benchmarks|tests|parity_tests)(\.|$)"
    r"|test_|conftest$)"
)
TORCH_MARK = re.compile(r"^pytestmark\s*=\s*pytest\.mark\.torch\b", re.MULTILINE)


def _serialise_ast_construction() -> None:
    """Let one thread at a time build a Python AST (ast.parse, and ast.literal_eval through it).

    CPython before 3.13 keeps the AST constructor's recursion counter in interpreter-wide state
    (python/cpython#106905), so two threads building ASTs at once can fail with "SystemError: AST
    constructor recursion depth mismatch". The test session has such threads: numpy parses every
    .npy header with ast.literal_eval, matplotlib validates rc settings with ast.parse on a run's
    pictures thread, and pytest parses source to print a failure. CI hit it once (2026-11-25): a
    test failed with that SystemError and pytest, parsing source to report it, stopped with an
    INTERNALERROR. The lock makes the session's AST building serial; it changes no result.
    """
    import ast
    import functools
    import threading

    if sys.version_info >= (3, 13) or getattr(ast.parse, "_serialised", False):
        return
    lock, parse = threading.RLock(), ast.parse

    @functools.wraps(parse)
    def serialised_parse(*args, **kwargs):
        with lock:
            return parse(*args, **kwargs)

    serialised_parse._serialised = True
    ast.parse = serialised_parse  # ast.literal_eval calls the module's `parse`


_serialise_ast_construction()
_left_out: list[str] = []


def torch_deselected(config) -> bool:
    """Whether the run's -m expression rejects a test marked torch (and nothing else)."""
    markexpr = config.getoption("markexpr", default="") or ""
    if not markexpr:
        return False
    try:
        from _pytest.mark.expression import Expression  # pytest's own -m parser (a private module)
    except ImportError:
        return markexpr.split() == ["not", "torch"]
    return not Expression.compile(markexpr).evaluate(lambda name, **kwargs: name == "torch")


class _TorchBlocker(importlib.abc.MetaPathFinder):
    """Makes `import torch` fail with a message naming the fix, in runs that deselect torch (any other
    import falls through to the next finder)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torch" or fullname.startswith("torch."):
            raise ModuleNotFoundError(
                f"{fullname} imported by a test not marked torch, in a run that deselects "
                "torch; add `pytestmark = pytest.mark.torch` to its module"
            )


def pytest_configure(config):
    if torch_deselected(config):
        sys.meta_path.insert(0, _TorchBlocker())
    if os.environ.get(STRICT_ENV) == "1":
        config.addinivalue_line("filterwarnings", f"error::DeprecationWarning:{STRICT_MODULES}")


def pytest_ignore_collect(collection_path: Path, config):
    """Under -m "not torch", skip importing test modules marked torch (they import torch)."""
    is_test_module = collection_path.suffix == ".py" and collection_path.name.startswith("test_")
    if is_test_module and torch_deselected(config) and TORCH_MARK.search(collection_path.read_text()):
        _left_out.append(collection_path.name)
        return True
    return None  # let pytest decide


def pytest_report_collectionfinish(config, start_path, items):
    if _left_out:
        names = ", ".join(sorted(_left_out))
        return f"not imported (marked torch, deselected by -m): {len(_left_out)} modules: {names}"
    return None
