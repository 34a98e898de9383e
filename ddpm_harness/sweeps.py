"""Sweeps, the framework-free half: the grid of configurations, its groups, its split across
processes, and the leaderboard built from the configurations' run folders.

`python -m jax_ddpm.sweep` takes every training option of `Config` as a list (`SweepArgs`) and
trains the Cartesian product (`configurations`), each configuration with `--seeds` seeds, in a
folder of its own that is an ordinary run folder (`sweep_dir/<name>/config.json`, `metrics.jsonl`,
`checkpoints/`, `samples.npy`, `summary.json`). Options that only change array values (VALUE_OPTIONS)
are trained together, vmapped in one compiled program per group; the others change the program's
shapes or code and split the grid into groups (`group_key`) that run one after another.

The leaderboard is a merge step: it reads every configuration's summary.json from disk
(`leaderboard_rows`), so processes that each trained a part of the grid (`configurations_for_process`)
leave one leaderboard to whichever process merges. Nothing here imports jax.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import inspect
import itertools
import json
import math
import os
import re
import textwrap
import time
import typing
from pathlib import Path
from typing import Annotated, Literal, Optional, Sequence

import numpy as np
import tyro

from ddpm_harness.config import (
    FLOW_SAMPLERS,
    SAMPLING_FIELDS,
    Config,
    ConfigError,
    preset_values,
    validate,
)
from ddpm_harness.data import get_dataset, is_builtin
from ddpm_harness.memory import (
    DATA_BYTES_PER_POINT,
    SAMPLE_BYTES_PER_POINT,
    available_memory_bytes,
    check_fits_in_memory,
)
from ddpm_harness.runs import SAMPLES_FILE, SUMMARY_FILE, write_atomic, write_json

SWEEP_FILE = "sweep.json"
LEADERBOARD_MD = "leaderboard.md"
LEADERBOARD_JSON = "leaderboard.json"
GRID_PNG = "grid.png"

# Config fields a sweep does not take: a process of many (issue 10's many hosts) and the run's own folder flags.
NOT_SWEPT = (
    "coordinator_address",
    "num_processes",
    "process_id",
    "distributed_timeout",
    "no_plots",
)
# Config fields a sweep takes once, as they are, for every configuration (the others, but for SweepOnly's, it
# takes as lists and sweeps).
SINGLE_CONFIG = (
    "checkpoint_every",
    "log_every",
    "eval_every",
    "n_eval",
    "preset",
    "compile_cache",
    "conditional",  # one model kind for the whole sweep; its --cond-drop is a list
    "normalize",  # every group trains on its data in the same units (a --preset recommended sets it)
)


# A sweep's --n-samples: 2,000 points per model rank configurations whose sliced W2 differ by more than its
# floor at that n (0.012 on moons, against 0.0058 at a run's 10,000), in a fifth of the sampling time and a
# 25th of the MMD's: a 64-model sweep took 34 s on 2 cores, 126 s at 10,000 (docs/sweep.md, "What a sweep's
# finish costs").
SWEEP_SAMPLES = 2_000


@dataclasses.dataclass(frozen=True)
class SweepOnly:
    """The sweep's own options, and those of Config that mean something else in a sweep."""

    seeds: int = 1
    """Models trained per configuration (seeds seed .. seed + seeds - 1); the leaderboard gives mean +- std
    over them."""
    devices: int = 1
    """Spread each group's models over this many devices (each trains a share of the models, no
    communication). On CPU, create host devices first: XLA_FLAGS=--xla_force_host_platform_device_count=N."""
    out_dir: Optional[str] = None
    """Sweep folder (one sub-folder per configuration); by default runs/sweep-<timestamp>."""
    resume: bool = False
    """Continue the sweep in --out-dir: finished configurations are kept, the others continue from their
    checkpoints."""
    rank_by: Literal[
        "sliced_w2",
        "mmd2",
        "energy",
        "raw_sliced_w2",
        "raw_mmd2",
        "raw_energy",
        "ema_sliced_w2",
        "ema_mmd2",
        "ema_energy",
    ] = "sliced_w2"
    """Metric the leaderboard is ranked by (lower is better): its mean over seeds for the better of the raw and
    EMA parameters, or for raw_ / ema_ ones."""
    plots: bool = False
    """Also draw every configuration's run pictures and GIF (slow; grid.png is always drawn)."""
    n_samples: int = SWEEP_SAMPLES
    """Points sampled per model (with the raw and with the EMA parameters) at the end of training, to score
    and rank it; each configuration's folder keeps them, as a run's does. Fewer than a run's 10,000: sampling
    every model of a sweep is most of its time (docs/sweep.md); give 10000 for the run's precision."""
    num_processes: Optional[int] = None
    """Processes that split the grid (each trains every num_processes-th configuration into the shared
    --out-dir; process 0 then merges the leaderboard). Under srun / mpirun their variables are read when
    this and --process-id are not given. The processes never talk to each other: no coordinator."""
    process_id: Optional[int] = None
    """This process's index, 0 .. num_processes - 1."""
    merge_timeout: float = 86_400.0
    """Seconds process 0 waits, after its own share, for the other processes' configurations before it
    gives up with one line (their rows can be merged later with --resume)."""


