"""Print the measured parity errors per layer as a markdown table: `python -m parity_tests.error_table`.

Same comparisons as the tests (parity_tests.layers), no tolerances: what each layer achieves.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import torch

from parity_tests import layers
from parity_tests.compare import PRECISIONS, Errors, Pairs, Precision, worst


def _select(fn, *prefixes):
    """fn's pairs whose names start with one of the prefixes (drops the extra return values)."""

    def select(p: Precision) -> Pairs:
        pairs = fn(p)
        pairs = pairs[0] if isinstance(pairs, tuple) else pairs
        return {k: v for k, v in pairs.items() if k.startswith(prefixes)}

    return select


def _all_schedules(p: Precision) -> Pairs:
    return {
        f"{case} {name}": pair
        for case in layers.SCHEDULE_CASES
        for name, pair in layers.schedule_pairs(p, *case).items()
    }


# Each run serves several rows.
_step = functools.cache(layers.optimizer_step_pairs)
_training = functools.cache(layers.training_pairs)
ROWS = [
    ("schedules: 4 kinds x 3 (T, start, end), all 11 arrays", _all_schedules),
    ("q_sample", layers.q_sample_pairs),
    ("posterior mean and log-variance", layers.posterior_pairs),
    ("model forward, every t (2 outputs)", layers.forward_pairs),
    ("model forward, every t (4 outputs)", functools.partial(layers.forward_pairs, n_outputs=4)),
    ("noise-estimation loss", layers.noise_loss_pairs),
    ("gradients, all 11 parameters", layers.gradient_pairs),
    ("clipped gradients (torch divides by norm + 1e-6)", _select(lambda p: layers.clip_pairs(p, 1.0), "")),
    ("one clip + Adam step, clipped: params and EMA", _select(lambda p: _step(p, 1.0), "params.", "ema.")),
    ("one clip + Adam step, clipped: Adam moments", _select(lambda p: _step(p, 1.0), "adam_")),
    ("one Adam step, unclipped: params, EMA, moments", _select(lambda p: _step(p, 1000.0), "params.", "ema.", "adam_")),
    ("EMA update", layers.ema_pairs),
    ("variational loss and terms (4 outputs, t = 0 included)", layers.variational_pairs),
    ("p_sample at t = 99, 50, 0", layers.p_sample_pairs),
    ("100-step chain, all states, 500 points", layers.chain_pairs),
    ("50 training steps, clip 1.0: losses", _select(lambda p: _training(p, 1.0), "loss")),
    ("50 training steps, clip 1.0: params and EMA", _select(lambda p: _training(p, 1.0), "params.", "ema.")),
    ("50 training steps, clip 1.0: Adam moments", _select(lambda p: _training(p, 1.0), "adam_")),
    ("50 training steps, unclipped: losses, params, EMA, moments", _select(lambda p: _training(p, 1000.0), "")),
]


def measure() -> dict[str, dict[str, Errors]]:
    """row label -> precision name -> worst errors."""
    table: dict[str, dict[str, Errors]] = {label: {} for label, _ in ROWS}
    for p in PRECISIONS:
        with p.context():
            for label, fn in ROWS:
                table[label][p.name] = worst(fn(p))
    return table


def schedule_elementwise() -> dict[str, float]:
    """The largest element-wise relative error over the schedule arrays, per precision."""
    out = {}
    for p in PRECISIONS:
        with p.context():
            rel = 0.0
            for out_ref, out_ans in _all_schedules(p).values():
                nonzero = out_ref != 0
                diff = np.abs(out_ans[nonzero].astype(np.float64) - out_ref[nonzero])
                rel = max(rel, float(np.max(diff / np.abs(out_ref[nonzero]), initial=0.0)))
            out[p.name] = rel
    return out


def markdown(table: dict[str, dict[str, Errors]]) -> str:
    names = [p.name for p in PRECISIONS]
    lines = [
        "| layer | " + " | ".join(f"max abs {n} | max rel {n}" for n in names) + " |",
        "|---|" + "---:|" * (2 * len(names)),
    ]
    for label, by_precision in table.items():
        cells = [f"{by_precision[n].max_abs:.1e} | {by_precision[n].max_rel:.1e}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    print(markdown(measure()))
    elementwise = schedule_elementwise()
    print(
        f"\nRelative errors are normwise (max |ans - ref| / max |ref| per array). Element-wise, the "
        f"schedule arrays agree to {elementwise['float32']:.1e} (float32) and {elementwise['float64']:.1e} "
        f"(float64).\nMeasured with jax {jax.__version__}, torch {torch.__version__}, on {jax.devices()[0].platform}."
    )


if __name__ == "__main__":
    main()
