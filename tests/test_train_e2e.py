"""`python -m jax_ddpm.train` end to end on a tiny config: every output, determinism, one compile."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from PIL import Image

from ddpm_harness.config import Config
from ddpm_harness.data import held_out_for
from ddpm_harness.metrics import evaluate
from ddpm_harness.runs import read_config
from jax_ddpm.runner.checkpoint import Checkpointer, restore_run
from jax_ddpm.runner.chunk import init_states, optimizer_for
from jax_ddpm.train import main as train_main
from tests.conftest import STEPS_PER_EPOCH, tiny_argv
from tests.test_device_metrics import ATOL_PAIRS, assert_calibration_matches_numpy

OUTPUTS = (
    "config.json",
    "metrics.jsonl",
    "samples.npy",
    "summary.json",
    "data.png",
    "forward.png",
    "reverse.png",
    "loss.png",
    "diffusion.gif",
)


def restore(run_dir):
    """The TrainState of a run's newest checkpoint."""
    return restore_run(run_dir)[1]


def test_tiny_run_writes_every_output(tiny_run):
    for name in OUTPUTS:
        assert (tiny_run / name).is_file() and (tiny_run / name).stat().st_size > 0, name
    config = read_config(tiny_run)
    assert (config.n_points, config.epochs, config.batch_size) == (256, 20, 32)
    assert json.loads((tiny_run / "config.json").read_text())["framework"] == "jax"

    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 21))
    assert [r["step"] for r in records] == [STEPS_PER_EPOCH * e for e in range(1, 21)]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["last_loss"]) and r["wall_s"] >= 0 for r in records)
    # Without --eval-every, metrics.jsonl holds no evaluation: the final one is in summary.json.
    assert not any("raw_sliced_w2" in r for r in records)

    samples = np.load(tiny_run / "samples.npy")
    assert samples.shape == (128, 2) and samples.dtype == np.float32 and np.isfinite(samples).all()

    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["epochs"] == 20 and summary["steps"] == 20 * STEPS_PER_EPOCH
    assert summary["final_loss"] == records[-1]["loss"]
    assert summary["compile_s"] > 0 and summary["steps_per_s"] > 0
    # The final evaluation scores the --n-samples samples (the saved ones for the raw parameters),
    # beside the floor and ceiling calibrated at that same n.
    assert set(summary["evaluation"]) == {"raw", "ema"}
    reference = held_out_for(config, 128)
    # scored on the device (jax_ddpm.runner.scoring, float32 pair sums) against the numpy oracle:
    # the MMD^2 and energy differ by float32 rounding, within tests/test_device_metrics.py's tolerance
    assert summary["evaluation"]["raw"] == pytest.approx(evaluate(samples, reference), rel=1e-6, abs=ATOL_PAIRS)
    # the floor and ceiling scored by the same program, against numpy's within the same tolerances
    assert summary["calibration"].pop("n") == 128
    assert_calibration_matches_numpy(summary["calibration"], "moons", 128)
    assert summary["sampling"] == dict(sampler="tutorial", nfe=100, prediction="eps")

    assert Checkpointer(tiny_run).latest_epoch() == 20
    assert sorted(p.name for p in (tiny_run / "checkpoints").iterdir()) == ["10", "20"]

    gif = Image.open(tiny_run / "diffusion.gif")
    assert gif.n_frames == 200 and gif.info["duration"] == 100 and gif.info["loop"] == 0
    for name in ("data.png", "forward.png", "reverse.png", "loss.png"):
        assert Image.open(tiny_run / name).format == "PNG"


def test_training_moves_parameters_and_ema_lags_behind(tiny_run):
    state = restore(tiny_run)
    init = init_states(Config(n_points=256), optimizer_for(Config()))
    assert int(state.opt_step) == 20 * STEPS_PER_EPOCH and int(state.epoch) == 20
    moved = jax.tree_util.tree_map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), state.params, init.params
    )
    assert min(jax.tree_util.tree_leaves(moved)) > 0  # every parameter was trained
    # EMA with mu = 0.9 differs from the raw parameters after the last step.
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(state.ema_params))
    )


def test_same_seed_same_numbers_and_chunk_compiles_once(tiny_run, tmp_path):
    compiles = []

    def on_event(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        # The persistent cache off: a cache hit would (rightly) compile nothing at all.
        assert train_main(tiny_argv(tmp_path / "again", "--no-plots", "--no-compile-cache")) == 0
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    # Two chunks of 10 epochs ran; the chunk program was compiled once (ahead of time).
    assert sum("chunk" in name for name in compiles) == 1, compiles  # named "jit(chunk)"

    np.testing.assert_array_equal(np.load(tmp_path / "again" / "samples.npy"), np.load(tiny_run / "samples.npy"))
    ours = [json.loads(line) for line in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["loss"], r["last_loss"]) for r in ours] == [(r["loss"], r["last_loss"]) for r in theirs]
    again, first = restore(tmp_path / "again"), restore(tiny_run)
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(first)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_another_seed_other_numbers(tiny_run, tmp_path):
    assert train_main(tiny_argv(tmp_path / "seed1", "--seed", "1", "--no-plots", "--epochs", "10")) == 0
    other = np.load(tmp_path / "seed1" / "samples.npy")
    assert other.shape == (128, 2) and not np.array_equal(other, np.load(tiny_run / "samples.npy"))


def test_two_seeds_write_per_seed_outputs(tmp_path):
    run_dir = tmp_path / "seeds"
    assert train_main(tiny_argv(run_dir, "--seeds", "2", "--epochs", "10", "--eval-every", "5", "--no-plots")) == 0
    samples = np.load(run_dir / "samples.npy")
    assert samples.shape == (2, 128, 2) and not np.array_equal(samples[0], samples[1])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(len(r["loss"]) == 2 and len(r["last_loss"]) == 2 for r in records)
    assert records[-1]["loss"][0] != records[-1]["loss"][1]
    # --eval-every 5: raw and EMA sample quality per seed at epochs 5 and 10, nowhere else.
    assert [r["epoch"] for r in records if "raw_mmd2" in r] == [5, 10]
    assert len(records[4]["ema_sliced_w2"]) == 2 and records[4]["raw_mmd2"] != records[-1]["raw_mmd2"]
    summary = json.loads((run_dir / "summary.json").read_text())
    np.testing.assert_allclose(summary["final_loss"], np.mean(records[-1]["loss"]), rtol=1e-12)
    np.testing.assert_allclose(summary["final_loss_std"], np.std(records[-1]["loss"]), rtol=1e-12)
