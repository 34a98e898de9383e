"""`python -m benchmarks.run --device cpu|gpu|auto [--quick] [--out benchmarks/results]`

Measures, in ONE run on one device, training steps/s (torch as the tutorial writes it, the
strongest torch step, JAX jitted step from Python, JAX scan-fused epochs, JAX --devices,
JAX --seeds K), sampling time, scaling with batch size and K, the roofline, and (full runs)
the end-to-end CLIs; then writes <out>/<cpu|gpu>.md, .json and _scaling.png. `--quick` is a
CI-sized smoke run: tiny repeats, small sizes, no torch.compile, no end-to-end runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import jax
import tyro

from benchmarks import flops
from benchmarks.report import write_reports
from benchmarks.timing import measure, rates


@dataclasses.dataclass(frozen=True)
class Args:
    """Benchmark the JAX DDPM against the PyTorch reference; write markdown, JSON and a chart."""

    device: Literal["cpu", "gpu", "auto"] = "auto"
    """Where to run: cpu, gpu, or auto (gpu when JAX sees one)."""
    quick: bool = False
    """CI smoke run (well under a minute): tiny repeats, small sizes, no compile-heavy or end-to-end variants."""
    out: str = "benchmarks/results"
    """Folder of the reports."""


@dataclasses.dataclass(frozen=True)
class Sizes:
    repeats: int
    torch_steps: int
    loop_steps: int
    epochs: int
    seeds: tuple[int, ...]
    batches: tuple[int, ...]
    sampling_points: int
    matmul: int

    @classmethod
    def of(cls, quick: bool, gpu: bool) -> "Sizes":
        if quick:
            return cls(2, 100, 200, 1, (1, 8), (128, 1024), 2000, 1024)
        return cls(5, 1000, 1000, 10, (1, 4, 8, 16, 64, 256) if gpu else (1, 4, 8, 16, 64),
                   (128, 512, 2048, 8192), 10_000, 8192 if gpu else 2048)


def select_platform(device: str) -> str:
    """Fix JAX's platform before any backend starts; 'cpu' or 'gpu'."""
    if device == "cpu":
        jax.config.update("jax_platforms", "cpu")
        return "cpu"
    backend = jax.default_backend()
    if device == "gpu" and backend != "gpu":
        raise SystemExit(f"error: --device gpu asked for, but JAX runs on {backend} (no GPU found); use --device cpu")
    return "gpu" if backend == "gpu" else "cpu"


def machine(kind: str, torch) -> dict:
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    import flax
    import jaxlib
    import optax
    device = str(jax.devices()[0].device_kind) if kind == "gpu" else f"CPU {cpu_model}"
    return dict(device=device, cpu_model=cpu_model, cores=os.cpu_count(), python=platform.python_version(),
                jax=jax.__version__, jaxlib=jaxlib.__version__, flax=flax.__version__, optax=optax.__version__,
                torch=torch.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""),
                jax_matmul_precision=str(jax.config.jax_default_matmul_precision or "default (float32 on CPU)"),
                torch_threads=torch.get_num_threads(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""), torch_matmul_precision=torch.get_float32_matmul_precision(),
                load_start=[round(x, 2) for x in os.getloadavg()])


