"""--prediction eps|v|x0 and --zero-terminal-snr on the training side, and --preset.

The v and x0 losses are checked against a numpy computation written from their definitions
(Salimans & Ho 2022: v = sqrt(abar) eps - sqrt(1 - abar) x_0), the eps default against the tutorial's
loss bit for bit, and the targets against the samplers' inverse conversions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_harness.config import PRESETS, Config, ConfigError, given_fields, resolve_preset, validate
from ddpm_harness.data import data_transform, dataset_for
from ddpm_harness.sweeps import SweepArgs, resolve_sweep_preset
from jax_ddpm import losses
from jax_ddpm.evaluate import to_data_units
from jax_ddpm.model import apply_model, init_params, model_of
from jax_ddpm.objectives import predictions, variance
from jax_ddpm.objectives.objective import loss_fn_for
from jax_ddpm.objectives.predictions import (
    model_mean_logvar,
    prediction_loss,
    training_target,
)
from jax_ddpm.objectives.schedules import rescale_zero_terminal_snr, run_schedule
from jax_ddpm.runner.checkpoint import IncompatibleCheckpointError, check_compatible
from jax_ddpm.runner.draw import draw_samples
from jax_ddpm.schedule import make_beta_schedule, make_schedule

T = 100


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x_0 = rng.normal(size=(64, 2)).astype(np.float32)
    t = rng.integers(0, T, size=64).astype(np.int32)
    e = rng.normal(size=(64, 2)).astype(np.float32)
    return x_0, t, e


def numpy_loss(params, abar: np.ndarray, x_0, t, e, prediction: str) -> float:
    """The loss from its definition, in float64 numpy (only the network itself is JAX's)."""
    a, s = np.sqrt(abar[t])[:, None], np.sqrt(1 - abar[t])[:, None]
    x_t = a * x_0 + s * e
    target = {"eps": e, "v": a * e - s * x_0, "x0": x_0}[prediction]
    out = np.asarray(apply_model(params, jnp.asarray(x_t, jnp.float32), jnp.asarray(t)), np.float64)
    return float(np.mean((target - out) ** 2))


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_v_and_x0_losses_against_numpy(batch, prediction, zero_terminal_snr):
    config = Config(
        schedule="linear",
        beta_start=1e-4,
        beta_end=0.1,
        prediction=prediction,
        sampler="ddpm",
        zero_terminal_snr=zero_terminal_snr,
    )
    schedule = run_schedule(config)
    params = init_params(jax.random.key(1), T)
    x_0, t, e = batch
    t[0] = T - 1  # the last step, where a zero-terminal-SNR schedule has abar = 0
    abar = np.asarray(schedule.alphas_prod, np.float64)
    assert (abar[-1] == 0) == zero_terminal_snr
    out_ans = float(loss_fn_for(config)(params, jnp.asarray(x_0), schedule, T, jnp.asarray(t), jnp.asarray(e)))
    out_ref = numpy_loss(params, abar, x_0, t, e, prediction)
    # float32 against float64: measured relative differences ~1e-7.
    np.testing.assert_allclose(out_ans, out_ref, rtol=2e-6)
    assert out_ans != pytest.approx(numpy_loss(params, abar, x_0, t, e, "eps"), rel=1e-3)


def test_eps_default_is_the_tutorials_loss_bit_for_bit(batch):
    config = Config()
    schedule = run_schedule(config)
    params = init_params(jax.random.key(1), T)
    x_0, t, e = (jnp.asarray(a) for a in batch)
    out_ref = losses.noise_estimation_loss(
        model_of(params), x_0, schedule.alphas_bar_sqrt, schedule.one_minus_alphas_bar_sqrt, T, t=t, e=e
    )
    np.testing.assert_array_equal(np.asarray(loss_fn_for(config)(params, x_0, schedule, T, t, e)), np.asarray(out_ref))
    np.testing.assert_array_equal(
        np.asarray(prediction_loss(params, schedule, x_0, t, e, prediction="eps")), np.asarray(out_ref)
    )


def test_loss_fn_for_takes_a_sweeps_hybrid_lambda(batch):
    """The sweep's per-model weight replaces the config's, exactly as a config with that weight would."""
    config = Config(loss="hybrid", hybrid_lambda=0.001)
    schedule = run_schedule(config)
    params = init_params(jax.random.key(1), T, 4)
    x_0, t, e = (jnp.asarray(a) for a in batch)
    given = loss_fn_for(config, hybrid_lambda=np.float32(0.5))(params, x_0, schedule, T, t, e)
    configured = loss_fn_for(dataclasses.replace(config, hybrid_lambda=0.5))(params, x_0, schedule, T, t, e)
    np.testing.assert_array_equal(np.asarray(given), np.asarray(configured))
    assert float(given) != float(loss_fn_for(config)(params, x_0, schedule, T, t, e))


@pytest.mark.parametrize("loss", ["variational", "hybrid"])
def test_v_and_x0_refuse_the_other_losses(loss):
    with pytest.raises(ValueError, match="noise loss only"):
        loss_fn_for(Config(prediction="v", loss=loss))


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_targets_invert_to_x0_and_eps(batch, prediction):
    schedule = run_schedule(Config(schedule="linear", beta_start=1e-4, beta_end=0.1))
    x_0, t, e = (jnp.asarray(a) for a in batch)
    abar = schedule.alphas_prod[t][:, None]
    x_t = jnp.sqrt(abar) * x_0 + jnp.sqrt(1 - abar) * e
    target = training_target(schedule, x_0, t, e, prediction)
    np.testing.assert_allclose(predictions.predict_x0(target, x_t, abar, prediction), x_0, atol=2e-4)
    np.testing.assert_allclose(predictions.predict_eps(target, x_t, abar, prediction), e, atol=2e-3)


def test_bound_of_an_eps_model_is_the_tutorials_mean(batch):
    # predictions.model_mean_logvar goes through the predicted x_0 and the posterior mean; for eps it is
    # the tutorial's eq. 11 mean (variance.model_mean_logvar). The two routes round differently in
    # float32 (measured 3e-4 at small t), so compare in float64: measured 2.2e-13 absolute.
    with jax.enable_x64(True):
        schedule = make_schedule("linear", T, 1e-4, 0.1, np.float64)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), init_params(jax.random.key(2), T))
        x_t, t = jnp.asarray(batch[0], jnp.float64), jnp.asarray(batch[1])
        mean_ans, logvar_ans = model_mean_logvar(params, schedule, x_t, t, "eps")
        mean_ref, logvar_ref = variance.model_mean_logvar(params, schedule, x_t, t, "eps")
        np.testing.assert_allclose(mean_ans, mean_ref, rtol=0, atol=1e-11)
        np.testing.assert_array_equal(logvar_ans, logvar_ref)


