"""Flow matching (--method flow) without torch: its options, its samplers against hand-written numpy
loops, its likelihood against a closed form, and a tiny run that resumes bit for bit after SIGKILL.

Gaussian data N(m, s^2 I) with x_0 ~ N(0, I) and sigma = 0: x_t = (1 - t) x_0 + t x_1 is Gaussian,
N(t m, sigma_t^2 I) with sigma_t^2 = (1 - t)^2 + t^2 s^2, and the exact marginal velocity
E[x_1 - x_0 | x_t = x] is the affine field

    u_t(x) = m + (t s^2 - (1 - t)) / sigma_t^2 (x - t m),

whose flow maps x_0 to x_1 = m + s x_0. So the ODE's NLL of a point is exactly -log N(x; m, s^2 I).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from fractions import Fraction
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from ddpm_harness.config import Config, ConfigError, SamplerOptions, validate
from ddpm_harness.runs import read_config
from ddpm_harness.safetensors_io import load_state_dict, save_state_dict
from ddpm_harness.sweeps import SweepArgs, configurations
from jax_ddpm import speed
from jax_ddpm.convert import main as convert_main
from jax_ddpm.objectives.objective import loss_fn_for, noise_fn_for
from jax_ddpm.objectives.step import batch_noise, noise_loss
from jax_ddpm.runner.checkpoint import Checkpointer
from jax_ddpm.runner.finish import flow_path_frames
from jax_ddpm.sample import main as sample_main
from jax_ddpm.samplers import flow, likelihood
from jax_ddpm.sweep import main as sweep_main
from parity_tests.precision import FLOAT64
from tests.conftest import assert_same_run, tiny_argv, train_killed_after_first_checkpoint, train_main

REPO = Path(__file__).resolve().parents[1]
M, S = np.array([1.5, -0.5]), 0.4
T = 100
FLOW = Config(method="flow", sampler="euler")


# --- options ---------------------------------------------------------------------------------


def test_diffusion_is_the_default_and_keeps_its_loss_and_draws():
    config = Config()
    assert config.method == "diffusion" and config.coupling == "independent" and config.flow_sigma == 0.0
    assert loss_fn_for(config) is noise_loss and noise_fn_for(config) is batch_noise


@pytest.mark.parametrize(
    "fields, says",
    [
        (dict(method="flow"), "--sampler tutorial runs a diffusion model"),
        (dict(method="flow", sampler="ddim"), "--sampler ddim runs a diffusion model"),
        (dict(method="flow", sampler="euler", prediction="v"), "--prediction v is a diffusion option"),
        (dict(method="flow", sampler="euler", loss="hybrid"), "--loss hybrid is a diffusion loss"),
        (dict(method="flow", sampler="ode", eta=0.5), "--eta 0.5 is a diffusion option"),
        (dict(method="flow", sampler="euler", sample_steps=101), "--sample-steps is 101"),
        (dict(method="flow", sampler="euler", flow_sigma=-0.1), "--flow-sigma must be >= 0"),
        (dict(method="flow", sampler="euler", coupling="ot", num_processes=2), "--coupling ot pairs each whole batch"),
        (dict(sampler="euler"), "--sampler euler integrates a flow model's velocity"),
        (dict(coupling="ot"), "--coupling ot is a flow-matching option"),
        (dict(flow_sigma=0.1), "--flow-sigma 0.1 is a flow-matching option"),
    ],
)
def test_impossible_combinations_are_refused_in_one_line(fields, says):
    with pytest.raises(ConfigError) as err:
        validate(Config(**fields))
    assert says in str(err.value) and "\n" not in str(err.value)


def test_flow_sample_steps_default_to_t_evaluations():
    assert SamplerOptions.from_config(FLOW).sample_steps == T
    assert SamplerOptions.from_config(dataclasses.replace(FLOW, sampler="midpoint")).sample_steps == T // 2
    validate(dataclasses.replace(FLOW, coupling="ot", flow_sigma=0.1, sample_steps=20))


# --- samplers against numpy loops --------------------------------------------------------------
# A velocity that depends on x and on the grid index k (tables a, b): v = a[k] * x + b[k], elementwise,
# so that numpy and XLA round every operation alike. XLA:CPU fuses each multiply-add (a * x + b, and
# x + h * v) into one FMA, rounded once (LLVM's floating-point contraction); the numpy loop does it in
# both ways, with `fma` computed exactly in rationals and rounded once, and ours must equal one of them
# bit for bit (the fused one on XLA:CPU today).
_rng = np.random.default_rng(0)
A, B = _rng.normal(size=(T, 2)) * 0.5, _rng.normal(size=(T, 2))


def table_model(x, k):
    return jnp.asarray(A, x.dtype)[k] * x + jnp.asarray(B, x.dtype)[k]


def numpy_index(t: float) -> int:
    return min(int(np.floor(t * T + 0.5)), T - 1)


def fma(a, b, c):
    """a * b + c rounded once (IEEE fused multiply-add), elementwise in float64."""
    a, b, c = np.broadcast_arrays(np.float64(a), b, c)
    exact = [Fraction(x) * Fraction(y) + Fraction(z) for x, y, z in zip(a.ravel(), b.ravel(), c.ravel())]
    return np.array([float(e) for e in exact]).reshape(a.shape)


def numpy_loop(x, k_steps: int, midpoint: bool, fused: bool):
    h = 1.0 / k_steps
    madd = fma if fused else (lambda a, b, c: a * b + c)
    v = lambda x, t: madd(A[numpy_index(t)], x, B[numpy_index(t)])
    for i in range(k_steps):
        t = i / k_steps
        u = v(x, t)
        if midpoint:
            u = v(madd(u, h / 2, x), t + h / 2)
        x = madd(h, u, x)
    return x


@pytest.mark.parametrize("sampler, k", [("euler", 100), ("euler", 7), ("midpoint", 10), ("midpoint", 13)])
def test_fixed_step_samplers_equal_a_numpy_loop_in_float64(sampler, k):
    x_init = np.random.default_rng(1).normal(size=(32, 2))
    with FLOAT64.context():
        options = SamplerOptions(sampler, T, sample_steps=k, method="flow")
        out = flow.sample(options, flow.grid_model(table_model, T), jnp.asarray(x_init), trajectory=True)
        assert out.x_0.dtype == jnp.float64
    ours = np.asarray(out.x_0)
    plain, fused = (numpy_loop(x_init, k, sampler == "midpoint", f) for f in (False, True))
    assert np.array_equal(ours, fused) or np.array_equal(ours, plain), np.max(np.abs(ours - fused))
    np.testing.assert_allclose(ours, plain, rtol=0, atol=16 * FLOAT64.eps * np.max(np.abs(plain)))
    assert out.trajectory.shape == (k + 1, 32, 2) and int(out.nfe) == k * (2 if sampler == "midpoint" else 1)
    np.testing.assert_array_equal(np.asarray(out.trajectory[0]), x_init)


# --- the Gaussian closed form --------------------------------------------------------------------


def gaussian_velocity(x, t):
    """The exact marginal velocity of N(M, S^2 I) data (module docstring), at float t (1,)."""
    t = t[0]
    m = jnp.asarray(M, x.dtype)
    var = (1 - t) ** 2 + t**2 * S**2
    return m + (t * S**2 - (1 - t)) / var * (x - t * m)


def gaussian_logp(x):
    return -0.5 * np.sum(((x - M) / S) ** 2, axis=-1) - x.shape[-1] * np.log(S) - x.shape[-1] / 2 * np.log(2 * np.pi)


def test_flow_nll_matches_the_gaussian_log_density():
    x_1 = M + S * np.random.default_rng(2).normal(size=(64, 2))
    with FLOAT64.context():
        out = likelihood.flow_nll_bits_per_dim(gaussian_velocity, jnp.asarray(x_1), rtol=1e-8, atol=1e-8)
        expected = -gaussian_logp(x_1) / (2 * np.log(2.0))
        # Tsit5 at rtol = atol = 1e-8 over a smooth affine field: the error is far below 1e-6 bits/dim.
        np.testing.assert_allclose(np.asarray(out.bits_per_dim), expected, rtol=0, atol=1e-6)


# Measured max errors: ode 1.5e-8 (rtol = atol = 1e-8), midpoint (K = 50) 3.6e-6, euler (K = 100) 2.2e-2:
# first and second order in 1 / K.
@pytest.mark.parametrize("sampler, k, atol", [("ode", None, 1e-6), ("midpoint", 50, 4e-5), ("euler", 100, 4e-2)])
def test_flow_samplers_transport_noise_to_the_gaussian(sampler, k, atol):
    """The exact flow maps x_0 to M + S x_0; each sampler gets there within its order's error."""
    x_init = np.random.default_rng(3).normal(size=(64, 2))
    with FLOAT64.context():
        options = SamplerOptions(sampler, T, sample_steps=k, rtol=1e-8, atol=1e-8, method="flow")
        out = flow.sample(options, gaussian_velocity, jnp.asarray(x_init))
        np.testing.assert_allclose(np.asarray(out.x_0), M + S * x_init, rtol=0, atol=atol)


