"""`python -m jax_ddpm.convert export|import`: safetensors files both ways, without torch.

Round trips are bit-exact, an imported run samples exactly as the run it came from, and every bad
file is one `error:` line with a non-zero exit, a pickle refused without being unpickled. What
PyTorch makes of the files is in test_convert_safetensors_torch.py.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from ddpm_harness.safetensors_io import load_state_dict, save_state_dict
from jax_ddpm.convert import main as convert_main
from jax_ddpm.sample import main as sample_main
from jax_ddpm.train import main as train_main
from tests.conftest import tiny_argv
from tests.test_bad_input import one_error_line


def export(run_dir: Path, out: Path, *extra: str) -> Path:
    assert convert_main(["export", "--run", str(run_dir), "--out", str(out), *extra]) == 0
    return out


def import_(model_file: Path, out_dir: Path, *extra: str) -> Path:
    assert convert_main(["import", str(model_file), "--out-dir", str(out_dir), *extra]) == 0
    return out_dir


def tensors(path: Path) -> dict[str, np.ndarray]:
    with safe_open(str(path), framework="numpy") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def assert_same_tensors(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype == np.float32 and a[name].shape == b[name].shape, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # bitwise: no tolerance


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """The tiny run's raw and EMA parameters as safetensors files."""
    folder = tmp_path_factory.mktemp("exported")
    return {params: export(tiny_run, folder / f"{params}.safetensors", "--params", params) for params in ("raw", "ema")}


def test_export_writes_the_tutorials_state_dict_and_metadata(exported):
    state_dict = tensors(exported["raw"])
    assert sorted(state_dict) == sorted(
        [f"lin{i}.{part}" for i in (1, 2, 3) for part in ("lin.weight", "lin.bias", "embed.weight")]
        + ["lin4.weight", "lin4.bias"]
    )
    assert state_dict["lin1.lin.weight"].shape == (128, 2) and state_dict["lin4.weight"].shape == (2, 128)
    assert state_dict["lin2.embed.weight"].shape == (100, 128)
    _, metadata = load_state_dict(exported["raw"])
    assert {
        k: metadata[k]
        for k in (
            "n_steps",
            "n_outputs",
            "schedule",
            "num_steps",
            "beta_start",
            "beta_end",
            "loss",
            "params",
            "framework",
        )
    } == dict(
        n_steps="100",
        n_outputs="2",
        schedule="sigmoid",
        num_steps="100",
        beta_start="1e-05",
        beta_end="0.005",
        loss="noise",
        params="raw",
        framework="jax",
    )
    assert json.loads(metadata["config"])["n_points"] == 256
    assert load_state_dict(exported["ema"])[1]["params"] == "ema"
    assert not np.array_equal(tensors(exported["ema"])["lin4.bias"], state_dict["lin4.bias"])


@pytest.mark.parametrize("params", ["raw", "ema"])
def test_export_import_export_is_bit_exact(exported, tmp_path, params):
    run_dir = import_(exported[params], tmp_path / "imported")
    # One file is one parameter set: the imported run holds it as both its raw and its EMA parameters.
    for again in ("raw", "ema"):
        out = export(run_dir, tmp_path / f"again_{again}.safetensors", "--params", again)
        assert_same_tensors(tensors(out), tensors(exported[params]))
        metadata = load_state_dict(out)[1]
        for key in ("n_steps", "n_outputs", "schedule", "num_steps", "beta_start", "beta_end", "loss"):
            assert metadata[key] == load_state_dict(exported[params])[1][key], key


def test_imported_run_samples_exactly_as_the_run_it_came_from(tiny_run, exported, tmp_path):
    run_dir = import_(exported["raw"], tmp_path / "imported")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["imported_framework"] == "jax" and config["imported_params"] == "raw"
    out = tmp_path / "samples.npy"
    assert sample_main(["--run", str(run_dir), "--n", "128", "--out", str(out)]) == 0
    # The same parameters, schedule and sampling key (the seed travels in the metadata's config).
    np.testing.assert_array_equal(np.load(out), np.load(tiny_run / "samples.npy"))


