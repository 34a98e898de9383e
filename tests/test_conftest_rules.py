"""The rules of the project's conftest.py, which the compatibility job relies on.

- JAX_DDPM_STRICT_DEPRECATIONS=1 makes deprecations from jax, flax, optax, orbax and this project
  errors, and leaves other libraries' deprecations as warnings. This checks what Python's filters
  really match: the module a warning is attributed to (stacklevel); pytest's own
  `-W error::DeprecationWarning:jax` would match only the module named exactly `jax`.
- Under -m "not torch", modules marked torch are not imported, and an unmarked one that imports
  torch is an error (even where torch is installed).

Each runs pytest in a subprocess on probe modules, with the project's conftest.py as a plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import warnings

import jax
import jax.numpy as jnp


def attributed_to(module):
    exec(compile("import warnings\\nwarnings.warn('old API', DeprecationWarning)", module + ".py", "exec"),
         {"__name__": module})


def test_jax_deprecation():
    jax.nn.one_hot(jnp.array([1.0]), 3)  # a float input is deprecated; attributed to jax._src.nn


def test_flax_deprecation():
    attributed_to("flax.linen.fake")


def test_our_deprecation():
    warnings.warn("old API", DeprecationWarning)


def test_other_library_deprecation():
    attributed_to("matplotlib.fake")
"""


UNMARKED_TORCH = "import torch\n\n\ndef test_uses_torch():\n    pass\n"
MARKED_TORCH = "import pytest\n\npytestmark = pytest.mark.torch\n\nraise RuntimeError('imported')\n"
TORCH_FREE = "def test_plain():\n    pass\n"


def run_pytest(folder: Path, *options: str, strict: bool = False) -> str:
    """pytest on the probe modules in `folder`, with this project's conftest.py and settings."""
    env = dict(os.environ, JAX_DDPM_STRICT_DEPRECATIONS="1" if strict else "0")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "conftest",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(ROOT),
            *options,
            str(folder),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout + done.stderr


def run_probe(tmp_path: Path, strict: bool) -> str:
    (tmp_path / "test_probe.py").write_text(PROBE)
    return run_pytest(tmp_path, strict=strict)


def test_strict_mode_fails_on_jax_flax_and_our_deprecations_only(tmp_path):
    out = run_probe(tmp_path, strict=True)
    assert "3 failed, 1 passed" in out, out[-3000:]
    for name in ("test_jax_deprecation", "test_flax_deprecation", "test_our_deprecation"):
        assert f"::{name} - DeprecationWarning" in out, out[-3000:]


def test_default_mode_only_warns(tmp_path):
    out = run_probe(tmp_path, strict=False)
    assert "4 passed" in out and "DeprecationWarning" in out, out[-3000:]


def test_not_torch_leaves_marked_modules_unimported_and_fails_unmarked_torch_imports(tmp_path):
    for name, text in (
        ("test_unmarked.py", UNMARKED_TORCH),
        ("test_marked.py", MARKED_TORCH),
        ("test_free.py", TORCH_FREE),
    ):
        (tmp_path / name).write_text(text)
    out = run_pytest(tmp_path, "-m", "not torch")
    assert "not imported (marked torch, deselected by -m): 1 modules: test_marked.py" in out, out[-3000:]
    assert "torch imported by a test not marked torch" in out and "ERROR" in out, out[-3000:]
    # A collection error stops the whole run: nothing passes by skipping the offending module.
    assert "Interrupted: 1 error during collection" in out and "RuntimeError" not in out, out[-3000:]
