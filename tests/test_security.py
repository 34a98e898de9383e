"""Security (issue 11, deliverable 4): data and checkpoints are read without executing code, and a
run writes only inside its run folder.

- No pickle anywhere in the product code (a token scan: no pickle-family module, no
  allow_pickle=True, no torch.load without weights_only=True, no bare eval/exec).
- A pickled `.npy` (a bare pickle stream, or a real .npy whose payload is pickled objects) is
  refused with one line, and its payload never runs (it would write a marker file).
- A pickle payload in place of any file of a checkpoint, even with a manifest that trusts it, is
  refused (or the checkpoint before it used) without running.
- `python -m jax_ddpm.train` writes only inside --out-dir (or runs/<name>-<timestamp> under the
  working directory by default, whatever the data file is called); `python -m jax_ddpm.sample`
  writes only its --out file, by default inside the run folder.
"""

from __future__ import annotations

import io
import pickle
import shutil
import tokenize
from pathlib import Path

import numpy as np
import pytest

from ddpm_harness.data import DataError, load_points
from jax_ddpm.sample import main as sample_main
from tests.conftest import snapshot, train_main
from tests.test_fuzz import BUDGET, EARLIER, check_report, rewrite_manifests, run_in_process, tree_contents

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("ddpm_harness", "jax_ddpm", "torch_reference", "benchmarks")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}


def unsafe_loading(source: str) -> list[str]:
    """What in Python source could run code while reading data: a pickle-family module, an
    allow_pickle=True, a torch.load without weights_only=True, a bare eval() or exec(). Comments
    and strings (docstrings saying "no pickle") are not code and are skipped."""
    skip = {tokenize.COMMENT, tokenize.STRING, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    skip |= {getattr(tokenize, name) for name in ("FSTRING_MIDDLE",) if hasattr(tokenize, name)}  # Python >= 3.12
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in skip]
    found = []
    for i, tok in enumerate(tokens):
        before = tokens[i - 1].string if i else ""
        after = [t.string for t in tokens[i + 1 : i + 3]]
        where = f"line {tok.start[0]}"
        if tok.type == tokenize.NAME and tok.string in PICKLE_MODULES:
            found.append(f"{where}: {tok.string}")
        elif tok.string == "allow_pickle" and after == ["=", "True"]:
            found.append(f"{where}: allow_pickle=True")
        elif tok.string in ("eval", "exec") and before != "." and after[:1] == ["("]:
            found.append(f"{where}: {tok.string}()")
        elif tok.string == "load" and before == "." and tokens[i - 2].string == "torch":
            depth, j, call = 0, i + 1, []
            while j < len(tokens):  # the call's tokens, up to its closing parenthesis
                depth += {"(": 1, ")": -1}.get(tokens[j].string, 0)
                call.append(tokens[j].string)
                if depth == 0:
                    break
                j += 1
            if "weights_only=True" not in "".join(call):
                found.append(f"{where}: torch.load without weights_only=True")
    return found


def test_the_scan_finds_what_it_looks_for():
    """The scan is not vacuous: each unsafe form is found, and words in comments or strings are not."""
    unsafe = (
        "import pickle\nimport cloudpickle as cp\nx = np.load(f, allow_pickle=True)\n"
        "m = torch.load(path)\nm = torch.load(path, map_location='cpu')\neval(text)\n"
    )
    assert len(unsafe_loading(unsafe)) == 6
    safe = (
        '"""No pickle here."""\n# allow_pickle=True is never used\nx = np.load(f, allow_pickle=False)\n'
        "m = torch.load(path, weights_only=True)\nmodel.eval()\ns = 'pickle'\n"
    )
    assert unsafe_loading(safe) == []


def test_no_pickle_in_product_code():
    files = [p for package in PRODUCT for p in sorted((REPO / package).rglob("*.py"))]
    assert len(files) > 30
    found = {str(p.relative_to(REPO)): unsafe_loading(p.read_text()) for p in files}
    assert {k: v for k, v in found.items() if v} == {}