def test_one_model_of_a_multi_seed_run(tmp_path):
    run_dir = tmp_path / "seeds"
    assert train_main(tiny_argv(run_dir, "--seeds", "2", "--epochs", "10", "--no-plots")) == 0
    model_file = export(run_dir, tmp_path / "seed1.safetensors", "--seed-index", "1")
    assert json.loads(load_state_dict(model_file)[1]["config"])["seed"] == 1
    out = tmp_path / "samples.npy"
    assert sample_main(["--run", str(import_(model_file, tmp_path / "imported")), "--n", "128", "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), np.load(run_dir / "samples.npy")[1])


def test_schedule_options_override_the_metadata(exported, tmp_path):
    run_dir = import_(
        exported["raw"], tmp_path / "linear", "--schedule", "linear", "--beta-start", "1e-4", "--beta-end", "0.02"
    )
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["schedule"], config["num_steps"], config["beta_start"], config["beta_end"]) == (
        "linear",
        100,
        1e-4,
        0.02,
    )
    assert sample_main(["--run", str(run_dir), "--n", "64", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.isfinite(np.load(tmp_path / "s.npy")).all()


def test_a_file_without_metadata_gets_the_tutorials_defaults(exported, tmp_path):
    bare = tmp_path / "bare.safetensors"
    save_state_dict(bare, tensors(exported["raw"]), {})  # as safetensors.torch.save_file(model.state_dict(), ...)
    config = json.loads((import_(bare, tmp_path / "run") / "config.json").read_text())
    assert (config["schedule"], config["num_steps"], config["beta_start"], config["beta_end"], config["loss"]) == (
        "sigmoid",
        100,
        1e-5,
        5e-3,
        "noise",
    )
    four = tmp_path / "four.safetensors"
    state_dict = tensors(exported["raw"])
    state_dict["lin4.weight"] = np.zeros((4, 128), np.float32)
    state_dict["lin4.bias"] = np.zeros(4, np.float32)
    save_state_dict(four, state_dict, {})
    config = json.loads((import_(four, tmp_path / "four", "--loss", "hybrid") / "config.json").read_text())
    assert config["loss"] == "hybrid"


# ---- bad input: one line, non-zero exit, nothing written -----------------------------------------


def edited(exported: Path, folder: Path, edit) -> Path:
    """A copy of the exported state dict with `edit(state_dict)` applied."""
    state_dict, metadata = load_state_dict(exported)
    edit(state_dict)
    path = folder / "edited.safetensors"
    save_state_dict(path, state_dict, metadata)
    return path


def rename_key(sd):
    sd["lin2.lin.b"] = sd.pop("lin2.lin.bias")


def wrong_shape(sd):
    sd["lin4.weight"] = sd["lin4.weight"][:, :64].copy()


def wrong_dtype(sd):
    sd["lin3.embed.weight"] = sd["lin3.embed.weight"].astype(np.float64)


def half_dtype(sd):
    sd["lin1.lin.bias"] = sd["lin1.lin.bias"].astype(np.float16)


BAD_FILES = [
    (
        "wrong key",
        lambda e, f: edited(e, f, rename_key),
        1,
        "does not match ConditionalModel: missing ['lin2.lin.bias'], unexpected ['lin2.lin.b']",
    ),
    ("wrong shape", lambda e, f: edited(e, f, wrong_shape), 1, "lin4.weight has shape (2, 64), expected (2, 128)"),
    ("float64", lambda e, f: edited(e, f, wrong_dtype), 1, "tensor lin3.embed.weight has dtype F64, expected F32"),
    ("float16", lambda e, f: edited(e, f, half_dtype), 1, "tensor lin1.lin.bias has dtype F16, expected F32"),
    (
        "truncated",
        lambda e, f: write(f / "cut.safetensors", e.read_bytes()[:-100]),
        1,
        "is not a safetensors file (Error while deserializing header: incomplete metadata, file not fully covered)",
    ),
    ("header cut", lambda e, f: write(f / "head.safetensors", e.read_bytes()[:50]), 1, "is not a safetensors file"),
    ("empty", lambda e, f: write(f / "empty.safetensors", b""), 1, "is not a safetensors file"),
    ("text", lambda e, f: write(f / "notes.txt", b"lin1.lin.weight = [[0.1, 0.2]]\n"), 1, "is not a safetensors file"),
    ("npy", lambda e, f: np_file(f / "w.npy"), 1, "is not a safetensors file"),
    ("missing", lambda e, f: f / "nowhere.safetensors", 2, "does not exist or is not a file"),
    ("folder", lambda e, f: f, 2, "does not exist or is not a file"),
]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def np_file(path: Path) -> Path:
    np.save(path, np.zeros((128, 2), np.float32))
    return path


@pytest.mark.parametrize("make, status, message", [case[1:] for case in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_a_bad_file_is_one_line_and_a_non_zero_exit(exported, tmp_path, capsys, make, status, message):
    bad = make(exported["raw"], tmp_path)
    capsys.readouterr()
    assert convert_main(["import", str(bad), "--out-dir", str(tmp_path / "run")]) == status
    line = one_error_line(capsys)
    assert message in line, line
    assert not (tmp_path / "run").exists()


class _Payload:
    """Unpickling this creates the file `marker`: proof that a loader ran the pickle's code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("container", ["pickle", "zip"])
def test_a_pickle_is_refused_without_being_unpickled(tmp_path, capsys, container):
    payload = pickle.dumps(_Payload(tmp_path / "ran"), protocol=2)
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control"), protocol=2))
    assert (tmp_path / "control").exists()  # the payload does run when unpickled
    bad = tmp_path / "model.pt"
    if container == "pickle":
        bad.write_bytes(payload)
    else:  # torch.save's format: a zip archive holding data.pkl
        with zipfile.ZipFile(bad, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    assert convert_main(["import", str(bad), "--out-dir", str(tmp_path / "run")]) == 1
    line = one_error_line(capsys)
    assert "is not a safetensors file" in line and "looks like a torch.save checkpoint" in line, line
    assert not (tmp_path / "ran").exists()


def test_bad_options(tiny_run, exported, tmp_path, capsys):
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"earlier result")
    cases = [
        (["export", "--run", str(tiny_run), "--out", str(taken)], 2, "already exists"),
        (["export", "--run", str(tmp_path), "--out", str(tmp_path / "m.safetensors")], 2, "is not a run folder"),
        (
            ["export", "--run", str(tiny_run), "--out", str(tmp_path / "m.safetensors"), "--params", "best"],
            2,
            "invalid choice 'best'",
        ),
        (
            ["export", "--run", str(tiny_run), "--out", str(tmp_path / "m.safetensors"), "--seed-index", "1"],
            2,
            "--seed-index must lie in 0 .. 0",
        ),
        (["import", str(exported["raw"]), "--out-dir", str(tiny_run)], 2, "already exists"),
        (
            ["import", str(exported["raw"]), "--out-dir", str(tmp_path / "r"), "--num-steps", "50"],
            2,
            "--num-steps 50 does not match the model, whose embeddings have 100 rows",
        ),
        (
            ["import", str(exported["raw"]), "--out-dir", str(tmp_path / "r"), "--loss", "hybrid"],
            2,
            "the model has 2 outputs but the loss is 'hybrid'; give --loss noise",
        ),
        (
            ["import", str(exported["raw"]), "--out-dir", str(tmp_path / "r"), "--beta-end", "2"],
            2,
            "--beta-end must lie in (0, 1), got 2.0",
        ),
        (["import", str(exported["raw"])], 2, "--out-dir"),
        ([], 2, "Expected one of {export, import}"),
    ]
    for argv, status, message in cases:
        assert convert_main(argv) == status, argv
        line = one_error_line(capsys)
        assert message in line, (argv, line)
    assert taken.read_bytes() == b"earlier result" and not (tmp_path / "r").exists()
