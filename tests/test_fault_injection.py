"""Fault injection: a real training process SIGKILLed at random moments and resumed after each kill
ends bit for bit where an uninterrupted run ends; resuming with another chunk length (--epochs
grown, --checkpoint-every changed) does too; a second writer, a full disk and a read-only folder
get one line and lose nothing.

The number of kills is JAX_DDPM_KILLS (3 by default, for CI; docs/reliability.md's figures come from
JAX_DDPM_KILLS=25). The moments are drawn from a fixed seed over the length of an uninterrupted
process, so kills land in imports, compilation, training chunks, checkpoint writes, sampling and
the summary alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ddpm_harness.config import Config, ConfigError
from ddpm_harness.memory import SAMPLE_CHUNK, chain_bytes, check_chain_fits
from ddpm_harness.runs import CONFIG_FILE, LOCK_FILE
from ddpm_harness.sweeps import SWEEP_FILE
from jax_ddpm.runner.checkpoint import restore_run
from tests.conftest import assert_same_run, snapshot, tiny_argv, train_main
from tests.test_bad_input import one_error_line

REPO = Path(__file__).resolve().parents[1]
KILLS = int(os.environ.get("JAX_DDPM_KILLS", "3"))
# 32 steps an epoch, 100 epochs, a checkpoint every 10: training long enough to be hit mid-chunk.
SIZES = dict(batch_size=8, epochs=100, n_samples=64, n_eval=64)


def starter(module: str, written_first: str, *extra: str, **sizes) -> Callable[[Path], subprocess.Popen]:
    """start(folder): `python -m module` on tiny_argv(folder, *extra, **sizes) in a subprocess, with --resume
    once the folder holds `written_first` (the file a run or a sweep writes before anything else)."""

    def start(folder: Path) -> subprocess.Popen:
        resume = ["--resume"] if (folder / written_first).is_file() else []
        return subprocess.Popen(
            [sys.executable, "-m", module, *tiny_argv(folder, *extra, *resume, **sizes)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    return start


start = starter("jax_ddpm.train", CONFIG_FILE, "--no-plots", **SIZES)


def kill_at_random_moments(start_fn, kills: int, duration: float, tmp_path: Path, seed: int) -> list[Path]:
    """Start (or resume) a run with `start_fn(folder)` and SIGKILL it at a moment drawn over `duration`,
    `kills` times; a run that finishes before its moment is done, and the next kill goes to a fresh
    folder. The folders used, each left killed (or finished)."""
    rng = np.random.default_rng(seed)
    folders, current, tried = [], None, 0
    while tried < kills:
        if current is None:
            current = tmp_path / f"killed{len(folders)}"
            folders.append(current)
        proc = start_fn(current)
        time.sleep(rng.uniform(0.0, duration))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            tried += 1
        elif proc.returncode == 0:
            current = None
        else:
            raise AssertionError(f"a resumed run failed: {proc.stderr.read()}")
        proc.wait()
    return folders


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    whole = tmp_path / "whole"
    began = time.monotonic()
    proc = start(whole)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    duration = time.monotonic() - began

    folders = kill_at_random_moments(start, KILLS, duration, tmp_path, seed=2026)
    for folder in folders:  # each killed run resumed to its end equals the uninterrupted one
        proc = start(folder)
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
        assert_same_run(folder, whole)
    report = os.environ.get("JAX_DDPM_FAULT_REPORT")
    if report:
        Path(report).write_text(
            json.dumps(dict(kills=KILLS, runs=len(folders), all_equal=True, seconds_per_run=round(duration, 1)))
        )


def test_a_run_writes_its_config_before_anything_else(tmp_path, monkeypatch):
    """A kill between the folder's first file and config.json once left a folder that neither a new run (not
    empty) nor --resume (no config.json) would take (CI, 2026-12-05): config.json now comes first."""
    from jax_ddpm.runner import distributed

    seen = []
    monkeypatch.setattr(distributed, "Checkpointer", lambda run_dir: seen.append(sorted(os.listdir(run_dir))))
    run_dir = distributed.open_outputs(Config(out_dir=str(tmp_path / "run")))[0]
    distributed.release_run_dir(run_dir)
    assert seen == [sorted([CONFIG_FILE, LOCK_FILE])]


@pytest.mark.parametrize("left", [[LOCK_FILE], [LOCK_FILE, CONFIG_FILE + ".tmp"]])
def test_a_run_killed_before_its_config_landed_is_started_again(tmp_path, left):
    """What a kill before config.json's rename leaves holds no results: the same command starts the run."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in left:
        (run_dir / name).write_text("{" if name.endswith(".tmp") else "")
    assert train_main(tiny_argv(run_dir, "--no-plots", "--epochs", "10")) == 0
    assert (run_dir / "summary.json").is_file()


