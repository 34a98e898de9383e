"""torch.nn.functional's functions that differ from their jax.nn namesakes."""

import jax.numpy as jnp


def softplus(x):
    """F.softplus (beta 1, threshold 20): x where x > 20, else log1p(exp(x)); matches torch at the
    threshold (jax.nn.softplus does not switch to x there)."""
    big = x > 20.0
    return jnp.where(big, x, jnp.log1p(jnp.exp(jnp.where(big, 0.0, x))))
