"""The tutorial's ancestral chain as the runs use it: compiled (`sample_chain`), for the tutorial's
eps model or a model that learned its variance (`p_sample_for`)."""

import functools

import jax

from jax_ddpm import speed
from jax_ddpm.model import apply_model
from jax_ddpm.objectives.variance import p_sample_learned
from jax_ddpm.sampling import p_sample, p_sample_loop
from jax_ddpm.schedule import Schedule


def p_sample_for(params: dict, schedule: Schedule, parameterization: str = "eps"):
    """The reverse step for a model that predicts `parameterization`, with p_sample's arguments: the
    tutorial's p_sample for "eps", variance.p_sample_learned for "mean_logvar" and "eps_logvar"."""
    if parameterization == "eps":
        return p_sample

    def step(model, x, t, alphas, betas, one_minus_alphas_bar_sqrt, z=None, key=None):
        z = jax.random.normal(key, x.shape, x.dtype) if z is None else z
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
        _sample_chain, static_argnames=("n", "parameterization"), compiler_options=speed.program_options("sampling")
    )


def _sample_chain(params: dict, schedule: Schedule, key: jax.Array, n: int, parameterization: str) -> jax.Array:
    return p_sample_loop(
        functools.partial(apply_model, params),
        (n, 2),
        schedule.num_steps,
        schedule.alphas,
        schedule.betas,
        schedule.one_minus_alphas_bar_sqrt,
        key=key,
        p_sample=p_sample_for(params, schedule, parameterization),
    )
