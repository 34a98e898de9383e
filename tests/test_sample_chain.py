"""`sample_chain` (compiled with the CPU sampling options) equals `p_sample_loop` fed the noise it
draws from its key: the options change speed, not the chain."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_ddpm.config import Config
from jax_ddpm.model import init_params
from jax_ddpm.sampling import p_sample_loop, sample_chain
from jax_ddpm.schedule import make_schedule

# Other fused kernels for exp, log1p and the sums only round differently: after 100 steps the
# chains measured ~1e-5 apart on values of order 1.
RTOL, ATOL = 1e-4, 1e-4


def test_sample_chain_equals_p_sample_loop_with_the_same_noise():
    config, n = Config(), 500
    schedule = make_schedule(config.schedule, config.num_steps, config.beta_start, config.beta_end)
    params = init_params(jax.random.PRNGKey(3), config.num_steps)
    key = jax.random.PRNGKey(11)
    x_T = jax.random.normal(jax.random.fold_in(key, 0), (n, 2))
    zs = jnp.stack([jax.random.normal(jax.random.fold_in(key, k + 1), (n, 2)) for k in range(config.num_steps)])
    expected = np.asarray(p_sample_loop(params, schedule, x_T, zs))
    actual = np.asarray(sample_chain(params, schedule, key, n))
    assert actual.shape == (config.num_steps + 1, n, 2)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)
    assert np.abs(expected[-1] - expected[0]).mean() > 0.1  # the chain really moved the points
