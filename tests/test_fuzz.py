"""Fuzzing the three command lines with hypothesis (issue 11, deliverable 2).

Five categories of abuse, each a hypothesis test with a fixed seed (derandomize) and a bounded
number of examples, called in process through `main(argv)`:
- train-args: options of `python -m jax_ddpm.train` (bad types, ranges, NaN/inf, empty strings,
  unknown names, two values where one is due, missing values, NUL bytes, huge numbers);
- sample-args: options of `python -m jax_ddpm.sample`;
- sweep-args: the lists of `python -m jax_ddpm.sweep` (a bad value among good ones, a repeated
  value, no value, a list where one value is due), refused before the sweep folder is made;
- data-files: `--dataset` files (wrong shape, NaN, inf, empty, one point, huge values, non-numeric
  or garbled CSV, binary garbage, pickled objects, unicode names, folders named like files);
- run-folders: a copy of an earlier run, damaged (random bytes, truncated or deleted files, the
  record, config.json or a manifest garbled or given wrong types, another model's shapes, pickle
  payloads), given to `--resume` and to `python -m jax_ddpm.sample --run`;
and subprocess: a few cases through the real command line.

Every case ends with exit status 0, 1 or 2. On failure stderr holds exactly one line starting with
`error: ` (after any `warning: ` lines: a damaged checkpoint is reported, then the one before it
used), readable, without a traceback. No file outside the case's output folder is touched: a
sandbox holding the data files and an earlier run is hashed before and after every case, and the
working directory stays empty. Earlier outputs are intact: a failed --resume keeps every file it
found (a damaged checkpoint is moved aside, never deleted), and the sampler never changes a run.

CI runs the bounded version (the examples per category are below). JAX_DDPM_FUZZ_SCALE=10 runs ten
times as many (the long run of docs/reliability.md's figures); JAX_DDPM_FUZZ_REPORT=path.json writes the
cases tried per category and exit status.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ddpm_harness.config import SCHEDULES, Config
from ddpm_harness.sweeps import SweepArgs
from jax_ddpm.sample import main as sample_main
from jax_ddpm.sweep import main as sweep_main
from tests.conftest import snapshot, train_main

REPO = Path(__file__).resolve().parents[1]
SCALE = int(os.environ.get("JAX_DDPM_FUZZ_SCALE", "1"))
REPORT = os.environ.get("JAX_DDPM_FUZZ_REPORT")

# Examples per category in CI; the long run multiplies them by JAX_DDPM_FUZZ_SCALE.
EXAMPLES = {"train-args": 60, "sample-args": 30, "sweep-args": 30, "data-files": 24, "run-folders": 12, "subprocess": 2}

# A run that compiles in seconds and trains in well under one: 2 steps an epoch.
BUDGET = [
    "--n-points",
    "64",
    "--batch-size",
    "32",
    "--epochs",
    "1",
    "--checkpoint-every",
    "1",
    "--log-every",
    "1",
    "--n-samples",
    "16",
    "--n-eval",
    "16",
    "--no-plots",
]
EARLIER = [*BUDGET, "--epochs", "2"]  # the sandbox's earlier run: checkpoints at epochs 1 and 2

COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
SECONDS: collections.Counter = collections.Counter()  # wall time of the cases, per category
STARTED = time.perf_counter()


def fuzz_settings(category: str) -> settings:
    return settings(
        max_examples=EXAMPLES[category] * SCALE,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


# ---- running one case and checking what it did ----------------------------------------------


@dataclasses.dataclass
class Outcome:
    code: int
    out: str
    err: str


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.levelname}:{record.name}:{record.getMessage()}")


def run_in_process(main: Callable, argv: list[str], cwd: Path) -> Outcome:
    """main(argv) in `cwd`, with stdout and stderr captured. Python warnings and log records that a
    real process would print on stderr (absl's, say) are added to stderr as the lines they would be."""
    out, err, logged = io.StringIO(), io.StringIO(), _Collect()
    old_cwd = os.getcwd()
    os.chdir(cwd)
    logging.getLogger().addHandler(logged)
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            warnings.simplefilter("always")
            code = main(argv)
    finally:
        logging.getLogger().removeHandler(logged)
        os.chdir(old_cwd)
    shown = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, ResourceWarning))
    ]
    return Outcome(code, out.getvalue(), "".join(line + "\n" for line in [*logged.lines, *shown]) + err.getvalue())


def run_subprocess(module: str, argv: list[str], cwd: Path) -> Outcome:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", module, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


BOX = set("╭╮╰╯│─")


def check_report(outcome: Outcome, expect_failure: bool, argv: list[str]) -> None:
    """Exit status 0, 1 or 2; a failure says so in exactly one readable `error:` line, last on
    stderr, after `warning:` lines only; never a traceback."""
    assert "Traceback" not in outcome.err, outcome.err
    assert outcome.code in ((1, 2) if expect_failure else (0, 1, 2)), (outcome.code, outcome.err)
    if outcome.code == 0:
        return
    lines = [line for line in outcome.err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), outcome.err
    assert all(line.startswith("warning: ") for line in lines[:-1]), outcome.err
    line = lines[-1]
    assert line.isprintable(), line  # user text is quoted with repr: no control characters
    for token in argv:  # what the user typed may hold anything
        line = line.replace(token, "")
    assert not BOX & set(line) and "----" not in line and "helptext" not in line, line  # tyro's box folded


def tree_contents(folder: Path) -> collections.Counter:
    """The multiset of file contents (sha256) under folder: nothing lost, wherever a file moved."""
    return collections.Counter(hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file())


