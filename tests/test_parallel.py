"""--seeds K equals K separate runs; --devices N equals one device, both ways it spreads work:
one seed's batches split (gradients all-reduced) or K seeds split (no communication). Tiny
configs, CPU.

The device test runs in a subprocess: host devices exist only if
XLA_FLAGS=--xla_force_host_platform_device_count is set before jax is imported, and setting it for
the whole pytest session (a conftest) would make every other test run on 4 simulated devices
that split this machine's 2 cores, which is not the configuration those tests mean to check.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_harness.config import Config, ConfigError, validate
from ddpm_harness.data import dataset_for
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.runner.chunk import init_states, init_train_state, make_mesh, make_train_chunk, optimizer_for

# 100 points in batches of 16: 6 full batches and a short one of 4 per epoch.
TINY = Config(n_points=100, batch_size=16, epochs=3, seed=5)
# vmap and batch splitting only reorder float32 sums (batched matmuls, per-device partial
# gradients then an all-reduce); after 21 Adam steps those round-off differences stay ~1e-6.
COLLECTIVES = ("all-reduce(", "all-gather(", "all-to-all(", "collective-permute(", "reduce-scatter(")
RTOL, ATOL = 1e-4, 1e-5


def tiny_data(config: Config = TINY) -> jax.Array:
    return jnp.asarray(dataset_for(config), jnp.float32)


def compile_tiny(config: Config, mesh=None):
    """`config.epochs` epochs as one compiled chunk, and its inputs: the initial state and the
    data set of TINY.seed (a run draws its data from its first seed; its K models share it)."""
    schedule = run_schedule(config)
    optimizer = optimizer_for(config)
    state, data = init_states(config, optimizer, mesh), tiny_data()
    return make_train_chunk(config, schedule, optimizer, config.epochs, mesh).lower(state, data).compile(), state, data


def train_tiny(config: Config, mesh=None):
    """(final state, per-epoch metrics) of the compiled chunk."""
    compiled, state, data = compile_tiny(config, mesh)
    return compiled(state, data)


def max_relative_gap(actual, desired) -> float:
    """Largest |a - d| / (ATOL + RTOL |d|) over two pytrees: <= 1 means allclose."""
    gaps = jax.tree.map(
        lambda a, d: float(np.max(np.abs(np.asarray(a) - np.asarray(d)) / (ATOL + RTOL * np.abs(np.asarray(d))))),
        actual,
        desired,
    )
    return max(jax.tree.leaves(gaps))


def test_each_seed_equals_a_separate_single_seed_run():
    k = 3
    stacked, stacked_metrics = train_tiny(dataclasses.replace(TINY, seeds=k))
    single_chunk, _, data = compile_tiny(TINY)  # the seed only sets the initial state's values
    optimizer = optimizer_for(TINY)
    for i in range(k):
        single, single_metrics = single_chunk(
            init_states(dataclasses.replace(TINY, seed=TINY.seed + i), optimizer), data
        )
        ith = jax.tree.map(lambda x: x[i], (stacked, stacked_metrics))
        assert int(ith[0].opt_step) == int(single.opt_step) == TINY.epochs * 7
        assert max_relative_gap(ith, (single, single_metrics)) <= 1.0, f"seed {TINY.seed + i} differs"
    # Different seeds really are different models.
    first = np.asarray(stacked.params["lin2"]["lin"]["kernel"])
    assert not np.allclose(first[0], first[1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "options",
    [
        dict(seeds=1),
        dict(seeds=3),
        dict(seed=4_000_000_000),
        dict(seeds=2, conditional=True, dataset="eight_gaussians"),
    ],
    ids=["one seed", "three seeds", "a seed past 2**31", "conditional"],
)
def test_initial_states_are_each_seeds_eager_state_bit_for_bit(options):
    """init_states makes every seed's state in one compiled program (vmapped over uint32 seeds): the
    same bits as each seed's eager init_train_state, stacked, with the same structure and dtypes."""
    config = dataclasses.replace(TINY, **options)
    optimizer = optimizer_for(config)
    n_classes = 8 if config.conditional else None
    eager = [
        init_train_state(config.seed + i, config.num_steps, config.n_outputs, optimizer, n_classes)
        for i in range(config.seeds)
    ]
    expected = eager[0] if config.seeds == 1 else jax.tree.map(lambda *xs: jnp.stack(xs), *eager)
    actual = init_states(config, optimizer)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)

    def raw(x):
        return np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert raw(a).dtype == raw(e).dtype and raw(a).shape == raw(e).shape
        np.testing.assert_array_equal(raw(a), raw(e))


