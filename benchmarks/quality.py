"""`python -m benchmarks.quality`: sample quality measured, JAX vs the PyTorch reference.

Writes benchmarks/results/quality.md (tables) and quality_samples.png (samples side by side):
1. statistical parity: the tutorial's config (moons, 10,000 points, 1000 epochs) trained with
   jax_ddpm (seeds vmapped) and with torch_reference.training.train (seeds one after another),
   metrics of the final samples against a held-out draw, mean +- std per side, beside the floor and
   the ceiling of `ddpm_harness.metrics.calibrate`;
2. the tutorial's weakness: its schedule ends at alpha_bar_T ~ 0.78, yet sampling starts from
   N(0, I). The same models sampled from the true q(x_T) (a diagnostic: data pushed through
   q_sample at T - 1), and models trained with the cosine schedule and a linear schedule to a larger
   beta_end, same budget (JAX);
3. the variational bound: 4-output models trained with --loss variational and --loss hybrid, their
   negative ELBO in bits/dim and their sample metrics (JAX).

Training and sampling on either side use the library (jax_ddpm.experiment.train_models /
final_samples, torch_reference.train.train_model / final_samples), as tests/test_statistical_parity.py
does; the held-out reference is ddpm_harness.config.held_out_for.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_harness import metrics
from ddpm_harness.config import Config, dataset_for, held_out_for
from ddpm_harness.data import held_out_points
from jax_ddpm.elbo import negative_elbo
from jax_ddpm.experiment import final_samples, train_models
from jax_ddpm.schedule import q_sample, schedule_for

RESULTS = Path(__file__).parent / "results"


def train_torch(config: Config, data: np.ndarray, seed: int):
    """torch_reference.train.train_model on one thread: with JAX's thread pool in the same process,
    two torch threads ran 15-60x slower than one on a shared 2-core machine."""
    import torch

    from torch_reference.train import train_model

    torch.set_num_threads(1)
    return train_model(config, data, seed)


METRICS = ("sliced_w2", "mmd2", "energy")


def summarize(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """metric -> (mean, std over seeds, ddof 1)."""
    return {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows], ddof=1)))
            for k in rows[0] if k != "bandwidth"}


def fmt(mean_std: tuple[float, float], digits: int = 4) -> str:
    return f"{mean_std[0]:.{digits}f} +- {mean_std[1]:.{digits}f}"


def true_x_T(config: Config, n: int, seed: int) -> np.ndarray:
    """x_T ~ q(x_T) itself: a fresh data draw pushed through q_sample at step T - 1 (a diagnostic:
    a sampler can only start there when it has the data)."""
    x_0 = held_out_points(config.dataset, n, config.data_noise, config.seed, draw=2 + seed)
    noise = jax.random.normal(jax.random.PRNGKey(seed), x_0.shape)
    schedule = schedule_for(config)
    return np.asarray(q_sample(jnp.asarray(x_0), jnp.full((n,), config.num_steps - 1), schedule.alphas_bar_sqrt,
                               schedule.one_minus_alphas_bar_sqrt, noise))


def run_jax(name: str, config: Config, data, reference, n: int, log, x_T_from_data: bool = False) -> dict:
    start = time.perf_counter()
    params = train_models(config, data)
    samples = [final_samples(p, config, config.seed + i, n) for i, p in enumerate(params)]
    out = dict(name=name, config=config, params=params, samples=samples,
               metrics=summarize([metrics.evaluate(x, reference) for x in samples]))
    if x_T_from_data:
        from_q = [final_samples(p, config, config.seed + i, n, true_x_T(config, n, i)) for i, p in enumerate(params)]
        out["from_q"] = dict(samples=from_q, metrics=summarize([metrics.evaluate(x, reference) for x in from_q]))
    log(f"{name}: {time.perf_counter() - start:.0f} s, {out['metrics']}")
    return out


def run_torch(config: Config, data, reference, n: int, log) -> dict:
    from torch_reference.train import final_samples as torch_final_samples

    samples = []
    for i in range(config.seeds):
        start = time.perf_counter()
        model = train_torch(config, data, config.seed + i)
        samples.append(torch_final_samples(model, config, config.seed + i, n))
        log(f"torch seed {config.seed + i}: {time.perf_counter() - start:.0f} s")
    return dict(name="PyTorch reference", samples=samples,
                metrics=summarize([metrics.evaluate(x, reference) for x in samples]))


def elbo_rows(run: dict, points: np.ndarray) -> dict[str, tuple[float, float]]:
    """Negative ELBO (bits/dim, mean +- std over seeds) with both decoders, and the prior term."""
    config, schedule = run["config"], schedule_for(run["config"])
    rows = {}
    for decoder in ("discretized", "gaussian"):
        values = [negative_elbo(p, schedule, points, jax.random.PRNGKey(i), config.parameterization, decoder)
                  for i, p in enumerate(run["params"])]
        rows[decoder] = (float(np.mean([v["total"] for v in values])), float(np.std([v["total"] for v in values], ddof=1)))
        rows["prior"] = (values[0]["prior"], 0.0)
    return rows


def alpha_bar_T(config: Config) -> float:
    return float(schedule_for(config).alphas_prod[-1])


def draw(panels: list[tuple[str, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    for ax, (title, points) in zip(axes, panels):
        ax.scatter(points[:, 0], points[:, 1], s=0.5, c="k", alpha=0.5, linewidths=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-2.0, 3.0)
        ax.set_ylim(-1.6, 2.0)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def metric_row(label: str, extra: str, m: dict) -> str:
    return f"| {label} | {extra} | " + " | ".join(fmt(m[k], 4 if k == "sliced_w2" else 5) for k in METRICS) + " |"


def write_report(path: Path, base: Config, calib: dict, runs: dict, elbos: dict, seconds: float) -> None:
    head = "| run | setting | sliced W2 | MMD^2 | energy |\n|---|---|---|---|---|"
    calib_rows = [f"| floor: two draws of the data | n = {base.n_samples} | "
                  + " | ".join(f"{calib['floor'][k]:.5f}" for k in METRICS) + " |",
                  "| ceiling: N(0, I) vs data | | " + " | ".join(f"{calib['ceiling'][k]:.5f}" for k in METRICS) + " |"]
    tut, torch_run = runs["tutorial"], runs["torch"]
    lines = [
        "# Sample quality: measured, not eyeballed",
        "",
        f"`python -m benchmarks.quality` (this file: {base.epochs} epochs, {base.n_points} moons points, batch "
        f"{base.batch_size}, {base.seeds} seeds per side, {base.n_samples} samples per seed scored against a "
        f"held-out draw of {base.n_samples} points; {seconds / 60:.0f} min on the shared 2-core CPU). "
        "Metrics: `ddpm_harness.metrics.evaluate` (sliced W2 over 64 fixed directions; unbiased MMD^2, RBF "
        "kernel, median-heuristic bandwidth; squared energy distance). Mean +- std over seeds "
        "(sample std, ddof 1). Lower is better; read each value against the floor and the ceiling.",
        "",
        "## 1. Statistical parity: the tutorial's config, JAX vs PyTorch",
        "",
        head,
        metric_row("jax_ddpm", "raw params, x_T ~ N(0, I)", tut["metrics"]),
        metric_row("torch_reference", "raw params, x_T ~ N(0, I)", torch_run["metrics"]),
        *calib_rows,
        "",
        "## 2. The tutorial's weakness: its forward process ends far from N(0, I)",
        "",
        "| run | alpha_bar_T | sliced W2 | MMD^2 | energy |\n|---|---|---|---|---|",
        metric_row("tutorial (sigmoid 1e-5..5e-3)", f"{alpha_bar_T(tut['config']):.3f}", tut["metrics"]),
        metric_row("same models, x_T ~ q(x_T) (diagnostic)", f"{alpha_bar_T(tut['config']):.3f}", tut["from_q"]["metrics"]),
        metric_row("cosine (s = 0.008)", f"{alpha_bar_T(runs['cosine']['config']):.2e}", runs["cosine"]["metrics"]),
        metric_row(f"linear {runs['linear']['config'].beta_start:g}..{runs['linear']['config'].beta_end:g}",
                   f"{alpha_bar_T(runs['linear']['config']):.2e}", runs["linear"]["metrics"]),
        *calib_rows,
        "",
        "## 3. The variational bound (tutorial schedule, JAX)",
        "",
        "Negative ELBO in bits/dim on the held-out points, all T terms plus the prior "
        "KL(q(x_T|x_0) || N(0, I)); `discretized`: the tutorial's 8-bit decoder at t = 0 (a bin "
        "probability; its [-1, 1] assumption is false for moons), `gaussian`: a density decoder "
        "(can be negative). The noise model's bound uses the sampler's variance beta_t.",
        "",
        "| loss | -ELBO discretized | -ELBO gaussian | prior term | sliced W2 | MMD^2 | energy |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in ("tutorial", "variational", "hybrid"):
        run, e = runs[key], elbos[key]
        lines.append(f"| {run['config'].loss} ({run['config'].parameterization}) | {fmt(e['discretized'], 3)} | "
                     f"{fmt(e['gaussian'], 3)} | {e['prior'][0]:.3f} | "
                     + " | ".join(fmt(run["metrics"][k], 4 if k == "sliced_w2" else 5) for k in METRICS) + " |")
    lines += ["", "![samples side by side](quality_samples.png)", ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1000, help="epochs per run (the tutorial: 1000)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per side and per run (>= 2)")
    parser.add_argument("--n-points", type=int, default=10_000, help="training points (the tutorial: 10,000)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for quality.md and quality_samples.png")
    args = parser.parse_args(argv)
    if args.seeds < 2 or args.epochs < 1 or args.n_points < 2:
        print("error: --seeds must be >= 2 (a spread needs two), --epochs and --n-points positive", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)
    base = Config(epochs=args.epochs, seeds=args.seeds, n_points=args.n_points, n_samples=args.n_points)
    data = dataset_for(base)
    reference = held_out_for(base, base.n_samples)
    calib = metrics.calibrate(base.dataset, base.n_samples, base.data_noise, base.seed)
    n = base.n_samples
    runs = dict(tutorial=run_jax("jax tutorial", base, data, reference, n, log, x_T_from_data=True))
    runs["torch"] = run_torch(dataclasses.replace(base), data, reference, n, log)
    runs["cosine"] = run_jax("jax cosine", dataclasses.replace(base, schedule="cosine"), data, reference, n, log)
    runs["linear"] = run_jax("jax linear", dataclasses.replace(base, schedule="linear", beta_start=1e-4, beta_end=0.1),
                             data, reference, n, log)
    for loss in ("variational", "hybrid"):
        runs[loss] = run_jax(f"jax {loss}", dataclasses.replace(base, loss=loss), data, reference, n, log)
    elbos = {key: elbo_rows(runs[key], reference) for key in ("tutorial", "variational", "hybrid")}
    log(f"elbo: {elbos}")
    draw([("data (held out)", reference), ("torch, tutorial", runs["torch"]["samples"][0]),
          ("jax, tutorial", runs["tutorial"]["samples"][0]),
          ("jax, same model, x_T ~ q(x_T)", runs["tutorial"]["from_q"]["samples"][0]),
          ("jax, cosine", runs["cosine"]["samples"][0]), ("jax, linear to 0.1", runs["linear"]["samples"][0]),
          ("jax, --loss variational", runs["variational"]["samples"][0]),
          ("jax, --loss hybrid", runs["hybrid"]["samples"][0])], args.out / "quality_samples.png")
    write_report(args.out / "quality.md", base, calib, runs, elbos, time.perf_counter() - start)
    log(f"wrote {args.out / 'quality.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
