"""A class-conditional model in the tutorial's style, and its loss with label dropout (issue 19).

The tutorial conditions on the step t by scaling each hidden layer by a learned per-step vector
(`ConditionalLinear`: out = embed(t) * lin(x)). The class enters the same way: a second learned
per-class vector, one row per class and one for the null class (index n_classes, "no label"):

    out = class_embed(y) * embed(t) * lin(x)

`class_embed` starts at ones, so an untrained class model is the tutorial's model whatever the class
(`tests/test_conditional_model.py` checks it bit for bit), and the classes grow apart as it learns.
Training replaces each label by the null class with probability cond_drop (Ho & Salimans 2022), so the
one network is also the unconditional model that `objectives.guidance` needs.
"""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_ddpm import torchlike as nn
from jax_ddpm.losses import loss_variational
from jax_ddpm.objectives.guidance import drop_labels
from jax_ddpm.objectives.predictions import training_target
from jax_ddpm.objectives.step import batch_noise
from jax_ddpm.objectives.variance import hybrid_loss
from jax_ddpm.schedule import Schedule, extract
from jax_ddpm.torchlike import functional as F


class ClassConditionalLinear(nn.Module):
    """ConditionalLinear with a learned per-class scale: class_embed(y) * embed(t) * lin(x)."""

    def __init__(self, num_in, num_out, n_steps, n_classes):
        super(ClassConditionalLinear, self).__init__()
        self.num_out = num_out
        self.lin = nn.Linear(num_in, num_out)
        self.embed = nn.Embedding(n_steps, num_out, init=jax.nn.initializers.uniform(1.0))
        # One row per class and one for the null class; ones: the tutorial's layer until it learns.
        self.class_embed = nn.Embedding(n_classes + 1, num_out, init=jax.nn.initializers.ones)

    def forward(self, x, t, y):
        out = self.lin(x)
        gamma = self.embed(t)
        out = gamma.reshape(-1, self.num_out) * out
        delta = self.class_embed(y)
        out = delta.reshape(-1, self.num_out) * out
        return out


class ClassConditionalModel(nn.Module):
    """ConditionalModel with ClassConditionalLinear layers: (x (B, 2), t (B,) or (1,), y (B,)) -> (B, n_outputs)."""

    def __init__(self, n_steps, n_classes, n_outputs=2):
        super(ClassConditionalModel, self).__init__()
        self.lin1 = ClassConditionalLinear(2, 128, n_steps, n_classes)
        self.lin2 = ClassConditionalLinear(128, 128, n_steps, n_classes)
        self.lin3 = ClassConditionalLinear(128, 128, n_steps, n_classes)
        self.lin4 = nn.Linear(128, n_outputs)

    def forward(self, x, t, y):
        x = F.softplus(self.lin1(x, t, y))
        x = F.softplus(self.lin2(x, t, y))
        x = F.softplus(self.lin3(x, t, y))
        return self.lin4(x)


# --- the model used functionally, as jax_ddpm.model's init_params / apply_model --------------------


def init_class_params(key: jax.Array, n_steps: int, n_classes: int, n_outputs: int = 2) -> dict:
    """Fresh parameters as a nested dict: the tutorial's initial distributions, class scales at one."""
    with nn.manual_seed(key):
        model = ClassConditionalModel(n_steps, n_classes, n_outputs)
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@functools.lru_cache(maxsize=None)
def _graphdef(n_steps: int, n_classes: int, n_outputs: int):
    def build():
        with nn.manual_seed(0):
            return ClassConditionalModel(n_steps, n_classes, n_outputs)

    return nnx.graphdef(nnx.eval_shape(build))


def n_classes_of(params: dict) -> int:
    """The number of classes of a class-conditional model's parameters (its null class is this index)."""
    return params["lin1"]["class_embed"]["embedding"].shape[-2] - 1


def apply_class_model(params: dict, x: jax.Array, t: jax.Array, y: jax.Array) -> jax.Array:
    """Run the class-conditional model on x (B, 2) at steps t (B,) or (1,) and classes y (B,) in
    0 .. n_classes (n_classes: the null class): (B, n_outputs)."""
    n_steps = params["lin1"]["embed"]["embedding"].shape[-2]
    n_outputs = params["lin4"]["bias"].shape[-1]
    return nnx.merge(_graphdef(n_steps, n_classes_of(params), n_outputs), params)(x, t, y)


