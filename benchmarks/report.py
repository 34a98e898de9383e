"""Write the benchmark results: JSON (everything), markdown tables, and a PNG of the scaling.

Works on any results dict `benchmarks.run` writes (CPU or GPU, full, quick or dry run); a row or
section that a run skipped or lost to a failure is left out and named under "Skipped or failed".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ddpm_harness.runs import time_breakdown  # noqa: E402

TORCH_EAGER = "torch eager (tutorial)"
NO_GRAD = "torch no_grad"


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _ratio(x: Optional[float], base: Optional[float]) -> str:
    return f"{x / base:.2f}" if x and base else "-"


def _is_float32(r: dict) -> bool:
    return r.get("precision", "float32") == "float32"


def _train_table(results: dict) -> list[str]:
    training = results["training"]
    base = training.get(TORCH_EAGER, {}).get("median")
    best_torch = max(
        (r["median"] for name, r in training.items() if name.startswith("torch") and _is_float32(r)), default=None
    )
    one_core = "single_core" in results
    lines = [
        "| variant | steps/s median | steps/s best | x torch eager | x best torch | of roofline | "
        + ("of 1-core bound | " if one_core else "")
        + "first call s |",
        "|---|---|---|---|---|---|---|" + ("---|" if one_core else ""),
    ]
    for name, r in training.items():
        core = ""
        if one_core:
            one_model = "--seeds" not in name and "single_core_fraction" in r
            core = f"{100 * r['single_core_fraction']:.0f}% | " if one_model else "- | "
        lines.append(
            f"| {name} | {_fmt(r['median'])} | {_fmt(r['best'])} | {_ratio(r['median'], base)} | "
            f"{_ratio(r['median'], best_torch)} | {100 * r['roofline_fraction']:.1f}% | {core}"
            f"{r['first_call_s']:.2f} |"
        )
    return lines


def _sampling_table(results: dict) -> list[str]:
    base = results["sampling"].get(NO_GRAD, {}).get("median_s")
    lines = [
        "| variant | seconds median | seconds best | x torch no_grad | of roofline | first call s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["sampling"].items():
        speedup = f"{base / r['median_s']:.2f}" if base else "-"
        lines.append(
            f"| {name} | {r['median_s']:.3f} | {r['best_s']:.3f} | {speedup} | "
            f"{100 * r['roofline_fraction']:.1f}% | {r['first_call_s']:.2f} |"
        )
    return lines


def _options_table(results: dict) -> list[str]:
    m = results["machine"]
    lines = [
        "## Per-program XLA:CPU options on this CPU",
        "",
        f"jax_ddpm chooses them by the CPU's vector ISA ({m['isa']} here; `jax_ddpm/speed.py`). Each program "
        "with every option set some ISA uses, and with none, measured in turn in this run:",
        "",
        "| program | options | seconds median | x none | chosen here |",
        "|---|---|---|---|---|",
    ]
    for program, by_set in results["cpu_options"].items():
        for label, r in by_set.items():
            lines.append(
                f"| {program} | `{label}` | {r['median_s']:.3f} | {r['x_none']:.2f} | {'yes' if r['chosen'] else ''} |"
            )
    return lines + [""]


def _compile_cache_table(results: dict) -> list[str]:
    lines = [
        "## Compile cache (the default training chunk)",
        "",
        "Two fresh processes compile the chunk `python -m jax_ddpm.train` compiles, into and then from a new, "
        "empty persistent cache folder (`benchmarks/compile_cache_bench.py`); apart from the steady-state "
        "rates above.",
        "",
        "| process | trace + lower s | compile s | cache hits | cache misses |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["compile_cache"].items():
        lines.append(
            f"| {name} | {r['lower_s']:.2f} | {r['compile_s']:.2f} | {r['cache_hits']} | {r['cache_misses']} |"
        )
    return lines + [""]


def _scaling_tables(results: dict) -> list[str]:
    lines = []
    batches = [b for by in results["batch_scaling"].values() for b in by]
    if batches:
        lines += [
            "| batch | " + " | ".join(results["batch_scaling"]) + " |",
            "|---|" + "---|" * len(results["batch_scaling"]),
        ]
        for batch in dict.fromkeys(batches):
            cells = [
                f"{_fmt(v[batch]['median'])} steps/s ({_fmt(v[batch]['median'] * int(batch))} points/s)"
                if batch in v
                else "-"
                for v in results["batch_scaling"].values()
            ]
            lines.append(f"| {batch} | " + " | ".join(cells) + " |")
        lines.append("")
    on_devices = results.get("seed_scaling_2_devices", {})
    lines += [
        "K = 1 is the scan-fused row of the training table (the same program).",
        "",
        "| seeds K | model-steps/s median | per model | of roofline | --devices 2 (seeds split) | of roofline |",
        "|---|---|---|---|---|---|",
    ]
    for k, r in results["seed_scaling"].items():
        split = on_devices.get(k)
        split_cells = f"{_fmt(split['median'])} | {100 * split['roofline_fraction']:.1f}%" if split else "- | -"
        lines.append(
            f"| {k} | {_fmt(r['median'])} | {_fmt(r['median'] / int(k))} | "
            f"{100 * r['roofline_fraction']:.1f}% | {split_cells} |"
        )
    return lines


def _sweep_table(results: dict) -> list[str]:
    """The sweep section (benchmarks/sweep_bench.py): K models of one group in one compiled program."""
    table = results.get("sweep_scaling") or {}
    if not table:
        return []
    columns = list(table)
    ks = sorted({int(k) for rows in table.values() for k in rows})
    lines = [
        "## Many models: a sweep's program",
        "",
        "Total model-steps/s of `jax_ddpm.runner.sweep.make_sweep_chunk` (what `python -m jax_ddpm.sweep` compiles) "
        "for K configurations of one group (learning rates 1e-4 .. 1e-3, each model its own optimizer "
        "values), moons, batch 128; with 2 host devices each trains K / 2 of them; on a CPU more than 4 on a device "
        "train in blocks of up to 4 (`jax_ddpm.runner.sweep.MODEL_BLOCKS`). Of roofline = "
        "model-steps/s x FLOPs per step / the roofline above. What was tried: docs/sweep.md.",
        "",
        "| K | " + " | ".join(f"{c}: model-steps/s | per model | of roofline" for c in columns) + " |",
        "|---|" + "---|---|---|" * len(columns),
    ]
    for k in ks:
        cells = []
        for c in columns:
            r = table[c].get(str(k))
            cells += (
                [_fmt(r["median"]), _fmt(r["median"] / k), f"{100 * r['roofline_fraction']:.1f}%"]
                if r
                else ["-", "-", "-"]
            )
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines + [""]


def _machine_lines(results: dict) -> list[str]:
    m = results["machine"]
    lines = [
        f"- device: {m['device']}; {m['cores']} CPU cores; load average at start {m['load_start']}, "
        f"at end {m.get('load_end', '?')}"
    ]
    if results.get("kind", "cpu") == "cpu" or results.get("dry_run"):
        options = m.get("xla_cpu_options", {})
        lines.append(
            f"- CPU: {m['cpu_model']}; vector ISA: **{m['isa']}**; per-program XLA:CPU options chosen "
            f"for it: training `{options.get('training') or 'none'}`, "
            f"sampling `{options.get('sampling') or 'none'}`"
        )
    else:
        lines.append(
            f"- GPU: {m['device']} (torch: {m['torch_device']}, CUDA {m['torch_cuda']}); host CPU "
            f"{m['cpu_model']} ({m['isa']})"
        )
    lines += [
        f"- python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, flax {m['flax']}, optax {m['optax']}, "
        f"torch {m['torch']}",
        f"- XLA_FLAGS: `{m['xla_flags'] or '(none)'}`; torch threads: {m['torch_threads']} "
        f"(OMP_WAIT_POLICY={m['omp_wait_policy']})",
        f"- float32 matmul precision: JAX `{m['jax_matmul_precision']}`; torch `{m['torch_matmul_precision']}`, "
        f"TF32 {'allowed' if m['torch_allow_tf32'] else 'off'}"
        + (
            "; rows named 'TF32 matmuls' switch TF32 on for that variant alone and stay out of the "
            "'x best torch' column and the targets"
            if results.get("kind") == "gpu"
            else ""
        ),
    ]
    return lines


def write_markdown(results: dict, path: Path, chart_name: str) -> None:
    m, roof = results["machine"], results["roofline"]
    run_kind = "dry run" if results.get("dry_run") else "quick smoke run" if results["quick"] else "full run"
    lines = [f"# Benchmark: {m['device']}" + (f" ({m['isa']})" if results.get("kind", "cpu") == "cpu" else ""), ""]
    if not results.get("complete", True):
        lines += [
            f"**INCOMPLETE**: written after the section '{results.get('last_section', '?')}'; the run had "
            "not finished (a later rewrite replaces this file).",
            "",
        ]
    if results.get("dry_run"):
        lines += [
            "**DRY RUN**: every variant built and called once at tiny sizes on the CPU. The numbers mean "
            "nothing; this file only shows that the run goes through.",
            "",
        ]
    lines += [
        f"Command: `{results['command']}` ({run_kind}, {results['wall_s']:.0f} s). All numbers from this one "
        "run; the machine may be shared, so ratios within the run are what count.",
        "",
        "## Machine",
        "",
    ]
    lines += _machine_lines(results)
    lines += [
        "",
        "## Roofline",
        "",
        f"- measured large float32 matmul ({roof['matmul_size']}^2): JAX {roof['jax_gflops']:,.0f} GFLOP/s, "
        f"torch {roof['torch_gflops']:,.0f} GFLOP/s; bound = the larger, {roof['peak_gflops']:,.0f} GFLOP/s",
        "- analytic FLOPs (benchmarks/flops.py): training step at batch 128 "
        f"{roof['train_step_mflop']:.1f} MFLOP "
        f"(forward, backward ~2x forward, clip + Adam + EMA over {roof['n_params']:,} parameters) -> bound "
        f"{roof['train_steps_per_s']:,.0f} steps/s; sampling chain {roof['sampling_gflop']:.1f} GFLOP -> bound "
        f"{roof['sampling_s']:.3f} s",
    ]
    if "single_core" in results:
        sc = results["single_core"]
        lines.append(
            f"- single-core bound: the model's 128x128x128 float32 matmuls, {sc['matmuls']:,} in one compiled "
            f"loop, on ONE core ({sc['method']}; process CPU time / wall time {sc['cpu_per_wall']:.2f}): "
            f"{sc['gflops_best']:.0f} GFLOP/s best, {sc['gflops_median']:.0f} median -> bound "
            f"{sc['train_steps_per_s']:,.0f} steps/s. One model's step is a serial chain XLA:CPU runs on one "
            "thread, so its rows are also given as a fraction of this bound (`of 1-core bound`)."
        )
    lines += ["", "## Training, batch 128 (moons, 10,000 points, 79 steps an epoch)", ""]
    lines += _train_table(results)
    lines += [
        "",
        "JAX `--seeds K` rows count model-steps (K models each take a step). 'first call' is compile "
        "(and warm-up) time, kept apart from the steady-state rates.",
        "",
    ]
    if results.get("cpu_options"):
        lines += _options_table(results)
    lines += [f"## Sampling {results['sampling_points']:,} points x 100 steps", ""]
    lines += _sampling_table(results)
    lines.append("")
    if results.get("compile_cache"):
        lines += _compile_cache_table(results)
    lines += ["## Scaling", "", f"![scaling]({chart_name})", ""]
    lines += _scaling_tables(results)
    if results.get("sweep_scaling"):
        lines += [""] + _sweep_table(results)
    if results.get("end_to_end"):
        lines += ["", "## End to end (subprocesses, `--no-plots`)", "", "| command | wall s | note |", "|---|---|---|"]
        for name, r in results["end_to_end"].items():
            breakdown = f"; {time_breakdown(r['timings'])}" if r.get("timings") else ""
            lines.append(f"| `{name}` | {r['wall_s']:.1f} | {r['note']}{breakdown} |")
    sweeps = [results[k] for k in ("sweep_finish_cold", "sweep_finish", "sweep_finish_run_n") if results.get(k)]
    if sweeps:
        lines += ["", "| sweep | models | wall s | note | breakdown |", "|---|---|---|---|---|"]
        for r in sweeps:
            lines.append(
                f"| `{r['command']}` | {r['models']} | {r['wall_s']:.1f} | {r['note']} | "
                f"{time_breakdown(r['timings'])} |"
            )
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in results["targets"]:
        met = "not measured" if t["met"] is None else "yes" if t["met"] else "NO"
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    left_out = {
        **{k: f"skipped: {v}" for k, v in results.get("skipped", {}).items()},
        **{k: f"FAILED: {v}" for k, v in results.get("failed", {}).items()},
    }
    if left_out:
        lines += ["", "## Skipped or failed", ""] + [f"- {k}: {v}" for k, v in left_out.items()]
    notes = results.get("notes", []) + results.get("notes_missed", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path.write_text("\n".join(lines) + "\n")


def write_chart(results: dict, path: Path) -> None:
    fig, (ax_b, ax_k) = plt.subplots(1, 2, figsize=(11, 4))
    ax_b.set(xlabel="batch size", ylabel="training points / s", title="Training throughput vs batch size")
    if any(results["batch_scaling"].values()):
        for name, by_batch in results["batch_scaling"].items():
            if by_batch:
                ax_b.plot(
                    [int(b) for b in by_batch], [by_batch[b]["median"] * int(b) for b in by_batch], "o-", label=name
                )
        ax_b.set(xscale="log", yscale="log")
        ax_b.legend()
    else:
        ax_b.text(0.5, 0.5, "not measured", ha="center", transform=ax_b.transAxes)
    ax_k.set(
        xlabel="seeds K (models trained at once)", ylabel="model-steps / s", title="Many models at once (batch 128)"
    )
    if results["seed_scaling"]:
        ks = [int(k) for k in results["seed_scaling"]]
        ax_k.plot(ks, [r["median"] for r in results["seed_scaling"].values()], "o-", label="JAX vmap over seeds")
        on_devices = results.get("seed_scaling_2_devices", {})
        if on_devices:
            ax_k.plot(
                [int(k) for k in on_devices],
                [r["median"] for r in on_devices.values()],
                "s-",
                label="JAX seeds split over 2 devices",
            )
        ax_k.axhline(results["roofline"]["train_steps_per_s"], color="gray", ls="--", label="roofline")
        if "single_core" in results:
            ax_k.axhline(results["single_core"]["train_steps_per_s"], color="C2", ls="-.", label="single-core bound")
        if TORCH_EAGER in results["training"]:
            ax_k.axhline(results["training"][TORCH_EAGER]["median"], color="C3", ls=":", label="torch eager, 1 model")
        ax_k.set(xscale="log", yscale="log")
        ax_k.legend()
    else:
        ax_k.text(0.5, 0.5, "not measured", ha="center", transform=ax_k.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(results: dict, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}_scaling.png"]
    paths[0].write_text(json.dumps(results, indent=1) + "\n")
    write_chart(results, paths[2])
    write_markdown(results, paths[1], paths[2].name)
    return paths