SWEEP_DOC = """Train the Cartesian product of the training options given as lists, each configuration with
--seeds seeds, and rank the configurations by the quality of their samples.

Options that only change values (--lr, --clip-norm, --ema-decay, --schedule, --beta-start,
--beta-end, --zero-terminal-snr, --hybrid-lambda, --cond-drop, and the sampling options) are trained together in
one compiled program (vmapped); the others (--dataset, --n-points, --data-noise, --seed,
--num-steps, --epochs, --batch-size, --loss, --prediction, and --clip-norm 0 against > 0) form
groups trained one after another. Each configuration's folder is a run folder.
"""


def field_help(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass, by name, its lines joined as tyro joins them: the help
    tyro shows for it. A generated class has no source for tyro to read them from, so it is given them."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {
        node.target.id: re.sub(r"(?<!\n)\n(?!\n)", " ", inspect.cleandoc(after.value.value))
        for node, after in zip(body, body[1:])
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
    }


def sweep_args_class() -> type:
    """SweepArgs, generated from Config so that a new option is written once: every field of Config not in
    NOT_SWEPT, as a tuple of values (default: Config's default alone) or, for SINGLE_CONFIG, as in Config;
    then SweepOnly's fields; each with its docstring as help."""
    own = {f.name for f in dataclasses.fields(SweepOnly)}
    fields = []
    for cls in (Config, SweepOnly):
        hints, help_of = typing.get_type_hints(cls), field_help(cls)
        for field in dataclasses.fields(cls):
            if cls is Config and (field.name in NOT_SWEPT or field.name in own):
                continue
            swept = cls is Config and field.name not in SINGLE_CONFIG
            kind = tuple[hints[field.name], ...] if swept else hints[field.name]
            default = (field.default,) if swept else field.default
            fields.append((field.name, Annotated[kind, tyro.conf.arg(help=help_of[field.name])], default))
    return dataclasses.make_dataclass(
        "SweepArgs", fields, frozen=True, namespace={"__doc__": SWEEP_DOC, "__module__": __name__}
    )


SweepArgs = sweep_args_class()
# The options a sweep takes once, and those it takes as lists, in the order of the grid (the product varies the
# last fastest).
SINGLE = (*(f.name for f in dataclasses.fields(SweepOnly)), *SINGLE_CONFIG)
SWEPT = tuple(f.name for f in dataclasses.fields(SweepArgs) if f.name not in SINGLE)
# Options that change only values inside one compiled program (vmapped, one value per model), or
# only how each configuration samples once trained.
VALUE_OPTIONS = (
    "schedule",
    "beta_start",
    "beta_end",
    "zero_terminal_snr",
    "lr",
    "clip_norm",
    "ema_decay",
    "hybrid_lambda",
    "cond_drop",
    "sample_with",
    *SAMPLING_FIELDS,
)
METRICS = ("sliced_w2", "mmd2", "energy")


