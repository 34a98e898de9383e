"""Sample and evaluate: one model's samples with the config's sampler (`draw_samples`), every seed's
chains (`sample_states`), large draws in chunks (`sample_points`), their quality (`sample_quality`,
`evaluate_state`), and a trained run's last phase (`finish`: sample with the chosen parameters, evaluate,
draw the pictures, write the summary)."""

from __future__ import annotations

import concurrent.futures
import functools
import time
from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_harness.config import SAMPLING_FIELDS, Config, SamplerOptions
from ddpm_harness.data import data_transform, held_out_for
from ddpm_harness.memory import SAMPLE_CHUNK
from ddpm_harness.metrics import calibration, evaluate
from ddpm_harness.pictures import Pictures
from ddpm_harness.runs import (
    picture_noise,
    save_samples,
    summarize,
    summary_paragraph,
    tutorial_datasets,
    write_config,
    write_summary,
)
from ddpm_harness.timesteps import sampler_timesteps
from jax_ddpm import speed
from jax_ddpm.model import apply_model
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.runner.chunk import run_keys
from jax_ddpm.samplers import chains
from jax_ddpm.samplers.tutorial import p_sample_for, sample_chain
from jax_ddpm.sampling import p_sample_loop
from jax_ddpm.schedule import Schedule, q_sample

if TYPE_CHECKING:
    from jax_ddpm.runner.loop import Trained
    from jax_ddpm.runner.setup import Run


def _model_fn(params: dict, config: Config) -> chains.ModelFn:
    """The model as the samplers call it: its eps/v/x0 output (the eps half of the hybrid loss's
    4-output model), at float t through `chains.interpolate_steps` for the ODE."""
    model_fn = functools.partial(apply_model, params)
    if config.parameterization == "eps_logvar":
        model_fn = lambda x, t, f=model_fn: f(x, t)[..., :2]  # noqa: E731
    if config.sampler == "ode":
        model_fn = chains.interpolate_steps(model_fn, config.num_steps)
    return model_fn


@functools.lru_cache(maxsize=None)
def _jitted_sample_from():
    # Made on first use, not at import: speed.on_cpu asks JAX for its backend, and a multi-process run must join
    # (jax.distributed.initialize) before anything starts the backend.
    return jax.jit(
        _sample_from, static_argnames=("config", "trajectory"), compiler_options=speed.on_cpu(speed.SAMPLING)
    )


def _sample_from(params, schedule, key, x_T, *, config, trajectory):
    return chains.sample(SamplerOptions.from_config(config), _model_fn(params, config), schedule, x_T, key, trajectory)


def draw_samples(
    params: dict,
    schedule: Schedule,
    config: Config,
    key: jax.Array,
    n: Optional[int] = None,
    x_T: Optional[jax.Array] = None,
    trajectory: bool = False,
) -> chains.Samples:
    """One model's samples with the config's sampler (--sampler, --sample-steps, --eta, ...): from
    x_T (n, 2) ~ N(0, I) drawn from fold_in(key, 0), or from the given x_T (N, 2); step noise from key.

    The tutorial sampler is `samplers.tutorial.sample_chain` itself (bit for bit the tutorial's default run);
    the others run as one program with x_T as its input, so a deterministic sampler started from the
    x_T it drew reproduces its chain exactly. With --normalize every state is mapped back to data
    units (x_T is given in model units, where it is N(0, I)).
    """
    return _to_data(_draw(params, schedule, config, key, n, x_T, trajectory), *data_transform(config))


def _to_data(samples: chains.Samples, shift: np.ndarray, scale: float) -> chains.Samples:
    if scale == 1.0 and not np.any(shift):
        return samples
    trajectory = None if samples.trajectory is None else samples.trajectory * scale + shift
    return samples.replace(x_0=samples.x_0 * scale + shift, trajectory=trajectory)


def _draw(params, schedule, config, key, n, x_T, trajectory) -> chains.Samples:
    sampling_config = _sampling_part(config)
    if config.sampler == "tutorial":
        if x_T is None:
            states = sample_chain(params, schedule, key, n, parameterization=config.parameterization)
        else:
            x_T = jnp.asarray(x_T, jnp.float32)
            zs = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(key, k + 1), x_T.shape))(
                jnp.arange(config.num_steps)
            )
            states = p_sample_loop(
                functools.partial(apply_model, params),
                x_T.shape,
                config.num_steps,
                schedule.alphas,
                schedule.betas,
                schedule.one_minus_alphas_bar_sqrt,
                x_T=x_T,
                zs=zs,
                p_sample=p_sample_for(params, schedule, config.parameterization),
            )
        return chains.Samples(states[-1], states if trajectory else None, jnp.asarray(config.num_steps, jnp.int32))
    if x_T is None:
        x_T = jax.random.normal(jax.random.fold_in(key, 0), (n, 2))
    return _jitted_sample_from()(
        params, schedule, key, jnp.asarray(x_T, jnp.float32), config=sampling_config, trajectory=trajectory
    )


