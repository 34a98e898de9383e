"""--conditional in the sweep (--cond-drop a sweep list, a value of the group's one program) and over
--devices (docs/guidance.md): a sweep's configuration equals the single conditional run bit for bit, as
tests/test_sweep.py asks of plain runs; over 2 host devices (a subprocess: XLA_FLAGS before jax starts)
one seed's batches split, and a sweep's models spread, equal one device to float32 round-off. Tiny, CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpm_harness.sweeps import SweepArgs, configurations, groups
from jax_ddpm.runner.checkpoint import restore_run
from jax_ddpm.sweep import main as sweep_main
from jax_ddpm.train import main as train_main
from tests.conftest import assert_same_run, tiny_argv
from tests.test_sweep import folder

REPO = Path(__file__).resolve().parents[1]
SIZES = dict(n_points=128, epochs=10, checkpoint_every=5, log_every=5)
CONDITIONAL = ("--dataset", "eight_gaussians", "--conditional")
DROPS = ("--cond-drop", "0.1", "0.3")


@pytest.fixture(scope="module")
def class_sweep(tmp_path_factory) -> Path:
    """Two configurations of a conditional sweep, one program: --cond-drop 0.1 and 0.3."""
    out = tmp_path_factory.mktemp("class-sweep") / "sweep"
    assert sweep_main(tiny_argv(out, *CONDITIONAL, *DROPS, **SIZES)) == 0
    return out


def test_cond_drop_is_a_value_of_one_group():
    args = SweepArgs(dataset=("eight_gaussians",), conditional=True, cond_drop=(0.1, 0.3), lr=(1e-3, 3e-3))
    configs = configurations(args, Path("/sweep"))
    assert len(configs) == 4 and all(c.config.conditional for c in configs)
    assert [len(g) for g in groups(configs)] == [4]


def test_a_configuration_equals_the_single_conditional_run(class_sweep, tmp_path):
    single = tmp_path / "single"
    assert train_main(tiny_argv(single, *CONDITIONAL, "--cond-drop", "0.3", "--no-plots", **SIZES)) == 0
    assert_same_run(folder(class_sweep, cond_drop=0.3), single)
    # the other configuration dropped other labels: its null class learned from other batches
    (_, a, _), (_, b, _) = (restore_run(folder(class_sweep, cond_drop=p)) for p in (0.1, 0.3))
    null_a, null_b = (np.asarray(s.params["lin1"]["class_embed"]["embedding"][-1]) for s in (a, b))
    assert not np.array_equal(null_a, null_b)


def test_a_hybrid_configuration_equals_the_single_run(tmp_path):
    """--conditional --loss hybrid with --hybrid-lambda a sweep list (a value of the group's program, as
    --cond-drop): each configuration's weight reaches its model, which equals the single run to float32
    round-off, as a plain hybrid sweep does (docs/sweep.md: a traced lambda rounds its products otherwise)."""
    hybrid = (*CONDITIONAL, "--loss", "hybrid", "--sampler", "ddpm")
    sweep, single = tmp_path / "sweep", tmp_path / "single"
    assert sweep_main(tiny_argv(sweep, *hybrid, "--hybrid-lambda", "0.001", "0.1", **SIZES)) == 0
    assert train_main(tiny_argv(single, *hybrid, "--hybrid-lambda", "0.1", "--no-plots", **SIZES)) == 0
    assert_same_run(folder(sweep, hybrid_lambda=0.1), single, exact=False)
    (_, low, _), (_, high, _) = (restore_run(folder(sweep, hybrid_lambda=v)) for v in (0.001, 0.1))
    assert not np.array_equal(np.asarray(low.params["lin4"]["bias"]), np.asarray(high.params["lin4"]["bias"]))


DEVICES_SCRIPT = """
import sys
from jax_ddpm.sweep import main as sweep_main
from jax_ddpm.train import main as train_main
from tests.conftest import tiny_argv
train, sweep, conditional, drops, sizes = sys.argv[1], sys.argv[2], {conditional}, {drops}, {sizes}
assert train_main(tiny_argv(train, *conditional, "--devices", "2", "--no-plots", **sizes)) == 0
assert sweep_main(tiny_argv(sweep, *conditional, *drops, "--devices", "2", **sizes)) == 0
"""


def test_devices_2_equals_one_device(class_sweep, tmp_path):
    """On 2 host devices, a conditional run (one seed's batches and labels split) and the sweep (one
    configuration a device) equal one device's to float32 round-off (docs/sweep.md says why not bit for bit)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    script = DEVICES_SCRIPT.format(conditional=CONDITIONAL, drops=DROPS, sizes=SIZES)
    train, sweep = tmp_path / "train", tmp_path / "sweep"
    argv = [sys.executable, "-c", script, str(train), str(sweep)]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((train / "config.json").read_text())["devices"] == 2
    assert_same_run(train, folder(class_sweep, cond_drop=0.1), exact=False)
    for p in (0.1, 0.3):
        assert_same_run(folder(sweep, cond_drop=p), folder(class_sweep, cond_drop=p), exact=False)
