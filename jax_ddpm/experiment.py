"""One training run: `train_and_evaluate(config) -> summary`.

The data flows one way: config -> data -> schedule -> train state -> compiled chunks of epochs ->
checkpoint and samples -> metrics and pictures. Epochs run in chunks of a fixed length that
divides the logging, checkpoint and evaluation periods, so the chunk program is compiled once
(ahead of time, timed apart) and Python only runs between chunks.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jax_ddpm.checkpoint import Checkpointer, changed_options
from jax_ddpm.config import Config, ConfigError, validate
from jax_ddpm.data import GENERATORS, get_dataset
from jax_ddpm.metrics import evaluate
from jax_ddpm.outputs import (MetricsLog, epoch_record, format_metric, open_run_dir, save_samples, summarize,
                              summary_paragraph, write_config, write_summary)
from jax_ddpm.plots import draw_run_pictures
from jax_ddpm.sampling import sample_chain
from jax_ddpm.schedule import Schedule, q_sample, schedule_for
from jax_ddpm.training import init_states, make_mesh, make_optimizer, make_train_chunk, run_keys

# A chunk holds at most this many optimizer steps (summed over seeds), so the progress bar moves
# every couple of seconds on a 2-core CPU.
MAX_CHUNK_STEPS = 4000
# The held-out reference of the evaluation is a fresh draw of the dataset with seed + this.
HELD_OUT_SEED_OFFSET = 1_000_003
ALPHA_BAR_T_WARNING = 0.05
TUTORIAL_DATASETS = ("swiss_roll", "moons", "s_curve")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the message names the epoch and the checkpoint kept."""


def chunk_epochs(config: Config, steps_per_epoch: int, start_epoch: int = 0) -> int:
    """The chunk length: the largest divisor of every period (log, checkpoint, evaluation, the
    run's length and where it resumes) whose steps fit MAX_CHUNK_STEPS; 1 if none does."""
    periods = [config.log_every, config.checkpoint_every, config.epochs, start_epoch]
    period = math.gcd(*periods, config.eval_every)
    steps = steps_per_epoch * config.seeds
    return max(d for d in range(1, period + 1) if period % d == 0 and (d == 1 or d * steps <= MAX_CHUNK_STEPS))


def describe_setup(config: Config, data: np.ndarray, schedule: Schedule) -> list[str]:
    """The opening lines: dataset, schedule and how far from N(0, I) its forward process ends."""
    alpha_bar_T = float(schedule.alphas_prod[-1])
    lines = [f"dataset: {config.dataset}, {data.shape[0]:,} points",
             f"schedule: {config.schedule}, T = {config.num_steps}, betas {float(schedule.betas[0]):.3g} .. "
             f"{float(schedule.betas[-1]):.3g}, alpha_bar_T = {alpha_bar_T:.4f}"]
    if alpha_bar_T > ALPHA_BAR_T_WARNING:
        lines.append(f"warning: alpha_bar_T = {alpha_bar_T:.3f} > {ALPHA_BAR_T_WARNING}: the forward process ends "
                     "far from N(0, I): samples start from a distribution the model never saw; "
                     "consider --schedule cosine or a larger --beta-end")
    return lines


def sample_states(params: dict, schedule: Schedule, config: Config, n: int, fold: Optional[int] = None) -> np.ndarray:
    """The reverse chains of every seed: (T + 1, n, 2), or (seeds, T + 1, n, 2) for several.

    Seed i samples with run_keys(seed + i)["sample"], folded with `fold` for the evaluations.
    """
    keys = [run_keys(config.seed + i)["sample"] for i in range(config.seeds)]
    if fold is not None:
        keys = [jax.random.fold_in(k, fold) for k in keys]

    def chain(p, key):
        return sample_chain(p, schedule, key, n, parameterization=config.parameterization)

    if config.seeds == 1:
        return np.asarray(chain(params, keys[0]))
    return np.asarray(jax.vmap(chain)(params, jnp.stack(keys)))


def held_out_reference(config: Config, data: np.ndarray, n: int) -> np.ndarray:
    """A fresh draw of a built-in dataset (another data seed); a user's file is its own reference."""
    if config.dataset in GENERATORS:
        return get_dataset(config.dataset, n, config.data_noise, config.seed + HELD_OUT_SEED_OFFSET)
    return data