def _sampling_part(config: Config) -> Config:
    """The config with every field that does not change sampling reset, so that jit (which keys its
    cache on the static config) compiles one sampler program per sampling setup."""
    keep = (*SAMPLING_FIELDS, "prediction", "loss", "num_steps", "zero_terminal_snr")
    return Config(**{name: getattr(config, name) for name in keep})


def sample_states(
    params: dict,
    schedule: Schedule,
    config: Config,
    n: int,
    fold: Optional[int] = None,
    x_T: Optional[np.ndarray] = None,
    chunk: int = 0,
) -> tuple[np.ndarray, int]:
    """The reverse chains of every seed with the config's sampler, and its NFE: states (S + 1, n, 2),
    or (seeds, S + 1, n, 2) for several, x_T first (S = T for the tutorial sampler, K for ddpm, ddim
    and dpm-solver++, T + 1 for the ODE).

    Seed i samples with run_keys(seed + i)["sample"], folded with `fold` for the evaluations and,
    for chunk c > 0 of a large draw (`sample_points`), with c; x_T (n, 2), when given, starts every
    seed's chain.
    """
    keys = [run_keys(config.seed + i)["sample"] for i in range(config.seeds)]
    if fold is not None:
        keys = [jax.random.fold_in(k, fold) for k in keys]
    if chunk:
        keys = [jax.random.fold_in(k, chunk) for k in keys]

    def chain(p, key):
        out = draw_samples(p, schedule, config, key, n, x_T, trajectory=True)
        return out.trajectory, out.nfe

    if config.seeds == 1:
        states, nfe = chain(params, keys[0])
    else:
        states, nfe = jax.vmap(chain)(params, jnp.stack(keys))
    return np.asarray(states), int(np.max(nfe))


def sample_points(
    params: dict,
    schedule: Schedule,
    config: Config,
    n: int,
    fold: Optional[int] = None,
    out: Optional[np.ndarray] = None,
    keep_chain: bool = False,
    x_T: Optional[np.ndarray] = None,
):
    """n final samples (n, 2), or (seeds, n, 2), drawn SAMPLE_CHUNK points at a time into `out`
    (allocated when None; a memory-mapped .npy works), and the sampler's NFE; with `keep_chain`,
    (samples, the first chunk's chains, NFE) for the pictures. x_T (n, 2), when given, starts the chains.

    Points [c * SAMPLE_CHUNK, (c + 1) * SAMPLE_CHUNK) come from chunk c's keys (`sample_states`), so
    a draw of up to SAMPLE_CHUNK points is one chain, and the same n always gives the same points.
    """
    shape = (n, 2) if config.seeds == 1 else (config.seeds, n, 2)
    out = np.empty(shape, np.float32) if out is None else out
    first, nfe = None, 0
    for c, start in enumerate(range(0, n, SAMPLE_CHUNK)):
        size = min(SAMPLE_CHUNK, n - start)
        part = None if x_T is None else x_T[start : start + size]
        chains, nfe = sample_states(params, schedule, config, size, fold=fold, x_T=part, chunk=c)
        out[..., start : start + size, :] = chains[..., -1, :, :]
        if keep_chain and first is None:
            first = chains
        del chains  # before the next chunk's chain is made
    return (out, first, nfe) if keep_chain else (out, nfe)


def sample_quality(samples: np.ndarray, reference: np.ndarray) -> dict:
    """`metrics.evaluate` of samples (n, 2), or (seeds, n, 2) with a list per metric; a seed whose
    samples hold NaN or inf (the sampler diverged) gets None for every metric."""
    runs = [evaluate(s, reference) if np.isfinite(s).all() else None for s in samples.reshape(-1, *samples.shape[-2:])]
    names = next((list(r) for r in runs if r is not None), [])
    values = {k: [None if r is None else float(r[k]) for r in runs] for k in names}
    return {k: v if samples.ndim == 3 else v[0] for k, v in values.items()}


def evaluate_state(state, schedule: Schedule, config: Config, reference: np.ndarray, epoch: int) -> dict:
    """Sample quality of the raw and the EMA parameters, --n-eval samples each with the config's
    sampler: {"raw": {metric: value}, "ema": {...}}."""
    return {
        name: sample_quality(
            sample_states(params, schedule, config, config.n_eval, fold=epoch)[0][..., -1, :, :], reference
        )
        for name, params in (("raw", state.params), ("ema", state.ema_params))
    }


def flat_evaluation(evaluation: dict) -> dict:
    """{"raw": {"mmd2": v}} -> {"raw_mmd2": v}, the metrics.jsonl layout."""
    return {f"{params}_{k}": v for params, values in evaluation.items() for k, v in values.items()}


