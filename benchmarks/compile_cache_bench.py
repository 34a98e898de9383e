"""Compile once per machine, measured: the default training chunk's compile time in a first and a
second process sharing a fresh persistent compilation cache (jax_ddpm/compile_cache.py).

`python -m benchmarks.compile_cache_bench` builds the chunk `python -m jax_ddpm.train` compiles with
the default configuration (same chunk length, same per-program options), lowers and compiles it
ahead of time as the CLI does, and prints JSON: lower and compile seconds and the cache hits and
misses JAX reported for it. `first_and_second_run()` runs it twice with a fresh temporary
JAX_DDPM_CACHE_DIR, so nothing from earlier runs is reused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time


def measure() -> dict:
    import jax
    import jax.numpy as jnp

    from ddpm_harness.config import Config
    from ddpm_harness.data import dataset_for
    from jax_ddpm.objectives.schedules import run_schedule
    from jax_ddpm.runner.chunk import init_states, make_mesh, make_train_chunk, optimizer_for
    from jax_ddpm.runner.compile_cache import use_compile_cache
    from jax_ddpm.runner.loop import chunk_epochs

    events = []
    jax.monitoring.register_event_listener(
        lambda event, **_: events.append(event.rsplit("/", 1)[-1]) if "/compilation_cache/cache_" in event else None
    )
    config = Config()
    cache_dir = use_compile_cache(True)
    steps_per_epoch = -(-config.n_points // config.batch_size)
    n_chunk = chunk_epochs(config, steps_per_epoch, 0)
    schedule, optimizer, mesh = run_schedule(config), optimizer_for(config), make_mesh(config.devices)
    chunk = make_train_chunk(config, schedule, optimizer, n_chunk, mesh)
    state, data = init_states(config, optimizer, mesh), jnp.asarray(dataset_for(config))
    events.clear()  # count the chunk's own compilation only
    start = time.perf_counter()
    lowered = chunk.lower(state, data)
    lowered_at = time.perf_counter()
    lowered.compile()
    done = time.perf_counter()
    return dict(
        lower_s=lowered_at - start,
        compile_s=done - lowered_at,
        chunk_epochs=n_chunk,
        cache_hits=events.count("cache_hits"),
        cache_misses=events.count("cache_misses"),
        cache_dir=str(cache_dir),
        backend=jax.default_backend(),
    )


def first_and_second_run(platform: str | None = None) -> dict:
    """Two fresh processes compile the default chunk into and then from a new, empty cache folder."""
    runs = {}
    with tempfile.TemporaryDirectory(prefix="jax_ddpm_cache_") as cache:
        env = dict(os.environ, JAX_DDPM_CACHE_DIR=cache)
        if platform:
            env["JAX_PLATFORMS"] = platform
        for name in ("first run (empty cache)", "second run (cache filled by the first)"):
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.compile_cache_bench"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return runs


if __name__ == "__main__":
    print(json.dumps(measure()))
