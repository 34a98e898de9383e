"""`python -m jax_ddpm.sample --run runs/<name> --n 10000 --params raw|ema --out samples.npy`.

Samples from the newest checkpoint of a run folder with the ancestral sampler. By default the
chain uses the run's own sampling key, so `--n` equal to the run's --n-samples with the
parameters it sampled with reproduces its samples.npy exactly.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from ddpm_harness.cli import run
from ddpm_harness.config import SEED_MAX, ConfigError
from ddpm_harness.runs import RunDirError
from jax_ddpm.checkpoint import CheckpointError, IncompatibleCheckpointError, restore_run
from jax_ddpm.experiment import sample_states
from jax_ddpm.schedule import schedule_for


@dataclasses.dataclass(frozen=True)
class SampleArgs:
    """Draw samples from a trained run's newest checkpoint."""

    run: str
    """Run folder written by `python -m jax_ddpm.train` (holds config.json and checkpoints/)."""
    n: int = 10_000
    """Number of points to sample (per seed for a run trained with --seeds)."""
    params: Literal["raw", "ema"] = "raw"
    """Sample with the raw parameters (as the tutorial does) or their EMA."""
    out: Optional[str] = None
    """Output .npy file, (n, 2) or (seeds, n, 2); by default <run>/samples_<params>_<n>.npy. Never overwritten."""
    seed: Optional[int] = None
    """Sample with the keys of this seed instead of the run's own sampling key."""


def sample_run(args: SampleArgs) -> Path:
    """Restore the run, sample, write the .npy file; its path."""
    run_dir = Path(args.run)
    if args.n < 1:
        raise ConfigError(f"--n must be a positive integer, got {args.n}")
    if args.seed is not None and not 0 <= args.seed <= SEED_MAX:
        raise ConfigError(f"--seed must lie in [0, {SEED_MAX}], got {args.seed}")
    out = Path(args.out) if args.out else run_dir / f"samples_{args.params}_{args.n}.npy"
    if out.exists():
        raise RunDirError(f"{str(out)!r} already exists; choose another --out (files are never overwritten)")
    config, state, record = restore_run(run_dir)
    schedule = schedule_for(config)
    params = state.ema_params if args.params == "ema" else state.params
    sampling_config = config if args.seed is None else dataclasses.replace(config, seed=args.seed)
    samples = sample_states(params, schedule, sampling_config, args.n)[..., -1, :, :]
    np.save(out, samples.astype(np.float32))
    print(f"{args.n:,} samples from epoch {record['epoch']} of {run_dir} ({args.params} parameters) -> {out}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Parse argv (default: sys.argv[1:]) and sample; the exit status."""
    return run(SampleArgs, argv, "python -m jax_ddpm.sample", sample_run,
               (ConfigError, RunDirError, IncompatibleCheckpointError), (CheckpointError, OSError))


if __name__ == "__main__":
    sys.exit(main())
