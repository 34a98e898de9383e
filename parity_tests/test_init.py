"""The JAX model's initial weights against PyTorch's init (every other parity test ports torch's weights,
so nothing else checks the JAX side's own initial distributions).

PyTorch's defaults, which the tutorial relies on: a Linear weight and bias are uniform on
[-1/sqrt(fan_in), 1/sqrt(fan_in)] (kaiming_uniform_ with a = sqrt(5) gives exactly that bound), and the
tutorial re-initialises each Embedding table uniform on [0, 1). Each parameter is divided by its bound, so
every Linear parameter should be U(-1, 1) and every embedding U(0, 1); then a two-sample KS test compares the
JAX draw with torch's draw of the same parameter, and a one-sample KS test compares it with the exact
uniform CDF.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import scipy.stats
import torch

from jax_ddpm.model import init_params
from torch_reference.model import ConditionalModel

N_STEPS = 100
SEEDS = 256  # models drawn on each side
TARGET = 2**17  # values pooled per parameter: seeds are pooled until a parameter reaches this (or SEEDS)
# Significance of every KS test. The seeds are fixed, so each test is deterministic (never flaky): this
# only decides how unlucky the chosen seeds could be for a correct init. 26 tests at 1e-3 give a correct
# init at most a ~2.6% chance of having landed on seeds that fail, while the pooled samples (>= 512 values,
# most >= 32,768) still reject a bound wrong by 10% (KS distance 0.045) for every parameter but the tiny
# lin4 bias, and any wrong shape of distribution (normal, zeros, fan_out instead of fan_in) outright.
ALPHA = 1e-3

# torch key -> (JAX path, fan_in or None for an embedding, torch shape); kernels are transposed in JAX.
LAYERS = {}
for _i, (_num_in, _num_out) in enumerate([(2, 128), (128, 128), (128, 128)], start=1):
    LAYERS[f"lin{_i}.lin.weight"] = ((f"lin{_i}", "lin", "kernel"), _num_in, (_num_out, _num_in))
    LAYERS[f"lin{_i}.lin.bias"] = ((f"lin{_i}", "lin", "bias"), _num_in, (_num_out,))
    LAYERS[f"lin{_i}.embed.weight"] = ((f"lin{_i}", "embed", "embedding"), None, (N_STEPS, _num_out))


def head(n_outputs: int) -> dict:
    return {
        "lin4.weight": (("lin4", "kernel"), 128, (n_outputs, 128)),
        "lin4.bias": (("lin4", "bias"), 128, (n_outputs,)),
    }


def get(tree: dict, path: tuple[str, ...]):
    for part in path:
        tree = tree[part]
    return tree


@pytest.fixture(scope="module", params=[2, 4], ids=["2 outputs", "4 outputs"])
def draws(request):
    """(n_outputs, {torch key: (jax values (seeds, *torch shape), torch values (seeds, *torch shape))})."""
    n_outputs = request.param
    keys = jax.random.split(jax.random.PRNGKey(2024), SEEDS)
    jax_params = jax.jit(jax.vmap(lambda k: init_params(k, N_STEPS, n_outputs)))(keys)
    torch_params = []
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        torch_params.append({k: v.numpy().copy() for k, v in ConditionalModel(N_STEPS, n_outputs).state_dict().items()})
    # The 4-output model's lin1..lin3 are the 2-output model's; its own new parameters are the head.
    layout = dict(LAYERS, **head(n_outputs)) if n_outputs == 2 else head(n_outputs)
    out = {}
    for key, (path, _, shape) in layout.items():
        out_ans = np.asarray(get(jax_params, path))
        if out_ans.ndim == 3 and path[-1] == "kernel":
            out_ans = out_ans.transpose(0, 2, 1)  # JAX (in, out) -> torch (out, in)
        out_ref = np.stack([p[key] for p in torch_params])
        assert out_ref.shape == out_ans.shape == (SEEDS, *shape), key
        assert out_ans.dtype == out_ref.dtype == np.float32, key
        out[key] = (out_ans, out_ref)
    assert set(torch_params[0]) == set(LAYERS) | set(head(n_outputs))  # the table names every parameter
    return n_outputs, layout, out


def pooled(values: np.ndarray) -> np.ndarray:
    """The first seeds' values, flattened: as many seeds as reach TARGET values (all SEEDS if none do)."""
    per_seed = math.prod(values.shape[1:])
    return values[: min(SEEDS, -(-TARGET // per_seed))].ravel().astype(np.float64)


def test_vmapped_draw_is_the_plain_init(draws):
    # The tests draw many models at once with vmap; make sure that is what init_params gives one at a time.
    n_outputs, layout, out = draws
    keys = jax.random.split(jax.random.PRNGKey(2024), SEEDS)
    one = init_params(keys[5], N_STEPS, n_outputs)
    for key, (path, _, _) in layout.items():
        value = np.asarray(get(one, path))
        np.testing.assert_array_equal(value.T if path[-1] == "kernel" else value, out[key][0][5], err_msg=key)


def test_bounds(draws):
    _, layout, out = draws
    for key, (_, fan_in, _) in layout.items():
        out_ans, out_ref = out[key]
        if fan_in is None:  # embedding: uniform_() on [0, 1)
            assert out_ans.min() >= 0.0 and out_ans.max() < 1.0, key
            assert out_ans.min() < 1e-3 and out_ans.max() > 1 - 1e-3, key  # fills the interval
            continue
        bound = np.float32(1 / math.sqrt(fan_in))  # the float32 value both sides scale by
        for side, values in (("jax", out_ans), ("torch", out_ref)):
            assert np.abs(values).max() <= bound, (side, key)
        # ... and it is the right bound, not just an upper bound: the extremes come within 2% of it. The smallest
        # sample (lin4.bias of 2 outputs, 512 values) misses that band at one end with probability 0.99^512 < 0.6%.
        assert out_ans.min() < -0.98 * bound and out_ans.max() > 0.98 * bound, key


def test_ks_against_torch_and_the_uniform_cdf(draws):
    _, layout, out = draws
    failures = []
    for key, (_, fan_in, _) in layout.items():
        out_ans, out_ref = out[key]
        if fan_in is None:
            u_ans, u_ref, cdf = pooled(out_ans), pooled(out_ref), scipy.stats.uniform(0.0, 1.0).cdf
        else:
            bound = 1 / math.sqrt(fan_in)
            u_ans, u_ref = pooled(out_ans) / bound, pooled(out_ref) / bound
            cdf = scipy.stats.uniform(-1.0, 2.0).cdf
        two_sample = scipy.stats.ks_2samp(u_ans, u_ref)
        exact = scipy.stats.kstest(u_ans, cdf)
        if two_sample.pvalue < ALPHA or exact.pvalue < ALPHA:
            failures.append(
                f"{key} (n = {u_ans.size}): vs torch D = {two_sample.statistic:.4f} "
                f"p = {two_sample.pvalue:.2g}; vs uniform D = {exact.statistic:.4f} p = {exact.pvalue:.2g}"
            )
    assert not failures, failures


def test_parameters_are_independent_draws(draws):
    # A key reused across layers or seeds would pass every distribution test above.
    _, _, out = draws
    values = {key: out_ans for key, (out_ans, _) in out.items()}
    for key, v in values.items():
        assert not np.array_equal(v[0], v[1]), f"{key}: two seeds drew the same values"
    if "lin2.lin.weight" in values:
        a, b = values["lin2.lin.weight"][0].ravel(), values["lin3.lin.weight"][0].ravel()
        # 16,384 pairs: the correlation of independent draws has sd 1/128; 0.05 is 6 sd.
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.05
        assert (
            abs(np.corrcoef(values["lin2.embed.weight"][0].ravel(), values["lin3.embed.weight"][0].ravel())[0, 1])
            < 0.05
        )
