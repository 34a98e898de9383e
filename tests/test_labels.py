"""Labels for class-conditional generation (issue 19, deliverable 1): the built-in datasets' classes
and a user's labelled (N, 3) data file.

The labelled draw is the unlabelled draw, bit for bit: the points of `make_dataset` are pinned by
hashes taken before labels existed. Labelled files are fuzzed in process with hypothesis (fixed seed,
bounded examples): whatever the file holds, `load_labelled_points` returns checked points and labels
or raises one `DataError` of one line.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.datasets import make_circles, make_moons

from ddpm_harness.data import (
    MAX_LABEL,
    N_CLASSES,
    DataError,
    get_labelled_dataset,
    load_labelled_points,
    load_points,
    make_dataset,
    make_labelled_dataset,
)

# sha256 (first 16 hex digits) of make_dataset(name, n, noise, seed).tobytes() before labels were added.
POINTS_SHA256 = {
    ("moons", 0, 1000, 0.1): "b15f2aa550fdffac",
    ("moons", 7, 333, 0.25): "e35fd6c72233024e",
    ("circles", 0, 1000, 0.1): "fac56f1294da5e6f",
    ("circles", 7, 333, 0.25): "06b1f45bbe1bab46",
    ("eight_gaussians", 0, 1000, 0.1): "2baf72744d7d3201",
    ("eight_gaussians", 7, 333, 0.25): "8b4d03ac5d60864f",
    ("checkerboard", 0, 1000, 0.1): "9410e558378baced",
    ("checkerboard", 7, 333, 0.25): "59869f24a6115d67",
}


@pytest.mark.parametrize("name, seed, n, noise", list(POINTS_SHA256))
def test_labelled_points_are_the_unlabelled_draw_unchanged(name, seed, n, noise):
    points = make_dataset(name, n, noise, seed)
    assert hashlib.sha256(points.tobytes()).hexdigest()[:16] == POINTS_SHA256[name, seed, n, noise]
    labelled, labels = make_labelled_dataset(name, n, noise, seed)
    np.testing.assert_array_equal(labelled, points)
    assert labels.shape == (n,) and labels.dtype == np.int32
    assert set(np.unique(labels)) == set(range(N_CLASSES[name]))


@pytest.mark.parametrize("name, generator", [("moons", make_moons), ("circles", make_circles)])
def test_moons_and_circles_carry_scikit_learns_label(name, generator):
    _, labels = make_labelled_dataset(name, 500, 0.1, 3)
    np.testing.assert_array_equal(labels, generator(500, random_state=3)[1])  # labels do not depend on noise


def test_what_each_class_is():
    n = 2000
    # moons: 0 the upper moon (on the unit circle, y >= 0), 1 the lower (centre (1, 0.5), y <= 0.5).
    x, c = make_labelled_dataset("moons", n, 0.0, 0)
    np.testing.assert_allclose(np.hypot(*x[c == 0].T), 1.0, atol=1e-6)
    assert x[c == 0, 1].min() >= -1e-6 and x[c == 1, 1].max() <= 0.5 + 1e-6
    # circles: 0 the outer circle (radius 1), 1 the inner (radius 0.5).
    x, c = make_labelled_dataset("circles", n, 0.0, 0)
    np.testing.assert_allclose(np.hypot(*x.T), np.where(c == 0, 1.0, 0.5), atol=1e-6)
    # eight_gaussians: k is the Gaussian at angle k * 45 degrees, centre 2 (cos, sin).
    x, c = make_labelled_dataset("eight_gaussians", n, 0.0, 0)
    angle = c * np.pi / 4
    np.testing.assert_allclose(x, 2 * np.stack([np.cos(angle), np.sin(angle)], 1), atol=1e-6)
    # checkerboard: the parity of the dark square's column, which is also its row's.
    x, c = make_labelled_dataset("checkerboard", n, 0.0, 0)
    np.testing.assert_array_equal(np.floor(x[:, 0]) % 2, c)
    np.testing.assert_array_equal(np.floor(x[:, 1]) % 2, c)


@pytest.mark.parametrize("name", ["swiss_roll", "s_curve", "no_such_data"])
def test_datasets_without_classes_are_refused_in_one_line(name):
    with pytest.raises(DataError) as error:
        get_labelled_dataset(name, 10)
    assert "\n" not in str(error.value) and ("no classes" in str(error.value) or "unknown" in str(error.value))


def test_a_labelled_file_reads_back(tmp_path):
    points = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    labels = np.arange(50) % 3
    table = np.column_stack([points, labels])
    np.save(tmp_path / "d.npy", table)
    np.savetxt(tmp_path / "d.csv", table, delimiter=",", fmt="%.9g")
    np.save(tmp_path / "ints.npy", np.column_stack([np.arange(4), np.arange(4), [0, 1, 1, 0]]))
    for path in (tmp_path / "d.npy", tmp_path / "d.csv"):
        out_points, out_labels = get_labelled_dataset(str(path))
        np.testing.assert_array_equal(out_points, points)
        np.testing.assert_array_equal(out_labels, labels)
        assert out_labels.dtype == np.int32
    assert load_labelled_points(tmp_path / "ints.npy")[1].tolist() == [0, 1, 1, 0]
    with pytest.raises(DataError, match=r"shape \(50, 3\); it must be \(N, 2\)"):
        load_points(tmp_path / "d.npy")  # the unlabelled reader is unchanged: three columns are refused


@pytest.mark.parametrize(
    "content, message",
    [
        ("0,0,1.5\n1,1,0\n", "not whole numbers"),
        ("0,0,-1\n1,1,0\n", "outside 0"),
        ("0,0,nan\n1,1,0\n", "not whole numbers"),
        ("0,0,inf\n1,1,0\n", "not whole numbers"),
        (f"0,0,{MAX_LABEL + 1}\n1,1,0\n", "outside 0"),
        ("0,0\n1,1\n", r"shape \(2, 2\); labelled data must be \(N, 3\)"),
        ("0,0,0,0\n1,1,1,1\n", r"shape \(2, 4\)"),
        ("0,0,1\n", r"shape \(1, 3\)"),
        ("0,nan,1\n1,1,0\n", "NaN or inf"),
        ("0,0,a\n1,1,0\n", "cannot read"),
        ("", "shape"),
    ],
)
def test_a_malformed_labelled_file_is_one_line(content, message, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        load_labelled_points(path)
    assert "\n" not in str(error.value)


labels_column = st.one_of(
    hnp.arrays(np.int64, 16, elements=st.integers(-3, 12)),
    hnp.arrays(np.float64, 16, elements=st.sampled_from([0.0, 1.0, 2.0, 7.0, 0.5, -0.0, -1.0, 1e30, np.nan, np.inf])),
)
coordinates = hnp.arrays(np.float64, (16, 2), elements=st.sampled_from([0.5, -2.0, 1e30, 1e39, np.nan, -np.inf]))


@st.composite
def labelled_file(draw) -> tuple[str, bytes]:
    table = np.column_stack([draw(coordinates), draw(labels_column)])
    kind = draw(st.sampled_from(["npy", "csv", "shape", "dtype", "truncated"]))
    if kind == "shape":
        table = table[:, : draw(st.sampled_from([1, 2]))] if draw(st.booleans()) else table[: draw(st.integers(0, 1))]
    if kind == "dtype":
        with np.errstate(over="ignore", invalid="ignore"):  # nan and 1e30 cast to int8 or float16
            table = table.astype(draw(st.sampled_from(["complex64", "U8", "int8", "float16"])))
    buffer = io.BytesIO()
    np.save(buffer, table)
    if kind == "csv":
        return ".csv", "".join(",".join(repr(float(v)) for v in row) + "\n" for row in table).encode()
    content = buffer.getvalue()
    return ".npy", content[: draw(st.integers(0, len(content) - 1))] if kind == "truncated" else content


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=labelled_file())
def test_fuzzed_labelled_files_load_or_fail_in_one_line(file, tmp_path):
    suffix, content = file
    path = tmp_path / ("data" + suffix)
    path.write_bytes(content)
    try:
        points, labels = load_labelled_points(path)
    except DataError as error:
        assert "\n" not in str(error) and str(error)
        return
    table = np.load(path) if suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
    assert points.dtype == np.float32 and np.isfinite(points).all() and points.shape == (len(table), 2)
    assert labels.dtype == np.int32 and (labels >= 0).all() and (labels <= MAX_LABEL).all()
    np.testing.assert_array_equal(labels, table[:, 2].astype(np.int64))
