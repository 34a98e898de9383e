"""Final samples of K models at once: `sample_models(params (K, ...), schedule, config, keys (K,), n)
-> (samples (K, n, 2), nfe (K,))`, each model's points exactly those `experiment.sample_points` draws
for it with its key (tests/test_batched_sampling.py).

The K models (e.g. the raw and EMA parameters of every seed) run vmapped through the config's
sampler program (`experiment.draw_samples`; vmapped, XLA:CPU rounds each model as alone, checked
bit for bit), as many at once as MEMORY_BYTES of reverse chains allow, and SAMPLE_CHUNK points at a
time with chunk c's keys folded with c, as `sample_points` streams them.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_harness import config as harness_config
from ddpm_harness.config import Config
from jax_ddpm.runner import experiment
from jax_ddpm.schedule import Schedule
from jax_ddpm.training import run_keys

MEMORY_BYTES = 1 << 30
"""About how much the reverse chains of the models sampled together may hold (sets `models_at_once`)."""


def sample_keys(config: Config, fold=None) -> list:
    """The sampling key of each of the config's seeds, as `experiment.sample_states` makes them."""
    keys = [run_keys(config.seed + i)["sample"] for i in range(config.seeds)]
    return keys if fold is None else [jax.random.fold_in(k, fold) for k in keys]


def models_at_once(config: Config, n: int) -> int:
    """Models sampled in one vmapped call: at least the config's seeds (what the memory check admits),
    more while their chains of n points fit MEMORY_BYTES and a quarter of the memory available."""
    one = harness_config.chain_bytes(dataclasses.replace(config, seeds=1), n)
    budget = min(MEMORY_BYTES, (harness_config.available_memory_bytes() or MEMORY_BYTES) // 4)
    return max(config.seeds, budget // one)


def sample_models(params, schedule: Schedule, config: Config, keys, n: int, chunk: Optional[int] = None):
    """Final samples (K, n, 2), NFE (K,) (the last chunk's, as `sample_points` reports it) and the
    first chunk's chains (K, S + 1, min(n, chunk), 2) of K models: params with a leading model axis,
    one Schedule for all or one per model (leading axis), keys (K,) as `sample_keys` gives them;
    `chunk` points per chain (SAMPLE_CHUNK unless given: give n for `sample_states`' single chain)."""
    keys, chunk = list(keys), chunk or harness_config.SAMPLE_CHUNK
    at_once = models_at_once(config, min(n, chunk))
    parts = [
        _sample_block(_take(params, start, at_once), _block_schedule(schedule, start, at_once), config, block, n, chunk)
        for start, block in ((s, keys[s : s + at_once]) for s in range(0, len(keys), at_once))
    ]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def stack_models(trees: list, seeds: int):
    """One leading model axis over parameter trees that each hold `seeds` models (none when seeds is 1)."""
    with_axis = trees if seeds > 1 else [jax.tree_util.tree_map(lambda x: x[None], t) for t in trees]
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *with_axis)


def _take(tree, start: int, size: int):
    return jax.tree_util.tree_map(lambda x: x[start : start + size], tree)


def _block_schedule(schedule: Schedule, start: int, size: int) -> Schedule:
    return _take(schedule, start, size) if _per_model(schedule) else schedule


def _per_model(schedule: Schedule) -> bool:
    return jnp.ndim(schedule.betas) == 2


def _sample_block(params, schedule: Schedule, config: Config, keys: list, n: int, chunk: int):
    out, nfe, first = np.empty((len(keys), n, 2), np.float32), None, None
    schedule_axis = 0 if _per_model(schedule) else None
    for c, start in enumerate(range(0, n, chunk)):
        size = min(chunk, n - start)
        chunk_keys = jnp.stack([jax.random.fold_in(k, c) if c else k for k in keys])

        def chain(p, s, k, size=size):  # with its states, as sample_states: the same program
            drawn = experiment.draw_samples(p, s, config, k, size, trajectory=True)
            return drawn.trajectory, drawn.nfe

        states, chunk_nfe = jax.vmap(chain, in_axes=(0, schedule_axis, 0))(params, schedule, chunk_keys)
        states = np.asarray(states)
        out[:, start : start + size] = states[:, -1]
        nfe = np.asarray(chunk_nfe)  # the last chunk's, as sample_points reports it
        first = states if first is None else first
        del states  # before the next chunk's chains are made
    return out, nfe, first


def split_models(samples: np.ndarray, names: tuple, seeds: int) -> dict:
    """{name: (seeds, n, 2), or (n, 2) for one seed} from samples (len(names) * seeds, n, 2) stacked name by name."""
    per_name = samples.reshape(len(names), seeds, *samples.shape[1:])
    return {name: part if seeds > 1 else part[0] for name, part in zip(names, per_name)}
