"""`python -m torch_reference.train`: the tutorial's eager loop writing the JAX CLI's files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpm_harness.metrics import calibrate
from tests.conftest import STEPS_PER_EPOCH, TINY
from tests.test_bad_input import one_error_line
from tests.test_device_metrics import assert_calibration_matches_numpy
from torch_reference.train import main as reference_main

pytestmark = pytest.mark.torch


REPO = Path(__file__).resolve().parents[1]


def reference_argv(out_dir: Path, *extra: str) -> list[str]:
    """The tiny run's options without --checkpoint-every (the reference writes no checkpoints)."""
    i = TINY.index("--checkpoint-every")
    return TINY[:i] + TINY[i + 2 :] + ["--out-dir", str(out_dir), *extra]


def test_tiny_reference_run_writes_the_same_files(tiny_run, tmp_path):
    run_dir = tmp_path / "torch"
    assert reference_main(reference_argv(run_dir, "--epochs", "5")) == 0
    for name in (
        "config.json",
        "metrics.jsonl",
        "samples.npy",
        "summary.json",
        "data.png",
        "forward.png",
        "reverse.png",
        "loss.png",
        "diffusion.gif",
    ):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    jax_config = json.loads((tiny_run / "config.json").read_text())
    assert config.pop("framework") == "torch" and jax_config.pop("framework") == "jax"
    assert set(config) == set(jax_config)

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    jax_record = json.loads((tiny_run / "metrics.jsonl").read_text().splitlines()[0])
    assert set(records[0]) == set(jax_record)
    assert [r["step"] for r in records] == [STEPS_PER_EPOCH * e for e in range(1, 6)]
    assert all(np.isfinite(r["loss"]) for r in records)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["framework"] == "torch" and summary["compile_s"] is None and summary["steps"] == 5 * STEPS_PER_EPOCH
    assert set(summary) == set(json.loads((tiny_run / "summary.json").read_text()))
    assert np.load(run_dir / "samples.npy").shape == (128, 2)
    # The final evaluation scores the 128 samples, beside the floor and ceiling at n = 128 (as the JAX CLI).
    assert summary["calibration"]["n"] == 128 and set(summary["evaluation"]) == {"raw", "ema"}
    # The reference scores with numpy, so its floor is numpy's; JAX's, scored on the device, equals it
    # within the device metrics' tolerances.
    calibrated = {k: summary["calibration"][k] for k in ("floor", "ceiling")}
    assert calibrated == calibrate("moons", 128, 0.1, 0)
    jax_summary = json.loads((tiny_run / "summary.json").read_text())
    assert_calibration_matches_numpy({k: jax_summary["calibration"][k] for k in ("floor", "ceiling")}, "moons", 128)


@pytest.mark.parametrize("option, value", [("--seeds", "2"), ("--eval-every", "5"), ("--checkpoint-every", "10")])
def test_jax_only_option_is_refused(tmp_path, capsys, option, value):
    assert reference_main(reference_argv(tmp_path / "run", option, value)) == 2
    assert f"{option} {value} is not supported by torch_reference.train" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


# Run the reference CLI with every JAX package unimportable: the oracle must not need the system it checks.
NO_JAX = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib", "flax", "optax", "orbax", "jax_ddpm"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Refuse())
from torch_reference.train import main
code = main(sys.argv[1:])
assert not any(m.split(".")[0] in ("jax", "jax_ddpm") for m in sys.modules), "JAX was imported"
sys.exit(code)
"""


def test_reference_cli_runs_with_jax_unimportable(tmp_path):
    run_dir = tmp_path / "torch"
    done = subprocess.run(
        [sys.executable, "-c", NO_JAX, *reference_argv(run_dir, "--epochs", "2", "--no-plots")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.load(run_dir / "samples.npy").shape == (128, 2)
    assert "sliced_w2" in json.loads((run_dir / "summary.json").read_text())["evaluation"]["raw"]
