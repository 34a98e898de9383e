"""Many processes through jax.distributed, on loopback: processes on 127.0.0.1 (a free port), CPU devices.

- One model trained data-parallel by 2 processes of one CPU device each (epochs 1-2), then resumed by 2 processes
  of two host devices each (--devices 4, epochs 3-4), ends with the state of one device within float32 round-off:
  splitting the batch changes the order of the gradient's sums, and Adam's step lr * m / (sqrt(v) + eps) can
  amplify a round-off of a gradient entry near eps up to ~0.02 lr (docs/parity.md). Both processes report the same
  metrics; process 0 alone writes.
- Launched as srun would (SLURM's variables, no options), a run folder process 0 refuses stops both processes with
  one line each; a coordinator nobody hosts gives one line and exit status 1 after --distributed-timeout.
- The helpers (launch planning, the sweep's split, waiting for files) in process.

Every process has a timeout and is killed if the test fails. What is not tested here: networks between machines,
GPUs, more than 2 processes (docs/distributed.md).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from ddpm_harness.config import Config, ConfigError, validate
from jax_ddpm.runner import distributed
from jax_ddpm.runner.checkpoint import restore_run
from jax_ddpm.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
PROCESS_TIMEOUT_S = 300
# 256 points in batches of 32: 8 optimizer steps an epoch, checkpoints every 2 epochs.
TINY = [
    "--n-points",
    "256",
    "--batch-size",
    "32",
    "--n-samples",
    "128",
    "--n-eval",
    "128",
    "--no-plots",
    "--checkpoint-every",
    "2",
    "--log-every",
    "2",
]
# Adam's float32 step (docs/parity.md): a gradient round-off can move a parameter by up to ~0.02 lr = 2e-5.
RTOL, ATOL = 1e-4, 2e-5


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(host_devices: int = 1, **extra: str) -> dict:
    """The environment of a launched process: CPU only, `host_devices` host devices, this checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]), **extra)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={host_devices}"
    return env


def launch(commands: list[list[str]], envs: list[dict], folder: Path) -> list[tuple[int, str, str]]:
    """Run the commands at once; (exit status, stdout, stderr) of each. Each gets PROCESS_TIMEOUT_S seconds; any
    still running when this returns (a timeout, a failed test) is killed."""
    folder.mkdir(parents=True, exist_ok=True)
    running = []
    try:
        for i, (command, env) in enumerate(zip(commands, envs)):
            out, err = (folder / f"{i}.out").open("w"), (folder / f"{i}.err").open("w")
            running.append((subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=err), out, err))
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        for process, _, _ in running:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for process, out, err in running:
            if process.poll() is None:
                process.kill()
                process.wait()
            out.close()
            err.close()
    return [
        (p.returncode, (folder / f"{i}.out").read_text(), (folder / f"{i}.err").read_text())
        for i, (p, _, _) in enumerate(running)
    ]


def train_command(*options: str) -> list[str]:
    return [sys.executable, "-m", "jax_ddpm.train", *options]


def worker_command(folder: Path, *options: str) -> list[str]:
    """This file as a script (every process): parse the options, `jax_ddpm.train.train` them, write the summary to
    folder/summary.json."""
    return [sys.executable, __file__, str(folder), *options]


def over_two_processes(port: int, i: int) -> list[str]:
    """Process i of 2 meeting at 127.0.0.1:port; a process that waits 120 s for the other stops with one line."""
    return [
        "--coordinator-address",
        f"127.0.0.1:{port}",
        "--num-processes",
        "2",
        "--process-id",
        str(i),
        "--distributed-timeout",
        "120",
    ]


def state_gap(actual, desired) -> float:
    """max |a - d| over every leaf of two TrainStates."""
    return max(
        float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(d, np.float64))))
        for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired))
    )


def assert_states_close(actual, desired) -> None:
    for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(d), rtol=RTOL, atol=ATOL)


# The pieces of gloo's connection line "[Gloo] Rank 1 is connected to 1 peer ranks. Expected number of connected
# peer ranks is : 1". Its C++ threads write them unsynchronised: two lines can run into one, and one thread's
# "[Gloo] Rank " can end a line whose "3 is connected ..." comes on the next (seen in CI under load).
GLOO_PIECES = re.compile(
    r"\[Gloo\]|Rank|\d+ is connected to \d+ peer ranks\. Expected number of connected peer ranks is : \d+"
)


