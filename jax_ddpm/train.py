"""`python -m jax_ddpm.train [OPTIONS]`: train a DDPM on a 2D toy dataset (see --help).

A thin entry point: parse the Config, join the other processes of a multi-process run
(`distributed.join`, before any JAX computation), run `experiment.train_and_evaluate`, and turn known
errors into one stderr line (exit 2 for usage, 1 for runtime).
"""

from __future__ import annotations

import time

_IMPORTS_START = time.perf_counter()

import sys  # noqa: E402  (the imports below are timed for the run's time breakdown)
from typing import Sequence  # noqa: E402

from ddpm_harness.cli import door, run  # noqa: E402
from ddpm_harness.config import Config, ConfigError  # noqa: E402
from ddpm_harness.data import DataError  # noqa: E402
from ddpm_harness.runs import RunDirError  # noqa: E402
from jax_ddpm.runner import distributed  # noqa: E402
from jax_ddpm.runner.checkpoint import CheckpointError, IncompatibleCheckpointError  # noqa: E402
from jax_ddpm.runner.experiment import train_and_evaluate  # noqa: E402
from jax_ddpm.runner.loop import TrainingDiverged  # noqa: E402
from jax_ddpm.runner.setup import RunWriteError  # noqa: E402

IMPORTS_S = time.perf_counter() - _IMPORTS_START

USAGE_ERRORS = (ConfigError, DataError, RunDirError, IncompatibleCheckpointError)
RUNTIME_ERRORS = (CheckpointError, TrainingDiverged, RunWriteError, distributed.DistributedError, OSError)


def train(config: Config) -> dict:
    """Join the run's other processes (if any), then train; the summary. Processes other than 0 print no stdout."""
    launch = distributed.join(config)
    with distributed.exit_at_once_if_a_process_is_lost(launch), distributed.stdout_of_process_zero():
        return train_and_evaluate(config, imports_s=IMPORTS_S)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse argv (default: sys.argv[1:]) into a Config, apply its --preset and check it (`cli.door`), train;
    the exit status."""
    return run(Config, argv, "python -m jax_ddpm.train", train, USAGE_ERRORS, RUNTIME_ERRORS, door)


if __name__ == "__main__":
    sys.exit(main())
