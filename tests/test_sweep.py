"""`python -m jax_ddpm.sweep`: a configuration of a sweep is the single `python -m jax_ddpm.train` run of
the same options bit for bit (parameters, EMA, Adam's state, metrics, samples, evaluation); the
leaderboard follows its metric; a configuration's folder is a run folder; the grid split across
processes and merged gives the leaderboard of one process; --devices 2 changes nothing; a sweep
killed with SIGKILL and resumed equals an uninterrupted one; bad input gets one line. Tiny configs, CPU.
"""

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
import pytest

from ddpm_harness.config import ConfigError
from ddpm_harness.sweeps import (
    SweepArgs,
    check_memory,
    configurations,
    groups,
    score,
)
from jax_ddpm.runner import finish
from jax_ddpm.runner.checkpoint import Checkpointer
from jax_ddpm.runner.distributed import process_share
from jax_ddpm.runner.sweep import MODEL_BLOCKS, launch_of, merge_sweep, model_block, pad_models, run_sweep
from jax_ddpm.sample import main as sample_main
from jax_ddpm.sweep import main as sweep_main
from jax_ddpm.train import main as train_main
from tests.conftest import assert_same_run, records, snapshot, tiny_argv
from tests.test_bad_input import one_error_line

REPO = Path(__file__).resolve().parents[1]
# 128 points in batches of 32: 4 steps an epoch; 10 epochs, one checkpoint half way.
SIZES = dict(n_points=128, epochs=10, checkpoint_every=5, log_every=5)
# 16 configurations in one group: every value option but the hybrid loss's lambda.
REST = [
    "--clip-norm",
    "1",
    "0.3",
    "--ema-decay",
    "0.9",
    "0.99",
    "--schedule",
    "sigmoid",
    "linear",
    "--beta-end",
    "0.02",
]
GRID = ["--lr", "1e-3", "3e-3", *REST]


def train_argv(out_dir: Path, *options: str) -> list[str]:
    """The single run of `options` that a sweep's configuration must equal."""
    return tiny_argv(out_dir, *options, "--no-plots", **SIZES)


def folder(sweep_dir: Path, **options) -> Path:
    """The folder of the configuration with these swept options."""
    rows = json.loads((sweep_dir / "leaderboard.json").read_text())["rows"]
    names = [r["name"] for r in rows if all(r["options"][k] == v for k, v in options.items())]
    assert len(names) == 1, names
    return sweep_dir / names[0]


@pytest.fixture(scope="module")
def sweep_a(tmp_path_factory) -> Path:
    """The 16-configuration grid, one seed each, in one process."""
    out = tmp_path_factory.mktemp("sweep") / "a"
    assert sweep_main(tiny_argv(out, *GRID, **SIZES)) == 0
    return out


def test_grid_groups_and_split():
    args = SweepArgs(lr=(1e-3, 3e-3), ema_decay=(0.9, 0.99), batch_size=(32, 64), clip_norm=(0.0, 1.0))
    configs = configurations(args, Path("/sweep"))
    assert len(configs) == 16 and len({c.name for c in configs}) == 16
    assert {c.config.out_dir for c in configs} == {f"/sweep/{c.name}" for c in configs}
    # Batch size and clipping or not change the program: 4 groups of 4 (lr x EMA decay vmapped).
    assert sorted(len(g) for g in groups(configs)) == [4, 4, 4, 4]
    halves = [process_share(configs, i, 2) for i in range(2)]
    assert sorted(c.index for half in halves for c in half) == list(range(16))
    assert all(sorted(len(g) for g in groups(half)) == [2, 2, 2, 2] for half in halves)  # every group shared out