def test_a_run_killed_right_after_its_config_is_resumed_from_the_beginning(tmp_path):
    """config.json alone (killed before any checkpoint): --resume trains from epoch 0 to the same end."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert train_main(tiny_argv(whole, "--no-plots", "--epochs", "10")) == 0
    killed.mkdir()
    shutil.copy(whole / CONFIG_FILE, killed / CONFIG_FILE)
    assert train_main(tiny_argv(killed, "--no-plots", "--epochs", "10", "--resume")) == 0
    assert_same_run(killed, whole)


def test_resume_with_another_chunk_length_equals_an_uninterrupted_run(tmp_path):
    """20 epochs in chunks of 10, then resumed to 30 with checkpoints every 15 (chunks of 5)."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train_main(tiny_argv(whole, "--no-plots", "--epochs", "30")) == 0
    assert train_main(tiny_argv(resumed, "--no-plots", "--epochs", "20")) == 0
    assert train_main(tiny_argv(resumed, "--no-plots", "--epochs", "30", "--checkpoint-every", "15", "--resume")) == 0
    assert_same_run(resumed, whole)


def test_a_second_writer_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "jax_ddpm.train", *tiny_argv(run_dir, "--no-plots", "--epochs", "100000", **SIZES)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / CONFIG_FILE).is_file():  # written once the first run holds the lock
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.01)
        second = subprocess.run(
            [sys.executable, "-m", "jax_ddpm.train", *tiny_argv(run_dir, "--no-plots", "--resume", **SIZES)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert first.poll() is None, "the first run ended before the second tried"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "is being written by another process" in lines[0], second.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs: enough for the run's first checkpoints, too small for all of them."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    assert done.returncode == 0, f"this test mounts a small tmpfs (as root): {done.stderr}"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(small_disk, capsys):
    run_dir = small_disk / "run"
    code = train_main(tiny_argv(run_dir, "--epochs", "200", "--checkpoint-every", "10", "--no-plots"))
    line = one_error_line(capsys)
    assert code == 1 and "failed" in line and ("No space left" in line or "space" in line), line
    assert "--resume" in line
    # The checkpoint it names is whole: sampling from it works.
    config, state, record = restore_run(run_dir)
    assert 10 <= record["epoch"] < 200


def test_read_only_folder_is_one_line_and_untouched(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train_main(tiny_argv(run_dir, "--no-plots", "--epochs", "10")) == 0
    before = snapshot(run_dir)
    for path in [run_dir, *run_dir.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        if os.access(run_dir, os.W_OK) and os.geteuid() == 0:
            # root writes through file modes: make the folder read-only with a read-only bind mount instead
            subprocess.run(["mount", "--bind", "-o", "ro", str(run_dir), str(run_dir)], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(run_dir)], check=True)
        code = train_main(tiny_argv(run_dir, "--no-plots", "--epochs", "20", "--resume"))
        line = one_error_line(capsys)
        assert code in (1, 2) and "writ" in line, line
    finally:
        subprocess.run(["umount", str(run_dir)], capture_output=True)
        for path in [run_dir, *run_dir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("name", ["x" * 300, "/".join(["y" * 200] * 25)])
def test_an_out_dir_the_file_system_cannot_name_is_one_line(tmp_path, capsys, name):
    # one component over NAME_MAX (255 bytes), or a whole path over PATH_MAX (4096)
    code = train_main(tiny_argv(tmp_path / name, "--no-plots", "--epochs", "2"))
    line = one_error_line(capsys)
    assert code == 2 and "cannot create the run folder" in line and "too long" in line, line
    assert list(tmp_path.iterdir()) == []  # nothing made, not even the first parent folders


def test_the_reverse_chains_of_a_sampling_chunk_are_counted_against_memory():
    # sample_points holds SAMPLE_CHUNK points' chains at once: T + 1 states (K + 1 with --sample-steps K)
    config = Config(num_steps=1000, n_samples=10**6, seeds=2)
    assert chain_bytes(config, SAMPLE_CHUNK) == 2 * SAMPLE_CHUNK * 1001 * 16
    assert chain_bytes(dataclasses.replace(config, sample_steps=10), SAMPLE_CHUNK) == 2 * SAMPLE_CHUNK * 11 * 16
    check_chain_fits(config, SAMPLE_CHUNK, chain_bytes(config, SAMPLE_CHUNK), "--num-steps", "fewer")  # just fits
    with pytest.raises(ConfigError, match=r"--num-steps: the reverse chains of 25,000 points over 1,001 states"):
        check_chain_fits(config, SAMPLE_CHUNK, chain_bytes(config, SAMPLE_CHUNK) - 1, "--num-steps", "fewer")


@pytest.mark.parametrize("option", ["--n-samples", "--n-points"])
def test_requests_larger_than_memory_are_refused_before_any_work(tmp_path, capsys, option):
    assert train_main(tiny_argv(tmp_path / "run", option, "10000000000")) == 2
    line = one_error_line(capsys)
    assert f"{option} 10,000,000,000 needs about" in line and "GiB" in line, line
    assert not (tmp_path / "run").exists()


# A sweep of two groups (batch sizes 16 and 8) of two configurations each: kills land in imports,
# compilation, either group's chunks and checkpoints, the finishing of a configuration, and the merge.
SWEEP_KILLS = int(os.environ.get("JAX_DDPM_SWEEP_KILLS", "2"))
SWEEP_SIZES = dict(batch_size=(16, 8), epochs=30, n_samples=64, n_eval=64)
start_sweep = starter("jax_ddpm.sweep", SWEEP_FILE, "--lr", "1e-3", "3e-3", **SWEEP_SIZES)


def test_sweep_sigkilled_at_random_moments_then_resumed_equals_an_uninterrupted_sweep(tmp_path):
    """JAX_DDPM_SWEEP_KILLS kills (2 by default) at moments drawn over an uninterrupted sweep's length;
    each killed sweep, resumed to its end, has every configuration's folder and the leaderboard of the
    uninterrupted one, bit for bit."""
    whole = tmp_path / "whole"
    began = time.monotonic()
    proc = start_sweep(whole)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    duration = time.monotonic() - began
    names = sorted(d.name for d in whole.iterdir() if d.is_dir())
    assert len(names) == 4

    folders = kill_at_random_moments(start_sweep, SWEEP_KILLS, duration, tmp_path, seed=2027)
    for folder in folders:
        proc = start_sweep(folder)
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
        assert sorted(d.name for d in folder.iterdir() if d.is_dir()) == names
        for name in names:
            assert_same_run(folder / name, whole / name)
        rows = [json.loads((d / "leaderboard.json").read_text())["rows"] for d in (folder, whole)]
        assert [(r["name"], r["metrics"]) for r in rows[0]] == [(r["name"], r["metrics"]) for r in rows[1]]