def resolve_sweep_preset(args: SweepArgs, argv: Optional[Sequence[str]] = None) -> SweepArgs:
    """`args` with its --preset's values (ddpm_harness.config.PRESETS) for the options the command
    line did not name and that still hold the tutorial's default, as `config.resolve_preset` does."""
    preset, given = preset_values(args.preset, args.method, argv)
    single = set(SINGLE_CONFIG)
    as_arg = lambda name, value: value if name in single else (value,)  # noqa: E731  (once, or a list of one)
    values = {
        name: as_arg(name, value)
        for name, value in preset.items()
        if name not in given and getattr(args, name) == as_arg(name, getattr(Config, name))
    }
    return dataclasses.replace(args, **values)


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One point of the grid: its index, its folder name, the options it sets and its run's Config."""

    index: int
    name: str
    options: dict  # the swept options (those given several values) and their values
    config: Config


def default_sweep_dir() -> Path:
    return Path("runs") / f"sweep-{datetime.datetime.now():%Y%m%d-%H%M%S}"


def _value_text(name: str, value) -> str:
    if name == "dataset":
        return Path(str(value)).stem
    return f"{value:g}" if isinstance(value, float) else str(value)


def folder_name(index: int, options: dict) -> str:
    """c<index>-<option><value>-..., e.g. c03-lr0.003-ema_decay0.999 (the index keeps names unique)."""
    parts = [f"c{index:02d}"] + [f"{name}{_value_text(name, value)}" for name, value in options.items()]
    return "-".join(parts).replace("/", "_").replace(" ", "_")


def check_args(args: SweepArgs) -> None:
    """Raise ConfigError for an empty list or an impossible sweep-level option."""
    for name in SWEPT:
        values = getattr(args, name)
        if len(values) == 0:
            raise ConfigError(f"--{name.replace('_', '-')} was given no value; give one or more")
        if len(set(values)) < len(values):
            raise ConfigError(
                f"--{name.replace('_', '-')} repeats a value ({', '.join(map(str, values))}); give each value once"
            )
    if args.seeds < 1 or args.devices < 1:
        raise ConfigError(f"--seeds and --devices must be positive integers, got {args.seeds} and {args.devices}")
    if (args.num_processes is None) != (args.process_id is None):
        raise ConfigError("--num-processes and --process-id go together: give both (or neither, under srun / mpirun)")
    if args.num_processes is not None:
        if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
            raise ConfigError(
                f"--process-id must lie in 0 .. --num-processes - 1, got {args.process_id} of {args.num_processes}"
            )
    if not args.merge_timeout > 0:
        raise ConfigError(f"--merge-timeout must be a positive number of seconds, got {args.merge_timeout}")


def applies_to_its_method(chosen: dict) -> bool:
    """Whether a combination's sampler and flow options belong to its --method: the diffusion samplers or the
    flow ones (ode serves both), and a coupling or path width other than the default only for flow."""
    if chosen["method"] == "flow":
        return chosen["sampler"] in FLOW_SAMPLERS
    flow_only = chosen["sampler"] in set(FLOW_SAMPLERS) - {"ode"}
    return not (flow_only or chosen["coupling"] != "independent" or chosen["flow_sigma"] != 0)


