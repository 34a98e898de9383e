"""jax_ddpm.samplers.chains against diffusers' DDPMScheduler, DDIMScheduler and DPMSolverMultistepScheduler.

Both sides get the same betas (`trained_betas`), the same x_T and step noise (made in numpy) and the
same model: `fake_model`, a fixed analytic function of (x, t) written once for numpy/torch and once
for JAX (the outputs depend on x, so a table of precomputed outputs would not do). diffusers keeps
its schedule in float32 whatever the sample's dtype; in float64 the tests recompute its derived
arrays (alphas_cumprod, ...) in float64 with diffusers' own formulas, and drive DPMSolverMultistep's
update functions directly because its step() casts the sample to float32 (float32 runs step()).

Differences on purpose, each checked against an independent numpy computation instead:
- DDIM: diffusers steps from t to t - T // K, which is not the next timestep of its own sequence for
  "linspace" (and "trailing" when K does not divide T; diffusers issues #11347, #12633); we step to
  the next timestep (the DDIM paper's sub-sequence). Single steps are compared with diffusers' pair.
- DDPM: diffusers adds noise at its last step when that timestep is > 0 ("trailing"); we add none
  (Ho et al. Algorithm 2): diffusers gets z = 0 there.
- clip_sample=False everywhere (diffusers clips predicted x_0 to [-1, 1] by default for DDPM/DDIM).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers import scheduling_ddpm
from diffusers.schedulers.scheduling_ddim import (
    rescale_zero_terminal_snr as diffusers_rescale_zero_terminal_snr,
)

from ddpm_harness.config import PREDICTIONS
from jax_ddpm.objectives.schedules import device_schedule, rescale_zero_terminal_snr
from jax_ddpm.samplers import chains
from jax_ddpm.schedule import make_beta_schedule
from parity_tests.compare import assert_pairs_close

pytestmark = pytest.mark.torch  # compares with torch / the PyTorch reference

T = 100  # the tutorial's number of diffusion steps
N = 64
# Chains: K dependent steps of a few roundings each (eps prediction divides by sqrt(abar_T) = 0.007
# at the first step of the linear schedule); measured <= 8.6 eps of max|x| in float64 and <= 7.6 eps
# in float32 over every chain below (K up to 100). Allow 64 eps: 1.4e-14 (float64), 7.6e-6 (float32).
CHAIN_RTOL = 64
PREDICTION_TYPE = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
_rng = np.random.default_rng(9)
W = _rng.normal(size=(2, 2)) * 0.8
B = _rng.normal(size=2) * 0.3


def betas_for(name: str, dtype) -> np.ndarray:
    """tutorial: sigmoid 1e-5..5e-3 (alpha_bar_T = 0.78); linear: 1e-4..0.2 (alpha_bar_T = 4e-5, near noise)."""
    if name == "tutorial":
        return make_beta_schedule("sigmoid", T, 1e-5, 5e-3, dtype)
    return make_beta_schedule("linear", T, 1e-4, 0.2, dtype)


def fake_model_torch(x: torch.Tensor, t: int) -> torch.Tensor:
    """tanh(x W + b) (1 + sin(0.07 t) / 2) + 0.3 x cos(0.05 t), in x's dtype (gains in float64)."""
    w, b = torch.tensor(W, dtype=x.dtype), torch.tensor(B, dtype=x.dtype)
    return torch.tanh(x @ w + b) * float(1 + 0.5 * np.sin(0.07 * t)) + 0.3 * x * float(np.cos(0.05 * t))


def fake_model_jax(x: jax.Array, t: jax.Array) -> jax.Array:
    """The same function in JAX; t (1,) broadcast over the batch."""
    t = t.astype(jnp.float64 if x.dtype == jnp.float64 else jnp.float32)
    gain, skip = 1 + 0.5 * jnp.sin(0.07 * t), jnp.cos(0.05 * t)
    return jnp.tanh(x @ jnp.asarray(W, x.dtype) + jnp.asarray(B, x.dtype)) * gain.astype(
        x.dtype
    ) + 0.3 * x * skip.astype(x.dtype)


