"""The quality of samples: every model scored in one program on the device (`scoring.score`, equal to
`ddpm_harness.metrics.evaluate` within float32 round-off), and of a state's raw and EMA parameters
(`evaluate_state`: every seed of both sampled in one program, `draw.sample_models`); the floor and ceiling
they are read against, scored by the same program (`calibration`)."""

from __future__ import annotations

import jax
import numpy as np

from ddpm_harness import metrics
from ddpm_harness.config import Config
from jax_ddpm.runner import scoring
from jax_ddpm.runner.draw import sample_keys, sample_models, split_models, stack_models
from jax_ddpm.schedule import Schedule


def sample_quality(samples: np.ndarray, reference: np.ndarray) -> dict:
    """`metrics.evaluate` of samples (n, 2), or (seeds, n, 2) with a list per metric, all seeds in one
    program (`scoring.score`); a seed whose samples hold NaN or inf (the sampler diverged) gets None
    for every metric."""
    batch = samples.reshape(-1, *samples.shape[-2:])
    finite = np.isfinite(batch).all(axis=(1, 2))
    scores = scoring.score(batch, reference) if finite.any() else {}
    values = {k: [float(x) if ok else None for x, ok in zip(v, finite)] for k, v in scores.items()}
    return {k: v if samples.ndim == 3 else v[0] for k, v in values.items()}


def sample_qualities(samples: dict, reference: np.ndarray) -> dict:
    """`sample_quality` of each entry of {name: samples (n, 2) or (seeds, n, 2)}, scored in one program."""
    batches = {name: s.reshape(-1, *s.shape[-2:]) for name, s in samples.items()}
    quality = sample_quality(np.concatenate(list(batches.values())), reference)
    out, start = {}, 0
    for name, batch in batches.items():
        part = {k: v[start : start + len(batch)] for k, v in quality.items()}
        start += len(batch)
        if all(x is None for v in part.values() for x in v):
            part = {}  # as sample_quality of these samples alone: no metric names without a finite seed
        out[name] = {k: v if samples[name].ndim == 3 else v[0] for k, v in part.items()}
    return out


def calibration(config: Config, n: int) -> dict[str, dict[str, float]]:
    """`metrics.calibration` of the config's data at n points, its floor and ceiling scored as the samples
    are (`scoring.score`: both sets in one program, the same program as two models' samples at this n),
    kept per backend in the calibration cache. On a fresh machine this replaces numpy's two evaluations
    (2.3-2.5 s at n = 10^4 on the 2-core CPU, docs/speed.md) by one program a default run compiles anyway."""
    return metrics.calibration(
        config.dataset,
        n,
        config.data_noise,
        config.seed,
        config.conditional,
        score_sets=scoring.score,
        scorer=f"jax-{jax.default_backend()}",
    )


def evaluate_state(state, schedule: Schedule, config: Config, reference: np.ndarray, epoch: int) -> dict:
    """Sample quality of the raw and the EMA parameters, --n-eval samples each with the config's
    sampler, every seed of both sampled in one program and scored in one: {"raw": {metric: value}, "ema": {...}}."""
    params = stack_models([state.params, state.ema_params], config.seeds)
    keys = sample_keys(config, fold=epoch) * 2
    both, _, _ = sample_models(params, schedule, config, keys, config.n_eval, chunk=config.n_eval)
    return sample_qualities(split_models(both, ("raw", "ema"), config.seeds), reference)


def flat_evaluation(evaluation: dict) -> dict:
    """{"raw": {"mmd2": v}} -> {"raw_mmd2": v}, the metrics.jsonl layout."""
    return {f"{params}_{k}": v for params, values in evaluation.items() for k, v in values.items()}
