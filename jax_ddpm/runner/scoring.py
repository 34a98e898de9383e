"""`ddpm_harness.metrics.evaluate` in jax.numpy for K models at once: `score(samples (K, n, 2),
reference (m, 2)) -> {metric: (K,)}`, one jitted program.

The same definitions and the same choices as the numpy version (its docstring has the equations):
the sliced W2 over `metrics.projection_directions`, summed over `metrics.quantile_grid`'s merged
breakpoints; the MMD^2 bandwidth the median pairwise distance of the pooled strided subsamples
(`metrics.subsample_stride`), else their mean distance, else 1; the unbiased MMD^2 and the
V-statistic energy distance. What differs is the arithmetic: the device sums the pair terms in
float32 (numpy adds its float32 row sums in float64), in another order, with XLA's exp; the means
and their differences are taken in float64 on the host, as numpy does. The numpy version stays the
oracle (tests/test_device_metrics.py).

Memory stays bounded: the models go through `lax.map` one at a time on a CPU, a few at a time (vmapped)
on a GPU (`VMAP_MODELS`), and each pair of sets is summed BLOCK_ROWS rows at a time (`lax.scan`), ~block x m
floats per model in flight.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_harness import metrics

MEMORY_BYTES = 128 * 2**20
"""About how much the pairwise blocks of the models scored together may hold (sets `models_at_once`)."""
BLOCK_ROWS = 64
"""Rows of a set whose pair terms are summed at once: on XLA:CPU a 64 x 10^4 block stays in cache,
numpy's 256 rows were ~3x slower."""
METRICS = ("sliced_w2", "mmd2", "energy", "bandwidth")
VMAP_MODELS = {"cpu": False, "gpu": True, "tpu": True}
"""Whether models are scored vmapped, several per `lax.map` step (`models_at_once`), per backend. On XLA:CPU
one model at a time was faster (0.75 against 1.10 s a model at n = m = 10^4, docs/speed.md) and gives each
model the same program whatever K, so its scores do not depend on the models scored beside it (a sweep's
configuration scores bit for bit as its single run)."""


def score(samples, reference, block_rows: int = BLOCK_ROWS) -> dict[str, np.ndarray]:
    """Every metric of `metrics.evaluate` for each of K sample sets (K, n, 2) against reference
    (m, 2): {metric: (K,) float64}, NaN for a model whose samples hold NaN or inf."""
    samples = np.asarray(samples, np.float32)
    if samples.ndim != 3 or samples.shape[1:] != (samples.shape[1], 2) or samples.shape[1] < 2:
        raise ValueError(f"samples must have shape (K, n, 2) with n >= 2, got {samples.shape}")
    reference = metrics._as_points(reference, "reference")
    finite = np.isfinite(samples).all(axis=(1, 2))
    safe = np.where(finite[:, None, None], samples, np.float32(0))  # a diverged model is scored as zeros, then dropped
    n, m = samples.shape[1], reference.shape[0]
    widths, x_index, y_index = metrics.quantile_grid(n, m)
    at_once = models_at_once(n, m, block_rows) if VMAP_MODELS.get(jax.default_backend(), True) else 1
    program = _program(n, m, block_rows, at_once)
    out = program(safe, reference, metrics.projection_directions(), widths.astype(np.float32), x_index, y_index)
    sliced, bandwidth, dist_xx, kern_xx, dist_xy, kern_xy, kern_yy, dist_yy = (np.asarray(v, np.float64) for v in out)
    # the means and differences in float64, as numpy takes them (a collapsed set gives exactly 0)
    k_xx, k_yy, k_xy = (kern_xx - n) / (n * (n - 1)), (kern_yy - m) / (m * (m - 1)), kern_xy / (n * m)
    energy = 2.0 * dist_xy / (n * m) - dist_xx / (n * n) - dist_yy / (m * m)
    values = dict(sliced_w2=sliced, mmd2=k_xx + k_yy - 2.0 * k_xy, energy=energy, bandwidth=bandwidth)
    return {k: np.where(finite, v, np.nan) for k, v in values.items()}