def test_zero_terminal_snr_schedule_is_the_rescaled_one():
    config = Config(
        schedule="linear", beta_start=1e-4, beta_end=0.02, prediction="v", sampler="ddim", zero_terminal_snr=True
    )
    betas = np.asarray(run_schedule(config).betas)
    out_ref = rescale_zero_terminal_snr(make_beta_schedule("linear", T, 1e-4, 0.02))
    np.testing.assert_array_equal(betas, out_ref)
    assert float(run_schedule(config).alphas_prod[-1]) == 0.0


def test_preset_sets_what_the_user_did_not():
    argv = ["--preset", "recommended", "--ema-decay", "0.99", "--sample-with", "raw", "--no-zero-terminal-snr"]
    assert given_fields(argv) == {"preset", "ema_decay", "sample_with", "zero_terminal_snr"}
    assert given_fields(["--lr=0.01", "--no-plots", "moons"]) == {"lr", "no_plots"}
    parsed = Config(preset="recommended", ema_decay=0.99)
    resolved = resolve_preset(parsed, argv)
    for name, value in PRESETS["recommended"].items():
        expected = {"ema_decay": 0.99, "sample_with": "raw"}.get(name, value)
        if name == "zero_terminal_snr":
            expected = False
        assert getattr(resolved, name) == expected, name
    validate(resolved)
    # From Python (no command line): the fields still at the tutorial's default take the preset's value.
    assert resolve_preset(Config(preset="recommended")) == dataclasses.replace(
        Config(preset="recommended"), **PRESETS["recommended"]
    )
    assert resolve_preset(Config(), ["--epochs", "5"]) == Config()  # the tutorial preset changes nothing


