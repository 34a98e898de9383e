"""PyTorch variants: the tutorial's loop as written, the strongest step we can build, sampling.

Each `*_runner` builds its state once and returns (run, work): `run()` does `work` units
(optimizer steps or sampled chains) and synchronises before returning.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from torch_reference.ema import EMA
from torch_reference.losses import antithetic_timesteps, noise_estimation_loss
from torch_reference.model import ConditionalModel
from torch_reference.sampling import p_sample_loop
from torch_reference.schedule import make_schedule
from torch_reference.training import make_optimizer, train_step

NUM_STEPS = 100


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _setup(data: np.ndarray, device: str, seed: int = 0):
    torch.manual_seed(seed)
    model = ConditionalModel(NUM_STEPS).to(device)
    schedule = make_schedule("sigmoid", NUM_STEPS, 1e-5, 5e-3)
    schedule = type(schedule)(*(getattr(schedule, f).to(device) for f in schedule.__dataclass_fields__))
    return model, schedule, torch.as_tensor(data, dtype=torch.float32, device=device)


def tutorial_train_runner(data: np.ndarray, batch_size: int, n_steps: int, device: str):
    """The tutorial's inner loop (torch_reference.training.train_step, loss.item() every step)
    over fresh permutations, `n_steps` steps a call."""
    model, schedule, dataset = _setup(data, device)
    optimizer = make_optimizer(model)
    ema = EMA(0.9)
    ema.register(model)
    n = dataset.shape[0]

    def run():
        done = 0
        while done < n_steps:
            permutation = torch.randperm(n, device=device)
            for i in range(0, n, batch_size):
                if done == n_steps:
                    break
                batch_x = dataset[permutation[i:i + batch_size]]
                train_step(model, optimizer, ema, batch_x, schedule, NUM_STEPS).item()
                done += 1
        synchronize(device)

    return run, n_steps


def fast_train_runner(data: np.ndarray, batch_size: int, n_steps: int, device: str, compile_step: bool):
    """The same step with the fastest building blocks torch offers: Adam(fused), foreach
    clipping, a torch._foreach_lerp_ EMA, no per-step .item(); optionally the whole step
    (forward, backward, clip, Adam, EMA) under torch.compile (on CUDA with CUDA graphs)."""
    model, schedule, dataset = _setup(data, device)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
    shadow = [p.detach().clone() for p in params]
    n = dataset.shape[0]

    def step(batch_x):
        t = antithetic_timesteps(batch_x.shape[0], NUM_STEPS).to(device)
        loss = noise_estimation_loss(model, batch_x, schedule.alphas_bar_sqrt,
                                     schedule.one_minus_alphas_bar_sqrt, NUM_STEPS, t=t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(shadow, params, 1.0 - 0.9)  # shadow = 0.1 param + 0.9 shadow
        return loss.detach()

    if compile_step:
        mode = "reduce-overhead" if device.startswith("cuda") else None
        step = torch.compile(step, mode=mode)

    def run():
        done = 0
        while done < n_steps:
            permutation = torch.randperm(n, device=device)
            for i in range(0, n - batch_size + 1, batch_size):  # full batches: one compiled shape
                if done == n_steps:
                    break
                step(dataset[permutation[i:i + batch_size]])
                done += 1
        synchronize(device)

    return run, n_steps


def sampling_runner(n_points: int, device: str, mode: str) -> tuple[Callable, int]:
    """The tutorial's p_sample_loop over 100 steps: mode "tutorial" (autograd on, as written),
    "no_grad", or "compiled" (torch.compile'd model under no_grad)."""
    model, schedule, _ = _setup(np.zeros((1, 2), np.float32), device)
    model.eval()
    if mode == "compiled":
        model = torch.compile(model, mode="reduce-overhead" if device.startswith("cuda") else None)

    def chain():
        return p_sample_loop(model, (n_points, 2), NUM_STEPS, schedule.alphas, schedule.betas,
                             schedule.one_minus_alphas_bar_sqrt)[-1]

    def run():
        if mode == "tutorial":
            chain()
        else:
            with torch.no_grad():
                chain()
        synchronize(device)

    return run, 1


def matmul_runner(size: int, device: str) -> tuple[Callable, float]:
    """A large float32 matmul (2 size^3 FLOPs), for the roofline."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)

    def run():
        torch.mm(a, b)
        synchronize(device)

    return run, 2.0 * size ** 3