@dataclasses.dataclass
class Sandbox:
    root: Path
    protected: Path  # data files and the earlier run: never touched by any case
    earlier: Path
    points: Path  # a good (64, 2) data file
    hashes: dict[str, str]
    cases: int = 0

    @contextlib.contextmanager
    def case(self, category: str):
        """A fresh folder for one case (its cwd, inputs and outputs); checks the sandbox after it."""
        self.cases += 1
        began = time.perf_counter()
        folder = self.root / "work" / f"{category}-{self.cases}"
        (folder / "cwd").mkdir(parents=True)
        try:
            yield folder
            assert snapshot(self.protected) == self.hashes, "a file outside the output folder changed"
            assert sorted(p.name for p in self.root.iterdir()) == ["protected", "work"]
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        COUNTS[category]["tried"] += 1
        SECONDS[category] += time.perf_counter() - began

    def tokens(self, mutations: list[list[str]]) -> list[str]:
        """The mutations' tokens, an option left without its value last (so that no later token
        becomes its value), with {protected} standing for the protected folder."""
        ordered = sorted(mutations, key=lambda m: len(m) == 1 and m[0].startswith("-"))
        return [t.replace("{protected}", str(self.protected)) for m in ordered for t in m]


def record(category: str, outcome: Outcome) -> None:
    COUNTS[category][f"exit {outcome.code}"] += 1


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Sandbox:
    began = time.perf_counter()
    root = tmp_path_factory.mktemp("fuzz")
    protected = root / "protected"
    (protected / "data").mkdir(parents=True)
    points = protected / "data" / "points.npy"
    np.save(points, np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    earlier = protected / "earlier"
    outcome = run_in_process(train_main, [*EARLIER, "--out-dir", str(earlier)], root)
    assert outcome.code == 0, outcome.err
    SECONDS["sandbox"] += time.perf_counter() - began
    yield Sandbox(root, protected, earlier, points, snapshot(protected))
    if REPORT:
        Path(REPORT).write_text(
            json.dumps(
                dict(
                    counts={k: dict(v) for k, v in sorted(COUNTS.items())},
                    scale=SCALE,
                    case_seconds={k: round(v, 1) for k, v in sorted(SECONDS.items())},
                    seconds=round(time.perf_counter() - STARTED, 1),
                ),
                indent=2,
            )
            + "\n"
        )
    print("\nfuzz cases tried: " + ", ".join(f"{k} {dict(v)} in {SECONDS[k]:.1f} s" for k, v in sorted(COUNTS.items())))


def check_refused(
    sandbox: Sandbox, category: str, main: Callable, before: Callable[[Path], list[str]], mutations, never_made=None
) -> None:
    """One abused command line, `before(folder)` then the mutations' tokens, run in a fresh case
    folder: it fails with one readable line, writes nothing into its working directory and, when
    `never_made` names a path in the folder, does not create it."""
    with sandbox.case(category) as folder:
        argv = [*before(folder), *sandbox.tokens(mutations)]
        outcome = run_in_process(main, argv, folder / "cwd")
        check_report(outcome, expect_failure=True, argv=argv)
        record(category, outcome)
        assert not any((folder / "cwd").iterdir()), "the command wrote into the working directory"
        assert never_made is None or not (folder / never_made).exists(), f"{never_made} was made before refusing"


def assert_tried(category: str) -> None:
    """The test cannot silently try nothing: at least 80% of the examples asked for were run."""
    assert COUNTS[category]["tried"] >= 0.8 * EXAMPLES[category] * SCALE, dict(COUNTS[category])


# ---- strategies: command-line tokens ----------------------------------------------------------

POSITIVE_INTS = (
    "n-points",
    "num-steps",
    "epochs",
    "batch-size",
    "n-samples",
    "seeds",
    "devices",
    "checkpoint-every",
    "log-every",
    "n-eval",
)
NON_NEGATIVE_INTS = ("eval-every", "seed")
# Options whose huge values must be refused before any work (a huge --epochs is a long run, not an error).
REFUSED_WHEN_HUGE = ("n-points", "num-steps", "n-samples", "seeds", "devices", "n-eval", "seed")
FLOATS = ("data-noise", "beta-start", "beta-end", "lr", "clip-norm", "ema-decay", "hybrid-lambda", "flow-sigma")
CHOICES = {
    "schedule": SCHEDULES,
    "loss": ("noise", "variational", "hybrid"),
    "sample-with": ("raw", "ema"),
    "method": ("diffusion", "flow"),
    "coupling": ("independent", "ot"),
}
FLAGS = ("resume", "no-plots", "no-compile-cache")
TRAIN_OPTIONS = {f.name.replace("_", "-") for f in dataclasses.fields(Config)} | {"help", "h"}
SAMPLE_OPTIONS = {"run", "n", "params", "out", "seed", "help", "h"}


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


words = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
not_an_int = st.one_of(
    st.sampled_from(["", " ", "1.5", "1e3", "nan", "inf", "0x10", "ten", "1,2", "[1]", "None"]),
    words.filter(lambda s: not _is_int(s)),
)
not_a_float = st.one_of(
    st.sampled_from(["", "abc", "1,5", "0x1p-3", "[0.1]", "1e", "--"]), words.filter(lambda s: not _is_float(s))
)
# Refused by every float option: NaN, the infinities (also by overflow: 1e400) and negative numbers.
bad_float = st.one_of(
    st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "+inf", "Infinity", "1e400", "-1e400"]),
    st.floats(max_value=-1e-300, allow_nan=False).map(repr),
    not_a_float,
)
positional = words.filter(lambda s: s and not s.startswith("-"))


def _unknown(known: set[str]):
    names = st.from_regex(r"\A--?[a-zA-Z][a-zA-Z0-9_-]{0,20}\Z")
    return names.filter(lambda s: s.lstrip("-").replace("_", "-") not in known and not s.startswith("--no-"))


