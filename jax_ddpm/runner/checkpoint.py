"""Checkpoints of a run with orbax: the whole TrainState plus a small JSON record.

The TrainState holds the parameters, their EMA, Adam's state, the key streams and the epoch and opt_step
counters; since per-epoch and per-step keys come from fold_in, the state at an epoch boundary
determines the rest of the run, so resuming from it reproduces an uninterrupted run bit for bit.
The JSON record keeps the epoch, the training wall time so far and the config that wrote it.
orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Optional

import jax
import orbax.checkpoint as ocp

from ddpm_harness.config import SAMPLING_FIELDS, Config, validate
from ddpm_harness.runs import CONFIG_FILE, RunDirError, read_config, write_json
from jax_ddpm.runner.chunk import init_states, optimizer_for

CHECKPOINT_DIR = "checkpoints"
# Options that may change when a run resumes: these never touch the trajectory (--devices and the
# processes only regroup each batch's sums), and --epochs may grow. --lr and --ema-decay may change too (say, a
# lower --lr after the loss diverged); `changed_options` reports them. The sampling options only
# change how the trained model is sampled and evaluated (--prediction and --zero-terminal-snr change
# what it is trained on, so they are not free). --preset is a label: the values it set are checked.
# Every other option fixes the state's structure, the data or the noise, so a checkpoint only
# resumes with the same value.
FREE_FIELDS = (
    "epochs",
    "out_dir",
    "resume",
    "checkpoint_every",
    "log_every",
    "eval_every",
    "n_eval",
    "no_plots",
    "n_samples",
    "sample_with",
    "devices",
    "compile_cache",
    "preset",
    "coordinator_address",
    "num_processes",
    "process_id",
    "distributed_timeout",
) + SAMPLING_FIELDS
TUNABLE_FIELDS = ("lr", "ema_decay")


class _WithoutOrbaxLines(logging.Filter):
    """orbax logs what it cannot parse (a garbled _CHECKPOINT_METADATA, say) on stderr through absl;
    this module reports every checkpoint problem itself in one line, so orbax's own lines are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "orbax" not in record.pathname


logging.getLogger("absl").addFilter(_WithoutOrbaxLines())


# A restore that fails on a garbled array file: orbax gives up at the first bad read and closes its
# event loop, leaving behind reads still in flight. Each would print its own report on stderr after
# the one line that reports the checkpoint: an "Exception ignored in <coroutine ...>" traceback when
# an unfinished read of orbax's is closed, "Event loop is closed" when tensorstore's callback finds
# the loop gone, "Future exception was never retrieved" from asyncio for every failed read, and
# "coroutine ... was never awaited" for the reads never started (that warning is silenced by
# `_orbax_read` once a read has failed). Only these leftovers are dropped; any other report passes through.


def _is_orbax_leftover(unraisable) -> bool:
    code = getattr(unraisable.object, "cr_code", None)  # a coroutine closed while it was waiting
    in_orbax = code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
    closed_loop = isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"
    return in_orbax or closed_loop


def _without_orbax_leftovers(unraisable, previous=sys.unraisablehook) -> None:
    if not _is_orbax_leftover(unraisable):
        previous(unraisable)


sys.unraisablehook = _without_orbax_leftovers


