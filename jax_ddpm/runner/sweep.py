"""Sweeps: a grid of configurations trained group after group, each configuration's folder a run folder.

How a group runs: configurations that differ only in values (VALUE_OPTIONS: learning rate, clipping
threshold, EMA decay, the schedule's betas, the hybrid loss's lambda) share one compiled program,
vmapped over a model axis of configurations x seeds. The per-model values are inputs of that
program (`HyperParams`: the learning rate and clipping threshold as traced scalars, the EMA decay as
an `EmaRate`, the schedule as a `Schedule` pytree with a leading model axis), not state: each
model's `TrainState` is exactly the one `python -m jax_ddpm.train` keeps, so every configuration's
folder is a run folder (`python -m jax_ddpm.sample --run <sweep>/<configuration>` samples it) and
its parameters, samples and evaluations are bit for bit those of the single run (tests/test_sweep.py).
Groups run one after another; their models can be spread over --devices (each device trains a share).

Phases, as a run's: `set_up_group` (run folders, restored checkpoints, models stacked), `loop.train`
(the run's chunk loop, with the group's `Program` and a `GroupProgress`), `finish_group` (each
configuration finished as a run: samples, summary). Then the merge (`merge_sweep`): leaderboard.md,
leaderboard.json and grid.png from the folders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
from pathlib import Path
from typing import Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ddpm_harness.config import Config, ConfigError
from ddpm_harness.runs import CONFIG_FILE, SUMMARY_FILE, time_breakdown, write_summary
from ddpm_harness.sweeps import (
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
)
from jax_ddpm import speed
from jax_ddpm.objectives.conditional import class_train_step
from jax_ddpm.objectives.objective import loss_fn_for, noise_fn_for
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.objectives.step import EmaRate, pure_train_step
from jax_ddpm.runner import distributed
from jax_ddpm.runner.chunk import make_mesh, run_optimizer, train_epoch
from jax_ddpm.runner.finish import finish_runs
from jax_ddpm.runner.loop import Group, GroupProgress, Program, Trained, train
from jax_ddpm.runner.setup import RunWriteError, release, restore_at, set_up
from jax_ddpm.schedule import Schedule


@flax.struct.dataclass
class HyperParams:
    """One model's values of the options a group vmaps over (leading model axis when stacked)."""

    lr: jax.Array  # () float32
    clip_norm: jax.Array  # () float32 (unused when the group does not clip)
    ema: EmaRate
    hybrid_lambda: jax.Array  # () float32
    cond_drop: jax.Array  # () float32 (a --conditional sweep's; unused otherwise)
    schedule: Schedule  # (T,) arrays


def hyper_params(config: Config) -> HyperParams:
    """A config's HyperParams, rounded to float32 as the single run's constants are."""
    return HyperParams(
        lr=np.float32(config.lr),
        clip_norm=np.float32(config.clip_norm),
        ema=EmaRate.of(config.ema_decay),
        hybrid_lambda=np.float32(config.hybrid_lambda),
        cond_drop=np.float32(config.cond_drop),
        schedule=run_schedule(config),
    )