def test_models_are_trained_in_blocks_on_cpu_and_all_at_once_on_gpu_and_tpu():
    """On CPU a device trains more than 4 models in blocks (lax.map over vmapped blocks) with the least
    padding; sweep_a's 16 models run as 4 blocks of 4, so the tests on it cover the blocked program. On a
    GPU or TPU (and a backend the table does not name) all of a device's models are vmapped at once."""
    assert jax.default_backend() == "cpu" and MODEL_BLOCKS["cpu"] == 4 and model_block(16) == 4
    assert model_block(8, devices=2) is None and model_block(64, devices=2, platform="cpu") == 4
    assert model_block(6) == 3 and model_block(7) == 4 and model_block(4) is None
    for platform in ("gpu", "tpu", "metal"):
        assert model_block(64, platform=platform) is None and model_block(64, 2, platform) is None
    state, hyper = {"w": np.arange(7.0)}, {"lr": np.arange(7.0) / 10}
    padded, padded_hyper, block = pad_models(state, hyper, 7, devices=2)  # 4 a device: no blocks, one copy
    assert block is None and padded["w"].tolist() == [0, 1, 2, 3, 4, 5, 6, 6] and padded_hyper["lr"][-1] == 0.6


def test_configuration_equals_the_single_train_run(sweep_a, tmp_path):
    options = dict(lr=3e-3, clip_norm=0.3, ema_decay=0.99, schedule="linear")
    single = tmp_path / "single"
    assert (
        train_main(
            train_argv(
                single,
                "--lr",
                "3e-3",
                "--clip-norm",
                "0.3",
                "--ema-decay",
                "0.99",
                "--schedule",
                "linear",
                "--beta-end",
                "0.02",
            )
        )
        == 0
    )
    assert_same_run(folder(sweep_a, **options), single)


def test_seeds_and_groups_equal_single_runs(tmp_path):
    """--seeds 2 (a configuration's seeds side by side on the model axis) and two groups (--loss):
    the noise loss bit for bit; the hybrid loss to float32 round-off (see docs/sweep.md)."""
    out = tmp_path / "sweep"
    assert sweep_main(tiny_argv(out, "--lr", "1e-3", "3e-3", "--loss", "noise", "hybrid", "--seeds", "2", **SIZES)) == 0
    for loss, exact in (("noise", True), ("hybrid", False)):
        single = tmp_path / loss
        assert train_main(train_argv(single, "--lr", "3e-3", "--loss", loss, "--seeds", "2")) == 0
        assert_same_run(folder(out, lr=3e-3, loss=loss), single, exact=exact)


@pytest.mark.parametrize("preset", ["recommended", "recommended-diffusion"])
def test_a_presets_sweep_equals_its_single_runs(tmp_path, preset):
    """--preset in a sweep sets what it sets in a run, --normalize included (the sweep once had no
    --normalize, and `sweep --preset recommended` stopped with an AttributeError)."""
    out = tmp_path / "sweep"
    assert sweep_main(tiny_argv(out, "--preset", preset, "--lr", "1e-3", "3e-3", **SIZES)) == 0
    single = tmp_path / "single"
    assert train_main(train_argv(single, "--preset", preset, "--lr", "3e-3")) == 0
    config = json.loads((single / "config.json").read_text())
    assert config["normalize"] and config["method"] == ("flow" if preset == "recommended" else "diffusion")
    assert_same_run(folder(out, lr=3e-3), single)


def test_batched_finish_equals_each_configurations_single_finish(tmp_path, monkeypatch):
    """A group's finish is one batch (finish.finish_runs): every model's samples drawn together, the runs of
    each sampling setup in one call (here two: --sampler tutorial and ddim in one group), all scored in one
    program. Each configuration's samples and evaluation equal its single run's finish bit for bit on the CPU:
    each model's chain is its own program's (tests/test_batched_sampling.py), and the CPU scores one model at
    a time (scoring.VMAP_MODELS), the same program whatever K. (A vmapped batch of scores differs from K single
    scores by float32 rounding only: rtol 1e-6, tests/test_device_metrics.py.) A finish budget of one run
    at a time gives the same folders. The sweep's time breakdown is in leaderboard.json."""
    grid = ["--lr", "1e-3", "3e-3", "--sampler", "tutorial", "ddim", "--seeds", "2"]
    together = tmp_path / "together"
    assert sweep_main(tiny_argv(together, *grid, **SIZES)) == 0
    timings = json.loads((together / "leaderboard.json").read_text())["timings"]
    assert {"compile", "training_loop", "sampling", "final_evaluation", "writing", "merge"} <= set(timings)
    for sampler in ("tutorial", "ddim"):
        single = tmp_path / sampler
        assert train_main(train_argv(single, "--lr", "3e-3", "--sampler", sampler, "--seeds", "2")) == 0
        assert_same_run(folder(together, lr=3e-3, sampler=sampler), single)
    monkeypatch.setattr(finish, "FINISH_BYTES", 1)
    apart = tmp_path / "apart"
    assert sweep_main(tiny_argv(apart, *grid, **SIZES)) == 0
    for name in json.loads((together / "leaderboard.json").read_text())["rows"]:
        assert_same_run(together / name["name"], apart / name["name"])


