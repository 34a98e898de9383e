"""`python -m torch_reference.train`: the tutorial's eager loop writing the JAX CLI's files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import STEPS_PER_EPOCH, tiny_argv
from tests.test_bad_input import one_error_line
from torch_reference.train import main as reference_main

pytestmark = pytest.mark.torch


def test_tiny_reference_run_writes_the_same_files(tiny_run, tmp_path):
    run_dir = tmp_path / "torch"
    assert reference_main(tiny_argv(run_dir, "--epochs", "5")) == 0
    for name in ("config.json", "metrics.jsonl", "samples.npy", "summary.json", "data.png", "forward.png",
                 "reverse.png", "loss.png", "diffusion.gif"):
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


def test_jax_only_option_is_refused(tmp_path, capsys):
    assert reference_main(tiny_argv(tmp_path / "run", "--seeds", "2")) == 2
    assert "--seeds 2 is not supported by torch_reference.train" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()
