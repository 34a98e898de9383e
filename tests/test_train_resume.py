"""Resume: a run killed with SIGKILL and resumed ends bit for bit where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jax_ddpm.runner.checkpoint import Checkpointer
from jax_ddpm.train import main as train_main
from tests.test_train_e2e import restore

REPO = Path(__file__).resolve().parents[1]
# 32 steps an epoch, 60 epochs in chunks of 10: long enough to kill between checkpoints.
ARGV = [
    "--n-points",
    "256",
    "--batch-size",
    "8",
    "--epochs",
    "60",
    "--checkpoint-every",
    "10",
    "--log-every",
    "10",
    "--n-samples",
    "64",
    "--n-eval",
    "64",
    "--no-plots",
]


def losses(run_dir: Path) -> list:
    return [
        (r["epoch"], r["loss"], r["last_loss"])
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    ]


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jax_ddpm.train", *ARGV, "--out-dir", str(killed)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    # A checkpoint is complete once its manifest is written (after orbax renamed it into place); a kill
    # between the two leaves an unfinished checkpoint, which --resume rightly refuses when it is the only one.
    while not (killed / "checkpoint_manifests" / "10.json").is_file():
        assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = Checkpointer(killed).latest_epoch()
    assert kept is not None and kept < 60, f"the kill came too late to test resume (checkpoint {kept})"

    assert train_main([*ARGV, "--out-dir", str(killed), "--resume"]) == 0
    whole = tmp_path / "whole"
    assert train_main([*ARGV, "--out-dir", str(whole)]) == 0

    resumed_state, whole_state = restore(killed), restore(whole)
    assert int(resumed_state.epoch) == int(whole_state.epoch) == 60
    # Parameters, EMA, Adam's moments, keys and counters: all bitwise equal.
    for a, b in zip(jax.tree_util.tree_leaves(resumed_state), jax.tree_util.tree_leaves(whole_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert losses(killed) == losses(whole)  # one line per epoch, none lost or repeated
    np.testing.assert_array_equal(np.load(killed / "samples.npy"), np.load(whole / "samples.npy"))


def test_resume_of_finished_run_keeps_its_results(tiny_run, tmp_path):
    """Resuming a finished run trains nothing and leaves metrics and samples as they were."""
    import shutil

    run_dir = tmp_path / "done"
    shutil.copytree(tiny_run, run_dir)
    before = losses(run_dir)
    from tests.conftest import tiny_argv

    assert train_main(tiny_argv(run_dir, "--resume", "--no-plots")) == 0
    assert losses(run_dir) == before
    np.testing.assert_array_equal(np.load(run_dir / "samples.npy"), np.load(tiny_run / "samples.npy"))
