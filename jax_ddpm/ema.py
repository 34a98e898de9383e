"""The tutorial's ema.py.

JAX twin of torch_reference/ema.py, functional: JAX arrays are not updated in place, so `register` and
`update` return the shadow (a parameter pytree) and the caller keeps it (`TrainState.ema_params`).
"""

import jax
import jax.numpy as jnp
import optax


class EMA(object):
    def __init__(self, mu=0.999):
        self.mu = mu

    def register(self, params):
        return jax.tree_util.tree_map(jnp.array, params)

    def update(self, shadow, params):
        # shadow = (1 - mu) * param + mu * shadow
        return optax.incremental_update(params, shadow, 1.0 - self.mu)
