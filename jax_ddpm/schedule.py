"""Noise schedule, forward process q(x_t | x_0) and posterior q(x_{t-1} | x_t, x_0).

The schedule is an immutable pytree of precomputed arrays under the tutorial's names. It is
computed in numpy, in the requested dtype, with the tutorial's operations in the tutorial's
order: in float32 that reproduces PyTorch's rounding (1 - alphas_prod cancels badly at t = 0,
and a float64-then-cast schedule would differ from the reference there by ~1e-3 relative).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


def make_beta_schedule(schedule: str = "linear", n_timesteps: int = 1000, start: float = 1e-5,
                       end: float = 1e-2, dtype=np.float32) -> np.ndarray:
    """Betas of shape (n_timesteps,) for `linear`, `quad`, `sigmoid`, `constant` or `cosine`.

    linear: linspace(start, end); quad: linspace(sqrt(start), sqrt(end)) ** 2;
    sigmoid: sigmoid(linspace(-6, 6)) * (end - start) + start; constant: start at every step
    (the tutorial's commented-out alternative); cosine: Nichol & Dhariwal (2021), eq. 17,
    s = 0.008, betas clipped at 0.999 (start and end unused).
    """
    dtype = np.dtype(dtype)
    if schedule == "linear":
        betas = np.linspace(start, end, n_timesteps, dtype=dtype)
    elif schedule == "quad":
        betas = np.linspace(start ** 0.5, end ** 0.5, n_timesteps, dtype=dtype) ** 2
    elif schedule == "sigmoid":
        betas = np.linspace(-6, 6, n_timesteps, dtype=dtype)
        betas = 1 / (1 + np.exp(-betas)) * dtype.type(end - start) + dtype.type(start)
    elif schedule == "constant":
        betas = np.full(n_timesteps, start, dtype=dtype)
    elif schedule == "cosine":
        s = 0.008
        steps = np.arange(n_timesteps + 1, dtype=np.float64) / n_timesteps
        alpha_bar = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
        betas = np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999).astype(dtype)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose linear, quad, sigmoid, constant or cosine")
    return betas.astype(dtype)


@flax.struct.dataclass
class Schedule:
    """Every array the tutorial derives from the betas, each of shape (T,)."""

    betas: jax.Array
    alphas: jax.Array
    alphas_prod: jax.Array
    alphas_prod_p: jax.Array
    alphas_bar_sqrt: jax.Array
    one_minus_alphas_bar_log: jax.Array
    one_minus_alphas_bar_sqrt: jax.Array
    posterior_mean_coef_1: jax.Array
    posterior_mean_coef_2: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]


def schedule_arrays(betas: np.ndarray) -> dict[str, np.ndarray]:
    """The tutorial's derived arrays, computed in numpy in the dtype of `betas`."""
    one = betas.dtype.type(1)
    alphas = one - betas
    # torch.cumprod accumulates in float64 on the CPU even for float32 tensors; so does this.
    alphas_prod = np.cumprod(alphas.astype(np.float64)).astype(betas.dtype)
    alphas_prod_p = np.concatenate([np.ones(1, betas.dtype), alphas_prod[:-1]])
    posterior_variance = betas * (one - alphas_prod_p) / (one - alphas_prod)
    return dict(
        betas=betas,
        alphas=alphas,
        alphas_prod=alphas_prod,
        alphas_prod_p=alphas_prod_p,
        alphas_bar_sqrt=np.sqrt(alphas_prod),
        one_minus_alphas_bar_log=np.log(one - alphas_prod),
        one_minus_alphas_bar_sqrt=np.sqrt(one - alphas_prod),
        posterior_mean_coef_1=betas * np.sqrt(alphas_prod_p) / (one - alphas_prod),
        posterior_mean_coef_2=(one - alphas_prod_p) * np.sqrt(alphas) / (one - alphas_prod),
        posterior_variance=posterior_variance,
        # Entry 0 of the posterior variance is 0, so the tutorial repeats entry 1 there.
        posterior_log_variance_clipped=np.log(np.concatenate([posterior_variance[1:2], posterior_variance[1:]])),
    )


def make_schedule(schedule: str = "sigmoid", n_timesteps: int = 100, start: float = 1e-5,
                  end: float = 5e-3, dtype=np.float32) -> Schedule:
    """The tutorial's schedule (defaults: sigmoid, T = 100, 1e-5..5e-3) as a Schedule pytree."""
    betas = make_beta_schedule(schedule, n_timesteps, start, end, dtype)
    return Schedule(**{k: jnp.asarray(v) for k, v in schedule_arrays(betas).items()})


def schedule_for(config) -> Schedule:
    """The schedule a run's `Config` asks for (--schedule, --num-steps, --beta-start, --beta-end)."""
    return make_schedule(config.schedule, config.num_steps, config.beta_start, config.beta_end)


def extract(a: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
    """Gather `a` at integer steps `t` (B,) and reshape to (B, 1, ..., 1) to broadcast against `x`."""
    t = jnp.asarray(t).reshape(-1)
    return jnp.take(a, t, axis=0).reshape((t.shape[0],) + (1,) * (x.ndim - 1))


def q_sample(schedule: Schedule, x_0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with the given noise (DDPM eq. 4)."""
    alphas_t = extract(schedule.alphas_bar_sqrt, t, x_0)
    alphas_1_m_t = extract(schedule.one_minus_alphas_bar_sqrt, t, x_0)
    return alphas_t * x_0 + alphas_1_m_t * noise


def q_posterior_mean_variance(schedule: Schedule, x_0: jax.Array, x_t: jax.Array, t: jax.Array):
    """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM eq. 6-7)."""
    coef_1 = extract(schedule.posterior_mean_coef_1, t, x_0)
    coef_2 = extract(schedule.posterior_mean_coef_2, t, x_0)
    mean = coef_1 * x_0 + coef_2 * x_t
    log_var = extract(schedule.posterior_log_variance_clipped, t, x_0)
    return mean, log_var