def test_both_assignment_solvers_pair_vmapped_batches_alike():
    """speed.linear_assignment's host solver (scipy, the CPU's) and compiled one (optax, the GPU's) give the
    same permutation, which is the optimum, under vmap too (the models of a sweep): 3 x 5 costs of B = 64."""
    x = jax.random.normal(jax.random.key(0), (3, 5, 2, 64, 2))
    cost = jnp.sum((x[..., 1, :, None, :] - x[..., 0, None, :, :]) ** 2, axis=-1)  # (3, 5, 64, 64)
    solve = {
        w: jax.jit(jax.vmap(jax.vmap(functools.partial(speed.linear_assignment, where=w))))
        for w in ("host", "compiled")
    }
    host, compiled = (np.asarray(solve[w](cost)) for w in ("host", "compiled"))
    np.testing.assert_array_equal(host, compiled)
    c = np.asarray(cost)[0, 0]
    rows, cols = scipy.optimize.linear_sum_assignment(c)
    assert c[np.arange(64), host[0, 0]].sum() == c[rows, cols].sum()
    assert sorted(host[2, 4]) == list(range(64))


def test_forward_pictures_of_a_flow_run_follow_its_path():
    """A flow run's forward.png and GIF frames are its straight path from the data (t = 1) to the noise, frame
    k at t = 1 - k / T, labelled by that time: x_t = t x_1 + (1 - t) x_0."""
    data, noise = np.ones((3, 2)), np.zeros((4, 3, 2))
    frames, times = flow_path_frames(data, noise)
    assert times == ["1", "0.75", "0.5", "0.25"]
    np.testing.assert_array_equal(frames[:, 0, 0], [1.0, 0.75, 0.5, 0.25])


