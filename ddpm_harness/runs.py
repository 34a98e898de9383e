"""What a run shares between the two implementations: its opening lines, picture inputs, the run
folder and its plain files.

Framework-free on purpose (json and numpy only), so both CLIs write the same `config.json`,
`metrics.jsonl`, `samples.npy` and `summary.json` and two runs compare line for line. Files are
replaced atomically (write a temporary file, then rename), so a killed run never leaves a
half-written one, and an existing run folder is never reused without --resume.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ddpm_harness.config import Config, config_from_dict
from ddpm_harness.data import get_dataset

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.npy"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"


ALPHA_BAR_T_WARNING = 0.05
TUTORIAL_DATASETS = ("swiss_roll", "moons", "s_curve")


class RunDirError(ValueError):
    """A run folder that cannot be used as asked; the message says why and what to do."""


def describe_setup(config: Config, data: np.ndarray, schedule) -> list[str]:
    """The opening lines: dataset, schedule and how far from N(0, I) its forward process ends
    (`schedule` of either framework: its betas and alphas_prod are read)."""
    if config.method == "flow":
        return [
            f"dataset: {config.dataset}, {data.shape[0]:,} points",
            f"flow matching: N(0, I) at t = 0 to the data at t = 1, coupling {config.coupling}, "
            f"sigma {config.flow_sigma:g}, the model at the T = {config.num_steps} grid times k / T",
        ]
    betas, alpha_bar_T = schedule.betas, float(schedule.alphas_prod[-1])
    lines = [
        f"dataset: {config.dataset}, {data.shape[0]:,} points",
        f"schedule: {config.schedule}, T = {config.num_steps}, betas {float(betas[0]):.3g} .. "
        f"{float(betas[-1]):.3g}, alpha_bar_T = {alpha_bar_T:.4f}",
    ]
    if alpha_bar_T > ALPHA_BAR_T_WARNING:
        lines.append(
            f"warning: alpha_bar_T = {alpha_bar_T:.3f} > {ALPHA_BAR_T_WARNING}: the forward process ends "
            "far from N(0, I): samples start from a distribution the model never saw; "
            "consider --preset recommended (flow matching) or recommended-diffusion, --schedule cosine or a larger "
            "--beta-end"
        )
    return lines


def tutorial_datasets(config: Config) -> dict[str, np.ndarray]:
    """The three datasets of the tutorial's first picture, drawn as this run draws its data."""
    return {name: get_dataset(name, config.n_points, config.data_noise, config.seed) for name in TUTORIAL_DATASETS}


def picture_noise(config: Config, shape: tuple[int, ...]) -> np.ndarray:
    """Noise (T, *shape) for the forward-process pictures; numpy, so training keys stay untouched."""
    return np.random.default_rng(config.seed).standard_normal((config.num_steps,) + shape).astype(np.float32)


def default_run_dir(config: Config, root: str | Path = "runs") -> Path:
    """runs/<dataset>-<timestamp>, the dataset named by its file stem when it is a path."""
    name = Path(config.dataset).stem
    return Path(root) / f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


def open_run_dir(config: Config) -> Path:
    """The run folder of `config`, locked for this process: a new one, or with --resume the existing one.

    Refuses to reuse a folder that holds anything without --resume (earlier results are never
    overwritten; an existing empty folder, say from `mktemp -d`, is used), to resume a folder
    that holds no run, and a folder another process is writing (see `lock_run_dir`). Release the
    lock with `release_run_dir` when the run ends (the operating system releases it if the
    process dies).
    """
    run_dir = Path(config.out_dir) if config.out_dir else default_run_dir(config)
    try:
        _check_run_dir(run_dir, config.resume)
    except OSError as err:  # not writable, a name too long for the file system, ...: before any work
        raise RunDirError(
            f"cannot create the run folder {str(run_dir)!r} ({err.strerror}); "
            "choose another --out-dir, a writable one with shorter names"
        ) from None
    lock_run_dir(run_dir)
    return run_dir


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse what `open_run_dir` refuses, then make the folder."""
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise RunDirError(
                f"--resume: {str(run_dir)!r} holds no run (no {CONFIG_FILE}); "
                "give the --out-dir of an earlier run, or drop --resume"
            )
    elif run_dir.exists() and not (run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= BEFORE_CONFIG):
        raise RunDirError(
            f"{str(run_dir)!r} already exists and is not empty; add --resume to continue that run, "
            "or choose another --out-dir (earlier results are never overwritten)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)


# All a run folder can hold before its config.json lands: a run writes config.json first (after taking the
# lock), so a folder holding no more than this was left by a run killed before it began, and holds no results.
BEFORE_CONFIG = {LOCK_FILE, CONFIG_FILE + ".tmp"}

_LOCKS: dict[Path, int] = {}


def lock_run_dir(run_dir: Path) -> None:
    """Take the run folder's lock (an exclusive flock on run_dir/.lock) or refuse: never two writers."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunDirError(
            f"cannot write in {str(run_dir)!r} ({err.strerror}); choose a writable --out-dir, or make this one writable"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunDirError(
            f"{str(run_dir)!r} is being written by another process (it holds {LOCK_FILE}); "
            "wait for that run to end, or choose another --out-dir"
        ) from None
    _LOCKS[run_dir.resolve()] = fd


