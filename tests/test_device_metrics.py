"""The device metrics (jax_ddpm.runner.scoring) against their numpy oracle (ddpm_harness.metrics),
metric by metric, on spread, shifted, unequal-sized and collapsed sets; the batched score of K
models against K single scores; a diverged model scored None.

Tolerances, from what differs: both sides compute the pair terms in float32, but numpy adds the
float32 row sums in float64 while the device sums everything in float32 in another order (and XLA's
exp differs from numpy's by an ulp or so). A mean of ~10^6..10^8 float32 terms then carries a
relative error of ~1e-7..1e-6, and MMD^2 and the energy distance are differences of such means
(values of order 1 for kernels and distances of unit-scale data): an absolute error of a few 1e-7
(measured up to 7.5e-7 at n = m = 10^4), so ATOL_PAIRS = 3e-6. The sliced W2 and the bandwidth are
sorts and sums of ~10^4 float32 terms (numpy casts to float64 first): measured relative errors below
5e-7 and 6e-8, so RTOL_SLICED = 5e-6 and RTOL_BANDWIDTH = 1e-6 (the median itself is exact: the
search finds the same order statistic, only the distance's last bit may differ).

The order statistic behind the bandwidth (`scoring._kth_pair`) is checked on its own against np.sort of the
same float32 distances, on sets made to defeat its interpolating search (ties, gaps, heavy tails, a collapse),
to 1 ulp: XLA may fuse the distance's multiply and add into one rounding where numpy rounds twice.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_harness import metrics
from ddpm_harness.config import Config
from jax_ddpm.runner import evaluation, scoring

ATOL_PAIRS = 3e-6
RTOL_SLICED = 5e-6
RTOL_BANDWIDTH = 1e-6


def gaussian(rng, n, mean, std):
    return (np.asarray(mean) + std * rng.standard_normal((n, 2))).astype(np.float32)


def moons_like(rng, n):
    angle = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    return (np.stack([x, y], 1) + 0.1 * rng.standard_normal((n, 2))).astype(np.float32)


def assert_matches_numpy(out_ans: dict, out_ref: dict) -> None:
    np.testing.assert_allclose(out_ans["sliced_w2"], out_ref["sliced_w2"], rtol=RTOL_SLICED, atol=1e-7)
    np.testing.assert_allclose(out_ans["bandwidth"], out_ref["bandwidth"], rtol=RTOL_BANDWIDTH)
    np.testing.assert_allclose(out_ans["mmd2"], out_ref["mmd2"], rtol=0, atol=ATOL_PAIRS)
    np.testing.assert_allclose(out_ans["energy"], out_ref["energy"], rtol=0, atol=ATOL_PAIRS)


def assert_calibration_matches_numpy(calibrated: dict, dataset: str, n: int, noise: float = 0.1, seed: int = 0) -> None:
    """A jax_ddpm floor and ceiling (scored by the device program) against numpy's `metrics.calibrate` of the
    same sets, within the device metrics' tolerances."""
    oracle = metrics.calibrate(dataset, n, noise, seed)
    assert set(calibrated) == {"floor", "ceiling"}
    for name in ("floor", "ceiling"):
        assert set(calibrated[name]) == set(oracle[name])
        assert_matches_numpy(calibrated[name], oracle[name])


def one(scores: dict, k: int = 0) -> dict:
    return {name: float(v[k]) for name, v in scores.items()}


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


@pytest.mark.parametrize(
    "make_x, make_y",
    [
        # sizes past MEDIAN_SUBSAMPLE (strides 3 and 2) and not multiples of the row block
        (lambda r: gaussian(r, 2500, [0, 0], 1.0), lambda r: gaussian(r, 1300, [0.3, -0.1], 0.8)),
        (lambda r: moons_like(r, 1999), lambda r: moons_like(r, 2001)),
        (lambda r: gaussian(r, 700, [3, 3], 0.05), lambda r: moons_like(r, 900)),  # far apart, narrow
        (lambda r: gaussian(r, 2, [0, 0], 1.0), lambda r: gaussian(r, 3, [0, 0], 1.0)),  # smallest sets
    ],
    ids=["gaussians", "moons", "far-narrow", "tiny"],
)
def test_each_metric_equals_numpy(rng, make_x, make_y):
    x, y = make_x(rng), make_y(rng)
    assert_matches_numpy(one(scoring.score(x[None], y)), metrics.evaluate(x, y))


