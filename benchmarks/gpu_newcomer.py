"""`python -m benchmarks.gpu_newcomer [--dry-run --out DIR]`: what a user runs first on a fresh GPU machine, timed.

Each step runs in a fresh process, as a user would start it: `python -m jax_ddpm.train` with a cold
compile cache (the project's cache folder, $JAX_DDPM_CACHE_DIR, emptied first) and again warm (the same
folder as the first run left it); the same for `--preset recommended`; a sweep of 256 models start to
finish (2 learning rates x 2 EMA decays x 64 seeds, 20 epochs; cold cache); and the parity suite with
JAX on the device at the highest matmul precision (`benchmarks.gpu_parity`); last, the default run on a
cold cache again with JAX_DDPM_NO_PROGRAM_OPTIONS=1, the per-program compiler options
(`jax_ddpm.speed.program_options`: on a GPU, autotuning off) against none. Writes
<out>/gpu_newcomer.md and .json: each step's wall time, its time breakdown (the run's summary.json
`timings`; for the sweep, its own from leaderboard.json), its ratio to the training loop,
the machine, and the issue's targets, met or not: a run's wall time at most 2x its training loop on a
cold cache and 1.3x warm, the sweep's models sampled and scored in at most 10 s, the whole check within
6 minutes. A step that fails or runs past its timeout is reported as such; the rest still run.

`--dry-run`: the same steps at tiny sizes on the CPU (a 4-model sweep, two parity tests), writing
<out>/gpu_newcomer-dry-run.* (--out required), so that the first GPU run does not fail on a typo.
Needs neither tyro nor torch in this process (a GPU machine may lack tyro until its wheels are installed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from benchmarks import gpu_parity
from benchmarks.timing import Bench
from ddpm_harness import cpu_isa
from ddpm_harness.runs import SUMMARY_FILE, time_breakdown
from jax_ddpm.runner.compile_cache import CACHE_DIR_ENV
from jax_ddpm.speed import NO_PROGRAM_OPTIONS_ENV

COLD_X, WARM_X = 2.0, 1.3  # a run's wall time over its training loop, on a cold and on a warm cache
SCORED_S = 10.0  # the sweep's models sampled and scored within
WHOLE_S = 360.0  # the whole check within (device time)
BUDGET_S = 480.0  # after this, the steps left are skipped (each step's timeout is cut to what is left)

TINY_RUN = ("--epochs", "2", "--n-points", "512", "--n-samples", "256", "--n-eval", "128")
SWEEP_GRID = ("--lr", "1e-3", "3e-3", "--ema-decay", "0.9", "0.999")
DRY_PARITY = ("parity_tests/test_schedule.py::test_q_sample",)  # both precisions: two fast tests
DRY_RUN_NOTE = (
    "**DRY RUN** on the CPU at tiny sizes: the numbers mean nothing; this file only shows that the steps, "
    "the reading of their summaries and this report go through."
)


@dataclasses.dataclass(frozen=True)
class Step:
    """One command a newcomer runs: `python -m <module> <args>` (kind "run", "sweep" or "parity"),
    in a fresh process, the compile cache emptied first when `cold`; `max_x`, its target wall time
    over its training loop."""

    name: str
    kind: str
    module: str
    args: tuple[str, ...]
    cold: bool
    timeout_s: float
    max_x: Optional[float] = None
    env: tuple[tuple[str, str], ...] = ()  # variables set for this step alone


def steps(dry_run: bool) -> list[Step]:
    tiny = (*TINY_RUN, "--no-plots") if dry_run else ()  # pictures: the CPU's time, not the check's
    seeds, epochs = ("1", "2") if dry_run else ("64", "20")
    sweep = (*SWEEP_GRID, "--seeds", seeds, "--epochs", epochs, *(TINY_RUN[2:] if dry_run else ()))
    recommended = ("--preset", "recommended", *tiny)

    def limit(seconds: float) -> float:  # a dry run on a shared CI machine: generous timeouts for tiny work
        return max(seconds, 300.0) if dry_run else seconds

    return [
        Step("default run, cold cache", "run", "jax_ddpm.train", tiny, True, limit(75), COLD_X),
        Step("default run, warm cache", "run", "jax_ddpm.train", tiny, False, limit(45), WARM_X),
        Step("--preset recommended, cold cache", "run", "jax_ddpm.train", recommended, True, limit(75), COLD_X),
        Step("--preset recommended, warm cache", "run", "jax_ddpm.train", recommended, False, limit(45), WARM_X),
        Step(f"{n_models(sweep)}-model sweep, cold cache", "sweep", "jax_ddpm.sweep", sweep, True, limit(120)),
        Step("parity suite", "parity", "pytest", DRY_PARITY if dry_run else ("parity_tests",), False, limit(150)),
        # speed.program_options against none: the default run again on a cold cache, without them
        Step(
            "default run, cold cache, no program options",
            "run",
            "jax_ddpm.train",
            tiny,
            True,
            limit(75),
            None,  # a comparison, no target: compare its compile and loop with the first step's
            ((NO_PROGRAM_OPTIONS_ENV, "1"),),
        ),
    ]


def n_models(sweep_args: tuple[str, ...]) -> int:
    """Models of a sweep command line: the product of the list lengths of --lr and --ema-decay, times --seeds."""
    lists, current = {}, None
    for token in sweep_args:
        if token.startswith("--"):
            current, lists[token] = token, []
        else:
            lists[current].append(token)
    return len(lists["--lr"]) * len(lists["--ema-decay"]) * int(lists["--seeds"][0])


@dataclasses.dataclass
class Check:
    """The check's working folder (run folders, the compile cache), the children's environment and the clock."""

    work: Path
    env: dict
    bench: Bench

    @property
    def cache(self) -> Path:
        return self.work / "cache"

    def left_s(self, step: Step) -> float:
        """The step's timeout, cut to what the budget leaves."""
        if self.bench.budget_s is None:
            return step.timeout_s
        return max(1.0, min(step.timeout_s, self.bench.budget_s - (time.perf_counter() - self.bench.start)))


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def command_line(step: Step, check: Check) -> list[str]:
    out = ["--out-dir", str(check.work / slug(step.name))] if step.kind != "parity" else []
    return [sys.executable, "-m", step.module, *step.args, *out]