def configurations(args: SweepArgs, sweep_dir: Path) -> list[Configuration]:
    """The Cartesian product of the swept options, each as the Config of its run folder; every one validated.
    A sweep over both methods (--method diffusion flow) keeps only the combinations whose sampler and flow
    options belong to their method (`applies_to_its_method`), so each method samples with its own."""
    check_args(args)
    swept = [name for name in SWEPT if len(getattr(args, name)) > 1]
    combinations = [dict(zip(SWEPT, values)) for values in itertools.product(*(getattr(args, n) for n in SWEPT))]
    if len(args.method) > 1:
        combinations = [chosen for chosen in combinations if applies_to_its_method(chosen)]
        for method in set(args.method) - {chosen["method"] for chosen in combinations}:
            serving = "euler, midpoint or ode" if method == "flow" else "tutorial, ddpm, ddim, dpm-solver++ or ode"
            raise ConfigError(f"--method {method} has no sampler of its own in --sampler: add one of {serving}")
    out = []
    for index, chosen in enumerate(combinations):
        options = {name: chosen[name] for name in swept}
        name = folder_name(index, options)
        config = Config(
            **chosen,
            seeds=args.seeds,
            devices=1,
            out_dir=str(Path(sweep_dir) / name),
            resume=False,
            no_plots=not args.plots,
            n_samples=args.n_samples,
            **{name: getattr(args, name) for name in SINGLE_CONFIG},  # the options a sweep takes once
        )
        try:
            validate(config)
        except ConfigError as err:
            raise ConfigError(f"configuration {name}: {err}") from None
        out.append(Configuration(index, name, options, config))
    return out


def group_key(config: Config) -> tuple:
    """What must be equal for configurations to share one compiled program: the data, the shapes
    (T, batch size, epochs), the loss and prediction target, whether there is a clipping step at all, and
    what the model learns (--conditional, --method, and a flow model's --coupling and --flow-sigma,
    constants of its loss)."""
    return (
        config.conditional,
        config.method,
        config.coupling,
        config.flow_sigma,
        config.dataset,
        config.n_points,
        config.data_noise,
        config.seed,
        config.num_steps,
        config.epochs,
        config.batch_size,
        config.loss,
        config.prediction,
        config.clip_norm > 0,
    )


def groups(configs: Sequence[Configuration]) -> list[list[Configuration]]:
    """The configurations split by `group_key`, groups in order of first appearance."""
    by_key: dict[tuple, list[Configuration]] = {}
    for c in configs:
        by_key.setdefault(group_key(c.config), []).append(c)
    return list(by_key.values())


def is_finished(config: Config) -> bool:
    """A configuration is finished once its summary.json is written (its samples are then on disk)."""
    return (Path(config.out_dir) / SUMMARY_FILE).is_file()


# ---- memory -------------------------------------------------------------------------------------

# Float32 values held per model while a group trains: parameters, EMA, Adam's two moments, each in
# and out of the compiled program; per data point per model: an epoch's shuffled batches, their t
# and noise; per batch row per model: the activations kept for the backward pass (3 hidden layers
# of 128, a dozen arrays each).
STATE_COPIES = 8
EPOCH_VALUES_PER_POINT = 8
ACTIVATION_VALUES_PER_ROW = 3 * 128 * 12


def n_params(config: Config) -> int:
    """Parameters of the tutorial's ConditionalModel for this config (T and the outputs)."""
    hidden = 128
    conditional = sum(n_in * hidden + hidden + config.num_steps * hidden for n_in in (2, hidden, hidden))
    return conditional + hidden * config.n_outputs + config.n_outputs


def group_bytes(configs: Sequence[Config]) -> int:
    """Estimated memory of one group's training program: every model's state and per-epoch arrays, the data."""
    first = configs[0]
    models = len(configs) * first.seeds
    per_model = 4 * (
        STATE_COPIES * n_params(first)
        + EPOCH_VALUES_PER_POINT * first.n_points
        + ACTIVATION_VALUES_PER_ROW * first.batch_size
    )
    return models * per_model + DATA_BYTES_PER_POINT * first.n_points


def check_data(configs: Sequence[Configuration]) -> None:
    """Raise DataError, before anything is trained, for a --dataset value no configuration can read
    (a missing or malformed file, an unknown name): in a long sweep the last group's typo is found
    first, not after the groups before it have trained."""
    for name in sorted({c.config.dataset for c in configs}):
        if not is_builtin(name):
            get_dataset(name)  # a file is read and checked; an unknown name raises its one-line error


