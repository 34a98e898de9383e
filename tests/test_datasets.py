"""The tutorial's three datasets against its own scikit-learn calls (its first cell):

    swiss_roll, _ = make_swiss_roll(10**4, noise=0.1);  swiss_roll = swiss_roll[:, [0, 2]] / 10.0
    s_curve, _ = make_s_curve(10**4, noise=0.1);        s_curve = s_curve[:, [0, 2]] / 10.0
    moons, _ = make_moons(10**4, noise=0.1)             (unscaled)

written out here with scikit-learn directly, seeded with the same random_state (an integer seed is turned
into np.random.RandomState(seed) by scikit-learn), then `torch.Tensor(...).float()`: float32.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_moons, make_s_curve, make_swiss_roll

from ddpm_harness import data
from ddpm_harness.data import get_dataset

N = 10**4  # the tutorial's count


def tutorial(name: str, n: int, noise: float, seed: int) -> np.ndarray:
    """The tutorial's call for `name`, with random_state=seed, as the float32 (n, 2) array it trains on."""
    if name == "swiss_roll":
        x, _ = make_swiss_roll(n, noise=noise, random_state=seed)
        x = x[:, [0, 2]] / 10.0
    elif name == "s_curve":
        x, _ = make_s_curve(n, noise=noise, random_state=seed)
        x = x[:, [0, 2]] / 10.0
    else:
        x, _ = make_moons(n, noise=noise, random_state=seed)
    return x.astype(np.float32)


@pytest.mark.parametrize("name", ["swiss_roll", "s_curve", "moons"])
@pytest.mark.parametrize("seed", [0, 12345])
def test_tutorial_datasets_are_its_scikit_learn_calls(name, seed):
    out_ans = get_dataset(name, N, 0.1, seed)
    out_ref = tutorial(name, N, 0.1, seed)
    assert out_ans.shape == (N, 2) and out_ans.dtype == np.float32
    # Exact: the same float64 scikit-learn draw, the same column pick and division, one rounding to float32.
    np.testing.assert_array_equal(out_ans, out_ref)


@pytest.mark.parametrize("name", ["swiss_roll", "s_curve", "moons"])
def test_noise_and_size_reach_scikit_learn(name):
    # --data-noise and --n-points are passed through as the tutorial's noise= and n_samples=.
    np.testing.assert_array_equal(get_dataset(name, 300, 0.3, 5), tutorial(name, 300, 0.3, 5))
    assert not np.array_equal(get_dataset(name, 300, 0.3, 5), get_dataset(name, 300, 0.1, 5))


def test_scales_are_the_tutorials():
    # What the column pick and the division by 10 mean, independently of the calls above: the swiss roll's
    # radius t lies in [1.5 pi, 4.5 pi] (x = t cos t, z = t sin t), so its points reach 4.5 pi / 10 = 1.41;
    # the s-curve's x = sin t lies in [-1, 1] and z = sign(t) (cos t - 1) in [-2, 2] before the division;
    # noiseless moons span exactly [-1, 2] along x, unscaled.
    swiss = get_dataset("swiss_roll", N, 0.0, 0).astype(np.float64)
    radius = np.hypot(swiss[:, 0], swiss[:, 1])
    assert radius.min() >= 1.5 * np.pi / 10 - 1e-6 and radius.max() <= 4.5 * np.pi / 10 + 1e-6
    assert radius.max() > 4.4 * np.pi / 10
    s_curve = get_dataset("s_curve", N, 0.0, 0)
    assert np.abs(s_curve[:, 0]).max() <= 0.1 + 1e-6 and np.abs(s_curve[:, 1]).max() <= 0.2 + 1e-6
    assert np.abs(s_curve[:, 0]).max() > 0.099
    moons = get_dataset("moons", N, 0.0, 0)
    assert moons[:, 0].min() == pytest.approx(-1.0, abs=1e-3) and moons[:, 0].max() == pytest.approx(2.0, abs=1e-3)


@pytest.mark.parametrize("n, noise, seed", [(10_000, 0.1, 0), (2001, 0.05, 123), (7, 0.3, 5), (1, 0.0, 2)])
def test_moons_are_scikit_learns_draw_for_draw(n, noise, seed):
    """ddpm_harness draws the moons itself (scikit-learn's import cost 1.3 s of every run's set-up): its
    float64 points and labels, before the float32 cast, are make_moons' bit for bit."""
    out_ans = data._labelled_moons(n, noise, np.random.RandomState(seed))
    out_ref = make_moons(n, noise=noise, random_state=seed)
    np.testing.assert_array_equal(out_ans[0], out_ref[0])
    np.testing.assert_array_equal(out_ans[1], out_ref[1])