def no_output_but_gloo(text: str) -> bool:
    """What a process other than 0 prints on stdout: only the pieces of gloo's own connection lines."""
    return GLOO_PIECES.sub("", text).strip() == ""


# ---- launched processes ------------------------------------------------------------------------------------


def test_two_processes_train_one_model_as_one_device_does(tmp_path):
    """2 processes of one device each train epochs 1-2; 2 processes of two host devices each resume to epoch 4."""
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    port = free_port()
    first = launch(
        [
            train_command(
                *TINY,
                "--epochs",
                "2",
                "--devices",
                "2",
                "--out-dir",
                str(run_dir),
                "--no-compile-cache",
                *over_two_processes(port, i),
            )
            for i in (0, 1)
        ],
        [process_env(1), process_env(1)],
        tmp_path / "logs1",
    )
    for status, _, err in first:
        assert status == 0, err[-3000:]
    assert "Trained jax on moons for 2 epochs" in first[0][1] and no_output_but_gloo(first[1][1]), first[1][1]
    port = free_port()
    second = launch(
        [
            worker_command(
                tmp_path / f"worker{i}",
                *TINY,
                "--epochs",
                "4",
                "--devices",
                "4",
                "--resume",
                "--out-dir",
                str(run_dir),
                "--no-compile-cache",
                *over_two_processes(port, i),
            )
            for i in (0, 1)
        ],
        [process_env(2), process_env(2)],
        tmp_path / "logs2",
    )
    for status, _, err in second:
        assert status == 0, err[-3000:]
    assert "resuming" in second[0][1] and no_output_but_gloo(second[1][1]), second[1][1]

    assert train_main([*TINY, "--epochs", "4", "--out-dir", str(reference)]) == 0
    _, resumed, record = restore_run(run_dir)
    _, one_device, _ = restore_run(reference)
    assert record["epoch"] == 4 and int(resumed.opt_step) == 4 * 8
    print(f"2 processes vs one device: max |difference| {state_gap(resumed, one_device):.2e}")
    assert_states_close(resumed, one_device)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]

    summaries = [json.loads((tmp_path / f"worker{i}" / "summary.json").read_text()) for i in (0, 1)]
    for key in ("epochs", "steps", "final_loss", "final_last_loss", "evaluation", "run_dir"):
        assert summaries[0][key] == summaries[1][key], key  # every process holds the same metrics
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "logs1",
        "logs2",
        "reference",
        "run",
        "worker0",
        "worker1",
    ]  # process 0 alone wrote the run