def forward_frames(schedule: Schedule, data: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """q(x_t | x_0) for every t = 0 .. T-1 with the given noise (T, N, 2): (T, N, 2)."""
    steps = jnp.arange(schedule.num_steps)
    return np.asarray(
        jax.vmap(
            lambda t, e: q_sample(
                data, jnp.full(data.shape[:1], t), schedule.alphas_bar_sqrt, schedule.one_minus_alphas_bar_sqrt, e
            )
        )(steps, noise)
    )


def start_pictures(run: Run) -> Pictures:
    """The run's pictures, drawn on a thread: data.png and forward.png at once (the forward process runs
    in model units and is drawn in data units), the rest in `finish`."""
    shift, scale = run.transform
    noise = picture_noise(run.config, run.data.shape)
    forward = forward_frames(run.schedule, (run.data - shift) / scale, noise) * scale + shift
    return Pictures(run.run_dir, tutorial_datasets(run.config), forward)


def finish(run: Run, trained: Trained, pictures: Optional[Pictures] = None) -> dict:
    """Sample with the chosen parameters and evaluate those --n-samples samples (and as many with
    the other parameters) against the floor and ceiling at that n; finish the pictures (drawn while
    the evaluation runs), write summary.json and config.json."""
    config = run.config
    start = time.perf_counter()
    samples, x_seq, nfe = {}, None, 0
    for name in (config.sample_with, "ema" if config.sample_with == "raw" else "raw"):
        params = run.state.ema_params if name == "ema" else run.state.params
        if name == config.sample_with:
            samples[name], x_seq, nfe = sample_points(params, run.schedule, config, config.n_samples, keep_chain=True)
        else:
            samples[name], _ = sample_points(params, run.schedule, config, config.n_samples)
    if run.writes:
        save_samples(run.run_dir, samples[config.sample_with])
    run.timings["sampling"] = time.perf_counter() - start
    if pictures is not None:
        pictures.draw_results(x_seq if config.seeds == 1 else x_seq[0], run.records, state_steps(config))
    start = time.perf_counter()
    reference = held_out_for(config, config.n_samples)
    # numpy releases the GIL in its array loops: the two evaluations run on both cores.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(sample_quality, samples[name], reference) for name in ("raw", "ema")}
        calibrated = calibration(config.dataset, config.n_samples, config.data_noise, config.seed)
        evaluation = {name: future.result() for name, future in futures.items()}
    run.timings["final_evaluation"] = time.perf_counter() - start
    if pictures is not None:
        start = time.perf_counter()
        pictures.wait()
        run.timings["pictures"] = time.perf_counter() - start  # what drawing added after the evaluation
    summary = summarize(
        run.records,
        framework="jax",
        config=config,
        run_dir=run.run_dir,
        train_s=trained.train_s,
        steps_per_s=trained.steps / trained.compute_s if trained.compute_s else None,
        compile_s=trained.compile_s,
        evaluation=evaluation,
        timings=run.timings,
        calibration=dict(n=config.n_samples, **calibrated),
        sampling=sampling_record(config, nfe),
    )
    if run.writes:
        write_summary(run.run_dir, summary)
        write_config(run.run_dir, config, framework="jax")
    print(summary_paragraph(summary))
    return summary


def state_steps(config: Config) -> Optional[list[int]]:
    """The step t of each state of a ddpm, ddim or dpm-solver++ chain on K of the T steps, in the
    tutorial's labels (state k is x_{t + 1} before the model call at step t; the sample is x_0);
    None for the samplers whose chains have T + 1 states labelled as the tutorial's."""
    if config.sampler not in ("ddpm", "ddim", "dpm-solver++"):
        return None
    options = SamplerOptions.from_config(config)
    steps = sampler_timesteps(config.sampler, config.num_steps, options.sample_steps, options.timestep_spacing)
    return [int(t) + 1 for t in steps] + [0]


def sampling_record(config: Config, nfe: int) -> dict:
    """How the final samples were drawn, for summary.json: sampler, its options, NFE."""
    record = dict(sampler=config.sampler, nfe=nfe, prediction=config.prediction)
    if config.sampler in ("ddpm", "ddim", "dpm-solver++"):
        record.update(
            sample_steps=SamplerOptions.from_config(config).sample_steps, timestep_spacing=config.timestep_spacing
        )
    if config.sampler == "ddim":
        record["eta"] = config.eta
    if config.sampler == "ddpm":
        record["variance"] = config.variance
    if config.sampler == "ode":
        record.update(rtol=config.ode_rtol, atol=config.ode_atol)
    return record


def final_samples(params: dict, config: Config, seed: int, n: int, x_T: Optional[np.ndarray] = None) -> np.ndarray:
    """n final samples (n, 2) of the config's sampler with seed's sampling key: from x_T ~ N(0, I),
    or from the given x_T (n, 2) with the step noise drawn from the same key."""
    out = draw_samples(params, run_schedule(config), config, run_keys(seed)["sample"], n, x_T)
    return np.asarray(out.x_0)
