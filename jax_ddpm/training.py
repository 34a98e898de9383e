"""The tutorial's training loop: Adam, clip_grad_norm_(1.), EMA(0.9), fresh permutation each epoch.

`train_step` is the body of the inner loop, with t and e injectable; `train` is the loop itself.

JAX twin of torch_reference/training.py. JAX keeps no state in objects: a `TrainState` pytree (parameters,
their EMA, Adam's state, counters, keys) goes into every step and a new one comes out, and the random draws
come from its keys: t and e of optimizer step s from fold_in(noise_key, s) (`batch_noise`), the permutation
of epoch k from fold_in(order_key, k). The compiled program a run executes (`jax_ddpm.runner.chunk`) calls
this `train_step`.
"""

from __future__ import annotations

import functools
import time

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jax_ddpm.ema import EMA
from jax_ddpm.losses import antithetic_timesteps, noise_estimation_loss
from jax_ddpm.speed import epoch_permutation


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


def batch_noise(noise_key, opt_step, shape, n_steps, dtype=jnp.float32):
    """Antithetic diffusion steps t (B,) and noise e (B, D) of optimizer step `opt_step`, from
    fold_in(noise_key, opt_step)."""
    k_t, k_e = jax.random.split(jax.random.fold_in(noise_key, opt_step))
    return antithetic_timesteps(k_t, shape[0], n_steps), jax.random.normal(k_e, shape, dtype)


def noise_loss(params, batch_x, schedule, n_steps, t, e):
    """The loss train_step trains with unless given another: the tutorial's, on `schedule`'s arrays."""
    return noise_estimation_loss(
        params, batch_x, schedule.alphas_bar_sqrt, schedule.one_minus_alphas_bar_sqrt, n_steps, t=t, e=e
    )


def train_step(state, optimizer, ema, batch_x, schedule, n_steps, t=None, e=None, loss_fn=noise_loss):
    """One optimizer step on batch_x (B, 2): the loss at diffusion steps t (B,) with noise e (B, 2), drawn
    when not given, its gradients, clipping, Adam, then the EMA update."""
    # JAX: returns (new state, loss); t and e are given both or neither (drawn for state.opt_step), the loss
    # is loss_fn(params, batch_x, schedule, n_steps, t, e) and ema.update(shadow, params) returns the shadow.
    if t is None:
        t, e = batch_noise(state.noise_key, state.opt_step, batch_x.shape, n_steps, batch_x.dtype)
    # Compute the loss.
    # Backward pass: compute gradient of the loss with respect to parameters
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch_x, schedule, n_steps, t, e)
    # Perform gradient clipping
    # Calling the step function to update the parameters
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Update the exponential moving average
    ema_params = ema.update(state.ema_params, params)
    state = state.replace(opt_step=state.opt_step + 1, params=params, opt_state=opt_state, ema_params=ema_params)
    return state, loss


def make_optimizer(lr=1e-3, clip_norm=1.0):
    """Adam, after clipping the gradients to global norm clip_norm when clip_norm > 0 (the clipping that torch
    does in train_step is part of the optimizer here, so train_step's "Perform gradient clipping" is in
    `optimizer.update`)."""
    adam = optax.adam(lr)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adam) if clip_norm > 0 else adam


def train(
    state, dataset, schedule, n_steps, epochs=1000, batch_size=128, lr=1e-3, clip_norm=1.0, ema_mu=0.9, on_epoch=None
):
    """The tutorial's loop. `on_epoch(epoch, batch_losses, wall_s)` is called after every epoch."""
    optimizer = make_optimizer(lr, clip_norm)
    # Create EMA model
    ema = EMA(ema_mu)
    state = state.replace(opt_state=optimizer.init(state.params), ema_params=ema.register(state.params))
    step = jax.jit(functools.partial(train_step, optimizer=optimizer, ema=ema, schedule=schedule, n_steps=n_steps))
    start = time.perf_counter()
    for t in range(epochs):
        # A fresh permutation from the state's order key
        permutation = epoch_permutation(jax.random.fold_in(state.order_key, state.epoch), dataset.shape[0])
        losses = []
        for i in range(0, dataset.shape[0], batch_size):
            # Retrieve current batch
            indices = permutation[i : i + batch_size]
            batch_x = dataset[indices]
            state, loss = step(state, batch_x=batch_x)
            losses.append(loss.item())
        state = state.replace(epoch=state.epoch + 1)
        if on_epoch is not None:
            on_epoch(t, losses, time.perf_counter() - start)
    return state, ema, optimizer
