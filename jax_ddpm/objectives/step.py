"""One optimizer step of a run as a pure function: state in, new state out.

The twin's `jax_ddpm.training.train_step` updates an NNX model, optimizer and EMA in place, as torch's does.
The compiled program of a run (`jax_ddpm.runner.chunk`, and the sweep's vmapped one) needs the same step as
a pure function of a pytree: `pure_train_step` takes a `TrainState` (parameters, their EMA, Adam's state,
counters, keys) and returns the next one, its loss chosen by `objectives.objective.loss_fn_for`.
tests/test_training_loop.py proves the two steps train the same model.

The random draws come from the state's keys: t and e of optimizer step s from fold_in(noise_key, s)
(`batch_noise`), the permutation of epoch k from fold_in(order_key, k), so a state at an epoch boundary
determines the rest of a run.
"""

from __future__ import annotations

import flax.struct
import jax
import numpy as np
import optax

from jax_ddpm.losses import antithetic_timesteps, noise_estimation_loss
from jax_ddpm.model import model_of


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: counters, parameters, their EMA, Adam's moments, keys."""

    opt_step: jax.Array  # () int32, optimizer steps taken
    epoch: jax.Array  # () int32, epochs completed
    params: dict
    ema_params: dict
    opt_state: optax.OptState
    order_key: jax.Array  # permutation of epoch k: fold_in(order_key, k)
    noise_key: jax.Array  # t and e of optimizer step s: fold_in(noise_key, s)


@flax.struct.dataclass
class EmaRate:
    """An EMA decay as the two factors the twin's `EMA.update` (`optax.incremental_update(params, ema,
    1.0 - mu)`) multiplies by: step = 1 - mu, keep = 1 - step, in Python's float64 arithmetic.
    `constant(mu)` keeps them Python floats (a run's decay, folded into its program: the twin's update in
    any dtype). `of(mu)` rounds them to float32, to be traced (one per model of a sweep): the EMA of a
    float `mu` bit for bit in float32, which `1.0 - mu` on a float32 array would not give (1 - float32(0.9)
    is not float32(0.1))."""

    step: jax.Array  # () float32, or a Python float
    keep: jax.Array  # () float32, or a Python float

    @classmethod
    def constant(cls, mu: float) -> "EmaRate":
        step = 1.0 - float(mu)
        return cls(step=step, keep=1.0 - step)

    @classmethod
    def of(cls, mu: float) -> "EmaRate":
        step = 1.0 - float(mu)
        return cls(step=np.float32(step), keep=np.float32(1.0 - step))

    def update(self, shadow: dict, params: dict) -> dict:
        """The twin's EMA.update on a pytree: shadow = (1 - mu) * param + mu * shadow."""
        return jax.tree_util.tree_map(lambda new, old: self.step * new + self.keep * old, params, shadow)


def batch_noise(noise_key, opt_step, shape, n_steps, dtype=np.float32):
    """Antithetic diffusion steps t (B,) and noise e (B, D) of optimizer step `opt_step`, from
    fold_in(noise_key, opt_step): what the twin's noise_estimation_loss draws from that key."""
    k_t, k_e = jax.random.split(jax.random.fold_in(noise_key, opt_step))
    return antithetic_timesteps(k_t, shape[0], n_steps), jax.random.normal(k_e, shape, dtype)


def noise_loss(params, batch_x, schedule, n_steps, t, e):
    """The loss pure_train_step trains with unless given another: the tutorial's, on `schedule`'s arrays."""
    return noise_estimation_loss(
        model_of(params), batch_x, schedule.alphas_bar_sqrt, schedule.one_minus_alphas_bar_sqrt, n_steps, t=t, e=e
    )


def pure_train_step(state, optimizer, ema, batch_x, schedule, n_steps, t=None, e=None, loss_fn=noise_loss):
    """The twin's train_step on a TrainState: returns (new state, loss). t and e are given both or neither
    (drawn for state.opt_step); the loss is loss_fn(params, batch_x, schedule, n_steps, t, e); `optimizer`
    is an optax transformation (clipping included: `runner.chunk.run_optimizer`) and `ema` an `EmaRate`."""
    if t is None:
        t, e = batch_noise(state.noise_key, state.opt_step, batch_x.shape, n_steps, batch_x.dtype)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch_x, schedule, n_steps, t, e)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = ema.update(state.ema_params, params)
    state = state.replace(opt_step=state.opt_step + 1, params=params, opt_state=opt_state, ema_params=ema_params)
    return state, loss
