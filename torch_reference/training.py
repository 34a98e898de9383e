"""The tutorial's training loop: Adam, clip_grad_norm_(1.), EMA(0.9), fresh permutation each epoch.

`train_step` is the body of the inner loop, with t and e injectable; `train` is the loop itself.
"""

from __future__ import annotations

import time

import torch
import torch.optim as optim

from torch_reference.ema import EMA
from torch_reference.losses import noise_estimation_loss


def train_step(model, optimizer, ema, batch_x, schedule, n_steps, clip_norm=1.0, t=None, e=None):
    """One optimizer step on batch_x (B, 2): the loss at diffusion steps t (B,) with noise e (B, 2), drawn
    when not given, its gradients, clipping, Adam, then the EMA update."""
    # Compute the loss.
    loss = noise_estimation_loss(
        model, batch_x, schedule.alphas_bar_sqrt, schedule.one_minus_alphas_bar_sqrt, n_steps, t=t, e=e
    )
    # Before the backward pass, zero all of the network gradients
    optimizer.zero_grad()
    # Backward pass: compute gradient of the loss with respect to parameters
    loss.backward()
    # Perform gradient clipping
    if clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    # Calling the step function to update the parameters
    optimizer.step()
    # Update the exponential moving average
    ema.update(model)
    return loss


def make_optimizer(model, lr=1e-3):
    return optim.Adam(model.parameters(), lr=lr)


def train(
    model, dataset, schedule, n_steps, epochs=1000, batch_size=128, lr=1e-3, clip_norm=1.0, ema_mu=0.9, on_epoch=None
):
    """The tutorial's loop. `on_epoch(epoch, batch_losses, wall_s)` is called after every epoch."""
    optimizer = make_optimizer(model, lr)
    # Create EMA model
    ema = EMA(ema_mu)
    ema.register(model)
    start = time.perf_counter()
    for t in range(epochs):
        # X is a torch Variable
        permutation = torch.randperm(dataset.shape[0])
        losses = []
        for i in range(0, dataset.shape[0], batch_size):
            # Retrieve current batch
            indices = permutation[i : i + batch_size]
            batch_x = dataset[indices]
            loss = train_step(model, optimizer, ema, batch_x, schedule, n_steps, clip_norm)
            losses.append(loss.item())
        if on_epoch is not None:
            on_epoch(t, losses, time.perf_counter() - start)
    return model, ema, optimizer
