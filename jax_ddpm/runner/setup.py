"""Set up one run (`Run`, `set_up`): data, schedule, optimizer, devices, the run folder, and the initial
state or the one restored from the newest checkpoint (--resume); `set_up_together` on every process of
a multi-process run."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional

import jax.numpy as jnp
import numpy as np

from ddpm_harness.config import Config, ConfigError
from ddpm_harness.data import data_transform, dataset_for, file_sha256, labels_for
from ddpm_harness.runs import MetricsLog, describe_setup, release_run_dir
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.runner import distributed
from jax_ddpm.runner.checkpoint import Checkpointer, IncompatibleCheckpointError, changed_options
from jax_ddpm.runner.chunk import init_states, make_mesh, optimizer_for
from jax_ddpm.runner.compile_cache import use_compile_cache
from jax_ddpm.schedule import Schedule


class RunWriteError(RuntimeError):
    """The run folder could not be written (disk full, permissions); the message says what is kept."""


@dataclasses.dataclass
class Run:
    """Everything the phases of one run share."""

    config: Config
    run_dir: Path
    data: np.ndarray  # (N, 2) float32
    schedule: Schedule
    optimizer: object
    mesh: object
    state: object  # TrainState, seeds stacked on a leading axis when config.seeds > 1
    checkpointer: Checkpointer
    metrics: MetricsLog
    records: list[dict]  # metrics.jsonl lines so far
    start_epoch: int = 0
    wall_before: float = 0.0  # training wall time of earlier sessions (resume)
    timings: dict = dataclasses.field(default_factory=dict)  # seconds per phase of this session
    data_sha256: Optional[str] = None  # of a data file; None for a built-in dataset
    writes: bool = True  # False on the processes of a multi-process run other than 0, which write nothing
    transform: tuple = (np.zeros(2, np.float32), 1.0)  # (shift, scale): model units = (data - shift) / scale
    labels: Optional[np.ndarray] = None  # (N,) int32, the class of each point of a --conditional run

    def training_data(self):
        """What the compiled chunk trains on: the points in model units (N, 2), or (points, labels (N,))."""
        points = jnp.asarray(self.model_data())
        return points if self.labels is None else (points, jnp.asarray(self.labels))

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.data.shape[0] // self.config.batch_size)

    def model_data(self) -> np.ndarray:
        """The training points in model units (N, 2): (data - shift) / scale (--normalize)."""
        shift, scale = self.transform
        return (self.data - shift) / scale


def set_up(config: Config) -> Run:
    """Draw the data, build the schedule, optimizer, devices and run folder; restore the newest
    checkpoint with --resume. The config was validated when it was parsed (`ddpm_harness.cli.door`)."""
    start = time.perf_counter()
    use_compile_cache(config.compile_cache)
    data = dataset_for(config)
    schedule = run_schedule(config)
    for line in describe_setup(config, data, schedule):
        print(line)
    optimizer = optimizer_for(config)
    mesh = make_mesh(config.devices, ot_models_split=config.coupling == "ot" and config.seeds > 1)
    state = init_states(config, optimizer, mesh)
    run_dir, checkpointer, metrics, writes = distributed.open_outputs(config)  # process 0 alone opens the folder
    try:
        run = Run(config, run_dir, data, schedule, optimizer, mesh, state, checkpointer, metrics, [])
        run.data_sha256, run.writes, run.transform = file_sha256(config.dataset), writes, data_transform(config, data)
        run.labels = labels_for(config) if config.conditional else None  # a file is read again: it was checked
        if config.resume and run.checkpointer.latest_epoch() is not None:
            _restore(run)
        run.records = run.metrics.truncate_after(run.start_epoch)  # drop what a killed run logged past its checkpoint
    except BaseException:
        release_run_dir(run_dir)
        raise
    run.timings["set_up"] = time.perf_counter() - start
    return run


def set_up_together(config: Config) -> Run:
    """`set_up(config)` on every process of a run, agreed (`distributed.share_set_up`): if any process fails,
    every process stops with one line. In a single process, `set_up(config)`."""
    with distributed.told_on_failure():
        run = set_up(config)
    distributed.share_set_up(run, config.distributed_timeout)
    return run


def _restore(run: Run) -> None:
    restored = run.checkpointer.restore(run.state, run.config)
    if restored is None:  # killed while writing its first checkpoint: nothing was kept, start again
        print(f"resuming {run.run_dir} from the beginning: it was stopped before its first checkpoint was complete")
        return
    state, record = restored
    run.state, run.start_epoch, run.wall_before = state, record["epoch"], record["wall_s"]
    if run.start_epoch > run.config.epochs:
        raise ConfigError(
            f"the checkpoint in {run.run_dir} is at epoch {run.start_epoch}, past --epochs {run.config.epochs}; "
            f"give --epochs {run.start_epoch} or more"
        )
    if record.get("data_sha256") != run.data_sha256:
        raise IncompatibleCheckpointError(
            f"the data file {run.config.dataset!r} changed since the checkpoint in {run.run_dir} was written "
            "(its sha256 differs); restore the file, or start a new --out-dir"
        )
    changes = changed_options(record["config"], run.config)
    print(
        f"resuming {run.run_dir} from the checkpoint of epoch {run.start_epoch}"
        + (f" with {', '.join(changes)}" if changes else "")
    )


def restore_at(run: Run, epoch: int) -> None:
    """Put `run` back to `epoch` (0: a fresh state), its checkpoint of that epoch and metrics up to it."""
    fresh = init_states(run.config, run.optimizer)
    if epoch == 0:
        run.state, run.wall_before = fresh, 0.0
    else:
        run.state, record = run.checkpointer.restore(fresh, run.config, epoch=epoch)
        run.wall_before = record["wall_s"]
    run.start_epoch = epoch
    run.records = run.metrics.truncate_after(epoch)


def release(run: Run) -> None:
    """Close the run's checkpoints and release its folder."""
    run.checkpointer.close()
    release_run_dir(run.run_dir)


def write_failure_message(run: Run, err: OSError) -> str:
    """The one line for a run whose folder could not be written: what is kept, what to do."""
    kept = run.checkpointer.latest_epoch()
    where = (
        f"the last complete checkpoint (epoch {kept}) is intact" if kept is not None else "no checkpoint was written"
    )
    return (
        f"writing to {run.run_dir} failed ({err.strerror or err}); {where}; free space or make the folder "
        "writable, then continue with --resume"
    )
