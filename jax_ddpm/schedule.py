"""The tutorial's utils: make_beta_schedule, extract, q_x (q_sample) and the posterior.

JAX twin of torch_reference/schedule.py. The schedule is an immutable pytree of precomputed arrays
under the tutorial's names. It is computed in numpy, in the requested dtype, with the tutorial's
operations in the tutorial's order: in float32 that reproduces PyTorch's rounding (1 - alphas_prod
cancels badly at t = 0, and a float64-then-cast schedule would differ from the reference there by
~1e-3 relative).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


def make_beta_schedule(schedule="linear", n_timesteps=1000, start=1e-5, end=1e-2, dtype=np.float32):
    if schedule == "linear":
        betas = np.linspace(start, end, n_timesteps, dtype=dtype)
    elif schedule == "quad":
        betas = np.linspace(start**0.5, end**0.5, n_timesteps, dtype=dtype) ** 2
    elif schedule == "sigmoid":
        betas = np.linspace(-6, 6, n_timesteps, dtype=dtype)
        betas = 1 / (1 + np.exp(-betas)) * (end - start) + start
    elif schedule == "constant":  # the tutorial's commented-out `torch.tensor([1.7e-5] * num_steps)`
        betas = np.array([start] * n_timesteps, dtype=dtype)
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return betas


Array = jax.Array


@flax.struct.dataclass
class Schedule:
    """The arrays the tutorial derives from its betas, under its names."""

    betas: Array
    alphas: Array
    alphas_prod: Array
    alphas_prod_p: Array
    alphas_bar_sqrt: Array
    one_minus_alphas_bar_log: Array
    one_minus_alphas_bar_sqrt: Array
    posterior_mean_coef_1: Array
    posterior_mean_coef_2: Array
    posterior_variance: Array
    posterior_log_variance_clipped: Array

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]


def make_schedule(schedule="sigmoid", n_timesteps=100, start=1e-5, end=0.5e-2, dtype=np.float32) -> Schedule:
    """The tutorial's cell that follows make_beta_schedule, line for line."""
    betas = make_beta_schedule(schedule=schedule, n_timesteps=n_timesteps, start=start, end=end, dtype=dtype)
    return jax.tree_util.tree_map(jnp.asarray, schedule_from_betas(betas))


def schedule_from_betas(betas) -> Schedule:
    """The cell's arrays from its betas (T,), in their dtype (numpy arrays here: see the module docstring)."""
    dtype = betas.dtype
    alphas = 1 - betas
    # torch.cumprod accumulates in float64 on the CPU even for float32 tensors; so does this.
    alphas_prod = np.cumprod(alphas.astype(np.float64), 0).astype(dtype)
    alphas_prod_p = np.concatenate([np.array([1], dtype=dtype), alphas_prod[:-1]], 0)
    alphas_bar_sqrt = np.sqrt(alphas_prod)
    one_minus_alphas_bar_log = np.log(1 - alphas_prod)
    one_minus_alphas_bar_sqrt = np.sqrt(1 - alphas_prod)
    posterior_mean_coef_1 = betas * np.sqrt(alphas_prod_p) / (1 - alphas_prod)
    posterior_mean_coef_2 = (1 - alphas_prod_p) * np.sqrt(alphas) / (1 - alphas_prod)
    posterior_variance = betas * (1 - alphas_prod_p) / (1 - alphas_prod)
    posterior_log_variance_clipped = np.log(
        np.concatenate((posterior_variance[1].reshape(1, 1), posterior_variance[1:].reshape(-1, 1)), 0)
    ).reshape(-1)
    return Schedule(
        betas,
        alphas,
        alphas_prod,
        alphas_prod_p,
        alphas_bar_sqrt,
        one_minus_alphas_bar_log,
        one_minus_alphas_bar_sqrt,
        posterior_mean_coef_1,
        posterior_mean_coef_2,
        posterior_variance,
        posterior_log_variance_clipped,
    )


def extract(input, t, x):
    shape = x.shape
    out = jnp.take(input, t, axis=0)
    reshape = [t.shape[0]] + [1] * (len(shape) - 1)
    return out.reshape(*reshape)


def q_sample(x_0, t, alphas_bar_sqrt, one_minus_alphas_bar_sqrt, noise):
    """The tutorial's q_x(x_0, t, noise); JAX takes the noise explicitly."""
    alphas_t = extract(alphas_bar_sqrt, t, x_0)
    alphas_1_m_t = extract(one_minus_alphas_bar_sqrt, t, x_0)
    return alphas_t * x_0 + alphas_1_m_t * noise


def q_posterior_mean_variance(
    x_0, x_t, t, posterior_mean_coef_1, posterior_mean_coef_2, posterior_log_variance_clipped
):
    coef_1 = extract(posterior_mean_coef_1, t, x_0)
    coef_2 = extract(posterior_mean_coef_2, t, x_0)
    mean = coef_1 * x_0 + coef_2 * x_t
    var = extract(posterior_log_variance_clipped, t, x_0)
    return mean, var
