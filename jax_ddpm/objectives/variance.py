"""Beyond the tutorial: models that learn their variance, and the negative ELBO of a trained model.

Learned variance: `model_mean_logvar` reads p(x_{t-1} | x_t) off a model that predicts "eps" (the
tutorial's), "mean_logvar" (the 4-output model of the tutorial's loss_variational) or "eps_logvar"
(noise and log-variance, trained by `hybrid_loss`, Improved DDPM); `p_sample_learned` is the
sampler step of the 4-output models; `vlb_terms` is the bound's term at step t with either decoder.

The negative ELBO, over all T terms:

-ELBO = L_prior + sum_{t=1}^{T-1} L_t + L_0 (DDPM eq. 5, in the tutorial's 0-based step indices):
L_prior = KL(q(x_T | x_0) || N(0, I)) at the last step, L_t = KL(q(x_{t-1} | x_t, x_0) ||
p(x_{t-1} | x_t)) and L_0 the decoder NLL -log p(x_0 | x_1). Each term is averaged over the 2
dimensions and divided by ln 2, as the tutorial's variational loss does, and estimated with one
draw of x_t ~ q(x_t | x_0) per point and step.

`negative_elbo` derives the schedule's arrays from its betas in float64 before rounding them to
float32 (`accurate_schedule`): with the tutorial's float32 arithmetic, 1 - abar_t at small t carries
~1e-3 relative error, which moves the posterior mean by more than the small-t KL terms measure
(up to 30% error per term at t < 10 for the tutorial's schedule).

The decoder is the tutorial's 8-bit discretized Gaussian ("discretized", a probability of a bin of
width 2/255, which assumes data in [-1, 1]: false for moons) or a Gaussian density ("gaussian",
for continuous data; densities can exceed 1, so its bits/dim can be negative). The two totals
differ by about log2(255 / 2) = 7 bits/dim for the same model and are not comparable.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax_ddpm.losses import discretized_gaussian_log_likelihood, normal_kl, p_mean_variance
from jax_ddpm.model import model_of
from jax_ddpm.schedule import Schedule, extract, q_posterior_mean_variance, q_sample, schedule_from_betas


def gaussian_log_likelihood(x, means, log_scales):
    """log N(x; means, exp(log_scales)^2), element-wise: a continuous decoder for data that are not
    8-bit images (the discretized one assumes 255 bins on [-1, 1])."""
    return -0.5 * (np.log(2.0 * np.pi) + 2.0 * log_scales + jnp.square(x - means) * jnp.exp(-2.0 * log_scales))


def eps_to_mean(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Mean of p(x_{t-1} | x_t) from predicted noise: (x_t - (1 - alpha_t) / sqrt(1 - abar_t) eps)
    / sqrt(alpha_t) (DDPM eq. 11), in the operation order of the tutorial's p_sample."""
    alpha_t = extract(schedule.alphas, t, x_t)
    eps_factor = (1 - alpha_t) / extract(schedule.one_minus_alphas_bar_sqrt, t, x_t)
    return (1 / jnp.sqrt(alpha_t)) * (x_t - eps_factor * eps)


def model_mean_logvar(
    params: dict,
    schedule: Schedule,
    x_t: jax.Array,
    t: jax.Array,
    parameterization: str = "mean_logvar",
    model: Optional[Callable] = None,
):
    """Mean and log-variance (each (B, 2)) of p(x_{t-1} | x_t) for a model that predicts
    "eps" (the tutorial's 2-output model, with the sampler's fixed variance beta_t), "mean_logvar"
    (the variational loss's 4-output model) or "eps_logvar" (the hybrid loss's: noise and log-variance).
    `model(x, t)`: the model to ask (a guided class model), default the tutorial's with `params`."""
    model = model_of(params) if model is None else model
    if parameterization == "mean_logvar":
        return p_mean_variance(model, x_t, t)
    out = model(x_t, t)
    if parameterization == "eps":
        return eps_to_mean(schedule, x_t, t, out), jnp.broadcast_to(jnp.log(extract(schedule.betas, t, x_t)), x_t.shape)
    if parameterization == "eps_logvar":
        eps, log_var = jnp.split(out, 2, axis=-1)
        return eps_to_mean(schedule, x_t, t, eps), log_var
    raise ValueError(f"unknown parameterization {parameterization!r}; choose eps, mean_logvar or eps_logvar")


def p_sample_learned(
    params: dict,
    schedule: Schedule,
    x: jax.Array,
    t,
    z: jax.Array,
    parameterization: str = "mean_logvar",
    model: Optional[Callable] = None,
) -> jax.Array:
    """One reverse step x_t -> x_{t-1} of a 4-output model at integer step t, for x (N, 2):
    x_{t-1} = mean_theta + exp(log_var_theta / 2) z, the mean read off as `model_mean_logvar` does."""
    t = jnp.asarray(t, jnp.int32).reshape(1)
    mean, log_var = model_mean_logvar(params, schedule, x, t, parameterization, model)
    return mean + jnp.exp(0.5 * log_var) * z


