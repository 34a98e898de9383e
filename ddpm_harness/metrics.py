"""Sample-quality metrics between two 2D point sets, and their calibration.

`evaluate(samples, reference)` returns three distances, in numpy (framework-free, so both
implementations' command lines score their samples with the same code), chunked over row blocks so
that 10^5 x 10^5 point sets fit in memory:

- `sliced_w2`: sliced Wasserstein-2 over `N_PROJECTIONS` fixed, evenly spaced directions (no
  randomness): sqrt(mean_theta W2^2(theta . X, theta . Y)), each 1D W2 exact for empirical measures
  of any sizes. Same units as the data.
- `mmd2`: squared maximum mean discrepancy, unbiased estimator (Gretton et al. 2012, eq. 3), RBF
  kernel exp(-|x - y|^2 / (2 h^2)) with h the median pairwise distance of the pooled sets (median
  heuristic, on a fixed subsample; when more than half the pairs coincide, the mean distance, and 1
  when every point coincides). Can be slightly negative when the sets agree.
- `energy`: squared energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely and Rizzo), the
  V-statistic (zero for identical sets); scipy.stats.energy_distance returns its square root.

`exact_w2` solves the optimal transport problem with POT (O(n^3): small sets only).
`calibrate` gives the floor (two independent draws of the data) and the ceiling (data vs N(0, I))
so that a value can be read against them. Sums over pairs are accumulated per row in float32 and
across rows in float64.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np

N_PROJECTIONS = 64
"""Directions of the sliced W2: angles k * pi / N_PROJECTIONS, k = 0 .. N_PROJECTIONS - 1."""
BLOCK_ROWS = 256
"""Rows of the first set processed at once by the pairwise sums (memory ~ BLOCK_ROWS * m)."""
MEDIAN_SUBSAMPLE = 1000
"""At most this many points of each set enter the median-heuristic bandwidth."""


def _as_points(points, name: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 2:
        raise ValueError(f"{name} must have shape (n, 2) with n >= 2, got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{name} contains NaN or inf; the sampler diverged or the data is corrupt")
    return points


def projection_directions(n_projections: int = N_PROJECTIONS) -> np.ndarray:
    """Unit vectors (n_projections, 2) at evenly spaced angles in [0, pi)."""
    angles = np.arange(n_projections) * np.pi / n_projections
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


def _w2_squared_1d(x_sorted: np.ndarray, y_sorted: np.ndarray) -> np.ndarray:
    """Exact W2^2 between the empirical measures of sorted 1D samples, column by column: x_sorted
    (n, P) and y_sorted (m, P) of any sizes n and m give (P,).

    W2^2 = int_0^1 (F^-1(u) - G^-1(u))^2 du; both quantile functions are constant between the
    merged breakpoints {i/n} and {j/m}, so the integral is a finite sum.
    """
    weights, x_index, y_index = quantile_grid(x_sorted.shape[0], y_sorted.shape[0])
    x_q, y_q = x_sorted[x_index], y_sorted[y_index]  # (n + m, P)
    return weights @ np.square(x_q.astype(np.float64) - y_q)


def quantile_grid(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The merged breakpoints of two empirical quantile functions of sizes n and m, as the exact
    1D W2^2 sums over them: (widths (n + m,) float64, x_index (n + m,), y_index (n + m,)), so that
    W2^2 = sum_k widths[k] * (x_sorted[x_index[k]] - y_sorted[y_index[k]])^2. Also the device
    version's (jax_ddpm.runner.scoring), so both sum the same terms."""
    u = np.sort(np.concatenate([np.arange(1, n + 1) / n, np.arange(1, m + 1) / m]))
    lower = np.concatenate([np.zeros(1), u[:-1]])
    mid = 0.5 * (u + lower)
    x_index = np.minimum(np.floor(mid * n).astype(np.int64), n - 1)
    y_index = np.minimum(np.floor(mid * m).astype(np.int64), m - 1)
    return u - lower, x_index, y_index


def sliced_w2(x, y, n_projections: int = N_PROJECTIONS) -> float:
    """Sliced Wasserstein-2 distance between point sets x (n, 2) and y (m, 2), deterministic."""
    x, y = _as_points(x, "x"), _as_points(y, "y")
    directions = projection_directions(n_projections)
    per_direction = _w2_squared_1d(np.sort(x @ directions.T, axis=0), np.sort(y @ directions.T, axis=0))
    return float(np.sqrt(np.mean(per_direction)))


