"""Classifier-free guidance on trained models: `python -m benchmarks.guidance`.

Writes benchmarks/results/guidance.md and guidance.json (issue 19). For each dataset (eight_gaussians,
moons) and method (diffusion: the tutorial's settings and sampler; flow: `--method flow` with
benchmarks.methods' FLOW_RECIPE, Euler with T steps), one `--conditional` model is trained (cond_drop 0.1,
the tutorial's 1000 epochs on 10,000 points), then sampled at each w of WS, n points of every class (the
same x_T at every w: one compiled program, w a value). Two measures per class c:

- the rate: the share of class c's samples that a nearest-neighbour classifier labels c. The classifier
  (scikit-learn's KNeighborsClassifier, K_NEIGHBOURS) is fit on a held-out labelled draw (draw 2 of
  `data.held_out_points`' rule, never trained on); its rate on another held-out draw of the true class
  (draw 1) is what a perfect model would score ("true data" below);
- sliced W2 of class c's samples against n held-out points of class c (draw 0), beside its floor: n points
  of class c from an independent draw against the same reference (as `metrics.calibrate`'s floor is two
  draws of the data of the same size), averaged over FLOOR_DRAWS draws (1, 3, 4, ...): at n = 2,000 one
  draw's floor on moons ranged from 0.012 to 0.023 between draws, so a single one is too noisy to divide by.

`--quick` runs a tiny version (a smoke check for CI, not a measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.methods import FLOW_RECIPE
from ddpm_harness import metrics
from ddpm_harness.config import Config
from ddpm_harness.data import HELD_OUT_SEED_OFFSET, N_CLASSES, make_labelled_dataset
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.runner.draw import Guide, sample_points
from jax_ddpm.runner.loop import train_models

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("eight_gaussians", "moons")
METHODS = ("diffusion", "flow")
WS = (0.0, 1.0, 3.0)
K_NEIGHBOURS = 5
FLOOR_DRAWS = 5
HELD_OUT_POINTS = 40_000  # each held-out draw: at least n points of every class (eight_gaussians: ~5,000 a class)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big a measurement is: the full one, or --quick's smoke check."""

    epochs: int = 1000
    n_points: int = 10_000
    n: int = 2000  # samples per class and w; the per-class reference and floor have as many points


QUICK = Sizes(epochs=3, n_points=512, n=64)


def method_config(method: str, dataset: str, sizes: Sizes) -> Config:
    """The conditional run of a method: the tutorial's defaults (diffusion) or flow with FLOW_RECIPE."""
    base = Config(dataset=dataset, conditional=True, epochs=sizes.epochs, n_points=sizes.n_points)
    if method == "flow":
        return dataclasses.replace(base, method="flow", sampler="euler", **FLOW_RECIPE)
    return base


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """A dataset's held-out labelled draws: the classifier's training data (draw 2) and, per class, n
    reference points (draw 0) and n points of each of FLOOR_DRAWS independent draws (1, 3, 4, ...) for
    the floor and the true data's rate."""

    classifier: object  # a fitted sklearn KNeighborsClassifier
    reference: list  # per class: (n, 2)
    others: list  # per floor draw, per class: (n, 2)


def held_out(config: Config, n: int) -> HeldOut:
    from sklearn.neighbors import KNeighborsClassifier

    def draw(k: int):
        seed = config.seed + HELD_OUT_SEED_OFFSET + k
        return make_labelled_dataset(config.dataset, max(HELD_OUT_POINTS, 20 * n), config.data_noise, seed)

    def per_class(k: int) -> list:
        points, labels = draw(k)
        return [points[labels == c][:n] for c in range(N_CLASSES[config.dataset])]

    others = [per_class(k) for k in (1, *range(3, FLOOR_DRAWS + 2))]
    return HeldOut(KNeighborsClassifier(K_NEIGHBOURS).fit(*draw(2)), per_class(0), others)


def true_data(data: HeldOut) -> list[dict]:
    """Per class: the true class's rate (draw 1) and its floor, the mean over the floor draws (and their std)."""
    out = []
    for c in range(len(data.reference)):
        floors = [metrics.sliced_w2(other[c], data.reference[c]) for other in data.others]
        rate = class_scores(data.others[0][c], c, data)["rate"]
        out.append(dict(rate=rate, sliced_w2=float(np.mean(floors)), floor_std=float(np.std(floors, ddof=1))))
    return out


def class_scores(points: np.ndarray, c: int, data: HeldOut) -> dict:
    """The rate at which class c's points (n, 2) are labelled c, and their sliced W2 to class c's reference."""
    finite = np.isfinite(points).all()
    rate = float(np.mean(data.classifier.predict(points) == c)) if finite else np.nan
    return dict(rate=rate, sliced_w2=metrics.sliced_w2(points, data.reference[c]) if finite else np.nan)


