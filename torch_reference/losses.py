"""The tutorial's losses: noise_estimation_loss (trained with) and loss_variational (never called).

Both draw t (antithetic) and the noise themselves unless `t` / `e` / `noise` are given.
"""

import numpy as np
import torch

from torch_reference.schedule import extract, q_posterior_mean_variance, q_sample


def antithetic_timesteps(batch_size, n_steps):
    t = torch.randint(0, n_steps, size=(batch_size // 2 + 1,))
    return torch.cat([t, n_steps - t - 1], dim=0)[:batch_size].long()


def noise_estimation_loss(model, x_0, alphas_bar_sqrt, one_minus_alphas_bar_sqrt, n_steps, t=None, e=None):
    batch_size = x_0.shape[0]
    # Select a random step for each example
    if t is None:
        t = antithetic_timesteps(batch_size, n_steps)
    # x0 multiplier
    a = extract(alphas_bar_sqrt, t, x_0)
    # eps multiplier
    am1 = extract(one_minus_alphas_bar_sqrt, t, x_0)
    if e is None:
        e = torch.randn_like(x_0)
    # model input
    x = x_0 * a + e * am1
    output = model(x, t)
    return (e - output).square().mean()


def normal_kl(mean1, logvar1, mean2, logvar2):
    kl = 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * torch.exp(-logvar2))
    return kl


def entropy(val):
    return (val * torch.log(val + 1e-7)).sum()


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(torch.tensor(np.sqrt(2.0 / np.pi)) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    # Assumes data is integers [0, 255] rescaled to [-1, 1]
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    plus_in = inv_stdv * (centered_x + 1.0 / 255.0)
    cdf_plus = approx_standard_normal_cdf(plus_in)
    min_in = inv_stdv * (centered_x - 1.0 / 255.0)
    cdf_min = approx_standard_normal_cdf(min_in)
    log_cdf_plus = torch.log(torch.clamp(cdf_plus, min=1e-12))
    log_one_minus_cdf_min = torch.log(torch.clamp(1 - cdf_min, min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    log_probs = torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(torch.clamp(cdf_delta, min=1e-12))),
    )
    return log_probs


def p_mean_variance(model, x, t):
    # Go through model
    out = model(x, t)
    # Extract the mean and variance
    mean, log_var = torch.split(out, 2, dim=-1)
    var = torch.exp(log_var)
    return mean, log_var


def loss_variational(
    model,
    x_0,
    alphas_bar_sqrt,
    one_minus_alphas_bar_sqrt,
    posterior_mean_coef_1,
    posterior_mean_coef_2,
    posterior_log_variance_clipped,
    n_steps,
    t=None,
    noise=None,
):
    batch_size = x_0.shape[0]
    # Select a random step for each example
    if t is None:
        t = antithetic_timesteps(batch_size, n_steps)
    # Perform diffusion for step t
    x_t = q_sample(x_0, t, alphas_bar_sqrt, one_minus_alphas_bar_sqrt, noise=noise)
    # Compute the true mean and variance
    true_mean, true_var = q_posterior_mean_variance(
        x_0, x_t, t, posterior_mean_coef_1, posterior_mean_coef_2, posterior_log_variance_clipped
    )
    # Infer the mean and variance with our model
    model_mean, model_var = p_mean_variance(model, x_t, t)
    # Compute the KL loss
    kl = normal_kl(true_mean, true_var, model_mean, model_var)
    kl = torch.mean(kl.view(batch_size, -1), dim=1) / np.log(2.0)
    # NLL of the decoder
    decoder_nll = -discretized_gaussian_log_likelihood(x_0, means=model_mean, log_scales=0.5 * model_var)
    decoder_nll = torch.mean(decoder_nll.view(batch_size, -1), dim=1) / np.log(2.0)
    # At the first timestep return the decoder NLL, otherwise KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))
    output = torch.where(t == 0, decoder_nll, kl)
    return output.mean(-1)
