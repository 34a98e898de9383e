"""`python -m torch_reference.train [OPTIONS]`: the tutorial's eager PyTorch loop as a command line.

Same options (ddpm_harness's Config), same dataset draw, and the same run-folder files as
`python -m jax_ddpm.train` (config.json, metrics.jsonl, samples.npy, summary.json and the
pictures), so the two compare run for run. Randomness is torch's, seeded with
torch.manual_seed(seed), so the numbers match the JAX run in distribution, not bit for bit.
Supported: the noise loss, schedules linear/quad/sigmoid/constant, one seed, one device, no resume,
no checkpoints, one evaluation at the end. It imports the framework-free ddpm_harness and never JAX,
so the oracle runs without the system it checks.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ddpm_harness.cli import door, run
from ddpm_harness.config import Config, ConfigError
from ddpm_harness.data import DataError, dataset_for, held_out_for
from ddpm_harness.metrics import calibration, evaluate
from ddpm_harness.plots import draw_run_pictures
from ddpm_harness.runs import (
    MetricsLog,
    RunDirError,
    describe_setup,
    epoch_record,
    open_run_dir,
    picture_noise,
    release_run_dir,
    save_samples,
    summarize,
    summary_paragraph,
    tutorial_datasets,
    write_config,
    write_summary,
)
from torch_reference.data import as_dataset
from torch_reference.model import ConditionalModel
from torch_reference.safetensors_io import save_run_models
from torch_reference.sampling import p_sample_loop
from torch_reference.schedule import Schedule, make_schedule, q_sample
from torch_reference.training import train

DEFAULTS = Config()


def check_supported(config: Config) -> None:
    """Refuse the options only the JAX implementation has."""
    unsupported = {
        "loss": ("noise", "the reference trains the noise loss only"),
        "seeds": (1, "train seeds one by one with --seed"),
        "devices": (1, "the eager loop runs on one device"),
        "coordinator_address": (None, "the reference runs in one process"),
        "num_processes": (None, "the reference runs in one process"),
        "process_id": (None, "the reference runs in one process"),
        "resume": (False, "the reference writes no checkpoints"),
        "checkpoint_every": (DEFAULTS.checkpoint_every, "the reference writes no checkpoints"),
        "eval_every": (DEFAULTS.eval_every, "the reference evaluates once, at the end"),
        "normalize": (False, "the tutorial trains on the data as drawn"),
        "prediction": ("eps", "the tutorial's model predicts the noise"),
        "zero_terminal_snr": (False, "the tutorial's schedules only"),
        "sampler": ("tutorial", "the reference has the tutorial's sampler only"),
        "conditional": (False, "the tutorial's model has no classes"),
    }
    for name, (allowed, why) in unsupported.items():
        if getattr(config, name) != allowed:
            raise ConfigError(
                f"--{name.replace('_', '-')} {getattr(config, name)} is not supported by "
                f"torch_reference.train ({why}); use python -m jax_ddpm.train"
            )
    if config.schedule == "cosine":
        raise ConfigError(
            "--schedule cosine is not in the tutorial; torch_reference.train supports "
            "linear, quad, sigmoid and constant"
        )


def schedule_for(config) -> Schedule:
    """The schedule a run's `Config` asks for (--schedule, --num-steps, --beta-start, --beta-end)."""
    return make_schedule(config.schedule, config.num_steps, config.beta_start, config.beta_end)


def sample_chain(model, schedule, n: int, num_steps: int) -> np.ndarray:
    """The tutorial's p_sample_loop from x_T ~ N(0, I): (T + 1, n, 2), x_T first."""
    with torch.no_grad():  # the tutorial samples with autograd on; the numbers are the same
        x_seq = p_sample_loop(
            model, (n, 2), num_steps, schedule.alphas, schedule.betas, schedule.one_minus_alphas_bar_sqrt
        )
    return torch.stack(x_seq).numpy()


def train_model(config: Config, data: np.ndarray, seed: int):
    """The reference's model trained by the tutorial's eager loop, seeded with torch.manual_seed(seed),
    with the EMA parameters copied in when config.sample_with is "ema" (no run folder: for tests and
    benchmarks)."""
    torch.manual_seed(seed)
    model = ConditionalModel(config.num_steps)
    model, ema, _ = train(
        model,
        as_dataset(data),
        schedule_for(config),
        config.num_steps,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        clip_norm=config.clip_norm,
        ema_mu=config.ema_decay,
    )
    if config.sample_with == "ema":
        ema.ema(model)
    return model