def diffusers_scheduler(cls, betas: np.ndarray, *, zero_snr: bool = False, **config):
    """A diffusers scheduler on `betas` (T,); in float64 its derived arrays recomputed in float64."""
    config = dict(num_train_timesteps=T, trained_betas=betas, rescale_betas_zero_snr=zero_snr, **config)
    if cls is not DPMSolverMultistepScheduler:
        config["clip_sample"] = False
    sched = cls(**config)
    if betas.dtype == np.float64:
        sched.betas = torch.tensor(betas, dtype=torch.float64)
        if zero_snr:
            sched.betas = diffusers_rescale_zero_terminal_snr(sched.betas)
        sched.alphas = 1.0 - sched.betas
        sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
        sched.final_alpha_cumprod = sched.one = torch.tensor(1.0, dtype=torch.float64)
        if zero_snr and cls is DPMSolverMultistepScheduler:
            sched.alphas_cumprod[-1] = 2**-24
    return sched


def our_schedule(betas: np.ndarray, zero_snr: bool = False):
    return device_schedule(rescale_zero_terminal_snr(betas) if zero_snr else betas)


def inputs(dtype, k: int, seed: int = 0):
    """x_T (N, 2) and step noise (K, N, 2), drawn in numpy."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, 2)).astype(dtype), rng.normal(size=(k, N, 2)).astype(dtype)


def trajectory_pairs(states_ref: list, samples: chains.Samples) -> dict:
    ref = np.stack([s.numpy() for s in states_ref])
    return {"trajectory": (ref, np.asarray(samples.trajectory))}


# --- zero terminal SNR, timesteps -------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["tutorial", "linear"])
def test_rescale_zero_terminal_snr_matches_diffusers(precision, schedule):
    # Same operations in the same dtype. The shift sqrt(abar) - sqrt(abar_T) cancels near the end,
    # so one ulp of a sqrt (torch's float32 sqrt and numpy's differ by one ulp here) becomes ~1e-5 in
    # the last betas: float32 is held to diffusers' own float32 error against the float64 result
    # (measured: ours 5.0e-6, diffusers' 5.3e-6 on the tutorial schedule). float64: the scale
    # sqrt(abar_0) / (sqrt(abar_0) - sqrt(abar_T)) = 8.5 amplifies a few ulps; measured 9.5 eps.
    betas = betas_for(schedule, precision.np_dtype)
    out_ref = diffusers_rescale_zero_terminal_snr(torch.tensor(betas)).numpy()
    out_ans = rescale_zero_terminal_snr(betas)
    if precision.np_dtype == np.float64:
        assert_pairs_close({"betas": (out_ref, out_ans)}, rel=64 * precision.eps)
    else:
        exact = diffusers_rescale_zero_terminal_snr(torch.tensor(betas, dtype=torch.float64)).numpy()
        err_ref, err_ans = np.abs(out_ref - exact).max(), np.abs(out_ans - exact).max()
        assert err_ans <= 2 * err_ref + 4 * precision.eps, (err_ans, err_ref)
    abar = np.cumprod(1 - out_ans.astype(np.float64))
    assert abar[-1] == 0 and abs(abar[0] - (1 - betas[0])) <= 4 * precision.eps


@pytest.mark.parametrize("spacing", chains.SPACINGS)
def test_timesteps_match_diffusers(spacing):
    for k in (1, 5, 7, 10, 30, 33, 50, 99, 100):
        for cls in (DDPMScheduler, DDIMScheduler):
            sched = cls(num_train_timesteps=T, timestep_spacing=spacing)
            sched.set_timesteps(k)
            np.testing.assert_array_equal(chains.ddim_timesteps(T, k, spacing), sched.timesteps.numpy())
        if k < T:
            sched = DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing=spacing)
            sched.set_timesteps(k)
            np.testing.assert_array_equal(chains.dpm_solver_timesteps(T, k, spacing), sched.timesteps.numpy())


# --- DDPM -------------------------------------------------------------------------------------


def run_diffusers_ddpm(sched, x_T, noise, monkeypatch, k: int):
    """diffusers' DDPM chain with noise[i] at step i (its randn_tensor replaced); z = 0 at the last step."""
    sched.set_timesteps(k)
    step_noise = iter(list(noise[:-1]) + [np.zeros_like(noise[-1])])
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, **kw: torch.tensor(next(step_noise)))
    x, states = torch.tensor(x_T), [torch.tensor(x_T)]
    for t in sched.timesteps:
        x = sched.step(fake_model_torch(x, int(t)), t, x).prev_sample
        states.append(x)
    return states