def test_launched_by_srun_a_refused_run_folder_stops_both_processes(tmp_path):
    """SLURM's variables as srun sets them for 2 tasks on this host, and no options: JAX's own detection."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "results.txt").write_text("earlier results")
    port = str(free_port())
    envs = [
        process_env(
            1,
            SLURM_JOB_ID="4242",
            SLURM_STEP_NODELIST="localhost",
            SLURM_NTASKS="2",
            SLURM_PROCID=str(i),
            SLURM_LOCALID=str(i),
            JAX_COORDINATOR_PORT=port,
        )
        for i in (0, 1)
    ]
    results = launch([train_command(*TINY, "--devices", "2", "--out-dir", str(taken))] * 2, envs, tmp_path / "logs")
    (status0, _, err0), (status1, _, err1) = results
    assert status0 == 2 and err0.strip().splitlines() == [
        f"error: {str(taken)!r} already exists and is not empty; add --resume to continue that run, "
        "or choose another --out-dir (earlier results are never overwritten)"
    ]
    assert status1 == 1 and err1.strip().splitlines() == [
        f"error: process 0 of 2 stopped while setting up: {err0.strip()[len('error: ') :]}"
    ]
    assert sorted(p.name for p in taken.iterdir()) == ["results.txt"]


def test_a_coordinator_nobody_hosts_gives_one_line_within_the_timeout(tmp_path):
    start = time.monotonic()
    [(status, out, err)] = launch(
        [
            train_command(
                *over_two_processes(free_port(), 1),
                "--devices",
                "2",
                "--distributed-timeout",
                "2",
                "--out-dir",
                str(tmp_path / "run"),
            )
        ],
        [process_env(1)],
        tmp_path / "logs",
    )
    assert status == 1, err
    [line] = err.strip().splitlines()
    assert line.startswith("error: process 1 of 2 could not join the coordinator at 127.0.0.1:"), line
    assert "within 2 s" in line
    assert time.monotonic() - start < 60 and not (tmp_path / "run").exists()


# ---- in process --------------------------------------------------------------------------------------------


def test_plan_launch_from_options_and_launchers():
    single = distributed.Launch(1, 0, None, "single")
    assert distributed.plan_launch(environ={}) == single
    assert distributed.plan_launch("h:1", 1, 0, environ={}) == single  # --num-processes 1 forces one process
    assert distributed.plan_launch("h:1", 2, 1, environ={}) == distributed.Launch(2, 1, "h:1", "options")
    assert distributed.plan_launch(None, 2, 0, environ={"JAX_COORDINATOR_ADDRESS": "c:9"}).coordinator_address == "c:9"
    with pytest.raises(ConfigError, match="needs --coordinator-address and --process-id too"):
        distributed.plan_launch(None, 2, None, environ={})
    slurm = dict(
        SLURM_JOB_ID="7", SLURM_STEP_NODELIST="n[01-04]", SLURM_NTASKS="4", SLURM_PROCID="3", SLURM_LOCALID="0"
    )
    assert distributed.plan_launch(environ=slurm) == distributed.Launch(4, 3, None, "slurm")
    assert distributed.plan_launch(environ=dict(slurm, SLURM_NTASKS="1")) == single  # one task: one process
    assert distributed.plan_launch(None, 1, environ=slurm) == single
    ompi = dict(OMPI_MCA_orte_hnp_uri="1.0;tcp://10.0.0.1:1", OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="1")
    assert distributed.plan_launch(environ=ompi) == distributed.Launch(2, 1, None, "ompi")


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_processes=0), "--num-processes must be a positive integer"),
        (dict(num_processes=2, process_id=2), "--process-id must lie in 0 .. 1"),
        (dict(process_id=-1), "--process-id must be >= 0"),
        (dict(coordinator_address="localhost"), "--coordinator-address must be HOST:PORT"),
        (dict(coordinator_address="h:70000"), "--coordinator-address must be HOST:PORT"),
        (dict(distributed_timeout=0), "--distributed-timeout must be a positive"),
    ],
)
def test_bad_process_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        validate(Config(**options))


def test_process_share_is_round_robin_disjoint_and_complete():
    items = [f"config{i}" for i in range(7)]
    shares = [distributed.process_share(items, i, 3) for i in range(3)]
    assert shares == [["config0", "config3", "config6"], ["config1", "config4"], ["config2", "config5"]]
    assert sorted(sum(shares, [])) == sorted(items)
    assert distributed.process_share(items, 0, 1) == items
    assert distributed.process_share([], 1, 2) == []
    with pytest.raises(ValueError, match="process_id must lie in 0 .. num_processes - 1"):
        distributed.process_share(items, 3, 3)


def test_wait_for_files(tmp_path):
    paths = [tmp_path / "rows0.json", tmp_path / "rows1.json"]
    paths[0].write_text("{}")
    writer = threading.Timer(0.3, lambda: paths[1].write_text("{}"))
    writer.start()
    try:
        assert distributed.wait_for_files(paths, timeout_s=30, poll_s=0.05) == paths
    finally:
        writer.cancel()
    start = time.monotonic()
    with pytest.raises(distributed.DistributedError, match=r"1 of 2 files did not appear within 0.2 s \(.*never"):
        distributed.wait_for_files([paths[0], tmp_path / "never.json"], timeout_s=0.2, poll_s=0.05)
    assert time.monotonic() - start < 5


def test_one_process_needs_no_coordinator():
    assert distributed.meet("anywhere", 1, payload={"a": 1}) == [{"a": 1}]
    assert distributed.is_process_zero()
    state = {"w": np.arange(3.0, dtype=np.float32)}
    assert distributed.host_copy(state)["w"].tolist() == [0.0, 1.0, 2.0]


if __name__ == "__main__":  # a worker of test_two_processes_train_one_model_as_one_device_does
    from ddpm_harness.cli import parse
    from jax_ddpm.train import train

    folder = Path(sys.argv[1])
    summary = train(parse(Config, sys.argv[2:], "worker"))
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary, default=str))
