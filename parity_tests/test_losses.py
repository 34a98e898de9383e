"""Antithetic steps, the noise-estimation loss, its gradients, and the variational loss."""

import jax
import numpy as np
import pytest
import torch

import torch_reference.losses as ref_losses
from jax_ddpm import losses
from parity_tests import layers
from parity_tests.compare import assert_pairs_close, to_numpy

pytestmark = pytest.mark.torch


def assert_antithetic(t: np.ndarray, batch_size: int, n_steps: int, side: str) -> None:
    """t = concat(t0, T - 1 - t0)[:B] with t0 of size B//2 + 1: t[i] + t[B//2 + 1 + i] == T - 1."""
    assert t.shape == (batch_size,) and np.issubdtype(t.dtype, np.integer), side
    assert t.min() >= 0 and t.max() < n_steps, side
    n_free = batch_size // 2 + 1
    np.testing.assert_array_equal(t[: batch_size - n_free] + t[n_free:], n_steps - 1, err_msg=side)
    if batch_size >= 64:  # the free half is random, not a constant
        assert len(np.unique(t[:n_free])) > 10, side


@pytest.mark.parametrize("batch_size", [128, 7, 2])
def test_antithetic_timesteps_structure(batch_size):
    torch.manual_seed(0)
    draws = {
        "torch": to_numpy(ref_losses.antithetic_timesteps(batch_size, layers.N_STEPS)),
        "jax": to_numpy(losses.antithetic_timesteps(jax.random.PRNGKey(0), batch_size, layers.N_STEPS)),
        "numpy (the parity inputs)": layers.antithetic_t(np.random.default_rng(0), batch_size),
    }
    for side, t in draws.items():
        assert_antithetic(t, batch_size, layers.N_STEPS, side)


def test_noise_estimation_loss(precision):
    # A mean of 256 squared differences: measured <= 1 ulp in both precisions.
    assert_pairs_close(layers.noise_loss_pairs(precision), rel=8 * precision.eps)


def test_gradients_of_every_parameter(precision):
    # Backward sums over the batch (and, for the embeddings, over the examples sharing a step) in
    # different orders: measured <= 4 eps of each gradient's largest entry, in both precisions.
    pairs = layers.gradient_pairs(precision)
    assert len(pairs) == 11
    assert_pairs_close(pairs, rel=32 * precision.eps)


def test_variational_loss_with_decoder_nll(precision):
    x_0, t, _ = layers.variational_inputs(precision)
    decoder = t == 0
    # The t == 0 entries take the decoder NLL, in each of its three bins.
    assert decoder.any() and (~decoder).any()
    assert (x_0[decoder] < -0.999).any() and (x_0[decoder] > 0.999).any()
    assert (np.abs(x_0[decoder]) < 0.999).any()
    # The decoder NLL is log(CDF(x + 1/255) - CDF(x - 1/255)): the difference of two nearly equal
    # CDFs of size ~0.5 loses ~log2(0.5 / 1.4e-3) bits, so its rounding error is ~500 eps on a
    # term of ~9.5 bits; measured 58 eps (float32) and 68 eps (float64) of max|term|, i.e. the
    # same conditioning in both precisions. The KL terms alone agree to 24 eps.
    assert_pairs_close(layers.variational_pairs(precision), rel=256 * precision.eps)
