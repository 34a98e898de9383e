"""`python -m benchmarks.guidance --quick` writes a well-formed report: both methods on moons, a rate and a
per-class sliced W2 for every class at every w, the true data's rate and floor (about 15 s on 2 cores)."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import guidance


def test_quick_report(tmp_path):
    assert guidance.main(["--quick", "--datasets", "moons", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "guidance_quick.json").read_text())
    assert [(r["dataset"], r["method"]) for r in results] == [("moons", "diffusion"), ("moons", "flow")]
    for r in results:
        assert [row["w"] for row in r["rows"]] == list(guidance.WS)
        assert all(len(row["classes"]) == 2 for row in r["rows"])
        assert all(0 <= c["rate"] <= 1 and np.isfinite(c["sliced_w2"]) for row in r["rows"] for c in row["classes"])
        assert all(t["rate"] > 0.95 for t in r["true_data"])  # the classifier knows the true classes
    text = (tmp_path / "guidance_quick.md").read_text()
    assert "## moons" in text and "| flow | 3 |" in text and "true data" in text


def test_bad_options_are_one_line(tmp_path, capsys):
    assert guidance.main(["--quick", "--datasets", "swiss_roll", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