def stack(trees: Sequence) -> object:
    """Stack pytrees of the same structure along a new leading axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


# Most models a device trains at once, per backend (None: all of its share vmapped at once). On a 2-core
# CPU, blocks of 4 (`lax.map` over vmapped blocks) keep a block's states in the caches through a chunk and
# were faster (benchmarks/results/cpu-avx512.md, docs/sweep.md). On a GPU blocks serialise many small
# programs: an H200 trained 64 models in blocks at 0.12x the rate of the plain vmap (issue 17), so a GPU
# vmaps all of a device's models at once; to be re-measured by `benchmarks.gpu_newcomer`. TPU (not
# measured) is treated as a GPU.
MODEL_BLOCKS = {"cpu": 4, "gpu": None, "tpu": None}


def model_block(n_models: int, devices: int = 1, platform: Optional[str] = None) -> Optional[int]:
    """Models each device of `platform` (default: JAX's backend) trains at once, vmapped: None (all of its
    share together) on a backend without blocks or for a share of up to its block; else the block of
    MODEL_BLOCKS[platform] or fewer models that needs the fewest padding models."""
    most = MODEL_BLOCKS.get(platform or jax.default_backend())
    share = -(-n_models // devices)
    if most is None or share <= most:
        return None
    return min(range(most, 1, -1), key=lambda b: (-share) % b)


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
    `pure_train_step` as `make_train_chunk` does, its optimizer, EMA, schedule and loss weight built from
    its own `hyper`. With a `mesh` (axis 'data') each device trains a share of the models. With a
    `block`, each device trains its models `block` at a time (vmapped), all epochs of the chunk for
    one block before the next (`lax.map`): the model axis must then divide into blocks.
    """
    clipped = config.clip_norm > 0
    n_steps = config.num_steps

    def one_model(state, data, hyper: HyperParams):
        optimizer = run_optimizer(hyper.lr, hyper.clip_norm, clipped=clipped)
        # the model's own weight of the hybrid loss and label dropout
        loss_fn = loss_fn_for(config, hybrid_lambda=hyper.hybrid_lambda, cond_drop=hyper.cond_drop)
        step = functools.partial(
            pure_train_step,
            optimizer=optimizer,
            ema=hyper.ema,
            schedule=hyper.schedule,
            n_steps=n_steps,
            loss_fn=loss_fn,
        )
        if config.conditional:  # data: (points (N, 2), labels (N,)), as make_train_chunk's
            step = functools.partial(
                class_train_step, optimizer=optimizer, ema=hyper.ema, schedule=hyper.schedule, loss_fn=loss_fn
            )
        epoch_fn = functools.partial(
            train_epoch,
            batch_size=config.batch_size,
            train_step_fn=step,
            n_steps=n_steps,
            noise_fn=noise_fn_for(config),
        )
        points, labels = data if config.conditional else (data, None)
        return jax.lax.scan(lambda s, _: epoch_fn(s, points, labels=labels), state, None, length=n_epochs)

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
    return jax.jit(chunk, compiler_options=speed.program_options("training"))


def sweep_program(config: Config, hyper: HyperParams, mesh, block: Optional[int]) -> Program:
    """A group's program: `make_sweep_chunk` with every model's `hyper` as inputs; configuration i's
    state is its seeds' slice of the model axis (`model_slice`)."""

    def compile_chunk(n_epochs: int, state, data):
        compiled = make_sweep_chunk(config, n_epochs, mesh, block).lower(state, data, hyper).compile()
        return lambda s, d: compiled(s, d, hyper)

    width = jax.tree_util.tree_leaves(hyper)[0].shape[0]
    return Program(compile_chunk, width, functools.partial(model_slice, seeds=config.seeds))


