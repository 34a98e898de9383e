"""`python -m benchmarks.methods --quick` writes a well-formed report (behind JAX_DDPM_BENCH_METHODS=1: it trains
four methods, about two minutes on 2 cores); its flow (ot) and ddpm (preset) are the two presets."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from benchmarks import methods
from ddpm_harness.config import SAMPLING_FIELDS, resolve_preset


def test_the_compared_methods_train_what_the_presets_train():
    """The report's figures are the presets' own: flow (ot) trains `--preset recommended`, ddpm (preset)
    `--preset recommended-diffusion` (the sampling options vary with the NFE)."""
    base = methods.Config(epochs=7, seeds=3)
    compared = methods.methods(base)
    for label, preset in (("flow (ot)", "recommended"), ("ddpm (preset)", "recommended-diffusion")):
        own = resolve_preset(dataclasses.replace(base, preset=preset))
        training = {f.name for f in dataclasses.fields(own)} - set(SAMPLING_FIELDS) - {"preset"}
        assert {k: getattr(compared[label], k) for k in training} == {k: getattr(own, k) for k in training}, label


@pytest.mark.skipif(
    os.environ.get("JAX_DDPM_BENCH_METHODS") != "1", reason="set JAX_DDPM_BENCH_METHODS=1 (about two minutes)"
)
def test_quick_report(tmp_path):
    assert methods.main(["--quick", "--seeds", "2", "--datasets", "moons", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "methods_quick.json").read_text())
    assert [r["method"] for r in results] == list(methods.methods(methods.Config()))
    assert all(r["nll"] is not None and r["rows"] for r in results)
    text = (tmp_path / "methods_quick.md").read_text()
    assert "## moons" in text and "flow (ot)" in text