def test_collapsed_sets_give_numbers_equal_to_numpy(rng):
    """The numpy fallbacks (median 0 -> mean distance -> 1) taken on the device too, with finite values."""
    point = np.ones((100, 2), np.float32)
    assert one(scoring.score(point[None], point)) == dict(sliced_w2=0.0, mmd2=0.0, energy=0.0, bandwidth=1.0)
    mostly = np.concatenate([np.zeros((160, 2)), gaussian(rng, 40, [2, 0], 0.5)]).astype(np.float32)
    spread = gaussian(rng, 200, [0, 0], 1.0)
    for x, y in ((point, spread), (mostly, spread), (mostly, mostly), (spread, point)):
        out_ans = one(scoring.score(x[None], y))
        assert all(np.isfinite(v) for v in out_ans.values()), out_ans
        assert_matches_numpy(out_ans, metrics.evaluate(x, y))


def test_batched_score_equals_single_scores(rng):
    """K models in one program (several per lax.map step, then a remainder) score as each alone."""
    y = moons_like(rng, 1500)
    xs = np.stack([gaussian(rng, 1200, [0.5, 0.2], s) for s in (0.4, 0.6, 0.8, 1.0, 1.2)])
    batched = scoring.score(xs, y)
    singles = [scoring.score(x[None], y) for x in xs]
    for k, x in enumerate(xs):
        # the same program per model; vmapping may only change float rounding, not the definitions
        for name in scoring.METRICS:
            np.testing.assert_allclose(batched[name][k], singles[k][name][0], rtol=1e-6, atol=1e-7)
        assert_matches_numpy(one(batched, k), metrics.evaluate(x, y))


def test_models_scored_a_few_at_a_time_within_the_memory_budget(monkeypatch, rng):
    """A budget that fits one model at a time gives the same scores as all at once, vmapped as on a GPU
    (the search of the median's order statistic, a while loop, then runs for all models at once)."""
    monkeypatch.setitem(scoring.VMAP_MODELS, "cpu", True)
    y = gaussian(rng, 800, [0, 0], 1.0)
    xs = np.stack([gaussian(rng, 600, [m, 0], s) for m, s in ((0.0, 1.0), (0.5, 1.0), (1.0, 1e-3))])
    xs[2, :400] = 0.0  # ties at zero: its search takes other steps than the others'
    assert scoring.models_at_once(600, 800, scoring.BLOCK_ROWS) >= 3
    together = scoring.score(xs, y)
    monkeypatch.setattr(scoring, "MEMORY_BYTES", 1)
    assert scoring.models_at_once(600, 800, scoring.BLOCK_ROWS) == 1
    apart = scoring.score(xs, y)
    for name in scoring.METRICS:
        np.testing.assert_allclose(apart[name], together[name], rtol=1e-6, atol=1e-7)
    for k, x in enumerate(xs):
        assert_matches_numpy(one(together, k), metrics.evaluate(x, y))


def test_diverged_model_scores_none_and_the_others_are_unchanged(rng):
    y = moons_like(rng, 1000)
    xs = np.stack([gaussian(rng, 800, [0, 0], 1.0), gaussian(rng, 800, [1, 0], 0.5), gaussian(rng, 800, [0, 1], 0.7)])
    xs[1, 17, 0], xs[2, 3, 1] = np.nan, np.inf
    quality = evaluation.sample_quality(xs, y)
    assert set(quality) == set(scoring.METRICS)
    for name, values in quality.items():
        assert values[1] is None and values[2] is None
    assert_matches_numpy({k: v[0] for k, v in quality.items()}, metrics.evaluate(xs[0], y))
    assert evaluation.sample_quality(xs[1], y) == {}  # one seed, diverged: no metric, as before


def test_sample_qualities_splits_one_program_back_by_name(rng):
    y = moons_like(rng, 1000)
    raw, ema = gaussian(rng, 900, [0, 0], 1.0), np.stack([gaussian(rng, 900, [0.2, 0], 0.9) for _ in range(2)])
    ema[1, 0, 0] = np.nan
    out = evaluation.sample_qualities({"raw": raw, "ema": ema}, y)
    assert_matches_numpy(out["raw"], metrics.evaluate(raw, y))
    assert_matches_numpy({k: v[0] for k, v in out["ema"].items()}, metrics.evaluate(ema[0], y))
    assert all(v[1] is None for v in out["ema"].values())