def test_every_configuration_gets_its_pictures(tmp_path):
    """With --plots each configuration's pictures are drawn after its group's batch, one at a time: in a
    group of two and in a group of one."""
    for grid in (["--lr", "1e-3", "3e-3"], ["--lr", "1e-3"]):
        out = tmp_path / str(len(grid))
        assert sweep_main(tiny_argv(out, *grid, "--plots", **SIZES)) == 0
        for row in json.loads((out / "leaderboard.json").read_text())["rows"]:
            for name in ("data.png", "forward.png", "reverse.png", "loss.png", "diffusion.gif"):
                assert (out / row["name"] / name).stat().st_size > 1000, (row["name"], name)


def test_a_diverged_configuration_stops_and_the_others_go_on(tmp_path, capsys):
    """--lr 1e6 overflows: that configuration stops with one warning and a summary.json saying where (its
    metrics.jsonl up to the epoch before), while the other, trained beside it in the same program, still
    equals its single train run bit for bit."""
    out = tmp_path / "sweep"
    assert sweep_main(tiny_argv(out, "--lr", "1e-3", "1e6", **SIZES)) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "the others go on" in warnings[0], warnings
    bad = folder(out, lr=1e6)
    summary = json.loads((bad / "summary.json").read_text())
    assert f"{bad.name}: the loss became NaN or inf at epoch {summary['diverged_at']};" in warnings[0]
    assert [r["epoch"] for r in records(bad)] == list(range(1, summary["diverged_at"]))
    assert summary["evaluation"]["raw"]["sliced_w2"] is None
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]  # the diverged one ranked last, unscored
    assert [(r["name"], r["score"] is None) for r in rows] == [(folder(out, lr=1e-3).name, False), (bad.name, True)]
    single = tmp_path / "single"
    assert train_main(train_argv(single, "--lr", "1e-3")) == 0
    assert_same_run(folder(out, lr=1e-3), single)


