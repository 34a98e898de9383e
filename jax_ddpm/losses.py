"""The tutorial's losses: noise estimation (what it trains with) and the variational bound, plus
the Improved-DDPM hybrid of the two.

Every loss takes its randomness injected (`t`, `e`/`noise`) so parity tests can drive the JAX and
PyTorch sides with the same numbers; `antithetic_timesteps` draws `t` as the tutorial does.
`model_mean_logvar` turns the model's output into p(x_{t-1} | x_t) for each parameterization
("eps", "mean_logvar", "eps_logvar"); the sampler and the ELBO use it too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_ddpm.model import apply_model
from jax_ddpm.schedule import Schedule, extract, q_posterior_mean_variance, q_sample


def antithetic_timesteps(key: jax.Array, batch_size: int, n_steps: int) -> jax.Array:
    """t = concat(t0, T - t0 - 1)[:B] with t0 ~ U{0..T-1} of size B//2 + 1, as the tutorial draws it."""
    t0 = jax.random.randint(key, (batch_size // 2 + 1,), 0, n_steps)
    return jnp.concatenate([t0, n_steps - t0 - 1])[:batch_size]


def noise_estimation_loss(params: dict, schedule: Schedule, x_0: jax.Array, t: jax.Array,
                          e: jax.Array) -> jax.Array:
    """mean((e - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) e, t))^2), the DDPM L_simple (eq. 14)."""
    a = extract(schedule.alphas_bar_sqrt, t, x_0)
    am1 = extract(schedule.one_minus_alphas_bar_sqrt, t, x_0)
    x = x_0 * a + e * am1
    output = apply_model(params, x, t)
    return jnp.mean(jnp.square(e - output))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), element-wise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """The tanh approximation of the standard normal CDF used by the DDPM code."""
    return 0.5 * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * jnp.power(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(x) under N(means, exp(log_scales)^2) discretised to 255 bins on [-1, 1]."""
    centered_x = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def gaussian_log_likelihood(x, means, log_scales):
    """log N(x; means, exp(log_scales)^2), element-wise: a continuous decoder for data that are not
    8-bit images (the discretized one assumes 255 bins on [-1, 1])."""
    return -0.5 * (np.log(2.0 * np.pi) + 2.0 * log_scales + jnp.square(x - means) * jnp.exp(-2.0 * log_scales))


def p_mean_variance(params: dict, x: jax.Array, t: jax.Array):
    """Split the 4-output model into the mean (B, 2) and log-variance (B, 2) of p(x_{t-1} | x_t)."""
    out = apply_model(params, x, t)
    mean, log_var = jnp.split(out, 2, axis=-1)
    return mean, log_var


def eps_to_mean(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Mean of p(x_{t-1} | x_t) from predicted noise: (x_t - (1 - alpha_t) / sqrt(1 - abar_t) eps)
    / sqrt(alpha_t) (DDPM eq. 11), in the tutorial's operation order."""
    alpha_t = extract(schedule.alphas, t, x_t)
    eps_factor = (1 - alpha_t) / extract(schedule.one_minus_alphas_bar_sqrt, t, x_t)
    return (1 / jnp.sqrt(alpha_t)) * (x_t - eps_factor * eps)


def model_mean_logvar(params: dict, schedule: Schedule, x_t: jax.Array, t: jax.Array,
                      parameterization: str = "mean_logvar"):
    """Mean and log-variance (each (B, 2)) of p(x_{t-1} | x_t) for a model that predicts
    "eps" (the tutorial's 2-output model, with the sampler's fixed variance beta_t), "mean_logvar"
    (the variational loss's 4-output model) or "eps_logvar" (the hybrid loss's: noise and log-variance)."""
    if parameterization == "mean_logvar":
        return p_mean_variance(params, x_t, t)
    out = apply_model(params, x_t, t)
    if parameterization == "eps":
        return eps_to_mean(schedule, x_t, t, out), jnp.broadcast_to(jnp.log(extract(schedule.betas, t, x_t)), x_t.shape)
    if parameterization == "eps_logvar":
        eps, log_var = jnp.split(out, 2, axis=-1)
        return eps_to_mean(schedule, x_t, t, eps), log_var
    raise ValueError(f"unknown parameterization {parameterization!r}; choose eps, mean_logvar or eps_logvar")


def vlb_terms(schedule: Schedule, x_0: jax.Array, x_t: jax.Array, t: jax.Array, model_mean: jax.Array,
              model_log_var: jax.Array, decoder: str = "discretized") -> jax.Array:
    """Per-example term of the bound in bits/dim, shape (B,): KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))
    for t > 0; at t == 0 the decoder NLL -log p(x_0 | x_1), "discretized" (the tutorial's 8-bit
    one) or "gaussian" (a density, for continuous data)."""
    batch_size = x_0.shape[0]
    true_mean, true_var = q_posterior_mean_variance(schedule, x_0, x_t, t)
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


def variational_terms(params: dict, schedule: Schedule, x_0: jax.Array, t: jax.Array,
                      noise: jax.Array) -> jax.Array:
    """Per-example term of the bound in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), or the
    discretised decoder NLL at t == 0. Shape (B,)."""
    x_t = q_sample(schedule, x_0, t, noise)
    model_mean, model_var = p_mean_variance(params, x_t, t)
    return vlb_terms(schedule, x_0, x_t, t, model_mean, model_var)


def variational_loss(params: dict, schedule: Schedule, x_0: jax.Array, t: jax.Array,
                     noise: jax.Array) -> jax.Array:
    """The tutorial's `loss_variational`: the batch mean of `variational_terms`."""
    return jnp.mean(variational_terms(params, schedule, x_0, t, noise))


def hybrid_loss(params: dict, schedule: Schedule, x_0: jax.Array, t: jax.Array, e: jax.Array,
                hybrid_lambda: float = 0.001) -> jax.Array:
    """Improved DDPM's L_hybrid = L_simple + lambda * L_vlb (Nichol & Dhariwal 2021, sec. 3.1) for a
    4-output model predicting (eps, log-variance).

    L_simple is the noise MSE; L_vlb = T * E_t[L_t] (the bound summed over steps, estimated from the
    batch's steps) with the mean derived from stop_gradient(eps), so the bound trains only the
    variance and L_simple alone trains the mean.
    """
    x_t = q_sample(schedule, x_0, t, e)
    eps, log_var = jnp.split(apply_model(params, x_t, t), 2, axis=-1)
    l_simple = jnp.mean(jnp.square(e - eps))
    frozen_mean = eps_to_mean(schedule, x_t, t, jax.lax.stop_gradient(eps))
    l_vlb = schedule.num_steps * jnp.mean(vlb_terms(schedule, x_0, x_t, t, frozen_mean, log_var))
    return l_simple + hybrid_lambda * l_vlb
