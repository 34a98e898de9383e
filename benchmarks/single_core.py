"""The single-core bound: the model's 128x128x128 float32 matmuls on ONE core, in a process of its own.

`python -m benchmarks.single_core` switches off XLA's multi-threaded Eigen kernels
(`--xla_cpu_multi_thread_eigen=false`; with `--pin` it also pins itself to one CPU with
sched_setaffinity before JAX starts, like `taskset -c 0`), then times a chain of `--matmuls` dependent 128x128 @ 128x128
products in one compiled loop (no dispatch between them, as in the scan-fused training chunk) and
prints JSON: GFLOP/s best and median, and the process CPU time / wall time, which shows that one
core did the work (<= 1). Unpinned is the default: on a shared machine a pinned process can land on
the busy core, while the scheduler moves an unpinned thread to the free one, as it does the
benchmark's own training process.
One model's training step is such a serial chain, which XLA:CPU runs on one thread, so its rate is
judged against this bound (benchmarks.run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SIZE = 128
SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false"


def pin_to_one_core() -> int | None:
    """Pin this process to the first CPU it may use; that CPU, or None where affinity is unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return cpu
    except OSError:
        return None


def measure(n_matmuls: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    # An orthogonal matrix keeps the chain's values at unit scale however long it runs.
    w = jnp.asarray(np.linalg.qr(np.random.default_rng(0).normal(size=(SIZE, SIZE)))[0], jnp.float32)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(SIZE, SIZE)), jnp.float32)
    chain = jax.jit(lambda x, w: jax.lax.fori_loop(0, n_matmuls, lambda _, y: y @ w, x))
    jax.block_until_ready(chain(x, w))  # compile
    times, cpu = [], []
    for _ in range(repeats):
        cpu_start, start = time.process_time(), time.perf_counter()
        jax.block_until_ready(chain(x, w))
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    work = 2.0 * SIZE**3 * n_matmuls
    times_sorted = sorted(times)
    return dict(
        gflops_best=work / times_sorted[0] / 1e9,
        gflops_median=work / times_sorted[len(times) // 2] / 1e9,
        times_s=times,
        cpu_per_wall=sum(cpu) / sum(times),
        matmuls=n_matmuls,
        size=SIZE,
    )


def in_subprocess(n_matmuls: int = 4000, repeats: int = 5, pin: bool = False) -> dict:
    """Run this module in a fresh process (its flags and pinning must precede JAX's start)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "benchmarks.single_core", "--matmuls", str(n_matmuls), "--repeats", str(repeats)]
    done = subprocess.run(cmd + (["--pin"] if pin else []), env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description="128x128x128 float32 matmuls on one core; prints JSON.")
    parser.add_argument("--matmuls", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pin", action="store_true", help="pin to one CPU (sched_setaffinity) as well")
    args = parser.parse_args()
    cpu = pin_to_one_core() if args.pin else None
    if SINGLE_THREAD_FLAGS not in os.environ.get("XLA_FLAGS", ""):  # read when JAX starts, below
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD_FLAGS}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    result = measure(args.matmuls, args.repeats)
    result.update(
        pinned_cpu=cpu,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        method=f"XLA_FLAGS={SINGLE_THREAD_FLAGS}" + (f", pinned to CPU {cpu}" if cpu is not None else ""),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
