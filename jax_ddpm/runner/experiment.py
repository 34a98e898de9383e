"""One training run: `train_and_evaluate(config) -> summary`, in three phases that read top to bottom.

1. `set_up`: data, schedule, optimizer, devices, the run folder, and the initial state or the one
   restored from the newest checkpoint (`--resume`).
2. `train`: compile one chunk of epochs (ahead of time, timed apart) and run it until the last
   epoch, logging, evaluating and checkpointing between chunks. The chunk length divides the
   logging, checkpoint and evaluation periods, so the program is compiled once.
3. `finish`: sample with the chosen parameters, evaluate, draw the pictures, write the summary.

`train_models` and `final_samples` are the same machinery for benchmarks and tests that need
trained parameters without a run folder.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ddpm_harness.config import (
    SAMPLE_CHUNK,
    SAMPLING_FIELDS,
    Config,
    ConfigError,
    check_fits_in_memory,
    data_transform,
    dataset_for,
    held_out_for,
    validate,
)
from ddpm_harness.data import file_sha256
from ddpm_harness.metrics import calibration
from ddpm_harness.runs import (
    MetricsLog,
    describe_setup,
    epoch_record,
    format_against,
    picture_noise,
    release_run_dir,
    save_samples,
    summarize,
    summary_paragraph,
    tutorial_datasets,
    write_config,
    write_summary,
)
from jax_ddpm import speed
from jax_ddpm.model import apply_model
from jax_ddpm.objectives.predictions import run_schedule
from jax_ddpm.runner import distributed, scoring
from jax_ddpm.runner.checkpoint import Checkpointer, IncompatibleCheckpointError, changed_options
from jax_ddpm.runner.compile_cache import use_compile_cache
from jax_ddpm.samplers import chains
from jax_ddpm.sampling import p_sample_for, p_sample_loop, sample_chain
from jax_ddpm.schedule import Schedule, q_sample
from jax_ddpm.training import init_states, make_mesh, make_train_chunk, optimizer_for, run_keys

# A chunk holds at most this many optimizer steps (summed over seeds), so the progress bar moves
# every couple of seconds on a 2-core CPU.
MAX_CHUNK_STEPS = 4000


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the message names the epoch and the checkpoint kept."""


class RunWriteError(RuntimeError):
    """The run folder could not be written (disk full, permissions); the message says what is kept."""


@dataclasses.dataclass
class Run:
    """Everything the phases of one run share."""

    config: Config
    run_dir: Path
    data: np.ndarray  # (N, 2) float32
    schedule: Schedule
    optimizer: object
    mesh: object
    state: object  # TrainState, seeds stacked on a leading axis when config.seeds > 1
    checkpointer: Checkpointer
    metrics: MetricsLog
    records: list[dict]  # metrics.jsonl lines so far
    start_epoch: int = 0
    wall_before: float = 0.0  # training wall time of earlier sessions (resume)
    timings: dict = dataclasses.field(default_factory=dict)  # seconds per phase of this session
    data_sha256: Optional[str] = None  # of a data file; None for a built-in dataset
    writes: bool = True  # False on the processes of a multi-process run other than 0, which write nothing
    transform: tuple = (np.zeros(2, np.float32), 1.0)  # (shift, scale): model units = (data - shift) / scale

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.data.shape[0] // self.config.batch_size)


def chunk_epochs(config: Config, steps_per_epoch: int, start_epoch: int = 0) -> int:
    """The chunk length: the largest divisor of every period (log, checkpoint, evaluation, the
    run's length and where it resumes) whose steps fit MAX_CHUNK_STEPS; 1 if none does."""
    periods = [config.log_every, config.checkpoint_every, config.epochs, start_epoch]
    period = math.gcd(*periods, config.eval_every)
    steps = steps_per_epoch * config.seeds
    return max(d for d in range(1, period + 1) if period % d == 0 and (d == 1 or d * steps <= MAX_CHUNK_STEPS))


def sampler_options(config: Config) -> dict:
    """The keyword options of `chains.sample` that a config's sampling fields give."""
    steps = config.sample_steps
    if steps is None and config.sampler in ("ddpm", "ddim", "dpm-solver++"):
        steps = chains.default_sample_steps(config.sampler, config.num_steps)
    return dict(
        sample_steps=steps,
        prediction=config.prediction,
        eta=float(config.eta),
        variance=config.variance,
        timestep_spacing=config.timestep_spacing,
        rtol=float(config.ode_rtol),
        atol=float(config.ode_atol),
    )