def models_at_once(n: int, m: int, block_rows: int) -> int:
    """Models vmapped together: their row blocks (block_rows x max(n, m) pair terms, a few floats
    each) and their median-heuristic distance matrices fit MEMORY_BYTES."""
    pooled = min(n, metrics.MEDIAN_SUBSAMPLE) + min(m, metrics.MEDIAN_SUBSAMPLE)
    per_model = 4 * (3 * block_rows * max(n, m) + 2 * pooled**2 + 2 * (n + m) * metrics.N_PROJECTIONS)
    return max(1, MEMORY_BYTES // per_model)


@functools.lru_cache(maxsize=None)
def _program(n: int, m: int, block_rows: int, at_once: int):
    return jax.jit(functools.partial(_score_models, block_rows=block_rows, at_once=at_once))


def _score_models(samples, reference, directions, widths, x_index, y_index, *, block_rows, at_once):
    """Per model (K,): sliced W2, bandwidth, and the pair sums sum|x - x'|, sum k(x, x'), sum|x - y|,
    sum k(x, y), sum k(y, y') (kernel at the model's bandwidth); and sum|y - y'| (a scalar)."""
    y_sorted = _sorted_projections(reference, directions)  # (P, m), shared by every model
    dist_yy, _ = _pair_sums(reference, reference, 1.0, block_rows)

    def one(x):
        bandwidth = _median_bandwidth(x, reference)
        dist_xx, kern_xx = _pair_sums(x, x, bandwidth, block_rows)
        dist_xy, kern_xy = _pair_sums(x, reference, bandwidth, block_rows)
        _, kern_yy = _pair_sums(reference, reference, bandwidth, block_rows)
        sliced = _sliced_w2(x, y_sorted, directions, widths, x_index, y_index)
        return sliced, bandwidth, dist_xx, kern_xx, dist_xy, kern_xy, kern_yy

    return (*jax.lax.map(one, samples, batch_size=None if at_once == 1 else at_once), dist_yy)


def _sliced_w2(x, y_sorted, directions, widths, x_index, y_index):
    """sqrt(mean_theta W2^2(theta . x, theta . y)) with the exact 1D W2^2 of `metrics.quantile_grid`."""
    x_sorted = _sorted_projections(x, directions)  # (P, n)
    per_direction = jnp.square(x_sorted[:, x_index] - y_sorted[:, y_index]) @ widths  # (P,)
    return jnp.sqrt(jnp.mean(per_direction))


def _sorted_projections(points, directions):
    """The points' projections on each direction, sorted: (P, n). Sorted along the minor axis, which XLA:CPU
    sorts ~2x faster than along the major one (0.11 against 0.22 s for 64 x 10^4, docs/speed.md)."""
    return sort_floats((points @ directions.T).T)


def sort_floats(values):
    """jnp.sort of float32 values (no NaN) along the last axis, as int32 keys whose order is the floats' (the
    sign bit flips the others), which XLA:CPU sorts ~4x faster than floats, whose comparator it calls per
    comparison (4.2 against 17.3 ms for 64 x 2,000 values, docs/speed.md). The same values as jnp.sort; of
    values equal as floats, -0.0 comes before 0.0, and denormals (zeros to XLA:CPU's comparison) by value."""
    keys = jax.lax.bitcast_convert_type(values, jnp.int32)
    flip = lambda k: k ^ ((k >> 31) & 0x7FFFFFFF)  # noqa: E731 (its own inverse)
    return jax.lax.bitcast_convert_type(
        flip(jax.lax.sort(flip(keys), dimension=values.ndim - 1, is_stable=False)), jnp.float32
    )


def _median_bandwidth(x, y):
    """`metrics.median_bandwidth`: the median distance of the pooled strided subsamples over pairs
    i < j (the average of the two middle ones for an even count, as np.median), else the mean
    distance, else 1. The order statistics are exact, found without sorting ~2M values (`_kth_pair`);
    each pass over the pairs recomputes the distances (a few thousand points stay in cache, a p x p
    matrix does not)."""
    pooled = jnp.concatenate([x[:: metrics.subsample_stride(x.shape[0])], y[:: metrics.subsample_stride(y.shape[0])]])
    p = pooled.shape[0]
    pairs = p * (p - 1) // 2
    low = _kth_pair(pooled, (pairs - 1) // 2)
    # the next order statistic: low again when it is tied, else the smallest distance above it
    high = jnp.where(_pairs_at_most(pooled, low) >= pairs // 2 + 1, low, _smallest_above(pooled, low))
    median = 0.5 * (jnp.sqrt(low) + jnp.sqrt(high))

    def fallback():  # a pass over the pairs, only for a set whose median distance is zero
        mean = 0.5 * jnp.sum(jnp.sqrt(_squared_distances(pooled, pooled))) / pairs
        return jnp.where(mean > 0, mean, 1.0)

    return jax.lax.cond(median > 0, lambda: median, fallback)


# Passes over the pairs of pooled (p, 2): each recomputes the distances, which XLA fuses into its reduction (a
# materialised p x p matrix, read pass after pass, cost more than recomputing it).


def _pairs_at_most(pooled, threshold):
    """How many pairs i < j of pooled are at most threshold >= 0 apart (squared)."""
    return (jnp.sum(_squared_distances(pooled, pooled) <= threshold, dtype=jnp.int32) - pooled.shape[0]) // 2


def _smallest_above(pooled, threshold):
    """The smallest squared pair distance above threshold >= 0 (inf when none is)."""
    d2 = _squared_distances(pooled, pooled)
    return jnp.min(jnp.where(d2 > threshold, d2, jnp.inf))


def _largest_at_most(pooled, threshold):
    """The largest squared pair distance at most threshold >= 0 (0 when none is: the diagonal's)."""
    d2 = _squared_distances(pooled, pooled)
    return jnp.max(jnp.where(d2 <= threshold, d2, 0.0))


SEARCH_SAMPLE = 32
"""Points of the pooled set whose pair distances guide `_kth_pair`'s first guesses."""
SEARCH_OVERSHOOT = 8.0
"""`_kth_pair` aims past the rank by 1/SEARCH_OVERSHOOT of its last miss, so that the next count lands on the
other side of it (a regula falsi that always keeps one end moves the other end slowly)."""
SEARCH_GUESSES = 16
"""Counts after which `_kth_pair` only halves the bits between its bounds (at most 31 more)."""
_INF_BITS = 0x7F800000


def _kth_pair(pooled, k: int):
    """The k-th smallest (0-based) squared distance over pairs i < j of pooled (p, 2), exactly: a search
    on the float32 bits of the distances (monotone for floats >= 0, and sqrt is monotone) that brackets
    the answer, lo < v <= hi, with the number of pairs at or below each bound, one pass over the pairs a count.

    Each guess interpolates between the bounds by their counts, on the sorted distances of a strided subsample
    (where the pair distribution is far from linear in value) or linearly in value (within a gap of the
    subsample), aiming past the rank by a fraction of the last miss so the two bounds close in alternately.
    A guess that finds no pair between itself and a bound (a gap in the data) is followed by a halving of the
    bits between the bounds, which crosses any gap in at most 31 halvings; so is every guess after
    SEARCH_GUESSES. The search stops when one bound pins the answer: exactly k + 1 pairs at or below hi (the
    answer is the largest of them), k at or below lo (the smallest above it), or adjacent floats.
    About 10 passes on moons-, swiss-roll- and s-curve-like sets (docs/speed.md), where bisection takes 31; sets
    made to defeat the guesses (ties, gaps, heavy tails: tests/test_device_metrics.py) take up to ~35."""
    p = pooled.shape[0]
    rank = k + 1  # pairs at or below the answer, at least
    sample = pooled[:: max(1, p // SEARCH_SAMPLE)]
    guide = sort_floats(_squared_distances(sample, sample).ravel())
    bits = lambda v: jax.lax.bitcast_convert_type(v, jnp.int32)  # noqa: E731
    value = lambda i: jax.lax.bitcast_convert_type(i, jnp.float32)  # noqa: E731

    def pin(state):  # one bound pins the answer: a last pass finds it
        lo, hi, _, count_hi = state[:4]
        answer = jax.lax.cond(
            count_hi == rank, lambda: _largest_at_most(pooled, value(hi)), lambda: _smallest_above(pooled, value(lo))
        )
        return (bits(answer) - 1, bits(answer), *state[2:])

    def guess(state):
        lo, hi, count_lo, count_hi, miss, halve, guesses = state
        low, high = value(jnp.maximum(lo, 0)), value(hi)
        aim = rank - 0.5 - jnp.sign(miss) * jnp.maximum(0.5, jnp.abs(miss) / SEARCH_OVERSHOOT)
        frac = (jnp.clip(aim, count_lo + 0.5, count_hi - 0.5) - count_lo) / (count_hi - count_lo)
        g_lo = jnp.searchsorted(guide, low, side="right")
        g_hi = jnp.searchsorted(guide, high, side="left")
        in_guide = guide[jnp.minimum(g_lo + jnp.floor(frac * (g_hi - g_lo)).astype(jnp.int32), guide.shape[0] - 1)]
        linear = low + frac * (high - low)
        halfway = jnp.where(lo < 0, 0.0, value(lo + (hi - lo) // 2))  # in bits: ties at 0 are found in one pass
        at = jnp.where(g_hi - g_lo >= 2, in_guide, jnp.where(hi < _INF_BITS, linear, halfway))
        at = jnp.where(halve | (guesses >= SEARCH_GUESSES), halfway, at)
        mid = jnp.clip(bits(at), lo + 1, hi - 1)
        count = _pairs_at_most(pooled, value(mid))
        enough = count >= rank
        gap = (count == count_lo) | (count == count_hi)
        return (
            jnp.where(enough, lo, mid),
            jnp.where(enough, mid, hi),
            jnp.where(enough, count_lo, count),
            jnp.where(enough, count, count_hi),
            (count - (rank - 0.5)).astype(jnp.float32),
            gap,
            guesses + 1,
        )

    def step(state):
        lo, _, count_lo, count_hi = state[:4]
        pinned = (count_hi == rank) | ((count_lo == rank - 1) & (lo >= 0))
        return jax.lax.cond(pinned, pin, guess, state)

    # lo = -1: below 0, no pair at or below it; hi = inf, every pair at or below it
    start = (jnp.int32(-1), jnp.int32(_INF_BITS), jnp.int32(0), jnp.int32(p * (p - 1) // 2))
    state = (*start, jnp.float32(0), jnp.bool_(False), jnp.int32(0))
    _, hi, *_ = jax.lax.while_loop(lambda s: s[1] - s[0] > 1, step, state)
    return value(hi)


def _squared_distances(x, y):
    """|x_i - y_j|^2 (n, m), computed as numpy's `_pair_row_sums` does (per coordinate, then added)."""
    return jnp.square(x[:, None, 0] - y[None, :, 0]) + jnp.square(x[:, None, 1] - y[None, :, 1])


def _pair_sums(x, y, bandwidth, block_rows: int):
    """(sum_ij |x_i - y_j|, sum_ij exp(-|x_i - y_j|^2 / (2 h^2))) over x (n, 2) and y (m, 2),
    block_rows rows of x at a time (the last block padded, its padding masked out)."""
    n = x.shape[0]
    blocks = -(-n // block_rows)
    padded = jnp.zeros((blocks * block_rows, 2), x.dtype).at[:n].set(x).reshape(blocks, block_rows, 2)
    real = (jnp.arange(blocks * block_rows) < n).reshape(blocks, block_rows)
    scale = -0.5 / jnp.square(jnp.asarray(bandwidth, jnp.float32))

    def block(_, rows_mask):
        rows, mask = rows_mask
        d2 = _squared_distances(rows, y)  # (block_rows, m)
        dist = jnp.where(mask, jnp.sum(jnp.sqrt(d2), axis=1), 0.0)
        kern = jnp.where(mask, jnp.sum(jnp.exp(scale * d2), axis=1), 0.0)
        return None, (dist, kern)

    _, (dist, kern) = jax.lax.scan(block, None, (padded, real))
    return jnp.sum(dist), jnp.sum(kern)
