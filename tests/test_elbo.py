"""The negative ELBO, the hybrid loss and the eps_logvar sampler step against independent
computations: the PyTorch reference's variational loss, numpy closed forms (DDPM eq. 12, Gaussian
KL), scipy's normal density; and the cosine schedule against the paper's formula."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch

from ddpm_harness.config import Config
from ddpm_harness.data import make_dataset
from jax_ddpm import losses
from jax_ddpm.convert import flax_to_torch
from jax_ddpm.model import apply_model, init_params
from jax_ddpm.objectives import variance
from jax_ddpm.objectives.schedules import betas_for, run_schedule
from jax_ddpm.schedule import make_beta_schedule, make_schedule, q_sample, schedule_from_betas
from torch_reference import losses as ref_losses
from torch_reference import schedule as ref_schedule
from torch_reference.model import ConditionalModel

pytestmark = pytest.mark.torch

T = 100
COSINE = Config(schedule="cosine", num_steps=T)


@pytest.fixture(scope="module")
def x_0():
    return make_dataset("moons", 256, 0.1, seed=3)


def np_schedule(kind="sigmoid"):
    return dataclasses.asdict(schedule_from_betas(make_beta_schedule(kind, T, 1e-5, 5e-3).astype(np.float64)))


def test_terms_equal_reference_variational_loss_at_every_step(x_0):
    params = init_params(jax.random.PRNGKey(0), T, n_outputs=4)
    key = jax.random.PRNGKey(7)
    # The tutorial's float32 schedule on both sides: the same arithmetic, term by term.
    out_ans = np.asarray(variance.elbo_terms(params, make_schedule(), jnp.asarray(x_0), key)).mean(axis=1)

    model = ConditionalModel(T, n_outputs=4)
    model.load_state_dict(flax_to_torch(params))
    s = ref_schedule.make_schedule()
    out_ref = []
    for t in range(T):  # the tutorial's loss_variational with every point at step t, same noise
        noise = np.array(jax.random.normal(jax.random.fold_in(key, t), x_0.shape))
        with torch.no_grad():
            out_ref.append(
                ref_losses.loss_variational(
                    model,
                    torch.from_numpy(x_0),
                    s.alphas_bar_sqrt,
                    s.one_minus_alphas_bar_sqrt,
                    s.posterior_mean_coef_1,
                    s.posterior_mean_coef_2,
                    s.posterior_log_variance_clipped,
                    T,
                    t=torch.full((len(x_0),), t, dtype=torch.long),
                    noise=torch.from_numpy(noise),
                ).item()
            )
    # float32 model and schedule on both sides; only summation order differs.
    np.testing.assert_allclose(out_ans, out_ref, rtol=1e-4)


def test_negative_elbo_of_eps_model_follows_ddpm_eq_12(x_0):
    # For p = N(mu_theta, beta_t) with mu from eps (eq. 11), per dimension (eq. 12):
    # KL = 0.5 (log(beta / var_q) + var_q / beta - 1) + beta_t^2 / (2 beta alpha_t (1 - abar_t)) |eps - eps_theta|^2;
    # the decoder at t = 0 and the prior KL(N(sqrt(abar) x0, 1 - abar) || N(0, 1)) complete the bound.
    params = init_params(jax.random.PRNGKey(1), T, n_outputs=2)
    key = jax.random.PRNGKey(2)
    out_ans = variance.negative_elbo(params, make_schedule(), x_0, key, "eps")
    s = np_schedule()
    diffusion = 0.0
    for t in range(1, T):
        e = np.asarray(jax.random.normal(jax.random.fold_in(key, t), x_0.shape), np.float64)
        x_t = np.sqrt(s["alphas_prod"][t]) * x_0 + np.sqrt(1 - s["alphas_prod"][t]) * e
        eps_theta = np.asarray(apply_model(params, jnp.asarray(x_t, jnp.float32), jnp.full((len(x_0),), t)))
        beta, var_q = s["betas"][t], np.exp(s["posterior_log_variance_clipped"][t])
        kl = (
            0.5 * (np.log(beta / var_q) + var_q / beta - 1)
            + beta**2 / (2 * beta * s["alphas"][t] * (1 - s["alphas_prod"][t])) * (e - eps_theta) ** 2
        )
        diffusion += kl.mean() / np.log(2)
    abar = s["alphas_prod"][-1]
    prior = np.mean(0.5 * (abar * x_0.astype(np.float64) ** 2 - abar - np.log(1 - abar))) / np.log(2)
    decoder = decoder_nll_by_hand(params, s, x_0, key)
    # float32 model and (float64-derived) float32 schedule vs float64 numpy: ~5e-4 relative per term
    # observed at small t; with the tutorial's float32-derived schedule the error there is up to 30%.
    np.testing.assert_allclose(out_ans["diffusion"], diffusion, rtol=1e-3)
    np.testing.assert_allclose(out_ans["prior"], prior, rtol=1e-4)
    # The decoder: float32 mean vs float64, with sigma_0 = sqrt(beta_0) ~ 5e-3 amplifying the mean's float32
    # error (~1e-7) by 1/sigma_0 in the CDF arguments: 1e-4 relative (1e-5 observed).
    np.testing.assert_allclose(out_ans["decoder"], decoder, rtol=1e-4)
    # The whole bound (DDPM eq. 5) against the sum of the three parts computed here: the parts' tolerances
    # add up to 8e-4 of the total (the diffusion sum is 77% of it); 4e-6 observed.
    np.testing.assert_allclose(out_ans["total"], prior + diffusion + decoder, rtol=1e-3)


def decoder_nll_by_hand(params, s, x_0, key):
    """L_0 = -log p(x_0 | x_1) in bits/dim, averaged over points, for the eps model with variance beta_0,
    written from the tutorial's description in float64: a Gaussian discretised to bins of width 2/255, its
    CDF the tanh approximation, probabilities clamped at 1e-12, the edge bins open below -0.999 and above
    0.999; x_1 = q_sample at step 0 with the noise of fold_in(key, 0), as negative_elbo draws it."""

    def cdf(z):
        return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))

    x_0 = x_0.astype(np.float64)
    e = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), x_0.shape), np.float64)
    x_1 = np.sqrt(s["alphas_prod"][0]) * x_0 + np.sqrt(1 - s["alphas_prod"][0]) * e
    eps_theta = np.asarray(apply_model(params, jnp.asarray(x_1, jnp.float32), jnp.zeros(len(x_0), jnp.int32)))
    mean = (x_1 - s["betas"][0] / np.sqrt(1 - s["alphas_prod"][0]) * eps_theta) / np.sqrt(s["alphas"][0])
    sigma = np.sqrt(s["betas"][0])
    upper, lower = cdf((x_0 - mean + 1 / 255) / sigma), cdf((x_0 - mean - 1 / 255) / sigma)
    prob = np.where(x_0 < -0.999, upper, np.where(x_0 > 0.999, 1 - lower, upper - lower))
    return np.mean(-np.log(np.maximum(prob, 1e-12))) / np.log(2)


def test_gaussian_decoder_is_the_normal_density(x_0):
    means = x_0 + 0.05
    log_var = np.full_like(x_0, -4.0)
    out_ans = variance.gaussian_log_likelihood(jnp.asarray(x_0), jnp.asarray(means), 0.5 * jnp.asarray(log_var))
    out_ref = scipy.stats.norm.logpdf(x_0, loc=means, scale=np.exp(0.5 * log_var))
    np.testing.assert_allclose(np.asarray(out_ans), out_ref, rtol=1e-5)
    steps = jnp.zeros(len(x_0), jnp.int32)
    term = variance.vlb_terms(
        make_schedule(),
        jnp.asarray(x_0),
        jnp.asarray(x_0),
        steps,
        jnp.asarray(means),
        jnp.asarray(log_var),
        decoder="gaussian",
    )
    np.testing.assert_allclose(np.asarray(term), -out_ref.mean(axis=1) / np.log(2), rtol=1e-5)


def test_prior_term_vanishes_for_cosine_and_not_for_the_tutorial_schedule(x_0):
    tutorial = float(np.mean(variance.prior_bpd(make_schedule(), jnp.asarray(x_0))))
    cosine = float(np.mean(variance.prior_bpd(run_schedule(COSINE), jnp.asarray(x_0))))
    assert tutorial > 0.05  # abar_T ~ 0.78: q(x_T) is far from N(0, I)
    assert 0 <= cosine < 1e-3


def test_cosine_schedule_is_nichol_dhariwal_eq_17():
    # Improved DDPM: abar(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi / 2), s = 0.008;
    # beta_t = min(1 - abar(t) / abar(t - 1), 0.999). Written here in plain Python floats.
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
    out_ref = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])
    betas = betas_for(COSINE)
    np.testing.assert_allclose(betas, out_ref, rtol=1e-6)
    assert betas[-1] == pytest.approx(0.999, rel=1e-6)  # the clip binds at the last step
    assert np.all(np.diff(betas) > 0)
    abar = run_schedule(COSINE).alphas_prod
    np.testing.assert_allclose(np.asarray(abar[:-1]), [f(i + 1) / f(0) for i in range(T - 1)], rtol=1e-5, atol=1e-7)


def test_hybrid_loss_value_and_stop_gradient(x_0):
    params = init_params(jax.random.PRNGKey(4), T, n_outputs=4)
    sched = make_schedule()
    x = jnp.asarray(x_0[:64])
    t = losses.antithetic_timesteps(jax.random.PRNGKey(5), 64, T)
    e = jax.random.normal(jax.random.PRNGKey(6), x.shape)
    lam = 0.01

    # Value: L_simple on the eps half + lam * T * the mean bound term, numpy from the model output.
    s = np_schedule()
    tn, en, xn = np.asarray(t), np.asarray(e, np.float64), x_0[:64].astype(np.float64)
    x_t = np.sqrt(s["alphas_prod"][tn])[:, None] * xn + np.sqrt(1 - s["alphas_prod"][tn])[:, None] * en
    x_t_ans = q_sample(x, t, sched.alphas_bar_sqrt, sched.one_minus_alphas_bar_sqrt, e)
    out = np.asarray(apply_model(params, x_t_ans, t), np.float64)
    eps, log_var = out[:, :2], out[:, 2:]
    a, ab = s["alphas"][tn][:, None], s["alphas_prod"][tn][:, None]
    mean = (x_t - (1 - a) / np.sqrt(1 - ab) * eps) / np.sqrt(a)
    q_mean = s["posterior_mean_coef_1"][tn][:, None] * xn + s["posterior_mean_coef_2"][tn][:, None] * x_t
    q_log_var = s["posterior_log_variance_clipped"][tn][:, None]
    kl = 0.5 * (-1 + log_var - q_log_var + np.exp(q_log_var - log_var) + (q_mean - mean) ** 2 * np.exp(-log_var))
    nll = -ref_losses.discretized_gaussian_log_likelihood(
        torch.from_numpy(xn), torch.from_numpy(mean), torch.from_numpy(0.5 * log_var)
    ).numpy()
    terms = np.where(tn == 0, nll.mean(1), kl.mean(1)) / np.log(2)
    out_ref = np.mean((en - eps) ** 2) + lam * T * terms.mean()
    # float32 forward vs float64 numpy; the t = 0 decoder's bins make it the least smooth term.
    np.testing.assert_allclose(float(variance.hybrid_loss(params, sched, x, t, e, lam)), out_ref, rtol=1e-4)

    # Gradients: the bound reaches the log-variance outputs only; the eps outputs learn from L_simple.
    grad_hybrid = jax.grad(variance.hybrid_loss)(params, sched, x, t, e, lam)["lin4"]
    grad_simple = jax.grad(variance.hybrid_loss)(params, sched, x, t, e, 0.0)["lin4"]
    np.testing.assert_allclose(grad_hybrid["kernel"][:, :2], grad_simple["kernel"][:, :2], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grad_hybrid["bias"][:2], grad_simple["bias"][:2], rtol=1e-6, atol=1e-9)
    assert np.all(np.asarray(grad_simple["kernel"][:, 2:]) == 0)
    assert np.abs(np.asarray(grad_hybrid["kernel"][:, 2:])).max() > 0


def test_eps_logvar_sampler_step_uses_eps_mean_and_learned_variance(x_0):
    params = init_params(jax.random.PRNGKey(8), T, n_outputs=4)
    sched, s = make_schedule(), np_schedule()
    x, t = jnp.asarray(x_0), 40
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(9), x.shape))
    out = np.asarray(apply_model(params, x, jnp.full((1,), t)), np.float64)
    mean = (x_0 - (1 - s["alphas"][t]) / np.sqrt(1 - s["alphas_prod"][t]) * out[:, :2]) / np.sqrt(s["alphas"][t])
    out_ref = mean + np.exp(0.5 * out[:, 2:]) * z
    out_ans = variance.p_sample_learned(params, sched, x, t, jnp.asarray(z), "eps_logvar")
    np.testing.assert_allclose(np.asarray(out_ans), out_ref, rtol=1e-5, atol=1e-6)