@pytest.mark.parametrize("variance", chains.VARIANCES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddpm_step_matches_diffusers(precision, variance, prediction, monkeypatch):
    # One step at t = 90 -> 80 and 0 -> end (K = 10, leading), same x_t, model output and z on both sides.
    betas = betas_for("linear", precision.np_dtype)
    variance_type = {"beta": "fixed_large", "posterior": "fixed_small"}[variance]
    sched = diffusers_scheduler(
        DDPMScheduler, betas, prediction_type=PREDICTION_TYPE[prediction], variance_type=variance_type
    )
    sched.set_timesteps(10)
    schedule = our_schedule(betas)
    x_t, (out, z) = inputs(precision.np_dtype, 2, seed=1)
    pairs = {}
    for t, t_prev in ((90, 80), (0, -1)):
        monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, **kw: torch.tensor(z))
        out_ref = sched.step(torch.tensor(out), t, torch.tensor(x_t)).prev_sample.numpy()
        out_ans = chains.ddpm_step(
            schedule,
            jnp.asarray(out),
            jnp.asarray(x_t),
            t,
            t_prev,
            jnp.asarray(z),
            variance=variance,
            prediction=prediction,
        )
        pairs[f"t={t}"] = (out_ref, np.asarray(out_ans))
    # A few roundings of O(1) terms; measured <= 1 eps of max|x|.
    assert_pairs_close(pairs, rel=8 * precision.eps)


@pytest.mark.parametrize(
    "variance, prediction, spacing, k",
    [
        ("beta", "eps", "leading", 100),  # Ho et al. Algorithm 2 on all T steps
        ("beta", "v", "trailing", 10),  # diffusers' last step (t = 9) gets z = 0, see the module docstring
        ("posterior", "x0", "linspace", 5),
    ],
)
def test_ddpm_chain_matches_diffusers(precision, variance, prediction, spacing, k, monkeypatch):
    betas = betas_for("linear", precision.np_dtype)
    variance_type = {"beta": "fixed_large", "posterior": "fixed_small"}[variance]
    sched = diffusers_scheduler(
        DDPMScheduler,
        betas,
        prediction_type=PREDICTION_TYPE[prediction],
        variance_type=variance_type,
        timestep_spacing=spacing,
    )
    x_T, noise = inputs(precision.np_dtype, k)
    states = run_diffusers_ddpm(sched, x_T, noise, monkeypatch, k)
    ours = chains.ddpm(
        fake_model_jax,
        our_schedule(betas),
        jnp.asarray(x_T),
        jnp.asarray(noise),
        sample_steps=k,
        timestep_spacing=spacing,
        variance=variance,
        prediction=prediction,
        trajectory=True,
    )
    assert int(ours.nfe) == k
    assert_pairs_close(trajectory_pairs(states, ours), rel=CHAIN_RTOL * precision.eps)


# --- DDIM -------------------------------------------------------------------------------------


def run_diffusers_ddim(sched, x_T, noise, k: int, eta: float):
    """diffusers' DDIM chain, variance_noise = noise[i] at step i."""
    sched.set_timesteps(k)
    x, states = torch.tensor(x_T), [torch.tensor(x_T)]
    for i, t in enumerate(sched.timesteps):
        x = sched.step(fake_model_torch(x, int(t)), t, x, eta=eta, variance_noise=torch.tensor(noise[i])).prev_sample
        states.append(x)
    return states


