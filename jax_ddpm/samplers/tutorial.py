"""The tutorial's ancestral chain as the runs use it: its loop as one lax.scan (`scan_chain`), compiled
(`sample_chain`), for the tutorial's eps model or a model that learned its variance (`p_sample_for`)."""

import functools

import jax
import jax.numpy as jnp

from jax_ddpm import speed
from jax_ddpm.model import apply_model
from jax_ddpm.objectives.variance import p_sample_learned
from jax_ddpm.sampling import p_sample
from jax_ddpm.schedule import Schedule


def scan_chain(model, schedule: Schedule, shape, x_T=None, zs=None, key=None, p_sample=p_sample) -> jax.Array:
    """`sampling.p_sample_loop` over all of `schedule`'s steps as one lax.scan: the T + 1 states (T + 1, *shape),
    x_T first, the same draws from `key` (made inside the scan: no (T, N, 2) noise array is built). `p_sample`:
    the reverse step, called with p_sample's arguments."""
    cur_x = jax.random.normal(jax.random.fold_in(key, 0), shape) if x_T is None else x_T
    n_steps = schedule.num_steps

    def step(cur_x, k_i):  # for k, i in enumerate(reversed(range(n_steps))):
        k, i = k_i
        z = None if zs is None else zs[k]
        key_k = None if key is None else jax.random.fold_in(key, k + 1)
        cur_x = p_sample(
            model, cur_x, i, schedule.alphas, schedule.betas, schedule.one_minus_alphas_bar_sqrt, z=z, key=key_k
        )
        return cur_x, cur_x

    _, x_seq = jax.lax.scan(step, cur_x, (jnp.arange(n_steps), jnp.arange(n_steps - 1, -1, -1)))
    return jnp.concatenate([cur_x[None], x_seq])


def p_sample_for(params: dict, schedule: Schedule, parameterization: str = "eps"):
    """The reverse step for a model that predicts `parameterization`, with p_sample's arguments: the
    tutorial's p_sample for "eps", variance.p_sample_learned for "mean_logvar" and "eps_logvar"."""
    if parameterization == "eps":
        return p_sample

    def step(model, x, t, alphas, betas, one_minus_alphas_bar_sqrt, z=None, key=None):
        z = jax.random.normal(key, x.shape, x.dtype) if z is None else z
        return p_sample_learned(params, schedule, x, t, z, parameterization, model=model)

    return step


def sample_chain(params: dict, schedule: Schedule, key: jax.Array, n: int, parameterization: str = "eps") -> jax.Array:
    """Draw x_T ~ N(0, I) of shape (n, 2) and run the whole chain from `key`; (T + 1, n, 2), x_T first.

    Jitted, with `speed.SAMPLING` when JAX runs on CPU.
    """
    return _jitted_chain()(params, schedule, key, n=n, parameterization=parameterization)


@functools.lru_cache(maxsize=None)
def _jitted_chain():
    return jax.jit(
        _sample_chain, static_argnames=("n", "parameterization"), compiler_options=speed.program_options("sampling")
    )


def _sample_chain(params: dict, schedule: Schedule, key: jax.Array, n: int, parameterization: str) -> jax.Array:
    model = functools.partial(apply_model, params)
    return scan_chain(model, schedule, (n, 2), key=key, p_sample=p_sample_for(params, schedule, parameterization))
