"""Write the benchmark results: JSON (everything), markdown tables, and a PNG of the scaling."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _train_table(results: dict) -> list[str]:
    base = results["training"]["torch eager (tutorial)"]["median"]
    best_torch = max(r["median"] for name, r in results["training"].items() if name.startswith("torch"))
    lines = ["| variant | steps/s median | steps/s best | x torch eager | x best torch | of roofline | first call s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results["training"].items():
        lines.append(f"| {name} | {_fmt(r['median'])} | {_fmt(r['best'])} | {r['median'] / base:.2f} | "
                     f"{r['median'] / best_torch:.2f} | {100 * r['roofline_fraction']:.1f}% | {r['first_call_s']:.2f} |")
    return lines


def _sampling_table(results: dict) -> list[str]:
    base = results["sampling"]["torch no_grad"]["median_s"]
    lines = ["| variant | seconds median | seconds best | x torch no_grad | of roofline | first call s |",
             "|---|---|---|---|---|---|"]
    for name, r in results["sampling"].items():
        lines.append(f"| {name} | {r['median_s']:.3f} | {r['best_s']:.3f} | {base / r['median_s']:.2f} | "
                     f"{100 * r['roofline_fraction']:.1f}% | {r['first_call_s']:.2f} |")
    return lines


def _scaling_tables(results: dict) -> list[str]:
    lines = ["| batch | " + " | ".join(results["batch_scaling"]) + " |",
             "|---|" + "---|" * len(results["batch_scaling"])]
    batches = next(iter(results["batch_scaling"].values()))
    for batch in batches:
        cells = [f"{_fmt(v[batch]['median'])} steps/s ({_fmt(v[batch]['median'] * int(batch))} points/s)"
                 for v in results["batch_scaling"].values()]
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    on_devices = results.get("seed_scaling_2_devices", {})
    lines += ["", "| seeds K | model-steps/s median | per model | of roofline | --devices 2 (seeds split) | of roofline |",
              "|---|---|---|---|---|---|"]
    for k, r in results["seed_scaling"].items():
        split = on_devices.get(k)
        split_cells = (f"{_fmt(split['median'])} | {100 * split['roofline_fraction']:.1f}%" if split else "- | -")
        lines.append(f"| {k} | {_fmt(r['median'])} | {_fmt(r['median'] / int(k))} | "
                     f"{100 * r['roofline_fraction']:.1f}% | {split_cells} |")
    return lines


def write_markdown(results: dict, path: Path, chart_name: str) -> None:
    m = results["machine"]
    lines = [f"# Benchmark: {m['device']}", "",
             f"Command: `{results['command']}` ({'quick smoke run' if results['quick'] else 'full run'}, "
             f"{results['wall_s']:.0f} s). All numbers from this one run; the machine is shared, so ratios "
             "within the run are what count.", "",
             "## Machine", "",
             f"- device: {m['device']}; {m['cores']} cores; load average at start {m['load_start']}, at end {m['load_end']}",
             f"- python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, flax {m['flax']}, optax {m['optax']}, torch {m['torch']}",
             f"- XLA_FLAGS: `{m['xla_flags'] or '(none)'}`; JAX matmul precision: {m['jax_matmul_precision']}; "
             f"torch threads: {m['torch_threads']} (OMP_WAIT_POLICY={m['omp_wait_policy']}); torch float32 matmul precision: {m['torch_matmul_precision']}",
             "", "## Roofline", "",
             f"- measured large float32 matmul ({results['roofline']['matmul_size']}^2): JAX "
             f"{results['roofline']['jax_gflops']:.0f} GFLOP/s, torch {results['roofline']['torch_gflops']:.0f} GFLOP/s; "
             f"bound = the larger, {results['roofline']['peak_gflops']:.0f} GFLOP/s",
             f"- analytic FLOPs (benchmarks/flops.py): training step at batch 128 "
             f"{results['roofline']['train_step_mflop']:.1f} MFLOP (forward, backward ~2x forward, clip + Adam + EMA "
             f"over {results['roofline']['n_params']:,} parameters) -> bound {results['roofline']['train_steps_per_s']:,.0f} steps/s; "
             f"sampling chain {results['roofline']['sampling_gflop']:.1f} GFLOP -> bound {results['roofline']['sampling_s']:.3f} s",
             "", "## Training, batch 128 (moons, 10,000 points, 79 steps an epoch)", ""]
    lines += _train_table(results)
    lines += ["", "JAX `--seeds K` rows count model-steps (K models each take a step). 'first call' is compile "
              "(and warm-up) time, kept apart from the steady-state rates.", "",
              f"## Sampling {results['sampling_points']:,} points x 100 steps", ""]
    lines += _sampling_table(results)
    lines += ["", "## Scaling", "", f"![scaling]({chart_name})", ""]
    lines += _scaling_tables(results)
    if results.get("end_to_end"):
        lines += ["", "## End to end (subprocesses, `--no-plots`)", "", "| command | wall s | note |", "|---|---|---|"]
        for name, r in results["end_to_end"].items():
            lines.append(f"| `{name}` | {r['wall_s']:.1f} | {r['note']} |")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    path.write_text("\n".join(lines) + "\n")


def write_chart(results: dict, path: Path) -> None:
    fig, (ax_b, ax_k) = plt.subplots(1, 2, figsize=(11, 4))
    for name, by_batch in results["batch_scaling"].items():
        batches = [int(b) for b in by_batch]
        ax_b.plot(batches, [by_batch[b]["median"] * int(b) for b in by_batch], "o-", label=name)
    ax_b.set(xscale="log", yscale="log", xlabel="batch size", ylabel="training points / s",
             title="Training throughput vs batch size")
    ax_b.legend()
    ks = [int(k) for k in results["seed_scaling"]]
    ax_k.plot(ks, [r["median"] for r in results["seed_scaling"].values()], "o-", label="JAX vmap over seeds")
    on_devices = results.get("seed_scaling_2_devices", {})
    if on_devices:
        ax_k.plot([int(k) for k in on_devices], [r["median"] for r in on_devices.values()], "s-",
                  label="JAX seeds split over 2 devices")
    ax_k.axhline(results["roofline"]["train_steps_per_s"], color="gray", ls="--", label="roofline")
    ax_k.axhline(results["training"]["torch eager (tutorial)"]["median"], color="C3", ls=":", label="torch eager, 1 model")
    ax_k.set(xscale="log", yscale="log", xlabel="seeds K (models trained at once)", ylabel="model-steps / s",
             title="Many models at once (batch 128)")
    ax_k.legend()
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