def _option(name: str, value: str, equals: bool) -> list[str]:
    return [f"--{name}={value}"] if equals else [f"--{name}", value]


@st.composite
def bad_train_tokens(draw) -> list[str]:
    """One mutation of a good training command line that must make it fail."""
    kind = draw(
        st.sampled_from(
            [
                "int",
                "huge",
                "float",
                "choice",
                "dataset",
                "unknown",
                "list",
                "missing",
                "flag-value",
                "positional",
                "out-dir",
                "nul",
            ]
        )
    )
    equals = draw(st.booleans())
    if kind == "int":
        name = draw(st.sampled_from(POSITIVE_INTS + NON_NEGATIVE_INTS))
        limit = 0 if name in POSITIVE_INTS else -1
        return _option(name, draw(st.one_of(not_an_int, st.integers(max_value=limit).map(str))), equals)
    if kind == "huge":
        return _option(draw(st.sampled_from(REFUSED_WHEN_HUGE)), str(draw(st.integers(2**40, 10**40))), equals)
    if kind == "float":
        return _option(draw(st.sampled_from(FLOATS)), draw(bad_float), equals)
    if kind == "choice":
        name = draw(st.sampled_from(sorted(CHOICES)))
        return _option(name, draw(words.filter(lambda s: s.strip() not in CHOICES[name])), equals)
    if kind == "dataset":
        return _option(
            "dataset",
            draw(
                st.one_of(
                    words.filter(
                        lambda s: (
                            s.strip()
                            not in ("moons", "swiss_roll", "s_curve", "circles", "checkerboard", "eight_gaussians")
                        )
                    ),
                    st.sampled_from(
                        [
                            "missing/points.npy",
                            "missing.csv",
                            "/",
                            "points.txt",
                            "{protected}/data",
                            "{protected}/data/points.npy/x.npy",
                        ]
                    ),
                )
            ),
            equals,
        )
    if kind == "unknown":
        return [draw(_unknown(TRAIN_OPTIONS)), *draw(st.lists(positional, max_size=1))]
    if kind == "list":  # two values where one is due
        name = draw(st.sampled_from(POSITIVE_INTS + FLOATS + tuple(CHOICES) + ("dataset", "out-dir")))
        return [f"--{name}", draw(words), draw(positional)]
    if kind == "missing":
        return [f"--{draw(st.sampled_from(POSITIVE_INTS + FLOATS + tuple(CHOICES) + ('dataset', 'out-dir')))}"]
    if kind == "flag-value":
        return [f"--{draw(st.sampled_from(FLAGS))}", draw(st.sampled_from(["true", "yes", "1", "False", ""]))]
    if kind == "positional":
        return [draw(positional)]
    if kind == "out-dir":
        return _option(
            "out-dir",
            draw(st.sampled_from(["", "x" * 300, "{protected}/data", "{protected}/data/points.npy/run"])),
            equals,
        )
    name = draw(st.sampled_from(["epochs", "lr", "dataset", "out-dir", "schedule"]))  # a NUL byte (in process only)
    return _option(name, draw(words) + "\x00" + draw(words), equals)


# ---- 1. the training command line -------------------------------------------------------------


def test_train_arguments(sandbox):
    @fuzz_settings("train-args")
    @given(mutations=st.lists(bad_train_tokens(), min_size=1, max_size=3))
    @example(mutations=[["--loss", ""]])  # tyro's box drawn in ASCII (stdout redirected): rules and helptext leaked
    @example(mutations=[["--schedule", "\ud7fc\x1b[31m"]])  # the user's text echoed raw: unprintable characters
    @example(mutations=[["--lr", "inf"]])  # NaN and inf passed validation, then config.json could not hold them
    @example(mutations=[["--clip-norm", "nan"]])
    @example(mutations=[["--schedule", "cosine"], ["--beta-start", "nan"]])  # a field the schedule ignores, too
    @example(mutations=[["--out-dir", ""]])  # an empty --out-dir (an unset shell variable) wrote to ./runs/
    @example(mutations=[["--data-noise", "-1"]])  # scikit-learn's own error escaped as a traceback
    @example(mutations=[["--data-noise", "nan"]])
    @example(mutations=[["--seed", "-1"]])  # numpy refused it with a traceback
    @example(mutations=[["--seed", "4294967296"]])  # JAX wraps it to seed 0; numpy refused it with a traceback
    @example(mutations=[["--num-steps", "1099511627776"]])  # numpy's MemoryError escaped as a traceback
    @example(mutations=[["--n-eval", "1099511627776"]])  # (at 2**31 both ran out of memory for minutes instead)
    @example(mutations=[["--out-dir", "run\x00"]])  # a path with a NUL byte: ValueError from os as a traceback
    @example(mutations=[["--devices", "16"]])  # more devices than JAX sees: make_mesh's own one-line refusal
    def case(mutations):
        def before(folder):
            return [*BUDGET, "--out-dir", str(folder / "run")]

        check_refused(sandbox, "train-args", train_main, before, mutations)

    case()
    assert_tried("train-args")


def test_help_exits_zero_and_writes_nothing(sandbox):
    with sandbox.case("train-args") as folder:
        outcome = run_in_process(train_main, ["--help"], folder / "cwd")
        assert outcome.code == 0 and "--out-dir" in outcome.out
        assert sorted(p.name for p in folder.iterdir()) == ["cwd"] and not any((folder / "cwd").iterdir())


# ---- 2. the sampling command line -------------------------------------------------------------