def check_memory(configs: Sequence[Configuration], available: Optional[int] = None) -> None:
    """Refuse, before anything is compiled or written, a grid whose largest group (or whose data or
    samples, or one configuration's as `memory.check_fits_in_memory` counts them) would not fit in
    memory; the message gives the estimate and the limit."""
    available = available_memory_bytes() if available is None else available
    if available is None:
        return
    for group in groups(configs):
        first = group[0].config
        needed = group_bytes([c.config for c in group])
        if needed > available:
            raise ConfigError(
                f"the group of {len(group)} configuration(s) x {first.seeds} seeds ({len(group) * first.seeds:,} "
                f"models vmapped at once, --n-points {first.n_points:,}, --batch-size {first.batch_size}) needs about "
                f"{needed / 2**30:,.1f} GiB, more than the {available / 2**30:,.1f} GiB available; sweep fewer "
                "values or seeds at once, or fewer points"
            )
        # The final sampling keeps every state of each seed's chain: (T + 1, n, 2) float32, and working copies.
        needed = first.n_samples * first.seeds * (first.num_steps + 1) * SAMPLE_BYTES_PER_POINT // 2
        if needed > available:
            raise ConfigError(
                f"sampling --n-samples {first.n_samples:,} x {first.seeds} seeds over {first.num_steps} "
                f"steps needs about {needed / 2**30:,.1f} GiB, more than the {available / 2**30:,.1f} "
                "GiB available; ask for fewer samples"
            )
    for c in configs:  # each configuration's own data, samples and chains, as a single run's door checks them
        check_fits_in_memory(c.config)


# ---- the sweep folder ---------------------------------------------------------------------------


def sweep_record(args: SweepArgs, configs: Sequence[Configuration]) -> dict:
    """What sweep.json holds: the options and the grid (names and swept options), to resume and merge."""
    return dict(args=dataclasses.asdict(args), configurations=[dict(name=c.name, options=c.options) for c in configs])


# Options that may differ when a sweep resumes or a process joins it.
FREE_SWEEP_OPTIONS = (
    "out_dir",
    "resume",
    "rank_by",
    "log_every",
    "plots",
    "compile_cache",
    "devices",
    "num_processes",
    "process_id",
    "merge_timeout",
)


def open_sweep_dir(args: SweepArgs, sweep_dir: Path, configs: Sequence[Configuration], joining: bool = False) -> None:
    """Create the sweep folder and write sweep.json, or check it with --resume (or when `joining`, a
    process other than the first of a split sweep): the same grid, or a one-line refusal. An existing
    folder is never reused without --resume (an empty one is)."""
    record = sweep_record(args, configs)
    path = sweep_dir / SWEEP_FILE
    if path.is_file() and (args.resume or joining):
        saved = json.loads(path.read_text())
        differ = [
            k
            for k, v in record["args"].items()
            if k not in FREE_SWEEP_OPTIONS and saved.get("args", {}).get(k) != _jsonable(v)
        ]
        if differ:
            shown = ", ".join(
                f"--{k.replace('_', '-')} {saved['args'].get(k)} (now {_jsonable(record['args'][k])})" for k in differ
            )
            raise ConfigError(
                f"the sweep in {str(sweep_dir)!r} was started with {shown}; resume with the same "
                "options, or start a new --out-dir"
            )
        return
    if args.resume:
        raise ConfigError(
            f"--resume: {str(sweep_dir)!r} holds no sweep (no {SWEEP_FILE}); give the --out-dir of "
            "an earlier sweep, or drop --resume"
        )
    # Empty: nothing but a sweep.json.<pid>.tmp that a kill left before its rename (no sweep was started).
    empty = sweep_dir.is_dir() and all(_is_record_tmp(p) for p in sweep_dir.iterdir())
    if sweep_dir.exists() and not empty and not joining:
        raise ConfigError(
            f"{str(sweep_dir)!r} already exists and is not empty; add --resume to continue that "
            "sweep, or choose another --out-dir (earlier results are never overwritten)"
        )
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # Atomic, through a file of this process's own: the processes of a split sweep may all write it at once.
        tmp = path.with_name(f"{SWEEP_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        raise ConfigError(
            f"cannot write the sweep folder {str(sweep_dir)!r} ({err.strerror or err}); choose a writable --out-dir"
        ) from None


def _is_record_tmp(path: Path) -> bool:
    return path.name.startswith(SWEEP_FILE + ".") and path.name.endswith(".tmp")


