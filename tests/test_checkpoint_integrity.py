"""A checkpoint is never trusted half-written: a truncated, partly deleted or garbled newest
checkpoint is detected on --resume (its files against the manifest written after it), reported in
one warning line and set aside, and the run resumes from the one before, ending bit for bit where
an uninterrupted run ends."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest

from jax_ddpm.runner.checkpoint import CheckpointError, restore_run
from tests.conftest import tiny_argv, train_main


def damage_truncate(folder):
    victim = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])


def damage_delete(folder):
    next(p for p in sorted(folder.rglob("*")) if p.is_file()).unlink()


def damage_garble(folder):
    victim = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    victim.write_bytes(bytes(data))


def damage_manifest(folder):
    """The run died after orbax finished the checkpoint but before its manifest was written."""
    (folder.parent.parent / "checkpoint_manifests" / f"{folder.name}.json").unlink()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full") / "run"
    assert train_main(tiny_argv(run_dir, "--no-plots")) == 0
    return run_dir


@pytest.mark.parametrize("damage", [damage_truncate, damage_delete, damage_garble, damage_manifest])
def test_bad_newest_checkpoint_falls_back_to_the_previous(uninterrupted, tmp_path, capsys, damage):
    run_dir = tmp_path / "run"
    assert train_main(tiny_argv(run_dir, "--no-plots")) == 0  # checkpoints at epochs 10 and 20
    damage(run_dir / "checkpoints" / "20")
    capsys.readouterr()
    assert train_main(tiny_argv(run_dir, "--no-plots", "--resume")) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning: checkpoint 20") and "using checkpoint 10" in err[0], err
    assert len([p for p in (run_dir / "corrupt_checkpoints").glob("20-*") if p.is_dir()]) == 1  # kept, not deleted
    # Resumed from epoch 10, the run ends where the uninterrupted one ends.
    for a, b in zip(
        jax.tree_util.tree_leaves(restore_run(run_dir)[1]), jax.tree_util.tree_leaves(restore_run(uninterrupted)[1])
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.load(run_dir / "samples.npy"), np.load(uninterrupted / "samples.npy"))


def test_sampling_reads_the_previous_checkpoint_without_moving_anything(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train_main(tiny_argv(run_dir, "--no-plots")) == 0
    shutil.rmtree(run_dir / "checkpoints" / "20" / "state")
    capsys.readouterr()
    config, state, record = restore_run(run_dir)
    assert record["epoch"] == 10
    assert "warning: checkpoint 20" in capsys.readouterr().err
    assert (run_dir / "checkpoints" / "20").is_dir() and not (run_dir / "corrupt_checkpoints").exists()


def test_an_unfinished_only_checkpoint_resumes_from_the_beginning(uninterrupted, tmp_path, capsys):
    """Killed between orbax's rename of its first checkpoint and the manifest: nothing was ever kept, so
    --resume sets that checkpoint aside with one warning and trains from epoch 0, like a run killed
    before any checkpoint; it ends where the uninterrupted run ends."""
    run_dir = tmp_path / "run"
    assert train_main(tiny_argv(run_dir, "--no-plots", "--epochs", "10")) == 0
    damage_manifest(run_dir / "checkpoints" / "10")
    capsys.readouterr()
    assert train_main(tiny_argv(run_dir, "--no-plots", "--resume")) == 0
    out, err = capsys.readouterr()
    err = [line for line in err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning: checkpoint 10") and "no manifest" in err[0], err
    assert "from the beginning" in out
    assert len([p for p in (run_dir / "corrupt_checkpoints").glob("10-*") if p.is_dir()]) == 1
    for a, b in zip(
        jax.tree_util.tree_leaves(restore_run(run_dir)[1]), jax.tree_util.tree_leaves(restore_run(uninterrupted)[1])
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.load(run_dir / "samples.npy"), np.load(uninterrupted / "samples.npy"))


def test_sampling_refuses_a_run_whose_only_checkpoint_is_unfinished(tmp_path):
    run_dir = tmp_path / "run"
    assert train_main(tiny_argv(run_dir, "--no-plots", "--epochs", "10")) == 0
    damage_manifest(run_dir / "checkpoints" / "10")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        restore_run(run_dir)
