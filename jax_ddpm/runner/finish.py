"""Evaluate and finish: the quality of samples (`sample_quality`: every model scored in one program on
the device, `scoring.score`), of a state's raw and EMA parameters (`evaluate_state`), and a trained run's
last phase (`finish`: sample with both parameters in one call (`draw.sample_models`), evaluate, draw
the pictures, write the summary), and that of runs trained together, as one batch (`finish_runs`)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_harness.config import Config, SamplerOptions
from ddpm_harness.data import data_transform, held_out_for
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
    sampling_part,
    split_models,
    stack_models,
)
from jax_ddpm.runner.evaluation import calibration, sample_qualities
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
    the evaluation runs), write samples.npy, summary.json and config.json (`finish_runs` of one run)."""
    return finish_runs([run], trained, pictures)[0]


@dataclasses.dataclass
class Finals:
    """One run's final samples: {"raw", "ema"}: (n, 2) or (seeds, n, 2); the sampler's NFE; the first
    seed's chain of its first chunk of points (S + 1, chunk, 2), for the pictures."""

    samples: dict
    nfe: int
    x_seq: np.ndarray


FINISH_BYTES = 1 << 30
"""About how much the final samples of the runs finished together may hold (`finish_runs` takes runs in
parts that fit): 2 x seeds x n points per run, 4 bytes a coordinate."""


