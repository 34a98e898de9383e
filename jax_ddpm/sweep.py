"""`python -m jax_ddpm.sweep [OPTIONS]`: train a grid of configurations, rank them by sample quality.

Every training option takes a list (`ddpm_harness.sweeps.SweepArgs`, see --help); the Cartesian
product is trained, each configuration with --seeds seeds, e.g.

    python -m jax_ddpm.sweep --lr 1e-3 3e-3 --ema-decay 0.9 0.999 --seeds 2 --epochs 100 --out-dir runs/sweep1

How a group runs: configurations that differ only in values (VALUE_OPTIONS: learning rate, clipping
threshold, EMA decay, the schedule's betas, the hybrid loss's lambda) share one compiled program,
vmapped over a model axis of configurations x seeds. The per-model values are inputs of that
program (`HyperParams`: the learning rate and clipping threshold as traced scalars, the EMA decay as
an `EmaRate`, the schedule as a `Schedule` pytree with a leading model axis), not state: each
model's `TrainState` is exactly the one `python -m jax_ddpm.train` keeps, so every configuration's
folder is a run folder (`python -m jax_ddpm.sample --run <sweep>/<configuration>` samples it) and
its parameters, samples and evaluations are bit for bit those of the single run (tests/test_sweep.py).
Groups run one after another; their models can be spread over --devices (each device trains a share).

Phases, as in `experiment`: `set_up_group` (run folders, restored checkpoints, models stacked),
`train_group` (compiled chunks; metrics, evaluations and checkpoints of every configuration between
chunks), `finish_group` (each configuration finished as a run: samples, summary). Then the merge
(`ddpm_harness.sweeps.merge`): leaderboard.md, leaderboard.json and grid.png from the folders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ddpm_harness.cli import run as run_cli
from ddpm_harness.config import Config, ConfigError, held_out_for
from ddpm_harness.data import DataError
from ddpm_harness.runs import (
    CONFIG_FILE,
    SUMMARY_FILE,
    RunDirError,
    epoch_record,
    release_run_dir,
    time_breakdown,
    write_summary,
)
from ddpm_harness.sweeps import (
    SINGLE,
    Configuration,
    SweepArgs,
    check_args,
    check_data,
    check_memory,
    configurations,
    default_sweep_dir,
    groups,
    is_finished,
    merge,
    open_sweep_dir,
    resolve_sweep_preset,
)
from jax_ddpm import speed
from jax_ddpm.objectives.predictions import loss_fn_for, run_schedule
from jax_ddpm.runner import distributed, experiment
from jax_ddpm.runner.checkpoint import CheckpointError, IncompatibleCheckpointError
from jax_ddpm.schedule import Schedule
from jax_ddpm.training import (
    EmaRate,
    init_states,
    make_loss_fn,
    make_mesh,
    make_optimizer,
    train_epoch,
    train_step,
)


@flax.struct.dataclass
class HyperParams:
    """One model's values of the options a group vmaps over (leading model axis when stacked)."""

    lr: jax.Array  # () float32
    clip_norm: jax.Array  # () float32 (unused when the group does not clip)
    ema: EmaRate
    hybrid_lambda: jax.Array  # () float32
    schedule: Schedule  # (T,) arrays


def hyper_params(config: Config) -> HyperParams:
    """A config's HyperParams, rounded to float32 as the single run's constants are."""
    return HyperParams(
        lr=np.float32(config.lr),
        clip_norm=np.float32(config.clip_norm),
        ema=EmaRate.of(config.ema_decay),
        hybrid_lambda=np.float32(config.hybrid_lambda),
        schedule=run_schedule(config),
    )


def stack(trees: Sequence) -> object:
    """Stack pytrees of the same structure along a new leading axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


# Most models a device trains at once (see `model_block`): a block's states stay in the CPU's caches
# through a chunk, which made many models faster (docs/sweep.md has the figures).
MODEL_BLOCK = 4


def model_block(n_models: int, devices: int = 1) -> Optional[int]:
    """Models each device trains at once, vmapped: None (all of its share together) for a share of up to
    MODEL_BLOCK models; else the block of MODEL_BLOCK or fewer that needs the fewest padding models."""
    share = -(-n_models // devices)
    if share <= MODEL_BLOCK:
        return None
    return min(range(MODEL_BLOCK, 1, -1), key=lambda b: (-share) % b)


def pad_models(state, hyper, n_models: int, devices: int = 1):
    """(state, hyper, block): the stacked models padded with copies of the last one (trained only to fill
    the devices' blocks, then dropped) to a multiple of devices x block; `block` for `make_sweep_chunk`."""
    block = model_block(n_models, devices)
    padding = (-n_models) % (devices * (block or 1))
    if padding:
        state, hyper = (
            jax.tree_util.tree_map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], padding, 0)]), tree)
            for tree in (state, hyper)
        )
    return state, hyper, block


