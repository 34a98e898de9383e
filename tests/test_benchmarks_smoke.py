"""`python -m benchmarks.run --quick` writes a well-formed report (a smoke test: no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_harness.cpu_isa import vector_isa

pytestmark = pytest.mark.torch  # the benchmark times torch_reference too

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_markdown_json_and_chart(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "benchmarks.run", "--device", "cpu", "--quick", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    stem = f"cpu-{vector_isa()}"  # one report per kind of CPU

    results = json.loads((tmp_path / f"{stem}.json").read_text())
    assert results["quick"] is True and results["machine"]["isa"] == vector_isa()
    assert not results["failed"] and not results["skipped"]
    for section in (
        "torch eager (tutorial)",
        "JAX jitted step, Python loop",
        "JAX scan-fused epochs (default CLI path)",
    ):
        rate = results["training"][section]
        assert rate["median"] > 0 and rate["best"] >= rate["median"] and len(rate["times_s"]) == 2
        assert rate["roofline_fraction"] > 0 and rate["single_core_fraction"] > 0  # (a loaded machine: any value)
    assert any(name.startswith("JAX --devices 2") for name in results["training"])
    assert set(results["sampling"]) == {
        "torch as the tutorial (autograd on)",
        "torch no_grad",
        "JAX sample_chain (lax.scan)",
    }
    assert set(results["seed_scaling"]) == {"1", "8"}
    assert set(results["batch_scaling"]["JAX scan-fused"]) == {"128", "1024"}
    sweep = results["sweep_scaling"]  # the sweep's program, K = 1 and 4, on 1 and 2 host devices
    assert set(sweep) == {"1 device", "2 host devices"} and all(set(rows) == {"1", "4"} for rows in sweep.values())
    assert all(r["median"] > 0 and r["roofline_fraction"] > 0 for rows in sweep.values() for r in rows.values())
    assert results["roofline"]["peak_gflops"] > 0 and results["machine"]["jax"]
    single_core = results["single_core"]
    assert single_core["gflops_best"] > 0 and single_core["cpu_per_wall"] < 1.5  # one core did the work
    first, second = results["compile_cache"].values()
    assert first["cache_misses"] >= 1 and second["cache_hits"] >= 1 and second["cache_misses"] == 0
    for program in ("training", "sampling"):
        options = results["cpu_options"][program]
        assert "none" in options and sum(r["chosen"] for r in options.values()) == 1
    sweep = results["sweep_finish"]  # a tiny sweep start to finish (the full report runs the 64-model one)
    assert sweep["models"] == 4 and sweep["wall_s"] > 0 and sweep["command"].startswith("python -m jax_ddpm.sweep")
    assert {"compile", "training_loop", "sampling", "final_evaluation", "writing", "merge"} <= set(sweep["timings"])
    assert [t["target"] for t in results["targets"]] == [
        "single model >= 5x torch eager",
        "single model >= 2x best torch",
        "multi-seed total >= 50% of roofline",
        "sweep of K >= 16 models >= 50% of roofline (2 host devices)",
        "sampling >= 2x torch no_grad",
        "second run compiles the default training chunk in < 1 s",
    ]

    report = (tmp_path / f"{stem}.md").read_text()
    for heading in (
        "## Machine",
        "## Roofline",
        "## Training",
        "## Per-program XLA:CPU options",
        "## Sampling",
        "## Compile cache",
        "## Scaling",
        "## Many models: a sweep's program",
        "## Targets",
    ):
        assert heading in report
    assert f"vector ISA: **{vector_isa()}**" in report and "single-core bound" in report
    table_rows = [line for line in report.splitlines() if line.startswith("| JAX scan-fused epochs")]
    assert len(table_rows) == 1 and table_rows[0].count("|") == 9  # 8 columns, all filled
    assert (tmp_path / f"{stem}_scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_run_targets_are_judged_from_its_wall_and_breakdown():
    """Issue 17's default-run targets from an end-to-end row (a full run measures it; this one is made up)."""
    from benchmarks import run

    timings = dict(imports=2.0, set_up=1.5, compile=1.2, training_loop=50.0, sampling=1.0, final_evaluation=0.8)
    got = {t["target"]: t for t in run.default_run_targets(dict(wall_s=56.0, timings=timings))}
    assert got["default run's final evaluation <= 1 s"] == dict(
        target="default run's final evaluation <= 1 s", met=True, measured="0.80 s"
    )
    ratio = got["default run's wall (fixed costs included) <= 1.15x its training loop"]
    assert ratio["met"] is True and ratio["measured"].startswith("1.12x (56.0 s wall, loop 50.0 s; Time: imports")
    slow = run.default_run_targets(dict(wall_s=60.0, timings=dict(timings, final_evaluation=1.5)))
    assert [t["met"] for t in slow] == [False, False]
