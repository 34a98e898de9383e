"""The tutorial's p_sample / p_sample_loop (noise added at every step, t = 0 included).

JAX twin of torch_reference/sampling.py: `model(x, t)` is any function of x (N, 2) and the steps t (1,)
(e.g. functools.partial(model.apply_model, params)); noise not given is drawn from an explicit `key`.
The loop is the tutorial's Python loop; samplers.tutorial.scan_chain is the same loop as one lax.scan,
the compiled chain the runs use.
"""

import jax
import jax.numpy as jnp

from jax_ddpm.schedule import extract


def p_sample(model, x, t, alphas, betas, one_minus_alphas_bar_sqrt, z=None, key=None):
    t = jnp.array([t])
    # Factor to the model output
    eps_factor = (1 - extract(alphas, t, x)) / extract(one_minus_alphas_bar_sqrt, t, x)
    # Model output
    eps_theta = model(x, t)
    # Final values
    mean = (1 / jnp.sqrt(extract(alphas, t, x))) * (x - (eps_factor * eps_theta))
    # Generate z
    if z is None:
        z = jax.random.normal(key, x.shape, x.dtype)
    # Fixed sigma
    sigma_t = jnp.sqrt(extract(betas, t, x))
    sample = mean + sigma_t * z
    return sample


def p_sample_loop(model, shape, n_steps, alphas, betas, one_minus_alphas_bar_sqrt, x_T=None, zs=None, key=None):
    """All n_steps + 1 states, x_T first; zs[k] is the noise of the k-th step taken (step n_steps-1-k).

    Not given, x_T is drawn from fold_in(key, 0) and zs[k] from fold_in(key, k + 1), in step order.
    """
    cur_x = jax.random.normal(jax.random.fold_in(key, 0), shape) if x_T is None else x_T
    x_seq = [cur_x]
    for k, i in enumerate(reversed(range(n_steps))):
        z = None if zs is None else zs[k]
        key_k = None if key is None else jax.random.fold_in(key, k + 1)
        cur_x = p_sample(model, cur_x, i, alphas, betas, one_minus_alphas_bar_sqrt, z=z, key=key_k)
        x_seq.append(cur_x)
    return x_seq
