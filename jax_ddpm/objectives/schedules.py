"""The schedule a run trains and samples with: `run_schedule(config)`, built here and only here.

Beyond the tutorial's named betas (`schedule.make_beta_schedule`) it offers the cosine betas of
Nichol & Dhariwal (2021) (--schedule cosine) and the zero-terminal-SNR rescaling of Lin et al. (2024)
(--zero-terminal-snr); the arrays are then derived by the tutorial's own cell (`schedule.schedule_from_betas`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_ddpm.schedule import Schedule, make_beta_schedule, schedule_from_betas


def run_schedule(config) -> Schedule:
    """The Schedule (JAX arrays, float32) of a run's `Config`: --schedule, --num-steps, --beta-start,
    --beta-end, rescaled to zero terminal SNR with --zero-terminal-snr."""
    betas = betas_for(config)
    if config.zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return device_schedule(betas)


def betas_for(config) -> np.ndarray:
    """--schedule's betas (T,) in float32: the tutorial's make_beta_schedule, or cosine (start and end unused)."""
    if config.schedule == "cosine":
        return cosine_betas(config.num_steps).astype(np.float32)
    return make_beta_schedule(config.schedule, config.num_steps, config.beta_start, config.beta_end)


def device_schedule(betas: np.ndarray) -> Schedule:
    """The tutorial's arrays for any betas (T,) (`schedule.schedule_from_betas`, computed in numpy in
    the dtype of `betas`), as JAX arrays."""
    return jax.tree_util.tree_map(jnp.asarray, schedule_from_betas(np.asarray(betas)))


def cosine_betas(n_timesteps: int) -> np.ndarray:
    """The cosine schedule of Nichol & Dhariwal (2021), eq. 17, s = 0.008, betas clipped at 0.999, in float64."""
    s = 0.008
    steps = np.arange(n_timesteps + 1, dtype=np.float64) / n_timesteps
    alpha_bar = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
    return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Betas rescaled so that alpha_bar_{T-1} = 0 (zero terminal SNR), keeping alpha_bar_0
    (Lin et al. 2024, Algorithm 1, as diffusers' rescale_zero_terminal_snr): sqrt(alpha_bar) is
    shifted to end at 0 and scaled to start where it started. numpy, in the dtype of `betas`."""
    dtype = betas.dtype
    alphas = 1.0 - betas
    # torch.cumprod accumulates in float64 on the CPU, so does this (as schedule.schedule_from_betas).
    alphas_cumprod = np.cumprod(alphas.astype(np.float64)).astype(dtype)
    alphas_bar_sqrt = np.sqrt(alphas_cumprod)
    # 1. store the old values
    alphas_bar_sqrt_0 = alphas_bar_sqrt[0].copy()
    alphas_bar_sqrt_T = alphas_bar_sqrt[-1].copy()
    # 2. shift so that the last step is zero, 3. scale so that the first step is back to its old value
    alphas_bar_sqrt = alphas_bar_sqrt - alphas_bar_sqrt_T
    alphas_bar_sqrt = alphas_bar_sqrt * (alphas_bar_sqrt_0 / (alphas_bar_sqrt_0 - alphas_bar_sqrt_T))
    # 4. convert alphas_bar_sqrt back to betas
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1 - alphas).astype(dtype)


def has_zero_terminal_snr(schedule: Schedule) -> bool:
    """True when alpha_bar_{T-1} == 0 (a concrete schedule; False while traced)."""
    try:
        return float(schedule.alphas_prod[-1]) == 0.0
    except jax.errors.ConcretizationTypeError:
        return False
