"""The tutorial's model.py: ConditionalLinear and ConditionalModel.

JAX twin of torch_reference/model.py, in Flax NNX. Training and sampling handle the parameters as
a plain nested dict (`init_params`) and run the model with `apply_model`, which merges them into
the module inside the traced function (the NNX performance guide's split-once pattern: no graph
traversal per step). Parameter names mirror the PyTorch state dict: lin1.lin.kernel <->
lin1.lin.weight (transposed: Flax kernels are (in, out)).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jax_ddpm.speed import FastLinear


class ConditionalLinear(nnx.Module):
    def __init__(self, num_in, num_out, n_steps, *, rngs):
        super(ConditionalLinear, self).__init__()
        self.num_out = num_out
        self.lin = linear(num_in, num_out, rngs)
        # The tutorial's self.embed.weight.data.uniform_(): the table is uniform on [0, 1).
        self.embed = nnx.Embed(n_steps, num_out, embedding_init=jax.nn.initializers.uniform(1.0), rngs=rngs)

    def __call__(self, x, y):
        out = self.lin(x)
        # Look the table up directly: nnx.Embed casts it to the dtype it was built with (float32
        # in the cached graphdef), which would silently round float64 parameters.
        gamma = jnp.take(self.embed.embedding[...], y, axis=0)
        out = gamma.reshape(-1, self.num_out) * out
        return out


class ConditionalModel(nnx.Module):
    """n_outputs = 2 is the tutorial's model; 4 gives the mean/log-variance halves loss_variational needs."""

    def __init__(self, n_steps, n_outputs=2, *, rngs):
        super(ConditionalModel, self).__init__()
        self.lin1 = ConditionalLinear(2, 128, n_steps, rngs=rngs)
        self.lin2 = ConditionalLinear(128, 128, n_steps, rngs=rngs)
        self.lin3 = ConditionalLinear(128, 128, n_steps, rngs=rngs)
        self.lin4 = linear(128, n_outputs, rngs)

    def __call__(self, x, y):
        x = torch_softplus(self.lin1(x, y))
        x = torch_softplus(self.lin2(x, y))
        x = torch_softplus(self.lin3(x, y))
        return self.lin4(x)


def torch_softplus(x):
    """F.softplus (beta 1, threshold 20): x where x > 20, else log1p(exp(x)); matches the reference at
    the threshold (jax.nn.softplus does not switch to x there)."""
    big = x > 20.0
    return jnp.where(big, x, jnp.log1p(jnp.exp(jnp.where(big, 0.0, x))))


def torch_linear_init(fan_in):
    """nn.Linear's default init: uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)]."""
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def linear(num_in, num_out, rngs):
    """nn.Linear(num_in, num_out): PyTorch's default init, evaluated by speed.FastLinear."""
    init = torch_linear_init(num_in)
    return FastLinear(num_in, num_out, kernel_init=init, bias_init=init, rngs=rngs)


def init_params(key: jax.Array, n_steps: int, n_outputs: int = 2) -> dict:
    """Fresh parameters as a nested dict, with the reference's initial distributions."""
    model = ConditionalModel(n_steps, n_outputs, rngs=nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@functools.lru_cache(maxsize=None)
def _graphdef(n_steps: int, n_outputs: int):
    abstract = nnx.eval_shape(lambda: ConditionalModel(n_steps, n_outputs, rngs=nnx.Rngs(0)))
    return nnx.graphdef(abstract)


def apply_model(params: dict, x: jax.Array, t: jax.Array) -> jax.Array:
    """Run the model with `params` on x (B, 2) at integer steps t (B,) or (1,): (B, n_outputs)."""
    n_steps = params["lin1"]["embed"]["embedding"].shape[-2]
    n_outputs = params["lin4"]["bias"].shape[-1]
    return nnx.merge(_graphdef(n_steps, n_outputs), params)(x, t)
