"""Evaluate and finish: the quality of samples (`sample_quality`: every model scored in one program on
the device, `scoring.score`), of a state's raw and EMA parameters (`evaluate_state`), and a trained run's
last phase (`finish`: sample with both parameters in one program (`draw.sample_models`), evaluate, draw
the pictures, write the summary)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_harness.config import Config, SamplerOptions
from ddpm_harness.data import held_out_for
from ddpm_harness.metrics import calibration
from ddpm_harness.pictures import ClassPictures, Pictures
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
from jax_ddpm.runner.draw import (
    class_labels,
    draw_samples,
    guide_for,
    sample_keys,
    sample_models,
    split_models,
    stack_models,
)
from jax_ddpm.runner.evaluation import sample_qualities
from jax_ddpm.schedule import Schedule, q_sample

if TYPE_CHECKING:
    from jax_ddpm.runner.loop import Trained
    from jax_ddpm.runner.setup import Run


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


def flow_path_frames(data: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """A flow's straight path from the data back to the noise, as the forward process runs: frame k of T
    (noise (T, N, 2)) is x_t = t x_1 + (1 - t) x_0 at t = 1 - k / T (x_1 the data, x_0 frame k's noise), and its
    time as a label."""
    times = 1.0 - np.arange(noise.shape[0]) / noise.shape[0]
    frames = times[:, None, None] * data[None] + (1.0 - times[:, None, None]) * noise
    return frames, [f"{t:.3g}" for t in times]


def start_pictures(run: Run) -> Pictures:
    """The run's pictures, drawn on a thread: data.png and forward.png at once (the forward process, or a
    flow's path, runs in model units and is drawn in data units), the rest in `finish`."""
    shift, scale = run.transform
    noise = picture_noise(run.config, run.data.shape)
    model_units = (run.data - shift) / scale
    if run.config.method == "flow":
        forward, times = flow_path_frames(model_units, noise)
        return Pictures(run.run_dir, tutorial_datasets(run.config), forward * scale + shift, times)
    forward = forward_frames(run.schedule, model_units, noise) * scale + shift
    return Pictures(run.run_dir, tutorial_datasets(run.config), forward)


def finish(run: Run, trained: Trained, pictures: Optional[Pictures] = None) -> dict:
    """Sample with the chosen parameters and evaluate those --n-samples samples (and as many with
    the other parameters) against the floor and ceiling at that n; finish the pictures (drawn while
    the evaluation runs), write summary.json and config.json."""
    config = run.config
    start = time.perf_counter()
    names = (config.sample_with, "ema" if config.sample_with == "raw" else "raw")  # both in one program
    params = {"raw": run.state.params, "ema": run.state.ema_params}
    both, nfes, first_chains = sample_models(
        stack_models([params[name] for name in names], config.seeds),
        run.schedule,
        config,
        sample_keys(config) * 2,
        config.n_samples,
    )
    samples, nfe = split_models(both, names, config.seeds), int(np.max(nfes[: config.seeds]))
    x_seq = first_chains[0]  # the first seed's chain of its first chunk of points, for the pictures
    del first_chains
    if run.writes:
        save_samples(run.run_dir, samples[config.sample_with])
    run.timings["sampling"] = time.perf_counter() - start
    if pictures is not None:
        classes = class_pictures(run, params[config.sample_with], x_seq.shape[1]) if config.conditional else None
        pictures.draw_results(x_seq, run.records, state_steps(config), classes)
    start = time.perf_counter()
    reference = held_out_for(config, config.n_samples)
    evaluation = sample_qualities({name: samples[name] for name in ("raw", "ema")}, reference)
    calibrated = calibration(config.dataset, config.n_samples, config.data_noise, config.seed, config.conditional)
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


GUIDANCE_WEIGHTS = (0.0, 1.0, 3.0, 7.0)
"""The rows of a --conditional run's guidance.png."""
GUIDANCE_POINTS = 2000
"""Points a row of guidance.png draws (at most --n-samples)."""


def class_pictures(run: Run, params, n_chain: int) -> ClassPictures:
    """A --conditional run's ClassPictures: the classes of the GIF's points (the data's; those of the run's
    own draw's first chunk of n_chain points, whose chain the GIF shows) and guidance.png's rows, drawn by the first
    seed's `params` from the same x_T at every w in GUIDANCE_WEIGHTS (w a value: one compiled program)."""
    config = run.config
    params = params if config.seeds == 1 else jax.tree_util.tree_map(lambda x: x[0], params)
    n, key = min(GUIDANCE_POINTS, config.n_samples), sample_keys(config)[0]
    rows = {}
    for w in GUIDANCE_WEIGHTS:
        guide = guide_for(config, n, "all", w)
        drawn = draw_samples(params, run.schedule, config, key, n, guide=guide)
        rows[w] = (np.asarray(drawn.x_0), np.asarray(guide.labels))
    sample_labels = class_labels(config, "all", n_chain)  # the first chunk's guide (draw.sample_models)
    return ClassPictures(Path(config.dataset).stem, run.labels, sample_labels, rows)


def state_steps(config: Config) -> Optional[list[int]]:
    """The step t of each state of a ddpm, ddim or dpm-solver++ chain on K of the T steps, in the
    tutorial's labels (state k is x_{t + 1} before the model call at step t; the sample is x_0);
    None for the samplers whose chains have T + 1 states labelled as the tutorial's. A flow model's
    states are labelled by their time t in [0, 1] (x_1 the sample)."""
    if config.method == "flow":
        k = SamplerOptions.from_config(config).sample_steps
        times = np.append(np.arange(config.num_steps) / config.num_steps, 1.0) if k is None else np.arange(k + 1) / k
        return [f"{t:.3g}" for t in times]
    if config.sampler not in ("ddpm", "ddim", "dpm-solver++"):
        return None
    options = SamplerOptions.from_config(config)
    steps = sampler_timesteps(config.sampler, config.num_steps, options.sample_steps, options.timestep_spacing)
    return [int(t) + 1 for t in steps] + [0]


def sampling_record(config: Config, nfe: int) -> dict:
    """How the final samples were drawn, for summary.json: sampler, its options, NFE."""
    record = dict(sampler=config.sampler, nfe=nfe, prediction=config.prediction)
    if config.method == "flow":
        record = dict(sampler=config.sampler, nfe=nfe, method="flow", coupling=config.coupling)
        record["flow_sigma"] = config.flow_sigma
    if config.sampler in ("euler", "midpoint"):
        record["sample_steps"] = SamplerOptions.from_config(config).sample_steps
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
    if config.conditional:  # the run's own samples: every class, in the data's proportions, unguided
        record.update(classes="all", guidance=0.0)
    return record
