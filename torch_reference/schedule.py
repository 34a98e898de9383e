"""The tutorial's utils: make_beta_schedule, extract, q_x (q_sample) and the posterior."""

from __future__ import annotations

import dataclasses

import torch


def make_beta_schedule(schedule="linear", n_timesteps=1000, start=1e-5, end=1e-2, dtype=torch.float32):
    if schedule == "linear":
        betas = torch.linspace(start, end, n_timesteps, dtype=dtype)
    elif schedule == "quad":
        betas = torch.linspace(start**0.5, end**0.5, n_timesteps, dtype=dtype) ** 2
    elif schedule == "sigmoid":
        betas = torch.linspace(-6, 6, n_timesteps, dtype=dtype)
        betas = torch.sigmoid(betas) * (end - start) + start
    elif schedule == "constant":  # the tutorial's commented-out `torch.tensor([1.7e-5] * num_steps)`
        betas = torch.tensor([start] * n_timesteps, dtype=dtype)
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return betas


Array = torch.Tensor


@dataclasses.dataclass
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


def make_schedule(schedule="sigmoid", n_timesteps=100, start=1e-5, end=0.5e-2, dtype=torch.float32) -> Schedule:
    """The tutorial's cell that follows make_beta_schedule, line for line."""
    betas = make_beta_schedule(schedule=schedule, n_timesteps=n_timesteps, start=start, end=end, dtype=dtype)
    return schedule_from_betas(betas)


def schedule_from_betas(betas) -> Schedule:
    """The cell's arrays from its betas (T,), in their dtype."""
    dtype = betas.dtype
    alphas = 1 - betas
    alphas_prod = torch.cumprod(alphas, 0)
    alphas_prod_p = torch.cat([torch.tensor([1], dtype=dtype), alphas_prod[:-1]], 0)
    alphas_bar_sqrt = torch.sqrt(alphas_prod)
    one_minus_alphas_bar_log = torch.log(1 - alphas_prod)
    one_minus_alphas_bar_sqrt = torch.sqrt(1 - alphas_prod)
    posterior_mean_coef_1 = betas * torch.sqrt(alphas_prod_p) / (1 - alphas_prod)
    posterior_mean_coef_2 = (1 - alphas_prod_p) * torch.sqrt(alphas) / (1 - alphas_prod)
    posterior_variance = betas * (1 - alphas_prod_p) / (1 - alphas_prod)
    posterior_log_variance_clipped = torch.log(
        torch.cat((posterior_variance[1].view(1, 1), posterior_variance[1:].view(-1, 1)), 0)
    ).view(-1)
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
    out = torch.gather(input, 0, t.to(input.device))
    reshape = [t.shape[0]] + [1] * (len(shape) - 1)
    return out.reshape(*reshape)


def q_sample(x_0, t, alphas_bar_sqrt, one_minus_alphas_bar_sqrt, noise=None):
    """The tutorial's q_x(x_0, t, noise)."""
    if noise is None:
        noise = torch.randn_like(x_0)
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