def devices_subprocess(n: int, sizes: Sizes, kind: str, seeds: int = 1, epochs: int | None = None) -> dict:
    """`--devices n` (with `--seeds`) in its own process: host devices need XLA_FLAGS before jax
    is imported."""
    env = dict(os.environ)
    if kind == "cpu":
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "benchmarks.jax_bench", "--devices", str(n), "--seeds", str(seeds),
           "--epochs", str(epochs or sizes.epochs), "--repeats", str(sizes.repeats)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def end_to_end(out_tmp: Path) -> dict:
    """The default CLIs as subprocesses (wall time, --no-plots). The reference's 1000 epochs take
    minutes, so it runs 50 and 100 epochs and the line through them is extrapolated."""
    def wall(cmd: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", *cmd, "--no-plots"], check=True, capture_output=True)
        return time.perf_counter() - start

    results = {"python -m jax_ddpm.train": dict(wall_s=wall(["jax_ddpm.train", "--out-dir", str(out_tmp / "jax")]),
                                                 note="defaults: 1000 epochs, compile and final sampling included")}
    short = {e: wall(["torch_reference.train", "--epochs", str(e), "--out-dir", str(out_tmp / f"torch{e}")]) for e in (50, 100)}
    per_epoch = (short[100] - short[50]) / 50
    results["python -m torch_reference.train --epochs 100"] = dict(wall_s=short[100], note="measured")
    results["python -m torch_reference.train (1000 epochs, extrapolated)"] = dict(
        wall_s=short[100] + 900 * per_epoch, note=f"from 50 and 100 epochs: {per_epoch:.3f} s an epoch")
    return results


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv)
    kind = select_platform(args.device)
    if kind == "gpu":  # JAX uses TF32 for float32 matmuls on GPU by default; benchmark true float32
        jax.config.update("jax_default_matmul_precision", "float32")
    # With OpenMP's default spin-waiting, torch's 2 threads collapse (~5 steps/s instead of ~900)
    # whenever another process holds a core, as on this shared machine; sleeping waiters keep the
    # torch baselines honest. Read when torch starts OpenMP, so set before importing it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch  # after jax is configured

    from benchmarks import jax_bench, torch_bench
    from ddpm_harness.config import Config, dataset_for

    torch_device = "cuda" if kind == "gpu" else "cpu"
    if kind == "gpu":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    start = time.perf_counter()
    sizes = Sizes.of(args.quick, kind == "gpu")
    config = Config()
    data = dataset_for(config)
    results = dict(command="python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
                   quick=args.quick, machine=machine(kind, torch), notes=[])
    log = lambda msg: print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)  # noqa: E731

    # Roofline: the device's large-matmul rate, measured now.
    jax_run, mm_flops = jax_bench.matmul_runner(sizes.matmul)
    jax_mm = rates(measure(jax_run, sizes.repeats), mm_flops)
    torch_run, mm_flops = torch_bench.matmul_runner(sizes.matmul, torch_device)
    torch_mm = rates(measure(torch_run, sizes.repeats), mm_flops)
    peak = max(jax_mm["best"], torch_mm["best"])
    step_flops = flops.train_step_flops(128)
    chain_flops = flops.sampling_flops(sizes.sampling_points)
    results["roofline"] = dict(matmul_size=sizes.matmul, jax_gflops=jax_mm["best"] / 1e9, torch_gflops=torch_mm["best"] / 1e9,
                               peak_gflops=peak / 1e9, n_params=flops.n_params(), train_step_mflop=step_flops / 1e6,
                               train_steps_per_s=peak / step_flops, sampling_gflop=chain_flops / 1e9, sampling_s=chain_flops / peak)
    log(f"matmul: JAX {jax_mm['best'] / 1e9:.0f}, torch {torch_mm['best'] / 1e9:.0f} GFLOP/s")

    def train(name: str, runner_and_work, warmup: int = 1) -> dict:
        run, work = runner_and_work
        r = rates(measure(run, sizes.repeats, warmup), work)
        r["roofline_fraction"] = r["median"] * step_flops / peak
        log(f"{name}: {r['median']:,.0f} /s (best {r['best']:,.0f}, first call {r['first_call_s']:.1f} s)")
        return r

    training = results["training"] = {}
    # Torch at batch 128 on CPU runs single-threaded: as fast as 2 threads on a quiet machine
    # (128-row matmuls) and far steadier on a shared one. Sampling and the batch scaling use all.
    torch_threads = torch.get_num_threads()
    if kind == "cpu":
        torch.set_num_threads(1)
        results["notes"].append("torch training variants at batch 128 use 1 thread (torch.set_num_threads(1)); "
                                f"sampling and batch scaling use {torch_threads}.")
    training["torch eager (tutorial)"] = train("torch eager", torch_bench.tutorial_train_runner(data, 128, sizes.torch_steps, torch_device))
    training["torch fast eager (fused Adam, foreach clip + EMA)"] = train(
        "torch fast", torch_bench.fast_train_runner(data, 128, sizes.torch_steps, torch_device, compile_step=False))
    if args.quick:
        results["notes"].append("--quick: torch.compile variants and end-to-end runs skipped; small sizes.")
    else:
        name = "torch.compile whole step" + (" (CUDA graphs)" if kind == "gpu" else "")
        training[name] = train("torch compiled", torch_bench.fast_train_runner(
            data, 128, sizes.torch_steps, torch_device, compile_step=True), warmup=2)
    training["JAX jitted step, Python loop"] = train("JAX loop", jax_bench.python_loop_runner(config, sizes.loop_steps))
    training["JAX scan-fused epochs (default CLI path)"] = train("JAX scan", jax_bench.chunk_runner(config, sizes.epochs))
    if kind == "cpu" or len(jax.devices()) >= 2:
        r = devices_subprocess(2, sizes, kind)
        r["roofline_fraction"] = r["median"] * step_flops / peak
        training["JAX --devices 2" + (" (2 host devices, batch split)" if kind == "cpu" else "")] = r
        log(f"JAX --devices 2: {r['median']:,.0f} /s")
    else:
        results["notes"].append("--devices 2 skipped: one GPU visible.")
    torch.set_num_threads(torch_threads)
    seed_scaling = results["seed_scaling"] = {}
    seeds_on_devices = results["seed_scaling_2_devices"] = {}
    for k in sizes.seeds:
        epochs = max(1, round(sizes.epochs * 2 / k)) if k > 1 else sizes.epochs
        seed_scaling[str(k)] = train(f"JAX --seeds {k}", jax_bench.chunk_runner(dataclasses.replace(config, seeds=k), epochs))
        if k in (8, 64, 256):
            training[f"JAX --seeds {k} (total model-steps/s)"] = seed_scaling[str(k)]
        if k > 1 and k % 2 == 0 and (kind == "cpu" or len(jax.devices()) >= 2):
            r = seeds_on_devices[str(k)] = devices_subprocess(2, sizes, kind, seeds=k, epochs=epochs)
            r["roofline_fraction"] = r["median"] * step_flops / peak
            log(f"JAX --seeds {k} --devices 2: {r['median']:,.0f} /s")
            if k in (8, 64, 256):
                training[f"JAX --seeds {k} --devices 2 (seeds split, total model-steps/s)"] = r

    sampling = results["sampling"] = {}
    results["sampling_points"] = sizes.sampling_points
    modes = ["tutorial", "no_grad"] + ([] if args.quick else ["compiled"])
    names = {"tutorial": "torch as the tutorial (autograd on)", "no_grad": "torch no_grad", "compiled": "torch.compile model, no_grad"}
    runners = {names[m]: (torch_bench.sampling_runner(sizes.sampling_points, torch_device, m), 2 if m == "compiled" else 1) for m in modes}
    runners["JAX sample_chain (lax.scan)"] = (jax_bench.sampling_runner(sizes.sampling_points), 1)
    for name, ((run, _), warmup) in runners.items():
        timing = measure(run, max(2, sizes.repeats - 2), warmup)
        sampling[name] = dict(median_s=timing.median_s, best_s=timing.min_s, first_call_s=timing.first_s,
                              times_s=timing.times_s, roofline_fraction=chain_flops / timing.median_s / peak)
        log(f"sampling {name}: {timing.median_s:.3f} s")

    batch_scaling = results["batch_scaling"] = {"JAX scan-fused": {}, "torch eager (tutorial)": {}}
    for batch in sizes.batches:
        n_points = batch * max(8, config.n_points // batch)
        cfg = dataclasses.replace(config, batch_size=batch, n_points=n_points)
        batch_data = dataset_for(dataclasses.replace(cfg, n_points=n_points))
        run, work = jax_bench.chunk_runner(cfg, 1)
        batch_scaling["JAX scan-fused"][str(batch)] = rates(measure(run, sizes.repeats), work)
        run, work = torch_bench.tutorial_train_runner(batch_data, batch, n_points // batch, torch_device)
        batch_scaling["torch eager (tutorial)"][str(batch)] = rates(measure(run, max(2, sizes.repeats - 2)), work)
        log(f"batch {batch}: JAX {batch_scaling['JAX scan-fused'][str(batch)]['median']:,.0f}, "
            f"torch {batch_scaling['torch eager (tutorial)'][str(batch)]['median']:,.0f} steps/s")

    if not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            results["end_to_end"] = end_to_end(Path(tmp))
        log("end to end: " + ", ".join(f"{k}: {v['wall_s']:.1f} s" for k, v in results["end_to_end"].items()))

    results["targets"] = targets(results, kind)
    if kind == "cpu":
        results["notes"] += [f"missed '{t['target']}': {CPU_MISS_REASONS[t['target']]}"
                             for t in results["targets"] if not t["met"] and t["target"] in CPU_MISS_REASONS]
    results["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_s"] = time.perf_counter() - start
    for path in write_reports(results, Path(args.out), kind):
        print(f"wrote {path}")
    return 0


# Why a CPU target can be missed, from profiles of this code on the 2-core machine (jax.profiler
# per-op times; process CPU time against wall time).
_SERIAL_STEP = ("one model's step is a serial chain of ~70 small kernels (per step, profiled: 128x128 matmuls ~150 us, "
                "softplus ~50 us, ~40 small Adam/EMA/loss fusions ~100 us; the epoch permutation, now packed uint32 "
                "sorts, ~14 us amortised) that XLA:CPU runs on one thread (process CPU time / wall time 1.2), so "
                "one model uses one core; splitting each batch over 2 host devices adds an all-reduce rendezvous "
                "per step that costs more than the halved matmuls (the --devices 2 row).")
CPU_MISS_REASONS = {
    "single model >= 5x torch eager": _SERIAL_STEP,
    "single model >= 2x best torch": _SERIAL_STEP,
    "multi-seed total >= 50% of roofline": (
        "the K vmapped models run as batched 128-row matmuls on one thread per device, at roughly one "
        "core's small-matmul rate (~100 GFLOP/s, about half a core's large-matmul rate), with the "
        "element-wise and optimizer work on top; the roofline counts both cores at large-matmul speed "
        "(AVX-512). Splitting the seeds over 2 host devices (--seeds K --devices 2, no communication) "
        "puts the second core to work and is the best multi-seed row."),
    "sampling >= 1.5x torch no_grad": (
        "the JAX chain keeps both cores busy (process CPU time / wall time 1.95), with YNNPACK's "
        "element-wise fusion on CPU (jax_ddpm/speed.py); the rest is element-wise work (gains, "
        "softplus exp + log1p over 10,000 x 128 per layer and step) that torch also runs on both cores."),
    "default run in about 30 s or less, compile included": (
        "the wall time includes JAX start-up, compilation, sampling and the sample-quality evaluation "
        "besides the 79,000 training steps."),
}


def targets(results: dict, kind: str) -> list[dict]:
    """The issue's targets, judged on this run's ratios."""
    training = results["training"]
    eager = training["torch eager (tutorial)"]["median"]
    best_torch = max(r["median"] for name, r in training.items() if name.startswith("torch"))
    single = {name: r["median"] for name, r in training.items() if name.startswith("JAX") and "--seeds" not in name}
    best_single_name = max(single, key=single.get)
    need_eager = 20 if kind == "gpu" else 5
    multi_seed = {f"K = {k}": r for k, r in results["seed_scaling"].items()}
    multi_seed.update({f"K = {k}, 2 devices": r for k, r in results["seed_scaling_2_devices"].items()})
    best_seeds = max(multi_seed.items(), key=lambda kv: kv[1]["median"])
    no_grad = results["sampling"]["torch no_grad"]["median_s"]
    jax_sampling = results["sampling"]["JAX sample_chain (lax.scan)"]["median_s"]
    out = [dict(target=f"single model >= {need_eager}x torch eager", met=single[best_single_name] >= need_eager * eager,
                measured=f"{single[best_single_name] / eager:.2f}x ({best_single_name})"),
           dict(target="single model >= 2x best torch", met=single[best_single_name] >= 2 * best_torch,
                measured=f"{single[best_single_name] / best_torch:.2f}x"),
           dict(target="multi-seed total >= 50% of roofline", met=best_seeds[1]["roofline_fraction"] >= 0.5,
                measured=f"{100 * best_seeds[1]['roofline_fraction']:.1f}% ({best_seeds[0]})"),
           dict(target="sampling >= 1.5x torch no_grad", met=no_grad >= 1.5 * jax_sampling,
                measured=f"{no_grad / jax_sampling:.2f}x")]
    if "end_to_end" in results:
        wall = results["end_to_end"]["python -m jax_ddpm.train"]["wall_s"]
        out.append(dict(target="default run in about 30 s or less, compile included", met=wall <= 33,
                        measured=f"{wall:.1f} s"))
    return out


if __name__ == "__main__":
    sys.exit(main())