# ---- set up a group ------------------------------------------------------------------------------


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
    group and stack their models; None when all are finished. Configurations restored at different
    epochs (a sweep killed while it wrote one checkpoint after another) restart from the earliest of
    them: training is deterministic, so the others retrain to the same states."""
    todo = [c for c in group if not is_finished(c.config)]
    if not todo:
        return None
    runs = []
    try:
        for c in todo:
            resume = args.resume and (Path(c.config.out_dir) / CONFIG_FILE).is_file()
            with contextlib.redirect_stdout(io.StringIO()):
                runs.append(set_up(dataclasses.replace(c.config, resume=resume)))
        start = min(run.start_epoch for run in runs)
        for run in runs:
            if run.start_epoch > start:
                restore_at(run, start)
    except BaseException:
        for run in runs:
            release(run)
        raise
    state = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *(_as_models(r.state, args.seeds) for r in runs))
    n_models = len(runs) * args.seeds
    hyper = stack([hyper_params(run.config) for run in runs for _ in range(args.seeds)])
    state, hyper, block = pad_models(state, hyper, n_models, args.devices)
    if mesh is not None:
        state, hyper = jax.device_put((state, hyper), NamedSharding(mesh, P("data")))
    if start:
        print(f"resuming {len(runs)} configuration(s) from epoch {start}")
    return Group(runs, state, sweep_program(runs[0].config, hyper, mesh, block), start, n_models)


# ---- finish every configuration of a group -------------------------------------------------------


def finish_group(group: Group, trained: Trained) -> dict:
    """Finish the group's configurations as a batch (`finish.finish_runs`: every model's samples, raw and
    EMA, drawn together and scored in one program; then each configuration's folder as `python -m
    jax_ddpm.train` writes it: samples, pictures, summary.json, config.json); a diverged one gets a
    summary.json saying where it diverged. Prints and returns the group's time breakdown; each summary's
    timings hold the group's compile and training times and its share of the finish."""
    live = [run for i, run in enumerate(group.runs) if i not in group.diverged_at]
    for i, epoch in group.diverged_at.items():
        write_summary(group.runs[i].run_dir, _diverged_summary(group.runs[i], epoch))
    for run in live:
        run.timings.update(trained.timings())
    if live:
        with contextlib.redirect_stdout(io.StringIO()):
            finish_runs(live, trained)
    phases = ("set_up", "sampling", "final_evaluation", "pictures", "writing")
    totals = {k: sum(run.timings[k] for run in group.runs if k in run.timings) for k in phases}
    timings = {**{k: v for k, v in totals.items() if v or k != "pictures"}, **trained.timings()}
    print(f"{len(group.runs)} configuration(s): " + time_breakdown(timings))
    return timings


def _diverged_summary(run, epoch: int) -> dict:
    return dict(
        framework="jax",
        dataset=run.config.dataset,
        seeds=run.config.seeds,
        diverged_at=epoch,
        epochs=run.records[-1]["epoch"] if run.records else 0,
        checkpoint_epoch=run.checkpointer.latest_epoch(),
        run_dir=str(run.run_dir),
        evaluation={p: {m: None for m in ("sliced_w2", "mmd2", "energy")} for p in ("raw", "ema")},
    )


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
    ot = any(c.config.coupling == "ot" for c in configs)
    mesh = make_mesh(args.devices, ot_models_split=ot)  # refused before any folder is made
    open_sweep_dir(args, sweep_dir, configs, joining=num_processes > 1)
    mine = distributed.process_share(configs, process_id, num_processes)
    finished = sum(is_finished(c.config) for c in mine)
    print(
        f"sweep {sweep_dir}: {len(configs)} configurations x {args.seeds} seeds in {len(groups(configs))} "
        f"group(s)"
        + (f"; this process trains {len(mine)}" if num_processes > 1 else "")
        + (f"; {finished} already finished" if finished else "")
    )
    grid, timings = groups(mine), {}
    for n, group in enumerate(grid):
        label = f"group {n + 1}/{len(grid)} ({len(group)} configurations x {args.seeds} seeds)"
        for key, value in _train_group(group, label, args, mesh).items():
            timings[key] = timings.get(key, 0.0) + value
    if num_processes != 1:
        return None  # the processes' rows are merged by `merge_sweep` once all have finished
    rows = merge_sweep(args, command, timings)
    print(f"sweep: {time_breakdown(timings)}")
    return rows


def _train_group(configs: list[Configuration], label: str, args: SweepArgs, mesh) -> dict:
    """Set up, train (the run's chunk loop) and finish one group; its folders released whatever happens.
    Its time breakdown (`finish_group`; empty when it had finished earlier)."""
    group = set_up_group(configs, args, mesh)
    if group is None:
        print(f"{label}: finished earlier")
        return {}
    try:
        return finish_group(group, train(group, GroupProgress(label)))
    except OSError as err:
        raise RunWriteError(
            f"writing the sweep {args.out_dir} failed ({err.strerror or err}); "
            "finished configurations and the last checkpoints are kept; free "
            "space or make the folder writable, then continue with --resume"
        ) from None
    finally:
        for run in group.runs:
            release(run)


def merge_sweep(args: SweepArgs, command: str = "", timings: Optional[dict] = None) -> list[dict]:
    """The merge step: the leaderboard of the sweep in --out-dir from every configuration's folder
    (whichever process trained it), with the sweep's time breakdown `timings` when given; the ranked rows."""
    sweep_dir = Path(args.out_dir)
    configs = configurations(args, sweep_dir)
    rows = merge(args, sweep_dir, configs, command, timings)
    best = rows[0]
    print(
        f"best of {len(rows)}: {best['name']} ({args.rank_by} {best['score']:.4g}); leaderboard in "
        f"{sweep_dir}/leaderboard.md, samples in {sweep_dir}/grid.png"
    )
    return rows


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
