"""Flow matching (--method flow): TorchCFM's conditional flow matching on the tutorial's model.

Definitions as TorchCFM's `ConditionalFlowMatcher` (Tong et al. 2024, eqs. 14-15; tests/test_flow_torchcfm.py
proves them equal): x_0 ~ N(0, I) at t = 0, x_1 = the data at t = 1,

    mu_t = t x_1 + (1 - t) x_0,   x_t = mu_t + sigma eps,   u_t = x_1 - x_0,

and the loss is the mean of (v_theta(x_t, t) - u_t)^2 over the batch and the coordinates (TorchCFM's
examples' `torch.mean((vt - ut) ** 2)`, as the tutorial's noise loss takes its mean).

Time. The tutorial's ConditionalModel conditions on an integer step y in [0, T) (a learned per-step
scale). A flow model is trained at the T grid times t_k = k / T, k drawn as the diffusion step is
(`flow_noise`: the tutorial's antithetic draw), with y = k; a sampler evaluates it at the nearest grid
time (`samplers.flow.grid_model`). So t = 1 itself is never seen: the last grid time is (T - 1) / T.

Couplings. independent: x_0 paired with x_1 as drawn (I-CFM). ot: within each batch, the noise points
are permuted to the minibatch exact optimal transport plan between them and the data (uniform weights,
squared Euclidean cost, `ot_pairing`): with equal batch sizes that plan is a permutation, an assignment
problem, solved exactly inside the compiled training program (`speed.linear_assignment`: scipy's solver
through a host callback on the CPU, optax's Hungarian algorithm compiled elsewhere; OTT-JAX's solvers are
entropic, Sinkhorn: not the exact plan). TorchCFM's ExactOptimalTransportConditionalFlowMatcher solves the same plan
with POT's `ot.emd` and then *samples* B pairs from it, with replacement by default (some pairs twice,
some not at all); ours uses every pair of the plan once, which is TorchCFM's `sample_plan(replace=False)`
up to the order of the pairs (docs/flow.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jax_ddpm.losses import antithetic_timesteps
from jax_ddpm.model import apply_model
from jax_ddpm.objectives.conditional import apply_class_model, n_classes_of
from jax_ddpm.objectives.guidance import drop_labels
from jax_ddpm.speed import linear_assignment

COUPLINGS = ("independent", "ot")


def grid_time(k: jax.Array, n_steps: int, dtype=jnp.float32) -> jax.Array:
    """The flow time t_k = k / T of grid index k (any shape)."""
    return k.astype(dtype) / n_steps


def flow_noise(noise_key, opt_step, shape, n_steps, dtype=jnp.float32):
    """A flow step's draws from fold_in(noise_key, opt_step), as `objectives.step.batch_noise` draws a diffusion
    step's: grid indices k (B,) (antithetic, as the tutorial's steps) and e (B, 2, D): e[:, 0] the noise
    x_0, e[:, 1] the path's eps (read only when sigma > 0)."""
    k_t, k_e = jax.random.split(jax.random.fold_in(noise_key, opt_step))
    batch, dim = shape
    return antithetic_timesteps(k_t, batch, n_steps), jax.random.normal(k_e, (batch, 2, dim), dtype)


def ot_pairing(x_0: jax.Array, x_1: jax.Array) -> jax.Array:
    """perm (B,) int32 with x_0[perm] paired with x_1: the minibatch exact OT plan (uniform weights,
    squared Euclidean cost) between B noise points x_0 (B, D) and B data points x_1 (B, D), which for
    equal sizes is the assignment minimising sum_j ||x_0[perm[j]] - x_1[j]||^2 (`speed.linear_assignment`:
    scipy's on the CPU, optax's Hungarian algorithm compiled elsewhere); not differentiated (no parameter
    enters)."""
    cost = jax.lax.stop_gradient(jnp.sum((x_1[:, None, :] - x_0[None, :, :]) ** 2, axis=-1))  # (B data, B noise)
    return linear_assignment(cost)


def couple(x_0: jax.Array, x_1: jax.Array, coupling: str) -> jax.Array:
    """The noise x_0 (B, D) reordered to pair with x_1 (B, D) under `coupling` (independent: as drawn)."""
    if coupling == "independent":
        return x_0
    if coupling == "ot":
        return x_0[ot_pairing(x_0, x_1)]
    raise ValueError(f"unknown coupling {coupling!r}; choose one of {', '.join(COUPLINGS)}")


def sample_location_and_conditional_flow(x_0, x_1, t, sigma, eps):
    """TorchCFM's sample_location_and_conditional_flow with t and eps injected: (x_t, u_t), each (B, D),
    x_t = t x_1 + (1 - t) x_0 + sigma eps and u_t = x_1 - x_0 (t (B,))."""
    t = t[:, None]
    mu_t = t * x_1 + (1 - t) * x_0
    x_t = mu_t + sigma * eps
    return x_t, x_1 - x_0


def velocity_loss(model_fn, batch_x, n_steps, k, e, sigma, coupling):
    """mean (model_fn(x_t, k) - u_t)^2 of a batch x_1 = batch_x (B, D) at grid indices k (B,), with e
    (B, 2, D) from `flow_noise`; model_fn(x (B, D), k (B,)) -> (B, D) the velocity model."""
    x_0 = couple(e[:, 0], batch_x, coupling)
    x_t, u_t = sample_location_and_conditional_flow(x_0, batch_x, grid_time(k, n_steps, batch_x.dtype), sigma, e[:, 1])
    output = model_fn(x_t, k)
    return jnp.mean(jnp.square(output - u_t))


def flow_matching_loss(params, batch_x, n_steps, k, e, *, sigma=0.0, coupling="independent"):
    """The flow matching loss of a batch x_1 = batch_x (B, D) at grid indices k (B,), with e (B, 2, D)
    from `flow_noise`: mean (v_theta(x_t, k) - u_t)^2."""
    return velocity_loss(functools.partial(apply_model, params), batch_x, n_steps, k, e, sigma, coupling)


def class_flow_matching_loss(params, schedule, x_1, labels, k, e, drop_key, *, sigma, coupling, cond_drop):
    """The flow matching loss of the class model (--conditional --method flow): v_theta(x_t, k, y), y the
    labels (B,) of x_1 (B, D), each dropped to the null class with probability cond_drop, so that the one
    model learns the conditional and the unconditional velocity. The signature of
    `conditional.class_prediction_loss` (`class_train_step`'s loss_fn); the schedule is unused."""
    y = drop_labels(drop_key, labels, cond_drop, n_classes_of(params))
    model_fn = lambda x, k: apply_class_model(params, x, k, y)  # noqa: E731
    return velocity_loss(model_fn, x_1, schedule.num_steps, k, e, sigma, coupling)


def flow_loss_fn(config, cond_drop=None):
    """loss_fn(params, batch_x, schedule, n_steps, t, e) of a flow config (--flow-sigma, --coupling); a
    --conditional config's is `class_flow_matching_loss`'s, with the labels (`class_train_step`'s loss_fn),
    dropped with probability `cond_drop` (default config.cond_drop; a sweep's may be traced)."""
    sigma, coupling = float(config.flow_sigma), config.coupling
    if getattr(config, "conditional", False):
        cond_drop = config.cond_drop if cond_drop is None else cond_drop
        return functools.partial(class_flow_matching_loss, sigma=sigma, coupling=coupling, cond_drop=cond_drop)

    def loss(params, batch_x, schedule, n_steps, t, e):
        return flow_matching_loss(params, batch_x, n_steps, t, e, sigma=sigma, coupling=coupling)

    return loss
