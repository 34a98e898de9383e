"""2D toy datasets as float32 numpy arrays of shape (N, 2); framework-free on purpose.

The tutorial's three come from scikit-learn exactly as it builds them (swiss roll and s-curve keep
columns 0 and 2 and are divided by 10; moons is unscaled). scikit-learn's `make_checkerboard` is a
bicluster matrix generator, not a point cloud, so the 2D checkerboard density (as in the
flow-model literature) is drawn directly here. `dataset_for`, `held_out_for` and `data_transform`
are the one way a run's config (any object with its data fields) becomes points.

Labels (class-conditional generation, docs/guidance.md): `make_labelled_dataset` returns the same
points with a class per point for the datasets that have classes (`N_CLASSES`), and
`load_labelled_points` reads a user's (N, 3) file whose third column holds integer classes.
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
    return _labelled_moons(n, noise, rng)[0]


def _circles(n, noise, rng):
    return _labelled_circles(n, noise, rng)[0]


def _checkerboard(n, noise, rng):
    return _labelled_checkerboard(n, noise, rng)[0]


def _eight_gaussians(n, noise, rng):
    return _labelled_eight_gaussians(n, noise, rng)[0]


# The classes of the datasets that have them: each draws (points, labels) with the very draws of the
# unlabelled generator above, which keeps only the points.


def _labelled_moons(n, noise, rng):
    """scikit-learn's `make_moons(n, noise=noise, random_state=rng)` draw for draw (tests/test_datasets.py
    compares them), written out so that the default run does not import scikit-learn (1.3 s of its
    set-up): the two half circles, shuffled by `rng.shuffle` of the indices, then N(0, noise^2) added.
    Label: 0 the upper moon, 1 the lower."""
    n_out = n // 2
    n_in = n - n_out
    outer, inner = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n_in)
    x = np.vstack([np.append(np.cos(outer), 1 - np.cos(inner)), np.append(np.sin(outer), 1 - np.sin(inner) - 0.5)]).T
    y = np.hstack([np.zeros(n_out, dtype=np.intp), np.ones(n_in, dtype=np.intp)])
    indices = np.arange(n)
    rng.shuffle(indices)
    x, y = x[indices], y[indices]
    if noise is not None:
        x += rng.normal(scale=noise, size=x.shape)
    return x, y


def _labelled_circles(n, noise, rng):
    """scikit-learn's label: 0 the outer circle, 1 the inner."""
    # Small noise relative to the 0.5 ring gap; the tutorial's 0.1 would merge the rings.
    return _sklearn_datasets().make_circles(n, noise=noise * 0.5, factor=0.5, random_state=rng)


def _labelled_checkerboard(n, noise, rng):
    """The 4x4 checkerboard of the flow literature on [-2, 2]^2: uniform on the dark squares. Label: the
    parity of the dark square's column, floor(x1) mod 2, which is also its row's, floor(x2) mod 2 (the
    parity of floor(x1) + floor(x2) is even on every dark square, so it cannot be the class)."""
    x1 = rng.uniform(-2.0, 2.0, size=n)
    x2 = rng.uniform(0.0, 1.0, size=n) - rng.integers(0, 2, size=n) * 2.0
    parity = np.floor(x1) % 2
    x2 = x2 + parity
    return np.stack([x1, x2], axis=1), parity.astype(np.int64)


def _labelled_eight_gaussians(n, noise, rng):
    """Eight Gaussians of std `noise` on the circle of radius 2. Label k: the Gaussian at angle k * 45
    degrees, centre 2 (cos, sin)."""
    k = rng.integers(0, 8, size=n)
    angles = k * (np.pi / 4)
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return centres + noise * rng.standard_normal((n, 2)), k.astype(np.int64)


GENERATORS = {
    "moons": _moons,
    "swiss_roll": _swiss_roll,
    "s_curve": _s_curve,
    "circles": _circles,
    "checkerboard": _checkerboard,
    "eight_gaussians": _eight_gaussians,
}


LABELLED_GENERATORS = {
    "moons": _labelled_moons,
    "circles": _labelled_circles,
    "checkerboard": _labelled_checkerboard,
    "eight_gaussians": _labelled_eight_gaussians,
}
N_CLASSES = {"moons": 2, "circles": 2, "checkerboard": 2, "eight_gaussians": 8}
"""The number of classes of each built-in dataset that has them (labels 0 .. n - 1)."""


def _generator_rng(name: str, seed: int):
    # scikit-learn wants a legacy RandomState; derive it from the same seed.
    if name in ("moons", "swiss_roll", "s_curve", "circles"):
        return np.random.RandomState(seed)
    return np.random.default_rng(seed)