def finish_runs(runs: list[Run], trained: Trained, pictures: Optional[Pictures] = None) -> list[dict]:
    """Finish runs trained together (a run, or the configurations of a sweep's group), as a batch: every
    run's samples with both parameters (`draw_finals`: one `sample_models` call per sampling setup), all
    scored in one program (`score_finals`), the pictures (`pictures`, one run's started by the caller, drawn
    while the scoring runs; without it, each run's that has plots after the scoring, one at a time: pyplot
    is not thread-safe), then each run's samples.npy,
    summary.json and config.json. Runs are taken in parts whose samples fit FINISH_BYTES. Each summary's
    timings hold its share of the part's sampling, evaluation and writing times. Returns the summaries."""
    per_run = 2 * runs[0].config.seeds * runs[0].config.n_samples * 2 * 4
    size = max(1, FINISH_BYTES // per_run)
    return [
        s for start in range(0, len(runs), size) for s in _finish_part(runs[start : start + size], trained, pictures)
    ]


def _finish_part(runs: list[Run], trained: Trained, pictures: Optional[Pictures]) -> list[dict]:
    times = {}
    start = time.perf_counter()
    finals = draw_finals(runs)
    times["sampling"] = time.perf_counter() - start
    if pictures is not None:
        draw_results(pictures, runs[0], finals[0])
    start = time.perf_counter()
    evaluations = score_finals(runs, finals)
    calibrations = [calibration(run.config, run.config.n_samples) for run in runs]
    times["final_evaluation"] = time.perf_counter() - start
    later = [] if pictures is not None else [i for i, run in enumerate(runs) if run.writes and not run.config.no_plots]
    if pictures is not None or later:
        start = time.perf_counter()
        if pictures is not None:
            pictures.wait()
        for i in later:
            draw_pictures(runs[i], finals[i])
        times["pictures"] = time.perf_counter() - start  # what drawing added after the evaluation
    start = time.perf_counter()
    for run, drawn in zip(runs, finals):
        if run.writes:
            save_samples(run.run_dir, drawn.samples[run.config.sample_with])
    times["writing"] = time.perf_counter() - start
    summaries = []
    for run, drawn, evaluation, calibrated in zip(runs, finals, evaluations, calibrations):
        run.timings.update({k: v / len(runs) for k, v in times.items()})  # each run's share
        summaries.append(_write_finished(run, trained, drawn, evaluation, calibrated))
    return summaries


def draw_finals(runs: list[Run]) -> list[Finals]:
    """Every run's final samples with its raw and EMA parameters: the runs that sample alike (the same
    sampler, options and data units) in one `sample_models` call, each run's models in the order
    (sample_with, the other) x seeds, with its own schedule; each model's points bit for bit its own
    (tests/test_batched_sampling.py)."""
    finals: list[Optional[Finals]] = [None] * len(runs)
    for part in _sampling_setups(runs):
        config = runs[part[0]].config
        names = [_names(runs[i].config) for i in part]
        params = [_params(runs[i])[name] for i, run_names in zip(part, names) for name in run_names]
        keys = [key for i in part for key in sample_keys(runs[i].config) * 2]
        schedules = [runs[i].schedule for i in part]
        same = all(_same_schedule(schedules[0], s) for s in schedules[1:])
        schedule = schedules[0] if same else _stack([s for s in schedules for _ in range(2 * config.seeds)])
        out, nfes, chains = sample_models(
            stack_models(params, config.seeds),
            schedule,
            config,
            keys,
            config.n_samples,
            keep=range(0, len(keys), 2 * config.seeds),
        )
        for j, (i, run_names) in enumerate(zip(part, names)):
            models = slice(2 * config.seeds * j, 2 * config.seeds * (j + 1))
            samples = split_models(out[models], run_names, config.seeds)
            finals[i] = Finals(samples, int(np.max(nfes[models][: config.seeds])), chains[j])
    return finals


def score_finals(runs: list[Run], finals: list[Finals]) -> list[dict]:
    """Each run's {"raw": {metric: value or per-seed list}, "ema": {...}} of its final samples against the
    held-out reference at --n-samples: every run sharing a reference scored in one program (`sample_qualities`)."""
    references = [held_out_for(run.config, run.config.n_samples) for run in runs]
    evaluations: list[Optional[dict]] = [None] * len(runs)
    for part in _partition(range(len(runs)), lambda i, j: np.array_equal(references[i], references[j])):
        samples = {(i, name): finals[i].samples[name] for i in part for name in ("raw", "ema")}
        scored = sample_qualities(samples, references[part[0]])
        for i in part:
            evaluations[i] = {name: scored[(i, name)] for name in ("raw", "ema")}
    return evaluations


def draw_pictures(run: Run, finals: Finals) -> None:
    """A run's pictures, drawn now (data, forward process, reverse chain, loss, GIF)."""
    pictures = start_pictures(run)
    draw_results(pictures, run, finals)
    pictures.wait()


def draw_results(pictures: Pictures, run: Run, finals: Finals) -> None:
    """Start the pictures of a trained run on `pictures`' thread: its chain, loss and GIF, and a
    --conditional run's classes and guidance.png."""
    config = run.config
    params = _params(run)[config.sample_with]
    classes = class_pictures(run, params, finals.x_seq.shape[1]) if config.conditional else None
    pictures.draw_results(finals.x_seq, run.records, state_steps(config), classes)


def _write_finished(run: Run, trained: Trained, finals: Finals, evaluation: dict, calibrated: dict) -> dict:
    config = run.config
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
        sampling=sampling_record(config, finals.nfe),
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


def _names(config: Config) -> tuple[str, str]:
    """The parameters sampled, the chosen ones first (the pictures' chain is theirs)."""
    return (config.sample_with, "ema" if config.sample_with == "raw" else "raw")


def _params(run: Run) -> dict:
    return {"raw": run.state.params, "ema": run.state.ema_params}


def _sampling_setups(runs: list[Run]) -> list[list[int]]:
    """The runs' indices, in parts that draw with the same program: the same sampling options, seeds,
    --n-samples and data units (configurations of a sweep's group may differ in the sampling options)."""

    def setup(config: Config):
        shift, scale = data_transform(config)
        return (sampling_part(config), config.seeds, config.n_samples, config.seed, tuple(np.ravel(shift)), scale)

    return _partition(range(len(runs)), lambda i, j: setup(runs[i].config) == setup(runs[j].config))


def _partition(items, same) -> list[list]:
    """Items in parts of items `same` to the part's first, in order."""
    parts: list[list] = []
    for item in items:
        part = next((p for p in parts if same(p[0], item)), None)
        part.append(item) if part is not None else parts.append([item])
    return parts


def _same_schedule(a: Schedule, b: Schedule) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _stack(trees: list):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


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
