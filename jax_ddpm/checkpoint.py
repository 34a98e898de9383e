"""Checkpoints of a run with orbax: the whole TrainState plus a small JSON record.

The TrainState holds the parameters, their EMA, Adam's state, the key streams and the epoch/step
counters; since per-epoch and per-step keys come from fold_in, the state at an epoch boundary
determines the rest of the run, so resuming from it reproduces an uninterrupted run bit for bit.
The JSON record keeps the epoch, the training wall time so far and the config that wrote it.
orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import jax
import orbax.checkpoint as ocp

from ddpm_harness.config import Config, validate
from ddpm_harness.runs import CONFIG_FILE, RunDirError, read_config
from jax_ddpm.training import init_states, optimizer_for

CHECKPOINT_DIR = "checkpoints"
# Options that may change when a run resumes: these never touch the trajectory (--devices only
# regroups each batch's sums), and --epochs may grow. --lr and --ema-decay may change too (say, a
# lower --lr after the loss diverged); `changed_options` reports them. The sampling options only
# change how the trained model is sampled and evaluated (--prediction and --zero-terminal-snr change
# what it is trained on, so they are not free). --preset is a label: the values it set are checked.
# Every other option fixes the state's structure, the data or the noise, so a checkpoint only
# resumes with the same value.
SAMPLING_FIELDS = ("sampler", "sample_steps", "eta", "variance", "timestep_spacing", "ode_rtol", "ode_atol")
FREE_FIELDS = ("epochs", "out_dir", "resume", "checkpoint_every", "log_every", "eval_every", "n_eval",
               "no_plots", "n_samples", "sample_with", "devices", "no_compile_cache", "preset") + SAMPLING_FIELDS
TUNABLE_FIELDS = ("lr", "ema_decay")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message says where and what to do."""


class IncompatibleCheckpointError(CheckpointError):
    """A readable checkpoint written with options that differ from this run's."""


def check_compatible(saved: dict, config: Config, where: Path) -> None:
    """Raise IncompatibleCheckpointError naming every trajectory option that differs."""
    current, defaults = dataclasses.asdict(config), dataclasses.asdict(Config())
    saved = {**defaults, **saved}  # a field added since the checkpoint was written held its default
    differ = [name for name in current
              if name not in FREE_FIELDS + TUNABLE_FIELDS and saved.get(name) != current[name]]
    if differ:
        options = ", ".join(f"--{n.replace('_', '-')} {saved.get(n)} (now {current[n]})" for n in differ)
        raise IncompatibleCheckpointError(f"the checkpoint in {str(where)!r} was written with {options}; "
                                          "resume with the same options, or start a new --out-dir")


def changed_options(saved: dict, config: Config) -> list[str]:
    """The tunable options that differ from the checkpoint's, as "--lr 0.001 -> 0.0001"."""
    current = dataclasses.asdict(config)
    return [f"--{n.replace('_', '-')} {saved.get(n)} -> {current[n]}" for n in TUNABLE_FIELDS
            if saved.get(n) != current[n]]


class Checkpointer:
    """Save and restore the TrainState of one run folder (keeps the two latest checkpoints)."""

    def __init__(self, run_dir: Path):
        self.directory = (Path(run_dir) / CHECKPOINT_DIR).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False, create=True)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except Exception as err:  # orbax raises many types; all mean "cannot use this folder"
            raise CheckpointError(f"cannot open checkpoints in {str(self.directory)!r}: {_first_line(err)}") from None

    def latest_epoch(self) -> Optional[int]:
        """Epoch of the newest complete checkpoint, None when there is none."""
        return self._manager.latest_step()

    def save(self, state, *, epoch: int, wall_s: float, config: Config, data_sha256: Optional[str] = None) -> None:
        """Write checkpoint `epoch`; the record keeps the config and the data file's hash (None for
        a built-in dataset), so that --resume can refuse a file changed since."""
        record = dict(epoch=int(epoch), wall_s=float(wall_s), config=dataclasses.asdict(config),
                      data_sha256=data_sha256)
        self._manager.save(int(epoch), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                               record=ocp.args.JsonSave(record)))

    def restore(self, template, config: Config):
        """(state, record) of the newest checkpoint; `template` is a fresh state of the same shapes.

        Raises IncompatibleCheckpointError when the checkpoint was written with other trajectory
        options, CheckpointError when it cannot be read.
        """
        epoch = self.latest_epoch()
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {str(self.directory)!r}")
        try:
            record = self._manager.restore(epoch, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]
        except Exception as err:
            raise CheckpointError(self._unreadable(epoch, err)) from None
        check_compatible(record.get("config", {}), config, self.directory)
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        try:
            state = self._manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract)))["state"]
        except Exception as err:
            raise CheckpointError(self._unreadable(epoch, err)) from None
        return state, record

    def _unreadable(self, epoch: int, err: Exception) -> str:
        return (f"checkpoint {epoch} in {str(self.directory)!r} is unreadable ({_first_line(err)}); "
                "delete that folder to fall back to an earlier checkpoint, or start a new --out-dir")

    def close(self) -> None:
        self._manager.close()


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def restore_run(run_dir) -> tuple[Config, object, dict]:
    """(config, state, record) of the newest checkpoint of a run folder written by
    `python -m jax_ddpm.train`: what sampling, evaluating and exporting a run start from.

    Raises RunDirError when the folder holds no run, CheckpointError when its checkpoint is unreadable.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{str(run_dir)!r} is not a run folder (no {CONFIG_FILE}); "
                          "give a folder written by python -m jax_ddpm.train")
    config = validate(read_config(run_dir))
    state, record = Checkpointer(run_dir).restore(init_states(config, optimizer_for(config)), config)
    return config, state, record
