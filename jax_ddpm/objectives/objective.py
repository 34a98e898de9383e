"""The training objective: the one place where a run's loss is chosen.

`loss_fn_for(config)` gives train_step's loss_fn(params, batch_x, schedule, n_steps, t, e) for every
--prediction and --loss: for eps (the tutorial's prediction) the noise-estimation loss, the tutorial's
variational loss (a 4-output model) or Improved DDPM's hybrid loss; for v and x0 the regression on their
target (`predictions.prediction_loss`; the noise loss only, `ddpm_harness.config.validate` refuses the
others); for --method flow the flow matching loss (`flow.flow_loss_fn`). The single run's chunk and the
sweep's models both call it, and `noise_fn_for(config)`, the per-step draws that go with the loss.
A --conditional run's loss is the class model's (`class_loss_fn_for`, which loss_fn_for gives for it;
with --method flow, `flow.class_flow_matching_loss`): another signature, with the labels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from jax_ddpm.losses import loss_variational
from jax_ddpm.model import model_of
from jax_ddpm.objectives.conditional import class_bound_loss, class_prediction_loss
from jax_ddpm.objectives.flow import flow_loss_fn, flow_noise
from jax_ddpm.objectives.predictions import prediction_loss
from jax_ddpm.objectives.step import batch_noise, noise_loss
from jax_ddpm.objectives.variance import hybrid_loss

LOSSES = ("noise", "variational", "hybrid")


def variational_loss(params, batch_x, schedule, n_steps, t, e):
    """The tutorial's loss_variational on `schedule`'s arrays, with e as its noise."""
    return loss_variational(
        model_of(params),
        batch_x,
        schedule.alphas_bar_sqrt,
        schedule.one_minus_alphas_bar_sqrt,
        schedule.posterior_mean_coef_1,
        schedule.posterior_mean_coef_2,
        schedule.posterior_log_variance_clipped,
        n_steps,
        t=t,
        noise=e,
    )


def loss_fn_for(config, hybrid_lambda=None, cond_drop=None) -> Callable:
    """loss_fn(params, batch_x, schedule, n_steps, t, e) of `config.prediction` and `config.loss`.
    `hybrid_lambda` and `cond_drop` (default config's) may be traced values: a sweep's per-model values."""
    if getattr(config, "method", "diffusion") == "flow":
        return flow_loss_fn(config, cond_drop)
    if config.loss not in LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}")
    if getattr(config, "conditional", False):
        return class_loss_fn_for(config, cond_drop, hybrid_lambda)
    if config.prediction != "eps":
        if config.loss != "noise":
            raise ValueError(f"--prediction {config.prediction} trains the noise loss only, not --loss {config.loss}")

        def loss(params, batch_x, schedule, n_steps, t, e):
            return prediction_loss(params, schedule, batch_x, t, e, config.prediction)

        return loss
    if config.loss == "variational":
        return variational_loss
    if config.loss == "hybrid":
        weight = config.hybrid_lambda if hybrid_lambda is None else hybrid_lambda

        def hybrid(params, batch_x, schedule, n_steps, t, e):
            return hybrid_loss(params, schedule, batch_x, t, e, weight)

        return hybrid
    return noise_loss


def noise_fn_for(config) -> Callable:
    """noise_fn(noise_key, opt_step, shape, n_steps, dtype) -> (t, e) of a config's loss: the twin's
    `batch_noise` for diffusion, `flow.flow_noise` (grid indices, and x_0 with the path's eps) for flow."""
    return flow_noise if getattr(config, "method", "diffusion") == "flow" else batch_noise


def class_loss_fn_for(config, cond_drop=None, hybrid_lambda=None) -> Callable:
    """A --conditional run's loss_fn(params, schedule, x_0, labels, t, e, drop_key) for
    `conditional.class_train_step`: the class model's regression on `config.prediction`'s target, labels
    dropped to the null class with probability `cond_drop` (default `config.cond_drop`); with --loss
    variational or hybrid, the class model's bound (`conditional.class_bound_loss`)."""
    cond_drop = config.cond_drop if cond_drop is None else cond_drop
    hybrid_lambda = config.hybrid_lambda if hybrid_lambda is None else hybrid_lambda
    if config.loss != "noise":
        return functools.partial(class_bound_loss, cond_drop=cond_drop, loss=config.loss, hybrid_lambda=hybrid_lambda)
    return functools.partial(class_prediction_loss, cond_drop=cond_drop, prediction=config.prediction)