def make_dataset(name: str, n_points: int = 10_000, noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """Draw `n_points` points of a built-in dataset, float32 (n_points, 2), deterministic in `seed`."""
    if name not in GENERATORS:
        raise DataError(
            f"unknown dataset {name!r}; choose one of {', '.join(GENERATORS)} "
            "or give a path to a .npy or .csv file of shape (N, 2)"
        )
    return np.asarray(GENERATORS[name](n_points, noise, _generator_rng(name, seed)), dtype=np.float32)


def make_labelled_dataset(
    name: str, n_points: int = 10_000, noise: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`make_dataset`'s points (the same draw, bit for bit) and their classes: float32 (n_points, 2)
    and int32 (n_points,) in 0 .. N_CLASSES[name] - 1 (see each generator for what a class is)."""
    if name not in LABELLED_GENERATORS:
        known = f"{name!r} has no classes" if name in GENERATORS else f"unknown dataset {name!r}"
        raise DataError(f"{known}; a labelled dataset is one of {', '.join(LABELLED_GENERATORS)} or a file with labels")
    points, labels = LABELLED_GENERATORS[name](n_points, noise, _generator_rng(name, seed))
    return np.asarray(points, dtype=np.float32), np.asarray(labels, dtype=np.int32)


def _read_numbers(path: Path, shape: str) -> np.ndarray:
    """A .npy or .csv file's numbers as float64, any shape; `shape` ("(N, 2)") goes into the messages."""
    columns = {"(N, 2)": "two", "(N, 3)": "three"}[shape]
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist; give a .npy or .csv file of shape {shape}")
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
        return np.asarray(points, dtype=np.float64)
    except DataError:
        raise
    except (ValueError, OSError, TypeError, EOFError) as err:  # EOFError: an empty or cut .npy
        raise DataError(
            f"cannot read {str(path)!r} as numbers ({err}); "
            f"write it as a numeric .npy array or comma-separated .csv with {columns} columns"
        ) from None


def _checked_points(path: Path, points: np.ndarray) -> np.ndarray:
    """The (N, 2) float64 coordinates as float32, refused with NaN, inf or beyond float32's range."""
    with np.errstate(over="ignore"):
        points = points.astype(np.float32)  # training's precision: beyond 3.4e38 a value becomes inf
    if not np.all(np.isfinite(points)):
        bad = int(np.sum(~np.isfinite(points).all(axis=1)))
        raise DataError(
            f"data file {str(path)!r} has {bad} rows with NaN or inf (or beyond float32's 3.4e38); "
            "remove them and retry"
        )
    return points


def load_points(path: str | Path) -> np.ndarray:
    """Read a user's (N, 2) point set from .npy or .csv, checking shape and finiteness."""
    path = Path(path)
    points = _read_numbers(path, "(N, 2)")
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 2:
        raise DataError(f"data file {str(path)!r} has shape {points.shape}; it must be (N, 2) with N >= 2")
    return _checked_points(path, points)


MAX_LABEL = 2**20
"""The largest class label a data file may hold (a class-conditional model has one embedding row per class)."""


def load_labelled_points(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a user's labelled points: (N, 3) .npy or .csv, columns x, y and an integer class label.

    Returns float32 (N, 2) points (checked as `load_points` checks them) and int32 (N,) labels: whole
    numbers in 0 .. MAX_LABEL (1.0 is the label 1; 1.5, -1, NaN are refused), each with one line."""
    path = Path(path)
    table = _read_numbers(path, "(N, 3)")
    if table.ndim != 2 or table.shape[1] != 3 or table.shape[0] < 2:
        raise DataError(
            f"data file {str(path)!r} has shape {table.shape}; labelled data must be (N, 3) with N >= 2: "
            "x, y and an integer class label"
        )
    labels = table[:, 2]
    bad = ~np.isfinite(labels) | (labels != np.round(labels))
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"data file {str(path)!r} has {int(bad.sum())} labels that are not whole numbers "
            f"(row {row}: {float(labels[row])!r}); the third column must hold integer classes 0, 1, ..."
        )
    out_of_range = (labels < 0) | (labels > MAX_LABEL)
    if out_of_range.any():
        row = int(np.argmax(out_of_range))
        raise DataError(
            f"data file {str(path)!r} has {int(out_of_range.sum())} labels outside 0 .. {MAX_LABEL} "
            f"(row {row}: {int(labels[row])}); classes are numbered from 0"
        )
    return _checked_points(path, table[:, :2]), labels.astype(np.int32)


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


def get_labelled_dataset(
    name_or_path: str, n_points: int = 10_000, noise: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A built-in dataset's points and classes (`make_labelled_dataset`), or a labelled (N, 3) file's."""
    if is_builtin(name_or_path):
        return make_labelled_dataset(name_or_path, n_points, noise, seed)
    if name_or_path.endswith((".npy", ".csv")) or "/" in name_or_path:
        return load_labelled_points(name_or_path)
    return make_labelled_dataset(name_or_path, n_points, noise, seed)  # raises the unknown-dataset error


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
    """The training points a config asks for (--dataset, --n-points, --data-noise, --seed): (N, 2) float32;
    a --conditional run's are `labelled_data_for`'s (the same points for a built-in dataset)."""
    if getattr(config, "conditional", False):
        return labelled_data_for(config)[0]
    return get_dataset(config.dataset, config.n_points, config.data_noise, config.seed)


def labelled_data_for(config) -> tuple[np.ndarray, np.ndarray]:
    """A --conditional run's training points (N, 2) and their classes int32 (N,): a built-in dataset's
    (`make_labelled_dataset`) or a labelled (N, 3) file's (`load_labelled_points`)."""
    return get_labelled_dataset(config.dataset, config.n_points, config.data_noise, config.seed)


MAX_CLASSES = 1024
"""The most classes a --conditional run takes: its model learns a scale per class and layer."""


def n_classes_for(config) -> int:
    """The classes of a --conditional run: N_CLASSES of a built-in dataset, the largest label of a file
    plus one (DataError past MAX_CLASSES)."""
    if is_builtin(config.dataset):
        return N_CLASSES[config.dataset]
    n_classes = int(labels_for(config).max()) + 1
    if n_classes > MAX_CLASSES:
        raise DataError(
            f"data file {config.dataset!r} has labels up to {n_classes - 1}; a class-conditional run takes at "
            f"most {MAX_CLASSES} classes, 0 .. {MAX_CLASSES - 1}"
        )
    return n_classes


def labels_for(config) -> np.ndarray:
    """The class of each of `dataset_for(config)`'s points (a --conditional run): int32 (N,)."""
    return labelled_data_for(config)[1]


def class_proportions(config) -> np.ndarray:
    """The share of each class among a --conditional run's training points: float64 (n_classes_for(config),)."""
    if not is_builtin(config.dataset):  # a file's content may change: read afresh
        counts = np.bincount(labels_for(config), minlength=n_classes_for(config))
        return counts / counts.sum()
    return _class_proportions(config.dataset, config.n_points, config.data_noise, config.seed)


@functools.lru_cache(maxsize=8)
def _class_proportions(dataset: str, n_points: int, noise: float, seed: int) -> np.ndarray:
    counts = np.bincount(make_labelled_dataset(dataset, n_points, noise, seed)[1], minlength=N_CLASSES[dataset])
    shares = counts / counts.sum()
    shares.flags.writeable = False  # shared by every caller
    return shares


def data_transform(config, data: Optional[np.ndarray] = None) -> tuple[np.ndarray, float]:
    """(shift (2,), scale) with model units = (data - shift) / scale: the training points' mean and
    the standard deviation of all their coordinates with --normalize, (0, 1) without. `data`: the
    config's training points when already drawn; otherwise they are drawn once per process (every
    sampling chunk maps its points back with this)."""
    if not config.normalize:
        return np.zeros(2, np.float32), 1.0
    if data is None:
        labelled = getattr(config, "conditional", False)
        return _drawn_transform(config.dataset, config.n_points, config.data_noise, config.seed, labelled)
    return _transform_of(data)


@functools.lru_cache(maxsize=8)
def _drawn_transform(dataset: str, n_points: int, noise: float, seed: int, labelled=False) -> tuple[np.ndarray, float]:
    if labelled:  # a --conditional run's: a labelled file's points
        return _transform_of(get_labelled_dataset(dataset, n_points, noise, seed)[0])
    return _transform_of(get_dataset(dataset, n_points, noise, seed))


def _transform_of(data: np.ndarray) -> tuple[np.ndarray, float]:
    shift = data.mean(axis=0).astype(np.float32)
    shift.flags.writeable = False  # shared by every caller of the cached transform
    return shift, float(data.std())


def held_out_for(config, n: int) -> np.ndarray:
    """The held-out reference (n, 2) that samples of this config are scored against (`held_out_points`, draw 0;
    a --conditional run's labelled file: its points)."""
    if getattr(config, "conditional", False) and not is_builtin(config.dataset):
        return load_labelled_points(config.dataset)[0]
    return held_out_points(config.dataset, n, config.data_noise, config.seed)
