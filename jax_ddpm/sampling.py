"""The tutorial's p_sample / p_sample_loop (noise added at every step, t = 0 included).

JAX twin of torch_reference/sampling.py: the loop is one lax.scan, and the noise comes from `key`
unless `x_T` / `zs` are given. `sample_chain` is the compiled chain the runs use, for the tutorial's
model or (elbo.p_sample_learned) a model that learned its variance.
"""

import functools

import jax
import jax.numpy as jnp

from jax_ddpm import speed
from jax_ddpm.model import apply_model
from jax_ddpm.objectives.variance import p_sample_learned
from jax_ddpm.schedule import Schedule, extract


def p_sample(params, x, t, alphas, betas, one_minus_alphas_bar_sqrt, z):
    t = jnp.array([t])
    # Factor to the model output
    eps_factor = (1 - extract(alphas, t, x)) / extract(one_minus_alphas_bar_sqrt, t, x)
    # Model output
    eps_theta = apply_model(params, x, t)
    # Final values
    mean = (1 / jnp.sqrt(extract(alphas, t, x))) * (x - (eps_factor * eps_theta))
    # Fixed sigma
    sigma_t = jnp.sqrt(extract(betas, t, x))
    sample = mean + sigma_t * z
    return sample


def p_sample_loop(
    params, shape, n_steps, alphas, betas, one_minus_alphas_bar_sqrt, x_T=None, zs=None, key=None, p_sample_fn=p_sample
):
    """All n_steps + 1 states, x_T first; zs[k] is the noise of the k-th step taken (step n_steps-1-k).

    Drawn from `key` when not given: x_T from fold_in(key, 0), zs[k] from fold_in(key, k + 1), inside the
    scan (no (T, N, 2) array is built). `p_sample_fn` takes p_sample's arguments (see `p_sample_for`)."""
    cur_x = jax.random.normal(jax.random.fold_in(key, 0), shape) if x_T is None else x_T

    def body(cur_x, k_i):  # for k, i in enumerate(reversed(range(n_steps)))
        k, i = k_i
        z = jax.random.normal(jax.random.fold_in(key, k + 1), cur_x.shape, cur_x.dtype) if zs is None else zs[k]
        cur_x = p_sample_fn(params, cur_x, i, alphas, betas, one_minus_alphas_bar_sqrt, z=z)
        return cur_x, cur_x

    _, x_seq = jax.lax.scan(body, cur_x, (jnp.arange(n_steps), jnp.arange(n_steps - 1, -1, -1)))
    return jnp.concatenate([cur_x[None], x_seq])


def p_sample_for(schedule: Schedule, parameterization: str = "eps"):
    """The reverse step for a model that predicts `parameterization`, with p_sample's arguments: the
    tutorial's p_sample for "eps", elbo.p_sample_learned for "mean_logvar" and "eps_logvar"."""
    if parameterization == "eps":
        return p_sample

    def step(params, x, t, alphas, betas, one_minus_alphas_bar_sqrt, z):
        return p_sample_learned(params, schedule, x, t, z, parameterization)

    return step


def sample_chain(params: dict, schedule: Schedule, key: jax.Array, n: int, parameterization: str = "eps") -> jax.Array:
    """Draw x_T ~ N(0, I) of shape (n, 2) and run the whole chain from `key`; (T + 1, n, 2), x_T first.

    Jitted, with `speed.SAMPLING` when JAX runs on CPU.
    """
    return _jitted_chain()(params, schedule, key, n=n, parameterization=parameterization)


@functools.lru_cache(maxsize=None)
def _jitted_chain():
    return jax.jit(
        _sample_chain, static_argnames=("n", "parameterization"), compiler_options=speed.on_cpu(speed.SAMPLING)
    )


def _sample_chain(params: dict, schedule: Schedule, key: jax.Array, n: int, parameterization: str) -> jax.Array:
    return p_sample_loop(
        params,
        (n, 2),
        schedule.num_steps,
        schedule.alphas,
        schedule.betas,
        schedule.one_minus_alphas_bar_sqrt,
        key=key,
        p_sample_fn=p_sample_for(schedule, parameterization),
    )
