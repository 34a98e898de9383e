"""2D toy datasets as float32 numpy arrays of shape (N, 2); framework-free on purpose.

The tutorial's three come from scikit-learn exactly as it builds them (swiss roll and s-curve keep
columns 0 and 2 and are divided by 10; moons is unscaled). scikit-learn's `make_checkerboard` is a
bicluster matrix generator, not a point cloud, so the 2D checkerboard density (as in the
flow-model literature) is drawn directly here. `dataset_for`, `held_out_for` and `data_transform`
are the one way a run's config (any object with its data fields) becomes points.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from pathlib import Path
from typing import Optional

import numpy as np


class DataError(ValueError):
    """A dataset that cannot be used; the message says why and what to do."""


def _sklearn_datasets():
    """scikit-learn's generators, imported when a dataset is drawn: it takes about 1 s to import,
    which sampling, converting and every refused command line need not pay."""
    from sklearn import datasets

    return datasets


def _swiss_roll(n, noise, rng):
    x, _ = _sklearn_datasets().make_swiss_roll(n, noise=noise, random_state=rng)
    return x[:, [0, 2]] / 10.0


def _s_curve(n, noise, rng):
    x, _ = _sklearn_datasets().make_s_curve(n, noise=noise, random_state=rng)
    return x[:, [0, 2]] / 10.0


def _moons(n, noise, rng):
    return _sklearn_datasets().make_moons(n, noise=noise, random_state=rng)[0]


def _circles(n, noise, rng):
    # Small noise relative to the 0.5 ring gap; the tutorial's 0.1 would merge the rings.
    return _sklearn_datasets().make_circles(n, noise=noise * 0.5, factor=0.5, random_state=rng)[0]


def _checkerboard(n, noise, rng):
    """The 4x4 checkerboard of the flow literature on [-2, 2]^2: uniform on the dark squares."""
    x1 = rng.uniform(-2.0, 2.0, size=n)
    x2 = rng.uniform(0.0, 1.0, size=n) - rng.integers(0, 2, size=n) * 2.0
    x2 = x2 + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1)


def _eight_gaussians(n, noise, rng):
    """Eight Gaussians of std `noise` on the circle of radius 2."""
    angles = rng.integers(0, 8, size=n) * (np.pi / 4)
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return centres + noise * rng.standard_normal((n, 2))


GENERATORS = {
    "moons": _moons,
    "swiss_roll": _swiss_roll,
    "s_curve": _s_curve,
    "circles": _circles,
    "checkerboard": _checkerboard,
    "eight_gaussians": _eight_gaussians,
}


def make_dataset(name: str, n_points: int = 10_000, noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """Draw `n_points` points of a built-in dataset, float32 (n_points, 2), deterministic in `seed`."""
    if name not in GENERATORS:
        raise DataError(
            f"unknown dataset {name!r}; choose one of {', '.join(GENERATORS)} "
            "or give a path to a .npy or .csv file of shape (N, 2)"
        )
    rng = np.random.default_rng(seed)
    # scikit-learn wants a legacy RandomState; derive it from the same seed.
    sk_rng = np.random.RandomState(seed) if name in ("moons", "swiss_roll", "s_curve", "circles") else rng
    return np.asarray(GENERATORS[name](n_points, noise, sk_rng), dtype=np.float32)


def load_points(path: str | Path) -> np.ndarray:
    """Read a user's (N, 2) point set from .npy or .csv, checking shape and finiteness."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist; give a .npy or .csv file of shape (N, 2)")
    try:
        if path.suffix == ".npy":
            points = np.load(path, allow_pickle=False)
            if points.dtype.kind not in "biuf":  # complex, strings, dates: numpy would cast them to nonsense
                raise DataError(f"data file {str(path)!r} holds {points.dtype} values; it must hold real numbers")
        elif path.suffix == ".csv":
            with warnings.catch_warnings():  # an empty file's UserWarning: reported below as its shape
                warnings.simplefilter("ignore", UserWarning)
                points = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
        else:
            raise DataError(f"data file {str(path)!r} must end in .npy or .csv")
        points = np.asarray(points, dtype=np.float64)
    except DataError:
        raise
    except (ValueError, OSError, TypeError, EOFError) as err:  # EOFError: an empty or cut .npy
        raise DataError(
            f"cannot read {str(path)!r} as numbers ({err}); "
            "write it as a numeric .npy array or comma-separated .csv with two columns"
        ) from None
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 2:
        raise DataError(f"data file {str(path)!r} has shape {points.shape}; it must be (N, 2) with N >= 2")
    with np.errstate(over="ignore"):
        points = points.astype(np.float32)  # training's precision: beyond 3.4e38 a value becomes inf
    if not np.all(np.isfinite(points)):
        bad = int(np.sum(~np.isfinite(points).all(axis=1)))
        raise DataError(
            f"data file {str(path)!r} has {bad} rows with NaN or inf (or beyond float32's 3.4e38); "
            "remove them and retry"
        )
    return points