def vlb_terms(
    schedule: Schedule,
    x_0: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    model_mean: jax.Array,
    model_log_var: jax.Array,
    decoder: str = "discretized",
) -> jax.Array:
    """Per-example term of the bound in bits/dim, shape (B,): KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))
    for t > 0; at t == 0 the decoder NLL -log p(x_0 | x_1), "discretized" (the tutorial's 8-bit
    one) or "gaussian" (a density, for continuous data)."""
    batch_size = x_0.shape[0]
    true_mean, true_var = q_posterior_mean_variance(
        x_0,
        x_t,
        t,
        schedule.posterior_mean_coef_1,
        schedule.posterior_mean_coef_2,
        schedule.posterior_log_variance_clipped,
    )
    kl = normal_kl(true_mean, true_var, model_mean, model_log_var)
    kl = jnp.mean(kl.reshape(batch_size, -1), axis=1) / np.log(2.0)
    if decoder == "discretized":
        log_likelihood = discretized_gaussian_log_likelihood(x_0, means=model_mean, log_scales=0.5 * model_log_var)
    elif decoder == "gaussian":
        log_likelihood = gaussian_log_likelihood(x_0, means=model_mean, log_scales=0.5 * model_log_var)
    else:
        raise ValueError(f"unknown decoder {decoder!r}; choose discretized or gaussian")
    decoder_nll = jnp.mean(-log_likelihood.reshape(batch_size, -1), axis=1) / np.log(2.0)
    return jnp.where(t == 0, decoder_nll, kl)


def hybrid_loss(
    params: dict,
    schedule: Schedule,
    x_0: jax.Array,
    t: jax.Array,
    e: jax.Array,
    hybrid_lambda: float = 0.001,
    model: Optional[Callable] = None,
) -> jax.Array:
    """Improved DDPM's L_hybrid = L_simple + lambda * L_vlb (Nichol & Dhariwal 2021, sec. 3.1) for a
    4-output model predicting (eps, log-variance).

    L_simple is the noise MSE; L_vlb = T * E_t[L_t] (the bound summed over steps, estimated from the
    batch's steps) with the mean derived from stop_gradient(eps), so the bound trains only the
    variance and L_simple alone trains the mean.
    """
    x_t = q_sample(x_0, t, schedule.alphas_bar_sqrt, schedule.one_minus_alphas_bar_sqrt, e)
    model = model_of(params) if model is None else model  # a class model at its labels, closed over params
    eps, log_var = jnp.split(model(x_t, t), 2, axis=-1)
    l_simple = jnp.mean(jnp.square(e - eps))
    frozen_mean = eps_to_mean(schedule, x_t, t, jax.lax.stop_gradient(eps))
    l_vlb = schedule.num_steps * jnp.mean(vlb_terms(schedule, x_0, x_t, t, frozen_mean, log_var))
    return l_simple + hybrid_lambda * l_vlb


def accurate_schedule(schedule: Schedule) -> Schedule:
    """The same betas, every derived array computed in float64 and rounded once to float32."""
    arrays = schedule_from_betas(np.asarray(schedule.betas, np.float64))
    return jax.tree_util.tree_map(lambda value: jnp.asarray(value.astype(np.float32)), arrays)


def prior_bpd(schedule: Schedule, x_0: jax.Array) -> jax.Array:
    """KL(q(x_T | x_0) || N(0, I)) per point in bits/dim, shape (N,): what the forward process
    leaves unexplained by the sampler's N(0, I) start."""
    t_last = jnp.full((x_0.shape[0],), schedule.num_steps - 1)
    mean = extract(schedule.alphas_bar_sqrt, t_last, x_0) * x_0
    log_var = jnp.broadcast_to(jnp.log(extract(1 - schedule.alphas_prod, t_last, x_0)), x_0.shape)
    kl = normal_kl(mean, log_var, 0.0, 0.0)
    return jnp.mean(kl, axis=1) / np.log(2.0)


@functools.partial(jax.jit, static_argnames=("parameterization", "decoder", "mean_logvar"))
def elbo_terms(
    params: dict,
    schedule: Schedule,
    x_0: jax.Array,
    key: jax.Array,
    parameterization: str = "mean_logvar",
    decoder: str = "discretized",
    mean_logvar: Callable = model_mean_logvar,
) -> jax.Array:
    """Every term of the bound for every point, in bits/dim: (T, N), row t the term at step t
    (row 0 the decoder NLL), x_t drawn with noise from fold_in(key, t). `mean_logvar(params,
    schedule, x_t, t, parameterization)` gives p(x_{t-1} | x_t) (`predictions.model_mean_logvar` for
    v and x0 models)."""

    def term(t):
        steps = jnp.full((x_0.shape[0],), t)
        noise = jax.random.normal(jax.random.fold_in(key, t), x_0.shape, x_0.dtype)
        x_t = q_sample(x_0, steps, schedule.alphas_bar_sqrt, schedule.one_minus_alphas_bar_sqrt, noise)
        mean, log_var = mean_logvar(params, schedule, x_t, steps, parameterization)
        return vlb_terms(schedule, x_0, x_t, steps, mean, log_var, decoder)

    return jax.lax.map(term, jnp.arange(schedule.num_steps))


def negative_elbo(
    params: dict,
    schedule: Schedule,
    x_0,
    key: jax.Array,
    parameterization: str = "mean_logvar",
    decoder: str = "discretized",
    mean_logvar: Callable = model_mean_logvar,
) -> dict[str, float]:
    """The negative ELBO of points x_0 (N, 2) in bits/dim, averaged over the points, and its parts:
    total = prior + diffusion (the KL terms, t >= 1) + decoder (t = 0), on `accurate_schedule`."""
    x_0 = jnp.asarray(x_0, jnp.float32)
    schedule = accurate_schedule(schedule)
    terms = np.asarray(elbo_terms(params, schedule, x_0, key, parameterization, decoder, mean_logvar), np.float64).mean(
        axis=1
    )
    prior = float(np.mean(np.asarray(prior_bpd(schedule, x_0), np.float64)))
    decoder_bpd, diffusion = float(terms[0]), float(terms[1:].sum())
    return dict(total=prior + diffusion + decoder_bpd, prior=prior, diffusion=diffusion, decoder=decoder_bpd)
