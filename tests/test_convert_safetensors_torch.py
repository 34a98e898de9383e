"""safetensors files between jax_ddpm and PyTorch: the reference's ConditionalModel loads an export
strictly, parameters survive JAX -> file -> torch -> JAX bit for bit, torch samples from an exported
model equal the JAX samples given the same x_T and noise, and `python -m torch_reference.train`
writes files that `python -m jax_ddpm.convert import` takes."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddpm_harness.safetensors_io import load_state_dict
from jax_ddpm.convert import flax_to_state_dict, torch_to_flax
from jax_ddpm.convert import main as convert_main
from jax_ddpm.model import apply_model
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.runner.checkpoint import restore_run
from jax_ddpm.sampling import p_sample_loop
from tests.test_train_torch_reference import reference_argv
from torch_reference import schedule as ref_schedule
from torch_reference.model import ConditionalModel
from torch_reference.safetensors_io import load_model, save_model
from torch_reference.sampling import p_sample_loop as ref_p_sample_loop
from torch_reference.train import main as reference_main

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[1]
# The 100-step chain in float32 on both sides differs by round-off only (summation order differs
# between torch's and XLA's matmuls): the parity table measures 3.3e-6 at most for 500 points, this
# test 3.1e-6. 1e-5 is about 80 float32 eps on values of order 1.
RTOL, ATOL = 1e-5, 1e-5


def restored(run_dir: Path):
    """(config, state) of a run folder's newest checkpoint."""
    config, state, _ = restore_run(run_dir)
    return config, state


def flat_numpy(params: dict) -> dict[str, np.ndarray]:
    return {
        "/".join(str(k.key) for k in path): np.asarray(v) for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def assert_bitwise(a: dict, b: dict) -> None:
    a, b = flat_numpy(a), flat_numpy(b)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def export(run_dir: Path, out: Path, params: str = "raw") -> Path:
    assert convert_main(["export", "--run", str(run_dir), "--out", str(out), "--params", params]) == 0
    return out


@pytest.mark.parametrize("params", ["raw", "ema"])
def test_jax_params_to_file_to_torch_to_jax_is_bitwise(tiny_run, tmp_path, params):
    _, state = restored(tiny_run)
    params_ans = state.ema_params if params == "ema" else state.params
    model = ConditionalModel(100)
    model.load_state_dict(load_file(str(export(tiny_run, tmp_path / "m.safetensors", params))), strict=True)
    assert_bitwise(torch_to_flax(model.state_dict()), params_ans)
    # And back: the torch model saved by torch_reference, imported into a run folder.
    save_model(model, tmp_path / "torch.safetensors", {"params": params})
    assert convert_main(["import", str(tmp_path / "torch.safetensors"), "--out-dir", str(tmp_path / "run")]) == 0
    _, imported = restored(tmp_path / "run")
    assert_bitwise(imported.params, params_ans)


def test_torch_samples_from_an_export_equal_the_jax_samples(tiny_run, tmp_path):
    config, state = restored(tiny_run)
    model = load_model(export(tiny_run, tmp_path / "m.safetensors"))
    rng = np.random.default_rng(5)
    n = 500
    x_T = rng.standard_normal((n, 2)).astype(np.float32)
    zs = rng.standard_normal((config.num_steps, n, 2)).astype(np.float32)
    sched = run_schedule(config)
    out_ans = np.asarray(
        p_sample_loop(
            functools.partial(apply_model, state.params),
            (n, 2),
            config.num_steps,
            sched.alphas,
            sched.betas,
            sched.one_minus_alphas_bar_sqrt,
            x_T=jnp.asarray(x_T),
            zs=jnp.asarray(zs),
        )
    )
    s = ref_schedule.make_schedule(config.schedule, config.num_steps, config.beta_start, config.beta_end)
    with torch.no_grad():
        out_ref = torch.stack(
            ref_p_sample_loop(
                model,
                (n, 2),
                config.num_steps,
                s.alphas,
                s.betas,
                s.one_minus_alphas_bar_sqrt,
                x_T=torch.from_numpy(x_T),
                zs=torch.from_numpy(zs),
            )
        ).numpy()
    assert out_ans.shape == out_ref.shape == (config.num_steps + 1, n, 2)
    np.testing.assert_allclose(out_ans, out_ref, rtol=RTOL, atol=ATOL)
    assert np.abs(out_ref[-1] - out_ref[0]).mean() > 0.1  # the chain really moved the points


def test_torch_reference_train_writes_files_that_jax_ddpm_imports(tmp_path):
    run_dir = tmp_path / "torch"
    assert reference_main(reference_argv(run_dir, "--epochs", "5", "--no-plots")) == 0
    raw, ema = load_model(run_dir / "model.safetensors"), load_model(run_dir / "model_ema.safetensors")
    assert not torch.equal(raw.lin4.bias, ema.lin4.bias)  # the EMA lags behind
    for name, model in (("model.safetensors", raw), ("model_ema.safetensors", ema)):
        _, metadata = load_state_dict(run_dir / name)
        assert metadata["framework"] == "torch" and metadata["params"] == (
            "raw" if name == "model.safetensors" else "ema"
        )
        assert (metadata["schedule"], metadata["num_steps"], metadata["loss"]) == ("sigmoid", "100", "noise")
        out_dir = tmp_path / f"jax_{name}"
        assert convert_main(["import", str(run_dir / name), "--out-dir", str(out_dir)]) == 0
        _, state = restored(out_dir)
        np.testing.assert_array_equal(
            flax_to_state_dict(state.params)["lin2.lin.weight"], model.lin2.lin.weight.detach().numpy()
        )


def test_torch_reference_safetensors_io_never_imports_jax():
    code = (
        "import sys, torch_reference.safetensors_io; "
        "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'flax', 'optax'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout[-2000:] + done.stderr[-2000:]