def sample_quality(samples: np.ndarray, reference: np.ndarray) -> dict:
    """`metrics.evaluate` of samples (n, 2), or (seeds, n, 2) with a list per metric; a seed whose
    samples hold NaN or inf (the sampler diverged) gets None for every metric."""
    runs = [evaluate(s, reference) if np.isfinite(s).all() else None for s in samples.reshape(-1, *samples.shape[-2:])]
    names = next((list(r) for r in runs if r is not None), [])
    values = {k: [None if r is None else float(r[k]) for r in runs] for k in names}
    return {k: v if samples.ndim == 3 else v[0] for k, v in values.items()}


def evaluate_state(state, schedule: Schedule, config: Config, reference: np.ndarray, epoch: int) -> dict:
    """Sample quality of the raw and the EMA parameters: {"raw": {metric: value}, "ema": {...}}."""
    return {name: sample_quality(sample_states(params, schedule, config, config.n_eval, fold=epoch)[..., -1, :, :],
                                 reference)
            for name, params in (("raw", state.params), ("ema", state.ema_params))}


def flat_evaluation(evaluation: dict) -> dict:
    """{"raw": {"mmd2": v}} -> {"raw_mmd2": v}, the metrics.jsonl layout."""
    return {f"{params}_{k}": v for params, values in evaluation.items() for k, v in values.items()}


def tutorial_datasets(config: Config) -> dict[str, np.ndarray]:
    """The three datasets of the tutorial's first picture, drawn as this run draws its data."""
    return {name: get_dataset(name, config.n_points, config.data_noise, config.seed) for name in TUTORIAL_DATASETS}


def picture_noise(config: Config, shape: tuple[int, ...]) -> np.ndarray:
    """Noise (T, *shape) for the forward-process pictures; numpy, so training keys stay untouched."""
    return np.random.default_rng(config.seed).standard_normal((config.num_steps,) + shape).astype(np.float32)


