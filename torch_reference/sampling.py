"""The tutorial's p_sample / p_sample_loop (noise added at every step, t = 0 included).

Noise not given is drawn from torch's global generator (seeded with torch.manual_seed).
"""

import torch

from torch_reference.schedule import extract


def p_sample(model, x, t, alphas, betas, one_minus_alphas_bar_sqrt, z=None):
    t = torch.tensor([t])
    # Factor to the model output
    eps_factor = (1 - extract(alphas, t, x)) / extract(one_minus_alphas_bar_sqrt, t, x)
    # Model output
    eps_theta = model(x, t)
    # Final values
    mean = (1 / extract(alphas, t, x).sqrt()) * (x - (eps_factor * eps_theta))
    # Generate z
    if z is None:
        z = torch.randn_like(x)
    # Fixed sigma
    sigma_t = extract(betas, t, x).sqrt()
    sample = mean + sigma_t * z
    return sample


def p_sample_loop(model, shape, n_steps, alphas, betas, one_minus_alphas_bar_sqrt, x_T=None, zs=None):
    """All n_steps + 1 states, x_T first; zs[k] is the noise of the k-th step taken (step n_steps-1-k).

    Not given, x_T is drawn by torch.randn(shape) and zs[k] by p_sample's torch.randn_like, in step order.
    """
    cur_x = torch.randn(shape) if x_T is None else x_T
    x_seq = [cur_x]
    for k, i in enumerate(reversed(range(n_steps))):
        z = None if zs is None else zs[k]
        cur_x = p_sample(model, cur_x, i, alphas, betas, one_minus_alphas_bar_sqrt, z=z)
        x_seq.append(cur_x)
    return x_seq
