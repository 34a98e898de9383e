"""Each metric against an independent computation: brute force (scipy cdist, sorting), POT, and
closed forms for Gaussians; plus chunking, symmetry, zero on identical sets, calibration order."""

from __future__ import annotations

import sys

import numpy as np
import ot
import pytest
import scipy.stats
from scipy.spatial.distance import cdist, pdist

from ddpm_harness import metrics


def gaussian(rng, n, mean, std):
    return (np.asarray(mean) + std * rng.standard_normal((n, 2))).astype(np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def brute_mmd2_energy(x, y, h):
    """Unbiased MMD^2 and V-statistic energy distance from full float64 distance matrices."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    n, m = len(x), len(y)
    d_xx, d_yy, d_xy = cdist(x, x), cdist(y, y), cdist(x, y)
    k = lambda d: np.exp(-(d**2) / (2 * h * h))
    k_xx = (k(d_xx).sum() - n) / (n * (n - 1))
    k_yy = (k(d_yy).sum() - m) / (m * (m - 1))
    mmd2 = k_xx + k_yy - 2 * k(d_xy).mean()
    energy = 2 * d_xy.mean() - d_xx.mean() - d_yy.mean()
    return mmd2, energy


def test_mmd_and_energy_match_scipy_brute_force(rng):
    x = gaussian(rng, 300, [0.0, 0.0], 1.0)
    y = gaussian(rng, 217, [0.5, -0.2], 0.7)  # unequal sizes, not a multiple of the block
    out_ans = metrics.mmd_and_energy(x, y, block_rows=64)
    mmd2_ref, energy_ref = brute_mmd2_energy(x, y, out_ans["bandwidth"])
    # float32 pair terms, float64 totals: 1e-5 relative is ~100x the observed error.
    np.testing.assert_allclose(out_ans["mmd2"], mmd2_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out_ans["energy"], energy_ref, rtol=1e-5, atol=1e-7)


def test_median_bandwidth_is_median_of_pooled_pairwise_distances(rng):
    x, y = gaussian(rng, 150, [0, 0], 1.0), gaussian(rng, 90, [1, 1], 0.5)
    out_ref = np.median(pdist(np.concatenate([x, y]).astype(np.float64)))
    np.testing.assert_allclose(metrics.median_bandwidth(x, y), out_ref, rtol=1e-6)


def test_energy_matches_scipy_energy_distance_in_1d(rng):
    u, v = rng.standard_normal(400), 0.3 + 1.5 * rng.standard_normal(333)
    embed = lambda a: np.stack([a, np.zeros_like(a)], axis=1)
    out_ans = metrics.mmd_and_energy(embed(u), embed(v))["energy"]
    # scipy returns the square root of the (V-statistic) energy distance.
    np.testing.assert_allclose(out_ans, scipy.stats.energy_distance(u, v) ** 2, rtol=1e-5)


def test_chunked_equals_unchunked(rng):
    x, y = gaussian(rng, 301, [0, 0], 1.0), gaussian(rng, 250, [0.2, 0], 1.0)
    one_block = metrics.mmd_and_energy(x, y, block_rows=512)
    many_blocks = metrics.mmd_and_energy(x, y, block_rows=7)
    for key in ("mmd2", "energy"):
        # Same float32 pair terms, only the row-block grouping (and so XLA's summation order)
        # differs; mmd2 is a difference of means ~0.5, whose float32 rounding is ~3e-8 absolute.
        np.testing.assert_allclose(many_blocks[key], one_block[key], rtol=1e-6, atol=1e-7)


def test_sliced_w2_matches_sorting_brute_force(rng):
    x, y = gaussian(rng, 500, [0, 0], 1.0), gaussian(rng, 500, [1, 0.5], 0.8)
    directions = metrics.projection_directions(16)
    per_direction = [np.mean((np.sort(x @ d) - np.sort(y @ d)) ** 2) for d in directions.astype(np.float64)]
    np.testing.assert_allclose(metrics.sliced_w2(x, y, n_projections=16), np.sqrt(np.mean(per_direction)), rtol=1e-5)


def test_one_projection_matches_pot_1d_for_unequal_sizes(rng):
    # One direction, angle 0: the x coordinate; POT integrates the quantile functions itself.
    x, y = gaussian(rng, 313, [0, 0], 1.0), gaussian(rng, 200, [0.4, 3.0], 0.6)
    out_ref = np.sqrt(ot.wasserstein_1d(x[:, 0].astype(np.float64), y[:, 0].astype(np.float64), p=2))
    np.testing.assert_allclose(metrics.sliced_w2(x, y, n_projections=1), out_ref, rtol=1e-5)


def test_sliced_w2_closed_form_for_isotropic_gaussians(rng):
    # Projected on theta: N(theta.m1, s1^2) vs N(theta.m2, s2^2), W2^2 = (theta.dm)^2 + (s1 - s2)^2;
    # the mean of cos^2 over evenly spaced angles is exactly 1/2, so SW2^2 = |dm|^2 / 2 + (s1 - s2)^2.
    m1, m2, s1, s2 = np.array([0.0, 0.0]), np.array([1.0, -1.0]), 1.0, 0.5
    out_ref = np.sqrt(np.sum((m1 - m2) ** 2) / 2 + (s1 - s2) ** 2)
    out_ans = metrics.sliced_w2(gaussian(rng, 20_000, m1, s1), gaussian(rng, 20_000, m2, s2))
    # Sampling error of 1D quantiles at n = 20,000 is ~0.01; 0.02 leaves room for it.
    assert abs(out_ans - out_ref) < 0.02


def test_mmd2_closed_form_for_gaussians(rng):
    # With RBF bandwidth h in d = 2: E k(X, X') = h^2 / (h^2 + 2 s^2) for X, X' ~ N(m, s^2 I), and
    # E k(X, Y) = h^2 / (h^2 + s1^2 + s2^2) exp(-|dm|^2 / (2 (h^2 + s1^2 + s2^2))).
    h, s1, s2, dm = 1.0, 0.5, 0.8, np.array([0.7, 0.0])
    c = h * h + s1**2 + s2**2
    out_ref = h * h / (h * h + 2 * s1**2) + h * h / (h * h + 2 * s2**2) - 2 * h * h / c * np.exp(-dm @ dm / (2 * c))
    x, y = gaussian(rng, 4000, [0, 0], s1), gaussian(rng, 4000, dm, s2)
    out_ans = metrics.mmd_and_energy(x, y, bandwidth=h)["mmd2"]
    # The unbiased estimator's standard deviation at n = 4000 is ~1e-3 here (out_ref ~0.17).
    assert abs(out_ans - out_ref) < 5e-3


def test_energy_closed_form_for_gaussians(rng):
    # X - Y ~ N(dm, (s1^2 + s2^2) I): |X - Y| is Rice-distributed; X - X' gives a Rayleigh.
    s1, s2, dm = 0.5, 0.8, np.array([0.7, 0.0])
    rice_mean = lambda nu, s: scipy.stats.rice.mean(nu / s, scale=s)
    out_ref = (
        2 * rice_mean(np.linalg.norm(dm), np.hypot(s1, s2))
        - rice_mean(0.0, np.sqrt(2) * s1)
        - rice_mean(0.0, np.sqrt(2) * s2)
    )
    x, y = gaussian(rng, 4000, [0, 0], s1), gaussian(rng, 4000, dm, s2)
    # V-statistic bias ~ (E|X-X'| / n) ~ 3e-4, sampling sd ~ 5e-3 (out_ref ~0.38).
    assert abs(metrics.mmd_and_energy(x, y)["energy"] - out_ref) < 0.02


def test_exact_w2_of_translate_is_the_shift(rng):
    # The optimal plan between a set and its translate is the translation: W2 = |shift|.
    x = gaussian(rng, 200, [0, 0], 0.5)
    np.testing.assert_allclose(metrics.exact_w2(x, x + np.float32([3.0, -4.0])), 5.0, rtol=1e-5)


def test_exact_w2_closed_form_for_gaussians_with_equal_covariance(rng):
    # W2(N(m1, s^2 I), N(m2, s^2 I)) = |m1 - m2| = 3. From samples, W2^2 = |sample mean gap|^2 +
    # W2^2 of the centred sets (exact for empirical measures); the mean gap has sd
    # 0.5 * sqrt(2 / 500) = 0.032 per coordinate and the centred term adds ~0.002: 0.1 is ~3 sd.
    x, y = gaussian(rng, 500, [0, 0], 0.5), gaussian(rng, 500, [3, 0], 0.5)
    out_ans = metrics.exact_w2(x, y)
    assert abs(out_ans - 3.0) < 0.1
    gap = x.mean(0, dtype=np.float64) - y.mean(0, dtype=np.float64)
    centred = metrics.exact_w2(x - x.mean(0), y - y.mean(0))
    np.testing.assert_allclose(out_ans**2, gap @ gap + centred**2, rtol=1e-5)


def test_exact_w2_matches_pot_1d_on_a_line(rng):
    # On a line, the 2D optimal transport is the 1D monotone (sorted) coupling.
    u, v = rng.standard_normal(120), 2 + 0.5 * rng.standard_normal(120)
    embed = lambda a: np.stack([a, np.zeros_like(a)], axis=1)
    out_ref = np.sqrt(np.mean((np.sort(u) - np.sort(v)) ** 2))
    np.testing.assert_allclose(metrics.exact_w2(embed(u), embed(v)), out_ref, rtol=1e-5)


def test_identical_sets_score_zero_and_metrics_are_symmetric(rng):
    x, y = gaussian(rng, 400, [0, 0], 1.0), gaussian(rng, 300, [1, 0], 0.5)
    same = metrics.evaluate(x, x)
    assert same["sliced_w2"] == pytest.approx(0.0, abs=1e-6)
    assert same["energy"] == pytest.approx(0.0, abs=1e-6)
    assert metrics.exact_w2(x, x) == pytest.approx(0.0, abs=1e-6)
    forward, backward = metrics.evaluate(x, y), metrics.evaluate(y, x)
    for key in ("sliced_w2", "mmd2", "energy"):
        assert forward[key] > 0.01
        np.testing.assert_allclose(backward[key], forward[key], rtol=1e-5)


def test_calibration_floor_far_below_ceiling():
    scale = metrics.calibrate("moons", n_points=2000, seed=0)
    for key in ("sliced_w2", "mmd2", "energy"):
        assert scale["floor"][key] < 0.1 * scale["ceiling"][key]
    # An array (a user's file) is split into two halves for the floor.
    from_array = metrics.calibrate(np.random.default_rng(0).uniform(-1, 1, (2000, 2)))
    assert from_array["floor"]["sliced_w2"] < 0.1 * from_array["ceiling"]["sliced_w2"]


def test_bad_points_are_rejected():
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        metrics.evaluate(np.zeros((10, 3)), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.evaluate(np.full((10, 2), np.nan), np.zeros((10, 2)))


def test_exact_w2_without_pot_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ot", None)
    with pytest.raises(ImportError, match="jax-ddpm\\[quality\\]"):
        metrics.exact_w2(np.zeros((3, 2)), np.ones((3, 2)))


def test_collapsed_sets_give_numbers_not_nan(rng):
    """A sampler that collapses to one point gives a zero median distance (bandwidth 0 would make
    the kernel 0/0). All equal: every kernel value is 1 whatever the bandwidth, so MMD^2 is exactly
    0; a collapsed set against a spread one must score the brute force at the fallback bandwidth."""
    point = np.ones((100, 2), np.float32)
    same = metrics.evaluate(point, point)
    assert same == dict(sliced_w2=0.0, mmd2=0.0, energy=0.0, bandwidth=1.0)
    # 80% of the points at one spot: 64% of the pooled pairs coincide, the median is 0, and the
    # mean distance takes over.
    mostly = np.concatenate([np.zeros((160, 2)), gaussian(rng, 40, [2, 0], 0.5)]).astype(np.float32)
    h = metrics.median_bandwidth(mostly, mostly)
    assert h == pytest.approx(pdist(np.concatenate([mostly, mostly]).astype(np.float64)).mean(), rel=1e-6)
    spread = gaussian(rng, 200, [0, 0], 1.0)
    for x, y in ((point, spread), (mostly, spread), (mostly, mostly)):
        out = metrics.evaluate(x, y)
        assert all(np.isfinite(v) for v in out.values()), out
        mmd2, energy = brute_mmd2_energy(x, y, out["bandwidth"])
        np.testing.assert_allclose([out["mmd2"], out["energy"]], [mmd2, energy], rtol=1e-4, atol=1e-6)