def run_process(step: Step, check: Check) -> dict:
    """The step's command in a fresh process: status ('ok', 'failed' or 'timed out'), wall time, output tail."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command_line(step, check),
            env={**check.env, **dict(step.env)},
            capture_output=True,
            text=True,
            timeout=check.left_s(step),
        )
    except subprocess.TimeoutExpired as err:
        tail = "".join(text(out)[-1500:] for out in (err.stdout, err.stderr))
        return dict(status="timed out", wall_s=time.perf_counter() - start, tail=tail)
    status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
    return dict(status=status, wall_s=time.perf_counter() - start, tail=done.stdout[-1500:] + done.stderr[-1500:])


def text(output) -> str:
    """A child's output as text (a timed-out child's comes as bytes, or None)."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run_step(step: Step, check: Check) -> dict:
    """A `python -m jax_ddpm.train` step: its process, then its summary.json's timings."""
    row = run_process(step, check)
    if row["status"] == "ok":
        summary = json.loads((check.work / slug(step.name) / SUMMARY_FILE).read_text())
        row["timings"] = summary["timings"]
        row["summary"] = {k: summary.get(k) for k in ("epochs", "steps", "steps_per_s", "compile_s", "train_s")}
    return row


def sweep_step(step: Step, check: Check) -> dict:
    """The sweep: its process, then its own time breakdown (leaderboard.json's `timings`), or where a sweep
    wrote none, one summed over its configurations' summary.json."""
    row = run_process(step, check)
    row["sweep_own_breakdown"] = None
    row["sweep_own_breakdown_note"] = (
        "`timings` are the sweep's own breakdown from leaderboard.json (merge included); where it has none, "
        "summed over its configurations' summary.json (one group: its compile and training loop counted once)"
    )
    if row["status"] == "ok":
        sweep_dir = check.work / slug(step.name)
        row["timings"], row["models"] = configurations_timings(sweep_dir)
        board = sweep_dir / "leaderboard.json"
        row["sweep_own_breakdown"] = json.loads(board.read_text()).get("timings") if board.is_file() else None
        row["timings"] = row["sweep_own_breakdown"] or row["timings"]
        row["sampled_and_scored_s"] = row["timings"]["sampling"] + row["timings"]["final_evaluation"]
    return row


def configurations_timings(sweep_dir: Path) -> tuple[dict, int]:
    """({phase: seconds} of a sweep from its configurations' summaries, models trained). Configurations
    of one group share its compile and training loop; each has its own set-up, sampling and evaluation."""
    summaries = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob(f"*/{SUMMARY_FILE}"))]
    groups = {(s.get("compile_s") or 0.0, s.get("train_s") or 0.0) for s in summaries}
    timings = {key: sum(s.get("timings", {}).get(key, 0.0) for s in summaries) for key in ("set_up",)}
    timings.update(compile=sum(c for c, _ in groups), training_loop=sum(t for _, t in groups))
    for key in ("sampling", "final_evaluation"):
        timings[key] = sum(s.get("timings", {}).get(key, 0.0) for s in summaries)
    return timings, sum(s["seeds"] for s in summaries)


