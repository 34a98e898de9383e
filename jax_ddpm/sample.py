"""`python -m jax_ddpm.sample --run runs/<name> --n 10000 --params raw|ema --out samples.npy`.

Samples from the newest checkpoint of a run folder, with the run's own sampler and options unless
--sampler, --sample-steps, --eta, ... say otherwise. By default the chain uses the run's own
sampling key, so `--n` equal to the run's --n-samples with the parameters and the sampler it
sampled with reproduces its samples.npy exactly. `--x-T points.npy` starts the chain from given
points (N, 2) instead of N(0, I): a deterministic sampler (ddim with eta 0, dpm-solver++, ode) then
reproduces a trajectory exactly (`--trajectory` writes every state). A run trained with --conditional
draws `--class c|all|none` with classifier-free guidance `--guidance w` (docs/guidance.md).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional, Sequence

import numpy as np
import tyro

from ddpm_harness.cli import run
from ddpm_harness.config import SAMPLING_FIELDS, SEED_MAX, ConfigError, SamplerOptions
from ddpm_harness.data import DataError, load_points, n_classes_for
from ddpm_harness.memory import available_memory_bytes, check_chain_fits
from ddpm_harness.runs import RunDirError
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.runner.checkpoint import CheckpointError, IncompatibleCheckpointError, restore_run, run_config
from jax_ddpm.runner.draw import Guide, guide_for, sample_points, sample_states


@dataclasses.dataclass(frozen=True)
class RunSampling:
    """A run folder and how to sample it: the run's own sampler and options unless given."""

    run: str
    """Run folder written by `python -m jax_ddpm.train` (holds config.json and checkpoints/)."""
    sampler: Optional[Literal["tutorial", "ddpm", "ddim", "dpm-solver++", "ode", "euler", "midpoint"]] = None
    """Sampler (default: the run's own; see python -m jax_ddpm.train --help)."""
    sample_steps: Optional[int] = None
    """K, the steps of ddpm, ddim, dpm-solver++, euler and midpoint (default: the run's own, or the
    sampler's default when --sampler changes it)."""
    eta: Optional[float] = None
    """DDIM's eta (default: the run's own)."""
    variance: Optional[Literal["beta", "posterior"]] = None
    """Variance of each ddpm step (default: the run's own)."""
    timestep_spacing: Optional[Literal["leading", "trailing", "linspace"]] = None
    """Spacing of the K steps (default: the run's own)."""
    ode_rtol: Optional[float] = None
    """Relative tolerance of the ODE solver (default: the run's own)."""
    ode_atol: Optional[float] = None
    """Absolute tolerance of the ODE solver (default: the run's own)."""
    seed: Optional[int] = None
    """Sample with the keys of this seed instead of the run's own sampling key."""


@dataclasses.dataclass(frozen=True)
class SampleArgs(RunSampling):
    """Draw samples from a trained run's newest checkpoint."""

    n: int = 10_000
    """Number of points to sample (per seed for a run trained with --seeds); --x-T sets it."""
    params: Literal["raw", "ema"] = "raw"
    """Sample with the raw parameters (as the tutorial does) or their EMA."""
    out: Optional[str] = None
    """Output .npy file, (n, 2) or (seeds, n, 2); by default <run>/samples_<params>[_<sampler>]_<n>.npy.
    Never overwritten."""
    x_T: Optional[str] = None
    """Start every chain from these points: a .npy or .csv file of shape (N, 2), finite (N samples)."""
    trajectory: bool = False
    """Write every state of the chain, (S + 1, n, 2) with x_T first, instead of the final samples."""
    class_: Annotated[Optional[str], tyro.conf.arg(name="class", metavar="{c,all,none}")] = None
    """A class-conditional run's (--conditional) class to draw: c (an integer class), all (every class in the
    training data's proportions; the default) or none (unconditional: the null class)."""
    guidance: Optional[float] = None
    """A class-conditional run's guidance weight w >= 0: (1 + w) * cond - w * uncond (classifier-free
    guidance, docs/guidance.md); 0, the default, is plain conditional sampling."""


def sampling_config(config, args: RunSampling):
    """The run's config with the sampling options given on the command line, checked (`SamplerOptions`)."""
    given = {name: getattr(args, name) for name in SAMPLING_FIELDS if getattr(args, name) is not None}
    if args.sampler is not None and args.sampler != config.sampler and args.sample_steps is None:
        given["sample_steps"] = None  # the run's K belongs to the run's sampler
    if args.seed is not None:
        given["seed"] = args.seed
    config = dataclasses.replace(config, **given)
    SamplerOptions.from_config(config)
    return config


