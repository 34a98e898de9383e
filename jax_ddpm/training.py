"""The tutorial's training loop: Adam, clip_grad_norm_(1.), EMA(0.9), fresh permutation each epoch.

`train_step` is the body of the inner loop, with t and e injectable; `train` is the loop itself.

JAX twin of torch_reference/training.py in Flax NNX's stateful style: `model` (the NNX ConditionalModel),
`optimizer` (an nnx.Optimizer) and `ema` are updated in place, as torch's are, and `train_step` is
compiled with `nnx.jit`. JAX has no global random state: the draws come from `rngs`, an nnx.Rngs with an
`order` stream (epoch k's permutation from fold_in(order_key, k)) and a `noise` stream (t and e of
optimizer step s from fold_in(noise_key, s)). A run's compiled program takes the same step as a pure
function of a TrainState (`jax_ddpm.objectives.step.pure_train_step`); tests/test_training_loop.py proves
that this loop and a run's program train the same model.
"""

from __future__ import annotations

import functools
import time

import optax
from flax import nnx

from jax_ddpm.ema import EMA
from jax_ddpm.losses import noise_estimation_loss
from jax_ddpm.speed import epoch_permutation


@functools.partial(nnx.jit, static_argnames=("n_steps", "clip_norm"))
def train_step(model, optimizer, ema, batch_x, schedule, n_steps, clip_norm=1.0, t=None, e=None, key=None):
    """One optimizer step on batch_x (B, 2): the loss at diffusion steps t (B,) with noise e (B, 2), drawn
    from `key` when not given, its gradients, clipping, Adam, then the EMA update."""

    # Compute the loss.
    def loss_fn(model):
        return noise_estimation_loss(
            model, batch_x, schedule.alphas_bar_sqrt, schedule.one_minus_alphas_bar_sqrt, n_steps, t=t, e=e, key=key
        )

    # Backward pass: compute gradient of the loss with respect to parameters
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    # Perform gradient clipping
    if clip_norm > 0:
        grads, _ = optax.clip_by_global_norm(clip_norm).update(grads, None)
    # Calling the step function to update the parameters
    optimizer.update(model, grads)
    # Update the exponential moving average
    ema.update(model)
    return loss


def make_optimizer(model, lr=1e-3):
    return nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)


def train(
    model,
    dataset,
    schedule,
    n_steps,
    epochs=1000,
    batch_size=128,
    lr=1e-3,
    clip_norm=1.0,
    ema_mu=0.9,
    on_epoch=None,
    *,
    rngs,
):
    """The tutorial's loop. `on_epoch(epoch, batch_losses, wall_s)` is called after every epoch.
    JAX: the random draws come from `rngs` (see the module's docstring)."""
    optimizer = make_optimizer(model, lr)
    # Create EMA model
    ema = EMA(ema_mu)
    ema.register(model)
    start = time.perf_counter()
    for t in range(epochs):
        # A fresh permutation from the order stream
        permutation = epoch_permutation(rngs.order(), dataset.shape[0])
        losses = []
        for i in range(0, dataset.shape[0], batch_size):
            # Retrieve current batch
            indices = permutation[i : i + batch_size]
            batch_x = dataset[indices]
            loss = train_step(model, optimizer, ema, batch_x, schedule, n_steps, clip_norm, key=rngs.noise())
            losses.append(loss.item())
        if on_epoch is not None:
            on_epoch(t, losses, time.perf_counter() - start)
    return model, ema, optimizer
