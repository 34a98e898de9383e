"""A few PyTorch layers in Flax NNX, so that a torch model ports line for line (`import torch.nn as nn`
becomes `from jax_ddpm import torchlike as nn`; see jax_ddpm/model.py beside torch_reference/model.py).

- `Module`: an nnx.Module whose call runs `forward`, as torch's does, with torch's `named_parameters()`.
- `Linear(num_in, num_out)`: nn.Linear's default init (weight and bias uniform on +-1/sqrt(num_in)),
  kernel (in, out) as Flax stores it, evaluated by `speed.dense`.
- `Embedding(n, d)`: the table (n, d), looked up with jnp.take; init N(0, 1) as torch's, or `init`.
- `manual_seed(key)`: the key stream constructors draw from (`with nn.manual_seed(key): model = ...`),
  one key per parameter in construction order (an nnx.Rngs stream), so constructors take no `rngs`.
- `functional.softplus`: F.softplus with torch's threshold.

May import: `speed` only.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from jax_ddpm.speed import FastLinear
from jax_ddpm.torchlike import functional

__all__ = ["Embedding", "Linear", "Module", "functional", "manual_seed"]

_RNGS: contextvars.ContextVar[nnx.Rngs | None] = contextvars.ContextVar("torchlike_rngs", default=None)


@contextlib.contextmanager
def manual_seed(seed: int | jax.Array) -> Iterator[None]:
    """Constructors inside the block draw their parameters from nnx.Rngs(params=seed)."""
    token = _RNGS.set(nnx.Rngs(params=seed))
    try:
        yield
    finally:
        _RNGS.reset(token)


def _rngs() -> nnx.Rngs:
    rngs = _RNGS.get()
    if rngs is None:
        raise RuntimeError("build torchlike modules inside `with torchlike.manual_seed(key):`")
    return rngs


class Module(nnx.Module):
    """torch.nn.Module's calling convention: module(*args) runs module.forward(*args), and
    `named_parameters()` yields ("lin1.lin.kernel", its nnx.Param) as torch yields its parameters."""

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def named_parameters(self) -> Iterator[tuple[str, nnx.Param]]:
        for path, param in nnx.iter_graph(self):
            if isinstance(param, nnx.Param):
                yield ".".join(str(part) for part in path), param


def _torch_linear_init(fan_in: int) -> Callable:
    """nn.Linear's default init: uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)]."""
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Linear(FastLinear):
    """nn.Linear(num_in, num_out): y = x @ kernel + bias, kernel (num_in, num_out) (torch's weight
    transposed), PyTorch's default init drawn kernel first, then bias."""

    def __init__(self, num_in: int, num_out: int):
        init = _torch_linear_init(num_in)
        super().__init__(num_in, num_out, kernel_init=init, bias_init=init, rngs=_rngs())


class Embedding(Module):
    """nn.Embedding(n, d): a table `embedding` (n, d); embed(y) = embedding[y] for integer y (B,).

    `init(key, shape, dtype)` replaces torch's N(0, 1) init (e.g. jax.nn.initializers.uniform(1.0) for
    the tutorial's `weight.data.uniform_()`)."""

    def __init__(self, n: int, d: int, init: Callable = jax.nn.initializers.normal(1.0)):
        self.embedding = nnx.Param(init(_rngs().params(), (n, d), jnp.float32))

    def forward(self, y: jax.Array) -> jax.Array:
        # Look the table up directly: nnx.Embed casts it to the dtype it was built with (float32 in a
        # cached graphdef), which would silently round float64 parameters.
        return jnp.take(self.embedding[...], y, axis=0)
