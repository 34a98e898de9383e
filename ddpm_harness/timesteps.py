"""Which of the T steps a fixed-step sampler visits (ddpm, ddim, dpm-solver++), as diffusers spaces
them; numpy only, so that `config.SamplerOptions` checks a spacing before any program is built."""

from __future__ import annotations

import numpy as np

SPACINGS = ("leading", "trailing", "linspace")


def ddim_timesteps(num_steps: int, sample_steps: int, spacing: str = "leading") -> np.ndarray:
    """The K steps (descending, int64) of diffusers' DDIMScheduler/DDPMScheduler.set_timesteps
    (steps_offset = 0); Lin et al. 2024, Table 2 names the spacings. For T = 100, K = 10:
    leading 90, 80, ..., 0; trailing 99, 89, ..., 9; linspace 99, 88, 77, ..., 11, 0."""
    if spacing == "linspace":
        return np.linspace(0, num_steps - 1, sample_steps).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        step_ratio = num_steps // sample_steps
        return (np.arange(0, sample_steps) * step_ratio).round()[::-1].copy().astype(np.int64)
    if spacing == "trailing":
        step_ratio = num_steps / sample_steps
        return np.round(np.arange(num_steps, 0, -step_ratio)).astype(np.int64) - 1
    raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")


def dpm_solver_timesteps(num_steps: int, sample_steps: int, spacing: str = "linspace") -> np.ndarray:
    """The K steps (descending, int64) of diffusers' DPMSolverMultistepScheduler.set_timesteps
    (lambda_min_clipped = -inf, steps_offset = 0), which spaces K + 1 points and drops the last
    (t = 0, replaced by the final step to alpha_bar = 1). For T = 100, K = 10: linspace 99, 89, 79,
    69, 59, 50, 40, 30, 20, 10; leading 90, 81, ..., 9; trailing 99, 89, ..., 9."""
    if spacing == "linspace":
        return np.linspace(0, num_steps - 1, sample_steps + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        step_ratio = num_steps // (sample_steps + 1)
        return (np.arange(0, sample_steps + 1) * step_ratio).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "trailing":
        step_ratio = num_steps / sample_steps
        return np.arange(num_steps, 0, -step_ratio).round().copy().astype(np.int64) - 1
    raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")


def default_sample_steps(name: str, num_steps: int) -> int | None:
    """K when not given: all T steps for ddpm and ddim, 20 for dpm-solver++ (diffusers' usual), none
    for the tutorial (always T) and the ODE (adaptive)."""
    return {"ddpm": num_steps, "ddim": num_steps, "dpm-solver++": min(20, num_steps)}.get(name)


def sampler_timesteps(name: str, num_steps: int, sample_steps: int, spacing: str) -> np.ndarray:
    """The steps a fixed-step sampler evaluates the model at (descending)."""
    if name == "dpm-solver++":
        return dpm_solver_timesteps(num_steps, sample_steps, spacing)
    return ddim_timesteps(num_steps, sample_steps, spacing)


def default_spacing(name: str) -> str:
    """The spacing when not given: diffusers' default, linspace for dpm-solver++, leading for ddpm and ddim."""
    return "linspace" if name == "dpm-solver++" else "leading"
