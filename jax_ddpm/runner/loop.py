"""The chunk loop (`train`): a group of runs trained by one compiled program, chunk after chunk, to --epochs.

A run (`python -m jax_ddpm.train`) is a group of one configuration (`group_of_one`); a sweep's group
(`runner.sweep.set_up_group`) holds many. They differ in two values the loop takes, not in the loop:

- the group's `Program`: how its models are compiled and cut apart. A run's is `make_train_chunk` (its
  options as constants; --devices splits one seed's batches; the state as the run holds it); a sweep's is
  `make_sweep_chunk` (each model's `HyperParams` as inputs; every configuration's seeds on one model axis).
- the progress: `RunProgress` (a tqdm bar and the tutorial's log lines; a loss that becomes NaN or inf
  stops the run with one line) or `GroupProgress` (a line per --log-every; a configuration whose loss
  becomes NaN or inf stops with a warning while the others go on).

After each chunk, every configuration still training gets its metrics.jsonl lines (the loss checked
finite), its evaluation (--eval-every) and its checkpoint; then the processes of a multi-process run meet.
The chunk length divides the logging, checkpoint and evaluation periods, so the program is compiled once.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ddpm_harness.config import Config
from ddpm_harness.data import data_transform, dataset_for, held_out_for, labels_for
from ddpm_harness.runs import epoch_record, format_against
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.runner import distributed
from jax_ddpm.runner.chunk import init_states, make_train_chunk, optimizer_for
from jax_ddpm.runner.evaluation import calibration, evaluate_state, flat_evaluation
from jax_ddpm.runner.setup import Run

# A chunk holds at most this many optimizer steps (summed over models), so the progress bar moves
# every couple of seconds on a 2-core CPU.
MAX_CHUNK_STEPS = 4000


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the message names the epoch and the checkpoint kept."""


def chunk_epochs(config: Config, steps_per_epoch: int, start_epoch: int = 0) -> int:
    """The chunk length: the largest divisor of every period (log, checkpoint, evaluation, the
    run's length and where it resumes) whose steps (of all `config.seeds` models) fit MAX_CHUNK_STEPS;
    1 if none does."""
    periods = [config.log_every, config.checkpoint_every, config.epochs, start_epoch]
    period = math.gcd(*periods, config.eval_every)
    steps = steps_per_epoch * config.seeds
    return max(d for d in range(1, period + 1) if period % d == 0 and (d == 1 or d * steps <= MAX_CHUNK_STEPS))


@dataclasses.dataclass(frozen=True)
class Program:
    """How a group's models are compiled and cut apart: where a run and a sweep differ."""

    # (n_epochs, state, data) -> chunk(state, data) -> (state, metrics), each metric (width, n_epochs) or its reshape
    compile: Callable
    width: int  # models the program trains: a run's seeds, or a sweep's configurations x seeds and padding
    part: Callable  # (state, i) -> configuration i's state as its run holds it


@dataclasses.dataclass
class Group:
    """Runs trained together by one program: configuration i's seeds are models i*seeds .. (i+1)*seeds - 1."""

    runs: list[Run]
    state: object  # the program's state of every model
    program: Program
    start_epoch: int
    n_models: int  # configurations x seeds (the program may train padding models past them)
    diverged_at: dict = dataclasses.field(default_factory=dict)  # run index -> epoch
    evaluations: dict = dataclasses.field(default_factory=dict)  # run index -> last evaluation

    @property
    def config(self) -> Config:
        return self.runs[0].config

    @property
    def steps_per_epoch(self) -> int:
        return self.runs[0].steps_per_epoch


@dataclasses.dataclass
class Trained:
    """What the training phase measured, in seconds of this session."""

    steps: int  # optimizer steps trained in this session (each advances every model)
    compile_s: float = 0.0
    compute_s: float = 0.0  # in the compiled chunks
    evaluate_s: float = 0.0  # in the evaluations between them
    train_s: float = 0.0  # the whole loop

    def timings(self) -> dict:
        """The loop's part of a run's time breakdown (summary.json's timings)."""
        return {
            "compile": self.compile_s,
            "training_chunks": self.compute_s,
            "evaluation": self.evaluate_s,
            "training_loop": self.train_s,
        }


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One chunk's outcome: epochs `epoch - n_epochs + 1 .. epoch`, losses (width, n_epochs) of every model."""

    epoch: int
    n_epochs: int
    losses: np.ndarray  # the epochs' mean batch losses
    last_losses: np.ndarray  # their last-batch losses
    elapsed_s: float  # since the loop started

    @property
    def first(self) -> int:
        return self.epoch - self.n_epochs


def group_of_one(run: Run) -> Group:
    """A run as a group of one configuration, trained by `make_train_chunk`."""

    def compile_chunk(n_epochs: int, state, data):
        chunk = make_train_chunk(run.config, run.schedule, run.optimizer, n_epochs, run.mesh)
        return chunk.lower(state, data).compile()

    program = Program(compile_chunk, run.config.seeds, lambda state, i: state)
    return Group([run], run.state, program, run.start_epoch, run.config.seeds)