def test_leaderboard_follows_its_metric(sweep_a):
    board = json.loads((sweep_a / "leaderboard.json").read_text())
    rows = board["rows"]
    assert len(rows) == 16 and board["rank_by"] == "sliced_w2"
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores) and [r["rank"] for r in rows] == list(range(1, 17))
    for row in rows:  # the better of raw and EMA, each the mean over seeds of the evaluation in summary.json
        summary = json.loads((sweep_a / row["name"] / "summary.json").read_text())
        assert row["score"] == min(summary["evaluation"]["raw"]["sliced_w2"], summary["evaluation"]["ema"]["sliced_w2"])
        assert row["floor"]["sliced_w2"] < row["score"] and row["ceiling"]["sliced_w2"] > row["floor"]["sliced_w2"]
    by_ema_mmd = sorted(rows, key=lambda r: r["metrics"]["ema_mmd2"]["mean"])
    assert [r["name"] for r in by_ema_mmd] == [r["name"] for r in sorted(rows, key=lambda r: score(r, "ema_mmd2"))]
    table = [line for line in (sweep_a / "leaderboard.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert [int(line.split("|")[1]) for line in table] == list(range(1, 17))
    assert (sweep_a / "grid.png").stat().st_size > 1000


def test_a_configuration_is_a_run_folder(sweep_a, tmp_path):
    run_dir = folder(sweep_a, lr=1e-3, clip_norm=1.0, ema_decay=0.9, schedule="sigmoid")
    out = tmp_path / "again.npy"
    assert sample_main(["--run", str(run_dir), "--n", "128", "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), np.load(run_dir / "samples.npy"))
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["seeds"], config["lr"], config["epochs"]) == (1, 1e-3, 10)
    assert Checkpointer(run_dir).latest_epoch() == 10


def test_split_across_processes_then_merged_equals_one_process(sweep_a, tmp_path):
    out = tmp_path / "split"
    args = sweep_args(tiny_argv(out, *GRID, **SIZES))
    assert run_sweep(args, process_id=1, num_processes=2) is None  # the second half first: no order assumed
    assert run_sweep(args, process_id=0, num_processes=2) is None
    merged = merge_sweep(args)
    one = json.loads((sweep_a / "leaderboard.json").read_text())["rows"]
    assert [r["name"] for r in merged] == [r["name"] for r in one]
    assert [r["metrics"] for r in merged] == [r["metrics"] for r in one]


def test_two_processes_split_the_grid_and_process_zero_merges(sweep_a, tmp_path):
    """`--num-processes 2 --process-id 0|1` as two real processes into one folder: each trains 8 of the 16
    configurations, process 0 waits for the other's and merges; the leaderboard is one process's, row for
    row (the names, every metric), and a configuration of process 1 equals one process's bit for bit."""
    out = tmp_path / "two"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jax_ddpm.sweep"]
            + tiny_argv(out, *GRID, "--num-processes", "2", "--process-id", str(i), **SIZES),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (1, 0)
    ]
    try:
        outputs = [proc.communicate(timeout=600) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr
    assert "this process trains 8" in outputs[0][0] and "leaderboard.md" not in outputs[0][0]
    assert "best of 16" in outputs[1][0]
    rows, one = (json.loads((d / "leaderboard.json").read_text())["rows"] for d in (out, sweep_a))
    assert [(r["name"], r["metrics"]) for r in rows] == [(r["name"], r["metrics"]) for r in one]
    trained_by_one = folder(sweep_a, lr=1e-3, clip_norm=1.0, ema_decay=0.99, schedule="sigmoid").name
    assert int(trained_by_one[1:3]) % 2 == 1  # an odd index: dealt to process 1
    assert_same_run(out / trained_by_one, sweep_a / trained_by_one)


def test_launch_from_options_or_srun_variables():
    srun = dict(
        SLURM_JOB_ID="1", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2", SLURM_PROCID="1", SLURM_LOCALID="1"
    )
    assert launch_of(SweepArgs(out_dir="/sweep"), environ={}) == (0, 1)
    assert launch_of(SweepArgs(out_dir="/sweep"), environ=srun) == (1, 2)
    assert launch_of(SweepArgs(out_dir="/sweep", num_processes=3, process_id=2), environ=srun) == (2, 3)
    with pytest.raises(ConfigError, match="needs --out-dir"):
        launch_of(SweepArgs(), environ=srun)


def test_devices_2_equals_one_device(sweep_a, tmp_path):
    """8 models over 2 host devices (4 each, in a subprocess: host devices need XLA_FLAGS before jax starts):
    the same models to float32 round-off (shard_map compiles each device's share as a program of its own,
    which XLA:CPU fuses and so rounds differently; see docs/sweep.md)."""
    out = tmp_path / "devices"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-m", "jax_ddpm.sweep", *tiny_argv(out, *REST, "--devices", "2", "--lr", "3e-3", **SIZES)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    # --lr 3e-3 alone: the grid's other 8 configurations, 4 on each device.
    for name in (r["name"] for r in json.loads((out / "leaderboard.json").read_text())["rows"]):
        options = json.loads((out / name / "config.json").read_text())
        same = folder(
            sweep_a,
            lr=3e-3,
            clip_norm=options["clip_norm"],
            ema_decay=options["ema_decay"],
            schedule=options["schedule"],
        )
        assert_same_run(out / name, same, exact=False)


def sweep_args(argv: list[str]) -> SweepArgs:
    from ddpm_harness.cli import parse

    return parse(SweepArgs, argv, "test")


# Two groups (batch sizes 8 and 16) of two configurations: the first group finishes, the kill lands in the second.
KILL_SIZES = dict(batch_size=(16, 8), epochs=40, n_samples=64, n_eval=64)
KILL_GRID = ["--lr", "1e-3", "3e-3"]


def test_resume_after_sigkill_equals_uninterrupted_sweep(tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jax_ddpm.sweep", *tiny_argv(killed, *KILL_GRID, **KILL_SIZES)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        second = None
        while second is None or not (second / "checkpoints" / "10").is_dir():
            assert proc.poll() is None, (
                f"the sweep ended before the second group's first checkpoint: {proc.stderr.read()}"
            )
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            second = next(iter(sorted(killed.glob("c02-*"))), None)
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    group_two = sorted(killed.glob("c02-*")) + sorted(killed.glob("c03-*"))
    kept = [Checkpointer(d).latest_epoch() for d in group_two]
    assert all(k is None or k < 40 for k in kept), f"the kill came too late to test resume ({kept})"
    finished = {d.name: snapshot(d) for d in sorted(killed.glob("c0[01]-*"))}
    assert len(finished) == 2 and all("summary.json" in files for files in finished.values())

    assert sweep_main(tiny_argv(killed, *KILL_GRID, "--resume", **KILL_SIZES)) == 0
    assert {d.name: snapshot(d) for d in sorted(killed.glob("c0[01]-*"))} == finished  # not retrained, untouched
    whole = tmp_path / "whole"
    assert sweep_main(tiny_argv(whole, *KILL_GRID, **KILL_SIZES)) == 0
    for run_dir in sorted(whole.glob("c0*")):
        assert_same_run(killed / run_dir.name, run_dir)
    rows = [json.loads((d / "leaderboard.json").read_text())["rows"] for d in (killed, whole)]
    assert [(r["name"], r["metrics"]) for r in rows[0]] == [(r["name"], r["metrics"]) for r in rows[1]]


BAD = [
    (["--lr"], "--lr"),
    (["--out-dir", "a", "b"], "--out-dir takes one value, got 2"),
    (["--seeds", "2", "4"], "--seeds takes one value, got 2"),
    (["--lr", "1e-3", "1e-3"], "--lr repeats a value"),
    (["--lr", "1e-3", "-1"], "--lr must be positive"),
    (["--seeds", "100000000"], "needs about"),
    (["--num-processes", "2"], "--num-processes and --process-id go together"),
    (["--num-processes", "2", "--process-id", "2"], "--process-id must lie in 0 .. --num-processes - 1, got 2 of 2"),
    (["--merge-timeout", "0"], "--merge-timeout must be a positive number"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line(extra, message, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert sweep_main(tiny_argv(out, *extra, **SIZES)) == 2
    assert message in one_error_line(capsys)
    assert not out.exists()


def test_resume_refuses_another_grid_and_keeps_the_sweep(sweep_a, tmp_path, capsys):
    assert sweep_main(tiny_argv(tmp_path / "none", "--lr", "1e-3", "--resume", **SIZES)) == 2
    assert "holds no sweep" in one_error_line(capsys)
    before = snapshot(sweep_a)
    assert sweep_main(tiny_argv(sweep_a, *GRID, "--lr", "1e-3", "--resume", **SIZES)) == 2
    assert "was started with --lr" in one_error_line(capsys)
    assert sweep_main(tiny_argv(sweep_a, *GRID, **SIZES)) == 2  # no --resume: never reused
    assert "already exists" in one_error_line(capsys)
    assert snapshot(sweep_a) == before


def test_memory_estimate_refuses_a_grid_that_does_not_fit():
    configs = configurations(SweepArgs(lr=(1e-3, 3e-3), seeds=8), Path("/sweep"))
    check_memory(configs, available=2**40)  # fits
    with pytest.raises(Exception, match=r"16 models vmapped at once.*needs about 0\.\d GiB, more than the 0\.0 GiB"):
        check_memory(configs, available=2**20)
