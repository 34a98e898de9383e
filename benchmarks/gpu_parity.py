"""`python -m benchmarks.gpu_parity`: the parity suite and the error table with JAX on the GPU.

Runs `pytest parity_tests` and `python -m parity_tests.error_table` in subprocesses with
JAX_DEFAULT_MATMUL_PRECISION=highest (JAX's float32 matmuls on a GPU are TF32 by default; parity
needs true float32), then writes benchmarks/results/gpu_parity.md: the device, the versions, the
suite's counts and failures, and the error table. Torch, the oracle, runs on the CPU as the tests
have it; JAX runs on its default backend, which must be a GPU unless `--allow-cpu` (used to test
this module on a CPU). A test file whose imports are missing (diffusers, say) is left out and named.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Optional

PRECISION = "highest"
# Test files that need a package beyond the project's own dependencies (the test extra).
OPTIONAL_IMPORTS = {"parity_tests/test_samplers_diffusers.py": "diffusers"}


def parity_env(base: Optional[dict] = None) -> dict:
    """`base` (default: this process's environment) with JAX at the highest matmul precision."""
    return dict(base or os.environ, JAX_DEFAULT_MATMUL_PRECISION=PRECISION, XLA_PYTHON_CLIENT_PREALLOCATE="false")


def describe_backend(env: dict) -> dict:
    code = (
        "import json, jax, torch; d = jax.devices()[0]; print(json.dumps(dict(backend=jax.default_backend(), "
        "device=str(d.device_kind), jax=jax.__version__, torch=torch.__version__, "
        "precision=str(jax.config.jax_default_matmul_precision))))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_suite(env: dict, paths: list[str], junit: Path, timeout: Optional[float] = None) -> dict:
    """pytest over `paths` (test files or ids); counts, failures (name and first message line) and the
    left-out files. Past `timeout` seconds, subprocess.TimeoutExpired."""
    left_out = {
        f: module
        for f, module in OPTIONAL_IMPORTS.items()
        if importlib.util.find_spec(module) is None and any(f.startswith(p.rstrip("/")) for p in paths)
    }
    cmd = [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    cmd += [f"--ignore={f}" for f in left_out]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    counts = dict(tests=0, failures=0, errors=0, skipped=0)
    failures = []
    if junit.exists():
        root = ElementTree.parse(junit).getroot()
        for suite in [root] if root.tag == "testsuite" else root.iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
            for case in suite.iter("testcase"):
                for bad in [*case.findall("failure"), *case.findall("error")]:
                    message = ((bad.get("message") or bad.text or "").strip().splitlines() or [""])[0][:200]
                    failures.append(f"{case.get('classname')}::{case.get('name')}: {message}")
    return dict(
        paths=paths,
        returncode=done.returncode,
        wall_s=wall,
        counts=counts,
        failures=failures,
        left_out=left_out,
        tail=done.stdout[-2000:] + done.stderr[-2000:],
    )


def error_table(env: dict) -> str:
    done = subprocess.run([sys.executable, "-m", "parity_tests.error_table"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return f"(the error table failed: exit {done.returncode})\n\n```\n{done.stderr[-3000:]}\n```"
    return done.stdout.strip()


def markdown(backend: dict, suite: dict, table: str, command: str) -> str:
    c = suite["counts"]
    passed = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    lines = [
        f"# Parity on {backend['device']} ({backend['backend']})",
        "",
        f"Command: `{command}`. JAX {backend['jax']} on {backend['backend']} with "
        f"`jax_default_matmul_precision={backend['precision']}` (true float32 matmuls, no TF32); torch "
        f"{backend['torch']}, the oracle, on the CPU.",
        "",
        f"## Parity suite (`pytest {' '.join(suite['paths'])}`)",
        "",
        f"{passed} passed, {c['failures']} failed, {c['errors']} errors, {c['skipped']} skipped "
        f"({c['tests']} collected; {suite['wall_s']:.0f} s; pytest exit {suite['returncode']}).",
        "",
    ]
    for f, module in suite["left_out"].items():
        lines.append(f"- left out: `{f}` (needs `{module}`, not installed here)")
    if suite["failures"]:
        lines += ["Failures:", ""] + [f"- `{f}`" for f in suite["failures"]]
    elif suite["returncode"] != 0:
        lines += ["pytest failed before reporting tests:", "", "```", suite["tail"], "```"]
    lines += ["", "## Error table (`python -m parity_tests.error_table`)", "", table]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Parity suite and error table with JAX on the GPU; writes markdown.")
    parser.add_argument("--out", default="benchmarks/results", help="folder of gpu_parity.md")
    parser.add_argument("--tests", nargs="*", default=["parity_tests"], help="pytest paths (default: parity_tests)")
    parser.add_argument("--allow-cpu", action="store_true", help="run even where JAX has no GPU (to test this tool)")
    parser.add_argument("--no-error-table", action="store_true", help="the suite alone (to test this tool quickly)")
    args = parser.parse_args(argv)
    env = parity_env()
    backend = describe_backend(env)
    if backend["backend"] != "gpu" and not args.allow_cpu:
        print(f"error: JAX runs on {backend['backend']}, not a GPU (--allow-cpu to run anyway)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        suite = run_suite(env, args.tests, Path(tmp) / "junit.xml")
    print(f"parity suite: {suite['counts']}, exit {suite['returncode']}", flush=True)
    table = "(not run: --no-error-table)" if args.no_error_table else error_table(env)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_parity.md"
    command = " ".join(["python -m benchmarks.gpu_parity", *(sys.argv[1:] if argv is None else argv)])
    path.write_text(markdown(backend, suite, table, command))
    print(f"wrote {path}")
    return 0 if suite["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