def is_builtin(name_or_path: str) -> bool:
    """True for the name of a built-in dataset, False for a path to a file."""
    return name_or_path in GENERATORS


def get_dataset(name_or_path: str, n_points: int = 10_000, noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """A built-in dataset by name, or the points in a .npy/.csv file."""
    if is_builtin(name_or_path):
        return make_dataset(name_or_path, n_points, noise, seed)
    if name_or_path.endswith((".npy", ".csv")) or "/" in name_or_path:
        return load_points(name_or_path)
    return make_dataset(name_or_path, n_points, noise, seed)  # raises the unknown-dataset error


def file_sha256(name_or_path: str) -> Optional[str]:
    """sha256 of a data file's bytes (None for a built-in dataset): a resumed run checks its data is unchanged."""
    if is_builtin(name_or_path):
        return None
    return hashlib.sha256(Path(name_or_path).read_bytes()).hexdigest()


HELD_OUT_SEED_OFFSET = 1_000_003
"""Held-out draw k of a built-in dataset uses seed + HELD_OUT_SEED_OFFSET + k: never the training draw."""


def held_out_points(name_or_path: str, n_points: int, noise: float, seed: int, draw: int = 0) -> np.ndarray:
    """The one rule for data a model never trained on. Draw 0 is the reference every evaluation
    scores samples against (the CLIs, the benchmarks, the tests); draw 1 is the independent second
    sample of `metrics.calibrate`'s floor. A user's file is its own reference (all its points)."""
    if is_builtin(name_or_path):
        return make_dataset(name_or_path, n_points, noise, seed + HELD_OUT_SEED_OFFSET + draw)
    return load_points(name_or_path)


# ---- a config's data (duck-typed: a Config, or anything with its data fields) ------------------


def dataset_for(config) -> np.ndarray:
    """The training points a config asks for (--dataset, --n-points, --data-noise, --seed): (N, 2) float32."""
    return get_dataset(config.dataset, config.n_points, config.data_noise, config.seed)


def data_transform(config, data: Optional[np.ndarray] = None) -> tuple[np.ndarray, float]:
    """(shift (2,), scale) with model units = (data - shift) / scale: the training points' mean and
    the standard deviation of all their coordinates with --normalize, (0, 1) without. `data`: the
    config's training points when already drawn; otherwise they are drawn once per process (every
    sampling chunk maps its points back with this)."""
    if not config.normalize:
        return np.zeros(2, np.float32), 1.0
    if data is None:
        return _drawn_transform(config.dataset, config.n_points, config.data_noise, config.seed)
    return _transform_of(data)


@functools.lru_cache(maxsize=8)
def _drawn_transform(dataset: str, n_points: int, noise: float, seed: int) -> tuple[np.ndarray, float]:
    return _transform_of(get_dataset(dataset, n_points, noise, seed))


def _transform_of(data: np.ndarray) -> tuple[np.ndarray, float]:
    shift = data.mean(axis=0).astype(np.float32)
    shift.flags.writeable = False  # shared by every caller of the cached transform
    return shift, float(data.std())


def held_out_for(config, n: int) -> np.ndarray:
    """The held-out reference (n, 2) that samples of this config are scored against (`held_out_points`, draw 0)."""
    return held_out_points(config.dataset, n, config.data_noise, config.seed)