@st.composite
def bad_sample_tokens(draw) -> list[str]:
    kind = draw(st.sampled_from(["n", "params", "seed", "run", "unknown", "list", "missing", "positional", "nul"]))
    equals = draw(st.booleans())
    if kind == "n":
        return _option("n", draw(st.one_of(not_an_int, st.integers(max_value=0).map(str))), equals)
    if kind == "params":
        return _option("params", draw(words.filter(lambda s: s.strip() not in ("raw", "ema"))), equals)
    if kind == "seed":
        return _option(
            "seed",
            draw(st.one_of(not_an_int, st.integers(max_value=-1).map(str), st.integers(2**40, 10**40).map(str))),
            equals,
        )
    if kind == "run":
        return _option(
            "run",
            draw(st.one_of(words, st.sampled_from(["", ".", "..", "{protected}", "{protected}/data/points.npy"]))),
            equals,
        )
    if kind == "unknown":
        return [draw(_unknown(SAMPLE_OPTIONS)), *draw(st.lists(positional, max_size=1))]
    if kind == "list":
        return [f"--{draw(st.sampled_from(['n', 'params', 'seed', 'run', 'out']))}", draw(words), draw(positional)]
    if kind == "missing":
        return [f"--{draw(st.sampled_from(['n', 'params', 'seed', 'run', 'out']))}"]
    if kind == "positional":
        return [draw(positional)]
    return _option(draw(st.sampled_from(["n", "run", "out", "params"])), draw(words) + "\x00" + draw(words), equals)


def test_sample_arguments(sandbox):
    @fuzz_settings("sample-args")
    @given(mutations=st.lists(bad_sample_tokens(), min_size=1, max_size=3))
    @example(mutations=[["--seed", "-5"]])  # JAX took it (as the key of seed 2**32 - 5): the range of --seed is one
    @example(mutations=[["--seed", "99999999999999999999"]])  # an OverflowError escaped as a traceback
    @example(mutations=[["--out", "\x00"]])  # np.save's ValueError escaped as a traceback
    def case(mutations):
        def before(folder):
            return ["--run", str(sandbox.earlier), "--n", "16", "--out", str(folder / "samples.npy")]

        check_refused(sandbox, "sample-args", sample_main, before, mutations)

    case()
    assert_tried("sample-args")


@pytest.mark.parametrize("n", [2**40, 10**20])
def test_sample_huge_n_is_refused(sandbox, n):
    with sandbox.case("sample-args") as folder:
        argv = ["--run", str(sandbox.earlier), "--n", str(n), "--out", str(folder / "samples.npy")]
        outcome = run_in_process(sample_main, argv, folder / "cwd")
        check_report(outcome, expect_failure=True, argv=argv)
        record("sample-args", outcome)


# ---- 2b. the sweep's command line: lists ------------------------------------------------------

SWEEP_BUDGET = [token for token in BUDGET if token != "--no-plots"]  # a sweep draws no run pictures by default
# Two good values of every option a sweep takes as a list (a bad one is put among them).
SWEPT_GOOD = {
    "n-points": ("64", "96"),
    "num-steps": ("50", "100"),
    "epochs": ("1", "2"),
    "batch-size": ("32", "16"),
    "data-noise": ("0.1", "0.2"),
    "beta-start": ("1e-5", "2e-5"),
    "beta-end": ("0.01", "0.02"),
    "lr": ("0.001", "0.003"),
    "clip-norm": ("1.0", "2.0"),
    "ema-decay": ("0.9", "0.99"),
    "hybrid-lambda": ("0.001", "0.01"),
    "schedule": ("linear", "sigmoid"),
    "loss": ("noise", "hybrid"),
    "prediction": ("eps", "x0"),
    "sample-with": ("raw", "ema"),
    "sampler": ("tutorial", "ddim"),
    "variance": ("beta", "posterior"),
    "dataset": ("moons", "{protected}/data/points.npy"),
}
SWEPT_INTS = ("n-points", "num-steps", "epochs", "batch-size")
SWEPT_CHOICES = {
    **CHOICES,
    "prediction": ("eps", "v", "x0"),
    "sampler": ("tutorial", "ddpm", "ddim", "dpm-solver++", "ode"),
    "variance": ("beta", "posterior"),
}
SWEEP_SINGLE_INTS = ("seeds", "devices", "checkpoint-every", "log-every", "n-eval", "n-samples")
SWEEP_OPTIONS = {f.name.replace("_", "-") for f in dataclasses.fields(SweepArgs)} | {"help", "h"}