def test_seeds_split_across_devices_must_divide():
    with pytest.raises(ConfigError, match="--seeds 3 is not divisible by --devices 2"):
        validate(Config(seeds=3, devices=2))
    validate(Config(seeds=4, devices=2, batch_size=127))  # whole models per device: any batch size
    with pytest.raises(ConfigError, match="--batch-size 127 is not divisible by --devices 2"):
        validate(Config(devices=2, batch_size=127))


def devices_check() -> dict:
    """Run in the subprocess (4 host devices): one seed on --devices 2 and 4 (batch split), and
    4 seeds on --devices 2 and 4 (seeds split); a flow model with --coupling ot both ways on 2."""
    assert len(jax.devices()) == 4, jax.devices()
    reference, reference_metrics = train_tiny(TINY)
    report = {}
    for n in (2, 4):
        compiled, state, data = compile_tiny(dataclasses.replace(TINY, devices=n), make_mesh(n))
        state, metrics = compiled(state, data)
        report[f"gap_devices_{n}"] = max_relative_gap((state, metrics), (reference, reference_metrics))
        kernel = state.params["lin2"]["lin"]["kernel"]
        report[f"params_replicated_{n}"] = kernel.sharding.is_fully_replicated and len(kernel.sharding.device_set) == n
        report[f"all_reduce_{n}"] = compiled.as_text().count("all-reduce(")
    seeds_reference = train_tiny(dataclasses.replace(TINY, seeds=4))
    for n in (2, 4):
        compiled, state, data = compile_tiny(dataclasses.replace(TINY, seeds=4, devices=n), make_mesh(n))
        state, metrics = compiled(state, data)
        report[f"gap_seeds_4_devices_{n}"] = max_relative_gap((state, metrics), seeds_reference)
        kernel = state.params["lin2"]["lin"]["kernel"]  # (4, 128, 128)
        report[f"seeds_per_device_{n}"] = sorted({shard.data.shape[0] for shard in kernel.addressable_shards})
        report[f"devices_used_{n}"] = len(kernel.sharding.device_set)
        report[f"collectives_seeds_{n}"] = sum(compiled.as_text().count(c) for c in COLLECTIVES)
    # Flow matching with the OT coupling: each batch's exact assignment (the CPU's host solver) on 2 devices.
    ot = dataclasses.replace(TINY, method="flow", sampler="euler", coupling="ot")
    for name, seeds in (("devices_2", 1), ("seeds_4_devices_2", 4)):
        one_device = train_tiny(dataclasses.replace(ot, seeds=seeds))
        two = train_tiny(dataclasses.replace(ot, seeds=seeds, devices=2), make_mesh(2))
        report[f"gap_ot_{name}"] = max_relative_gap(two, one_device)
    return report


def test_devices_equal_one_device_in_a_subprocess_with_4_host_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for n in (2, 4):
        assert report[f"gap_devices_{n}"] <= 1.0, report
        assert report[f"params_replicated_{n}"], report  # parameters live whole on every device
        assert report[f"all_reduce_{n}"] >= 1, report  # XLA reduces the per-device gradients
    for n in (2, 4):
        assert report[f"gap_seeds_4_devices_{n}"] <= 1.0, report
        assert report[f"seeds_per_device_{n}"] == [4 // n] and report[f"devices_used_{n}"] == n, report
        assert report[f"collectives_seeds_{n}"] == 0, report  # each device trains its own models
    assert report["gap_ot_devices_2"] <= 1.0 and report["gap_ot_seeds_4_devices_2"] <= 1.0, report


if __name__ == "__main__":
    print(json.dumps(devices_check()))