def _pair_row_sums(x: np.ndarray, y: np.ndarray, bandwidth: float, block_rows: int):
    """For every row x_i: (sum_j |x_i - y_j|, sum_j exp(-|x_i - y_j|^2 / (2 h^2))), each (n,), float64.

    Blocks of `block_rows` rows keep memory at ~block_rows * m; each row's sum is taken in float32
    (numpy's pairwise summation) and the rows are added in float64 by the caller.
    """
    scale = np.float32(-0.5 / bandwidth**2)
    dist, kern = np.empty(x.shape[0]), np.empty(x.shape[0])
    for start in range(0, x.shape[0], block_rows):
        xb = x[start : start + block_rows]
        d2 = np.square(xb[:, None, 0] - y[None, :, 0]) + np.square(xb[:, None, 1] - y[None, :, 1])
        dist[start : start + block_rows] = np.sum(np.sqrt(d2), axis=1)
        kern[start : start + block_rows] = np.sum(np.exp(scale * d2), axis=1)
    return dist, kern


def _pair_means(x: np.ndarray, y: np.ndarray, bandwidth: float, block_rows: int, same: bool):
    """Mean pairwise distance and mean kernel value over pairs (i, j), i != j when `same`."""
    dist, kern = _pair_row_sums(x, y, bandwidth, block_rows)
    dist_sum, kern_sum = float(np.sum(dist)), float(np.sum(kern))
    n, m = x.shape[0], y.shape[0]
    if same:  # the diagonal holds distance 0 and kernel exactly exp(0) = 1
        return dist_sum / (n * (n - 1)), (kern_sum - n) / (n * (n - 1)), dist_sum / (n * n)
    return dist_sum / (n * m), kern_sum / (n * m), dist_sum / (n * m)