@st.composite
def bad_sweep_tokens(draw) -> list[str]:
    """One mutation of a good sweep command line that must make it fail before anything is trained."""
    kind = draw(
        st.sampled_from(
            ["bad-in-list", "repeat", "empty", "single-list", "single", "processes", "zero-snr", "unknown", "nul"]
        )
    )
    if kind == "bad-in-list":
        name = draw(st.sampled_from(sorted(SWEPT_GOOD)))
        if name in SWEPT_INTS:
            bad = draw(st.one_of(not_an_int, st.integers(max_value=0).map(str)))
            if name in ("n-points", "num-steps"):
                bad = draw(st.one_of(st.just(bad), st.integers(2**40, 10**40).map(str)))
        elif name == "dataset":
            bad = draw(st.sampled_from(["missing.npy", "/", "points.txt", "{protected}/data", "no-such-dataset"]))
        elif name in SWEPT_CHOICES:
            bad = draw(words.filter(lambda s, name=name: s.strip() not in SWEPT_CHOICES[name]))
        else:
            bad = draw(bad_float)
        good = list(SWEPT_GOOD[name][: draw(st.integers(1, 2))])
        good.insert(draw(st.integers(0, len(good))), bad)
        return [f"--{name}", *good]
    if kind == "repeat":  # the same value twice: one configuration trained twice under two names
        name = draw(st.sampled_from(sorted(SWEPT_GOOD)))
        value = SWEPT_GOOD[name][0]
        return [f"--{name}", value, *SWEPT_GOOD[name][1:2], value]
    if kind == "empty":
        return [f"--{draw(st.sampled_from(sorted(SWEPT_GOOD)))}"]
    if kind == "single-list":  # a list for an option a sweep takes once
        name, values = draw(
            st.sampled_from(
                [
                    ("seeds", ["1", "2"]),
                    ("devices", ["1", "1"]),
                    ("out-dir", ["a", "b"]),
                    ("rank-by", ["mmd2", "energy"]),
                    ("preset", ["tutorial", "recommended", "recommended-diffusion"]),
                    ("n-samples", ["16", "32"]),
                    ("merge-timeout", ["1", "2"]),
                ]
            )
        )
        return [f"--{name}", *values]
    if kind == "single":
        name = draw(st.sampled_from([*SWEEP_SINGLE_INTS, "eval-every", "merge-timeout", "rank-by", "preset"]))
        if name in SWEEP_SINGLE_INTS:
            bad = draw(st.one_of(not_an_int, st.integers(max_value=0).map(str)))
        elif name == "eval-every":
            bad = draw(st.one_of(not_an_int, st.integers(max_value=-1).map(str)))
        elif name == "merge-timeout":
            bad = draw(st.one_of(bad_float, st.just("0")))
        else:
            bad = draw(
                words.filter(
                    lambda s: s.strip() not in ("tutorial", "recommended", "recommended-diffusion", "sliced_w2", "mmd2")
                )
            )
        return _option(name, bad, draw(st.booleans()))
    if kind == "processes":  # an index outside 0 .. n - 1 (a half-given pair: the examples below)
        n = draw(st.integers(-1, 3))
        outside = draw(st.one_of(st.integers(max(n, 0), max(n, 0) + 2), st.integers(-3, -1)))
        return ["--num-processes", str(n), "--process-id", str(outside)]
    if kind == "zero-snr":  # an eps model cannot be sampled at alpha_bar_T = 0
        return ["--zero-terminal-snr", "True", *draw(st.sampled_from([[], ["False"]]))]
    if kind == "unknown":
        return [draw(_unknown(SWEEP_OPTIONS)), *draw(st.lists(positional, max_size=1))]
    name = draw(st.sampled_from(["lr", "dataset", "schedule", "out-dir"]))  # a NUL byte
    return [f"--{name}", draw(words) + "\x00" + draw(words)]


def test_sweep_arguments(sandbox):
    """Lists abused: a bad value among good ones, a repeated value, no value, a list where one value
    is due, the processes' pair half given. Each is refused in one line before the sweep folder is
    made: nothing is trained first (a bad dataset of the last group was found only after the groups
    before it had trained)."""

    @fuzz_settings("sweep-args")
    @given(mutations=st.lists(bad_sweep_tokens(), min_size=1, max_size=3))
    @example(mutations=[["--dataset", "moons", "missing.npy"]])  # found after the moons group had trained
    @example(mutations=[["--devices", "64"]])  # refused after the configurations' folders were made
    @example(mutations=[["--num-processes", "2"]])  # one of the pair: the other is not read from srun here
    @example(mutations=[["--out-dir", "a", "-A", "\x1f"]])  # the values were echoed raw, "-A" counted as one
    def case(mutations):
        def before(folder):
            return [*SWEEP_BUDGET, "--out-dir", str(folder / "sweep")]

        check_refused(sandbox, "sweep-args", sweep_main, before, mutations, never_made="sweep")

    case()
    assert_tried("sweep-args")


# ---- 3. data files -------------------------------------------------------------------------------


class PlantedPayload:
    """Unpickling this object writes the marker file (relative: in the case's working directory,
    which must stay empty): proof that a file was unpickled."""

    def __reduce__(self):
        return (Path.write_text, (Path(MARKER), "unpickled"))


MARKER = "unpickled.txt"


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


good_points = hnp.arrays(np.float64, (64, 2), elements=st.floats(-3, 3, width=32))
# Mostly 0.5, with a few NaN, infinities, values beyond float32's range (1e39) or huge ones (1e30).
odd_points = hnp.arrays(
    np.float64,
    (64, 2),
    fill=st.just(0.5),
    elements=st.sampled_from([np.nan, np.inf, -np.inf, 1e39, -1e39, 1e30, 3.4e38, 1e-320, -2.0]),
)


@st.composite
def npy_file(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["points", "shape", "dtype", "pickle", "object-array", "truncated", "garbage"]))
    if kind == "points":  # the right shape; values that may be NaN, inf, huge or beyond float32
        content = npy_bytes(draw(odd_points))
    elif kind == "shape":
        shape = draw(st.sampled_from([(), (0,), (2,), (0, 2), (1, 2), (64, 3), (64, 1), (2, 2, 2), (2, 64)]))
        content = npy_bytes(np.ones(shape))
    elif kind == "dtype":
        dtype = draw(
            st.sampled_from(
                ["complex64", "U3", "S3", "datetime64[s]", "timedelta64[s]", "V8", "f2,f2", "float16", "int8"]
            )
        )
        content = npy_bytes(np.zeros((64, 2), dtype) if dtype in ("V8", "f2,f2") else np.ones((64, 2)).astype(dtype))
    elif kind == "pickle":  # a bare pickle stream named .npy
        content = pickle.dumps(PlantedPayload())
    elif kind == "object-array":  # a real .npy whose payload is pickled objects
        content = npy_bytes(np.array([[PlantedPayload(), 1.0]] * 2, dtype=object), allow_pickle=True)
    elif kind == "truncated":
        whole = npy_bytes(draw(good_points))
        content = whole[: draw(st.integers(0, len(whole) - 1))]
    else:
        content = draw(st.binary(max_size=600))
    return draw(st.sampled_from([".npy", ".npy", ".npy", ".NPY", ".csv"])), content


