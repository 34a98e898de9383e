"""One reverse step p_sample with injected z, and the whole chain with injected x_T and zs."""

import pytest

from parity_tests import layers
from parity_tests.compare import assert_pairs_close

pytestmark = pytest.mark.torch


def test_p_sample_with_injected_noise(precision):
    # At t = 99, 50 and 0 (noise is added at t = 0 too, the tutorial's quirk): one model call and
    # a few scalings; measured <= 0.6 eps of max|x| in both precisions.
    assert_pairs_close(layers.p_sample_pairs(precision), rel=8 * precision.eps)


def test_full_chain_with_injected_noise(precision):
    # 100 dependent steps, all 101 states of 500 points compared: each step adds about one
    # rounding (previous test) and 1 / sqrt(alpha_t) amplifies slightly; measured 6.3 eps (float32)
    # and 5 eps (float64) of max|x|; allow 64 eps.
    pairs = layers.chain_pairs(precision)
    assert pairs["x_seq"][1].shape == (layers.N_STEPS + 1, 500, 2)
    assert_pairs_close(pairs, rel=64 * precision.eps)