class Payload:
    """Unpickling this object writes `marker`: proof that a file was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def npy_of_objects(marker: Path) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([[Payload(marker), 1.0]] * 4, dtype=object), allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["pickle stream", "npy of objects"])
def test_a_pickled_npy_is_refused_without_unpickling(kind, tmp_path):
    marker = tmp_path / "unpickled.txt"
    data = tmp_path / "points.npy"
    data.write_bytes(pickle.dumps(Payload(marker)) if kind == "pickle stream" else npy_of_objects(marker))
    with pytest.raises(DataError, match="cannot read"):
        load_points(data)
    (tmp_path / "cwd").mkdir()
    argv = [*BUDGET, "--out-dir", str(tmp_path / "run"), "--dataset", str(data)]
    outcome = run_in_process(train_main, argv, tmp_path / "cwd")
    check_report(outcome, expect_failure=True, argv=argv)
    assert outcome.code == 2 and "points.npy" in outcome.err
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """A finished run with checkpoints at epochs 1 and 2 (the fuzz test's earlier run)."""
    root = tmp_path_factory.mktemp("security")
    run = root / "earlier"
    outcome = run_in_process(train_main, [*EARLIER, "--out-dir", str(run)], root)
    assert outcome.code == 0, outcome.err
    return run


def checkpoint_files(run: Path) -> list[str]:
    """The files of checkpoint 2, relative to it: every place orbax reads."""
    newest = run / "checkpoints" / "2"
    return sorted(str(p.relative_to(newest)) for p in newest.rglob("*") if p.is_file())


def test_a_pickle_payload_in_any_checkpoint_file_never_runs(earlier, tmp_path):
    """Each file of the checkpoints in turn replaced by a pickle payload, with manifests rewritten to
    trust it: sampling (and --resume, for the files that describe the rest) refuse the checkpoint in
    one line; nothing runs."""
    names = checkpoint_files(earlier)
    assert len(names) >= 10 and "state/_METADATA" in names and "record/metadata" in names
    for i, name in enumerate(names):
        case = tmp_path / str(i)
        (case / "cwd").mkdir(parents=True)
        run, marker = case / "run", case / "unpickled.txt"
        shutil.copytree(earlier, run)
        for checkpoint in ("1", "2"):
            victim = run / "checkpoints" / checkpoint / name
            if victim.is_file():
                victim.write_bytes(pickle.dumps(Payload(marker)))
        rewrite_manifests(run)
        contents = tree_contents(run)
        calls = [(sample_main, ["--run", str(run), "--n", "16", "--out", str(case / "samples.npy")])]
        if name in ("_CHECKPOINT_METADATA", "record/metadata", "state/_METADATA", "state/manifest.ocdbt"):
            calls.append((train_main, [*BUDGET, "--epochs", "3", "--out-dir", str(run), "--resume"]))
        for main, argv in calls:
            outcome = run_in_process(main, argv, case / "cwd")
            check_report(outcome, expect_failure=False, argv=argv)
            assert not marker.exists(), f"{name} was unpickled"
            if outcome.code != 0:  # nothing lost: a checkpoint that cannot be trusted is only moved aside
                assert not contents - tree_contents(run), name
        assert not any((case / "cwd").iterdir())


def test_a_run_writes_only_inside_its_out_dir(tmp_path):
    (tmp_path / "cwd").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "kept.txt").write_text("an earlier file")
    before = snapshot(tmp_path)
    run = tmp_path / "elsewhere" / "run"
    assert run_in_process(train_main, [*BUDGET, "--out-dir", str(run)], tmp_path / "cwd").code == 0
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("elsewhere/run/")} == before
    assert {"elsewhere/run/config.json", "elsewhere/run/samples.npy", "elsewhere/run/summary.json"} <= set(after)


def test_the_default_run_folder_stays_under_runs_whatever_the_data_file_is_called(tmp_path):
    """Without --out-dir the run goes to runs/<data file's stem>-<timestamp> under the working
    directory; a file named `...npy` (stem `..`) does not lead it out of runs/."""
    data = tmp_path / "data" / "...npy"
    data.parent.mkdir()
    np.save(data, np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    (tmp_path / "cwd").mkdir()
    before = snapshot(tmp_path)
    assert run_in_process(train_main, [*BUDGET, "--dataset", str(data)], tmp_path / "cwd").code == 0
    new = {k for k in snapshot(tmp_path) if k not in before}
    (folder,) = (tmp_path / "cwd" / "runs").iterdir()
    assert folder.name.startswith("..-") and all(k.startswith(f"cwd/runs/{folder.name}/") for k in new)


def test_sampling_writes_its_out_file_only(earlier, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(earlier, run)
    (tmp_path / "cwd").mkdir()
    before = snapshot(tmp_path)
    assert run_in_process(sample_main, ["--run", str(run), "--n", "16"], tmp_path / "cwd").code == 0
    assert set(snapshot(tmp_path)) - set(before) == {"run/samples_raw_16.npy"}  # by default, inside the run
    out = tmp_path / "mine" / "s.npy"
    out.parent.mkdir()
    assert run_in_process(sample_main, ["--run", str(run), "--n", "16", "--out", str(out)], tmp_path / "cwd").code == 0
    assert set(snapshot(tmp_path)) - set(before) == {"run/samples_raw_16.npy", "mine/s.npy"}
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before