def check_sampler(config: Config, schedule: Schedule) -> None:
    """ConfigError (one sentence) for sampling options `chains.validate` refuses on this schedule."""
    options = {k: v for k, v in sampler_options(config).items() if k not in ("rtol", "atol")}
    try:
        chains.validate(config.sampler, schedule, **options)
    except ValueError as err:
        raise ConfigError(str(err)) from None


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
    return chains.sample(
        config.sampler,
        _model_fn(params, config),
        schedule,
        x_T,
        key=key,
        trajectory=trajectory,
        **sampler_options(config),
    )


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

    The tutorial sampler is `sampling.sample_chain` itself (bit for bit the tutorial's default run);
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
                params,
                x_T.shape,
                config.num_steps,
                schedule.alphas,
                schedule.betas,
                schedule.one_minus_alphas_bar_sqrt,
                x_T=x_T,
                zs=zs,
                p_sample_fn=p_sample_for(schedule, config.parameterization),
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
    keep = (*SAMPLING_FIELDS, "prediction", "loss", "num_steps")
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


def evaluate_state(state, schedule: Schedule, config: Config, reference: np.ndarray, epoch: int) -> dict:
    """Sample quality of the raw and the EMA parameters, --n-eval samples each with the config's
    sampler: {"raw": {metric: value}, "ema": {...}}."""
    from jax_ddpm.runner import batched_sampling  # it samples through this module's draw_samples

    params = batched_sampling.stack_models([state.params, state.ema_params], config.seeds)
    keys = batched_sampling.sample_keys(config, fold=epoch) * 2
    both, _, _ = batched_sampling.sample_models(params, schedule, config, keys, config.n_eval, chunk=config.n_eval)
    return sample_qualities(batched_sampling.split_models(both, ("raw", "ema"), config.seeds), reference)


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


class Pictures:
    """The run's pictures, drawn on a background thread: data.png and forward.png while the main
    thread compiles and trains, reverse.png, loss.png and the GIF while it evaluates. A single
    model's compiled steps run on one core, so the other one draws (matplotlib, imported here
    lazily, is among the slowest imports). An error (a full disk) is raised by `wait`."""

    def __init__(self, run: Run):
        self.run = run
        shift, scale = run.transform  # the forward process runs in model units, drawn in data units
        noise = picture_noise(run.config, run.data.shape)
        self.forward = forward_frames(run.schedule, (run.data - shift) / scale, noise) * scale + shift
        self._error: Optional[BaseException] = None
        self._thread = self._start(self._draw_setup)

    def _start(self, target) -> threading.Thread:
        def guarded():
            try:
                target()
            except BaseException as err:  # re-raised on the main thread by wait()
                self._error = err

        thread = threading.Thread(target=guarded, name="pictures", daemon=True)
        thread.start()
        return thread

    def _draw_setup(self) -> None:
        from ddpm_harness.plots import draw_setup_pictures

        draw_setup_pictures(self.run.run_dir, tutorial_datasets(self.run.config), self.forward)

    def draw_results(self, x_seq: np.ndarray, records: list[dict], steps: Optional[list[int]] = None) -> None:
        """Start reverse.png, loss.png and diffusion.gif once data.png and forward.png are done (steps:
        the t of each state of x_seq when the sampler skips steps, from `state_steps`)."""
        from ddpm_harness.plots import draw_result_pictures

        self.wait()
        run_dir, forward = self.run.run_dir, self.forward
        self._thread = self._start(lambda: draw_result_pictures(run_dir, forward, x_seq, records, steps))

    def join(self) -> None:
        """Wait for the drawing in progress, keeping any error for `wait`."""
        self._thread.join()

    def wait(self) -> None:
        self.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


# ---- 1. set up, or restore -------------------------------------------------------------------


def set_up(config: Config) -> Run:
    """Validate, draw the data, build the schedule, optimizer, devices and run folder; restore the
    newest checkpoint with --resume."""
    start = time.perf_counter()
    validate(config)
    check_fits_in_memory(config)
    use_compile_cache(config.compile_cache)
    data = dataset_for(config)
    schedule = run_schedule(config)
    check_sampler(config, schedule)
    for line in describe_setup(config, data, schedule):
        print(line)
    optimizer = optimizer_for(config)
    mesh = make_mesh(config.devices)
    state = init_states(config, optimizer, mesh)
    run_dir, checkpointer, metrics, writes = distributed.open_outputs(config)  # process 0 alone opens the folder
    try:
        run = Run(
            config,
            run_dir,
            data,
            schedule,
            optimizer,
            mesh,
            state,
            checkpointer,
            metrics,
            [],
            data_sha256=file_sha256(config.dataset),
            writes=writes,
            transform=data_transform(config, data),
        )
        if config.resume and run.checkpointer.latest_epoch() is not None:
            _restore(run)
        run.records = run.metrics.truncate_after(run.start_epoch)  # drop what a killed run logged past its checkpoint
        if not config.resume and writes:  # a resumed run's config.json is replaced only once it has succeeded
            write_config(run_dir, config, framework="jax")
    except BaseException:
        release_run_dir(run_dir)
        raise
    run.timings["set_up"] = time.perf_counter() - start
    return run


def _restore(run: Run) -> None:
    restored = run.checkpointer.restore(run.state, run.config)
    if restored is None:  # killed while writing its first checkpoint: nothing was kept, start again
        print(f"resuming {run.run_dir} from the beginning: it was stopped before its first checkpoint was complete")
        return
    state, record = restored
    run.state, run.start_epoch, run.wall_before = state, record["epoch"], record["wall_s"]
    if run.start_epoch > run.config.epochs:
        raise ConfigError(
            f"the checkpoint in {run.run_dir} is at epoch {run.start_epoch}, past --epochs {run.config.epochs}; "
            f"give --epochs {run.start_epoch} or more"
        )
    if record.get("data_sha256") != run.data_sha256:
        raise IncompatibleCheckpointError(
            f"the data file {run.config.dataset!r} changed since the checkpoint in {run.run_dir} was written "
            "(its sha256 differs); restore the file, or start a new --out-dir"
        )
    changes = changed_options(record["config"], run.config)
    print(
        f"resuming {run.run_dir} from the checkpoint of epoch {run.start_epoch}"
        + (f" with {', '.join(changes)}" if changes else "")
    )


# ---- 2. train in compiled chunks -------------------------------------------------------------


@dataclasses.dataclass
class Trained:
    """What the training phase measured."""

    evaluation: dict  # the last evaluation ({} when nothing was trained)
    train_s: float  # wall time of the training loop in this session
    compute_s: float  # of which in the compiled chunks
    compile_s: float
    steps: int  # optimizer steps trained in this session


def train(run: Run) -> Trained:
    """Compile one chunk of epochs, run it to --epochs; log, evaluate and checkpoint between chunks."""
    config, steps_per_epoch = run.config, run.steps_per_epoch
    n_chunk = chunk_epochs(config, steps_per_epoch, run.start_epoch)
    chunk_fn = make_train_chunk(config, run.schedule, run.optimizer, n_chunk, run.mesh)
    shift, scale = run.transform
    data = jnp.asarray((run.data - shift) / scale)  # --normalize: model units
    compile_start = time.perf_counter()
    compiled = chunk_fn.lower(run.state, data).compile()
    compile_s = time.perf_counter() - compile_start
    print(f"compiled a chunk of {n_chunk} epochs ({n_chunk * steps_per_epoch:,} steps) in {compile_s:.2f} s")

    reference = held_out_for(config, config.n_eval)
    floor = calibration(config.dataset, config.n_eval, config.data_noise, config.seed) if config.eval_every else None
    evaluation, compute_s, evaluate_s, epoch = {}, 0.0, 0.0, run.start_epoch
    loop_start = time.perf_counter()
    with tqdm(total=config.epochs, initial=epoch, unit="epoch", file=sys.stdout, dynamic_ncols=True) as bar:
        while epoch < config.epochs:
            chunk_start = time.perf_counter()
            run.state, chunk_metrics = compiled(run.state, data)
            losses = np.asarray(chunk_metrics["loss"]).reshape(config.seeds, n_chunk).T  # (n_chunk, seeds)
            last_losses = np.asarray(chunk_metrics["last_loss"]).reshape(config.seeds, n_chunk).T
            compute_s += time.perf_counter() - chunk_start
            wall_s = run.wall_before + time.perf_counter() - loop_start
            new = [
                epoch_record(
                    epoch + i + 1,
                    (epoch + i + 1) * steps_per_epoch,
                    losses[i].squeeze(),
                    last_losses[i].squeeze(),
                    wall_s,
                )
                for i in range(n_chunk)
            ]
            finite = np.isfinite(losses).all(axis=1) & np.isfinite(last_losses).all(axis=1)
            if not finite.all():
                bad = int(np.argmin(finite))
                run.metrics.append(new[:bad])
                raise TrainingDiverged(_divergence_message(epoch + bad + 1, run))
            epoch += n_chunk
            if config.eval_every and epoch % config.eval_every == 0:
                evaluate_start = time.perf_counter()
                evaluation = evaluate_state(run.state, run.schedule, config, reference, epoch)
                new[-1].update(flat_evaluation(evaluation), eval_n=config.n_eval)
                evaluate_s += time.perf_counter() - evaluate_start
            run.metrics.append(new)
            run.records += new
            for r in new:
                if r["epoch"] % config.log_every == 0:
                    bar.write(f"epoch {r['epoch']}: last-batch loss {np.mean(r['last_loss']):.4f}")
            if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
                run.checkpointer.save(run.state, epoch=epoch, wall_s=wall_s, config=config, data_sha256=run.data_sha256)
            distributed.meet(f"after epoch {epoch}", config.distributed_timeout)  # a no-op in one process
            bar.update(n_chunk)
            bar.set_postfix(
                _postfix(run.records[-1], evaluation, floor, (epoch - run.start_epoch) * steps_per_epoch / compute_s)
            )
    run.checkpointer.close()
    train_s = time.perf_counter() - loop_start
    run.timings.update(compile=compile_s, training_chunks=compute_s, evaluation=evaluate_s, training_loop=train_s)
    return Trained(evaluation, train_s, compute_s, compile_s, (config.epochs - run.start_epoch) * steps_per_epoch)


# ---- 3. finish: sample, draw, summarise ------------------------------------------------------


def finish(run: Run, trained: Trained, pictures: Optional[Pictures] = None) -> dict:
    """Sample with the chosen parameters and evaluate those --n-samples samples (and as many with
    the other parameters) against the floor and ceiling at that n; finish the pictures (drawn while
    the evaluation runs), write summary.json and config.json."""
    config = run.config
    start = time.perf_counter()
    from jax_ddpm.runner import batched_sampling  # it samples through this module's draw_samples

    names = (config.sample_with, "ema" if config.sample_with == "raw" else "raw")  # both in one program
    params = {"raw": run.state.params, "ema": run.state.ema_params}
    keys = batched_sampling.sample_keys(config)
    both, nfes, chains = batched_sampling.sample_models(
        batched_sampling.stack_models([params[name] for name in names], config.seeds),
        run.schedule,
        config,
        keys * 2,
        config.n_samples,
    )
    samples, nfe = batched_sampling.split_models(both, names, config.seeds), int(np.max(nfes[: config.seeds]))
    x_seq = chains[0]  # the first seed's chain of its first chunk of points, for the pictures
    del chains
    if run.writes:
        save_samples(run.run_dir, samples[config.sample_with])
    run.timings["sampling"] = time.perf_counter() - start
    if pictures is not None:
        pictures.draw_results(x_seq, run.records, state_steps(config))
    start = time.perf_counter()
    reference = held_out_for(config, config.n_samples)
    evaluation = sample_qualities({name: samples[name] for name in ("raw", "ema")}, reference)
    calibrated = calibration(config.dataset, config.n_samples, config.data_noise, config.seed)
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


def train_and_evaluate(config: Config, imports_s: Optional[float] = None) -> dict:
    """Train (or resume) a run, write its outputs and return its summary (also in summary.json).
    `imports_s`, the command line's import time, joins the summary's time breakdown. In a multi-process run
    (`distributed.join` first), every process calls it; process 0 writes the folder."""
    run = distributed.set_up_together(set_up, config)
    if imports_s is not None:
        run.timings = {"imports": imports_s, **run.timings}
    pictures = None
    try:
        pictures = None if config.no_plots or not run.writes else Pictures(run)
        with distributed.told_on_failure():  # the other processes of a multi-process run stop too
            trained = train(run)
            summary = finish(run, trained, pictures)
        distributed.meet("at the end", config.distributed_timeout)
        return summary
    except OSError as err:  # disk full, folder made read-only, ...: say what is kept and what to do
        raise RunWriteError(_write_failure_message(run, err)) from None
    finally:
        if pictures is not None:
            pictures.join()  # never leave a thread writing into a folder we release
        release_run_dir(run.run_dir)


def state_steps(config: Config) -> Optional[list[int]]:
    """The step t of each state of a ddpm, ddim or dpm-solver++ chain on K of the T steps, in the
    tutorial's labels (state k is x_{t + 1} before the model call at step t; the sample is x_0);
    None for the samplers whose chains have T + 1 states labelled as the tutorial's."""
    if config.sampler not in ("ddpm", "ddim", "dpm-solver++"):
        return None
    options = sampler_options(config)
    spacing = options["timestep_spacing"] or ("linspace" if config.sampler == "dpm-solver++" else "leading")
    steps = chains.sampler_timesteps(config.sampler, config.num_steps, options["sample_steps"], spacing)
    return [int(t) + 1 for t in steps] + [0]


def sampling_record(config: Config, nfe: int) -> dict:
    """How the final samples were drawn, for summary.json: sampler, its options, NFE."""
    record = dict(sampler=config.sampler, nfe=nfe, prediction=config.prediction)
    if config.sampler in ("ddpm", "ddim", "dpm-solver++"):
        record.update(sample_steps=sampler_options(config)["sample_steps"], timestep_spacing=config.timestep_spacing)
    if config.sampler == "ddim":
        record["eta"] = config.eta
    if config.sampler == "ddpm":
        record["variance"] = config.variance
    if config.sampler == "ode":
        record.update(rtol=config.ode_rtol, atol=config.ode_atol)
    return record


def _postfix(record: dict, evaluation: dict, floor: Optional[dict], steps_per_s: float) -> dict:
    postfix = {"loss": f"{np.mean(record['loss']):.4f}", "steps/s": f"{steps_per_s:,.0f}"}
    for k, v in (evaluation.get("raw") or {}).items():
        postfix[k] = format_against(k, v, floor, brief=True)
        break  # the first metric is enough for a progress bar
    return postfix


def _write_failure_message(run: Run, err: OSError) -> str:
    kept = run.checkpointer.latest_epoch()
    where = (
        f"the last complete checkpoint (epoch {kept}) is intact" if kept is not None else "no checkpoint was written"
    )
    return (
        f"writing to {run.run_dir} failed ({err.strerror or err}); {where}; free space or make the folder "
        "writable, then continue with --resume"
    )


def _divergence_message(epoch: int, run: Run) -> str:
    kept = run.checkpointer.latest_epoch()
    where = (
        f"the last good checkpoint (epoch {kept}) is kept in {run.checkpointer.directory}"
        if kept is not None
        else "no checkpoint had been written yet"
    )
    return (
        f"the loss became NaN or inf at epoch {epoch}; training stopped and {where}, with metrics up to "
        f"epoch {epoch - 1} in {run.run_dir}/metrics.jsonl; continue from it with --resume and a lower --lr"
    )


# ---- the same machinery without a run folder (benchmarks, tests) -----------------------------


def train_models(config: Config, data: Optional[np.ndarray] = None) -> list[dict]:
    """Train `config.seeds` models at once (vmapped) in one chunk of `config.epochs` epochs; the
    final parameters of each seed (raw or EMA, as config.sample_with says)."""
    data = dataset_for(config) if data is None else data
    shift, scale = data_transform(config, data)
    data = (data - shift) / scale  # --normalize: model units
    optimizer = optimizer_for(config)
    state = init_states(config, optimizer)
    chunk = make_train_chunk(config, run_schedule(config), optimizer, config.epochs)
    state, _ = chunk(state, jnp.asarray(data))
    params = state.ema_params if config.sample_with == "ema" else state.params
    if config.seeds == 1:
        return [params]
    return [jax.tree_util.tree_map(lambda a, i=i: a[i], params) for i in range(config.seeds)]


def final_samples(params: dict, config: Config, seed: int, n: int, x_T: Optional[np.ndarray] = None) -> np.ndarray:
    """n final samples (n, 2) of the config's sampler with seed's sampling key: from x_T ~ N(0, I),
    or from the given x_T (n, 2) with the step noise drawn from the same key."""
    out = draw_samples(params, run_schedule(config), config, run_keys(seed)["sample"], n, x_T)
    return np.asarray(out.x_0)