def make_sweep_chunk(config: Config, n_epochs: int, mesh=None, block: Optional[int] = None):
    """Compile `n_epochs` epochs of a group into one program: (state, data, hyper) -> (state, metrics).

    `state` and `hyper` carry a leading model axis; `config` gives what the group's models share
    (data shapes, T, batch size, loss, whether they clip). Each model runs `train_epoch` with
    `train_step` as `make_train_chunk` does, its optimizer, EMA, schedule and loss weight built from
    its own `hyper`. With a `mesh` (axis 'data') each device trains a share of the models. With a
    `block`, each device trains its models `block` at a time (vmapped), all epochs of the chunk for
    one block before the next (`lax.map`): the model axis must then divide into blocks.
    """
    clipped = config.clip_norm > 0
    n_steps = config.num_steps

    def one_model(state, data, hyper: HyperParams):
        optimizer = make_optimizer(hyper.lr, hyper.clip_norm, clipped=clipped)
        # loss_fn_for(config) with the model's own lambda (the hybrid loss's weight; v and x0 train the noise loss)
        loss_fn = make_loss_fn(config.loss, hyper.hybrid_lambda) if config.prediction == "eps" else loss_fn_for(config)
        step = functools.partial(
            train_step, optimizer=optimizer, ema_mu=hyper.ema, schedule=hyper.schedule, n_steps=n_steps, loss_fn=loss_fn
        )
        epoch_fn = functools.partial(train_epoch, batch_size=config.batch_size, train_step_fn=step, n_steps=n_steps)
        return jax.lax.scan(lambda s, _: epoch_fn(s, data), state, None, length=n_epochs)

    models = jax.vmap(one_model, in_axes=(0, None, 0))

    def chunk(state, data, hyper):
        n = jax.tree_util.tree_leaves(state)[0].shape[0]
        if block is None or block >= n:
            return models(state, data, hyper)
        if n % block:
            raise ValueError(f"{n} models do not divide into blocks of {block}")
        blocks = functools.partial(jax.tree_util.tree_map, lambda x: x.reshape(n // block, block, *x.shape[1:]))
        out = jax.lax.map(lambda sh: models(sh[0], data, sh[1]), (blocks(state), blocks(hyper)))
        return jax.tree_util.tree_map(lambda x: x.reshape(n, *x.shape[2:]), out)

    if mesh is not None:
        chunk = jax.shard_map(chunk, mesh=mesh, in_specs=(P("data"), P(), P("data")), out_specs=P("data"))
    return jax.jit(chunk, compiler_options=speed.on_cpu(speed.TRAINING))


# ---- 1. set up a group ---------------------------------------------------------------------------


@dataclasses.dataclass
class Group:
    """A group's runs (one `experiment.Run` per unfinished configuration) and their stacked models."""

    configurations: list[Configuration]
    runs: list[experiment.Run]
    state: object  # TrainState with a leading model axis: configuration i's seeds at i*seeds .. (i+1)*seeds - 1
    hyper: HyperParams
    mesh: object
    start_epoch: int
    n_models: int  # configurations x seeds (the state may carry padding models past it)
    block: Optional[int] = None  # models each device trains at once (`model_block`)
    diverged_at: dict = dataclasses.field(default_factory=dict)  # run index -> epoch
    evaluations: dict = dataclasses.field(default_factory=dict)  # run index -> last evaluation

    @property
    def config(self) -> Config:
        return self.runs[0].config


def _as_models(state, seeds: int):
    """A run's state with the model axis a group stacks along (one seed has none)."""
    return jax.tree_util.tree_map(lambda x: x[None], state) if seeds == 1 else state


def model_slice(state, i: int, seeds: int):
    """Configuration i's state as its own run holds it: (seeds, ...) or, for one seed, unbatched."""
    if seeds == 1:
        return jax.tree_util.tree_map(lambda x: x[i], state)
    return jax.tree_util.tree_map(lambda x: x[i * seeds : (i + 1) * seeds], state)


def set_up_group(group: list[Configuration], args: SweepArgs, mesh) -> Optional[Group]:
    """Open (or, with --resume, restore) the run folder of every unfinished configuration of a
    group; None when all are finished. Configurations restored at different epochs (a sweep killed
    while it wrote one checkpoint after another) restart from the earliest of them: training is
    deterministic, so the others retrain to the same states."""
    todo = [c for c in group if not is_finished(c.config)]
    if not todo:
        return None
    runs = []
    try:
        for c in todo:
            resume = args.resume and (Path(c.config.out_dir) / CONFIG_FILE).is_file()
            with contextlib.redirect_stdout(io.StringIO()):
                runs.append(experiment.set_up(dataclasses.replace(c.config, resume=resume)))
        start = min(run.start_epoch for run in runs)
        for run in runs:
            if run.start_epoch > start:
                _restore_at(run, start)
    except BaseException:
        _release(runs)
        raise
    seeds = args.seeds
    states = [_as_models(run.state, seeds) for run in runs]
    hypers = [hyper_params(run.config) for run in runs for _ in range(seeds)]
    n_models = len(runs) * seeds
    state = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *states)
    state, hyper, block = pad_models(state, stack(hypers), n_models, args.devices)
    if mesh is not None:
        state, hyper = jax.device_put((state, hyper), NamedSharding(mesh, P("data")))
    if start:
        print(f"resuming {len(runs)} configuration(s) from epoch {start}")
    return Group(todo, runs, state, hyper, mesh, start, n_models, block)


def _restore_at(run: experiment.Run, epoch: int) -> None:
    fresh = init_states(run.config, run.optimizer)
    if epoch == 0:
        run.state, run.wall_before = fresh, 0.0
    else:
        run.state, record = run.checkpointer.restore(fresh, run.config, epoch=epoch)
        run.wall_before = record["wall_s"]
    run.start_epoch = epoch
    run.records = run.metrics.truncate_after(epoch)


def _release(runs: Sequence[experiment.Run]) -> None:
    for run in runs:
        run.checkpointer.close()
        release_run_dir(run.run_dir)


# ---- 2. train a group ----------------------------------------------------------------------------


def train_group(group: Group, label: str) -> experiment.Trained:
    """Run the group's compiled chunks to --epochs; log, evaluate and checkpoint every configuration
    between chunks. A configuration whose loss becomes NaN or inf is marked diverged (its last good
    checkpoint kept) while the others go on."""
    config, seeds, runs = group.config, group.config.seeds, group.runs
    steps_per_epoch = runs[0].steps_per_epoch
    n_models = jax.tree_util.tree_leaves(group.state)[0].shape[0]
    n_chunk = experiment.chunk_epochs(dataclasses.replace(config, seeds=n_models), steps_per_epoch, group.start_epoch)
    data = jnp.asarray(runs[0].data)
    compile_start, compiled = time.perf_counter(), None
    if group.start_epoch < config.epochs:
        compiled = (
            make_sweep_chunk(config, n_chunk, group.mesh, group.block).lower(group.state, data, group.hyper).compile()
        )
    compile_s = time.perf_counter() - compile_start
    if compiled is not None:
        print(f"{label}: compiled a chunk of {n_chunk} epochs for {n_models} models in {compile_s:.1f} s")
    reference = held_out_for(config, config.n_eval)
    compute_s, epoch, loop_start = 0.0, group.start_epoch, time.perf_counter()
    while epoch < config.epochs:
        chunk_start = time.perf_counter()
        group.state, metrics = compiled(group.state, data, group.hyper)
        losses, last_losses = np.asarray(metrics["loss"]), np.asarray(metrics["last_loss"])  # (models, n_chunk)
        compute_s += time.perf_counter() - chunk_start
        epoch += n_chunk
        evaluate = bool(config.eval_every and epoch % config.eval_every == 0)
        for i, run in enumerate(runs):
            if i in group.diverged_at:
                continue
            _log_chunk(
                group,
                i,
                run,
                losses[i * seeds : (i + 1) * seeds].T,
                last_losses[i * seeds : (i + 1) * seeds].T,
                epoch,
                n_chunk,
                loop_start,
                reference,
                evaluate,
            )
        if epoch % config.log_every == 0 or epoch == config.epochs:
            done = (epoch - group.start_epoch) * steps_per_epoch * group.n_models
            print(
                f"{label}: epoch {epoch}/{config.epochs}, mean loss {np.nanmean(losses[: group.n_models, -1]):.4f}, "
                f"{done / compute_s:,.0f} model-steps/s"
                + (f", {len(group.diverged_at)} diverged" if group.diverged_at else "")
            )
    for run in runs:
        run.checkpointer.close()
    train_s = time.perf_counter() - loop_start
    return experiment.Trained({}, train_s, compute_s, compile_s, (config.epochs - group.start_epoch) * steps_per_epoch)


def _log_chunk(
    group: Group,
    i: int,
    run: experiment.Run,
    losses: np.ndarray,
    last_losses: np.ndarray,
    epoch: int,
    n_chunk: int,
    loop_start: float,
    reference: np.ndarray,
    evaluate: bool,
) -> None:
    """Configuration i's metrics lines of a chunk (losses (n_chunk, seeds)), its evaluation and checkpoint."""
    config, steps_per_epoch = run.config, run.steps_per_epoch
    wall_s = run.wall_before + time.perf_counter() - loop_start
    first = epoch - n_chunk
    new = [
        epoch_record(
            first + j + 1, (first + j + 1) * steps_per_epoch, losses[j].squeeze(), last_losses[j].squeeze(), wall_s
        )
        for j in range(n_chunk)
    ]
    finite = np.isfinite(losses).all(axis=1) & np.isfinite(last_losses).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        run.metrics.append(new[:bad])
        group.diverged_at[i] = first + bad + 1
        print(
            f"warning: {run.run_dir.name}: the loss became NaN or inf at epoch {first + bad + 1}; this "
            "configuration stops (its last good checkpoint is kept), the others go on",
            file=sys.stderr,
        )
        return
    state = model_slice(group.state, i, config.seeds)
    if evaluate:
        start = time.perf_counter()
        group.evaluations[i] = experiment.evaluate_state(state, run.schedule, config, reference, epoch)
        new[-1].update(experiment.flat_evaluation(group.evaluations[i]), eval_n=config.n_eval)
        run.timings["evaluation"] = run.timings.get("evaluation", 0.0) + time.perf_counter() - start
    run.metrics.append(new)
    run.records += new
    if (epoch % config.checkpoint_every == 0 or epoch == config.epochs) and not run.checkpointer.has(epoch):
        run.checkpointer.save(state, epoch=epoch, wall_s=wall_s, config=config, data_sha256=run.data_sha256)


# ---- 3. finish every configuration of a group ----------------------------------------------------


def finish_group(group: Group, trained: experiment.Trained) -> None:
    """Finish each configuration as `python -m jax_ddpm.train` finishes a run (samples, pictures,
    summary.json, config.json); a diverged one gets a summary.json saying where it diverged. Prints
    the group's time breakdown; each summary's timings hold the group's compile and training times."""
    seeds = group.config.seeds
    shared = dict(compile=trained.compile_s, training_loop=trained.train_s, training_chunks=trained.compute_s)
    for i, run in enumerate(group.runs):
        if i in group.diverged_at:
            kept = run.checkpointer.latest_epoch()
            write_summary(
                run.run_dir,
                dict(
                    framework="jax",
                    dataset=run.config.dataset,
                    seeds=seeds,
                    diverged_at=group.diverged_at[i],
                    epochs=run.records[-1]["epoch"] if run.records else 0,
                    checkpoint_epoch=kept,
                    run_dir=str(run.run_dir),
                    evaluation={p: {m: None for m in ("sliced_w2", "mmd2", "energy")} for p in ("raw", "ema")},
                ),
            )
            continue
        run.state = model_slice(group.state, i, seeds)
        run.timings.update(shared)
        with contextlib.redirect_stdout(io.StringIO()):
            pictures = None if run.config.no_plots else experiment.Pictures(run)
            try:
                experiment.finish(run, dataclasses.replace(trained, evaluation=group.evaluations.get(i, {})), pictures)
            finally:
                if pictures is not None:
                    pictures.join()
    phases = ("set_up", "evaluation", "sampling", "final_evaluation", "pictures")
    totals = {k: sum(run.timings.get(k, 0.0) for run in group.runs) for k in phases}
    print(f"{len(group.runs)} configuration(s): " + time_breakdown({**totals, **shared}))


# ---- the whole sweep -----------------------------------------------------------------------------


def run_sweep(args: SweepArgs, process_id: int = 0, num_processes: int = 1, command: str = "") -> Optional[list[dict]]:
    """Train this process's share of the grid, group after group; then, in process 0 of 1, merge
    the leaderboard. The ranked rows, or None when this process does not merge."""
    sweep_dir = Path(args.out_dir) if args.out_dir else default_sweep_dir()
    if args.out_dir is None:
        args = dataclasses.replace(args, out_dir=str(sweep_dir))
    configs = configurations(args, sweep_dir)
    check_memory(configs)
    check_data(configs)
    mesh = make_mesh(args.devices)  # too few devices: refused before any folder is made
    open_sweep_dir(args, sweep_dir, configs, joining=num_processes > 1)
    mine = distributed.process_share(configs, process_id, num_processes)
    grid = groups(mine)
    finished = sum(is_finished(c.config) for c in mine)
    print(
        f"sweep {sweep_dir}: {len(configs)} configurations x {args.seeds} seeds in {len(groups(configs))} "
        f"group(s)"
        + (f"; this process trains {len(mine)}" if num_processes > 1 else "")
        + (f"; {finished} already finished" if finished else "")
    )
    for n, group in enumerate(grid):
        label = f"group {n + 1}/{len(grid)} ({len(group)} configurations x {args.seeds} seeds)"
        set_up = set_up_group(group, args, mesh)
        if set_up is None:
            print(f"{label}: finished earlier")
            continue
        try:
            trained = train_group(set_up, label)
            finish_group(set_up, trained)
        except OSError as err:
            raise experiment.RunWriteError(
                f"writing the sweep {sweep_dir} failed ({err.strerror or err}); "
                "finished configurations and the last checkpoints are kept; free "
                "space or make the folder writable, then continue with --resume"
            ) from None
        finally:
            _release(set_up.runs)
    if num_processes != 1:
        return None  # the processes' rows are merged by `merge_sweep` once all have finished
    return merge_sweep(args, command)


def merge_sweep(args: SweepArgs, command: str = "") -> list[dict]:
    """The merge step: the leaderboard of the sweep in --out-dir from every configuration's folder
    (whichever process trained it); the ranked rows."""
    sweep_dir = Path(args.out_dir)
    configs = configurations(args, sweep_dir)
    rows = merge(args, sweep_dir, configs, command)
    best = rows[0]
    print(
        f"best of {len(rows)}: {best['name']} ({args.rank_by} {best['score']:.4g}); leaderboard in "
        f"{sweep_dir}/leaderboard.md, samples in {sweep_dir}/grid.png"
    )
    return rows


# ---- the command line ----------------------------------------------------------------------------

PROG = "python -m jax_ddpm.sweep"
USAGE_ERRORS = (ConfigError, DataError, RunDirError, IncompatibleCheckpointError)
RUNTIME_ERRORS = (CheckpointError, experiment.RunWriteError, distributed.DistributedError, OSError)


def launch_of(args: SweepArgs, environ=os.environ) -> tuple[int, int]:
    """(process_id, num_processes) of this sweep process: --process-id and --num-processes, or the
    variables of srun / mpirun when it started several tasks, or (0, 1)."""
    if args.num_processes is not None:
        process_id, num_processes = args.process_id, args.num_processes
    elif distributed.detect_cluster(environ) is not None:
        launch = distributed.plan_launch(environ=environ)
        process_id, num_processes = launch.process_id, launch.num_processes
    else:
        return 0, 1
    if num_processes > 1 and args.out_dir is None:
        raise ConfigError("a sweep over several processes needs --out-dir: the one folder they all write into")
    return process_id, num_processes


def sweep_command(args: SweepArgs, command: str = "") -> Optional[list[dict]]:
    """What the command line runs: this process's share of the grid; with several processes, process 0
    then waits (--merge-timeout) for every configuration's summary.json and merges the leaderboard."""
    check_args(args)
    process_id, num_processes = launch_of(args)
    rows = run_sweep(args, process_id, num_processes, command)
    if num_processes == 1 or process_id != 0:
        return rows
    configs = configurations(args, Path(args.out_dir))
    print(f"process 0 of {num_processes}: waiting for the other processes' configurations")
    distributed.wait_for_files([Path(c.config.out_dir) / SUMMARY_FILE for c in configs], args.merge_timeout)
    return merge_sweep(args, command)


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