@st.composite
def csv_file(draw) -> tuple[str, bytes]:
    rows = [[repr(float(v)) for v in row] for row in draw(good_points)]
    for _ in range(draw(st.integers(0, 3))):
        i, j = draw(st.integers(0, 63)), draw(st.integers(0, 1))
        damage = draw(st.sampled_from(["token", "drop", "extra", "header", "blank", "nan", "inf", "huge", "bom"]))
        if damage == "token":
            rows[i][j] = draw(st.one_of(words, st.sampled_from(["", "nan", "inf", "1e400", "1e39", "1e30", "0x1p3"])))
        elif damage == "drop":
            del rows[i][j]
        elif damage == "extra":
            rows[i].append(draw(words))
        elif damage == "header":
            rows.insert(0, ["x", "y"])
        elif damage == "blank":
            rows.insert(i, [])
        elif damage in ("nan", "inf", "huge"):
            rows[i][j] = {"nan": "nan", "inf": "-inf", "huge": "1e30"}[damage]
        else:
            rows[0][0] = "\ufeff" + rows[0][0]
    delimiter = draw(st.sampled_from([",", ",", ",", ";", "\t", " "]))
    lines = [delimiter.join(r) + "\n" for r in rows]
    text = "".join(lines[: draw(st.sampled_from([0, 1, len(lines)]))])  # empty, one point, all
    content = text.encode(draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16"])))
    if draw(st.integers(0, 9)) == 0:
        content = draw(st.binary(max_size=600))
    return draw(st.sampled_from([".csv", ".csv", ".csv", ".txt", "", ".npy"])), content


file_stem = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="/\\"), min_size=1, max_size=20
).filter(lambda s: s not in (".", ".."))


def test_data_files(sandbox):
    @fuzz_settings("data-files")
    @given(stem=file_stem, file=st.one_of(npy_file(), csv_file()), as_folder=st.integers(0, 14))
    @example(stem="huge", file=(".npy", npy_bytes(np.full((64, 2), 1e30))), as_folder=1)  # trains, loss inf: exit 1
    @example(stem="0", file=(".npy", b""), as_folder=1)  # np.load's EOFError escaped as a traceback
    @example(stem="0", file=(".csv", b""), as_folder=1)  # np.loadtxt's UserWarning: a second stderr line
    @example(stem="0", file=(".npy", npy_bytes(np.ones((64, 2), np.complex64))), as_folder=1)  # ComplexWarning,
    @example(stem="0", file=(".npy", npy_bytes(np.ones((64, 2), "datetime64[s]"))), as_folder=1)  # or trained on dates
    @example(stem="0", file=(".csv", b"1e39,0\n0,1\n"), as_folder=1)  # inf once float32: trained on it
    def case(stem, file, as_folder):
        suffix, content = file
        with sandbox.case("data-files") as folder:
            inputs = folder / "inputs"
            inputs.mkdir()
            path = inputs / (stem + suffix)
            if as_folder == 0:  # a folder named like a data file
                path.mkdir()
            else:
                path.write_bytes(content)
            before = snapshot(inputs)
            argv = [*BUDGET, "--out-dir", str(folder / "run"), "--dataset", str(path)]
            outcome = run_in_process(train_main, argv, folder / "cwd")
            check_report(outcome, expect_failure=False, argv=argv)
            record("data-files", outcome)
            assert not (folder / "cwd" / MARKER).exists(), "a data file was unpickled"
            assert not any((folder / "cwd").iterdir())
            assert snapshot(inputs) == before
            if outcome.code == 0:
                assert (folder / "run" / "samples.npy").is_file() and (folder / "run" / "summary.json").is_file()

    case()
    assert_tried("data-files")


# ---- 4. damaged run folders for --resume and for sampling -------------------------------------


