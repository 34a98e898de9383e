"""`python -m jax_ddpm.train [OPTIONS]`: train a DDPM on a 2D toy dataset (see --help).

A thin entry point: parse the Config, run `experiment.train_and_evaluate`, and turn known errors
into one stderr line (exit 2 for usage, 1 for runtime).
"""

from __future__ import annotations

import sys
from typing import Sequence

from ddpm_harness.cli import run
from ddpm_harness.config import Config, ConfigError
from ddpm_harness.data import DataError
from ddpm_harness.runs import RunDirError
from jax_ddpm.checkpoint import CheckpointError, IncompatibleCheckpointError
from jax_ddpm.experiment import TrainingDiverged, train_and_evaluate

USAGE_ERRORS = (ConfigError, DataError, RunDirError, IncompatibleCheckpointError)
RUNTIME_ERRORS = (CheckpointError, TrainingDiverged, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse argv (default: sys.argv[1:]) into a Config and train; the exit status."""
    return run(Config, argv, "python -m jax_ddpm.train", train_and_evaluate, USAGE_ERRORS, RUNTIME_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