def final_samples(model, config: Config, seed: int, n: int) -> np.ndarray:
    """n final samples (n, 2) of the tutorial's chain from x_T ~ N(0, I), seeded with torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return sample_chain(model, schedule_for(config), n, config.num_steps)[-1]


def train_reference(config: Config) -> dict:
    """Train the tutorial's model with its eager loop, write the run folder, return the summary (the config
    checked at the door, `ddpm_harness.cli.door`)."""
    check_supported(config)
    torch.manual_seed(config.seed)
    points = dataset_for(config)
    schedule = schedule_for(config)
    for line in describe_setup(config, points, schedule):
        print(line)
    run_dir = open_run_dir(config)
    try:
        return _train_in(run_dir, config, points, schedule)
    finally:
        release_run_dir(run_dir)


def _train_in(run_dir, config: Config, points: np.ndarray, schedule) -> dict:
    """The tutorial's loop, its evaluation, samples and pictures, written into the locked run_dir."""
    write_config(run_dir, config, framework="torch")
    metrics = MetricsLog(run_dir)
    dataset = as_dataset(points)
    model = ConditionalModel(config.num_steps)
    steps_per_epoch = -(-len(points) // config.batch_size)
    records = []

    with tqdm(total=config.epochs, unit="epoch", file=sys.stdout, dynamic_ncols=True) as bar:

        def on_epoch(epoch, losses, wall_s):
            record = epoch_record(epoch + 1, (epoch + 1) * steps_per_epoch, np.mean(losses), losses[-1], wall_s)
            records.append(record)
            metrics.append([record])
            if (epoch + 1) % config.log_every == 0:
                bar.write(f"epoch {epoch + 1}: last-batch loss {losses[-1]:.4f}")
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", **{"steps/s": f"{record['step'] / wall_s:,.0f}"})

        start = time.perf_counter()
        model, ema, _ = train(
            model,
            dataset,
            schedule,
            config.num_steps,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            clip_norm=config.clip_norm,
            ema_mu=config.ema_decay,
            on_epoch=on_epoch,
        )
        train_s = time.perf_counter() - start
    save_run_models(run_dir, model, ema, config)  # model.safetensors, model_ema.safetensors

    # The final evaluation scores the --n-samples samples of each parameter set, beside the floor and
    # ceiling calibrated at that n (as python -m jax_ddpm.train does).
    timings = {"training_loop": train_s}
    start = time.perf_counter()
    reference = held_out_for(config, config.n_samples)
    chains = {"raw": sample_chain(model, schedule, config.n_samples, config.num_steps)}
    ema.ema(model)  # the tutorial's EMA.ema: copy the shadow parameters into the model
    chains["ema"] = sample_chain(model, schedule, config.n_samples, config.num_steps)
    timings["sampling"] = time.perf_counter() - start
    start = time.perf_counter()
    evaluation = {name: evaluate(x_seq[-1], reference) for name, x_seq in chains.items()}
    calibrated = calibration(config.dataset, config.n_samples, config.data_noise, config.seed)
    timings["final_evaluation"] = time.perf_counter() - start
    x_seq = chains[config.sample_with]
    save_samples(run_dir, x_seq[-1])
    if not config.no_plots:
        start = time.perf_counter()
        noise = torch.from_numpy(picture_noise(config, points.shape))
        forward = torch.stack(
            [
                q_sample(
                    dataset,
                    torch.full((len(points),), t),
                    schedule.alphas_bar_sqrt,
                    schedule.one_minus_alphas_bar_sqrt,
                    noise[t],
                )
                for t in range(config.num_steps)
            ]
        ).numpy()
        draw_run_pictures(run_dir, tutorial_datasets(config), forward, x_seq, records)
        timings["pictures"] = time.perf_counter() - start
    summary = summarize(
        records,
        framework="torch",
        config=config,
        run_dir=run_dir,
        train_s=train_s,
        steps_per_s=config.epochs * steps_per_epoch / train_s,
        evaluation=evaluation,
        calibration=dict(n=config.n_samples, **calibrated),
        sampling=dict(sampler="tutorial", nfe=config.num_steps, prediction="eps"),
        timings=timings,
    )
    write_summary(run_dir, summary)
    print(summary_paragraph(summary))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Parse argv (default: sys.argv[1:]) and train the reference; the exit status."""
    return run(
        Config,
        argv,
        "python -m torch_reference.train",
        train_reference,
        (ConfigError, DataError, RunDirError),
        (OSError,),
        door,
    )


if __name__ == "__main__":
    sys.exit(main())