class _WithoutUnretrievedReads(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in str(record.msg):
            return True
        text = record.getMessage() + (repr(record.exc_info[1]) if record.exc_info else "")
        if record.exc_info and record.exc_info[2]:
            text += " ".join(frame.filename for frame in traceback.extract_tb(record.exc_info[2]))
        return not any(mark in text.lower() for mark in ("orbax", "tensorstore", "ocdbt"))


logging.getLogger("asyncio").addFilter(_WithoutUnretrievedReads())


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message says where and what to do."""


class UnfinishedCheckpointError(CheckpointError):
    """A checkpoint without its manifest: the run stopped while writing it (nothing in it was ever used)."""


class IncompatibleCheckpointError(CheckpointError):
    """A readable checkpoint written with options that differ from this run's."""


def check_compatible(saved: dict, config: Config, where: Path) -> None:
    """Raise IncompatibleCheckpointError naming every trajectory option that differs."""
    current, defaults = dataclasses.asdict(config), dataclasses.asdict(Config())
    saved = {**defaults, **saved}  # a field added since the checkpoint was written held its default
    differ = [name for name in current if name not in FREE_FIELDS + TUNABLE_FIELDS and saved.get(name) != current[name]]
    if differ:
        options = ", ".join(f"--{n.replace('_', '-')} {saved.get(n)} (now {current[n]})" for n in differ)
        raise IncompatibleCheckpointError(
            f"the checkpoint in {str(where)!r} was written with {options}; "
            "resume with the same options, or start a new --out-dir"
        )


def changed_options(saved: dict, config: Config) -> list[str]:
    """The tunable options that differ from the checkpoint's, as "--lr 0.001 -> 0.0001"."""
    current = dataclasses.asdict(config)
    return [
        f"--{n.replace('_', '-')} {saved.get(n)} -> {current[n]}" for n in TUNABLE_FIELDS if saved.get(n) != current[n]
    ]


MANIFEST_DIR = "checkpoint_manifests"
UNFINISHED = "it has no manifest: the run stopped while writing it"
SET_ASIDE_DIR = "corrupt_checkpoints"


def _file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class Checkpointer:
    """Save and restore the TrainState of one run folder (keeps the two latest checkpoints).

    Each checkpoint gets a manifest (the sha256 of each of its files, run_dir/checkpoint_manifests/
    <epoch>.json) written once orbax has finished it. A checkpoint whose files do not match its
    manifest (truncated, partly deleted, garbled), or that has none (the run died between the two
    writes), or that orbax cannot read, is reported in one warning line, moved aside into
    run_dir/corrupt_checkpoints/ (never deleted), and the previous one is used.
    """

    def __init__(self, run_dir: Path):
        self.directory = (Path(run_dir) / CHECKPOINT_DIR).absolute()
        self.manifests = self.directory.parent / MANIFEST_DIR
        self._open()

    def _open(self) -> None:
        try:
            self._manager = self._make_manager()
        except Exception as err:  # orbax raises many types; all mean "cannot use this folder"
            raise CheckpointError(f"cannot open checkpoints in {str(self.directory)!r}: {_first_line(err)}") from None

    def _make_manager(self) -> ocp.CheckpointManager:
        """orbax's manager of the checkpoints folder (jax_ddpm.runner.distributed makes one for a single process among
        several)."""
        options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False, create=True)
        return ocp.CheckpointManager(self.directory, options=options)

    def latest_epoch(self) -> Optional[int]:
        """Epoch of the newest checkpoint orbax finished, None when there is none."""
        return self._manager.latest_step()

    def save(self, state, *, epoch: int, wall_s: float, config: Config, data_sha256: Optional[str] = None) -> None:
        """Write checkpoint `epoch`, then its manifest; the record keeps the config and the data
        file's hash (None for a built-in dataset), so that --resume can refuse a file changed since."""
        record = dict(
            epoch=int(epoch), wall_s=float(wall_s), config=dataclasses.asdict(config), data_sha256=data_sha256
        )
        try:
            self._manager.save(
                int(epoch),
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
            )
        except OSError:
            raise
        except Exception as err:  # orbax wraps a full disk or a read-only folder in its own types
            raise OSError(f"checkpoint {epoch} could not be written: {_first_line(err)}") from None
        self.manifests.mkdir(exist_ok=True)
        write_json(self.manifests / f"{int(epoch)}.json", _file_hashes(self.directory / str(int(epoch))))
        kept = {str(e) for e in self._manager.all_steps()}
        for manifest in self.manifests.glob("*.json"):  # orbax removed the checkpoints past the two newest
            if manifest.stem not in kept:
                manifest.unlink()

    def _verify(self, epoch: int) -> Optional[str]:
        """Why checkpoint `epoch` cannot be trusted, or None when its files match its manifest."""
        manifest = self.manifests / f"{epoch}.json"
        if not manifest.is_file():
            return UNFINISHED
        try:
            expected = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return "its manifest is unreadable"
        found = _file_hashes(self.directory / str(epoch))
        missing = sorted(set(expected) - set(found))
        changed = sorted(k for k in expected if k in found and found[k] != expected[k])
        if missing:
            return f"{len(missing)} of its files are missing ({missing[0]}, ...)"
        if changed:
            return f"{len(changed)} of its files differ from what was written ({changed[0]}, ...)"
        return None

    def _read(self, epoch: int, template, config: Config):
        problem = self._verify(epoch)
        if problem == UNFINISHED:
            raise UnfinishedCheckpointError(problem)
        if problem:
            raise CheckpointError(problem)
        restore_record = ocp.args.Composite(record=ocp.args.JsonRestore())
        record = _orbax_read(lambda: self._manager.restore(epoch, args=restore_record))["record"]
        if not (
            isinstance(record, dict)
            and type(record.get("epoch")) is int
            and record["epoch"] == epoch
            and isinstance(record.get("wall_s"), (int, float))
            and isinstance(record.get("config"), dict)
        ):
            raise CheckpointError("its record is not the {epoch, wall_s, config} this program writes")
        check_compatible(record.get("config", {}), config, self.directory)
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        restore_state = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        return _orbax_read(lambda: self._manager.restore(epoch, args=restore_state))["state"], record

    def has(self, epoch: int) -> bool:
        """Whether orbax holds a finished checkpoint of `epoch`."""
        return int(epoch) in self._manager.all_steps()

    def restore(self, template, config: Config, set_aside: bool = True, epoch: Optional[int] = None):
        """(state, record) of the newest good checkpoint, or of `epoch` when given; `template` is a
        fresh state of the same shapes.

        A bad newest checkpoint is reported in one warning line on stderr and, with `set_aside`
        (a run that resumes and will write a new one), moved aside; the one before it is used.
        With `set_aside`, None when every checkpoint was unfinished (the run was killed while
        writing its first): the resumed run then starts from the beginning, as if none were written.
        Raises IncompatibleCheckpointError when a checkpoint was written with other trajectory options,
        CheckpointError when no checkpoint can be read.
        """
        if epoch is not None:
            if not self.has(epoch):
                raise CheckpointError(f"no checkpoint of epoch {epoch} in {str(self.directory)!r}")
            try:
                return self._read(int(epoch), template, config)
            except IncompatibleCheckpointError:
                raise
            except CheckpointError as err:
                raise CheckpointError(f"checkpoint {epoch} in {str(self.directory)!r}: {err}") from None
        epochs = sorted(self._manager.all_steps(), reverse=True)
        if not epochs:
            raise CheckpointError(f"no checkpoint in {str(self.directory)!r}")
        problems, unfinished = [], 0
        for epoch in epochs:
            try:
                return self._read(epoch, template, config)
            except IncompatibleCheckpointError:
                raise
            except CheckpointError as err:
                problems.append(f"checkpoint {epoch}: {err}")
                unfinished += isinstance(err, UnfinishedCheckpointError)
                earlier = [e for e in epochs if e < epoch]
                fallback = f"using checkpoint {earlier[0]}" if earlier else "no earlier checkpoint is left"
                moved = f"; it is moved to {SET_ASIDE_DIR}/" if set_aside else ""
                print(
                    f"warning: checkpoint {epoch} in {str(self.directory)!r} cannot be trusted ({err}); "
                    f"{fallback}{moved}",
                    file=sys.stderr,
                )
                if set_aside:
                    self._set_aside(epoch)
        if set_aside and unfinished == len(epochs):
            return None
        raise CheckpointError(
            f"no readable checkpoint in {str(self.directory)!r} ({'; '.join(problems)}); start a new --out-dir"
        )

    def _set_aside(self, epoch: int) -> None:
        """Move a bad checkpoint out of orbax's folder (kept for inspection, never deleted)."""
        aside = self.directory.parent / SET_ASIDE_DIR
        aside.mkdir(exist_ok=True)
        target = aside / f"{epoch}-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(self.directory / str(epoch), target)
        manifest = self.manifests / f"{epoch}.json"
        if manifest.is_file():
            os.replace(manifest, target.with_suffix(".manifest.json"))
        self._manager.close()
        self._open()

    def close(self) -> None:
        self._manager.close()


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def _orbax_read(read: Callable[[], dict]) -> dict:
    """read(), or CheckpointError naming orbax's first complaint.

    orbax gives up at the first bad read with others in flight. Each of those reports "coroutine ...
    was never awaited" when it is freed: here (collected at once), or, for those orbax's event loop
    still holds, when the process exits ("sys:1: RuntimeWarning ..." after our one line). So from
    the first failed read on, that warning is silenced for the rest of the process (see also
    _is_orbax_leftover)."""
    try:
        return read()
    except Exception as err:
        problem = _first_line(err)
    warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)
    gc.collect()  # `err` and its traceback are gone: the reads they held are freed now
    raise CheckpointError(f"orbax cannot read it ({problem})")


def run_config(run_dir) -> Config:
    """The validated Config of a run folder written by `python -m jax_ddpm.train`; RunDirError when the
    folder holds no run. The command lines that read a run check their options against it before restoring."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(
            f"{str(run_dir)!r} is not a run folder (no {CONFIG_FILE}); "
            "give a folder written by python -m jax_ddpm.train"
        )
    return validate(read_config(run_dir))


def restore_run(run_dir) -> tuple[Config, object, dict]:
    """(config, state, record) of the newest checkpoint of a run folder written by
    `python -m jax_ddpm.train`: what sampling, evaluating and exporting a run start from.

    Raises RunDirError when the folder holds no run, CheckpointError when its checkpoint is unreadable.
    """
    config = run_config(run_dir)
    state, record = Checkpointer(run_dir).restore(init_states(config, optimizer_for(config)), config, set_aside=False)
    return config, state, record
