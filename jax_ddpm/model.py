"""The tutorial's model.py: ConditionalLinear and ConditionalModel."""

import functools

import jax
from flax import nnx

from jax_ddpm import torchlike as nn
from jax_ddpm.torchlike import functional as F


class ConditionalLinear(nn.Module):
    def __init__(self, num_in, num_out, n_steps):
        super(ConditionalLinear, self).__init__()
        self.num_out = num_out
        self.lin = nn.Linear(num_in, num_out)
        # The tutorial's self.embed.weight.data.uniform_(): the table is drawn uniform on [0, 1).
        self.embed = nn.Embedding(n_steps, num_out, init=jax.nn.initializers.uniform(1.0))

    def forward(self, x, y):
        out = self.lin(x)
        gamma = self.embed(y)
        out = gamma.reshape(-1, self.num_out) * out
        return out


class ConditionalModel(nn.Module):
    """n_outputs = 2 is the tutorial's model; 4 gives the mean/log-variance halves loss_variational needs."""

    def __init__(self, n_steps, n_outputs=2):
        super(ConditionalModel, self).__init__()
        self.lin1 = ConditionalLinear(2, 128, n_steps)
        self.lin2 = ConditionalLinear(128, 128, n_steps)
        self.lin3 = ConditionalLinear(128, 128, n_steps)
        self.lin4 = nn.Linear(128, n_outputs)

    def forward(self, x, y):
        x = F.softplus(self.lin1(x, y))
        x = F.softplus(self.lin2(x, y))
        x = F.softplus(self.lin3(x, y))
        return self.lin4(x)


# --- Beyond the tutorial: the parameters as a plain nested dict -------------------------------------
# Training and sampling handle the parameters as a dict (`init_params`) and run the model with
# `apply_model` (or `model_of(params)`, the module itself), which merge them into the module inside the
# traced function (the NNX performance guide's split-once pattern: no graph traversal per step). Names
# mirror the PyTorch state dict: lin1.lin.kernel <-> lin1.lin.weight (transposed: Flax kernels are (in, out)).


def init_params(key: jax.Array, n_steps: int, n_outputs: int = 2) -> dict:
    """Fresh parameters as a nested dict, with the reference's initial distributions."""
    with nn.manual_seed(key):
        model = ConditionalModel(n_steps, n_outputs)
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@functools.lru_cache(maxsize=None)
def _graphdef(n_steps: int, n_outputs: int):
    def build():
        with nn.manual_seed(0):
            return ConditionalModel(n_steps, n_outputs)

    return nnx.graphdef(nnx.eval_shape(build))


def model_of(params: dict) -> ConditionalModel:
    """The model with `params`, for a pure function: merged from a cached graph definition, so a traced
    function builds it without traversing a module (run it as model_of(params)(x, t))."""
    n_steps = params["lin1"]["embed"]["embedding"].shape[-2]
    n_outputs = params["lin4"]["bias"].shape[-1]
    return nnx.merge(_graphdef(n_steps, n_outputs), params)


def apply_model(params: dict, x: jax.Array, t: jax.Array) -> jax.Array:
    """Run the model with `params` on x (B, 2) at integer steps t (B,) or (1,): (B, n_outputs)."""
    return model_of(params)(x, t)
