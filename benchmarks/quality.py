"""`python -m benchmarks.quality`: sample quality measured, JAX vs the PyTorch reference.

Writes benchmarks/results/quality.md (tables) and its pictures:
1. statistical parity: the tutorial's config (moons, 10,000 points, 1000 epochs) trained with
   jax_ddpm (seeds vmapped) and with torch_reference.training.train (seeds one after another),
   metrics of the final samples against a held-out draw, mean +- std per side, beside the floor and
   the ceiling of `ddpm_harness.metrics.calibrate`;
2. the tutorial's weakness: its schedule ends at alpha_bar_T ~ 0.78, yet sampling starts from
   N(0, I). The same models sampled from the true q(x_T) (a diagnostic: data pushed through
   q_sample at T - 1), and models trained with the cosine schedule and a linear schedule to a larger
   beta_end, same budget (JAX);
3. the variational bound: 4-output models trained with --loss variational and --loss hybrid, their
   negative ELBO in bits/dim and their sample metrics (JAX);
4. quality against cost (benchmarks/quality_nfe.py): every sampler at NFE 5, 10, 20, 50, 100 on the
   tutorial's config and on `--preset recommended-diffusion`, NLL and bound per config, quality_nfe.png (sliced
   W2 against NFE) and quality_nfe_grid.png (the samples);
5. `--preset recommended-diffusion` on moons, swiss_roll and s_curve against each floor;
6. the log of `python -m benchmarks.recipe_search`, which found the preset.
`--sections` runs a subset (the report then holds only those sections).

Training and sampling on either side use the library (jax_ddpm.runner.loop.train_models /
final_samples, torch_reference.train.train_model / final_samples), as tests/test_statistical_parity.py
does; the held-out reference is ddpm_harness.data.held_out_for.
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
from ddpm_harness.config import Config, resolve_preset
from ddpm_harness.data import dataset_for, held_out_for, held_out_points
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.objectives.variance import negative_elbo
from jax_ddpm.runner.draw import final_samples
from jax_ddpm.runner.loop import train_models
from jax_ddpm.schedule import q_sample

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
    return {
        k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows], ddof=1)))
        for k in rows[0]
        if k != "bandwidth"
    }


def fmt(mean_std: tuple[float, float], digits: int = 4) -> str:
    return f"{mean_std[0]:.{digits}f} +- {mean_std[1]:.{digits}f}"


def true_x_T(config: Config, n: int, seed: int) -> np.ndarray:
    """x_T ~ q(x_T) itself: a fresh data draw pushed through q_sample at step T - 1 (a diagnostic:
    a sampler can only start there when it has the data)."""
    x_0 = held_out_points(config.dataset, n, config.data_noise, config.seed, draw=2 + seed)
    noise = jax.random.normal(jax.random.PRNGKey(seed), x_0.shape)
    schedule = run_schedule(config)
    return np.asarray(
        q_sample(
            jnp.asarray(x_0),
            jnp.full((n,), config.num_steps - 1),
            schedule.alphas_bar_sqrt,
            schedule.one_minus_alphas_bar_sqrt,
            noise,
        )
    )


def run_jax(name: str, config: Config, data, reference, n: int, log, x_T_from_data: bool = False) -> dict:
    start = time.perf_counter()
    params = train_models(config, data)
    samples = [final_samples(p, config, config.seed + i, n) for i, p in enumerate(params)]
    out = dict(
        name=name,
        config=config,
        params=params,
        samples=samples,
        metrics=summarize([metrics.evaluate(x, reference) for x in samples]),
    )
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
    return dict(
        name="PyTorch reference", samples=samples, metrics=summarize([metrics.evaluate(x, reference) for x in samples])
    )


def elbo_rows(run: dict, points: np.ndarray) -> dict[str, tuple[float, float]]:
    """Negative ELBO (bits/dim, mean +- std over seeds) with both decoders, and the prior term."""
    config, schedule = run["config"], run_schedule(run["config"])
    rows = {}
    for decoder in ("discretized", "gaussian"):
        key = jax.random.PRNGKey
        values = [
            negative_elbo(p, schedule, points, key(i), config.parameterization, decoder)
            for i, p in enumerate(run["params"])
        ]
        totals = [v["total"] for v in values]
        rows[decoder] = (float(np.mean(totals)), float(np.std(totals, ddof=1)))
        rows["prior"] = (values[0]["prior"], 0.0)
    return rows


def alpha_bar_T(config: Config) -> float:
    return float(run_schedule(config).alphas_prod[-1])


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


def calib_rows(calib: dict, n: int) -> list[str]:
    return [
        f"| floor: two draws of the data | n = {n} | " + " | ".join(f"{calib['floor'][k]:.5f}" for k in METRICS) + " |",
        "| ceiling: N(0, I) vs data | | " + " | ".join(f"{calib['ceiling'][k]:.5f}" for k in METRICS) + " |",
    ]


def parity_lines(base: Config, calib: dict, runs: dict, elbos: dict) -> list[str]:
    """Sections 1-3: parity with the reference, the tutorial's weakness, the variational bound."""
    head = "| run | setting | sliced W2 | MMD^2 | energy |\n|---|---|---|---|---|"
    tut, torch_run = runs["tutorial"], runs["torch"]
    lines = [
        "## 1. Statistical parity: the tutorial's config, JAX vs PyTorch",
        "",
        head,
        metric_row("jax_ddpm", "raw params, x_T ~ N(0, I)", tut["metrics"]),
        metric_row("torch_reference", "raw params, x_T ~ N(0, I)", torch_run["metrics"]),
        *calib_rows(calib, base.n_samples),
        "",
        "## 2. The tutorial's weakness: its forward process ends far from N(0, I)",
        "",
        "| run | alpha_bar_T | sliced W2 | MMD^2 | energy |\n|---|---|---|---|---|",
        metric_row("tutorial (sigmoid 1e-5..5e-3)", f"{alpha_bar_T(tut['config']):.3f}", tut["metrics"]),
        metric_row(
            "same models, x_T ~ q(x_T) (diagnostic)", f"{alpha_bar_T(tut['config']):.3f}", tut["from_q"]["metrics"]
        ),
        metric_row("cosine (s = 0.008)", f"{alpha_bar_T(runs['cosine']['config']):.2e}", runs["cosine"]["metrics"]),
        metric_row(
            f"linear {runs['linear']['config'].beta_start:g}..{runs['linear']['config'].beta_end:g}",
            f"{alpha_bar_T(runs['linear']['config']):.2e}",
            runs["linear"]["metrics"],
        ),
        *calib_rows(calib, base.n_samples),
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
        lines.append(
            f"| {run['config'].loss} ({run['config'].parameterization}) | {fmt(e['discretized'], 3)} | "
            f"{fmt(e['gaussian'], 3)} | {e['prior'][0]:.3f} | "
            + " | ".join(fmt(run["metrics"][k], 4 if k == "sliced_w2" else 5) for k in METRICS)
            + " |"
        )
    return lines + ["", "![samples side by side](quality_samples.png)", ""]


def recipe_lines(recipe_runs: dict) -> list[str]:
    """Section 5: the recommended preset on the tutorial's three datasets, against each floor."""
    lines = [
        "## 5. `--preset recommended-diffusion` on the tutorial's three datasets",
        "",
        "The preset at the tutorial's budget, its own sampler and parameters, "
        "n = 10,000 samples per seed against a held-out draw of 10,000; x floor = sliced W2 / its floor.",
        "",
        "| dataset | sliced W2 | x floor | MMD^2 | energy | floor (sliced W2, MMD^2, energy) | ceiling |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, (run, calib) in recipe_runs.items():
        m, fl, ce = run["metrics"], calib["floor"], calib["ceiling"]
        lines.append(
            f"| {dataset} | {fmt(m['sliced_w2'], 4)} | {m['sliced_w2'][0] / fl['sliced_w2']:.2f} | "
            f"{fmt(m['mmd2'], 5)} | {fmt(m['energy'], 5)} | {fl['sliced_w2']:.4f}, {fl['mmd2']:.5f}, "
            f"{fl['energy']:.5f} | {ce['sliced_w2']:.3f}, {ce['mmd2']:.4f}, {ce['energy']:.4f} |"
        )
    return lines + [""]


def write_report(path: Path, base: Config, sections: dict[str, list[str]], seconds: float) -> None:
    lines = [
        "# Sample quality: measured, not eyeballed",
        "",
        f"`python -m benchmarks.quality` (this file: {base.epochs} epochs, {base.n_points} points, batch "
        f"{base.batch_size}, {base.seeds} seeds per run, {base.n_samples} samples per seed scored against a "
        f"held-out draw of {base.n_samples} points; sections {', '.join(sections)}; {seconds / 60:.0f} min on the "
        "shared 2-core CPU). Metrics: `ddpm_harness.metrics.evaluate` (sliced W2 over 64 fixed directions; "
        "unbiased MMD^2, RBF kernel, median-heuristic bandwidth; squared energy distance). Mean +- std over "
        "seeds (sample std, ddof 1). Lower is better; read each value against the floor and the ceiling, "
        "calibrated at the same n (`metrics.calibrate`).",
        "",
    ]
    for section_lines in sections.values():
        lines += section_lines
    path.write_text("\n".join(lines))


SECTIONS = ("parity", "nfe", "recipe", "search")


def nfe_section(configs: dict, n: int, out: Path, log) -> list[str]:
    from benchmarks import quality_nfe

    lines = [
        "## 4. Quality against cost: every sampler at NFE 5 to 100",
        "",
        quality_nfe.__doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
        "",
        "![sliced W2 against NFE](quality_nfe.png)",
        "",
        "![samples of each sampler and NFE](quality_nfe_grid.png)",
        "",
    ]
    return lines + quality_nfe.run_section(configs, n, 1000, out, log)


def search_section(log_path: Path) -> list[str]:
    from benchmarks import recipe_search

    return [
        "## 6. How the diffusion recipe was found",
        "",
        f"`python -m benchmarks.recipe_search` (log: `{log_path.name}`): each candidate trained at the "
        "tutorial's budget (1000 epochs, 10,000 points, batch 128, 3 seeds), with EMA decays 0.999, "
        "0.9995 and 0.9999 tracked in the same run; first every parameter set sampled with the tutorial's "
        "sampler (ddpm for v and x0 models), then every sampler with the best parameter set. Sliced W2 at "
        "n = 10,000, mean over seeds; the three best pairs per candidate:",
        "",
        recipe_search.report(log_path),
        "",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1000, help="epochs per run (the tutorial: 1000)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per side and per run (>= 2)")
    parser.add_argument("--n-points", type=int, default=10_000, help="training points (the tutorial: 10,000)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for quality.md and its pictures")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated sections to run: parity (1-3, with the PyTorch reference), nfe (4: "
        "samplers against NFE), recipe (5: --preset recommended-diffusion on three datasets), search "
        "(6: the recipe search's log)",
    )
    parser.add_argument("--search-log", type=Path, default=RESULTS / "recipe_search.jsonl")
    args = parser.parse_args(argv)
    wanted = args.sections.split(",")
    if args.seeds < 2 or args.epochs < 1 or args.n_points < 2 or not set(wanted) <= set(SECTIONS):
        print(
            "error: --seeds must be >= 2 (a spread needs two), --epochs and --n-points positive, --sections "
            f"among {', '.join(SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)  # noqa: E731
    base = Config(epochs=args.epochs, seeds=args.seeds, n_points=args.n_points, n_samples=args.n_points)
    recommended = resolve_preset(dataclasses.replace(base, preset="recommended-diffusion"))
    data = dataset_for(base)
    reference = held_out_for(base, base.n_samples)
    calib = metrics.calibration(base.dataset, base.n_samples, base.data_noise, base.seed)
    n = base.n_samples
    sections, runs, recipe_runs = {}, {}, {}
    if "parity" in wanted:
        runs["tutorial"] = run_jax("jax tutorial", base, data, reference, n, log, x_T_from_data=True)
        runs["torch"] = run_torch(dataclasses.replace(base), data, reference, n, log)
        runs["cosine"] = run_jax("jax cosine", dataclasses.replace(base, schedule="cosine"), data, reference, n, log)
        runs["linear"] = run_jax(
            "jax linear",
            dataclasses.replace(base, schedule="linear", beta_start=1e-4, beta_end=0.1),
            data,
            reference,
            n,
            log,
        )
        for loss in ("variational", "hybrid"):
            runs[loss] = run_jax(f"jax {loss}", dataclasses.replace(base, loss=loss), data, reference, n, log)
        elbos = {key: elbo_rows(runs[key], reference) for key in ("tutorial", "variational", "hybrid")}
        log(f"elbo: {elbos}")
        draw(
            [
                ("data (held out)", reference),
                ("torch, tutorial", runs["torch"]["samples"][0]),
                ("jax, tutorial", runs["tutorial"]["samples"][0]),
                ("jax, same model, x_T ~ q(x_T)", runs["tutorial"]["from_q"]["samples"][0]),
                ("jax, cosine", runs["cosine"]["samples"][0]),
                ("jax, linear to 0.1", runs["linear"]["samples"][0]),
                ("jax, --loss variational", runs["variational"]["samples"][0]),
                ("jax, --loss hybrid", runs["hybrid"]["samples"][0]),
            ],
            args.out / "quality_samples.png",
        )
        sections["parity"] = parity_lines(base, calib, runs, elbos)
    if "recipe" in wanted or "nfe" in wanted:
        for dataset in ("moons", "swiss_roll", "s_curve") if "recipe" in wanted else ("moons",):
            config = dataclasses.replace(recommended, dataset=dataset)
            recipe_runs[dataset] = (
                run_jax(f"recommended {dataset}", config, dataset_for(config), held_out_for(config, n), n, log),
                metrics.calibration(dataset, n, config.data_noise, config.seed),
            )
    if "nfe" in wanted:
        tutorial = runs.get("tutorial") or run_jax("jax tutorial", base, data, reference, n, log)
        configs = {
            "the tutorial's config (moons)": (base, tutorial["params"]),
            "--preset recommended-diffusion (moons)": (recommended, recipe_runs["moons"][0]["params"]),
        }
        sections["nfe"] = nfe_section(configs, n, args.out, log)
    if "recipe" in wanted:
        sections["recipe"] = recipe_lines(recipe_runs)
    if "search" in wanted and args.search_log.is_file():
        sections["search"] = search_section(args.search_log)
    write_report(args.out / "quality.md", base, sections, time.perf_counter() - start)
    log(f"wrote {args.out / 'quality.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
