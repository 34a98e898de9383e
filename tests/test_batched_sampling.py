"""K models sampled in one vmapped program (jax_ddpm.runner.draw) give, model by model,
bit for bit the points of today's per-model path (`draw.sample_points` with that model's
keys): on XLA:CPU the vmapped sampler rounds each model as alone (measured: equal for the tutorial,
ddpm, ddim and dpm-solver++ samplers), so the test asks for equality, not a tolerance."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_harness import memory
from ddpm_harness.config import Config
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.runner import draw
from jax_ddpm.runner.chunk import init_states, optimizer_for

CHUNK = 300  # small chunks so that n = 700 streams three of them, as 25,000 do at scale


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(memory, "SAMPLE_CHUNK", CHUNK)
    monkeypatch.setattr(draw, "SAMPLE_CHUNK", CHUNK)


def model_params(config: Config, k: int) -> dict:
    """Distinct untrained-but-not-initial parameters per model (an initial model predicts ~0)."""
    params = init_states(dataclasses.replace(config, seed=k, seeds=1), optimizer_for(config)).params
    return jax.tree_util.tree_map(
        lambda a: a + 0.05 * jnp.cos(jnp.arange(a.size, dtype=a.dtype) + k).reshape(a.shape), params
    )


@pytest.mark.parametrize("sampler", ["tutorial", "ddim"])
def test_each_model_samples_exactly_as_alone(small_chunks, sampler):
    config = Config(sampler=sampler, num_steps=40, seed=5, seeds=3)
    params = [model_params(config, k) for k in range(3)]
    keys = draw.sample_keys(config)
    out_ans, nfe, chains = draw.sample_models(draw.stack_models(params, 1), run_schedule(config), config, keys, 700)
    assert out_ans.shape == (3, 700, 2) and np.isfinite(out_ans).all()
    for k in range(3):  # model k alone is seed 5 + k of a one-seed run
        alone = dataclasses.replace(config, seed=5 + k, seeds=1)
        out_ref, nfe_ref = draw.sample_points(params[k], run_schedule(alone), alone, 700)
        np.testing.assert_array_equal(out_ans[k], out_ref)
        assert nfe[k] == nfe_ref
    # the first chunk's chains, as sample_points keeps them for the pictures
    _, chains_ref, _ = draw.sample_points(
        params[0], run_schedule(config), dataclasses.replace(config, seeds=1), 700, keep_chain=True
    )
    np.testing.assert_array_equal(chains[0], chains_ref)
    # and the run's own vmapped seeds (sample_points of a 3-seed run) agree as well
    seeds_ref, _ = draw.sample_points(draw.stack_models(params, 1), run_schedule(config), config, 700)
    np.testing.assert_array_equal(out_ans, seeds_ref)


def test_models_with_their_own_schedules_and_a_memory_budget_of_one(small_chunks, monkeypatch):
    """A sweep's models differ in their schedules; one model per call gives the same points."""
    configs = [Config(sampler="dpm-solver++", num_steps=40, seed=2, beta_end=b) for b in (0.005, 0.01)]
    params = [model_params(c, k) for k, c in enumerate(configs)]
    schedules = draw.stack_models([run_schedule(c) for c in configs], 1)
    keys = draw.sample_keys(configs[0]) * 2
    stacked = draw.stack_models(params, 1)
    together, _, _ = draw.sample_models(stacked, schedules, configs[0], keys, 500)
    monkeypatch.setattr(draw, "MEMORY_BYTES", 1)
    assert draw.models_at_once(configs[0], CHUNK) == 1
    apart, _, _ = draw.sample_models(stacked, schedules, configs[0], keys, 500)
    np.testing.assert_array_equal(apart, together)
    for k, c in enumerate(configs):
        out_ref, _ = draw.sample_points(params[k], run_schedule(c), c, 500)
        np.testing.assert_array_equal(together[k], out_ref)


def test_one_chain_of_n_points_as_sample_states(small_chunks):
    """chunk=n: the evaluations' single chain (`sample_states` with fold=epoch), raw and EMA split back."""
    config = Config(num_steps=30, seed=1, seeds=2)
    params = [model_params(config, k) for k in range(4)]
    raw, ema = draw.stack_models(params[:2], 1), draw.stack_models(params[2:], 1)
    keys = draw.sample_keys(config, fold=7) * 2
    both, _, _ = draw.sample_models(
        draw.stack_models([raw, ema], 2), run_schedule(config), config, keys, 400, chunk=400
    )
    split = draw.split_models(both, ("raw", "ema"), 2)
    for name, p in (("raw", raw), ("ema", ema)):
        states, _ = draw.sample_states(p, run_schedule(config), config, 400, fold=7)
        np.testing.assert_array_equal(split[name], states[:, -1])
