"""`python -m benchmarks.methods --quick` writes a well-formed report (behind JAX_DDPM_BENCH_METHODS=1: it trains
four methods, about two minutes on 2 cores)."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import methods

pytestmark = pytest.mark.skipif(
    os.environ.get("JAX_DDPM_BENCH_METHODS") != "1", reason="set JAX_DDPM_BENCH_METHODS=1 (about two minutes)"
)


def test_quick_report(tmp_path):
    assert methods.main(["--quick", "--seeds", "2", "--datasets", "moons", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "methods_quick.json").read_text())
    assert [r["method"] for r in results] == list(methods.methods(methods.Config()))
    assert all(r["nll"] is not None and r["rows"] for r in results)
    text = (tmp_path / "methods_quick.md").read_text()
    assert "## moons" in text and "flow (ot)" in text