def forward_frames(schedule: Schedule, data: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """q(x_t | x_0) for every t = 0 .. T-1 with the given noise (T, N, 2): (T, N, 2)."""
    steps = jnp.arange(schedule.num_steps)
    return np.asarray(jax.vmap(lambda t, e: q_sample(data, jnp.full(data.shape[:1], t), schedule.alphas_bar_sqrt,
                                                     schedule.one_minus_alphas_bar_sqrt, e))(steps, noise))


def train_and_evaluate(config: Config) -> dict:
    """Train (or resume) a run, write its outputs and return its summary (also in summary.json)."""
    validate(config)
    data = get_dataset(config.dataset, config.n_points, config.data_noise, config.seed)
    schedule = schedule_for(config)
    for line in describe_setup(config, data, schedule):
        print(line)
    optimizer = make_optimizer(config.lr, config.clip_norm)
    try:
        mesh = make_mesh(config.devices)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    state = init_states(config, optimizer, mesh)

    run_dir = open_run_dir(config)
    checkpointer = Checkpointer(run_dir)
    start_epoch, wall_before = 0, 0.0
    if config.resume and checkpointer.latest_epoch() is not None:
        state, record = checkpointer.restore(state, config)
        start_epoch, wall_before = record["epoch"], record["wall_s"]
        if start_epoch > config.epochs:
            raise ConfigError(f"the checkpoint in {run_dir} is at epoch {start_epoch}, past --epochs {config.epochs}; "
                              f"give --epochs {start_epoch} or more")
        changes = changed_options(record["config"], config)
        print(f"resuming {run_dir} from the checkpoint of epoch {start_epoch}"
              + (f" with {', '.join(changes)}" if changes else ""))
    metrics = MetricsLog(run_dir)
    records = metrics.truncate_after(start_epoch)  # drop what a killed run logged past its checkpoint
    if not config.resume:  # a resumed run's config.json is replaced only once it has succeeded
        write_config(run_dir, config, framework="jax")

    steps_per_epoch = -(-data.shape[0] // config.batch_size)
    n_chunk = chunk_epochs(config, steps_per_epoch, start_epoch)
    chunk_fn = make_train_chunk(config, schedule, optimizer, n_chunk, mesh)
    data = jnp.asarray(data)
    compile_start = time.perf_counter()
    compiled = chunk_fn.lower(state, data).compile()
    compile_s = time.perf_counter() - compile_start
    print(f"compiled a chunk of {n_chunk} epochs ({n_chunk * steps_per_epoch:,} steps) in {compile_s:.2f} s")

    reference = held_out_reference(config, np.asarray(data), config.n_eval)
    evaluation = {}
    compute_s, epoch = 0.0, start_epoch
    loop_start = time.perf_counter()
    with tqdm(total=config.epochs, initial=start_epoch, unit="epoch", file=sys.stdout, dynamic_ncols=True) as bar:
        while epoch < config.epochs:
            chunk_start = time.perf_counter()
            state, chunk_metrics = compiled(state, data)
            losses = np.asarray(chunk_metrics["loss"]).reshape(config.seeds, n_chunk).T  # (n_chunk, seeds)
            last_losses = np.asarray(chunk_metrics["last_loss"]).reshape(config.seeds, n_chunk).T
            compute_s += time.perf_counter() - chunk_start
            wall_s = wall_before + time.perf_counter() - loop_start
            new = [epoch_record(epoch + i + 1, (epoch + i + 1) * steps_per_epoch, losses[i].squeeze(),
                                last_losses[i].squeeze(), wall_s) for i in range(n_chunk)]
            finite = np.isfinite(losses).all(axis=1) & np.isfinite(last_losses).all(axis=1)
            if not finite.all():
                bad = int(np.argmin(finite))
                metrics.append(new[:bad])
                raise TrainingDiverged(_divergence_message(epoch + bad + 1, checkpointer, run_dir))
            epoch += n_chunk
            if epoch == config.epochs or (config.eval_every and epoch % config.eval_every == 0):
                evaluation = evaluate_state(state, schedule, config, reference, epoch)
                new[-1].update(flat_evaluation(evaluation))
            metrics.append(new)
            records += new
            for r in new:
                if r["epoch"] % config.log_every == 0:
                    bar.write(f"epoch {r['epoch']}: last-batch loss {np.mean(r['last_loss']):.4f}")
            if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
                checkpointer.save(state, epoch=epoch, wall_s=wall_s, config=config)
            bar.update(n_chunk)
            bar.set_postfix(_postfix(records[-1], evaluation, (epoch - start_epoch) * steps_per_epoch / compute_s))
    checkpointer.close()
    train_s = time.perf_counter() - loop_start
    steps_trained = (config.epochs - start_epoch) * steps_per_epoch

    if not evaluation:  # a finished run resumed: nothing trained, evaluate what it holds
        evaluation = evaluate_state(state, schedule, config, reference, config.epochs)
    params = state.ema_params if config.sample_with == "ema" else state.params
    x_seq = sample_states(params, schedule, config, config.n_samples)
    save_samples(run_dir, x_seq[..., -1, :, :])
    if not config.no_plots:
        forward = forward_frames(schedule, data, picture_noise(config, data.shape))
        draw_run_pictures(run_dir, tutorial_datasets(config), forward, x_seq if config.seeds == 1 else x_seq[0], records)
    summary = summarize(records, framework="jax", config=config, run_dir=run_dir, train_s=train_s,
                        steps_per_s=steps_trained / compute_s if compute_s else None, compile_s=compile_s,
                        evaluation=evaluation)
    write_summary(run_dir, summary)
    write_config(run_dir, config, framework="jax")
    print(summary_paragraph(summary))
    return summary


def _postfix(record: dict, evaluation: dict, steps_per_s: float) -> dict:
    postfix = {"loss": f"{np.mean(record['loss']):.4f}", "steps/s": f"{steps_per_s:,.0f}"}
    for k, v in (evaluation.get("raw") or {}).items():
        postfix[k] = format_metric(v)
        break  # the first metric is enough for a progress bar
    return postfix


def _divergence_message(epoch: int, checkpointer: Checkpointer, run_dir: Path) -> str:
    kept = checkpointer.latest_epoch()
    where = (f"the last good checkpoint (epoch {kept}) is kept in {checkpointer.directory}" if kept is not None
             else "no checkpoint had been written yet")
    return (f"the loss became NaN or inf at epoch {epoch}; training stopped and {where}, with metrics up to "
            f"epoch {epoch - 1} in {run_dir}/metrics.jsonl; continue from it with --resume and a lower --lr")
