"""DDPM against flow matching on the same model, data and budget: `python -m benchmarks.methods`.

Writes benchmarks/results/methods.md, methods.json and the chart methods.png (issue 18). Each method
trains `--seeds` models (vmapped, `runner.loop.train_models`) with the same model, data, epochs, batch
size and optimizer; each is then sampled at every NFE of NFES with n points per seed and scored by sliced
W2 against a held-out draw, as a multiple of the metric's floor at the same n (two draws of the data),
mean +- std over seeds.

- ddpm (tutorial): the tutorial's settings, DPM-Solver++(2M) with K = NFE steps, "trailing" spacing
  (benchmarks/quality_nfe.py's choice), and the tutorial's own sampler at NFE = T;
- ddpm (preset): `--preset recommended-diffusion` (v prediction, normalized data, sigmoid 1e-5..0.2, EMA), the
  same samplers;
- flow (independent), flow (ot): `--method flow` with each coupling and the preset's recipe where it is not
  diffusion's own (`--normalize`, EMA 0.9995, sampled with the EMA: `FLOW_RECIPE`), Euler with K = NFE steps
  and midpoint with K = NFE / 2 (even NFE).

Also the NLL (bits/dim, through each method's ODE, on held-out points; ddpm's prior N(0, I) at t = T-1,
flow's exact source at t = 0) and the training time. `--quick` runs a tiny version (for a smoke check,
not for the report).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_harness import metrics
from ddpm_harness.config import Config, resolve_preset
from ddpm_harness.data import dataset_for, held_out_for
from jax_ddpm.evaluate import likelihoods_in_data_units
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.runner.draw import sample_states
from jax_ddpm.runner.loop import train_models

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("moons", "swiss_roll", "s_curve", "eight_gaussians")
NFES = (1, 2, 5, 10, 20, 50, 100)


# What the preset changes that is not diffusion's own (the schedule and v prediction are): flow takes it too,
# so that flow and the preset differ by the method only.
FLOW_RECIPE = dict(normalize=True, ema_decay=0.9995, sample_with="ema")


METHOD_KEYS = {
    "tutorial": "ddpm (tutorial)",
    "preset": "ddpm (preset)",
    "flow": "flow (independent)",
    "ot": "flow (ot)",
}


def methods(base: Config) -> dict[str, Config]:
    """The four methods on `base`'s data and budget."""
    flow = dataclasses.replace(base, method="flow", sampler="euler", **FLOW_RECIPE)
    return {
        "ddpm (tutorial)": base,
        "ddpm (preset)": resolve_preset(dataclasses.replace(base, preset="recommended-diffusion")),
        "flow (independent)": flow,
        "flow (ot)": dataclasses.replace(flow, coupling="ot"),
    }


