"""Shared tiny configurations for the training, checkpoint and CLI tests.

A tiny run: 256 moons points in batches of 32 (8 steps an epoch), 20 epochs in chunks of 10,
checkpoints at epochs 10 and 20, 128 samples. It compiles in a couple of seconds and trains in
well under one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest

from jax_ddpm.runner.compile_cache import CACHE_DIR_ENV
from jax_ddpm.train import main as train_main

# The runs of the test session (in process and in subprocesses) share one compilation cache of
# their own, never the user's ~/.cache.
os.environ.setdefault(CACHE_DIR_ENV, tempfile.mkdtemp(prefix="jax_ddpm_test_cache_"))

TINY = [
    "--n-points",
    "256",
    "--batch-size",
    "32",
    "--epochs",
    "20",
    "--checkpoint-every",
    "10",
    "--log-every",
    "10",
    "--n-samples",
    "128",
    "--n-eval",
    "128",
]
STEPS_PER_EPOCH = 256 // 32


def tiny_argv(out_dir: Path, *extra: str) -> list[str]:
    """argv of a tiny run writing to out_dir; later options override earlier ones."""
    return TINY + ["--out-dir", str(out_dir), *extra]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder, by relative path: to prove nothing was changed or lost."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished tiny run with every output (pictures included), shared read-only by tests."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    assert train_main(tiny_argv(run_dir)) == 0
    return run_dir
