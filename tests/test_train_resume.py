"""Resume: a run killed with SIGKILL and resumed ends bit for bit where an uninterrupted run ends."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from jax_ddpm.runner.checkpoint import Checkpointer
from jax_ddpm.train import main as train_main
from tests.conftest import assert_same_run, records, tiny_argv, train_killed_after_first_checkpoint
from tests.test_train_e2e import restore

REPO = Path(__file__).resolve().parents[1]
# 32 steps an epoch, 60 epochs in chunks of 10: long enough to kill between checkpoints.
SIZES = dict(batch_size=8, epochs=60, n_samples=64, n_eval=64)


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    train_killed_after_first_checkpoint(tiny_argv(killed, "--no-plots", **SIZES), killed, 10)
    kept = Checkpointer(killed).latest_epoch()
    assert kept is not None and kept < 60, f"the kill came too late to test resume (checkpoint {kept})"

    assert train_main(tiny_argv(killed, "--no-plots", "--resume", **SIZES)) == 0
    whole = tmp_path / "whole"
    assert train_main(tiny_argv(whole, "--no-plots", **SIZES)) == 0

    assert int(restore(killed).epoch) == int(restore(whole).epoch) == 60
    # Parameters, EMA, Adam's moments, keys and counters, one metrics line per epoch (none lost or
    # repeated), samples and the final evaluation: all bitwise equal.
    assert_same_run(killed, whole)


def test_resume_of_finished_run_keeps_its_results(tiny_run, tmp_path):
    """Resuming a finished run trains nothing and leaves metrics and samples as they were."""
    run_dir = tmp_path / "done"
    shutil.copytree(tiny_run, run_dir)
    before = records(run_dir)
    assert train_main(tiny_argv(run_dir, "--resume", "--no-plots")) == 0
    assert records(run_dir) == before
    np.testing.assert_array_equal(np.load(run_dir / "samples.npy"), np.load(tiny_run / "samples.npy"))
