"""jax_ddpm.torchlike: the torch layers the model's twin is written with draw PyTorch's initial
distributions from one key stream, in construction order, and evaluate as torch does."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_ddpm import torchlike as nn
from jax_ddpm.model import apply_model, init_params
from jax_ddpm.torchlike import functional as F


def expected_params(key: jax.Array, n_steps: int, n_outputs: int) -> dict:
    """The model's parameters drawn by hand: one key a parameter from nnx.Rngs(params=key), in the
    order the constructors run (kernel, bias, table for lin1..lin3, then lin4's kernel and bias)."""
    from flax import nnx

    stream = nnx.Rngs(params=key).params

    def linear(num_in, num_out):
        bound = 1.0 / num_in**0.5
        kernel = jax.random.uniform(stream(), (num_in, num_out), jnp.float32, -bound, bound)
        return {"kernel": kernel, "bias": jax.random.uniform(stream(), (num_out,), jnp.float32, -bound, bound)}

    params = {}
    for name, num_in in (("lin1", 2), ("lin2", 128), ("lin3", 128)):
        lin = linear(num_in, 128)
        params[name] = {"lin": lin, "embed": {"embedding": jax.random.uniform(stream(), (n_steps, 128))}}
    params["lin4"] = linear(128, n_outputs)
    return params


@pytest.mark.parametrize("seed, n_outputs", [(0, 2), (7, 4)])
def test_init_params_are_the_draws_of_the_key_stream_in_construction_order(seed, n_outputs):
    key = jax.random.key(seed)
    out_ans = init_params(key, 100, n_outputs)
    out_ref = expected_params(key, 100, n_outputs)
    assert jax.tree.structure(out_ans) == jax.tree.structure(out_ref)
    for ans, ref in zip(jax.tree.leaves(out_ans), jax.tree.leaves(out_ref)):
        assert ans.dtype == ref.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(ans), np.asarray(ref))


def test_a_module_built_outside_manual_seed_says_how_to_build_it():
    with pytest.raises(RuntimeError, match="manual_seed"):
        nn.Linear(2, 3)


def test_linear_is_x_times_kernel_plus_bias_with_torchs_default_bounds():
    with nn.manual_seed(1):
        lin = nn.Linear(64, 3)
    assert lin.kernel.shape == (64, 3) and lin.bias.shape == (3,)
    for value in (lin.kernel[...], lin.bias[...]):
        assert float(jnp.abs(value).max()) <= 1 / 8  # 1 / sqrt(64)
    x = jax.random.normal(jax.random.key(2), (5, 64))
    np.testing.assert_allclose(lin(x), x @ lin.kernel[...] + lin.bias[...], rtol=1e-6, atol=1e-6)


def test_embedding_looks_up_rows_and_keeps_float64_tables():
    with nn.manual_seed(3):
        embed = nn.Embedding(10, 4)  # torch's default: N(0, 1)
    y = jnp.array([0, 9, 3])
    np.testing.assert_array_equal(embed(y), embed.embedding[...][np.array([0, 9, 3])])
    # The model's graph is built once in float32 (model._graphdef) and merged with whatever parameters
    # come: a float64 table must reach the output unrounded (nnx.Embed would cast it to float32).
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), init_params(jax.random.key(0), 10))
        x = jnp.ones((3, 2), jnp.float64)
        out_ref = apply_model(params, x, y)
        params["lin1"]["embed"]["embedding"] = params["lin1"]["embed"]["embedding"] * (1 + 1e-12)
        out_ans = apply_model(params, x, y)
    assert out_ans.dtype == jnp.float64
    assert np.any(np.asarray(out_ans) != np.asarray(out_ref))  # a change float32 cannot represent


def test_softplus_switches_to_x_above_torchs_threshold():
    x = jnp.array([-30.0, -1.0, 0.0, 19.5, 20.0, 20.5, 80.0])
    # torch.nn.functional.softplus(beta=1, threshold=20): x where x > 20, log1p(exp(x)) elsewhere.
    out_ref = np.where(np.asarray(x) > 20, np.asarray(x), np.log1p(np.exp(np.asarray(x, np.float64))))
    np.testing.assert_allclose(F.softplus(x), out_ref, rtol=1e-6)
    assert float(F.softplus(jnp.float32(20.5))) == 20.5
