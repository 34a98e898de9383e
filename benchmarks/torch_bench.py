"""PyTorch variants: the tutorial's loop as written, the strongest step we can build (fused Adam and
foreach, torch.compile, CUDA graphs), sampling.

Each `*_runner` builds its state once and returns (run, work): `run()` does `work` units
(optimizer steps or sampled chains) and synchronises before returning.

On CPU the tutorial's own functions run as written. On CUDA they would fail or stall: they draw the
steps t on the CPU (`torch.randint`, `torch.tensor([t])`) and index CUDA tensors with them. There the
same formulas run with t drawn on the device (`timesteps`, `p_sample_loop_on`), as a port of the
tutorial to a GPU would write them; on CPU these equal the tutorial's bit for bit (tested).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import numpy as np
import torch

from torch_reference.ema import EMA
from torch_reference.losses import noise_estimation_loss
from torch_reference.model import ConditionalModel
from torch_reference.sampling import p_sample_loop
from torch_reference.schedule import extract, make_schedule
from torch_reference.training import make_optimizer, train_step

NUM_STEPS = 100


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def on_cuda(device: str) -> bool:
    return device.startswith("cuda")


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for CUDA float32 matmuls (and cuDNN) inside the block; the previous setting after it."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def timesteps(batch_size: int, device: str) -> torch.Tensor:
    """The tutorial's antithetic_timesteps, drawn on `device` (on CPU the same draw)."""
    t = torch.randint(0, NUM_STEPS, size=(batch_size // 2 + 1,), device=device)
    return torch.cat([t, NUM_STEPS - t - 1], dim=0)[:batch_size].long()


def p_sample_loop_on(model, shape, n_steps, alphas, betas, one_minus_alphas_bar_sqrt, device: str):
    """The tutorial's p_sample_loop (x_T first, all n_steps + 1 states) with x_T and t on `device`."""
    cur_x = torch.randn(shape, device=device)
    x_seq = [cur_x]
    for i in reversed(range(n_steps)):
        t = torch.tensor([i], device=device)
        eps_factor = (1 - extract(alphas, t, cur_x)) / extract(one_minus_alphas_bar_sqrt, t, cur_x)
        eps_theta = model(cur_x, t)
        mean = (1 / extract(alphas, t, cur_x).sqrt()) * (cur_x - (eps_factor * eps_theta))
        z = torch.randn_like(cur_x)
        sigma_t = extract(betas, t, cur_x).sqrt()
        cur_x = mean + sigma_t * z
        x_seq.append(cur_x)
    return x_seq


def _setup(data: np.ndarray, device: str, seed: int = 0):
    torch.manual_seed(seed)
    model = ConditionalModel(NUM_STEPS).to(device)
    schedule = make_schedule("sigmoid", NUM_STEPS, 1e-5, 5e-3)
    schedule = type(schedule)(*(getattr(schedule, f).to(device) for f in schedule.__dataclass_fields__))
    return model, schedule, torch.as_tensor(data, dtype=torch.float32, device=device)


def tutorial_train_runner(data: np.ndarray, batch_size: int, n_steps: int, device: str):
    """The tutorial's inner loop (torch_reference.training.train_step, loss.item() every step)
    over fresh permutations, `n_steps` steps a call; on CUDA with t drawn on the device."""
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
                batch_x = dataset[permutation[i : i + batch_size]]
                t = timesteps(batch_x.shape[0], device) if on_cuda(device) else None
                train_step(model, optimizer, ema, batch_x, schedule, NUM_STEPS, t=t).item()
                done += 1
        synchronize(device)

    return run, n_steps


def _fast_parts(data: np.ndarray, device: str, capturable: bool = False):
    """Model, dataset, parameters and the whole fast step: fused Adam, foreach clipping, a
    torch._foreach_lerp_ EMA, t drawn on the device, no .item()."""
    model, schedule, dataset = _setup(data, device)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True, capturable=capturable)
    shadow = [p.detach().clone() for p in params]

    def step(batch_x):
        t = timesteps(batch_x.shape[0], device)
        loss = noise_estimation_loss(
            model, batch_x, schedule.alphas_bar_sqrt, schedule.one_minus_alphas_bar_sqrt, NUM_STEPS, t=t
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(shadow, params, 1.0 - 0.9)  # shadow = 0.1 param + 0.9 shadow
        return loss.detach()

    return dataset, step, optimizer


def _batches(n: int, batch_size: int, n_steps: int, device: str, take: Callable) -> None:
    """Call take(indices) for `n_steps` full batches of fresh permutations (one compiled shape)."""
    done = 0
    while done < n_steps:
        permutation = torch.randperm(n, device=device)
        for i in range(0, n - batch_size + 1, batch_size):
            if done == n_steps:
                break
            take(permutation[i : i + batch_size])
            done += 1


def fast_train_runner(
    data: np.ndarray,
    batch_size: int,
    n_steps: int,
    device: str,
    compile_mode: Optional[str] = None,
    backend: str = "inductor",
    use_tf32: bool = False,
):
    """The tutorial's step with the fastest building blocks torch offers (`_fast_parts`); with
    `compile_mode` ("default", "reduce-overhead": CUDA graphs on CUDA) the whole step (forward,
    backward, clip, Adam, EMA) under torch.compile (`backend` "aot_eager" for a quick trace-only
    check on CPU)."""
    dataset, step, _ = _fast_parts(data, device)
    if compile_mode is not None:
        step = torch.compile(step, mode=None if compile_mode == "default" else compile_mode, backend=backend)

    def run():
        with tf32(use_tf32):
            _batches(dataset.shape[0], batch_size, n_steps, device, lambda idx: step(dataset[idx]))
            synchronize(device)

    return run, n_steps


def cuda_graph_train_runner(data: np.ndarray, batch_size: int, n_steps: int, device: str, use_tf32: bool = False):
    """The fast step captured once as a CUDA graph (torch.cuda.graph, capturable fused Adam) and
    replayed each step; each batch is gathered outside the graph into its static input tensor, the
    pattern torch's CUDA-graph documentation uses. CUDA only. (Gathering the batch inside the graph
    from a static index tensor hit a device-side "index out of bounds" assert at replay on an H200
    with torch 2.11+cu130, 2026-11-26.)"""
    if not on_cuda(device):
        raise RuntimeError("CUDA graphs need a CUDA device")
    dataset, step, optimizer = _fast_parts(data, device, capturable=True)
    static_batch = dataset[:batch_size].clone()
    with tf32(use_tf32):
        side = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graph requires
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step(static_batch)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            step(static_batch)

    def take(idx):
        static_batch.copy_(dataset[idx])
        graph.replay()

    def run():
        with tf32(use_tf32):
            _batches(dataset.shape[0], batch_size, n_steps, device, take)
            synchronize(device)

    return run, n_steps


def sampling_runner(n_points: int, device: str, mode: str, backend: str = "inductor") -> tuple[Callable, int]:
    """The tutorial's p_sample_loop over 100 steps (`p_sample_loop_on` on CUDA): mode "tutorial"
    (autograd on, as written), "no_grad", or "compiled" (torch.compile'd model under no_grad; with
    CUDA graphs on CUDA)."""
    model, schedule, _ = _setup(np.zeros((1, 2), np.float32), device)
    model.eval()
    if mode == "compiled":
        model = torch.compile(model, mode="reduce-overhead" if on_cuda(device) else None, backend=backend)

    def chain():
        if on_cuda(device):
            return p_sample_loop_on(
                model,
                (n_points, 2),
                NUM_STEPS,
                schedule.alphas,
                schedule.betas,
                schedule.one_minus_alphas_bar_sqrt,
                device,
            )[-1]
        return p_sample_loop(
            model, (n_points, 2), NUM_STEPS, schedule.alphas, schedule.betas, schedule.one_minus_alphas_bar_sqrt
        )[-1]

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

    return run, 2.0 * size**3
