"""Ancestral sampling, as the tutorial's p_sample / p_sample_loop, as one compiled lax.scan.

Quirk kept from the tutorial: noise sigma_t z is added at every step, the last one (t = 0)
included; the DDPM paper adds none there. `parameterization` says what the model predicts: "eps"
(the tutorial's noise model), "mean_logvar" (the 4-output model of the variational loss) or
"eps_logvar" (the 4-output model of the hybrid loss: noise and log-variance).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jax_ddpm import cpu_options
from jax_ddpm.losses import eps_to_mean, model_mean_logvar
from jax_ddpm.model import apply_model
from jax_ddpm.schedule import Schedule


def p_sample(params: dict, schedule: Schedule, x: jax.Array, t: jax.Array, z: jax.Array,
             parameterization: str = "eps") -> jax.Array:
    """One reverse step x_t -> x_{t-1} at integer step t, for x (N, 2).

    "eps" (the tutorial's model): x_{t-1} = (x_t - (1 - alpha_t) / sqrt(1 - abar_t) eps_theta(x_t, t))
    / sqrt(alpha_t) + sqrt(beta_t) z (DDPM Algorithm 2). "mean_logvar" (the 4-output model the
    variational loss trains): x_{t-1} = mean_theta + exp(log_var_theta / 2) z. "eps_logvar" (the
    hybrid loss's model): the mean from eps_theta as for "eps", the learned variance as for "mean_logvar".
    """
    t = jnp.asarray(t, jnp.int32).reshape(1)
    if parameterization == "eps":
        mean = eps_to_mean(schedule, x, t, apply_model(params, x, t))
        sigma_t = jnp.sqrt(schedule.betas[t])
        return mean + sigma_t * z
    mean, log_var = model_mean_logvar(params, schedule, x, t, parameterization)
    return mean + jnp.exp(0.5 * log_var) * z


def _run_chain(params: dict, schedule: Schedule, x_T: jax.Array, noise_at, parameterization: str) -> jax.Array:
    """Steps T-1 .. 0 from x_T, with z = noise_at(k, x) at the k-th step; (T + 1, N, 2), x_T first."""

    def body(x, k_t):
        k, t = k_t
        x = p_sample(params, schedule, x, t, noise_at(k, x), parameterization)
        return x, x

    steps = (jnp.arange(schedule.num_steps), jnp.arange(schedule.num_steps - 1, -1, -1))
    _, xs = jax.lax.scan(body, x_T, steps)
    return jnp.concatenate([x_T[None], xs])


def p_sample_loop(params: dict, schedule: Schedule, x_T: jax.Array, zs: jax.Array,
                  parameterization: str = "eps") -> jax.Array:
    """Run the chain from x_T (N, 2) with injected noise zs (T, N, 2), zs[k] used at step T-1-k.

    Returns all T + 1 states (T + 1, N, 2), x_T first, like the tutorial's x_seq.
    """
    return _run_chain(params, schedule, x_T, lambda k, x: zs[k], parameterization)


def sample_chain(params: dict, schedule: Schedule, key: jax.Array, n: int,
                 parameterization: str = "eps") -> jax.Array:
    """Draw x_T ~ N(0, I) of shape (n, 2) and run the whole chain; (T + 1, n, 2), x_T first.

    The step noise is drawn inside the scan (fold_in(key, k + 1)), so no (T, n, 2) array is built.
    Jitted, with `cpu_options.SAMPLING` when JAX runs on CPU.
    """
    return _jitted_chain()(params, schedule, key, n=n, parameterization=parameterization)


@functools.lru_cache(maxsize=None)
def _jitted_chain():
    return jax.jit(_sample_chain, static_argnames=("n", "parameterization"),
                   compiler_options=cpu_options.on_cpu(cpu_options.SAMPLING))


def _sample_chain(params: dict, schedule: Schedule, key: jax.Array, n: int, parameterization: str) -> jax.Array:
    x_T = jax.random.normal(jax.random.fold_in(key, 0), (n, 2))
    return _run_chain(params, schedule, x_T,
                      lambda k, x: jax.random.normal(jax.random.fold_in(key, k + 1), x.shape, x.dtype),
                      parameterization)
