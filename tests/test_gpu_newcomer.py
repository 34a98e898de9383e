"""`python -m benchmarks.gpu_newcomer --dry-run`: every step of the newcomer's GPU check runs at tiny sizes
on the CPU, its summary is read and the report written, so that the first GPU run does not fail on a
typo (a smoke test: the numbers of a dry run mean nothing, so no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_newcomer

pytestmark = pytest.mark.torch  # the parity step compares with the PyTorch reference

ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    "default run, cold cache",
    "default run, warm cache",
    "--preset recommended, cold cache",
    "--preset recommended, warm cache",
    "4-model sweep, cold cache",
    "parity suite",
    "default run, cold cache, no program options",
]
PHASES = ("imports", "set_up", "compile", "training_loop", "sampling", "final_evaluation")


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "benchmarks.gpu_newcomer", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_dry_run_runs_every_step_and_writes_the_report(tmp_path):
    done = _run("--dry-run", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_newcomer-dry-run.json", "gpu_newcomer-dry-run.md"]
    results = json.loads((tmp_path / "gpu_newcomer-dry-run.json").read_text())
    assert results["dry_run"] and not results["failed"] and not results["skipped"]
    machine = results["machine"]
    assert machine["backend"] == "cpu" and machine["gpu"] is None and machine["jax"] and machine["cpu_model"]
    steps = {row["name"]: row for row in results["steps"]}
    assert list(steps) == STEPS and all(row["status"] == "ok" for row in steps.values())
    assert [steps[n]["cache"] for n in STEPS] == ["cold", "warm", "cold", "warm", "cold", "-", "cold"]
    for name in STEPS[:4] + STEPS[6:]:  # each run's summary.json read: its phases, and wall / training loop
        row = steps[name]
        assert set(PHASES) <= set(row["timings"]) and row["summary"]["epochs"] == 2, name
        assert row["x_training_loop"] == pytest.approx(row["wall_s"] / row["timings"]["training_loop"])
        assert row["wall_s"] > sum(row["timings"][k] for k in ("imports", "compile", "training_loop")), name
    sweep = steps["4-model sweep, cold cache"]
    assert sweep["models"] == 4 and sweep["timings"] == sweep["sweep_own_breakdown"]  # leaderboard.json's
    assert {"compile", "training_loop", "sampling", "final_evaluation", "writing", "merge"} <= set(sweep["timings"])
    assert sweep["sampled_and_scored_s"] == pytest.approx(
        sweep["timings"]["sampling"] + sweep["timings"]["final_evaluation"]
    )
    assert sweep["timings"]["training_loop"] > 0 and sweep["x_training_loop"] > 1
    parity = steps["parity suite"]
    assert parity["counts"]["tests"] == 2 and not parity["failures"] and parity["precision"] == "highest"
    assert [t["target"] for t in results["targets"]] == [
        "default run, cold cache: wall <= 2.0x its training loop",
        "default run, warm cache: wall <= 1.3x its training loop",
        "--preset recommended, cold cache: wall <= 2.0x its training loop",
        "--preset recommended, warm cache: wall <= 1.3x its training loop",
        "4 models sampled and scored in <= 10 s",
        "the whole check within 6 minutes",
    ]
    assert all(t["met"] in (True, False) for t in results["targets"])  # every number measured

    report = (tmp_path / "gpu_newcomer-dry-run.md").read_text()
    for text in ("**DRY RUN**", "## Machine", "## Steps", "## Targets", "2 passed, 0 failed", "JAX_DDPM_CACHE_DIR"):
        assert text in report, text
    rows = [line for line in report.splitlines() if line.startswith("| default run, cold cache |")]
    assert len(rows) == 1 and rows[0].count(" | ") == 7 and "Time: imports" in rows[0]  # 8 columns, all filled


def test_bad_requests_get_one_error_line(tmp_path):
    done = _run("--dry-run", timeout=120)  # a dry run never writes beside the committed results
    assert done.returncode == 2 and "error: --dry-run needs --out" in done.stderr
    done = _run("--out", str(tmp_path), timeout=300)  # this machine has no GPU
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: JAX runs on cpu, not a GPU (--dry-run --out DIR: the CPU check)"
    ]
    assert not list(tmp_path.iterdir())


def test_targets_are_judged_per_step_and_missing_numbers_are_not_measured():
    rows = [
        dict(name="cold", kind="run", max_x=2.0, status="ok", wall_s=9.0, timings=dict(training_loop=5.0)),
        dict(name="warm", kind="run", max_x=1.3, status="timed out", wall_s=45.0),
        dict(name="sweep", kind="sweep", max_x=None, status="ok", models=256, sampled_and_scored_s=12.5),
    ]
    rows[0]["x_training_loop"] = 1.8
    targets = {t["target"]: t for t in gpu_newcomer.targets(rows, wall_s=300.0)}
    assert targets["cold: wall <= 2.0x its training loop"]["met"] is True
    warm = targets["warm: wall <= 1.3x its training loop"]
    assert warm["met"] is None and "timed out" in warm["measured"]
    assert targets["256 models sampled and scored in <= 10 s"]["met"] is False
    assert targets["the whole check within 6 minutes"]["met"] is True
    assert gpu_newcomer.n_models(("--lr", "1e-3", "3e-3", "--ema-decay", "0.9", "0.999", "--seeds", "64")) == 256
    assert gpu_newcomer.steps(dry_run=False)[4].name == "256-model sweep, cold cache"
