"""JAX variants: the jitted step from a Python loop, scan-fused epochs (`make_train_chunk`)
over seeds and devices, the sampling chain, and a large matmul for the roofline.

Run as a module it measures one scan-fused configuration and prints JSON: `benchmarks.run`
starts it in a subprocess for `--devices N` on CPU, whose host devices must be requested with
XLA_FLAGS before jax is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import measure, rates
from ddpm_harness.config import Config
from ddpm_harness.data import dataset_for
from jax_ddpm import speed
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.objectives.step import EmaRate, pure_train_step
from jax_ddpm.runner.chunk import init_states, make_mesh, make_train_chunk, optimizer_for, run_keys
from jax_ddpm.samplers import tutorial
from jax_ddpm.samplers.tutorial import sample_chain


def _parts(config: Config):
    schedule = run_schedule(config)
    data = jnp.asarray(dataset_for(config), jnp.float32)
    return schedule, data, optimizer_for(config)


def steps_per_epoch(config: Config) -> int:
    return math.ceil(config.n_points / config.batch_size)


CHOSEN = "chosen"  # the per-program options jax_ddpm uses on this machine (jax_ddpm.speed)


def _with_precision(run, precision: str | None):
    """run() under jax.default_matmul_precision(precision) (None: the process default)."""
    if precision is None:
        return run

    def run_at_precision():
        with jax.default_matmul_precision(precision):
            run()

    return run_at_precision


def chunk_runner(config: Config, n_epochs: int, options: dict | str = CHOSEN, precision: str | None = None):
    """`n_epochs` scan-fused epochs of `config` (seeds vmapped; over config.devices the seeds
    split, or one seed's batches) from the same initial state each call; work = model-steps
    (steps x seeds). `options`: XLA:CPU compiler options instead of jax_ddpm's choice;
    `precision`: a jax_default_matmul_precision for this program ("tensorfloat32", ...)."""
    schedule, data, optimizer = _parts(config)
    mesh = make_mesh(config.devices)
    chunk = make_train_chunk(config, schedule, optimizer, n_epochs, mesh)
    if options != CHOSEN:
        chunk = jax.jit(chunk.__wrapped__, compiler_options=speed.on_cpu(options))
    state = init_states(config, optimizer, mesh)

    def run():
        jax.block_until_ready(chunk(state, data))

    return _with_precision(run, precision), n_epochs * steps_per_epoch(config) * config.seeds


def python_loop_runner(config: Config, n_steps: int):
    """The jitted step (`pure_train_step`, what a run compiles) called once per batch from Python; work = steps."""
    schedule, data, optimizer = _parts(config)
    step = jax.jit(
        functools.partial(
            pure_train_step,
            optimizer=optimizer,
            ema=EmaRate.constant(config.ema_decay),
            schedule=schedule,
            n_steps=config.num_steps,
        )
    )
    initial = init_states(config, optimizer)
    n_full = config.n_points // config.batch_size
    perm = np.random.default_rng(0).permutation(config.n_points)[: n_full * config.batch_size]
    batches = list(data[perm].reshape(n_full, config.batch_size, 2))

    def run():
        state = initial
        for i in range(n_steps):
            state, _ = step(state, batch_x=batches[i % n_full])
        jax.block_until_ready(state)

    return run, n_steps


def sampling_runner(n_points: int, config: Config = Config(), options: dict | str = CHOSEN):
    """`sample_chain` of n_points over the whole schedule (one compiled lax.scan); `options`:
    XLA:CPU compiler options instead of jax_ddpm's choice."""
    schedule, _, optimizer = _parts(config)
    params = init_states(config, optimizer).params
    key = run_keys(config.seed)["sample"]
    chain = sample_chain
    if options != CHOSEN:
        jitted = jax.jit(
            tutorial._sample_chain, static_argnames=("n", "parameterization"), compiler_options=speed.on_cpu(options)
        )
        chain = functools.partial(jitted, parameterization="eps")

    def run():
        jax.block_until_ready(chain(params, schedule, key, n=n_points))

    return run, 1


def matmul_runner(size: int):
    """A large float32 matmul (2 size^3 FLOPs) at the current default precision."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)

    def run():
        jax.block_until_ready(matmul(a, b))

    return run, 2.0 * size**3


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure one scan-fused configuration; print JSON.")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = dataclasses.replace(Config(), devices=args.devices, seeds=args.seeds)
    run, work = chunk_runner(config, args.epochs)
    print(
        json.dumps(
            dict(devices=[str(d) for d in jax.devices()[: args.devices]], **rates(measure(run, args.repeats), work))
        )
    )


if __name__ == "__main__":
    main()
