"""Shared tiny configurations for the training, checkpoint and CLI tests.

A tiny run: 256 moons points in batches of 32 (8 steps an epoch), 20 epochs in chunks of 10,
checkpoints at epochs 10 and 20, 128 samples. It compiles in a couple of seconds and trains in
well under one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_ddpm.runner.checkpoint import restore_run
from jax_ddpm.runner.compile_cache import CACHE_DIR_ENV
from jax_ddpm.train import main as train_main

# The runs of the test session (in process and in subprocesses) share one compilation cache of
# their own, never the user's ~/.cache.
os.environ.setdefault(CACHE_DIR_ENV, tempfile.mkdtemp(prefix="jax_ddpm_test_cache_"))

# A tiny run's sizes; a test passes others to tiny_argv (a tuple is a sweep's list of values).
SIZES = dict(n_points=256, batch_size=32, epochs=20, checkpoint_every=10, log_every=10, n_samples=128, n_eval=128)
STEPS_PER_EPOCH = 256 // 32


def size_options(**sizes) -> list[str]:
    """SIZES, with `sizes` replacing some of them, as command-line options."""
    options = []
    for name, value in {**SIZES, **sizes}.items():
        options += [f"--{name.replace('_', '-')}", *map(str, value if isinstance(value, tuple) else (value,))]
    return options


TINY = size_options()


def tiny_argv(out_dir: Path, *extra: str, **sizes) -> list[str]:
    """argv of a tiny run (or sweep) writing to out_dir: the sizes, then `extra`; later options override earlier ones.
    tiny_argv(d, "--no-plots", batch_size=8, epochs=60) is a run of 32 steps an epoch for 60 epochs."""
    return [*size_options(**sizes), "--out-dir", str(out_dir), *extra]


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock times."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "wall_s"} for line in lines]


def assert_same_run(a: Path, b: Path, exact: bool = True) -> None:
    """Two run folders hold the same results: state of the newest checkpoint (parameters, EMA, Adam's
    moments, keys, counters), every metrics record, samples and the summary's evaluation; bit for bit,
    or (exact=False) state and losses to float32 round-off."""
    (_, state_a, _), (_, state_b, _) = restore_run(a), restore_run(b)
    leaves_a, leaves_b = jax.tree_util.tree_leaves(state_a), jax.tree_util.tree_leaves(state_b)
    assert len(leaves_a) == len(leaves_b)
    if exact:
        for x, y in zip(leaves_a, leaves_b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert records(a) == records(b)
        np.testing.assert_array_equal(np.load(a / "samples.npy"), np.load(b / "samples.npy"))
        summary_a, summary_b = (json.loads((d / "summary.json").read_text()) for d in (a, b))
        assert summary_a["evaluation"] == summary_b["evaluation"]
    else:
        for x, y in zip(leaves_a, leaves_b):
            np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose([r["loss"] for r in records(a)], [r["loss"] for r in records(b)], rtol=1e-4)


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


def train_killed_after_first_checkpoint(argv: list[str], run_dir: Path, epoch: int) -> None:
    """`python -m jax_ddpm.train *argv` (writing run_dir) in a subprocess, SIGKILLed as soon as its checkpoint
    of `epoch` is complete: once its manifest is written, after orbax renamed it into place (a kill between
    the two leaves an unfinished checkpoint, which --resume rightly refuses when it is the only one)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "jax_ddpm.train", *argv],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint_manifests" / f"{epoch}.json").is_file():
        assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
