"""`python -m jax_ddpm.sweep [OPTIONS]`: train a grid of configurations, rank them by sample quality.

Every training option takes a list (`ddpm_harness.sweeps.SweepArgs`, see --help); the Cartesian
product is trained, each configuration with --seeds seeds, e.g.

    python -m jax_ddpm.sweep --lr 1e-3 3e-3 --ema-decay 0.9 0.999 --seeds 2 --epochs 100 --out-dir runs/sweep1

A thin entry point: parse the SweepArgs (refusing a list for an option taken once), run
`runner.sweep.sweep_command` (how groups train: `jax_ddpm.runner.sweep`), and turn known errors into one
stderr line (exit 2 for usage, 1 for runtime).
"""

from __future__ import annotations

import functools
import sys
from typing import Sequence

from ddpm_harness.cli import run as run_cli
from ddpm_harness.config import ConfigError
from ddpm_harness.data import DataError
from ddpm_harness.runs import RunDirError
from ddpm_harness.sweeps import SINGLE, SweepArgs, resolve_sweep_preset
from jax_ddpm.runner import distributed
from jax_ddpm.runner.checkpoint import CheckpointError, IncompatibleCheckpointError
from jax_ddpm.runner.setup import RunWriteError
from jax_ddpm.runner.sweep import sweep_command

PROG = "python -m jax_ddpm.sweep"
USAGE_ERRORS = (ConfigError, DataError, RunDirError, IncompatibleCheckpointError)
RUNTIME_ERRORS = (CheckpointError, RunWriteError, distributed.DistributedError, OSError)


def check_single_values(argv: Sequence[str]) -> None:
    """Refuse a list for an option a sweep takes once (--out-dir a b, --seeds 2 4), naming it."""
    singles = {"--" + name.replace("_", "-") for name in SINGLE}
    for i, token in enumerate(argv):
        name = token.split("=", 1)[0]
        if name in singles and "=" not in token:
            values = list(_values_after(argv, i))
            if len(values) > 1:
                raise ConfigError(
                    f"{name} takes one value, got {len(values)} ({', '.join(map(repr, values))}): it cannot "
                    "be swept; the options that take lists are the training options (see --help)"
                )


def _values_after(argv: Sequence[str], i: int):
    """The tokens after argv[i] up to the next option (a negative number is a value, -x an option)."""
    for token in argv[i + 1 :]:
        if token.startswith("-") and not _is_number(token):
            return
        yield token


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Parse argv (default: sys.argv[1:]) into SweepArgs and run the sweep; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_single_values(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    body = functools.partial(sweep_command, command=" ".join([PROG, *argv]))
    return run_cli(SweepArgs, argv, PROG, body, USAGE_ERRORS, RUNTIME_ERRORS, resolve_sweep_preset)


if __name__ == "__main__":
    sys.exit(main())