def test_calibration_is_scored_by_the_device_and_kept_per_backend(monkeypatch, tmp_path):
    """A run's floor and ceiling come from the device program (both sets in one call), equal numpy's within
    the device tolerances, and are kept in the calibration cache under the backend's name, apart from
    numpy's: a second process reads them instead of scoring again."""
    monkeypatch.setenv("JAX_DDPM_CACHE_DIR", str(tmp_path))
    metrics._cached_calibration.cache_clear()
    config = Config(dataset="moons", seed=3)
    calls = []
    score = scoring.score
    monkeypatch.setattr(scoring, "score", lambda sets, reference: calls.append(sets.shape) or score(sets, reference))
    calibrated = evaluation.calibration(config, 500)
    assert calls == [(2, 500, 2)]
    assert_calibration_matches_numpy(calibrated, "moons", 500, seed=3)
    # the same sets as numpy's, scored as samples are
    assert calibrated == metrics.calibrate("moons", 500, 0.1, 3, score_sets=score)
    stored = metrics.calibration_path("moons", 500, 0.1, 3, scorer=f"jax-{jax.default_backend()}")
    assert json.loads(stored.read_text()) == calibrated
    assert not metrics.calibration_path("moons", 500, 0.1, 3).exists()  # numpy's file is another
    metrics._cached_calibration.cache_clear()  # as a new process: read from the file, not scored again
    assert evaluation.calibration(config, 500) == calibrated and len(calls) == 1
    metrics._cached_calibration.cache_clear()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(K, n, 2\)"):
        scoring.score(np.zeros((5, 2), np.float32), np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="reference"):
        scoring.score(np.zeros((1, 5, 2), np.float32), np.full((5, 2), np.nan, np.float32))


def hard_sets(rng) -> dict:
    """Point sets whose pair distances are far from the smooth distribution `_kth_pair`'s guesses expect."""
    return {
        "moons": moons_like(rng, 600),
        "ties at zero": np.concatenate([np.zeros((380, 2)), gaussian(rng, 220, [0, 0], 1.0)]),
        "two points": np.repeat(gaussian(rng, 2, [0, 0], 1.0), 300, axis=0),
        "grid (many ties)": np.stack(np.meshgrid(np.arange(20), np.arange(30)), -1).reshape(-1, 2),
        "two far clusters (a gap)": np.concatenate(
            [gaussian(rng, 300, [0, 0], 1e-3), gaussian(rng, 300, [1e3, 1e3], 1)]
        ),
        "heavy tails": rng.standard_cauchy((600, 2)),
        "a diverging half": np.concatenate([moons_like(rng, 300), gaussian(rng, 300, [0, 0], 1e6)]),
        "collapsed": np.ones((600, 2)),
        "three points": gaussian(rng, 3, [0, 0], 1.0),
    }


def test_kth_pair_is_the_order_statistic_of_the_pair_distances(rng):
    kth = jax.jit(scoring._kth_pair, static_argnums=1)
    for name, points in hard_sets(rng).items():
        points = np.asarray(points, np.float32)
        p = points.shape[0]
        i, j = np.triu_indices(p, k=1)
        ordered = np.sort(np.square(points[i, 0] - points[j, 0]) + np.square(points[i, 1] - points[j, 1]))
        for k in sorted({0, 1, len(ordered) // 10, (len(ordered) - 1) // 2, len(ordered) // 2, len(ordered) - 1}):
            found = np.asarray(kth(jnp.asarray(points), k))
            ulps = np.abs(found.view(np.int32).astype(np.int64) - ordered[k].view(np.int32))
            assert ulps <= 1, (name, k, found, ordered[k])


def test_sort_floats_gives_jnp_sort_values(rng):
    values = np.concatenate([rng.standard_normal(500), [0.0, -0.0, 0.0, -0.0, np.inf, -np.inf, 3.0, 3.0, -3.0]])
    rows = np.stack([rng.permutation(values) for _ in range(4)]).astype(np.float32)
    ours = np.asarray(scoring.sort_floats(jnp.asarray(rows)))
    np.testing.assert_array_equal(ours, np.asarray(jnp.sort(rows, axis=1)))  # -0.0 == 0.0 here
    for row in ours:
        zeros = np.signbit(row[row == 0])
        assert zeros.tolist() == [True, True, False, False]  # -0.0 before 0.0
    # denormals: XLA:CPU's float comparison takes them for zeros (jnp.sort leaves them among the zeros);
    # the integer keys order them by value, as numpy does
    tiny = np.float32(1e-45)
    row = rng.permutation(np.array([tiny, -tiny, 0.0, 2 * tiny, -1.0, 1.0, -2 * tiny], np.float32))
    np.testing.assert_array_equal(np.asarray(scoring.sort_floats(jnp.asarray(row))), np.sort(row))