def class_params_at(params: dict, y: int) -> dict:
    """The tutorial model's parameters (`jax_ddpm.model.apply_model`'s) that compute the class model at
    class y (the null class n_classes: the unconditional model): class_embed(y) * embed(t) * lin(x) =
    (class_embed[y] * embed[t]) * lin(x), so each layer's per-step scales times its class-y scale. Equal to
    `apply_class_model` at y to float32 round-off (the products are taken in another order)."""
    out = {}
    for name, layer in params.items():
        if "class_embed" not in layer:
            out[name] = layer
            continue
        scale = layer["class_embed"]["embedding"][y]  # (num_out,)
        out[name] = {"lin": layer["lin"], "embed": {"embedding": layer["embed"]["embedding"] * scale}}
    return out


def class_prediction_loss(
    params: dict,
    schedule: Schedule,
    x_0: jax.Array,
    labels: jax.Array,
    t: jax.Array,
    e: jax.Array,
    drop_key: jax.Array,
    cond_drop: float = 0.1,
    prediction: str = "eps",
) -> jax.Array:
    """mean((target - model(x_t, t, y))^2), y the labels (B,) each dropped to the null class with
    probability cond_drop; x_t built as the tutorial's noise_estimation_loss builds it, the target of
    `predictions.training_target` (eps: the tutorial's noise loss, with a class)."""
    y = drop_labels(drop_key, labels, cond_drop, n_classes_of(params))
    a = extract(schedule.alphas_bar_sqrt, t, x_0)
    am1 = extract(schedule.one_minus_alphas_bar_sqrt, t, x_0)
    x = x_0 * a + e * am1
    output = apply_class_model(params, x, t, y)
    return jnp.mean(jnp.square(training_target(schedule, x_0, t, e, prediction) - output))


def class_bound_loss(
    params: dict,
    schedule: Schedule,
    x_0: jax.Array,
    labels: jax.Array,
    t: jax.Array,
    e: jax.Array,
    drop_key: jax.Array,
    cond_drop: float = 0.1,
    loss: str = "variational",
    hybrid_lambda: float = 0.001,
) -> jax.Array:
    """A 4-output class model's --loss variational (the tutorial's loss_variational, with e as its noise) or
    --loss hybrid (`variance.hybrid_loss`), the model asked at the labels (B,), each dropped to the null
    class with probability cond_drop. With class scales at one: the tutorial's model's loss, bit for bit."""
    y = drop_labels(drop_key, labels, cond_drop, n_classes_of(params))

    def model(x, t):
        return apply_class_model(params, x, t, y)

    if loss == "hybrid":
        return hybrid_loss(params, schedule, x_0, t, e, hybrid_lambda, model=model)
    coefs = (schedule.posterior_mean_coef_1, schedule.posterior_mean_coef_2, schedule.posterior_log_variance_clipped)
    return loss_variational(
        model,
        x_0,
        schedule.alphas_bar_sqrt,
        schedule.one_minus_alphas_bar_sqrt,
        *coefs,
        schedule.num_steps,
        t=t,
        noise=e,
    )


def class_train_step(
    state, optimizer, ema, batch_x, batch_y, schedule, cond_drop=0.1, prediction="eps", t=None, e=None, loss_fn=None
):
    """One optimizer step of the class model on batch_x (B, 2) with labels batch_y (B,), as
    `objectives.step.pure_train_step` takes one of the tutorial's: t and e drawn for state.opt_step unless
    given, the labels dropped with a key of the same step, gradients, the optimizer (clipping
    included), then the EMA. Returns (new state, loss). `loss_fn(params, schedule, x_0, labels, t, e,
    drop_key)` is `class_prediction_loss` with cond_drop and prediction unless given (a run's comes from
    `objectives.objective.loss_fn_for`)."""
    if loss_fn is None:
        loss_fn = functools.partial(class_prediction_loss, cond_drop=cond_drop, prediction=prediction)
    step_key = jax.random.fold_in(state.noise_key, state.opt_step)
    if t is None:
        t, e = batch_noise(state.noise_key, state.opt_step, batch_x.shape, schedule.num_steps, batch_x.dtype)
    drop_key = jax.random.fold_in(step_key, 2)  # batch_noise splits step_key for t and e: a key of its own
    loss, grads = jax.value_and_grad(loss_fn)(state.params, schedule, batch_x, batch_y, t, e, drop_key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = ema.update(state.ema_params, params)
    state = state.replace(opt_step=state.opt_step + 1, params=params, opt_state=opt_state, ema_params=ema_params)
    return state, loss