def train(group: Group, progress) -> Trained:
    """Compile one chunk of epochs for the group's models, run it to --epochs (`_after_chunk` between
    chunks); afterwards each run holds its final state. `progress`: `RunProgress` or `GroupProgress`."""
    config, steps_per_epoch = group.config, group.steps_per_epoch
    n_chunk = chunk_epochs(dataclasses.replace(config, seeds=group.program.width), steps_per_epoch, group.start_epoch)
    data = group.runs[0].training_data()
    trained, compiled = Trained(steps=(config.epochs - group.start_epoch) * steps_per_epoch), None
    if group.start_epoch < config.epochs:
        compile_start = time.perf_counter()
        compiled = group.program.compile(n_chunk, group.state, data)
        trained.compile_s = time.perf_counter() - compile_start
        progress.compiled(group, n_chunk, trained.compile_s)
    reference = held_out_for(config, config.n_eval)
    epoch, loop_start = group.start_epoch, time.perf_counter()
    with progress:
        while epoch < config.epochs:
            chunk_start = time.perf_counter()
            group.state, metrics = compiled(group.state, data)
            losses, last_losses = (np.asarray(metrics[k]).reshape(-1, n_chunk) for k in ("loss", "last_loss"))
            trained.compute_s += time.perf_counter() - chunk_start
            epoch += n_chunk
            chunk = Chunk(epoch, n_chunk, losses, last_losses, time.perf_counter() - loop_start)
            trained.evaluate_s += _after_chunk(group, chunk, reference, progress)
            distributed.meet(f"after epoch {epoch}", config.distributed_timeout)  # a no-op in one process
            progress.chunk_done(group, chunk, trained)
    for i, run in enumerate(group.runs):
        run.checkpointer.close()
        run.state = group.program.part(group.state, i)
    trained.train_s = time.perf_counter() - loop_start
    return trained


def _after_chunk(group: Group, chunk: Chunk, reference: np.ndarray, progress) -> float:
    """Every configuration still training: its metrics lines of the chunk, cut at a loss that is NaN or inf
    (the configuration is then marked diverged and `progress.diverged` told), its evaluation and checkpoint.
    The seconds spent evaluating."""
    lines = {}
    for i, run in enumerate(group.runs):
        if i in group.diverged_at:
            continue
        new, bad = _chunk_records(run, i, chunk)
        if bad is None:
            lines[i] = new
            continue
        run.metrics.append(new[:bad])
        group.diverged_at[i] = chunk.first + bad + 1
        progress.diverged(run, group.diverged_at[i])
    start = time.perf_counter()
    if group.config.eval_every and chunk.epoch % group.config.eval_every == 0:
        for i, new in lines.items():
            run = group.runs[i]
            state = group.program.part(group.state, i)
            group.evaluations[i] = evaluate_state(state, run.schedule, run.config, reference, chunk.epoch)
            new[-1].update(flat_evaluation(group.evaluations[i]), eval_n=run.config.n_eval)
    evaluate_s = time.perf_counter() - start
    for i, new in lines.items():
        _write(group, i, new, chunk)
    return evaluate_s


def _chunk_records(run: Run, i: int, chunk: Chunk) -> tuple[list[dict], Optional[int]]:
    """Configuration i's metrics.jsonl lines of the chunk, and the index of the first whose loss is NaN
    or inf (None when all are finite)."""
    seeds, steps_per_epoch = run.config.seeds, run.steps_per_epoch
    losses = chunk.losses[i * seeds : (i + 1) * seeds].T  # (n_epochs, seeds)
    last_losses = chunk.last_losses[i * seeds : (i + 1) * seeds].T
    wall_s = run.wall_before + chunk.elapsed_s
    epochs = range(chunk.first + 1, chunk.epoch + 1)
    new = [
        epoch_record(e, e * steps_per_epoch, losses[j].squeeze(), last_losses[j].squeeze(), wall_s)
        for j, e in enumerate(epochs)
    ]
    finite = np.isfinite(losses).all(axis=1) & np.isfinite(last_losses).all(axis=1)
    return new, None if finite.all() else int(np.argmin(finite))


def _write(group: Group, i: int, new: list[dict], chunk: Chunk) -> None:
    """Append configuration i's lines to its metrics.jsonl; its checkpoint at the checkpoint period and the end
    (unless it holds that epoch's already: a sweep's configurations resumed from a later one retrain to it)."""
    run, epoch = group.runs[i], chunk.epoch
    run.metrics.append(new)
    run.records += new
    if (epoch % run.config.checkpoint_every == 0 or epoch == run.config.epochs) and not run.checkpointer.has(epoch):
        state = group.program.part(group.state, i)
        wall_s = run.wall_before + chunk.elapsed_s
        run.checkpointer.save(state, epoch=epoch, wall_s=wall_s, config=run.config, data_sha256=run.data_sha256)


# ---- progress: how a run and a sweep report --------------------------------------------------------