def rewrite_manifests(run: Path) -> None:
    """Make every checkpoint's manifest match its files again: the damage then looks as if it had
    been written that way, and reaches orbax's readers instead of the manifest check."""
    for checkpoint in (run / "checkpoints").iterdir():
        if checkpoint.is_dir() and checkpoint.name.isdigit():
            hashes = {
                str(p.relative_to(checkpoint)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(checkpoint.rglob("*"))
                if p.is_file()
            }
            (run / "checkpoint_manifests").mkdir(exist_ok=True)
            (run / "checkpoint_manifests" / f"{checkpoint.name}.json").write_text(json.dumps(hashes))


def read_json(where, key: Optional[str] = None) -> dict:
    """The JSON object in a file (or under `key` of a dict); {} when an earlier damage left none."""
    try:
        value = where.get(key) if key else json.loads(where.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | words,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(words, inner, max_size=3),
    max_leaves=6,
)


@dataclasses.dataclass(frozen=True)
class Damage:
    """One way to damage a run folder, applied by calling it on the folder. `pick` chooses the file
    (among the checkpoints' files, sorted), a byte, a length or a variant; `blob` is written bytes;
    `value` a JSON value; `field` a config or record key; `other` another model's option."""

    kind: str
    pick: int = 0
    blob: bytes = b""
    value: object = None
    field: str = "num_steps"
    other: tuple = ("num_steps", 50)

    def __call__(self, run: Path) -> None:
        kind, pick, value, field, other = self.kind, self.pick, self.value, self.field, self.other
        candidates = files(run)
        victim = candidates[pick % len(candidates)] if candidates else run / "config.json"
        if kind == "bytes":
            victim.write_bytes(self.blob)
        elif kind == "flip":
            content = bytearray(victim.read_bytes()) or bytearray(b"\0")
            content[pick % len(content)] ^= 1 + pick % 255
            victim.write_bytes(bytes(content))
        elif kind == "truncate":
            victim.write_bytes(victim.read_bytes()[: pick % max(1, victim.stat().st_size)])
        elif kind == "delete-file":
            victim.unlink(missing_ok=True)
        elif kind == "delete-folder":
            folders = sorted(p for p in (run / "checkpoints").rglob("*") if p.is_dir())
            if folders:
                shutil.rmtree(folders[pick % len(folders)])
        elif kind in ("record", "record-field", "other-model"):
            for path in (p for p in candidates if p.parent.name == "record" and p.name == "metadata"):
                saved = read_json(path)
                if kind == "record":
                    saved = value
                elif kind == "record-field" and field in saved:
                    saved[field] = value
                elif kind == "record-field":
                    saved["config"] = {**read_json(saved, "config"), field: value}
                else:
                    saved["config"] = {**read_json(saved, "config"), other[0]: other[1]}
                path.write_text(json.dumps(saved))
            if kind == "other-model":
                (run / "config.json").write_text(json.dumps({**read_json(run / "config.json"), other[0]: other[1]}))
            if pick % 2:
                rewrite_manifests(run)
        elif kind == "config":
            (run / "config.json").write_bytes(self.blob if pick % 2 else json.dumps(value).encode())
        elif kind == "config-field":
            (run / "config.json").write_text(json.dumps({**read_json(run / "config.json"), field: value}))
        elif kind == "manifest":
            manifests = files(run, "checkpoint_manifests")
            if manifests and pick % 3:
                manifests[pick % len(manifests)].write_bytes(self.blob if pick % 3 == 1 else json.dumps(value).encode())
            elif manifests:
                manifests[pick % len(manifests)].unlink()
        elif kind == "pickle":  # a pickle payload where orbax expects its files, trusted by the manifests
            victim.write_bytes(pickle.dumps(PlantedPayload()))
            rewrite_manifests(run)
        else:
            (run / "metrics.jsonl").write_bytes(self.blob if pick % 2 else (json.dumps(value) + "\n").encode())


def files(run: Path, under: str = "checkpoints") -> list[Path]:
    return sorted(p for p in (run / under).rglob("*") if p.is_file()) if (run / under).is_dir() else []


DAMAGES = (
    "bytes",
    "flip",
    "truncate",
    "delete-file",
    "delete-folder",
    "record",
    "record-field",
    "config",
    "config-field",
    "other-model",
    "manifest",
    "pickle",
    "metrics",
)
damages = st.builds(
    Damage,
    kind=st.sampled_from(DAMAGES),
    pick=st.integers(0, 10**6),
    blob=st.binary(max_size=200),
    value=json_values,
    field=st.sampled_from([f.name for f in dataclasses.fields(Config)] + ["epoch", "wall_s", "config", "data_sha256"]),
    other=st.sampled_from([("num_steps", 50), ("num_steps", 101), ("loss", "hybrid"), ("seeds", 2)]),
)


def test_damaged_run_folders(sandbox):
    @fuzz_settings("run-folders")
    @given(damage=st.lists(damages, min_size=1, max_size=3), sampler=st.booleans())
    @example(damage=[Damage("config", value=[1, 2])], sampler=True)  # config.json: AttributeError as a traceback,
    @example(damage=[Damage("config", pick=1, blob=b"\xff{")], sampler=True)  # UnicodeDecodeError,
    @example(damage=[Damage("config-field", field="num_steps", value=None)], sampler=True)  # TypeError in validate,
    @example(damage=[Damage("config-field", field="num_steps", value=50.0)], sampler=True)  # a float shape in JAX
    @example(damage=[Damage("metrics", pick=1, blob=b"\x80")], sampler=False)  # metrics.jsonl: UnicodeDecodeError,
    @example(damage=[Damage("metrics", pick=1, blob=b"{")], sampler=False)  # JSONDecodeError,
    @example(damage=[Damage("metrics", value=None)], sampler=False)  # TypeError, as tracebacks of --resume
    @example(damage=[Damage("record", pick=1, value=[])], sampler=True)  # a record that orbax reads but is not
    @example(damage=[Damage("record-field", pick=1, field="config", value="x")], sampler=False)  # ours: tracebacks
    @example(damage=[Damage("record-field", pick=1, field="epoch", value=None)], sampler=False)
    @example(damage=[Damage("record-field", pick=1, field="wall_s", value="x")], sampler=False)
    @example(damage=[Damage("bytes"), Damage("bytes", pick=17)], sampler=False)  # orbax's "ERROR:absl:" lines
    def case(damage, sampler):
        with sandbox.case("run-folders") as folder:
            run = folder / "run"
            shutil.copytree(sandbox.earlier, run)
            for apply in damage:
                apply(run)
            contents = tree_contents(run)
            if sampler:
                argv = ["--run", str(run), "--n", "16", "--out", str(folder / "samples.npy")]  # shapes compiled once
                outcome = run_in_process(sample_main, argv, folder / "cwd")
            else:
                argv = [*BUDGET, "--epochs", "3", "--out-dir", str(run), "--resume"]
                outcome = run_in_process(train_main, argv, folder / "cwd")
            check_report(outcome, expect_failure=False, argv=argv)
            record("run-folders", outcome)
            assert not (folder / "cwd" / MARKER).exists(), "a checkpoint file was unpickled"
            assert not any((folder / "cwd").iterdir())
            if sampler:  # sampling never changes the run folder
                assert tree_contents(run) == contents
            elif outcome.code != 0:  # a failed resume loses nothing (a damaged checkpoint is only moved aside)
                assert not contents - tree_contents(run)

    case()
    assert_tried("run-folders")


# ---- 5. through the real command line ----------------------------------------------------------


def test_subprocess_cases(sandbox):
    """A pickled .npy for training and poisoned checkpoints for sampling, in fresh interpreters:
    the real exit status and stderr, absl's, asyncio's and Python's own lines included."""
    with sandbox.case("subprocess") as folder:
        marker = folder / "cwd" / MARKER
        data = folder / "payload.npy"
        data.write_bytes(npy_bytes(np.array([[PlantedPayload(), 1.0]] * 2, dtype=object), allow_pickle=True))
        argv = [*BUDGET, "--out-dir", str(folder / "run"), "--dataset", str(data)]
        outcome = run_subprocess("jax_ddpm.train", argv, folder / "cwd")
        check_report(outcome, expect_failure=True, argv=argv)
        record("subprocess", outcome)
        assert not marker.exists() and not (folder / "run").exists()

        run = folder / "poisoned"
        shutil.copytree(sandbox.earlier, run)
        # Checkpoint 2's tree metadata and checkpoint 1's OCDBT manifest: orbax gives up on the first
        # array it cannot read and closes its event loop; the other reads' callbacks then printed a
        # RuntimeError traceback each (sys.unraisablehook), after the error line.
        (run / "checkpoints" / "2" / "state" / "_METADATA").write_bytes(pickle.dumps(PlantedPayload()))
        (run / "checkpoints" / "1" / "state" / "manifest.ocdbt").write_bytes(pickle.dumps(PlantedPayload()))
        rewrite_manifests(run)
        contents = tree_contents(run)
        argv = ["--run", str(run), "--n", "8"]
        outcome = run_subprocess("jax_ddpm.sample", argv, folder / "cwd")
        check_report(outcome, expect_failure=True, argv=argv)
        record("subprocess", outcome)
        assert not marker.exists() and tree_contents(run) == contents

        # Every array file of the newest checkpoint garbled (then of both): orbax fails on one read
        # with others in flight, and left each to report itself on stderr as it was freed (asyncio's
        # "exception was never retrieved", a traceback per closed read, "never awaited"; hundreds
        # of lines, after the line that says what happened). Only our lines may reach stderr.
        for garbled, expect_failure in ((["2"], False), (["2", "1"], True)):
            run = folder / f"garbled-{len(garbled)}"
            shutil.copytree(sandbox.earlier, run)
            for checkpoint in garbled:
                for array_file in (run / "checkpoints" / checkpoint / "state").glob("ocdbt.process_*/d/*"):
                    array_file.write_bytes(pickle.dumps(PlantedPayload()))
            rewrite_manifests(run)
            argv = ["--run", str(run), "--n", "8", "--out", str(folder / f"samples-{len(garbled)}.npy")]
            outcome = run_subprocess("jax_ddpm.sample", argv, folder / "cwd")
            check_report(outcome, expect_failure=expect_failure, argv=argv)
            record("subprocess", outcome)
            lines = [line for line in outcome.err.splitlines() if line.strip()]
            assert outcome.code == (1 if expect_failure else 0), outcome.err
            assert len(lines) == len(garbled) + expect_failure, outcome.err  # a warning per checkpoint, the error
            assert all(line.startswith(("warning: checkpoint", "error: ")) for line in lines), outcome.err
            assert not marker.exists()
    COUNTS["subprocess"]["tried"] += 1  # four cases in one sandbox case
    assert COUNTS["subprocess"]["tried"] >= EXAMPLES["subprocess"]


@pytest.mark.skipif(SCALE == 1, reason="long run only (JAX_DDPM_FUZZ_SCALE > 1): a fresh interpreter per case")
def test_subprocess_damaged_run_folders(sandbox):
    @settings(
        max_examples=max(1, 2 * (SCALE - 1)),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(damage=st.lists(damages, min_size=1, max_size=3), sampler=st.booleans())
    def case(damage, sampler):
        with sandbox.case("subprocess") as folder:
            run = folder / "run"
            shutil.copytree(sandbox.earlier, run)
            for apply in damage:
                apply(run)
            if sampler:
                argv = ["--run", str(run), "--n", "16", "--out", str(folder / "samples.npy")]
            else:
                argv = [*BUDGET, "--epochs", "3", "--out-dir", str(run), "--resume"]
            outcome = run_subprocess("jax_ddpm.sample" if sampler else "jax_ddpm.train", argv, folder / "cwd")
            check_report(outcome, expect_failure=False, argv=argv)
            record("subprocess", outcome)
            assert not (folder / "cwd" / MARKER).exists()

    case()


@pytest.mark.skipif(SCALE == 1, reason="long run only (JAX_DDPM_FUZZ_SCALE > 1): a fresh interpreter per case")
def test_subprocess_train_arguments(sandbox):
    @settings(
        max_examples=max(1, 3 * (SCALE - 1)),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        mutations=st.lists(bad_train_tokens().filter(lambda m: not any("\x00" in t for t in m)), min_size=1, max_size=3)
    )
    def case(mutations):
        with sandbox.case("subprocess") as folder:
            tokens = sandbox.tokens(mutations)
            argv = [*BUDGET, "--out-dir", str(folder / "run"), *tokens]
            outcome = run_subprocess("jax_ddpm.train", argv, folder / "cwd")
            check_report(outcome, expect_failure=True, argv=argv)
            record("subprocess", outcome)

    case()
    assert COUNTS["subprocess"]["tried"] >= 0.8 * 5 * (SCALE - 1)  # with the damaged run folders' cases
