"""Bad input: one `error:` line on stderr, exit 2 (usage) or 1 (runtime), no traceback, nothing lost."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpm_harness.config import Config
from jax_ddpm.train import main as train_main
from tests.conftest import snapshot, tiny_argv

REPO = Path(__file__).resolve().parents[1]


def one_error_line(capsys) -> str:
    """The single stderr line of a failed run (asserting there is exactly one, and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def write_file(folder: Path, name: str, content) -> str:
    path = folder / name
    if name.endswith(".npy"):
        np.save(path, content)
    else:
        path.write_text(content)
    return str(path)


BAD_OPTIONS = [
    (["--dataset", "spiral"], "unknown dataset 'spiral'"),
    (["--schedule", "exponential"], "invalid choice 'exponential'"),
    (["--num-steps", "0"], "--num-steps must be a positive integer"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--batch-size", "-4"], "--batch-size must be a positive integer"),
    (["--epochs", "ten"], "--epochs"),
    (["--beta-start", "0"], "--beta-start must lie in (0, 1)"),
    (["--beta-end", "1.5"], "--beta-end must lie in (0, 1)"),
    (["--dataset", "/no/such/points.npy"], "does not exist"),
]


@pytest.mark.parametrize("extra, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_is_a_usage_error(extra, message, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert train_main(tiny_argv(out_dir, *extra)) == 2
    assert message in one_error_line(capsys)
    assert not out_dir.exists()  # nothing half-made


BAD_FILES = [
    ("wide.npy", np.zeros((10, 3), np.float32), "has shape (10, 3)"),
    ("words.csv", "x,y\n1,2\nfoo,bar\n", "cannot read"),
    ("holes.csv", "0.1,0.2\nnan,0.3\n0.5,0.6\n", "1 rows with NaN or inf"),
    ("far.npy", np.array([[0.0, 1.0], [np.inf, 2.0], [3.0, -np.inf]]), "2 rows with NaN or inf"),
]


@pytest.mark.parametrize("name, content, message", BAD_FILES, ids=[n for n, _, _ in BAD_FILES])
def test_bad_data_file_is_a_usage_error(name, content, message, tmp_path, capsys):
    path = write_file(tmp_path, name, content)
    out_dir = tmp_path / "run"
    assert train_main(tiny_argv(out_dir, "--dataset", path)) == 2
    line = one_error_line(capsys)
    assert message in line and name in line
    assert not out_dir.exists()


@pytest.fixture
def earlier_run(tiny_run, tmp_path) -> Path:
    """A private copy of the finished tiny run, to damage or to refuse to overwrite."""
    run_dir = tmp_path / "earlier"
    shutil.copytree(tiny_run, run_dir)
    return run_dir


def test_existing_out_dir_without_resume_is_refused(earlier_run, capsys):
    before = snapshot(earlier_run)
    assert train_main(tiny_argv(earlier_run)) == 2
    assert "already exists and is not empty; add --resume" in one_error_line(capsys)
    assert snapshot(earlier_run) == before


def test_resume_without_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert train_main(tiny_argv(tmp_path / "empty", "--resume")) == 2
    assert "holds no run" in one_error_line(capsys)


def test_incompatible_checkpoint_is_a_usage_error(earlier_run, capsys):
    before = snapshot(earlier_run)
    assert train_main(tiny_argv(earlier_run, "--resume", "--num-steps", "50", "--epochs", "30")) == 2
    assert "--num-steps 100 (now 50)" in one_error_line(capsys)
    assert snapshot(earlier_run) == before


def test_resume_with_fewer_epochs_than_done_is_refused(earlier_run, capsys):
    before = snapshot(earlier_run)
    assert train_main(tiny_argv(earlier_run, "--resume", "--epochs", "15")) == 2
    assert "at epoch 20, past --epochs 15" in one_error_line(capsys)
    assert snapshot(earlier_run) == before


def garble(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            path.write_bytes(b"not a checkpoint")


def test_unreadable_checkpoints_are_a_runtime_error(earlier_run, capsys):
    """Every checkpoint garbled: nothing to resume from; both are reported and kept aside."""
    for epoch in ("10", "20"):
        garble(earlier_run / "checkpoints" / epoch / "state")
    assert train_main(tiny_argv(earlier_run, "--resume", "--epochs", "30")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert [line.split(" ")[0] for line in lines] == ["warning:", "warning:", "error:"], lines
    assert "checkpoint 20" in lines[0] and "using checkpoint 10" in lines[0]
    assert "no readable checkpoint" in lines[2]
    assert len(list((earlier_run / "corrupt_checkpoints").iterdir())) == 4  # two folders, two manifests


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(earlier_run, capsys):
    """Resumed with an absurd learning rate, the loss overflows in the first new epoch."""
    kept = {k: v for k, v in snapshot(earlier_run).items() if k.startswith("checkpoints/") or k == "metrics.jsonl"}
    code = train_main(tiny_argv(earlier_run, "--resume", "--epochs", "30", "--lr", "1e6", "--no-plots"))
    assert code == 1
    line = one_error_line(capsys)
    assert "NaN or inf at epoch 21" in line and "last good checkpoint (epoch 20)" in line
    after = snapshot(earlier_run)
    assert {k: after.get(k) for k in kept} == kept  # checkpoints 10, 20 and the metrics untouched
    assert not any(k.startswith("checkpoints/30") for k in after)


def test_subprocess_reports_one_line_and_exit_status(tmp_path):
    """The real command line: exit status 2 and one stderr line, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "jax_ddpm.train", "--dataset", "spiral", "--out-dir", str(tmp_path / "run")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown dataset 'spiral'; choose one of moons, swiss_roll, s_curve, circles, checkerboard, "
        "eight_gaussians or give a path to a .npy or .csv file of shape (N, 2)"
    ]
    assert not (tmp_path / "run").exists()


def test_help_lists_every_option_with_its_default(capsys):
    assert train_main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(Config):
        assert f"--{field.name.replace('_', '-')}" in text, field.name
    assert "(default: moons)" in text and "(default: sigmoid)" in text and "(default: 1000)" in text


def test_an_existing_empty_out_dir_is_used(tmp_path):
    """An empty folder (say from mktemp -d) holds no results to protect: the run writes into it."""
    empty = tmp_path / "made-by-mktemp"
    empty.mkdir()
    assert train_main(tiny_argv(empty, "--no-plots")) == 0
    assert (empty / "summary.json").is_file() and (empty / "samples.npy").is_file()


def test_resume_refuses_a_data_file_changed_since(tmp_path, capsys):
    """Only the path was compared before: the file's sha256 is recorded with every checkpoint."""
    points = np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32)
    data = write_file(tmp_path, "points.npy", points)
    run_dir = tmp_path / "run"
    argv = tiny_argv(run_dir, "--dataset", data, "--no-plots", "--epochs", "10")
    assert train_main(argv) == 0
    np.save(data, points + 1)  # same path, same shape, other points
    before = snapshot(run_dir)
    assert train_main(tiny_argv(run_dir, "--dataset", data, "--no-plots", "--epochs", "20", "--resume")) == 2
    line = one_error_line(capsys)
    assert "points.npy" in line and "changed since the checkpoint" in line
    assert snapshot(run_dir) == before
    np.save(data, points)  # the original file back: the run resumes
    assert train_main(tiny_argv(run_dir, "--dataset", data, "--no-plots", "--epochs", "20", "--resume")) == 0
