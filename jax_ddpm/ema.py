"""The tutorial's ema.py.

JAX twin of torch_reference/ema.py in Flax NNX's stateful style: the shadow is a dict of nnx.Variables,
updated in place as torch's tensors are, so an EMA goes through `nnx.jit` with the model. A run's compiled
program keeps the shadow in its TrainState instead (`jax_ddpm.objectives.step.EmaRate`, the same update).
"""

import jax.numpy as jnp
import optax
from flax import nnx


class EMA(nnx.Pytree):
    def __init__(self, mu=0.999):
        self.mu = mu
        self.shadow = nnx.data({})

    def register(self, module):
        for name, param in module.named_parameters():
            self.shadow[name] = nnx.Variable(jnp.array(param[...]))

    def update(self, module):
        for name, param in module.named_parameters():
            # shadow = (1 - mu) * param + mu * shadow
            self.shadow[name][...] = optax.incremental_update(param[...], self.shadow[name][...], 1.0 - self.mu)

    def ema(self, module):
        for name, param in module.named_parameters():
            param[...] = self.shadow[name][...]

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, state_dict):
        self.shadow = state_dict
