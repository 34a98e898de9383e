"""Throughput of many models: total model-steps/s of a sweep's vmapped program
(`jax_ddpm.runner.sweep.make_sweep_chunk`) for K models, as a fraction of the roofline measured in the same run.

The K models are K configurations of one group (learning rates spread over a decade, so the
per-model hyper-parameters are really different), trained on the default data (moons, 10,000
points, batch 128: 79 optimizer steps an epoch), exactly as `python -m jax_ddpm.sweep` compiles
them. `benchmarks.run` calls `section` after its seeds section; with two host devices the K models
are split over them, measured in a subprocess (host devices need XLA_FLAGS before jax starts):
`python -m benchmarks.sweep_bench --devices 2 --k 16 64` prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import measure, rates
from ddpm_harness.config import Config
from ddpm_harness.data import dataset_for
from jax_ddpm.runner.chunk import init_states, make_mesh, optimizer_for
from jax_ddpm.runner.sweep import hyper_params, make_sweep_chunk, pad_models, stack

KS = (1, 4, 16, 64, 256)
QUICK_KS = (1, 4)
# Model-steps of one timed call: enough to amortise the call, few enough for K = 256 (one epoch: 20,224).
MODEL_STEPS_PER_CALL = 10_000


def configs(k: int, base: Config = Config()) -> list[Config]:
    """K configurations of one group: learning rates log-spaced over 1e-4 .. 1e-3."""
    return [dataclasses.replace(base, lr=float(lr)) for lr in np.geomspace(1e-4, 1e-3, k)]


def sweep_runner(k: int, devices: int = 1, model_steps: int = MODEL_STEPS_PER_CALL, **chunk_options):
    """Enough epochs of K models in one compiled sweep program (split over `devices`) for about
    `model_steps` model-steps, from the same state each call; work = model-steps actually taken.
    `chunk_options` go to `make_sweep_chunk` (experiments: block=None trains all of a device's models at once)."""
    group = configs(k)
    first = group[0]
    steps_per_epoch = -(-first.n_points // first.batch_size)
    epochs = max(1, round(model_steps / (k * steps_per_epoch)))
    optimizer = optimizer_for(first)
    # As a sweep stacks, pads (copies of the last model fill the devices' blocks; their steps are not
    # counted) and blocks them
    state, hyper, block = pad_models(
        stack([init_states(c, optimizer) for c in group]), stack([hyper_params(c) for c in group]), k, devices
    )
    chunk = make_sweep_chunk(first, epochs, make_mesh(devices), **{"block": block, **chunk_options})
    data = jnp.asarray(dataset_for(first))

    def run():
        jax.block_until_ready(chunk(state, data, hyper))

    return run, epochs * steps_per_epoch * k


def measure_ks(
    ks: Sequence[int], repeats: int, devices: int = 1, model_steps: int = MODEL_STEPS_PER_CALL, log=print
) -> dict:
    """{K: rates} of the sweep program in this process."""
    out = {}
    for k in ks:
        run, work = sweep_runner(k, devices, model_steps)
        out[str(k)] = rates(measure(run, repeats), work)
        log(f"sweep K = {k} on {devices} device(s): {out[str(k)]['median']:,.0f} model-steps/s")
    return out


def in_subprocess(ks: Sequence[int], repeats: int, devices: int, model_steps: int = MODEL_STEPS_PER_CALL) -> dict:
    """measure_ks over `devices` host devices, in a fresh process (XLA_FLAGS before jax starts)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.sweep_bench",
        "--devices",
        str(devices),
        "--repeats",
        str(repeats),
        "--model-steps",
        str(model_steps),
        "--k",
        *map(str, ks),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def section(bench, sizes, repeats: int, roofline_fraction: Callable[[float], float]) -> dict:
    """The sweep throughput section of a CPU run of `benchmarks.run` (K in sizes.sweep_ks, sizes.sweep_model_steps
    a timed call): {"1 device": {K: rates}, "2 host devices": {...}}, each rate with its roofline fraction."""
    ks, model_steps, table = sizes.sweep_ks, sizes.sweep_model_steps, {}

    def with_roofline(rows: dict) -> dict:
        for r in rows.values():
            r["roofline_fraction"] = roofline_fraction(r["median"])
        return rows

    one = bench.attempt(
        "sweep throughput, 1 device", lambda: measure_ks(ks, repeats, 1, model_steps, log=bench.log), optional=True
    )
    if one:
        table["1 device"] = with_roofline(one)
    two = bench.attempt(
        "sweep throughput, 2 host devices", lambda: in_subprocess(ks, repeats, 2, model_steps), optional=True
    )
    if two:
        table["2 host devices"] = with_roofline(two)
        for k, r in two.items():
            bench.log(f"sweep K = {k} on 2 host devices: {r['median']:,.0f} model-steps/s")
    return table


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Model-steps/s of the sweep program for several K; prints JSON.")
    parser.add_argument("--k", type=int, nargs="+", default=list(KS))
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-steps", type=int, default=MODEL_STEPS_PER_CALL)
    args = parser.parse_args(argv)
    out = measure_ks(args.k, args.repeats, args.devices, args.model_steps, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
