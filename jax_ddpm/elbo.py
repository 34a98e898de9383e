"""The negative ELBO of a trained model in bits per dimension, over all T terms.

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

import jax
import jax.numpy as jnp
import numpy as np

from jax_ddpm.losses import model_mean_logvar, normal_kl, vlb_terms
from jax_ddpm.schedule import Schedule, extract, q_sample, schedule_arrays


def accurate_schedule(schedule: Schedule) -> Schedule:
    """The same betas, every derived array computed in float64 and rounded once to float32."""
    arrays = schedule_arrays(np.asarray(schedule.betas, np.float64))
    return Schedule(**{name: jnp.asarray(value.astype(np.float32)) for name, value in arrays.items()})


def prior_bpd(schedule: Schedule, x_0: jax.Array) -> jax.Array:
    """KL(q(x_T | x_0) || N(0, I)) per point in bits/dim, shape (N,): what the forward process
    leaves unexplained by the sampler's N(0, I) start."""
    t_last = jnp.full((x_0.shape[0],), schedule.num_steps - 1)
    mean = extract(schedule.alphas_bar_sqrt, t_last, x_0) * x_0
    log_var = jnp.broadcast_to(jnp.log(extract(1 - schedule.alphas_prod, t_last, x_0)), x_0.shape)
    kl = normal_kl(mean, log_var, 0.0, 0.0)
    return jnp.mean(kl, axis=1) / np.log(2.0)


@functools.partial(jax.jit, static_argnames=("parameterization", "decoder"))
def elbo_terms(params: dict, schedule: Schedule, x_0: jax.Array, key: jax.Array,
               parameterization: str = "mean_logvar", decoder: str = "discretized") -> jax.Array:
    """Every term of the bound for every point, in bits/dim: (T, N), row t the term at step t
    (row 0 the decoder NLL), x_t drawn with noise from fold_in(key, t)."""

    def term(t):
        steps = jnp.full((x_0.shape[0],), t)
        x_t = q_sample(schedule, x_0, steps, jax.random.normal(jax.random.fold_in(key, t), x_0.shape, x_0.dtype))
        mean, log_var = model_mean_logvar(params, schedule, x_t, steps, parameterization)
        return vlb_terms(schedule, x_0, x_t, steps, mean, log_var, decoder)

    return jax.lax.map(term, jnp.arange(schedule.num_steps))


def negative_elbo(params: dict, schedule: Schedule, x_0, key: jax.Array, parameterization: str = "mean_logvar",
                  decoder: str = "discretized") -> dict[str, float]:
    """The negative ELBO of points x_0 (N, 2) in bits/dim, averaged over the points, and its parts:
    total = prior + diffusion (the KL terms, t >= 1) + decoder (t = 0), on `accurate_schedule`."""
    x_0 = jnp.asarray(x_0, jnp.float32)
    schedule = accurate_schedule(schedule)
    terms = np.asarray(elbo_terms(params, schedule, x_0, key, parameterization, decoder), np.float64).mean(axis=1)
    prior = float(np.mean(np.asarray(prior_bpd(schedule, x_0), np.float64)))
    decoder_bpd, diffusion = float(terms[0]), float(terms[1:].sum())
    return dict(total=prior + diffusion + decoder_bpd, prior=prior, diffusion=diffusion, decoder=decoder_bpd)