# --- a tiny run --------------------------------------------------------------------------------


def test_flow_run_with_ot_resumes_bit_for_bit_after_sigkill(tmp_path):
    """--method flow --coupling ot --sampler euler trains, samples and writes a run folder; killed with
    SIGKILL after its first checkpoint and resumed, it ends bit for bit where an uninterrupted run ends."""
    flow_args = ("--no-plots", "--method", "flow", "--coupling", "ot", "--sampler", "euler", "--sample-steps", "20")
    sizes = dict(epochs=40, n_samples=64, n_eval=64)  # 8 steps an epoch, checkpoints every 10 epochs
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    train_killed_after_first_checkpoint(tiny_argv(killed, *flow_args, **sizes), killed, 10)
    kept = Checkpointer(killed).latest_epoch()
    assert kept is not None and kept < 40, f"the kill came too late to test resume (checkpoint {kept})"
    assert train_main(tiny_argv(killed, *flow_args, "--resume", **sizes)) == 0
    assert train_main(tiny_argv(whole, *flow_args, **sizes)) == 0
    assert_same_run(killed, whole)
    samples = np.load(whole / "samples.npy")
    assert samples.shape == (64, 2) and np.all(np.isfinite(samples))
    # convert takes the flow run: exported and imported, it samples as the run does (its config travels along).
    # A file without that metadata (as torch_reference writes one) imports as a flow model with --method flow.
    model, bare, imported, imported_bare = (tmp_path / n for n in ("m.safetensors", "b.safetensors", "i", "ib"))
    assert convert_main(["export", "--run", str(whole), "--out", str(model)]) == 0
    save_state_dict(bare, load_state_dict(model)[0], metadata={})
    assert convert_main(["import", str(model), "--out-dir", str(imported)]) == 0
    assert convert_main(["import", str(bare), "--out-dir", str(imported_bare), "--method", "flow"]) == 0
    assert read_config(imported_bare).method == "flow" and read_config(imported_bare).sampler == "euler"
    for run in (whole, imported, imported_bare):
        sampling = ["--sampler", "euler", "--sample-steps", "20", "--seed", str(read_config(whole).seed)]
        assert sample_main(["--run", str(run), "--n", "32", *sampling, "--out", str(run / "m.npy")]) == 0
    np.testing.assert_array_equal(np.load(imported / "m.npy"), np.load(whole / "m.npy"))
    np.testing.assert_array_equal(np.load(imported_bare / "m.npy"), np.load(whole / "m.npy"))


def test_a_sweep_over_both_methods_samples_each_with_its_own_sampler(tmp_path):
    """--method diffusion flow --sampler ddpm euler keeps diffusion x ddpm and flow x euler (the other two
    combinations do not exist), trains them as two groups, and the flow configuration is the single flow run,
    bit for bit; a method left without a sampler of its own is refused in one line."""
    args = SweepArgs(method=("diffusion", "flow"), sampler=("ddpm", "euler"), coupling=("independent", "ot"))
    configs = configurations(args, tmp_path / "grid")
    assert [(c.config.method, c.config.sampler, c.config.coupling) for c in configs] == [
        ("diffusion", "ddpm", "independent"),
        ("flow", "euler", "independent"),
        ("flow", "euler", "ot"),
    ]
    with pytest.raises(ConfigError, match="--method flow has no sampler of its own"):
        configurations(SweepArgs(method=("diffusion", "flow"), sampler=("ddpm", "ddim")), tmp_path / "grid")
    sizes = dict(epochs=4, n_samples=64, n_eval=64)
    sweep, single = tmp_path / "sweep", tmp_path / "single"
    both = ("--method", "diffusion", "flow", "--sampler", "ddpm", "euler", "--sample-steps", "10")
    assert sweep_main(tiny_argv(sweep, *both, **sizes)) == 0
    flow_args = ("--no-plots", "--method", "flow", "--sampler", "euler", "--sample-steps", "10")
    assert train_main(tiny_argv(single, *flow_args, **sizes)) == 0
    rows = json.loads((sweep / "leaderboard.json").read_text())["rows"]
    assert sorted((r["options"]["method"], r["options"]["sampler"]) for r in rows) == [
        ("diffusion", "ddpm"),
        ("flow", "euler"),
    ]
    assert_same_run(sweep / next(r["name"] for r in rows if r["options"]["method"] == "flow"), single)
