"""`python -m benchmarks.recipe_search`: the measured search behind `--preset recommended-diffusion`.

Trains each candidate setting at the tutorial's budget (1000 epochs of 10,000 points, batch 128; seeds
vmapped), tracking several EMA decays in the same run (the EMA never feeds back into training, so one
run serves every decay), then scores the final samples of every (parameters, sampler) pair: sliced W2
at n = 10,000 against the held-out draw, mean over seeds, next to the floor at the same n. Each
candidate appends one JSON line to --log; `--report` turns a log into a markdown table.

A candidate is a name from CANDIDATES: Config overrides plus an optional learning-rate schedule.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

from ddpm_harness import metrics
from ddpm_harness.config import Config
from ddpm_harness.data import data_transform, dataset_for, held_out_for
from jax_ddpm import speed
from jax_ddpm.objectives.objective import loss_fn_for
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.objectives.step import EmaRate, pure_train_step
from jax_ddpm.runner.chunk import init_states, run_keys, run_optimizer, train_epoch
from jax_ddpm.runner.draw import draw_samples

RESULTS = Path(__file__).parent / "results"
EMA_DECAYS = (0.999, 0.9995, 0.9999)
LINEAR = dict(schedule="linear", beta_start=1e-4, beta_end=0.1)
# name -> (Config overrides, learning-rate schedule: None (constant) or "cosine" (to 0 over the run))
CANDIDATES = {
    "linear": (LINEAR, None),
    "linear-cos": (LINEAR, "cosine"),
    "linear-v": (dict(LINEAR, prediction="v"), None),
    "linear-v-cos": (dict(LINEAR, prediction="v"), "cosine"),
    "linear-x0": (dict(LINEAR, prediction="x0"), None),
    "linear-zts-v": (dict(LINEAR, prediction="v", zero_terminal_snr=True), None),
    "cosine-v": (dict(schedule="cosine", prediction="v"), None),
    "cosine-eps": (dict(schedule="cosine"), None),
    "cosine-x0": (dict(schedule="cosine", prediction="x0"), None),
    "cosine-v-cos": (dict(schedule="cosine", prediction="v"), "cosine"),
    "cosine-v-T200": (dict(schedule="cosine", prediction="v", num_steps=200), None),
    "cosine-v-lr2e-3": (dict(schedule="cosine", prediction="v", lr=2e-3), None),
    "quad-0.2": (dict(schedule="quad", beta_start=1e-4, beta_end=0.2), None),
    "quad-0.2-v": (dict(schedule="quad", beta_start=1e-4, beta_end=0.2, prediction="v"), None),
    "sigmoid-0.2-v": (dict(schedule="sigmoid", beta_start=1e-5, beta_end=0.2, prediction="v"), None),
    "sigmoid-0.2-v-cos": (dict(schedule="sigmoid", beta_start=1e-5, beta_end=0.2, prediction="v"), "cosine"),
    "sigmoid-0.2-x0": (dict(schedule="sigmoid", beta_start=1e-5, beta_end=0.2, prediction="x0"), None),
    "sigmoid-0.5-v": (dict(schedule="sigmoid", beta_start=1e-5, beta_end=0.5, prediction="v"), None),
    "norm-sigmoid-0.2-v": (
        dict(schedule="sigmoid", beta_start=1e-5, beta_end=0.2, prediction="v", normalize=True),
        None,
    ),
    "norm-cosine-v": (dict(schedule="cosine", prediction="v", normalize=True), None),
    "linear-T200": (dict(LINEAR, num_steps=200, beta_end=0.05), None),
    "linear-lr2e-3": (dict(LINEAR, lr=2e-3), None),
}
SAMPLERS = {  # label -> Config sampling overrides
    "tutorial": dict(sampler="tutorial"),
    "ddpm": dict(sampler="ddpm"),
    "ddpm-posterior": dict(sampler="ddpm", variance="posterior"),
    "ddim": dict(sampler="ddim"),
    "ddim-eta0.5": dict(sampler="ddim", eta=0.5),
    "dpm-solver++-20": dict(sampler="dpm-solver++", sample_steps=20),
    "dpm-solver++-50": dict(sampler="dpm-solver++", sample_steps=50, timestep_spacing="trailing"),
}
# The ODE is left out of the search: at 10,000 points x 3 seeds it cost ~400 s a candidate on the
# shared CPU, and the deterministic samplers scored worse than the ancestral ones on the first
# candidates (log: recipe_search.jsonl).


def learning_rate(config: Config, lr_schedule, steps: int):
    if lr_schedule is None:
        return config.lr
    if lr_schedule == "cosine":
        return optax.cosine_decay_schedule(config.lr, steps)
    raise ValueError(f"unknown lr schedule {lr_schedule!r}")


def train_multi_ema(config: Config, data: np.ndarray, lr_schedule, decays=EMA_DECAYS) -> dict:
    """Train config.seeds models (vmapped) for config.epochs; {"raw": params, "ema0.999": ...}, each
    with a leading seed axis. The state's ema_params holds one EMA per decay."""
    steps_per_epoch = -(-data.shape[0] // config.batch_size)
    lr = learning_rate(config, lr_schedule, config.epochs * steps_per_epoch)
    optimizer = run_optimizer(lr, config.clip_norm, clipped=config.clip_norm > 0)
    schedule, loss_fn = run_schedule(config), loss_fn_for(config)
    state = init_states(config, optimizer)
    state = state.replace(ema_params=tuple(state.ema_params for _ in decays))

    def train_step_fn(state, batch_x, t, e):
        new, loss = pure_train_step(
            state.replace(ema_params=state.ema_params[0]),
            optimizer,
            EmaRate.constant(decays[0]),
            batch_x,
            schedule,
            config.num_steps,
            t=t,
            e=e,
            loss_fn=loss_fn,
        )
        rest = tuple(EmaRate.constant(d).update(p, new.params) for p, d in zip(state.ema_params[1:], decays[1:]))
        return new.replace(ema_params=(new.ema_params,) + rest), loss

    epoch_fn = functools.partial(
        train_epoch, batch_size=config.batch_size, train_step_fn=train_step_fn, n_steps=config.num_steps
    )

    def chunk(state, data):
        return jax.lax.scan(lambda s, _: epoch_fn(s, data), state, None, length=config.epochs)

    models = jax.jit(jax.vmap(chunk, in_axes=(0, None)), compiler_options=speed.program_options("training"))
    state, _ = models(state, data)
    state = jax.block_until_ready(state)
    out = {"raw": state.params}
    out.update({f"ema{d:g}": p for d, p in zip(decays, state.ema_params)})
    return out


def seed_params(params, i):
    return jax.tree_util.tree_map(lambda a: a[i], params)


def score_pair(config: Config, schedule, label: str, name: str, params, reference, n: int, log) -> dict:
    """Sliced W2 (per seed) of one (sampler, parameters) pair."""
    sampling = dataclasses.replace(config, **SAMPLERS[label])
    start = time.perf_counter()
    values, nfe = [], 0
    for i in range(config.seeds):
        out = draw_samples(seed_params(params, i), schedule, sampling, run_keys(config.seed + i)["sample"], n)
        x = np.asarray(out.x_0)
        nfe = max(nfe, int(out.nfe))
        values.append(metrics.sliced_w2(x, reference) if np.isfinite(x).all() else float("nan"))
    log(
        f"  {label:16s} {name:10s} sliced W2 {np.mean(values):.4f} +- {np.std(values, ddof=1):.4f} "
        f"(NFE {nfe}, {time.perf_counter() - start:.0f} s)"
    )
    return dict(sampler=label, params=name, sliced_w2=values, mean=float(np.mean(values)), nfe=nfe)


def score(config: Config, params_sets: dict, reference: np.ndarray, n: int, log) -> list[dict]:
    """Sliced W2 of (parameters, sampler) pairs in two stages, to keep the search affordable on a
    shared CPU: every parameter set (raw, each EMA) with the tutorial's sampler (ddpm for v and x0
    models); then every sampler with the parameter set that scored best."""
    schedule = run_schedule(config)
    first = "tutorial" if config.prediction == "eps" else "ddpm"
    rows = [
        score_pair(config, schedule, first, name, params, reference, n, log) for name, params in params_sets.items()
    ]
    best = min(rows, key=lambda r: r["mean"] if np.isfinite(r["mean"]) else np.inf)["params"]
    others = [label for label in SAMPLERS if label != first and (label != "tutorial" or config.prediction == "eps")]
    rows += [score_pair(config, schedule, label, best, params_sets[best], reference, n, log) for label in others]
    return rows


def run_candidate(name: str, dataset: str, args, log) -> dict:
    overrides, lr_schedule = CANDIDATES[name]
    config = Config(dataset=dataset, epochs=args.epochs, seeds=args.seeds, n_samples=args.n, **overrides)
    data = dataset_for(config)
    shift, scale = data_transform(config, data)
    data = (data - shift) / scale  # --normalize: model units (draw_samples maps the samples back)
    reference = held_out_for(config, args.n)
    start = time.perf_counter()
    params_sets = train_multi_ema(config, data, lr_schedule)
    train_s = time.perf_counter() - start
    log(f"{dataset} {name}: trained {args.seeds} seeds x {args.epochs} epochs in {train_s:.0f} s")
    rows = score(config, params_sets, reference, args.n, log)
    best = min(rows, key=lambda r: r["mean"] if np.isfinite(r["mean"]) else np.inf)
    floor = metrics.calibration(dataset, args.n, config.data_noise, config.seed)["floor"]["sliced_w2"]
    log(
        f"{dataset} {name}: best {best['sampler']} {best['params']} {best['mean']:.4f} = "
        f"{best['mean'] / floor:.2f}x the floor {floor:.4f}"
    )
    return dict(
        dataset=dataset,
        candidate=name,
        overrides=overrides,
        lr_schedule=lr_schedule,
        epochs=args.epochs,
        seeds=args.seeds,
        n=args.n,
        floor=floor,
        train_s=train_s,
        rows=rows,
    )


def report(log_path: Path) -> str:
    """The log as a markdown table: per (dataset, candidate), the best pairs by mean sliced W2."""
    lines = [
        "| dataset | candidate | lr | sampler | params | sliced W2 (mean of seeds) | x floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for line in log_path.read_text().splitlines():
        entry = json.loads(line)
        rows = sorted((r for r in entry["rows"] if np.isfinite(r["mean"])), key=lambda r: r["mean"])
        for r in rows[:3]:
            lines.append(
                f"| {entry['dataset']} | {entry['candidate']} | {entry['lr_schedule'] or 'constant'} | "
                f"{r['sampler']} | {r['params']} | {r['mean']:.4f} +- {np.std(r['sliced_w2'], ddof=1):.4f} | "
                f"{r['mean'] / entry['floor']:.2f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="moons", help="comma-separated datasets")
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names of CANDIDATES")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=10_000, help="samples scored per seed (and held-out points)")
    parser.add_argument("--log", type=Path, default=RESULTS / "recipe_search.jsonl")
    parser.add_argument("--report", action="store_true", help="print the log as a markdown table and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.log))
        return 0
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    for dataset in args.datasets.split(","):
        for name in args.candidates.split(","):
            entry = run_candidate(name, dataset, args, log)
            with args.log.open("a") as f:
                f.write(json.dumps(entry) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