def release_run_dir(run_dir: Path) -> None:
    """Release the lock taken by `open_run_dir` (a no-op when this process holds none)."""
    fd = _LOCKS.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` in one rename, so readers see the old or the new file, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_config(run_dir: Path, config: Config, framework: str) -> None:
    """config.json: every Config field, plus which implementation ran."""
    write_json(run_dir / CONFIG_FILE, dict(dataclasses.asdict(config), framework=framework))


def read_config(run_dir: Path) -> Config:
    """The Config saved in a run folder's config.json (RunDirError when it holds none)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        return config_from_dict(json.loads(path.read_text()))
    except (OSError, ValueError) as err:  # not UTF-8, not JSON, not a config (ConfigError)
        raise RunDirError(f"{str(path)!r} is not a readable config ({err})") from None


def save_samples(run_dir: Path, samples: np.ndarray) -> None:
    """samples.npy: (n, 2) for one seed, (seeds, n, 2) for several."""
    tmp = run_dir / (SAMPLES_FILE + ".tmp.npy")
    np.save(tmp, np.asarray(samples, np.float32))
    os.replace(tmp, run_dir / SAMPLES_FILE)


def per_seed(values) -> float | list[float]:
    """A float for one seed, a list of floats for several (the layout of metrics.jsonl)."""
    values = np.asarray(values, np.float64)
    return float(values) if values.ndim == 0 else [float(v) for v in values]


def epoch_record(epoch: int, step: int, losses, last_losses, wall_s: float, **extra) -> dict:
    """One metrics.jsonl line: epochs done, optimizer steps done, the epoch's mean batch loss,
    its last-batch loss (the tutorial's print), seconds of training so far, and any extras."""
    return dict(
        epoch=int(epoch),
        step=int(step),
        loss=per_seed(losses),
        last_loss=per_seed(last_losses),
        wall_s=round(float(wall_s), 4),
        **extra,
    )


class MetricsLog:
    """Append-only metrics.jsonl, flushed after every write."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS_FILE

    def truncate_after(self, epoch: int) -> list[dict]:
        """Keep the lines up to `epoch` (the checkpoint a run resumes from); return them."""
        records = self.read()
        kept = [r for r in records if r["epoch"] <= epoch]
        if len(kept) < len(records) or not self.path.exists():
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def read(self) -> list[dict]:
        """The records so far; RunDirError when the file is damaged (it is never rewritten then)."""
        if not self.path.is_file():
            return []
        try:
            records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        except ValueError as err:  # not UTF-8, or a line that is not JSON
            records = [str(err)]
        if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in records):
            raise RunDirError(
                f"{str(self.path)!r} holds a line that is not an epoch's record; repair or remove "
                "that line, then --resume"
            )
        return records

    def append(self, records: Iterable[dict]) -> None:
        with self.path.open("a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")


def summarize(
    records: list[dict],
    *,
    framework: str,
    config: Config,
    run_dir: Path,
    train_s: float,
    steps_per_s: Optional[float],
    compile_s: Optional[float] = None,
    evaluation: Optional[dict] = None,
    timings: Optional[dict] = None,
    calibration: Optional[dict] = None,
    sampling: Optional[dict] = None,
) -> dict:
    """summary.json: time, speed, final losses (mean and spread over seeds) and where things are.

    train_s is the wall time of the training loop in this session; steps_per_s counts optimizer
    steps (each advances every seed's model) per second of training compute; timings, seconds per
    phase of this session (imports, set-up, compile, the training loop and the chunks and
    evaluations inside it, final sampling, pictures); evaluation, the sample metrics of the final
    samples per parameter set ({"raw": {...}, "ema": {...}}); calibration, {"n": n, "floor": {...},
    "ceiling": {...}} of `metrics.calibrate` at the n the evaluation scored; sampling, how the final
    samples were drawn (sampler, options, NFE).
    """
    last = records[-1]
    final = np.atleast_1d(np.asarray(last["loss"], np.float64))
    summary = dict(
        framework=framework,
        dataset=config.dataset,
        epochs=last["epoch"],
        steps=last["step"],
        seeds=config.seeds,
        train_s=round(train_s, 3),
        compile_s=None if compile_s is None else round(compile_s, 3),
        steps_per_s=None if steps_per_s is None else round(steps_per_s, 1),
        final_loss=float(final.mean()),
        final_loss_std=float(final.std()),
        final_losses=[float(v) for v in final],
        final_last_loss=per_seed(last["last_loss"]),
        run_dir=str(run_dir),
    )
    if sampling:
        summary["sampling"] = sampling
    if evaluation:
        summary["evaluation"] = evaluation
    if calibration:
        summary["calibration"] = calibration
    if timings:
        summary["timings"] = {k: round(v, 3) for k, v in timings.items()}
    return summary


def write_summary(run_dir: Path, summary: dict) -> None:
    write_json(Path(run_dir) / SUMMARY_FILE, summary)


def summary_paragraph(summary: dict) -> str:
    """The final one-paragraph report printed by both CLIs."""
    loss = f"{summary['final_loss']:.4f}"
    if summary["seeds"] > 1:
        loss += f" +- {summary['final_loss_std']:.4f} over {summary['seeds']} seeds"
    compile_part = "" if summary["compile_s"] is None else f" (+ {summary['compile_s']:.1f} s compile)"
    speed = "" if summary["steps_per_s"] is None else f" at {summary['steps_per_s']:,.0f} steps/s"
    text = (
        f"Trained {summary['framework']} on {summary['dataset']} for {summary['epochs']} epochs "
        f"({summary['steps']:,} steps) in {summary['train_s']:.1f} s{compile_part}{speed}; "
        f"final mean epoch loss {loss}."
    )
    calibrated = summary.get("calibration")
    sampling = summary.get("sampling") or {}
    if summary.get("evaluation"):
        n = f" of n = {calibrated['n']:,} samples" if calibrated else ""
        how = f", {sampling['sampler']} sampler, NFE {sampling['nfe']}" if sampling else ""
        text += f" Sample quality{n}{how} (floor: two draws of the data; ceiling: N(0, I); same n):"
    for params, values in (summary.get("evaluation") or {}).items():
        shown = ", ".join(format_against(k, v, calibrated) for k, v in values.items() if k in METRICS)
        text += f" {params} params {shown or 'hold NaN or inf'};"
    if summary.get("evaluation"):
        text = text[:-1] + "."
    if summary.get("timings"):
        text += " " + time_breakdown(summary["timings"])
    return text + f" Outputs in {summary['run_dir']}/."


# The phases of a run in the order they happen; the loop's chunks and evaluations lie inside it.
PHASES = {
    "imports": "imports",
    "set_up": "set-up",
    "compile": "compile",
    "training_loop": "training loop",
    "training_chunks": "of which compiled chunks",
    "evaluation": "and evaluations",
    "sampling": "final sampling",
    "final_evaluation": "final evaluation",
    "pictures": "pictures and GIF (the part not hidden behind training)",
    "writing": "writing samples",
    "merge": "merge (leaderboard, grid.png)",
}


def time_breakdown(timings: dict) -> str:
    """'Time: imports 2.0 s, set-up 0.4 s, ...; 1.21x the training loop.' from summary["timings"]."""
    parts = [f"{label} {timings[key]:.1f} s" for key, label in PHASES.items() if key in timings]
    outside = ("training_chunks", "evaluation")  # inside the loop
    total = sum(v for k, v in timings.items() if k not in outside)
    ratio = (
        f"; {total:.1f} s in all, {total / timings['training_loop']:.2f}x the training loop"
        if timings.get("training_loop")
        else ""
    )
    return "Time: " + ", ".join(parts) + ratio + "."


METRICS = ("sliced_w2", "mmd2", "energy")


def format_against(name: str, value, calibration: Optional[dict], brief: bool = False) -> str:
    """A metric with the floor and ceiling calibrated at the same n: "sliced_w2 0.0214 (floor 0.0058,
    ceiling 0.549)", or with brief=True "0.0214 (floor 0.0058)" for a progress bar."""
    shown = format_metric(value)
    if not calibration or name not in calibration.get("floor", {}):
        return shown if brief else f"{name} {shown}"
    floor, ceiling = calibration["floor"][name], calibration["ceiling"][name]
    if brief:
        return f"{shown} (floor {floor:.2g})"
    return f"{name} {shown} (floor {floor:.2g}, ceiling {ceiling:.3g})"


def format_metric(value) -> str:
    """A metric (or its per-seed list) for people: the mean over seeds; "diverged" for None."""
    finite = [v for v in np.atleast_1d(np.asarray(value, dtype=object)) if v is not None]
    return f"{float(np.mean(finite)):.4g}" if finite else "diverged"