def numpy_ddim_chain(betas, x_T, noise, timesteps, eta, prediction):
    """DDIM, Song et al. 2021 eq. 12 and 16, written out in numpy on the sequence tau (next timestep
    of the sequence, alpha_bar = 1 after the last), with fake_model in float64 through torch."""
    abar = np.cumprod(1 - betas.astype(np.float64))
    x, states = x_T.astype(np.float64), [x_T.astype(np.float64)]
    for i, t in enumerate(timesteps):
        a_t, a_prev = abar[t], (abar[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0)
        out = fake_model_torch(torch.tensor(x), int(t)).numpy()
        eps = {
            "eps": out,
            "v": np.sqrt(a_t) * out + np.sqrt(1 - a_t) * x,
            "x0": (x - np.sqrt(a_t) * out) / np.sqrt(1 - a_t),
        }[prediction]
        x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * eps + sigma * noise[i]
        states.append(x)
    return np.stack(states)


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("spacing", chains.SPACINGS)
def test_ddim_step_matches_diffusers(precision, spacing, eta):
    # Single steps at the first, a middle and the last timestep of K = 10, each to diffusers' own
    # previous step t - T // K (for linspace not the next timestep of the sequence: see the docstring).
    betas = betas_for("linear", precision.np_dtype)
    sched = diffusers_scheduler(DDIMScheduler, betas, timestep_spacing=spacing, prediction_type="v_prediction")
    sched.set_timesteps(10)
    schedule = our_schedule(betas)
    x_t, (out, z) = inputs(precision.np_dtype, 2, seed=2)
    pairs = {}
    for t in (int(sched.timesteps[0]), int(sched.timesteps[5]), int(sched.timesteps[-1])):
        out_ref = sched.step(torch.tensor(out), t, torch.tensor(x_t), eta=eta, variance_noise=torch.tensor(z))
        out_ans = chains.ddim_step(
            schedule, jnp.asarray(out), jnp.asarray(x_t), t, t - T // 10, jnp.asarray(z), eta=eta, prediction="v"
        )
        pairs[f"t={t}"] = (out_ref.prev_sample.numpy(), np.asarray(out_ans))
    # A few roundings of O(1) terms; measured <= 1 eps of max|x|.
    assert_pairs_close(pairs, rel=8 * precision.eps)


@pytest.mark.parametrize(
    "prediction, eta, spacing, k",
    [
        ("eps", 0.7, "leading", 10),
        ("v", 0.0, "trailing", 10),
        ("v", 1.0, "leading", 50),
        ("x0", 0.3, "trailing", 5),
    ],
)
def test_ddim_chain_matches_diffusers(precision, prediction, eta, spacing, k):
    betas = betas_for("linear", precision.np_dtype)
    sched = diffusers_scheduler(
        DDIMScheduler, betas, timestep_spacing=spacing, prediction_type=PREDICTION_TYPE[prediction]
    )
    x_T, noise = inputs(precision.np_dtype, k)
    states = run_diffusers_ddim(sched, x_T, noise, k, eta)
    ours = chains.ddim(
        fake_model_jax,
        our_schedule(betas),
        jnp.asarray(x_T),
        jnp.asarray(noise),
        sample_steps=k,
        eta=eta,
        timestep_spacing=spacing,
        prediction=prediction,
        trajectory=True,
    )
    assert int(ours.nfe) == k
    assert_pairs_close(trajectory_pairs(states, ours), rel=CHAIN_RTOL * precision.eps)


@pytest.mark.parametrize("prediction, eta, k", [("eps", 0.5, 10)])
def test_ddim_linspace_chain_against_numpy(precision, prediction, eta, k):
    # On purpose unlike diffusers (its DDIMScheduler steps to t - T // K, not the next timestep of its
    # linspace sequence): our chain against the DDIM equations in numpy (float64); diffusers' differs.
    betas = betas_for("linear", precision.np_dtype)
    x_T, noise = inputs(precision.np_dtype, k)
    timesteps = chains.ddim_timesteps(T, k, "linspace")
    out_ref = numpy_ddim_chain(betas, x_T, noise, timesteps, eta, prediction).astype(precision.np_dtype)
    ours = chains.ddim(
        fake_model_jax,
        our_schedule(betas),
        jnp.asarray(x_T),
        jnp.asarray(noise),
        sample_steps=k,
        eta=eta,
        timestep_spacing="linspace",
        prediction=prediction,
        trajectory=True,
    )
    assert_pairs_close({"trajectory": (out_ref, np.asarray(ours.trajectory))}, rel=CHAIN_RTOL * precision.eps)
    sched = diffusers_scheduler(
        DDIMScheduler, betas, timestep_spacing="linspace", prediction_type=PREDICTION_TYPE[prediction]
    )
    theirs = run_diffusers_ddim(sched, x_T, noise, k, eta)[-1].numpy()
    assert np.abs(theirs - out_ref[-1]).max() > 1e-3


# --- DPM-Solver++(2M) -------------------------------------------------------------------------


def run_diffusers_dpm_solver(sched, x_T, k: int):
    """diffusers' DPM-Solver++(2M) chain: step() in float32; in float64 its own update functions,
    chosen as step() chooses them (first and last step first order, the others second order),
    with sigmas recomputed in float64 (step() casts the sample to float32, set_timesteps the sigmas)."""
    sched.set_timesteps(k)
    x, states = torch.tensor(x_T), [torch.tensor(x_T)]
    if x.dtype == torch.float32:
        for t in sched.timesteps:
            x = sched.step(fake_model_torch(x, int(t)), t, x).prev_sample
            states.append(x)
        return states
    ac = sched.alphas_cumprod.numpy()
    sigmas = np.interp(sched.timesteps.numpy(), np.arange(T), ((1 - ac) / ac) ** 0.5)
    sched.sigmas = torch.tensor(np.append(sigmas, 0.0))
    model_outputs = []  # predicted x_0 of every step so far
    for i, t in enumerate(sched.timesteps):
        sched._step_index = i
        model_outputs.append(sched.convert_model_output(fake_model_torch(x, int(t)), sample=x))
        if i == 0 or i == k - 1:
            x = sched.dpm_solver_first_order_update(model_outputs[-1], sample=x)
        else:
            x = sched.multistep_dpm_solver_second_order_update(model_outputs[-2:], sample=x)
        states.append(x)
    return states


@pytest.mark.parametrize(
    "prediction, spacing, k, schedule, zero_snr",
    [
        ("eps", "linspace", 10, "tutorial", False),
        ("eps", "linspace", 50, "linear", False),
        ("x0", "trailing", 5, "linear", False),
        ("v", "leading", 10, "linear", True),  # zero terminal SNR: alpha_bar_{T-1} = 2^-24 on both sides
    ],
)
def test_dpm_solver_chain_matches_diffusers(precision, prediction, spacing, k, schedule, zero_snr):
    betas = betas_for(schedule, precision.np_dtype)
    sched = diffusers_scheduler(
        DPMSolverMultistepScheduler,
        betas,
        zero_snr=zero_snr,
        timestep_spacing=spacing,
        prediction_type=PREDICTION_TYPE[prediction],
        algorithm_type="dpmsolver++",
        solver_order=2,
    )
    x_T, _ = inputs(precision.np_dtype, k)
    states = run_diffusers_dpm_solver(sched, x_T, k)
    ours = chains.dpm_solver_pp(
        fake_model_jax,
        our_schedule(betas, zero_snr),
        jnp.asarray(x_T),
        sample_steps=k,
        timestep_spacing=spacing,
        prediction=prediction,
        trajectory=True,
    )
    assert int(ours.nfe) == k
    assert_pairs_close(trajectory_pairs(states, ours), rel=CHAIN_RTOL * precision.eps)


@pytest.mark.parametrize("prediction", ["v"])
def test_ddim_zero_terminal_snr_matches_diffusers(precision, prediction):
    # rescale_betas_zero_snr=True on diffusers' side, our rescale_zero_terminal_snr on ours (eps
    # prediction is refused by the registry there: x_0 = (x_T - eps) / 0 at the first step).
    betas = betas_for("linear", precision.np_dtype)
    sched = diffusers_scheduler(
        DDIMScheduler, betas, zero_snr=True, timestep_spacing="trailing", prediction_type=PREDICTION_TYPE[prediction]
    )
    x_T, noise = inputs(precision.np_dtype, 10)
    states = run_diffusers_ddim(sched, x_T, noise, 10, 0.5)
    ours = chains.ddim(
        fake_model_jax,
        our_schedule(betas, True),
        jnp.asarray(x_T),
        jnp.asarray(noise),
        sample_steps=10,
        eta=0.5,
        timestep_spacing="trailing",
        prediction=prediction,
        trajectory=True,
    )
    assert_pairs_close(trajectory_pairs(states, ours), rel=CHAIN_RTOL * precision.eps)
