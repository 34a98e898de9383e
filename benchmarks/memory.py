"""`python -m benchmarks.memory`: peak memory of sampling and of training on large data, measured.

Writes benchmarks/results/memory.md. Each measurement is a fresh process (`python -m jax_ddpm.sample`
or `python -m jax_ddpm.train`) whose peak resident set size is read from getrusage(RUSAGE_CHILDREN)
by a wrapper process, so nothing of this process's own memory counts.
1. `python -m jax_ddpm.sample --n N` for N = 10^5, 10^6, 10^7 from one trained run: the chain is
   streamed in chunks, so the peak should grow only by the output (8 bytes a point, memory-mapped).
2. Training on a 10^6-point dataset (`--n-points 1000000`) with the same fused loop: steps/s (from
   its summary.json) and peak RSS, beside the default 10^4 points.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PEAK = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
if done.returncode:
    sys.exit(done.stderr[-2000:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_mib(module: str, *argv: str) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of `python -m module argv` in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PEAK, sys.executable, "-m", module, *argv], capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[-1]) / 1024, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**5, 10**6, 10**7], help="--n of each draw")
    parser.add_argument("--train-points", type=int, nargs="+", default=[10**4, 10**6], help="--n-points of each run")
    parser.add_argument("--train-epochs", type=int, default=3, help="epochs of each training run")
    parser.add_argument(
        "--num-steps",
        type=int,
        default=100,
        help="T of the model sampled from (the chain's cost grows with T, its memory per chunk too)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for memory.md")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows_sample, rows_train = [], []
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "jax_ddpm.train",
                "--epochs",
                "10",
                "--no-plots",
                "--out-dir",
                str(run),
                "--num-steps",
                str(args.num_steps),
            ],
            check=True,
            capture_output=True,
        )
        for n in args.sizes:
            rss, wall = peak_rss_mib(
                "jax_ddpm.sample", "--run", str(run), "--n", str(n), "--out", str(Path(tmp) / f"samples_{n}.npy")
            )
            rows_sample.append(
                dict(n=n, peak_rss_mib=round(rss, 1), wall_s=round(wall, 1), output_mib=round(n * 8 / 2**20, 1))
            )
            print(rows_sample[-1], flush=True)
        for n in args.train_points:
            out_dir = Path(tmp) / f"train_{n}"
            rss, wall = peak_rss_mib(
                "jax_ddpm.train",
                "--n-points",
                str(n),
                "--epochs",
                str(args.train_epochs),
                "--checkpoint-every",
                str(args.train_epochs),
                "--log-every",
                str(args.train_epochs),
                "--no-plots",
                "--out-dir",
                str(out_dir),
            )
            summary = json.loads((out_dir / "summary.json").read_text())
            rows_train.append(
                dict(
                    n_points=n,
                    steps=summary["steps"],
                    steps_per_s=summary["steps_per_s"],
                    peak_rss_mib=round(rss, 1),
                    wall_s=round(wall, 1),
                )
            )
            print(rows_train[-1], flush=True)
    lines = [
        "# Memory: sampling and training on large data",
        "",
        f"`python -m benchmarks.memory` on {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}. Peak RSS of a fresh process (getrusage), wall time including "
        "imports and compilation.",
        "",
        f"## `python -m jax_ddpm.sample --n N` (streamed in chunks of 25,000 points; a model with T = "
        f"{args.num_steps})",
        "",
        "| N | peak RSS (MiB) | output (MiB) | wall (s) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['n']:,} | {r['peak_rss_mib']:,.0f} | {r['output_mib']:,.1f} | {r['wall_s']:,.1f} |" for r in rows_sample
    ]
    lines += [
        "",
        f"## `python -m jax_ddpm.train --n-points N --epochs {args.train_epochs}` (the fused loop)",
        "",
        "| N | optimizer steps | steps/s | peak RSS (MiB) | wall (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['n_points']:,} | {r['steps']:,} | {r['steps_per_s']:,.0f} | {r['peak_rss_mib']:,.0f} | "
        f"{r['wall_s']:,.1f} |"
        for r in rows_train
    ]
    (args.out / "memory.md").write_text("\n".join(lines) + "\n")
    (args.out / "memory.json").write_text(json.dumps(dict(sample=rows_sample, train=rows_train), indent=2) + "\n")
    print(f"wrote {args.out / 'memory.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
