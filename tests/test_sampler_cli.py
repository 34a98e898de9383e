"""The samplers and predictions through the command lines: python -m jax_ddpm.train / sample /
evaluate and python -m torch_reference.train, on the tiny config.

A training run with a sampler writes the samples that `python -m jax_ddpm.sample` draws from its
checkpoint with the run's own options (same key, same program): that equality is what shows the
run's final samples came from the sampler it names.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ddpm_harness.config import Config
from jax_ddpm.evaluate import main as evaluate_main
from jax_ddpm.runner.checkpoint import restore_run
from jax_ddpm.runner.evaluation import calibration
from jax_ddpm.sample import main as sample_main
from jax_ddpm.train import main as train_main
from tests.conftest import snapshot, tiny_argv
from tests.test_bad_input import one_error_line, write_file
from tests.test_device_metrics import assert_calibration_matches_numpy

# A training run per prediction, each with a sampler other than the tutorial's (the default tutorial
# sampler and eps prediction are the tiny_run fixture).
TRAINED = {
    "v-ddim": ["--prediction", "v", "--sampler", "ddim", "--sample-steps", "10", "--eta", "0.5"],
    "x0-zts-dpm": [
        "--prediction",
        "x0",
        "--zero-terminal-snr",
        "--sampler",
        "dpm-solver++",
        "--sample-steps",
        "8",
        "--dataset",
        "s_curve",
        "--normalize",
    ],
    "eps-ode": ["--sampler", "ode", "--ode-rtol", "1e-4", "--ode-atol", "1e-4"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """The TRAINED runs (10 epochs, no pictures): name -> run folder."""
    runs = {}
    for name, options in TRAINED.items():
        run_dir = tmp_path_factory.mktemp(name) / "run"
        assert train_main(tiny_argv(run_dir, "--epochs", "10", "--no-plots", *options)) == 0
        runs[name] = run_dir
    return runs


@pytest.mark.parametrize("name", list(TRAINED))
def test_train_cli_samples_with_its_sampler_and_prediction(trained, name, tmp_path):
    run_dir = trained[name]
    config, _, _ = restore_run(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["sampling"]["sampler"] == config.sampler and summary["sampling"]["prediction"] == config.prediction
    assert summary["sampling"]["nfe"] == {"ddim": 10, "dpm-solver++": 8}.get(config.sampler, summary["sampling"]["nfe"])
    if config.sampler == "ode":
        assert summary["sampling"]["nfe"] > 20  # adaptive: its own count
    # The run's samples are what the sample CLI draws with the run's own sampler and key.
    out = tmp_path / "again.npy"
    assert sample_main(["--run", str(run_dir), "--n", "128", "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), np.load(run_dir / "samples.npy"))


@pytest.mark.parametrize(
    "options",
    [
        ["--sampler", "ddpm", "--variance", "posterior"],
        ["--sampler", "ddpm", "--sample-steps", "20", "--timestep-spacing", "trailing"],
        ["--sampler", "ddim", "--sample-steps", "10", "--eta", "1.0"],
        ["--sampler", "dpm-solver++", "--sample-steps", "10"],
        ["--sampler", "ode"],
    ],
    ids=lambda o: " ".join(o),
)
def test_sample_cli_reaches_every_sampler(tiny_run, tmp_path, options, capsys):
    out = tmp_path / "s.npy"
    assert sample_main(["--run", str(tiny_run), "--n", "64", "--out", str(out), *options]) == 0
    samples = np.load(out)
    assert samples.shape == (64, 2) and np.isfinite(samples).all()
    assert f"{options[1]} sampler" in capsys.readouterr().out


def test_sample_cli_changes_the_sampler_of_a_v_run(trained, tmp_path):
    run_dir = trained["v-ddim"]
    for options in (["--sampler", "ddpm"], ["--sampler", "ode"], ["--eta", "0", "--sample-steps", "5"]):
        out = tmp_path / f"{options[1]}.npy"
        assert sample_main(["--run", str(run_dir), "--n", "32", "--out", str(out), *options]) == 0
        assert np.isfinite(np.load(out)).all()


def test_a_trajectory_larger_than_memory_is_refused_before_any_work(tiny_run, tmp_path, capsys):
    # 10^8 points x 101 states are ~150 GiB in memory (a --trajectory is not streamed): one line, no file.
    out = tmp_path / "trajectory.npy"
    assert sample_main(["--run", str(tiny_run), "--trajectory", "--n", "100000000", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "--trajectory: the reverse chains of 100,000,000 points over 101 states need about" in line, line
    assert "ask for fewer points (--n)" in line and not out.exists() and list(tmp_path.iterdir()) == []


def test_x_T_reproduces_a_ddim_trajectory_exactly(tiny_run, tmp_path):
    ddim = ["--sampler", "ddim", "--sample-steps", "10", "--eta", "0", "--trajectory", "--n", "64"]
    first = tmp_path / "first.npy"
    assert sample_main(["--run", str(tiny_run), "--out", str(first), *ddim]) == 0
    trajectory = np.load(first)
    assert trajectory.shape == (11, 64, 2)
    np.save(tmp_path / "x_T.npy", trajectory[0])
    # Another seed's keys: eta = 0 draws no noise, so only x_T matters.
    again = tmp_path / "again.npy"
    assert (
        sample_main(
            ["--run", str(tiny_run), "--out", str(again), "--seed", "7", "--x-T", str(tmp_path / "x_T.npy"), *ddim]
        )
        == 0
    )
    np.testing.assert_array_equal(np.load(again), trajectory)


def test_x_T_starts_the_tutorial_chain_too(tiny_run, tmp_path):
    x_T = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
    np.save(tmp_path / "x_T.npy", x_T)
    out = tmp_path / "t.npy"
    assert (
        sample_main(["--run", str(tiny_run), "--x-T", str(tmp_path / "x_T.npy"), "--trajectory", "--out", str(out)])
        == 0
    )
    trajectory = np.load(out)
    assert trajectory.shape == (101, 10, 2)
    np.testing.assert_array_equal(trajectory[0], x_T)


BAD_TRAIN = [
    (["--sample-steps", "0", "--sampler", "ddim"], "--sample-steps is 0, but it must be between 1 and T = 100."),
    (["--sample-steps", "101", "--sampler", "ddpm"], "--sample-steps is 101, but it must be between 1 and T = 100."),
    (["--sampler", "ddim", "--eta", "-0.5"], "--eta is -0.5, but it must be >= 0"),
    (["--zero-terminal-snr"], "use --prediction v or x0"),
    (["--prediction", "v"], "the tutorial sampler runs the tutorial's eps model only: use --sampler ddpm"),
    (["--prediction", "x0", "--sampler", "ddim", "--loss", "hybrid"], "--prediction x0 replaces the noise loss"),
    (["--loss", "variational", "--sampler", "ddim"], "--loss variational trains the mean of each tutorial step"),
    (["--sampler", "ode", "--sample-steps", "10"], "--sample-steps does not apply to the ode sampler"),
    (["--sampler", "dpm-solver++", "--sample-steps", "100"], "gives repeated or missing steps for K = 100"),
    (["--sampler", "ode", "--ode-rtol", "0"], "--ode-rtol must be positive"),
    (["--sampler", "heun"], "invalid choice 'heun'"),
    (["--sampler", "euler"], "--sampler euler integrates a flow model's velocity"),  # a flow sampler (--method flow)
]


@pytest.mark.parametrize("extra, message", BAD_TRAIN, ids=[" ".join(a) for a, _ in BAD_TRAIN])
def test_bad_sampling_option_is_one_line_exit_2(extra, message, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert train_main(tiny_argv(out_dir, *extra)) == 2
    assert message in one_error_line(capsys)
    assert not out_dir.exists()


BAD_SAMPLE = [
    (["--sampler", "ddim", "--sample-steps", "500"], "--sample-steps is 500, but it must be between 1 and T = 100."),
    (["--sampler", "ddim", "--eta", "-1"], "--eta is -1.0, but it must be >= 0"),
    (["--sampler", "tutorial", "--sample-steps", "10"], "--sample-steps does not apply to the tutorial sampler"),
    (["--x-T", "wide.npy"], "--x-T: data file"),
    (["--x-T", "holes.npy"], "1 rows with NaN or inf"),
    (["--x-T", "flat.npy"], "it must be (N, 2)"),
    (["--x-T", "missing.npy"], "does not exist"),
]


@pytest.mark.parametrize("extra, message", BAD_SAMPLE, ids=[" ".join(a) for a, _ in BAD_SAMPLE])
def test_bad_sample_option_is_one_line_exit_2(tiny_run, tmp_path, capsys, extra, message):
    write_file(tmp_path, "wide.npy", np.zeros((4, 3), np.float32))
    write_file(tmp_path, "holes.npy", np.array([[0.0, 1.0], [np.nan, 0.0]], np.float32))
    write_file(tmp_path, "flat.npy", np.zeros(6, np.float32))
    extra = [str(tmp_path / a) if a.endswith(".npy") else a for a in extra]
    before = snapshot(tiny_run)
    assert sample_main(["--run", str(tiny_run), "--out", str(tmp_path / "out.npy"), *extra]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out.npy").exists() and snapshot(tiny_run) == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sampler", "ddim"], "--sampler ddim is not supported by torch_reference.train"),
        (["--prediction", "v", "--sampler", "ddpm"], "--prediction v is not supported by torch_reference.train"),
        (["--zero-terminal-snr"], "use --prediction v or x0"),
    ],
)
@pytest.mark.torch
def test_reference_cli_refuses_what_it_does_not_have(tmp_path, capsys, extra, message):
    from tests.test_train_torch_reference import reference_argv
    from torch_reference.train import main as reference_main

    assert reference_main(reference_argv(tmp_path / "run", *extra)) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_evaluate_cli_on_a_tiny_run(tiny_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    argv = ["--run", str(run_dir), "--n", "100", "--n-likelihood", "50", "--params", "ema"]
    assert evaluate_main(argv) == 0
    text = capsys.readouterr().out
    path = run_dir / "evaluation_ema_tutorial_n100.json"
    result = json.loads(path.read_text())
    assert result["n"] == 100 and result["params"] == "ema" and result["sampling"]["sampler"] == "tutorial"
    # The floor and ceiling are calibrated at the n the samples were scored at.
    assert result["calibration"]["n"] == 100
    assert_calibration_matches_numpy({k: result["calibration"][k] for k in ("floor", "ceiling")}, "moons", 100)
    floor = result["calibration"]["floor"]["sliced_w2"]
    assert "n = 100: sliced_w2 " in text and f"(floor {floor:.2g}," in text
    assert np.isfinite(result["likelihood"]["bits_per_dim"]) and result["likelihood"]["nfe"] > 20
    bound = result["bound"]
    assert bound["total"] == pytest.approx(bound["prior"] + bound["diffusion"] + bound["decoder"])
    assert "NLL (probability-flow ODE" in text and "variational bound (-ELBO, gaussian decoder" in text
    # Never overwritten: the same evaluation again is refused, the file unchanged.
    before = path.read_bytes()
    assert evaluate_main(argv) == 2
    assert "already exists" in one_error_line(capsys) and path.read_bytes() == before


def test_evaluate_cli_with_a_sampler_on_an_x0_run(trained, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert (
        evaluate_main(
            [
                "--run",
                str(trained["x0-zts-dpm"]),
                "--n",
                "64",
                "--n-likelihood",
                "20",
                "--sampler",
                "ddim",
                "--sample-steps",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["sampling"]["sampler"] == "ddim" and result["sampling"]["nfe"] == 5
    assert "x0 model" in result["likelihood"]["unavailable"] and np.isfinite(result["bound"]["total"])
    assert "NLL (probability-flow ODE): unavailable" in capsys.readouterr().out


def test_evaluate_cli_bad_input(tiny_run, tmp_path, capsys):
    assert evaluate_main(["--run", str(tmp_path / "nowhere")]) == 2
    assert "is not a run folder" in one_error_line(capsys)
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    for epoch in ("10", "20"):  # every checkpoint garbled (one alone: the one before it is used)
        for path in (run_dir / "checkpoints" / epoch / "state").rglob("*"):
            if path.is_file():
                path.write_bytes(b"not a checkpoint")
    assert evaluate_main(["--run", str(run_dir), "--n", "50"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-1].startswith("error: ") and "no readable checkpoint" in err[-1], err
    assert all(line.startswith("warning: ") for line in err[:-1]) and "Traceback" not in "".join(err)
    assert not list(run_dir.glob("evaluation*.json"))


def test_progress_bar_and_summary_print_floors_at_their_n(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train_main(tiny_argv(run_dir, "--epochs", "10", "--eval-every", "10", "--n-eval", "64", "--no-plots")) == 0
    out = capsys.readouterr().out
    # the device's floors (equal to numpy's: tests/test_device_metrics.py)
    eval_floor = calibration(Config(), 64)["floor"]["sliced_w2"]
    final = calibration(Config(), 128)
    assert "sliced_w2=" in out and f"(floor {eval_floor:.2g})" in out  # the progress bar: n = --n-eval
    assert "n = 128 samples" in out and "sliced_w2 " in out and f"(floor {final['floor']['sliced_w2']:.2g}, " in out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["eval_n"] == 64
