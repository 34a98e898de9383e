"""`python -m jax_ddpm.evaluate --run runs/<name> [--n N] [--params raw|ema] [--sampler ...]`.

Evaluates a trained run's newest checkpoint three ways and writes them to evaluation_<...>.json in the
run folder (never overwriting one):
1. NLL in bits/dim through the probability-flow ODE (`likelihood.nll_bits_per_dim`, exact divergence)
   on held-out points, with the sampler's prior N(0, I) at t = T-1: the density of the ODE sampler's
   own model (when alpha_bar_{T-1} is far from 0, as in the tutorial's schedule, that prior is not
   the forward process's marginal);
2. the variational bound, the negative ELBO in bits/dim over all T terms (`variance.negative_elbo`, or
   `predictions.negative_elbo` for v and x0 models) on the same points;
3. the sample metrics of n samples with the chosen sampler, beside the floor and ceiling calibrated
   at the same n.
A flow run (--method flow): its NLL through its own ODE from the data at t = 1 to N(0, I) at t = 0
(`likelihood.flow_nll_bits_per_dim`, exact divergence, the exact source density); it has no bound.
A class-conditional run (--conditional): its samples are its own draw (every class in the data's
proportions, unguided), its NLL and bound those of its unconditional model, the null class
(`conditional.class_params_at`: the class model at one class is a tutorial model).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Literal, Optional, Sequence

import jax
import numpy as np

from ddpm_harness.cli import run
from ddpm_harness.config import ConfigError
from ddpm_harness.data import data_transform, held_out_for
from ddpm_harness.runs import METRICS, RunDirError, format_against, format_metric, write_json
from jax_ddpm.model import apply_model
from jax_ddpm.objectives import predictions, variance
from jax_ddpm.objectives.conditional import class_params_at, n_classes_of
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.runner.checkpoint import CheckpointError, IncompatibleCheckpointError, restore_run, run_config
from jax_ddpm.runner.draw import sample_states
from jax_ddpm.runner.evaluation import calibration, sample_quality
from jax_ddpm.runner.finish import sampling_record
from jax_ddpm.sample import RunSampling, sampling_config
from jax_ddpm.samplers import chains, flow, likelihood


@dataclasses.dataclass(frozen=True)
class EvaluateArgs(RunSampling):
    """Evaluate a trained run: NLL through the ODE, the variational bound, sample metrics with their floor."""

    n: Optional[int] = None
    """Samples scored per seed (default: the run's --n-samples), against a held-out draw of n points."""
    n_likelihood: int = 1000
    """Held-out points the NLL and the bound are averaged over."""
    params: Optional[Literal["raw", "ema"]] = None
    """Parameters to evaluate (default: those the run sampled with, --sample-with)."""
    decoder: Literal["gaussian", "discretized"] = "gaussian"
    """Decoder term of the bound at t = 0: a Gaussian density (continuous data) or the tutorial's
    8-bit discretized one."""
    out: Optional[str] = None
    """Output JSON (default: <run>/evaluation_<params>_<sampler>_n<n>.json). Never overwritten."""


def per_seed(params, seeds: int) -> list:
    return [params] if seeds == 1 else [jax.tree_util.tree_map(lambda a, i=i: a[i], params) for i in range(seeds)]


def nll(config, params, schedule, points: np.ndarray) -> dict:
    """NLL in bits/dim through the probability-flow ODE (a flow model's: its own ODE), or why it is unavailable."""
    if config.method == "flow":
        out = likelihood.flow_nll_bits_per_dim(
            flow.grid_model(functools.partial(apply_model, params), config.num_steps),
            np.asarray(points, np.float32),
            rtol=config.ode_rtol,
            atol=config.ode_atol,
        )
        return dict(bits_per_dim=float(np.mean(np.asarray(out.bits_per_dim, np.float64))), nfe=int(out.nfe))
    if config.loss == "variational" or config.prediction == "x0":
        why = (
            "the variational loss's model predicts means, not a vector field"
            if config.loss == "variational"
            else "an x0 model's eps = (x - x0) / sigma is 0 / 0 at the data, where the ODE starts"
        )
        return dict(unavailable=why)
    model_fn = functools.partial(apply_model, params)
    if config.parameterization == "eps_logvar":
        model_fn = lambda x, t, f=model_fn: f(x, t)[..., :2]  # noqa: E731
    out = likelihood.nll_bits_per_dim(
        chains.interpolate_steps(model_fn, config.num_steps),
        schedule,
        np.asarray(points, np.float32),
        prediction=config.prediction,
        rtol=config.ode_rtol,
        atol=config.ode_atol,
    )
    return dict(bits_per_dim=float(np.mean(np.asarray(out.bits_per_dim, np.float64))), nfe=int(out.nfe))


def bound(config, params, schedule, points: np.ndarray, decoder: str, seed: int) -> dict:
    """The negative ELBO in bits/dim and its parts (none for a flow model)."""
    if config.method == "flow":
        return dict(unavailable="a flow model has no diffusion steps, so no variational bound")
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    if config.prediction == "eps":
        return variance.negative_elbo(params, schedule, points, key, config.parameterization, decoder)
    return predictions.negative_elbo(params, schedule, points, key, config.prediction, decoder)


def to_data_units(values: dict, scale: float, keys: tuple[str, ...]) -> dict:
    """bits/dim of model units (x / scale) in data units: -log2 p_x = -log2 p_u + d log2(scale), per dim.
    (The bound's prior and diffusion terms are KL divergences, which a change of units leaves alone.)"""
    return {k: v + np.log2(scale) if k in keys else v for k, v in values.items()}


def likelihoods_in_data_units(config, params_list: list, schedule, points: np.ndarray, decoder: str):
    """(NLLs, bounds): per seed's parameters, the NLL through the ODE and the bound with `decoder` of
    `points` (data units), in bits/dim of the data. With --normalize both are computed in model units
    (points - shift) / scale and moved back with `to_data_units` where they are densities."""
    shift, scale = data_transform(config)
    points = (points - shift) / scale
    nlls = [to_data_units(nll(config, p, schedule, points), scale, ("bits_per_dim",)) for p in params_list]
    density = ("total", "decoder") if decoder == "gaussian" else ()  # a bin's probability has no units
    bounds = [
        to_data_units(bound(config, p, schedule, points, decoder, config.seed + i), scale, density)
        for i, p in enumerate(params_list)
    ]
    return nlls, bounds


def evaluate_run(args: EvaluateArgs) -> dict:
    """Restore, sample, score; write the JSON and print the report. The evaluation as a dict."""
    run_dir = Path(args.run)
    for name in ("n", "n_likelihood"):
        if getattr(args, name) is not None and getattr(args, name) < 2:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 2, got {getattr(args, name)}")
    config = sampling_config(run_config(run_dir), args)  # checked before the checkpoint is read
    which = args.params or config.sample_with
    n = args.n or config.n_samples
    out = Path(args.out) if args.out else run_dir / f"evaluation_{which}_{config.sampler}_n{n}.json"
    if out.exists():
        raise RunDirError(f"{str(out)!r} already exists; choose another --out (files are never overwritten)")
    _, state, record = restore_run(run_dir)
    params = state.ema_params if which == "ema" else state.params
    schedule = run_schedule(config)

    states, nfe = sample_states(params, schedule, config, n)
    quality = sample_quality(states[..., -1, :, :], held_out_for(config, n))
    calibrated = calibration(config, n)
    points = held_out_for(config, args.n_likelihood)[: args.n_likelihood]
    models = per_seed(params, config.seeds)
    if config.conditional:  # the likelihood of the unconditional model: the null class
        models = [class_params_at(p, n_classes_of(p)) for p in models]
    nlls, bounds = likelihoods_in_data_units(config, models, schedule, points, args.decoder)

    def gather(rows: list[dict]) -> dict:  # one seed: its values; several: a list per key
        return rows[0] if len(rows) == 1 else {k: [r[k] for r in rows] for k in rows[0]}

    result = dict(
        run=str(run_dir),
        epoch=record["epoch"],
        params=which,
        seeds=config.seeds,
        sampling=sampling_record(config, nfe),
        n=n,
        metrics=quality,
        calibration=dict(n=n, **calibrated),
        likelihood=dict(
            n=len(points), prior="N(0, I) at t = T-1", alpha_bar_T=float(schedule.alphas_prod[-1]), **gather(nlls)
        )
        if config.method == "diffusion"
        else dict(n=len(points), prior="N(0, I) at t = 0 (flow matching's source)", **gather(nlls)),
        bound=dict(n=len(points), decoder_kind=args.decoder, **gather(bounds)),
    )
    if config.conditional:
        result["likelihood"]["classes"] = result["bound"]["classes"] = "none (the null class: unconditional)"
    write_json(out, result)
    print(report(result))
    print(f"-> {out}")
    return result


def report(result: dict) -> str:
    """The evaluation as a few lines of text (means over seeds)."""
    lk, bd, sampling = result["likelihood"], result["bound"], result["sampling"]
    lines = [
        f"{result['run']}, epoch {result['epoch']}, {result['params']} parameters"
        + (f", {result['seeds']} seeds (means)" if result["seeds"] > 1 else "")
    ]
    if "unavailable" in lk:
        lines.append(f"NLL (probability-flow ODE): unavailable: {np.atleast_1d(lk['unavailable'])[0]}")
    elif "alpha_bar_T" not in lk:
        lines.append(
            f"NLL (the flow's ODE, exact divergence, {lk['prior']}; {lk['n']:,} held-out points): "
            f"{format_metric(lk['bits_per_dim'])} bits/dim (NFE {int(np.max(lk['nfe']))})"
        )
    else:
        lines.append(
            f"NLL (probability-flow ODE, exact divergence, prior N(0, I) at t = T-1 where alpha_bar = "
            f"{lk['alpha_bar_T']:.3g}; {lk['n']:,} held-out points): {format_metric(lk['bits_per_dim'])} "
            f"bits/dim (NFE {int(np.max(lk['nfe']))})"
        )
    if "unavailable" in bd:
        lines.append(f"variational bound: unavailable: {np.atleast_1d(bd['unavailable'])[0]}")
    else:
        lines.append(
            f"variational bound (-ELBO, {bd['decoder_kind']} decoder, {bd['n']:,} held-out points): "
            f"{format_metric(bd['total'])} bits/dim (prior {format_metric(bd['prior'])}, diffusion "
            f"{format_metric(bd['diffusion'])}, decoder {format_metric(bd['decoder'])})"
        )
    shown = (
        ", ".join(format_against(k, v, result["calibration"]) for k, v in result["metrics"].items() if k in METRICS)
        or "samples hold NaN or inf"
    )
    lines.append(f"samples ({sampling['sampler']} sampler, NFE {sampling['nfe']}), n = {result['n']:,}: {shown}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse argv (default: sys.argv[1:]) and evaluate; the exit status."""
    return run(
        EvaluateArgs,
        argv,
        "python -m jax_ddpm.evaluate",
        evaluate_run,
        (ConfigError, RunDirError, IncompatibleCheckpointError),
        (CheckpointError, OSError),
    )


if __name__ == "__main__":
    sys.exit(main())
