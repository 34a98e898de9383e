"""`python -m jax_ddpm.sample`: samples from a saved run."""

from __future__ import annotations

import numpy as np

from jax_ddpm.sample import main as sample_main
from tests.test_bad_input import one_error_line


def test_run_key_reproduces_the_runs_samples(tiny_run, tmp_path):
    out = tmp_path / "raw.npy"
    assert sample_main(["--run", str(tiny_run), "--n", "128", "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), np.load(tiny_run / "samples.npy"))


def test_ema_params_and_other_sizes(tiny_run, tmp_path):
    out = tmp_path / "ema.npy"
    assert sample_main(["--run", str(tiny_run), "--n", "128", "--params", "ema", "--out", str(out)]) == 0
    ema = np.load(out)
    assert ema.shape == (128, 2) and np.isfinite(ema).all()
    assert not np.array_equal(ema, np.load(tiny_run / "samples.npy"))
    assert sample_main(["--run", str(tiny_run), "--n", "50", "--seed", "3", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (50, 2)


def test_bad_arguments(tiny_run, tmp_path, capsys):
    out = tmp_path / "taken.npy"
    out.write_bytes(b"earlier result")
    assert sample_main(["--run", str(tiny_run), "--out", str(out)]) == 2
    assert "already exists" in one_error_line(capsys)
    assert out.read_bytes() == b"earlier result"
    assert sample_main(["--run", str(tmp_path / "nowhere")]) == 2
    assert "is not a run folder" in one_error_line(capsys)
    assert sample_main(["--run", str(tiny_run), "--params", "best"]) == 2
    assert "invalid choice 'best'" in one_error_line(capsys)
