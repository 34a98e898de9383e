"""`python -m benchmarks.run --quick` writes a well-formed report (a smoke test: no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch  # the benchmark times torch_reference too

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_markdown_json_and_chart(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--device", "cpu", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((tmp_path / "cpu.json").read_text())
    assert results["quick"] is True
    for section in ("torch eager (tutorial)", "JAX jitted step, Python loop", "JAX scan-fused epochs (default CLI path)"):
        rate = results["training"][section]
        assert rate["median"] > 0 and rate["best"] >= rate["median"] and len(rate["times_s"]) == 2
        assert 0 < rate["roofline_fraction"] < 1
    assert any(name.startswith("JAX --devices 2") for name in results["training"])
    assert {"torch as the tutorial (autograd on)", "torch no_grad", "JAX sample_chain (lax.scan)"} <= set(results["sampling"])
    assert set(results["seed_scaling"]) == {"1", "8"} and set(results["batch_scaling"]["JAX scan-fused"]) == {"128", "1024"}
    assert results["roofline"]["peak_gflops"] > 0 and results["machine"]["jax"]
    assert [t["target"] for t in results["targets"]][:4] == [
        "single model >= 5x torch eager", "single model >= 2x best torch",
        "multi-seed total >= 50% of roofline", "sampling >= 1.5x torch no_grad"]

    report = (tmp_path / "cpu.md").read_text()
    for heading in ("## Machine", "## Roofline", "## Training", "## Sampling", "## Scaling", "## Targets"):
        assert heading in report
    table_rows = [line for line in report.splitlines() if line.startswith("| JAX scan-fused epochs")]
    assert len(table_rows) == 1 and table_rows[0].count("|") == 8  # 7 columns, all filled
    assert (tmp_path / "cpu_scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