def _jsonable(value):
    return json.loads(json.dumps(value))


# ---- the leaderboard (the merge step) -----------------------------------------------------------


def _mean_std(value) -> dict:
    """{mean, std, values, diverged} of a metric: a float for one seed or a list over seeds (None: diverged)."""
    values = value if isinstance(value, list) else [value]
    finite = [v for v in values if v is not None]
    if len(finite) < len(values) or not finite:
        return dict(mean=None, std=None, values=values, diverged=len(values) - len(finite))
    return dict(mean=float(np.mean(finite)), std=float(np.std(finite)), values=values, diverged=0)


def row_of(configuration: Configuration, summary: dict) -> dict:
    """One leaderboard row from a configuration's summary.json: mean +- std over seeds of every
    metric of the final samples, for the raw and the EMA parameters (None where a seed diverged), and
    the floor and ceiling of `metrics.calibrate` at the same n."""
    evaluation = summary.get("evaluation") or {}
    metrics = {
        f"{params}_{name}": _mean_std((evaluation.get(params) or {}).get(name))
        for params in ("raw", "ema")
        for name in METRICS
    }
    calibration = summary.get("calibration") or {}
    return dict(
        name=configuration.name,
        index=configuration.index,
        options=configuration.options,
        seeds=configuration.config.seeds,
        epochs=summary.get("epochs"),
        final_loss=summary.get("final_loss"),
        diverged_at=summary.get("diverged_at"),
        metrics=metrics,
        n=calibration.get("n"),
        floor={m: (calibration.get("floor") or {}).get(m) for m in METRICS},
        ceiling={m: (calibration.get("ceiling") or {}).get(m) for m in METRICS},
    )


def score(row: dict, rank_by: str) -> float:
    """The ranking value of a row (lower is better; inf when it diverged): `rank_by` as a raw_ / ema_
    metric, or a bare metric for the better of raw and EMA."""
    names = [rank_by] if rank_by.startswith(("raw_", "ema_")) else [f"raw_{rank_by}", f"ema_{rank_by}"]
    means = [row["metrics"][n]["mean"] for n in names]
    finite = [m for m in means if m is not None and math.isfinite(m)]
    return min(finite) if finite else math.inf


def rank(rows: list[dict], rank_by: str) -> list[dict]:
    """Rows sorted by `score` (ties by grid order), each given its rank and score."""
    ordered = sorted(rows, key=lambda r: (score(r, rank_by), r["index"]))
    return [dict(r, rank=i + 1, score=score(r, rank_by)) for i, r in enumerate(ordered)]


def leaderboard_rows(configs: Sequence[Configuration]) -> list[dict]:
    """Every configuration's row read from its folder; a ConfigError naming those not finished yet."""
    missing = [c.name for c in configs if not is_finished(c.config)]
    if missing:
        raise ConfigError(
            f"{len(missing)} configuration(s) have no {SUMMARY_FILE} yet ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); finish them (--resume) before merging"
        )
    return [row_of(c, json.loads((Path(c.config.out_dir) / SUMMARY_FILE).read_text())) for c in configs]


def merge(
    args: SweepArgs,
    sweep_dir: Path,
    configs: Sequence[Configuration],
    command: str = "",
    timings: Optional[dict] = None,
) -> list[dict]:
    """The merge step: read every configuration's row from disk, rank, write leaderboard.md, grid.png
    and leaderboard.json (with `timings`, the sweep's time breakdown, when given: its "merge" the time
    of this step); the ranked rows."""
    start = time.perf_counter()
    rows = rank(leaderboard_rows(configs), args.rank_by)
    by_name = {c.name: c for c in configs}
    swept = [name for name in SWEPT if len(getattr(args, name)) > 1]
    stored = [dict(r, score=r["score"] if math.isfinite(r["score"]) else None) for r in rows]  # JSON has no inf
    write_atomic(sweep_dir / LEADERBOARD_MD, leaderboard_markdown(rows, args, swept, command))
    draw_grid(sweep_dir / GRID_PNG, rows, by_name, args.rank_by)
    board = dict(command=command, rank_by=args.rank_by, seeds=args.seeds, n=args.n_samples, swept=swept, rows=stored)
    if timings is not None:
        timings["merge"] = time.perf_counter() - start
        board["timings"] = timings
    write_json(sweep_dir / LEADERBOARD_JSON, board)
    return rows