class RunProgress:
    """A run's progress: a tqdm bar over epochs with the loss, speed and first metric, the last-batch loss
    every --log-every epochs; a loss that becomes NaN or inf stops the run (TrainingDiverged)."""

    def __init__(self, run: Run):
        self.run, self.bar, self.floor = run, None, None

    def compiled(self, group: Group, n_chunk: int, compile_s: float) -> None:
        steps = n_chunk * group.steps_per_epoch
        print(f"compiled a chunk of {n_chunk} epochs ({steps:,} steps) in {compile_s:.2f} s")

    def __enter__(self) -> RunProgress:
        config = self.run.config
        if config.eval_every:  # the floor the bar's metric is shown against
            self.floor = calibration(config, config.n_eval)
        self.bar = tqdm(
            total=config.epochs, initial=self.run.start_epoch, unit="epoch", file=sys.stdout, dynamic_ncols=True
        )
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def diverged(self, run: Run, epoch: int) -> None:
        raise TrainingDiverged(_divergence_message(epoch, run))

    def chunk_done(self, group: Group, chunk: Chunk, trained: Trained) -> None:
        run = self.run
        for r in run.records[-chunk.n_epochs :]:
            if r["epoch"] % run.config.log_every == 0:
                self.bar.write(f"epoch {r['epoch']}: last-batch loss {np.mean(r['last_loss']):.4f}")
        self.bar.update(chunk.n_epochs)
        steps_per_s = (chunk.epoch - group.start_epoch) * group.steps_per_epoch / trained.compute_s
        self.bar.set_postfix(_postfix(run.records[-1], group.evaluations.get(0, {}), self.floor, steps_per_s))


class GroupProgress:
    """A sweep group's progress: a line every --log-every epochs (mean loss, model-steps/s, how many
    diverged); a configuration whose loss becomes NaN or inf stops with a warning, the others go on."""

    def __init__(self, label: str):
        self.label = label

    def compiled(self, group: Group, n_chunk: int, compile_s: float) -> None:
        width = group.program.width
        print(f"{self.label}: compiled a chunk of {n_chunk} epochs for {width} models in {compile_s:.1f} s")

    def __enter__(self) -> GroupProgress:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def diverged(self, run: Run, epoch: int) -> None:
        print(
            f"warning: {run.run_dir.name}: the loss became NaN or inf at epoch {epoch}; this "
            "configuration stops (its last good checkpoint is kept), the others go on",
            file=sys.stderr,
        )

    def chunk_done(self, group: Group, chunk: Chunk, trained: Trained) -> None:
        config = group.config
        if chunk.epoch % config.log_every and chunk.epoch != config.epochs:
            return
        done = (chunk.epoch - group.start_epoch) * group.steps_per_epoch * group.n_models
        print(
            f"{self.label}: epoch {chunk.epoch}/{config.epochs}, mean loss "
            f"{np.nanmean(chunk.losses[: group.n_models, -1]):.4f}, {done / trained.compute_s:,.0f} model-steps/s"
            + (f", {len(group.diverged_at)} diverged" if group.diverged_at else "")
        )


def _postfix(record: dict, evaluation: dict, floor: Optional[dict], steps_per_s: float) -> dict:
    postfix = {"loss": f"{np.mean(record['loss']):.4f}", "steps/s": f"{steps_per_s:,.0f}"}
    for k, v in (evaluation.get("raw") or {}).items():
        postfix[k] = format_against(k, v, floor, brief=True)
        break  # the first metric is enough for a progress bar
    return postfix


def _divergence_message(epoch: int, run: Run) -> str:
    kept = run.checkpointer.latest_epoch()
    where = (
        f"the last good checkpoint (epoch {kept}) is kept in {run.checkpointer.directory}"
        if kept is not None
        else "no checkpoint had been written yet"
    )
    return (
        f"the loss became NaN or inf at epoch {epoch}; training stopped and {where}, with metrics up to "
        f"epoch {epoch - 1} in {run.run_dir}/metrics.jsonl; continue from it with --resume and a lower --lr"
    )


# ---- the same program without a run folder (benchmarks, tests) ---------------------------------------


def train_models(config: Config, data: Optional[np.ndarray] = None) -> list[dict]:
    """Train `config.seeds` models at once (vmapped) in one chunk of `config.epochs` epochs; the
    final parameters of each seed (raw or EMA, as config.sample_with says)."""
    data = dataset_for(config) if data is None else data
    shift, scale = data_transform(config, data)
    data = jnp.asarray((data - shift) / scale)  # --normalize: model units
    if config.conditional:
        data = (data, jnp.asarray(labels_for(config)))
    optimizer = optimizer_for(config)
    state = init_states(config, optimizer)
    chunk = make_train_chunk(config, run_schedule(config), optimizer, config.epochs)
    state, _ = chunk(state, data)
    params = state.ema_params if config.sample_with == "ema" else state.params
    if config.seeds == 1:
        return [params]
    return [jax.tree_util.tree_map(lambda a, i=i: a[i], params) for i in range(config.seeds)]