def test_the_presets_are_a_flow_recipe_and_a_diffusion_recipe_and_refuse_the_other_method():
    flow = validate(resolve_preset(Config(preset="recommended"), ["--preset", "recommended"]))
    assert (flow.method, flow.coupling, flow.normalize, flow.sampler, flow.sample_steps) == (
        "flow",
        "ot",
        True,
        "euler",
        20,
    )
    diffusion = validate(resolve_preset(Config(preset="recommended-diffusion")))
    assert (diffusion.method, diffusion.prediction, diffusion.schedule, diffusion.sampler) == (
        "diffusion",
        "v",
        "sigmoid",
        "dpm-solver++",
    )
    with pytest.raises(ConfigError, match="^--preset recommended is a --method flow recipe; .*recommended-diffusion"):
        resolve_preset(Config(preset="recommended"), ["--preset", "recommended", "--method", "diffusion"])
    with pytest.raises(
        ConfigError, match="recommended-diffusion is a --method diffusion recipe; .*--preset recommended,"
    ):
        resolve_preset(Config(preset="recommended-diffusion", method="flow"), ["--method", "flow"])
    # The preset's own method, named, is no conflict; a sweep's list is checked as a run's value.
    assert resolve_preset(Config(preset="recommended", method="flow"), ["--method", "flow"]).coupling == "ot"
    with pytest.raises(ConfigError, match="for --method diffusion, flow use"):
        resolve_sweep_preset(SweepArgs(preset="recommended", method=("diffusion", "flow")), ["--method", "x", "y"])


def test_sampling_options_may_change_on_resume_training_options_may_not(tmp_path):
    saved = dataclasses.asdict(Config(sampler="ddim", sample_steps=10, prediction="eps"))
    check_compatible(saved, Config(sampler="ode", ode_rtol=1e-3), tmp_path)
    with pytest.raises(IncompatibleCheckpointError, match="--prediction eps \\(now v\\)"):
        check_compatible(saved, Config(prediction="v", sampler="ddpm"), tmp_path)
    with pytest.raises(IncompatibleCheckpointError, match="--zero-terminal-snr"):
        check_compatible(saved, Config(prediction="eps", zero_terminal_snr=True), tmp_path)
    # A checkpoint written before the fields existed reads them as their defaults.
    old = {k: v for k, v in saved.items() if k not in ("prediction", "zero_terminal_snr", "preset")}
    check_compatible(old, Config(), tmp_path)


def test_validate_refuses_prediction_with_learned_variance():
    with pytest.raises(ConfigError, match="--prediction v replaces the noise loss's target"):
        validate(Config(prediction="v", loss="hybrid", sampler="ddpm"))


def test_normalize_maps_samples_back_to_data_units():
    config = Config(dataset="s_curve", n_points=500, normalize=True, sampler="ddim", sample_steps=5)
    data = dataset_for(config)
    shift, scale = data_transform(config)
    np.testing.assert_allclose(shift, data.mean(axis=0), rtol=1e-6)
    assert scale == pytest.approx(float(data.std())) and 0.05 < scale < 0.2  # s_curve's std ~0.1
    assert data_transform(dataclasses.replace(config, normalize=False)) == (pytest.approx([0, 0]), 1.0)
    params = init_params(jax.random.key(3), T)
    key = jax.random.key(4)
    out = draw_samples(params, run_schedule(config), config, key, 64, trajectory=True)
    raw = draw_samples(
        params, run_schedule(config), dataclasses.replace(config, normalize=False), key, 64, trajectory=True
    )
    np.testing.assert_allclose(out.x_0, np.asarray(raw.x_0) * scale + shift, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out.trajectory, np.asarray(raw.trajectory) * scale + shift, rtol=1e-6, atol=1e-7)
    # bits/dim of model units in data units: + log2(scale) per dimension.
    assert to_data_units({"bits_per_dim": 1.0, "nfe": 7}, 0.25, ("bits_per_dim",)) == {"bits_per_dim": -1.0, "nfe": 7}