def guided_samples(params, config: Config, n: int, w: float) -> np.ndarray:
    """n samples of every class at guidance w, class by class: (n_classes, n, 2), from the run's sampling key."""
    n_classes = N_CLASSES[config.dataset]
    labels = np.repeat(np.arange(n_classes, dtype=np.int32), n)
    guide = Guide(labels=jax.numpy.asarray(labels), w=jax.numpy.asarray(w, jax.numpy.float32))
    points, _ = sample_points(params, run_schedule(config), config, n * n_classes, guide=guide)
    return points.reshape(n_classes, n, 2)


def run_one(method: str, dataset: str, sizes: Sizes, log) -> dict:
    """Train a method's conditional model on a dataset, then score every class at every w."""
    config = method_config(method, dataset, sizes)
    start = time.perf_counter()
    params = jax.block_until_ready(train_models(config)[0])
    train_s = time.perf_counter() - start
    data = held_out(config, sizes.n)
    true = true_data(data)
    rows = []
    for w in WS:
        samples = guided_samples(params, config, sizes.n, w)
        per_class = [class_scores(samples[c], c, data) for c in range(len(samples))]
        rows.append(dict(w=w, classes=per_class))
        rates = [r["rate"] for r in per_class]
        log(f"{dataset} {method} w = {w:g}: rate {np.mean(rates):.2%} (worst class {np.min(rates):.2%})")
    return dict(method=method, dataset=dataset, train_s=train_s, true_data=true, rows=rows)


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def report(results: list[dict], sizes: Sizes, seconds: float) -> str:
    """guidance.md: per dataset and method, the rate and the per-class sliced W2 against its floor at each w."""
    lines = [
        "# Classifier-free guidance on trained models",
        "",
        f"`python -m benchmarks.guidance`: one `--conditional` model per dataset and method ({sizes.epochs} epochs "
        f"on {sizes.n_points:,} points, cond_drop 0.1, one seed), {sizes.n:,} samples of each class at each w "
        f"(the same x_T at every w). Rate: the share of class c's samples that a {K_NEIGHBOURS}-nearest-neighbour "
        "classifier fit on held-out labelled data labels c. Sliced W2: class c's samples against as many held-out "
        "points of class c; floor: as many points of an independent draw of class c against the same reference, "
        f"the mean over {FLOOR_DRAWS} draws (the std of one draw's floor beside it: at this n a floor is noisy, "
        "and a model at its floor may score a little below the mean). Means over the classes, the worst class in "
        f"brackets. {seconds:.0f} s in all.",
        "",
        "diffusion: the tutorial's settings (sigmoid T = 100, its sampler, raw parameters); flow: `--method flow`, "
        "Euler with 100 steps, normalized data, EMA 0.9995 (benchmarks.methods' recipe).",
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        lines += ["", f"## {dataset}", ""]
        lines += ["| method | w | rate (worst class) | sliced W2 | floor | x floor (worst class) |", "|---" * 6 + "|"]
        for r in (r for r in results if r["dataset"] == dataset):
            floor = [t["sliced_w2"] for t in r["true_data"]]
            true_rate, spread = _mean(r["true_data"], "rate"), _mean(r["true_data"], "floor_std")
            lines.append(
                f"| {r['method']} | true data | {true_rate:.2%} | | {np.mean(floor):.4f} (std {spread:.4f}) | |"
            )
            for row in r["rows"]:
                rates = [c["rate"] for c in row["classes"]]
                w2 = [c["sliced_w2"] for c in row["classes"]]
                x_floor = np.asarray(w2) / np.asarray(floor)
                lines.append(
                    f"| {r['method']} | {row['w']:g} | {np.mean(rates):.2%} ({np.min(rates):.2%}) | {np.mean(w2):.4f} "
                    f"| {np.mean(floor):.4f} | {np.mean(x_floor):.2f} ({np.max(x_floor):.2f}) |"
                )
    lines += [
        "",
        "Training time (compile included): "
        + ", ".join(f"{r['dataset']} {r['method']} {r['train_s']:.0f} s" for r in results)
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check, not a measurement")
    args = parser.parse_args(argv)
    datasets, methods = args.datasets.split(","), args.methods.split(",")
    if not set(datasets) <= set(DATASETS) or not set(methods) <= set(METHODS):
        print(f"error: --datasets among {', '.join(DATASETS)}, --methods among {', '.join(METHODS)}", file=sys.stderr)
        return 2
    sizes, name = (QUICK, "guidance_quick") if args.quick else (Sizes(), "guidance")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)  # noqa: E731
    results = []
    for dataset in datasets:
        for method in methods:
            results.append(run_one(method, dataset, sizes, log))
            (args.out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")  # a stopped run keeps these
    (args.out / f"{name}.md").write_text(report(results, sizes, time.perf_counter() - start))
    log(f"-> {args.out / name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