def subsample_stride(n: int, k: int = MEDIAN_SUBSAMPLE) -> int:
    """The stride that keeps at most k of n points evenly spaced (the median heuristic's subsample)."""
    return max(1, -(-n // k))


def _strided(points: np.ndarray, k: int) -> np.ndarray:
    return points[:: subsample_stride(points.shape[0], k)]


def median_bandwidth(x, y, subsample: int = MEDIAN_SUBSAMPLE) -> float:
    """Median pairwise Euclidean distance (i < j) of the pooled sets, on at most `subsample` evenly
    strided points of each. A zero median (more than half the pairs coincide: a collapsed sampler)
    would make the kernel undefined, so it falls back to the mean distance, and to 1 when all the
    points coincide (then every kernel value is 1 whatever the bandwidth, and MMD^2 is 0)."""
    pooled = np.concatenate([_strided(_as_points(x, "x"), subsample), _strided(_as_points(y, "y"), subsample)])
    pooled = pooled.astype(np.float64)
    i, j = np.triu_indices(pooled.shape[0], k=1)
    distances = np.linalg.norm(pooled[i] - pooled[j], axis=1)
    for candidate in (np.median(distances), np.mean(distances)):
        if candidate > 0:
            return float(candidate)
    return 1.0


def mmd_and_energy(x, y, bandwidth: float | None = None, block_rows: int = BLOCK_ROWS) -> dict[str, float]:
    """Unbiased squared MMD (RBF, median-heuristic bandwidth unless given) and the squared energy
    distance between x (n, 2) and y (m, 2), from one chunked pass over each pair of sets."""
    x, y = _as_points(x, "x"), _as_points(y, "y")
    if bandwidth is None:
        bandwidth = median_bandwidth(x, y)
    _, k_xx, d_xx = _pair_means(x, x, bandwidth, block_rows, same=True)
    _, k_yy, d_yy = _pair_means(y, y, bandwidth, block_rows, same=True)
    _, k_xy, d_xy = _pair_means(x, y, bandwidth, block_rows, same=False)
    return dict(
        mmd2=float(k_xx + k_yy - 2.0 * k_xy), energy=float(2.0 * d_xy - d_xx - d_yy), bandwidth=float(bandwidth)
    )


def evaluate(samples, reference) -> dict[str, float]:
    """All fast metrics of `samples` (n, 2) against `reference` (m, 2):
    sliced_w2, mmd2, energy (see the module docstring) and the MMD bandwidth used."""
    samples, reference = _as_points(samples, "samples"), _as_points(reference, "reference")
    return dict(sliced_w2=sliced_w2(samples, reference), **mmd_and_energy(samples, reference))


def exact_w2(x, y, max_iter: int = 1_000_000) -> float:
    """Exact Wasserstein-2 distance between the empirical measures of x (n, 2) and y (m, 2), with POT
    (network simplex, O(n^3): use a few thousand points at most). Needs the `quality` extra."""
    try:
        import ot
    except ImportError:
        raise ImportError("exact_w2 needs POT: pip install 'jax-ddpm[quality]' (or pip install pot)") from None
    x = _as_points(x, "x").astype(np.float64)
    y = _as_points(y, "y").astype(np.float64)
    a = np.full(x.shape[0], 1.0 / x.shape[0])
    b = np.full(y.shape[0], 1.0 / y.shape[0])
    cost = ot.dist(x, y, metric="sqeuclidean")
    return float(np.sqrt(max(ot.emd2(a, b, cost, numItermax=max_iter), 0.0)))


def calibrate(
    dataset, n_points: int = 10_000, noise: float = 0.1, seed: int = 0, score_sets: Optional[Callable] = None
) -> dict[str, dict[str, float]]:
    """The scale to read `evaluate` against, for a dataset name or a point array (N, 2).

    floor: an independent draw of the data scored against the held-out reference a run is scored
    against (`data.held_out_points`, draws 1 and 0; for a file or an array, the two halves of its
    shuffled points): what a perfect model scores at this sample size.
    ceiling: N(0, I) against the same reference: what a model that learned nothing scores.
    `score_sets(sets (2, n, 2), reference) -> {metric: (2,)}` scores floor and ceiling together instead of
    `evaluate` (jax_ddpm's device program: its runs read their scores against floors scored the same way).
    """
    from ddpm_harness.data import get_dataset, held_out_points, is_builtin

    rng = np.random.default_rng(seed)
    if isinstance(dataset, str) and is_builtin(dataset):
        first = held_out_points(dataset, n_points, noise, seed, draw=1)
        second = held_out_points(dataset, n_points, noise, seed, draw=0)
    else:
        points = get_dataset(dataset) if isinstance(dataset, str) else _as_points(dataset, "dataset")
        points = points[rng.permutation(points.shape[0])]
        half = points.shape[0] // 2
        first, second = points[:half], points[half : 2 * half]
    gaussian = rng.standard_normal(first.shape).astype(np.float32)
    if score_sets is None:
        return dict(floor=evaluate(first, second), ceiling=evaluate(gaussian, second))
    scores = score_sets(np.stack([first, gaussian]), second)
    return {name: {k: float(v[i]) for k, v in scores.items()} for i, name in enumerate(("floor", "ceiling"))}


def calibration(
    dataset: str,
    n_points: int,
    noise: float = 0.1,
    seed: int = 0,
    labelled: bool = False,
    score_sets: Optional[Callable] = None,
    scorer: str = "numpy",
) -> dict[str, dict[str, float]]:
    """`calibrate` of a dataset name or file, computed once per (dataset, n, noise, seed, scorer) in a
    process and, for a built-in dataset, once per machine (`cache_root()/calibration/`: the values are a
    deterministic function of those five, and at n = 10,000 they cost seconds): the floor and ceiling
    every metric is printed with. `labelled`: a --conditional run's, whose file holds (N, 3) labelled points.
    `score_sets`: `calibrate`'s, named by `scorer` in the cache (scorers differ by round-off)."""
    from ddpm_harness.data import is_builtin, load_labelled_points

    if labelled and not is_builtin(dataset):
        return calibrate(load_labelled_points(dataset)[0], n_points, noise, seed, score_sets)
    return copy.deepcopy(_cached_calibration(dataset, int(n_points), float(noise), int(seed), score_sets, scorer))


CALIBRATION_VERSION = 1  # bump when calibrate or the metrics change what they compute


def cache_root() -> Path:
    """The project's cache folder: $JAX_DDPM_CACHE_DIR, else $XDG_CACHE_HOME/jax_ddpm, else ~/.cache/jax_ddpm."""
    if os.environ.get("JAX_DDPM_CACHE_DIR"):
        return Path(os.environ["JAX_DDPM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jax_ddpm"


def calibration_path(dataset: str, n_points: int, noise: float, seed: int, scorer: str = "numpy") -> Path:
    """Where a built-in dataset's calibration by `scorer` is kept (numpy's under the name it always had)."""
    by = "" if scorer == "numpy" else f"-{scorer}"
    return cache_root() / "calibration" / f"{dataset}-{n_points}-{noise!r}-{seed}{by}-v{CALIBRATION_VERSION}.json"


@functools.lru_cache(maxsize=64)
def _cached_calibration(
    dataset: str, n_points: int, noise: float, seed: int, score_sets: Optional[Callable], scorer: str
) -> dict:
    from ddpm_harness.data import is_builtin

    if not is_builtin(dataset):  # a file's content may change: computed afresh
        return calibrate(dataset, n_points, noise, seed, score_sets)
    path = calibration_path(dataset, n_points, noise, seed, scorer)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent or unreadable: computed, and stored when the folder allows
        pass
    values = calibrate(dataset, n_points, noise, seed, score_sets)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(values))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs time
    return values
