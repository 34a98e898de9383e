"""Checkpointer: bitwise round trip, half-written checkpoints ignored, incompatible options named."""

from __future__ import annotations

import dataclasses
import shutil

import jax
import numpy as np
import pytest

from ddpm_harness.config import Config
from jax_ddpm.runner.checkpoint import (
    Checkpointer,
    CheckpointError,
    IncompatibleCheckpointError,
    changed_options,
    check_compatible,
)
from jax_ddpm.runner.chunk import init_states, optimizer_for


def test_round_trip_is_bitwise_for_stacked_seeds(tmp_path):
    config = Config(seeds=2, num_steps=10)
    optimizer = optimizer_for(config)
    state = init_states(config, optimizer)
    # Make every leaf distinct from a fresh state, so a restore that silently re-initialises fails.
    state = jax.tree_util.tree_map(lambda x: x + 1 if x.dtype.kind == "f" else x, state)
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(state, epoch=7, wall_s=1.5, config=config)
    restored, record = Checkpointer(tmp_path).restore(init_states(config, optimizer), config)
    assert record["epoch"] == 7 and record["wall_s"] == 1.5 and record["config"]["seeds"] == 2
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_half_written_checkpoint_is_ignored(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    # What a run killed while saving epoch 30 leaves: orbax's temporary folder, never renamed.
    (run_dir / "checkpoints" / "30.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
    assert Checkpointer(run_dir).latest_epoch() == 20


def test_restore_without_checkpoint_is_an_error(tmp_path):
    config = Config(num_steps=10)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Checkpointer(tmp_path).restore(init_states(config, optimizer_for(Config())), config)


def test_compatibility_names_each_differing_option(tmp_path):
    saved = dataclasses.asdict(Config())
    check_compatible(saved, Config(epochs=2000, out_dir="x", resume=True, lr=1e-4, no_plots=True), tmp_path)
    with pytest.raises(IncompatibleCheckpointError) as err:
        check_compatible(saved, Config(num_steps=50, dataset="circles"), tmp_path)
    assert "--dataset moons (now circles)" in str(err.value) and "--num-steps 100 (now 50)" in str(err.value)
    assert changed_options(saved, Config(lr=1e-4)) == ["--lr 0.001 -> 0.0001"]