def samplings(config: Config, nfes: tuple[int, ...]) -> list[tuple[str, int, Config]]:
    """(sampler, NFE, sampling config) of a method at every NFE it can take."""
    out = []
    if config.method == "flow":
        for nfe in nfes:
            out.append(("euler", nfe, dataclasses.replace(config, sampler="euler", sample_steps=nfe)))
            if nfe % 2 == 0:
                out.append(("midpoint", nfe, dataclasses.replace(config, sampler="midpoint", sample_steps=nfe // 2)))
        return out
    if config.prediction == "eps":
        out.append(("tutorial", config.num_steps, dataclasses.replace(config, sampler="tutorial", sample_steps=None)))
    for nfe in nfes:
        if nfe <= config.num_steps:
            sampling = dataclasses.replace(
                config, sampler="dpm-solver++", sample_steps=nfe, timestep_spacing="trailing", eta=0.0
            )
            out.append(("dpm-solver++", nfe, sampling))
    return out


def mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def run_method(label: str, config: Config, nfes, n: int, n_likelihood: int, log) -> dict:
    """Train the method's seeds, then score every (sampler, NFE) and the NLL."""
    start = time.perf_counter()
    params_list = jax.block_until_ready(train_models(config, dataset_for(config)))
    train_s = time.perf_counter() - start
    reference = held_out_for(config, n)
    floor = metrics.calibration(config.dataset, n, config.data_noise, config.seed)["floor"]["sliced_w2"]
    params = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *params_list)
    schedule = run_schedule(config)
    rows = []
    for sampler, nfe, sampling in samplings(config, nfes):
        states, _ = sample_states(params, schedule, sampling, n)
        scored = [
            metrics.evaluate(x, reference)["sliced_w2"] if np.isfinite(x).all() else np.nan for x in states[:, -1]
        ]
        w2 = mean_std(scored)
        rows.append(dict(sampler=sampler, nfe=nfe, sliced_w2=w2, x_floor=w2[0] / floor))
        log(f"{config.dataset} {label} {sampler} NFE {nfe}: sliced W2 {w2[0]:.4f} ({w2[0] / floor:.2f}x the floor)")
    points = held_out_for(config, n_likelihood)[:n_likelihood]
    nlls, _ = likelihoods_in_data_units(config, params_list, schedule, points, "gaussian")
    nll = mean_std([r["bits_per_dim"] for r in nlls]) if all("bits_per_dim" in r for r in nlls) else None
    return dict(method=label, dataset=config.dataset, train_s=train_s, floor=floor, nll=nll, rows=rows)


TUTORIAL_DATASETS = ("moons", "swiss_roll", "s_curve")
TARGET_X_FLOOR, TARGET_NFE = 2.0, 20  # issue 18's target: at most 2x the floor at 20 evaluations or fewer


def best_rows(result: dict) -> dict[int, dict]:
    """The method's best sampler at each NFE: {nfe: row}."""
    best = {}
    for row in result["rows"]:
        if row["nfe"] not in best or row["x_floor"] < best[row["nfe"]]["x_floor"]:
            best[row["nfe"]] = row
    return dict(sorted(best.items()))


def best_within(result: dict, max_nfe: int) -> dict | None:
    """The method's best row at max_nfe evaluations or fewer."""
    rows = [row for nfe, row in best_rows(result).items() if nfe <= max_nfe]
    return min(rows, key=lambda row: row["x_floor"]) if rows else None


def _x_floor(row: dict | None) -> float:
    return row["x_floor"] if row else np.inf


def verdict(results: list[dict]) -> list[str]:
    """Which method wins where: the best method at each NFE per dataset, and each method's best within the
    target's budget against the target."""
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    methods_run = list(dict.fromkeys(r["method"] for r in results))
    nfes = sorted({row["nfe"] for r in results for row in r["rows"]})
    lines = ["", "## Who wins", "", "The method with the lowest sliced W2 at each NFE (x the floor):", ""]
    lines += ["| dataset | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
    for dataset in datasets:
        cells = []
        for k in nfes:
            at_k = [
                (best_rows(r)[k]["x_floor"], r["method"])
                for r in results
                if r["dataset"] == dataset and k in best_rows(r) and np.isfinite(best_rows(r)[k]["x_floor"])
            ]
            cells.append(f"{min(at_k)[1]} ({min(at_k)[0]:.2f})" if at_k else "")
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Each method's best at {TARGET_NFE} evaluations or fewer (target: at most {TARGET_X_FLOOR:g}x the floor "
        "on the three tutorial datasets):",
        "",
        "| dataset | " + " | ".join(methods_run) + " |",
        "|---" * (len(methods_run) + 1) + "|",
    ]
    for dataset in datasets:
        cells = []
        for r in (r for r in results if r["dataset"] == dataset):
            row = best_within(r, TARGET_NFE)
            cells.append(f"{row['x_floor']:.2f} ({row['sampler']}, NFE {row['nfe']})" if row else "")
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    lines.append("")
    for method in methods_run:
        mine = [r for r in results if r["method"] == method and r["dataset"] in TUTORIAL_DATASETS]
        met = [r["dataset"] for r in mine if _x_floor(best_within(r, TARGET_NFE)) <= TARGET_X_FLOOR]
        lines.append(
            f"- {method}: at most {TARGET_X_FLOOR:g}x the floor within {TARGET_NFE} evaluations on "
            f"{len(met)} of {len(mine)} tutorial datasets" + (f" ({', '.join(met)})" if met else "")
        )
    return lines


def report(results: list[dict], base: Config, n: int, seconds: float, name: str = "methods") -> str:
    """methods.md: one table per dataset, x floor per method and NFE, the NLL and training time; who wins."""
    lines = [
        "# DDPM against flow matching: same model, data and budget",
        "",
        f"`python -m benchmarks.methods`: {base.epochs} epochs, batch {base.batch_size}, {base.seeds} seeds, "
        f"n = {n:,} samples per seed; sliced W2 as a multiple of its floor (two draws of the data at the same n), "
        f"mean over seeds; the best sampler of each method at each NFE. {seconds:.0f} s in all. "
        f"Chart: [{name}.png]({name}.png).",
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == dataset]
        nfes = sorted({row["nfe"] for r in rows for row in r["rows"]})
        header = " | ".join(f"NFE {k}" for k in nfes)
        lines += ["", f"## {dataset}", "", f"| method | {header} | NLL (bits/dim) | training s (compile included) |"]
        lines.append("|---" * (len(nfes) + 3) + "|")
        for r in rows:
            best = best_rows(r)
            cells = [f"{best[k]['x_floor']:.2f} ({best[k]['sampler']})" if k in best else "" for k in nfes]
            nll = f"{r['nll'][0]:.3f}" if r["nll"] else "n/a"
            lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {nll} | {r['train_s']:.0f} |")
    return "\n".join(lines + verdict(results)) + "\n"


def chart(results: list[dict], path: Path) -> None:
    """methods.png: x the floor against NFE, one panel per dataset, a line per method (its best sampler)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for r in (r for r in results if r["dataset"] == dataset):
            best = best_rows(r)
            ax.plot(list(best), [row["x_floor"] for row in best.values()], marker="o", label=r["method"])
        ax.axhline(TARGET_X_FLOOR, color="grey", linestyle=":", linewidth=1)
        ax.set(xscale="log", yscale="log", title=dataset, xlabel="NFE", ylabel="sliced W2 / floor")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: list[dict], base: Config, n: int, seconds: float, out: Path, name: str) -> None:
    (out / f"{name}.md").write_text(report(results, base, n, seconds, name))
    chart(results, out / f"{name}.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=10_000, help="samples per seed, and the floor's n")
    parser.add_argument("--n-likelihood", type=int, default=1000)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default=",".join(METHOD_KEYS), help=f"some of {', '.join(METHOD_KEYS)}")
    parser.add_argument("--nfes", default=",".join(map(str, NFES)), help="numbers of model evaluations")
    parser.add_argument("--name", default="methods", help="the report's file name: <out>/<name>.md, .json, .png")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check, not a measurement")
    args = parser.parse_args(argv)
    chosen = args.methods.split(",")
    if args.seeds < 1 or args.epochs < 1 or args.n < 2 or not set(chosen) <= set(METHOD_KEYS):
        print(
            f"error: --seeds and --epochs must be positive, --n at least 2, --methods among {', '.join(METHOD_KEYS)}",
            file=sys.stderr,
        )
        return 2
    nfes = (1, 2, 5) if args.quick else tuple(int(k) for k in args.nfes.split(","))
    epochs, n, n_likelihood = (5, 256, 16) if args.quick else (args.epochs, args.n, args.n_likelihood)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)  # noqa: E731
    results = []
    name = "methods_quick" if args.quick else args.name
    for dataset in args.datasets.split(","):
        base = Config(dataset=dataset, epochs=epochs, seeds=args.seeds, n_points=10_000 if not args.quick else 512)
        for label, config in methods(base).items():
            if label not in {METHOD_KEYS[key] for key in chosen}:
                continue
            results.append(run_method(label, config, nfes, n, n_likelihood, log))
            (args.out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")  # a stopped run keeps these
    write_report(results, base, n, time.perf_counter() - start, args.out, name)
    log(f"-> {args.out / name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