def _cell(stat: dict) -> str:
    if stat["mean"] is None:
        return f"diverged ({stat['diverged']})"
    return f"{stat['mean']:.4g} +- {stat['std']:.2g}" if len(stat["values"]) > 1 else f"{stat['mean']:.4g}"


def leaderboard_markdown(rows: list[dict], args: SweepArgs, swept: list[str], command: str = "") -> str:
    """The leaderboard as a markdown table, best first, with the floor and ceiling it is read against."""
    seeds = f"mean +- std over {args.seeds} seeds" if args.seeds > 1 else "one seed"
    lines = ["# Sweep leaderboard", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += [
        f"{len(rows)} configurations, {seeds}, sample quality of n = {args.n_samples} final samples against a "
        "held-out draw; "
        f"ranked by {args.rank_by}"
        + ("" if args.rank_by.startswith(("raw_", "ema_")) else " (the better of raw and EMA parameters)")
        + ". Lower is better.",
        "",
    ]
    floors = {}
    for row in rows:
        if row["floor"]["sliced_w2"] is not None:
            floors.setdefault(json.dumps([row["floor"], row["ceiling"]]), row)
    for row in floors.values():
        lines.append(
            "floor (a second draw of the data) / ceiling (N(0, I)): "
            + ", ".join(f"{m} {row['floor'][m]:.3g} / {row['ceiling'][m]:.3g}" for m in METRICS)
        )
    lines.append("")
    option_columns = swept or ["config"]
    header = ["rank", *option_columns, "score", *(f"{m} {p}" for m in METRICS for p in ("raw", "EMA"))]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        options = [_value_text(n, row["options"][n]) for n in swept] if swept else [row["name"]]
        position = _position(row, args.rank_by)
        cells = [
            str(row["rank"]),
            *options,
            position,
            *(_cell(row["metrics"][f"{p}_{m}"]) for m in METRICS for p in ("raw", "ema")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "score: the ranking metric placed between floor (0) and ceiling (1). Folders: "
        + ", ".join(f"{row['rank']}: `{row['name']}`" for row in rows[:10])
        + (", ..." if len(rows) > 10 else ""),
        "",
    ]
    return "\n".join(lines)


def _position(row: dict, rank_by: str) -> str:
    metric = rank_by.split("_", 1)[1] if rank_by.startswith(("raw_", "ema_")) else rank_by
    if not math.isfinite(row["score"]):
        return "diverged"
    floor, ceiling = row["floor"][metric], row["ceiling"][metric]
    if floor is None or ceiling is None or ceiling == floor:
        return "-"
    return f"{(row['score'] - floor) / (ceiling - floor):.3f}"


def draw_grid(path: Path, rows: list[dict], by_name: dict, rank_by: str, max_points: int = 2000) -> None:
    """grid.png: the first seed's samples of every configuration, best first, each titled with its
    rank, options and score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    cols = min(n, max(1, math.ceil(math.sqrt(n))))
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.4 * cols, 2.5 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row in zip(axes.ravel(), rows):
        path_samples = Path(by_name[row["name"]].config.out_dir) / SAMPLES_FILE
        if path_samples.is_file():
            samples = np.load(path_samples)
            points = samples.reshape(-1, *samples.shape[-2:])[0][:max_points]
            ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5, color="tab:blue", linewidths=0)
            ax.set_aspect("equal")
        label = ", ".join(f"{k} {_value_text(k, v)}" for k, v in row["options"].items()) or row["name"]
        score_text = f"{row['score']:.3g}" if math.isfinite(row["score"]) else "diverged"
        ax.set_title(f"#{row['rank']} {label}\n{rank_by} {score_text}", fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
