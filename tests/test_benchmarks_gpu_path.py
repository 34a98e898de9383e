"""The GPU report's code, checked on the CPU so that the first GPU run does not fail on a typo: the
variant list and sizes, the report writer and the targets on fake GPU results, the CUDA-side torch
twins of the tutorial's functions (equal to them on the CPU), a dry run of every variant, the
install check and the GPU parity command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import check_install, gpu_parity, run, torch_bench, variants
from benchmarks.report import write_reports
from ddpm_harness.config import Config

pytestmark = pytest.mark.torch  # compares with torch / the PyTorch reference

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def test_gpu_variant_list_and_sizes():
    setting = variants.Setting("gpu", quick=False, torch_device="cuda")
    training = variants.training_variants(setting, Config(), np.zeros((16, 2), np.float32), 10, 10, 1)
    names = [v.name for v in training]  # built lazily: listing them touches no GPU
    assert names == [
        variants.TORCH_EAGER,
        variants.TORCH_FAST,
        variants.TORCH_CUDA_GRAPH,
        variants.TORCH_COMPILE_GRAPHS,
        variants.TORCH_COMPILE_DEFAULT,
        variants.JAX_LOOP,
        variants.JAX_SCAN,
        variants.JAX_SCAN_TF32,
        variants.TORCH_CUDA_GRAPH_TF32,
    ]
    assert {v.name for v in training if v.precision == "tf32"} == {
        variants.JAX_SCAN_TF32,
        variants.TORCH_CUDA_GRAPH_TF32,
    }
    assert all(
        not v.optional
        for v in training
        if v.name in (variants.TORCH_EAGER, variants.TORCH_CUDA_GRAPH, variants.JAX_SCAN)
    )
    sampling = [v.name for v in variants.sampling_variants(setting, 10)]
    assert sampling == [variants.SAMPLE_NO_GRAD, variants.SAMPLE_COMPILED_GPU, variants.SAMPLE_JAX]
    assert variants.SAMPLE_TUTORIAL in variants.NOT_ON_GPU  # autograd on at 10^6 points: out of memory

    cpu = variants.Setting("cpu", quick=False, torch_device="cpu")
    cpu_names = [v.name for v in variants.training_variants(cpu, Config(), np.zeros((16, 2), np.float32), 1, 1, 1)]
    assert variants.TORCH_COMPILE_CPU in cpu_names and not any("CUDA" in n or "TF32" in n for n in cpu_names)

    sizes = run.Sizes.of(quick=False, gpu=True)
    assert max(sizes.seeds) == 1024 and sizes.sampling_points == 1_000_000
    assert run.report_stem("gpu") == "gpu" and run.report_stem("gpu", dry_run=True) == "gpu-dry-run"
    assert run.report_stem("cpu", isa="avx2") == "cpu-avx2"


def _rate(median: float, precision: str = "float32") -> dict:
    return dict(
        median=median,
        best=median * 1.05,
        first_call_s=1.0,
        times_s=[1.0],
        work=1.0,
        roofline_fraction=median / 1e6,
        precision=precision,
    )


def fake_gpu_results() -> dict:
    training = {
        variants.TORCH_EAGER: _rate(800),
        variants.TORCH_FAST: _rate(1200),
        variants.TORCH_CUDA_GRAPH: _rate(9000),
        variants.TORCH_COMPILE_GRAPHS: _rate(7000),
        variants.JAX_LOOP: _rate(3000),
        variants.JAX_SCAN: _rate(20000),
        variants.JAX_SCAN_TF32: _rate(21000, "tf32"),
        variants.TORCH_CUDA_GRAPH_TF32: _rate(50000, "tf32"),
        "JAX --seeds 1024 (total model-steps/s)": _rate(3e6),
    }
    sampling = {
        name: dict(median_s=s, best_s=s, first_call_s=2.0, times_s=[s], roofline_fraction=0.1)
        for name, s in ((variants.SAMPLE_NO_GRAD, 0.9), (variants.SAMPLE_JAX, 0.3))
    }
    machine = dict(
        device="NVIDIA H100 80GB HBM3",
        torch_device="NVIDIA H100 80GB HBM3",
        torch_cuda="13.0",
        cpu_model="AMD EPYC",
        isa="avx512",
        cores=16,
        python="3.12.3",
        jax="0.11.2",
        jaxlib="0.11.2",
        flax="0.12.12",
        optax="0.2.8",
        torch="2.11.0+cu130",
        xla_flags="",
        jax_matmul_precision="float32",
        torch_threads=16,
        omp_wait_policy="PASSIVE",
        torch_matmul_precision="highest",
        torch_allow_tf32=False,
        load_start=[0.1],
        load_end=[0.2],
        jax_devices=1,
    )
    results = dict(
        command="python -m benchmarks.run --device gpu",
        kind="gpu",
        quick=False,
        dry_run=False,
        machine=machine,
        notes=["a note"],
        skipped={variants.TORCH_COMPILE_DEFAULT: "time budget spent"},
        failed={variants.SAMPLE_COMPILED_GPU: "RuntimeError: boom"},
        training=training,
        sampling=sampling,
        sampling_points=1_000_000,
        seed_scaling={"1": _rate(20000), "1024": _rate(3e6)},
        seed_scaling_2_devices={},
        batch_scaling={"JAX scan-fused": {"128": _rate(20000)}, "torch eager (tutorial)": {}},
        roofline=dict(
            matmul_size=8192,
            jax_gflops=50000.0,
            torch_gflops=51000.0,
            peak_gflops=51000.0,
            n_params=72066,
            train_step_mflop=27.3,
            train_steps_per_s=1.8e6,
            sampling_gflop=13000.0,
            sampling_s=0.26,
        ),
        compile_cache={
            "first run (empty cache)": dict(lower_s=0.5, compile_s=3.0, cache_hits=0, cache_misses=1),
            "second run (cache filled by the first)": dict(lower_s=0.5, compile_s=0.2, cache_hits=1, cache_misses=0),
        },
        wall_s=400.0,
    )
    results["targets"] = run.targets(results, "gpu")
    return results


def test_gpu_targets_compare_float32_rows_only():
    targets = {t["target"]: t for t in fake_gpu_results()["targets"]}
    assert targets["single model >= 20x torch eager"]["met"] is True  # 20000 / 800 = 25x
    graphs = targets["single model >= 2x torch with CUDA graphs"]
    assert graphs["met"] is True and variants.TORCH_CUDA_GRAPH in graphs["measured"]  # 2.22x, not the TF32 row
    assert targets[">= 1024 models at once (vmapped seeds)"]["met"] is True
    assert targets["second run compiles the default training chunk in < 1 s"]["met"] is True
    results = fake_gpu_results()
    del results["training"][variants.TORCH_EAGER]
    eager = run.targets(results, "gpu")[0]
    assert eager["met"] is None and "not measured" in eager["measured"]


def test_gpu_report_writer_on_fake_results(tmp_path):
    results = fake_gpu_results()
    paths = write_reports(results, tmp_path, "gpu")
    assert [p.name for p in paths] == ["gpu.json", "gpu.md", "gpu_scaling.png"]
    assert json.loads(paths[0].read_text())["machine"]["device"] == "NVIDIA H100 80GB HBM3"
    report = paths[1].read_text()
    for text in (
        "# Benchmark: NVIDIA H100 80GB HBM3",
        "TF32 off",
        "rows named 'TF32 matmuls'",
        variants.TORCH_CUDA_GRAPH_TF32,
        "## Compile cache",
        "## Skipped or failed",
        "FAILED: RuntimeError",
        "time budget spent",
        "single model >= 2x torch with CUDA graphs",
        "| 1024 |",
    ):
        assert text in report, text
    eager_row = next(line for line in report.splitlines() if line.startswith(f"| {variants.TORCH_CUDA_GRAPH} |"))
    assert "| 11.25 | 1.00 |" in eager_row  # x torch eager, x best float32 torch (the TF32 row is faster)
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cuda_twins_equal_the_tutorials_functions_on_cpu():
    from torch_reference.losses import antithetic_timesteps
    from torch_reference.model import ConditionalModel
    from torch_reference.sampling import p_sample_loop
    from torch_reference.schedule import make_schedule

    torch.manual_seed(5)
    expected = antithetic_timesteps(128, torch_bench.NUM_STEPS)
    torch.manual_seed(5)
    assert torch.equal(torch_bench.timesteps(128, "cpu"), expected)

    model, schedule = ConditionalModel(100), make_schedule("sigmoid", 100, 1e-5, 5e-3)
    with torch.no_grad():
        torch.manual_seed(9)
        expected = p_sample_loop(
            model, (64, 2), 100, schedule.alphas, schedule.betas, schedule.one_minus_alphas_bar_sqrt
        )
        torch.manual_seed(9)
        actual = torch_bench.p_sample_loop_on(
            model, (64, 2), 100, schedule.alphas, schedule.betas, schedule.one_minus_alphas_bar_sqrt, "cpu"
        )
    assert len(actual) == len(expected) == 101
    assert all(torch.equal(a, e) for a, e in zip(actual, expected))

    before = torch.backends.cuda.matmul.allow_tf32
    with torch_bench.tf32(True):
        assert torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_gpu_report_dry_run_on_cpu_builds_every_variant(tmp_path):
    # A budget (never spent here) switches on the report's rewrite after each section, as on a GPU.
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--device",
        "gpu",
        "--dry-run",
        "--out",
        str(tmp_path),
        "--budget-s",
        "100000",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu-dry-run.json").read_text())
    assert results["dry_run"] and results["kind"] == "gpu" and not results["failed"] and results["complete"]
    training = variants.training_variants(variants.Setting("gpu", False, "cuda"), Config(), np.zeros((1, 2)), 1, 1, 1)
    for v in training:  # each measured, or skipped only because it needs CUDA itself
        assert v.name in results["training"] or (v.needs_cuda and "needs CUDA" in results["skipped"][v.name]), v.name
    assert set(results["sampling"]) == {
        v.name for v in variants.sampling_variants(variants.Setting("gpu", False, "cuda"), 1)
    }
    assert "DRY RUN" in (tmp_path / "gpu-dry-run.md").read_text()
    assert not (tmp_path / "gpu.md").exists()  # a dry run never overwrites the real report


def test_a_spent_budget_skips_optional_work_and_a_failure_is_reported(tmp_path):
    results = dict(skipped={}, failed={})
    calls = []
    bench = run.Bench(results, budget_s=0.0, strict=False, after_each=lambda: calls.append("after"))
    assert bench.attempt("core", lambda: 1) == 1  # not optional: runs whatever the budget
    assert bench.attempt("extra", lambda: 2, optional=True) is None and "time budget" in results["skipped"]["extra"]
    assert bench.attempt("broken", lambda: 1 / 0) is None and "ZeroDivisionError" in results["failed"]["broken"]
    strict = run.Bench(dict(skipped={}, failed={}), budget_s=None, strict=True, after_each=lambda: None)
    with pytest.raises(ZeroDivisionError):  # --quick and --dry-run stop at the first failure
        strict.attempt("broken", lambda: 1 / 0)

    partial = fake_gpu_results()
    partial.update(
        complete=False,
        last_section="roofline",
        training={},
        sampling={},
        seed_scaling={},
        batch_scaling={"JAX scan-fused": {}, "torch eager (tutorial)": {}},
    )
    partial.pop("compile_cache")
    partial["targets"] = run.targets(partial, "gpu")  # nothing measured yet: written all the same
    report = write_reports(partial, tmp_path, "gpu")[1].read_text()
    assert "**INCOMPLETE**: written after the section 'roofline'" in report
    assert all(t["met"] is None for t in partial["targets"][:2])


def test_check_install_lists_what_an_offline_gpu_machine_lacks():
    reqs = check_install.project_requirements()
    names = {r.name: r for r in reqs}
    assert {"jax", "flax", "optax", "tyro", "diffrax", "torch", "pytest"} <= set(names)
    assert names["tyro"].group == "core" and names["torch"].group == "reference"
    assert all(r.name != "jax-ddpm" for r in reqs)  # the test extra's self-reference is expanded

    # A GPU machine like the one seen (no tyro, no diffusers), with a jax older than pyproject's range
    # (0.10.2 .. 0.12.x admits the 0.11.2 that machine had): then tyro copied in alone.
    versions = {"jax": "0.9.0", "flax": "0.12.12", "torch": "2.11.0"}

    def version_of(name):
        return versions.get(name, "1.0") if name not in ("tyro", "diffusers", "docstring-parser") else None

    report = check_install.check(reqs, version_of, deps_of=lambda name: [])
    assert report.missing["tyro"] == "core" and report.missing["diffusers"] == "test"
    assert report.out_of_range["jax"][0] == "0.9.0" and report.failed(need_gpu=False)
    text = "\n".join(check_install.format_report(report, need_gpu=False))
    assert "MISSING  tyro" in text and "pip download" in text and " tyro" in text and "NOT READY" in text
    assert "--no-deps --no-build-isolation -e ." in text

    versions["tyro"] = "1.0.17"
    tyro_deps = [check_install.Requirement("docstring-parser", ">=0.15", "needed by tyro")]
    report = check_install.check(
        reqs,
        lambda n: versions.get(n, "1.0") if n != "docstring-parser" else None,
        deps_of=lambda name: tyro_deps if name == "tyro" else [],
    )
    assert report.missing == {"docstring-parser": "needed by tyro"} and report.failed(need_gpu=False)

    here = check_install.check(reqs)  # this machine has every requirement
    assert not [n for n, group in here.missing.items() if group == "core"]


def test_gpu_parity_writes_markdown(tmp_path):
    status = gpu_parity.main(
        ["--allow-cpu", "--out", str(tmp_path), "--tests", "parity_tests/test_twin_lines.py", "--no-error-table"]
    )
    assert status == 0
    report = (tmp_path / "gpu_parity.md").read_text()
    assert "jax_default_matmul_precision=highest" in report and " passed, 0 failed, 0 errors" in report
    suite = dict(
        paths=["parity_tests"],
        returncode=1,
        wall_s=3.0,
        counts=dict(tests=3, failures=1, errors=0, skipped=0),
        failures=["parity_tests.test_x::test_y: assert 1 == 2"],
        tail="",
        left_out={"parity_tests/test_samplers_diffusers.py": "diffusers"},
    )
    text = gpu_parity.markdown(
        dict(backend="gpu", device="H100", jax="0.11.2", torch="2.11", precision="highest"),
        suite,
        "| table |",
        "python -m benchmarks.gpu_parity",
    )
    assert "2 passed, 1 failed" in text and "test_y" in text and "needs `diffusers`" in text and "| table |" in text
