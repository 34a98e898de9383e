"""The tutorial's losses: noise estimation (what it trains with) and the variational bound.

Every loss takes its randomness injected (`t`, `e`/`noise`) so parity tests can drive the JAX and
PyTorch sides with the same numbers; `antithetic_timesteps` draws `t` as the tutorial does.
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


def p_mean_variance(params: dict, x: jax.Array, t: jax.Array):
    """Split the 4-output model into the mean (B, 2) and log-variance (B, 2) of p(x_{t-1} | x_t)."""
    out = apply_model(params, x, t)
    mean, log_var = jnp.split(out, 2, axis=-1)
    return mean, log_var


def variational_terms(params: dict, schedule: Schedule, x_0: jax.Array, t: jax.Array,
                      noise: jax.Array) -> jax.Array:
    """Per-example term of the bound in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), or the
    discretised decoder NLL at t == 0. Shape (B,)."""
    batch_size = x_0.shape[0]
    x_t = q_sample(schedule, x_0, t, noise)
    true_mean, true_var = q_posterior_mean_variance(schedule, x_0, x_t, t)
    model_mean, model_var = p_mean_variance(params, x_t, t)
    kl = normal_kl(true_mean, true_var, model_mean, model_var)
    kl = jnp.mean(kl.reshape(batch_size, -1), axis=1) / np.log(2.0)
    decoder_nll = -discretized_gaussian_log_likelihood(x_0, means=model_mean, log_scales=0.5 * model_var)
    decoder_nll = jnp.mean(decoder_nll.reshape(batch_size, -1), axis=1) / np.log(2.0)
    return jnp.where(t == 0, decoder_nll, kl)


def variational_loss(params: dict, schedule: Schedule, x_0: jax.Array, t: jax.Array,
                     noise: jax.Array) -> jax.Array:
    """The tutorial's `loss_variational`: the batch mean of `variational_terms`."""
    return jnp.mean(variational_terms(params, schedule, x_0, t, noise))
