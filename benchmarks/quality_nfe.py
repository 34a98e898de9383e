"""Quality against cost: every sampler at NFE 5, 10, 20, 50, 100 on trained models (a section of
`python -m benchmarks.quality`).

The fixed-step samplers (ddpm, ddim with eta = 0, dpm-solver++) visit K = NFE of the T steps with
"trailing" spacing (Lin et al. 2024: the first step at t = T-1, the only spacing that starts where
the forward process ends for every K; diffusers' defaults, leading and linspace, start at t = 80 for
K = 5 or repeat steps). The ODE is adaptive: it runs at tolerances rtol = atol = 1e-1 .. 1e-5 and
reports its NFE as network evaluations (each of its vector-field evaluations interpolates two
integer steps, `samplers.interpolate_steps`: two evaluations of the network). The tutorial's
sampler is one point at NFE = T. Seeds are sampled at once (vmapped), each with its own key.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_harness import metrics
from ddpm_harness.config import Config
from ddpm_harness.data import held_out_for
from jax_ddpm.evaluate import likelihoods_in_data_units
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.runner.draw import sample_states

NFES = (5, 10, 20, 50, 100)
FIXED_STEP = ("ddpm", "ddim", "dpm-solver++")
ODE_TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
METRICS = ("sliced_w2", "mmd2", "energy")
COLORS = {"tutorial": "k", "ddpm": "tab:blue", "ddim": "tab:orange", "dpm-solver++": "tab:green", "ode": "tab:red"}


def settings(config: Config) -> list[tuple[str, Config]]:
    """(sampler, sampling config) of the sweep, in the order of the report."""
    out = []
    if config.prediction == "eps":
        out.append(("tutorial", dataclasses.replace(config, sampler="tutorial", sample_steps=None)))
    for name in FIXED_STEP:
        for k in NFES:
            if k <= config.num_steps:
                out.append(
                    (
                        name,
                        dataclasses.replace(config, sampler=name, sample_steps=k, eta=0.0, timestep_spacing="trailing"),
                    )
                )
    for tol in ODE_TOLERANCES:
        out.append(("ode", dataclasses.replace(config, sampler="ode", sample_steps=None, ode_rtol=tol, ode_atol=tol)))
    return out


def stack(params_list: list[dict]) -> dict:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *params_list)


def summarize(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """metric -> (mean, std over seeds, ddof 1); NaN where a seed diverged."""
    return {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows], ddof=1))) for k in METRICS}


def sweep(label: str, config: Config, params_list: list[dict], reference: np.ndarray, n: int, log) -> dict:
    """Every setting of `settings` for the seeds' parameters: rows of metrics, and seed 0's samples."""
    schedule = run_schedule(config)
    params = stack(params_list)
    seeds_config = dataclasses.replace(config, seeds=len(params_list))
    rows = []
    for sampler, sampling in settings(seeds_config):
        start = time.perf_counter()
        states, nfe = sample_states(params, schedule, sampling, n)
        samples = states[:, -1]  # (seeds, n, 2)
        network_nfe = 2 * nfe if sampler == "ode" else nfe
        scored = [
            metrics.evaluate(x, reference) if np.isfinite(x).all() else {k: float("nan") for k in METRICS}
            for x in samples
        ]
        row = dict(
            sampler=sampler,
            nfe=network_nfe,
            metrics=summarize(scored),
            samples=samples[0],
            tolerance=sampling.ode_rtol if sampler == "ode" else None,
        )
        rows.append(row)
        log(
            f"{label} {sampler} NFE {network_nfe}: sliced W2 {row['metrics']['sliced_w2'][0]:.4f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    return dict(label=label, config=config, rows=rows)


def likelihoods(config: Config, params_list: list[dict], points: np.ndarray, log) -> dict:
    """NLL through the ODE and the bound (gaussian decoder), mean +- std over seeds, in bits/dim of the
    data (with --normalize, computed in model units and shifted as `python -m jax_ddpm.evaluate` does)."""
    nlls, bounds = likelihoods_in_data_units(config, params_list, run_schedule(config), points, "gaussian")
    out = {}
    if all("bits_per_dim" in r for r in nlls):
        values = [r["bits_per_dim"] for r in nlls]
        out["nll"] = (float(np.mean(values)), float(np.std(values, ddof=1)))
    values = [r["total"] for r in bounds]
    out["bound"] = (float(np.mean(values)), float(np.std(values, ddof=1)))
    log(f"likelihood: {out}")
    return out


def fmt(mean_std, digits: int) -> str:
    return f"{mean_std[0]:.{digits}f} +- {mean_std[1]:.{digits}f}"


def report_lines(result: dict, calib: dict, likelihood: dict, n_points: int) -> list[str]:
    floor = calib["floor"]["sliced_w2"]
    lk = f"NLL through the probability-flow ODE {fmt(likelihood['nll'], 3)} bits/dim, " if "nll" in likelihood else ""
    lines = [
        f"**{result['label']}** ({describe(result['config'])}). {lk}variational bound (gaussian decoder) "
        f"{fmt(likelihood['bound'], 3)} bits/dim, on {n_points:,} held-out points.",
        "",
        "| sampler | NFE | sliced W2 | x floor | MMD^2 | energy |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        m = row["metrics"]
        extra = f" (tol {row['tolerance']:g})" if row["tolerance"] else ""
        lines.append(
            f"| {row['sampler']}{extra} | {row['nfe']} | {fmt(m['sliced_w2'], 4)} | "
            f"{m['sliced_w2'][0] / floor:.1f} | {fmt(m['mmd2'], 5)} | {fmt(m['energy'], 5)} |"
        )
    lines.append(
        "| floor: two draws of the data | | " + f"{calib['floor']['sliced_w2']:.4f} | 1.0 | "
        f"{calib['floor']['mmd2']:.5f} | {calib['floor']['energy']:.5f} |"
    )
    lines.append(
        "| ceiling: N(0, I) vs data | | " + f"{calib['ceiling']['sliced_w2']:.4f} | "
        f"{calib['ceiling']['sliced_w2'] / floor:.0f} | {calib['ceiling']['mmd2']:.5f} | "
        f"{calib['ceiling']['energy']:.5f} |"
    )
    return lines


def describe(config: Config) -> str:
    parts = [
        f"{config.schedule} {config.beta_start:g}..{config.beta_end:g}" if config.schedule != "cosine" else "cosine",
        f"--prediction {config.prediction}",
        f"--ema-decay {config.ema_decay:g}",
        f"--sample-with {config.sample_with}",
    ]
    if config.zero_terminal_snr:
        parts.append("--zero-terminal-snr")
    if config.normalize:
        parts.append("--normalize")
    if getattr(config, "lr_schedule", "constant") != "constant":
        parts.append(f"--lr-schedule {config.lr_schedule}")
    return ", ".join(parts)


def draw_chart(results: list[dict], calib: dict, path: Path) -> None:
    """quality_nfe.png: sliced W2 against NFE, one line per sampler, one panel per config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, result in zip(axes[0], results):
        for sampler in COLORS:
            rows = [r for r in result["rows"] if r["sampler"] == sampler]
            if not rows:
                continue
            x = [r["nfe"] for r in rows]
            y = [r["metrics"]["sliced_w2"][0] for r in rows]
            err = [r["metrics"]["sliced_w2"][1] for r in rows]
            ax.errorbar(
                x,
                y,
                yerr=err,
                marker="o",
                ms=4,
                capsize=2,
                color=COLORS[sampler],
                label=sampler,
                ls="none" if len(rows) == 1 else "-",
            )
        ax.axhline(calib["floor"]["sliced_w2"], color="gray", ls="--", lw=1, label="floor (two data draws)")
        ax.axhline(calib["ceiling"]["sliced_w2"], color="gray", ls=":", lw=1, label="ceiling (N(0, I))")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE (network evaluations)")
        ax.set_ylabel("sliced W2 (mean +- std over seeds)")
        ax.set_title(result["label"], fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_grid(result: dict, reference: np.ndarray, path: Path) -> None:
    """quality_nfe_grid.png: seed 0's samples, one row per sampler, one column per NFE setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samplers = [s for s in COLORS if s != "tutorial"]
    cols = max(sum(r["sampler"] == s for r in result["rows"]) for s in samplers)
    fig, axes = plt.subplots(len(samplers), cols + 1, figsize=(2.2 * (cols + 1), 2.2 * len(samplers)), squeeze=False)
    lo, hi = reference.min(axis=0) - 0.3 * np.ptp(reference, axis=0), reference.max(axis=0) + 0.3 * np.ptp(reference, 0)
    for i, sampler in enumerate(samplers):
        rows = [r for r in result["rows"] if r["sampler"] == sampler]
        panels = [("data (held out)", reference, None)] + [(f"{sampler} NFE {r['nfe']}", r["samples"], r) for r in rows]
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(panels):
                ax.axis("off")
                continue
            title, points, row = panels[j]
            ax.scatter(points[:, 0], points[:, 1], s=0.3, c="k", alpha=0.4, linewidths=0)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            if row is not None:
                title += f"\nsliced W2 {row['metrics']['sliced_w2'][0]:.3f}"
            ax.set_title(title, fontsize=7)
    fig.suptitle(result["label"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_section(configs: dict[str, tuple[Config, list[dict]]], n: int, n_likelihood: int, out: Path, log) -> list[str]:
    """The section's markdown lines; writes quality_nfe.png and quality_nfe_grid.png into `out`.
    configs: label -> (config, trained parameters of each seed)."""
    results, lines = [], []
    for label, (config, params_list) in configs.items():
        reference = held_out_for(config, n)
        calib = metrics.calibration(config.dataset, n, config.data_noise, config.seed)
        result = sweep(label, config, params_list, reference, n, log)
        likelihood = likelihoods(config, params_list, held_out_for(config, n_likelihood), log)
        lines += report_lines(result, calib, likelihood, n_likelihood) + [""]
        results.append(result)
    calib = metrics.calibration(
        results[0]["config"].dataset, n, results[0]["config"].data_noise, results[0]["config"].seed
    )
    draw_chart(results, calib, out / "quality_nfe.png")
    draw_grid(results[-1], held_out_for(results[-1]["config"], n), out / "quality_nfe_grid.png")
    return lines
