"""Schedules, the forward process q(x_t | x_0) and the posterior q(x_{t-1} | x_t, x_0)."""

import numpy as np
import pytest

from parity_tests import layers
from parity_tests.compare import assert_pairs_close

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("kind, n_timesteps, start, end", layers.SCHEDULE_CASES)
def test_schedule_arrays(precision, kind, n_timesteps, start, end):
    pairs = layers.schedule_pairs(precision, kind, n_timesteps, start, end)
    assert len(pairs) == 11
    for name, (out_ref, out_ans) in pairs.items():
        assert out_ans.dtype == out_ref.dtype == precision.np_dtype, name
        if name == "one_minus_alphas_bar_log":
            # Absolute: the error of log(y) is the relative error of y = 1 - alphas_prod, and the
            # log passes near 0 at the end of long schedules (log(1 - 4e-5) for T = 1000), where a
            # relative error means nothing (it reaches 7e-5 in float32 there). Measured: <= 8 eps.
            np.testing.assert_allclose(out_ans, out_ref, rtol=0, atol=32 * precision.eps, err_msg=name)
        else:
            # Element-wise relative, as these span decades (betas 1e-5 .. 1e-2). Both sides run the
            # same operations in the same order; numpy's and torch's linspace/sigmoid differ by an
            # ulp and cumprod accumulates such differences: measured <= 9 eps (alphas_prod, T = 1000).
            np.testing.assert_allclose(out_ans, out_ref, rtol=32 * precision.eps, atol=0, err_msg=name)


def test_q_sample(precision):
    # One multiply-add per entry: measured <= 1 eps of max|x_t| in both precisions.
    assert_pairs_close(layers.q_sample_pairs(precision), rel=4 * precision.eps)


def test_posterior_mean_and_log_variance(precision):
    # Two products and a sum: measured <= 1.6 eps of the array's scale.
    assert_pairs_close(layers.posterior_pairs(precision), rel=8 * precision.eps)
