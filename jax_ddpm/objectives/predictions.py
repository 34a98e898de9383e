"""What the model is trained to predict (`--prediction eps|v|x0`): the training side of the
conversions the samplers make (`predict_x0`, `predict_eps`, below).

With x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) e (DDPM eq. 4), the model is regressed on
- eps: the noise e: the tutorial's `losses.noise_estimation_loss`, used unchanged (bit for bit);
- v: sqrt(abar_t) e - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, sec. 4; diffusers' "v_prediction");
- x0: x_0 itself (diffusers' "sample"),
by mean((target - model(x_t, t))^2) over all elements, unweighted, with the tutorial's antithetic t
(`jax_ddpm.objectives.objective.loss_fn_for` chooses it for a config).
`predict_x0` / `predict_eps` invert these targets when sampling.

`negative_elbo` is `jax_ddpm.objectives.variance.negative_elbo` for a v or x0 model: p(x_{t-1} | x_t) is the
posterior q(x_{t-1} | x_t, x0_pred) with the fixed variance beta_t (the ddpm sampler's "beta").

A zero-terminal-SNR schedule (`objectives.schedules`, --zero-terminal-snr) leaves no signal at the last
step, which an eps model cannot invert (x_0 = (x_T - e) / 0): `ddpm_harness.config.validate` refuses that pair.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ddpm_harness.config import PREDICTIONS
from jax_ddpm.model import apply_model
from jax_ddpm.objectives import variance
from jax_ddpm.schedule import Schedule, extract, q_posterior_mean_variance


def predict_x0(model_output: jax.Array, x_t: jax.Array, alpha_prod_t: jax.Array, prediction: str) -> jax.Array:
    """x_0 from the model's output at x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps.

    eps: (x_t - sqrt(1 - abar) eps) / sqrt(abar) (DDPM eq. 15 / DDIM eq. 12's "predicted x_0");
    v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022, sec. 4): x_0 = sqrt(abar) x_t -
    sqrt(1 - abar) v; x0: the output itself. diffusers' operation order.
    """
    beta_prod_t = 1 - alpha_prod_t
    if prediction == "eps":
        return (x_t - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
    if prediction == "v":
        return alpha_prod_t**0.5 * x_t - beta_prod_t**0.5 * model_output
    if prediction == "x0":
        return model_output
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def predict_eps(model_output: jax.Array, x_t: jax.Array, alpha_prod_t: jax.Array, prediction: str) -> jax.Array:
    """eps from the model's output: eps: the output; v: sqrt(abar) v + sqrt(1 - abar) x_t;
    x0: (x_t - sqrt(abar) x_0) / sqrt(1 - abar). diffusers' operation order."""
    beta_prod_t = 1 - alpha_prod_t
    if prediction == "eps":
        return model_output
    if prediction == "v":
        return alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * x_t
    if prediction == "x0":
        return (x_t - alpha_prod_t**0.5 * model_output) / beta_prod_t**0.5
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def training_target(schedule: Schedule, x_0: jax.Array, t: jax.Array, e: jax.Array, prediction: str) -> jax.Array:
    """What the model should output at x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) e: e, v or x_0 (B, 2)."""
    if prediction == "eps":
        return e
    if prediction == "v":
        return extract(schedule.alphas_bar_sqrt, t, x_0) * e - extract(schedule.one_minus_alphas_bar_sqrt, t, x_0) * x_0
    if prediction == "x0":
        return x_0
    raise ValueError(f"unknown prediction {prediction!r}; choose eps, v or x0")


def prediction_loss(
    params: dict, schedule: Schedule, x_0: jax.Array, t: jax.Array, e: jax.Array, prediction: str = "v"
) -> jax.Array:
    """mean((target - model(x_t, t))^2) with the target of `training_target`; x_t is built with the
    operations of the tutorial's noise_estimation_loss, so prediction="eps" is that loss."""
    a = extract(schedule.alphas_bar_sqrt, t, x_0)
    am1 = extract(schedule.one_minus_alphas_bar_sqrt, t, x_0)
    x = x_0 * a + e * am1
    output = apply_model(params, x, t)
    return jnp.mean(jnp.square(training_target(schedule, x_0, t, e, prediction) - output))


def model_mean_logvar(params: dict, schedule: Schedule, x_t: jax.Array, t: jax.Array, prediction: str):
    """Mean and log-variance (each (B, 2)) of p(x_{t-1} | x_t) for an eps, v or x0 model: the posterior
    mean at the predicted x_0 (DDPM eq. 7; for eps it equals the tutorial's eq. 11 mean, and it stays
    finite where alpha_t = 0, at a zero-terminal-SNR schedule's last step), variance beta_t."""
    x_0 = predict_x0(apply_model(params, x_t, t), x_t, extract(schedule.alphas_prod, t, x_t), prediction)
    mean, _ = q_posterior_mean_variance(
        x_0,
        x_t,
        t,
        schedule.posterior_mean_coef_1,
        schedule.posterior_mean_coef_2,
        schedule.posterior_log_variance_clipped,
    )
    return mean, jnp.broadcast_to(jnp.log(extract(schedule.betas, t, x_t)), x_t.shape)


def negative_elbo(
    params: dict, schedule: Schedule, x_0, key: jax.Array, prediction: str = "v", decoder: str = "gaussian"
) -> dict[str, float]:
    """The negative ELBO in bits/dim of an eps, v or x0 model, as `jax_ddpm.objectives.variance.negative_elbo`:
    total = prior + diffusion (t >= 1) + decoder (t = 0), on `variance.accurate_schedule`."""
    return variance.negative_elbo(params, schedule, x_0, key, prediction, decoder, model_mean_logvar)
