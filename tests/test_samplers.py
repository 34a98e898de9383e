"""The sampler registry: validation, the tutorial default kept bit for bit, DDPM against the tutorial's
chain, and noise drawn from a key equal to the same noise injected."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_ddpm import sampling
from jax_ddpm.model import apply_model, init_params
from jax_ddpm.objectives.schedules import device_schedule, has_zero_terminal_snr, rescale_zero_terminal_snr
from jax_ddpm.samplers import chains, tutorial
from jax_ddpm.schedule import make_beta_schedule, make_schedule

T = 100


@pytest.fixture(scope="module")
def tutorial_setup():
    params = init_params(jax.random.key(0), T)
    return params, make_schedule(), functools.partial(apply_model, params)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("ddim2", {}, "unknown sampler 'ddim2': choose one of tutorial, ddpm, ddim, dpm-solver\\+\\+, ode."),
        ("ddim", {"sample_steps": 0}, "--sample-steps is 0, but it must be between 1 and T = 100."),
        ("ddpm", {"sample_steps": 101}, "--sample-steps is 101, but it must be between 1 and T = 100."),
        ("ddim", {"eta": -0.1}, "--eta is -0.1, but it must be >= 0"),
        ("ddim", {"prediction": "score"}, "unknown prediction 'score'"),
        ("ddpm", {"variance": "large"}, "unknown variance 'large'"),
        ("ddim", {"timestep_spacing": "uniform"}, "unknown timestep spacing 'uniform'"),
        ("ode", {"sample_steps": 10}, "--sample-steps does not apply to the ode sampler"),
        ("tutorial", {"prediction": "v"}, "the tutorial sampler runs the tutorial's eps model only"),
        ("dpm-solver++", {"sample_steps": 100}, "gives repeated or missing steps for K = 100 of T = 100"),
    ],
)
def test_bad_options_get_one_sentence(name, options, message):
    with pytest.raises(ValueError, match=message):
        chains.options_for(make_schedule(), name, **options)


@pytest.mark.parametrize("name", ["tutorial", "ddpm", "ddim", "dpm-solver++", "ode"])
def test_eps_prediction_with_zero_terminal_snr_is_refused(name):
    betas = rescale_zero_terminal_snr(make_beta_schedule("linear", T, 1e-4, 0.02))
    schedule = device_schedule(betas)
    assert has_zero_terminal_snr(schedule)
    with pytest.raises(ValueError, match="use --prediction v or x0"):
        chains.options_for(schedule, name)


def test_tutorial_entry_is_todays_sampler_bit_for_bit(tutorial_setup):
    params, schedule, _ = tutorial_setup
    key = jax.random.key(3)
    out_ref = tutorial.sample_chain(params, schedule, key, 64)
    options = chains.options_for(schedule, "tutorial")
    out = chains.sample(options, None, schedule, None, key, trajectory=True, n=64, params=params)
    np.testing.assert_array_equal(np.asarray(out.trajectory), np.asarray(out_ref))
    np.testing.assert_array_equal(np.asarray(out.x_0), np.asarray(out_ref[-1]))
    assert int(out.nfe) == T
    # From a given x_T, with the noise sample_chain draws from the key: the same chain (up to the
    # per-program compiler options sample_chain runs with, which change float rounding only).
    x_T = jax.random.normal(jax.random.fold_in(key, 0), (64, 2))
    out = chains.sample(options, None, schedule, x_T, key, params=params)
    np.testing.assert_allclose(np.asarray(out.x_0), np.asarray(out_ref[-1]), rtol=0, atol=1e-5)


def test_ddpm_with_beta_variance_is_the_tutorials_chain_without_its_last_noise():
    # Ho et al. Algorithm 2 on all T steps with sigma_t^2 = beta_t is the tutorial's p_sample_loop,
    # except that the tutorial adds noise at t = 0 too: give it z = 0 there. Our steps follow
    # diffusers (beta_t = 1 - abar_t / abar_prev), which cancels for the tutorial's betas of 1e-5:
    # relative error ~ eps / beta = 1e5 eps (measured 2.8e-4 in float32, as diffusers would have).
    # So float64, where that is 2e-11: measured 1.1e-12 of max|x| over all 101 states; allow 1e-10.
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), init_params(jax.random.key(0), T))
        schedule = make_schedule(dtype=np.float64)
        rng = np.random.default_rng(0)
        x_T, zs = jnp.asarray(rng.normal(size=(64, 2))), jnp.asarray(rng.normal(size=(T, 64, 2)))
        out_ref = sampling.p_sample_loop(
            functools.partial(apply_model, params),
            x_T.shape,
            T,
            schedule.alphas,
            schedule.betas,
            schedule.one_minus_alphas_bar_sqrt,
            x_T=x_T,
            zs=zs.at[-1].set(0),
        )
        out = chains.ddpm(functools.partial(apply_model, params), schedule, x_T, zs, variance="beta", trajectory=True)
        err = np.abs(np.asarray(out.trajectory) - np.asarray(out_ref)).max() / np.abs(np.asarray(out_ref)).max()
    assert err <= 1e-10, err


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_noise_from_a_key_is_the_same_noise_injected(tutorial_setup, name):
    _, schedule, model_fn = tutorial_setup
    key = jax.random.key(5)
    options = chains.options_for(schedule, name, sample_steps=10, eta=1.0 if name == "ddim" else 0.0)
    drawn = chains.sample(options, model_fn, schedule, None, key, n=32)
    x_T = jax.random.normal(jax.random.fold_in(key, 0), (32, 2))
    noise = jnp.stack([jax.random.normal(jax.random.fold_in(key, i + 1), (32, 2)) for i in range(10)])
    injected = chains.sample(options, model_fn, schedule, x_T, noise=noise)
    # Two compiled programs (noise drawn inside the scan or read from an array) round differently:
    # measured 1 ulp; allow 1e-6.
    np.testing.assert_allclose(np.asarray(drawn.x_0), np.asarray(injected.x_0), rtol=1e-6, atol=1e-6)


def test_pictures_of_a_k_step_chain_are_titled_with_its_steps(monkeypatch, tmp_path):
    from ddpm_harness import plots
    from ddpm_harness.config import Config
    from jax_ddpm.runner.finish import state_steps

    # State k of a chain is x_{t + 1} before the model call at step t, and the sample is x_0: the
    # tutorial's chain is x_100 .. x_0; K = 10 trailing steps (99, 89, ..., 9) give x_100, x_90, ... .
    assert state_steps(Config()) is None and state_steps(Config(sampler="ode")) is None
    assert state_steps(Config(sampler="ddpm")) == list(range(T, -1, -1))
    steps = state_steps(Config(sampler="ddim", sample_steps=10, timestep_spacing="trailing"))
    assert steps == [100, 90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert state_steps(Config(sampler="ddim", sample_steps=10))[:2] == [91, 81]  # leading: 90, 80, ..., 0

    titles, labels = [], []
    monkeypatch.setattr(plots, "_scatter_row", lambda panels, path, size, **kw: titles.extend(t for t, _ in panels))

    class Draw:  # records the GIF's frame labels
        def __init__(self, image):
            pass

        def text(self, xy, label, fill):
            labels.append(label)

    monkeypatch.setattr(plots.ImageDraw, "Draw", Draw)
    rng = np.random.default_rng(0)
    x_seq = rng.normal(size=(11, 4, 2)).astype(np.float32)
    plots.plot_reverse(x_seq, tmp_path / "reverse.png", steps)
    assert titles == [f"$p(\\mathbf{{x}}_{{{t}}})$" for t in range(90, -1, -10)]
    plots.write_gif(rng.normal(size=(3, 4, 2)), x_seq[1:], tmp_path / "d.gif", size=8, reverse_steps=steps[1:])
    assert labels == ["q(x_0)", "q(x_1)", "q(x_2)"] + [f"p: x_{t}" for t in range(90, -1, -10)]
    # A chain of fewer than ten steps shows every state after x_T.
    titles.clear()
    plots.plot_reverse(x_seq[:4], tmp_path / "reverse.png", [100, 60, 30, 0])
    assert titles == ["$p(\\mathbf{x}_{60})$", "$p(\\mathbf{x}_{30})$", "$p(\\mathbf{x}_{0})$"]