def parity_step(step: Step, check: Check) -> dict:
    """The parity suite through benchmarks.gpu_parity (JAX at the highest matmul precision)."""
    env, timeout = gpu_parity.parity_env(check.env), check.left_s(step)
    try:
        suite = gpu_parity.run_suite(env, list(step.args), check.work / "junit.xml", timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(status="timed out", wall_s=timeout)
    c = suite["counts"]
    ok = suite["returncode"] == 0 and c["tests"] > 0
    return dict(
        status="ok" if ok else f"failed (exit {suite['returncode']})",
        wall_s=suite["wall_s"],
        precision=env["JAX_DEFAULT_MATMUL_PRECISION"],
        counts=c,
        failures=suite["failures"],
        left_out=suite["left_out"],
        tail="" if ok else suite["tail"],
    )


KINDS: dict[str, Callable[[Step, Check], dict]] = {"run": run_step, "sweep": sweep_step, "parity": parity_step}


def attempt(step: Step, check: Check) -> dict:
    """The step's row: what it measured, or why it did not run or failed (a failure never stops the check)."""
    if step.cold:
        shutil.rmtree(check.cache, ignore_errors=True)
    check.bench.log(f"{step.name}: {' '.join(command_line(step, check)[1:])}")
    row = check.bench.attempt(step.name, lambda: KINDS[step.kind](step, check), optional=True)
    if row is None:
        results = check.bench.results
        why = results["skipped"].get(step.name) or f"failed: {results['failed'].get(step.name)}"
        row = dict(status=why)
    row.update(name=step.name, command=" ".join(["python -m", step.module, *step.args]))
    row.update(kind=step.kind, cache=cache_label(step), timeout_s=step.timeout_s, max_x=step.max_x)
    loop = (row.get("timings") or {}).get("training_loop")
    if loop:
        row["x_training_loop"] = row["wall_s"] / loop
    check.bench.log(f"{step.name}: {row['status']}" + (f", {row['wall_s']:.1f} s" if "wall_s" in row else ""))
    return row


def cache_label(step: Step) -> str:
    """'cold' (emptied first), 'warm' (as the step before left it), or '-' for the parity suite (no cache role)."""
    return "-" if step.kind == "parity" else "cold" if step.cold else "warm"


def describe_machine(env: dict) -> dict:
    """JAX's devices and version (in a child process, with the steps' environment) and this CPU."""
    code = (
        "import json, jax; d = jax.devices(); print(json.dumps(dict(backend=jax.default_backend(), "
        "devices=[str(x) for x in d], device_kind=str(d[0].device_kind), jax=jax.__version__)))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    info = json.loads(done.stdout.strip().splitlines()[-1])
    info.update(gpu=info["device_kind"] if info["backend"] == "gpu" else None)
    info.update(cpu_model=cpu_isa.cpu_model(), isa=cpu_isa.vector_isa(), cores=os.cpu_count())
    return info


def target(name: str, value: Optional[float], limit: float, measured: str) -> dict:
    return dict(target=name, met=None if value is None else value <= limit, measured=measured)


def targets(rows: list[dict], wall_s: float) -> list[dict]:
    """The issue's targets on this check's rows; met is None where the step did not give the number."""
    out = []
    for row in rows:
        if row["max_x"] is not None:
            x = row.get("x_training_loop")
            loop = (row.get("timings") or {}).get("training_loop")
            measured = f"{x:.2f}x ({row['wall_s']:.1f} s / {loop:.1f} s)" if x else f"not measured ({row['status']})"
            out.append(target(f"{row['name']}: wall <= {row['max_x']}x its training loop", x, row["max_x"], measured))
        elif row["kind"] == "sweep":
            s = row.get("sampled_and_scored_s")
            measured = f"{s:.1f} s (sampling + final evaluation, summed)" if s is not None else row["status"]
            name = f"{row.get('models', '?')} models sampled and scored in <= {SCORED_S:.0f} s"
            out.append(target(name, s, SCORED_S, measured))
    out.append(target(f"the whole check within {WHOLE_S / 60:.0f} minutes", wall_s, WHOLE_S, f"{wall_s:.0f} s"))
    return out


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# A newcomer's first GPU check: {m['gpu'] or 'no GPU (' + m['backend'] + ')'}", ""]
    if results["dry_run"]:
        lines += [DRY_RUN_NOTE, ""]
    lines += [
        f"Command: `{results['command']}` ({results['wall_s']:.0f} s in all). Each step is a fresh process; "
        f"'cold' means the compile cache (${CACHE_DIR_ENV}) emptied first, 'warm' as the step before left it.",
        "",
        "## Machine",
        "",
        f"- JAX {m['jax']} on {m['backend']}: {', '.join(m['devices'])}",
        f"- GPU: {m['gpu'] or 'none'}; CPU: {m['cpu_model']} ({m['isa']}, {m['cores']} cores)",
        "",
        "## Steps",
        "",
        "| step | command | cache | status | wall s | training loop s | wall / loop | time breakdown |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [step_line(row) for row in results["steps"]]
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in results["targets"]:
        met = "not measured" if t["met"] is None else "yes" if t["met"] else "NO"
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    lines += notes(results["steps"])
    return "\n".join(lines) + "\n"


def step_line(row: dict) -> str:
    timings = row.get("timings") or {}
    wall = f"{row['wall_s']:.1f}" if "wall_s" in row else "-"
    loop = f"{timings['training_loop']:.1f}" if timings.get("training_loop") else "-"
    x = f"{row['x_training_loop']:.2f}" if "x_training_loop" in row else "-"
    breakdown = time_breakdown(timings) if timings else "-"
    cells = [row["name"], f"`{row['command']}`", row["cache"], row["status"], wall, loop, x, breakdown]
    return "| " + " | ".join(cells) + " |"


def notes(rows: list[dict]) -> list[str]:
    """The sweep's breakdown note, the parity suite's counts, and the output tail of each step that did not pass."""
    lines = ["", "## Notes", ""]
    for row in rows:
        if "sweep_own_breakdown_note" in row:
            lines.append(f"- {row['name']}: {row['sweep_own_breakdown_note']}.")
        if "counts" in row:
            c = row["counts"]
            lines.append(
                f"- {row['name']}: {c['tests'] - c['failures'] - c['errors'] - c['skipped']} passed, {c['failures']} "
                f"failed, {c['errors']} errors, {c['skipped']} skipped (JAX matmul precision {row['precision']})"
                + "".join(f"; left out {f} (needs {module})" for f, module in row["left_out"].items())
            )
            lines += [f"  - `{f}`" for f in row["failures"]]
    for row in rows:
        if row["status"] != "ok" and row.get("tail"):
            lines += ["", f"Output of '{row['name']}' ({row['status']}):", "", "```", row["tail"].strip(), "```"]
    return lines


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_newcomer", description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder of the report (default benchmarks/results; a dry run needs one)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps at tiny sizes on the CPU")
    parser.add_argument(
        "--budget-s",
        type=float,
        help=f"seconds after which the steps left are skipped (default {BUDGET_S:.0f}; none in a dry run)",
    )
    args = parser.parse_args(argv)
    if args.dry_run and args.out is None:
        parser.error("--dry-run needs --out (a dry run never writes over the committed results)")
    return args


def run_check(args: argparse.Namespace, command: str) -> Optional[dict]:
    """Every step in a fresh working folder; the results, or None (with an error line) where JAX has no GPU."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_newcomer-") as tmp:
        env = dict(os.environ, **{CACHE_DIR_ENV: str(Path(tmp) / "cache")})  # else as the user's shell has it
        if args.dry_run:
            env["JAX_PLATFORMS"] = "cpu"
        machine = describe_machine(env)
        if machine["backend"] != "gpu" and not args.dry_run:
            print(
                f"error: JAX runs on {machine['backend']}, not a GPU (--dry-run --out DIR: the CPU check)",
                file=sys.stderr,
            )
            return None
        results = dict(command=command, dry_run=args.dry_run, machine=machine, skipped={}, failed={})
        budget = args.budget_s if args.budget_s is not None else (None if args.dry_run else BUDGET_S)
        check = Check(Path(tmp), env, Bench(results, budget, strict=False, after_each=lambda: None))
        results["steps"] = [attempt(step, check) for step in steps(args.dry_run)]
        results["wall_s"] = time.perf_counter() - start
    results["targets"] = targets(results["steps"], results["wall_s"])
    return results


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    results = run_check(
        args, " ".join(["python -m benchmarks.gpu_newcomer", *(sys.argv[1:] if argv is None else argv)])
    )
    if results is None:
        return 2
    out = Path(args.out or "benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_newcomer" + ("-dry-run" if args.dry_run else "")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(results))
    print(f"wrote {out / stem}.md and .json")
    return 0 if all(row["status"] == "ok" for row in results["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