def guidance_of(config, args: SampleArgs, n: int) -> Optional[Guide]:
    """The classes and guidance weight of n points (`draw.guide_for`) of a --conditional run: --class
    (default all) and --guidance (default 0); None for another run, which refuses both options."""
    if not config.conditional:
        if args.class_ is not None or args.guidance is not None:
            raise ConfigError(
                f"--class and --guidance apply to a class-conditional run (trained with --conditional); "
                f"{args.run} is not one: leave them out"
            )
        return None
    n_classes = n_classes_for(config)
    which = "all" if args.class_ is None else args.class_.strip().lower()
    if which not in ("all", "none") and not (which.isdigit() and int(which) < n_classes):
        raise ConfigError(f"--class must be a class 0 .. {n_classes - 1}, all or none; got {args.class_!r}")
    w = 0.0 if args.guidance is None else args.guidance
    if not (math.isfinite(w) and w >= 0):
        raise ConfigError(f"--guidance must be a finite number >= 0, got {w}")
    return guide_for(config, n, which, w)


def read_x_T(path: str) -> np.ndarray:
    """Starting points (N, 2) float32 from a .npy or .csv file; ConfigError when it is not (N, 2) finite."""
    try:
        return load_points(path)
    except DataError as err:
        raise ConfigError(f"--x-T: {err}") from None


def sample_run(args: SampleArgs) -> Path:
    """Check the sampling options against the run's config, restore the run, sample, write the .npy file; its path."""
    run_dir = Path(args.run)
    if args.n < 1:
        raise ConfigError(f"--n must be a positive integer, got {args.n}")
    if args.seed is not None and not 0 <= args.seed <= SEED_MAX:
        raise ConfigError(f"--seed must lie in [0, {SEED_MAX}], got {args.seed}")
    x_T = read_x_T(args.x_T) if args.x_T is not None else None
    n = args.n if x_T is None else x_T.shape[0]
    config = sampling_config(run_config(run_dir), args)  # checked before the checkpoint is read
    guide = guidance_of(config, args, n)
    which = "" if args.sampler is None else f"_{args.sampler}"
    if args.class_ is not None or args.guidance is not None:
        which += f"_class-{args.class_ or 'all'}_w{args.guidance or 0:g}"
    kind = "trajectory" if args.trajectory else "samples"
    out = Path(args.out) if args.out else run_dir / f"{kind}_{args.params}{which}_{n}.npy"
    if out.exists():
        raise RunDirError(f"{str(out)!r} already exists; choose another --out (files are never overwritten)")
    shape = (n, 2) if config.seeds == 1 else (config.seeds, n, 2)
    needed, free = 4 * int(np.prod(shape)), shutil.disk_usage(out.parent if out.parent.exists() else ".").free
    if needed > free:
        raise ConfigError(
            f"--n {n:,} needs {needed / 2**30:,.1f} GiB on disk for {out.name}, more than the "
            f"{free / 2**30:,.1f} GiB free; ask for fewer points or another --out"
        )
    # Written into a temporary file renamed into place when complete (a killed draw leaves no
    # half-written file under the name); final points chunk by chunk into a memory-mapped file, so
    # memory stays bounded whatever --n (a --trajectory holds every state and is not streamed).
    if args.trajectory:  # every state of every chain, in memory at once
        check_chain_fits(config, n, available_memory_bytes(), "--trajectory", "ask for fewer points (--n)")
    _, state, record = restore_run(run_dir)
    params = state.ema_params if args.params == "ema" else state.params
    schedule = run_schedule(config)
    partial = out.with_name(out.name + ".partial.npy")
    try:
        if args.trajectory:
            states, nfe = sample_states(params, schedule, config, n, x_T=x_T, guide=guide)
            np.save(partial, states.astype(np.float32))
        else:
            samples = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=shape)
            _, nfe = sample_points(params, schedule, config, n, out=samples, x_T=x_T, guide=guide)
            samples.flush()
            del samples
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    start = "given x_T" if x_T is not None else "x_T ~ N(0, I)"
    classes = "" if guide is None else f", class {args.class_ or 'all'}, guidance {args.guidance or 0:g}"
    print(
        f"{n:,} {kind} from epoch {record['epoch']} of {run_dir} ({args.params} parameters, {config.sampler} "
        f"sampler, NFE {nfe}, {start}{classes}) -> {out}"
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Parse argv (default: sys.argv[1:]) and sample; the exit status."""
    return run(
        SampleArgs,
        argv,
        "python -m jax_ddpm.sample",
        sample_run,
        (ConfigError, DataError, RunDirError, IncompatibleCheckpointError),
        (CheckpointError, OSError),
    )


if __name__ == "__main__":
    sys.exit(main())
