"""The single source of truth for a run: one frozen dataclass, turned into the CLI by tyro.

Defaults reproduce the tutorial exactly (moons, sigmoid schedule 1e-5..5e-3 over 100 steps,
batch 128, 1000 epochs, Adam 1e-3, clip 1.0, EMA 0.9, sampling with the raw parameters).
Tests override fields with `dataclasses.replace`. Framework-free: both implementations' command
lines, the benchmarks and the tests read it (a config's data: `ddpm_harness.data.dataset_for`; its
memory budget: `ddpm_harness.memory`). `validate` is the one check of a config (the command lines call
it when they parse, `ddpm_harness.cli.door`); `SamplerOptions` the one value, checked once, that every
sampler takes.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Literal, Optional, Sequence

import numpy as np

from ddpm_harness.data import N_CLASSES, is_builtin
from ddpm_harness.timesteps import SPACINGS, default_sample_steps, default_spacing, sampler_timesteps

SCHEDULES = ("linear", "quad", "sigmoid", "constant", "cosine")


SEED_MAX = 2**31 - 1
"""The largest seed: numpy's legacy generators take seeds below 2**32 (the held-out draws add an
offset of about 10**6), and JAX's keys wrap at 2**32 (seed 2**32 would silently repeat seed 0)."""


class ConfigError(ValueError):
    """A hyper-parameter that cannot work; the message says which and what to do."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Train the tutorial's ConditionalModel on a 2D toy distribution and sample from it."""

    dataset: str = "moons"
    """Built-in dataset (moons, swiss_roll, s_curve, circles, checkerboard, eight_gaussians) or a path to a .npy/.csv
    file of shape (N, 2)."""
    n_points: int = 10_000
    """Number of points drawn from a built-in dataset (ignored for a file)."""
    data_noise: float = 0.1
    """Noise of the dataset (the tutorial uses 0.1): the std of scikit-learn's noise for moons, swiss_roll and s_curve
    (before their scaling); half of it for circles (the tutorial's 0.1 would merge the rings); the std of each of
    the eight Gaussians; ignored by checkerboard and by a file."""
    method: Literal["diffusion", "flow"] = "diffusion"
    """What the model learns: the tutorial's diffusion (DDPM), or flow matching (a velocity on the straight
    path from N(0, I) at t = 0 to the data at t = 1, TorchCFM's definitions; the model sees t as the
    nearest of T grid times k / T). Flow samples with --sampler euler, midpoint or ode. Details: docs/flow.md."""
    coupling: Literal["independent", "ot"] = "independent"
    """Flow matching's pairing of noise and data in a batch: independent (I-CFM) or ot (minibatch exact
    optimal transport, squared Euclidean cost, OT-CFM). --method flow only."""
    flow_sigma: float = 0.0
    """Flow matching's Gaussian path width sigma: x_t = t x_1 + (1 - t) x_0 + sigma eps. --method flow only."""
    schedule: Literal["linear", "quad", "sigmoid", "constant", "cosine"] = "sigmoid"
    """Beta schedule."""
    num_steps: int = 100
    """Number of diffusion steps T."""
    beta_start: float = 1e-5
    """First beta of the schedule (the constant beta for --schedule constant)."""
    beta_end: float = 5e-3
    """Last beta of the schedule (ignored by constant and cosine)."""
    zero_terminal_snr: bool = False
    """Rescale the schedule so that alpha_bar_T = 0 (Lin et al. 2024): the forward process ends at
    pure noise, where sampling starts. Needs --prediction v or x0."""
    epochs: int = 1000
    """Passes over the dataset."""
    batch_size: int = 128
    """Batch size; each epoch draws a fresh permutation and keeps the short last batch."""
    lr: float = 1e-3
    """Adam learning rate."""
    clip_norm: float = 1.0
    """Clip gradients to this global norm before each step (0 disables clipping)."""
    ema_decay: float = 0.9
    """EMA decay mu: shadow = (1 - mu) * param + mu * shadow, after every step."""
    loss: Literal["noise", "variational", "hybrid"] = "noise"
    """Training loss: the tutorial's noise estimation; its variational bound (trains a 4-output model: mean and
    log-variance); or Improved DDPM's hybrid, noise loss + hybrid_lambda * bound (a 4-output model: noise and
    log-variance)."""
    hybrid_lambda: float = 0.001
    """Weight lambda of the bound in --loss hybrid: L_simple + lambda * L_vlb, with L_vlb the bound summed over all T
    steps (Improved DDPM uses 0.001)."""
    prediction: Literal["eps", "v", "x0"] = "eps"
    """What the model is trained to predict: the noise eps (the tutorial), v = sqrt(abar) eps -
    sqrt(1 - abar) x_0 (Salimans & Ho 2022) or x_0; every sampler converts. v and x0 replace the
    target of the noise loss (--loss noise)."""
    sample_with: Literal["raw", "ema"] = "raw"
    """Parameters used for the final samples (the tutorial samples with the raw ones)."""
    n_samples: int = 10_000
    """Number of points sampled at the end of training; the run's final evaluation scores them."""
    normalize: bool = False
    """Train on the data standardized (minus its mean, divided by the standard deviation of all its
    coordinates) and map the samples back: the schedule then meets every dataset at unit scale (the
    tutorial's s_curve has std 0.1, its noise 0.01). The statistics are the training points'."""
    sampler: Literal["tutorial", "ddpm", "ddim", "dpm-solver++", "ode", "euler", "midpoint"] = "tutorial"
    """Sampler of the final samples and the evaluations: tutorial (its ancestral chain, noise at
    t = 0 included), ddpm (Ho et al. Algorithm 2, no noise at the last step), ddim (Song et al.
    2021), dpm-solver++ (Lu et al. 2022, 2M multistep) or ode (the probability-flow ODE, diffrax
    Tsit5, adaptive). Details: docs/samplers.md. A flow model (--method flow): euler or midpoint
    (K fixed steps from t = 0 to 1) or ode (its ODE, diffrax Tsit5, adaptive); docs/flow.md."""
    sample_steps: Optional[int] = None
    """K, the steps of ddpm, ddim, dpm-solver++, euler and midpoint: K of the T steps (default T;
    20 for dpm-solver++; T for euler, T // 2 for midpoint: T model evaluations). The tutorial sampler
    always takes T steps; the ODE chooses its own."""
    eta: float = 0.0
    """DDIM's eta: 0 is deterministic, 1 adds DDPM-like noise (used by --sampler ddim)."""
    variance: Literal["beta", "posterior"] = "beta"
    """Variance of each ddpm step: beta_t, or the posterior variance (1 - abar_{t-1}) /
    (1 - abar_t) beta_t (used by --sampler ddpm)."""
    timestep_spacing: Optional[Literal["leading", "trailing", "linspace"]] = None
    """Which K of the T steps ddpm, ddim and dpm-solver++ visit, as diffusers spaces them
    (default: leading for ddpm and ddim, linspace for dpm-solver++)."""
    ode_rtol: float = 1e-5
    """Relative tolerance of the ODE solver (--sampler ode and the likelihood)."""
    ode_atol: float = 1e-5
    """Absolute tolerance of the ODE solver (--sampler ode and the likelihood)."""
    seed: int = 0
    """Seed of the dataset, the initial weights, the data order and the noise."""
    seeds: int = 1
    """Train this many independent models (seeds seed, seed+1, ...) at once with vmap."""
    devices: int = 1
    """Spread training over this many devices. With --seeds 1, every batch is split across them
    (data parallel, parameters replicated, gradients all-reduced each step); with --seeds K > 1
    (K divisible by N), each device trains K / N whole models, with no communication. On CPU,
    create host devices first: XLA_FLAGS=--xla_force_host_platform_device_count=N. With several
    processes (--num-processes), N counts the devices of all processes."""
    coordinator_address: Optional[str] = None
    """Many processes: HOST:PORT of process 0, where the processes of one run meet
    (jax.distributed.initialize); give the same on every process, with --num-processes and --process-id. Under
    srun (SLURM) or mpirun (Open MPI) with several tasks, all three come from the launcher and may be left out;
    $JAX_COORDINATOR_ADDRESS is read when this is not given."""
    num_processes: Optional[int] = None
    """Number of processes of the run; unset, one process or the task count of srun / mpirun; 1 forces one process."""
    process_id: Optional[int] = None
    """Index of this process, 0 .. num_processes - 1; process 0 hosts the coordinator and writes the run folder."""
    distributed_timeout: int = 300
    """Seconds the processes of a multi-process run wait for each other (to join, and where they meet after the
    set-up and after each chunk) before stopping with one error line."""
    out_dir: Optional[str] = None
    """Run folder; by default runs/<dataset>-<timestamp>."""
    resume: bool = False
    """Continue the run in --out-dir from its last checkpoint."""
    checkpoint_every: int = 100
    """Write a checkpoint every this many epochs (and at the end)."""
    log_every: int = 100
    """Print the last-batch loss every this many epochs (the tutorial prints every 100)."""
    eval_every: int = 0
    """Evaluate sample quality every this many epochs (0: only at the end)."""
    n_eval: int = 2000
    """Points sampled (with the raw and with the EMA parameters) for each sample-quality evaluation."""
    no_plots: bool = False
    """Skip the pictures and the GIF."""
    preset: Literal["tutorial", "recommended", "recommended-diffusion"] = "tutorial"
    """Defaults to start from (ddpm_harness.config.PRESETS): the tutorial's; recommended, the best recipe
    measured (benchmarks/results/methods_1000.md): OT-CFM flow matching on the normalized data, EMA 0.9995,
    Euler with 20 steps; or recommended-diffusion, the best diffusion recipe (docs/samplers.md): v
    prediction on the normalized data, sigmoid 1e-5..0.2, EMA 0.9995, DPM-Solver++ with 20 steps. Options
    given on the command line override the preset."""
    conditional: bool = False
    """Train a class-conditional model (docs/guidance.md): the tutorial's model with a learned per-class
    scale, on a built-in dataset's classes (moons, circles, checkerboard, eight_gaussians) or a data
    file's third column of integer labels, (N, 3). The run's
    own samples draw the classes in the dataset's proportions, unguided; `python -m jax_ddpm.sample
    --class c --guidance w` draws one class with classifier-free guidance. --method diffusion (--loss noise)
    or flow; the sweep takes --cond-drop as a list."""
    cond_drop: float = 0.1
    """With --conditional: the probability that a training label is replaced by the null class, so that
    the one model also learns the unconditional prediction guidance needs (Ho & Salimans 2022)."""
    compile_cache: bool = True
    """Load compiled programs from JAX's persistent compilation cache (~/.cache/jax_ddpm/xla, or
    $JAX_DDPM_CACHE_DIR/xla) and store new ones there; --no-compile-cache compiles every program afresh."""

    @property
    def parameterization(self) -> str:
        """What the model predicts, for the sampler: "eps" (noise loss), "mean_logvar" (variational)
        or "eps_logvar" (hybrid)."""
        return {"noise": "eps", "variational": "mean_logvar", "hybrid": "eps_logvar"}[self.loss]

    @property
    def n_outputs(self) -> int:
        """2 for the tutorial's noise model; 4 (mean or noise, and log-variance) for the variational and
        hybrid losses."""
        return 2 if self.loss == "noise" else 4


def validate(config: Config) -> Config:
    """Raise ConfigError naming the first impossible hyper-parameter (the sampling options through
    `SamplerOptions.from_config`); return the config otherwise."""
    _check_numbers(config)
    _check_schedule_and_seeds(config)
    check_processes(config)
    _check_devices(config)
    check_conditional(config)
    if config.out_dir is not None and not config.out_dir.strip():
        raise ConfigError("--out-dir is empty; give a folder, or leave the option out for runs/<dataset>-<timestamp>")
    SamplerOptions.from_config(config)
    return config


def _option(name: str) -> str:
    return f"--{name.replace('_', '-')}"


POSITIVE_INTS = (
    "n_points",
    "num_steps",
    "epochs",
    "batch_size",
    "n_samples",
    "seeds",
    "devices",
    "checkpoint_every",
    "log_every",
    "n_eval",
)
# (field, test, what its value must be), checked in this order after the positive integers.
RANGES = (
    ("eval_every", lambda v: v >= 0, "must be >= 0"),
    ("data_noise", lambda v: v >= 0, "must be >= 0"),
    ("hybrid_lambda", lambda v: v >= 0, "must be >= 0"),
    ("lr", lambda v: v > 0, "must be positive"),
    ("clip_norm", lambda v: v >= 0, "must be >= 0 (0 disables clipping)"),
    ("ema_decay", lambda v: 0.0 <= v < 1.0, "must lie in [0, 1)"),
    ("flow_sigma", lambda v: v >= 0, "must be >= 0"),
)


def _check_numbers(config: Config) -> None:
    for field in dataclasses.fields(config):  # NaN passes every comparison below, and JSON cannot hold it
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{_option(field.name)} must be a finite number, got {value}")
    for name in POSITIVE_INTS:
        if getattr(config, name) < 1:
            raise ConfigError(f"{_option(name)} must be a positive integer, got {getattr(config, name)}")
    for name, ok, must in RANGES:
        if not ok(getattr(config, name)):
            raise ConfigError(f"{_option(name)} {must}, got {getattr(config, name)}")


def _check_schedule_and_seeds(config: Config) -> None:
    if config.schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {config.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if config.schedule != "cosine":
        for name in ("beta_start", "beta_end"):
            if not 0.0 < getattr(config, name) < 1.0:
                raise ConfigError(f"{_option(name)} must lie in (0, 1), got {getattr(config, name)}")
    if not 0 <= config.seed <= SEED_MAX:
        raise ConfigError(f"--seed must lie in [0, {SEED_MAX}], got {config.seed}")
    if config.seed + config.seeds - 1 > SEED_MAX:
        raise ConfigError(f"--seeds {config.seeds} from --seed {config.seed} go past the largest seed {SEED_MAX}")


def _check_devices(config: Config) -> None:
    if config.seeds > 1 and config.seeds % config.devices:
        raise ConfigError(
            f"--seeds {config.seeds} is not divisible by --devices {config.devices} "
            "(several seeds are split across the devices)"
        )
    if config.seeds == 1 and config.batch_size % config.devices:
        raise ConfigError(f"--batch-size {config.batch_size} is not divisible by --devices {config.devices}")


def check_conditional(config: Config) -> None:
    """--conditional and --cond-drop: what this version supports of them, one line for the rest."""
    if not config.conditional:
        if config.cond_drop != Config.cond_drop:
            raise ConfigError("--cond-drop applies only to a class-conditional run: add --conditional, or leave it out")
        return
    if not 0.0 <= config.cond_drop < 1.0:
        raise ConfigError(f"--cond-drop must lie in [0, 1), got {config.cond_drop}")
    if is_builtin(config.dataset) and config.dataset not in N_CLASSES:  # an unknown name: its own error, later
        raise ConfigError(
            f"--conditional needs a dataset with classes, and {config.dataset} has none: use one of "
            + ", ".join(N_CLASSES)
            + " or a data file of (N, 3) labelled points"
        )


SAMPLERS = ("tutorial", "ddpm", "ddim", "dpm-solver++", "ode", "euler", "midpoint")
FLOW_SAMPLERS = ("euler", "midpoint", "ode")  # the samplers of a flow model (--method flow)
METHODS = ("diffusion", "flow")
PREDICTIONS = ("eps", "v", "x0")
VARIANCES = ("beta", "posterior")


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """How a trained model is sampled, checked once when made (ConfigError, one sentence saying what to
    do): every sampler entry point takes it and trusts it. sample_steps and timestep_spacing hold their
    resolved values (K of the T steps and the spacing for ddpm, ddim and dpm-solver++; None for the
    tutorial sampler and the ODE); zero_terminal_snr says the schedule ends at alpha_bar = 0."""

    sampler: str = "tutorial"
    num_steps: int = 100
    sample_steps: Optional[int] = None
    prediction: str = "eps"
    eta: float = 0.0
    variance: str = "beta"
    timestep_spacing: Optional[str] = None
    rtol: float = 1e-5
    atol: float = 1e-5
    zero_terminal_snr: bool = False
    method: str = "diffusion"

    def __post_init__(self):
        _check_names(self)
        _check_values(self)
        if self.sampler in ("euler", "midpoint"):
            default = self.num_steps if self.sampler == "euler" else max(1, self.num_steps // 2)
            object.__setattr__(self, "sample_steps", self.sample_steps or default)
        if self.sampler in ("ddpm", "ddim", "dpm-solver++"):
            given, spacing = self.sample_steps, self.timestep_spacing or default_spacing(self.sampler)
            object.__setattr__(self, "sample_steps", given or default_sample_steps(self.sampler, self.num_steps))
            object.__setattr__(self, "timestep_spacing", spacing)
            _check_spacing(self, given)
        object.__setattr__(self, "eta", float(self.eta))
        object.__setattr__(self, "rtol", float(self.rtol))
        object.__setattr__(self, "atol", float(self.atol))

    @classmethod
    def from_config(cls, config) -> SamplerOptions:
        """The sampling options of a Config (or anything with its sampling fields), after the checks
        that pair them with its training options (--loss, --prediction)."""
        _check_training_pairs(config)
        return cls(
            sampler=config.sampler,
            num_steps=config.num_steps,
            sample_steps=config.sample_steps,
            prediction=config.prediction,
            eta=config.eta,
            variance=config.variance,
            timestep_spacing=config.timestep_spacing,
            rtol=config.ode_rtol,
            atol=config.ode_atol,
            zero_terminal_snr=config.zero_terminal_snr,
            method=getattr(config, "method", "diffusion"),
        )


def _check_names(options: SamplerOptions) -> None:
    for what, value, choices in (
        ("method", options.method, METHODS),
        ("sampler", options.sampler, SAMPLERS),
        ("prediction", options.prediction, PREDICTIONS),
        ("variance", options.variance, VARIANCES),
        ("timestep spacing", options.timestep_spacing, (None, *SPACINGS)),
    ):
        if value not in choices:
            shown = ", ".join(c for c in choices if c is not None)
            raise ConfigError(f"unknown {what} {value!r}: choose one of {shown}.")


def _check_values(options: SamplerOptions) -> None:
    name, steps = options.sampler, options.sample_steps
    _check_method_sampler(options)
    if options.zero_terminal_snr and options.prediction == "eps":
        raise ConfigError(
            "a zero-terminal-SNR schedule cannot be sampled with an eps-prediction model "
            "(x_0 = (x_T - eps) / 0 at the last step): use --prediction v or x0."
        )
    if name == "tutorial" and options.prediction != "eps":
        raise ConfigError(
            f"the tutorial sampler runs the tutorial's eps model only: use --sampler ddpm (the same "
            f"chain without noise at t = 0) or another sampler for --prediction {options.prediction}."
        )
    if steps is not None and name in ("tutorial", "ode"):
        what = "always takes all T" if name == "tutorial" else "chooses its own steps (set --ode-rtol/atol)"
        raise ConfigError(f"--sample-steps does not apply to the {name} sampler, which {what}: leave it out.")
    if steps is not None and not 1 <= steps <= options.num_steps:
        raise ConfigError(f"--sample-steps is {steps}, but it must be between 1 and T = {options.num_steps}.")
    if options.eta < 0:
        raise ConfigError(f"--eta is {options.eta}, but it must be >= 0 (0: deterministic DDIM, 1: DDPM-like noise).")
    for name, value in (("ode_rtol", options.rtol), ("ode_atol", options.atol)):
        if not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")


def _check_method_sampler(options: SamplerOptions) -> None:
    """A flow model's samplers against a diffusion model's, and the options only diffusion reads."""
    name = options.sampler
    if options.method == "flow":
        if name not in FLOW_SAMPLERS:
            raise ConfigError(
                f"--sampler {name} runs a diffusion model; a flow model (--method flow) samples with "
                "--sampler euler, midpoint or ode: add --sampler euler (or midpoint, ode)."
            )
        for what, value, default in (
            ("--prediction", options.prediction, "eps"),
            ("--timestep-spacing", options.timestep_spacing, None),
            ("--eta", options.eta, 0.0),
            ("--variance", options.variance, "beta"),
            ("--zero-terminal-snr", options.zero_terminal_snr, False),
        ):
            if value != default:
                raise ConfigError(
                    f"{what} {value} is a diffusion option; a flow model (--method flow) predicts a velocity "
                    f"on a straight path and has no use for it: leave {what} out (or use --method diffusion)."
                )
    elif name in ("euler", "midpoint"):
        raise ConfigError(
            f"--sampler {name} integrates a flow model's velocity; a diffusion model samples with tutorial, "
            "ddpm, ddim, dpm-solver++ or ode: add --method flow (and train a flow model), or choose one of those."
        )


def _check_spacing(options: SamplerOptions, given: Optional[int]) -> None:
    k, spacing = options.sample_steps, options.timestep_spacing
    ts = sampler_timesteps(options.sampler, options.num_steps, k, spacing)
    if given is not None and (len(np.unique(ts)) != len(ts) or len(ts) != k):
        raise ConfigError(
            f"{options.sampler} with --timestep-spacing {spacing} gives repeated or missing steps for "
            f"K = {k} of T = {options.num_steps}: choose a smaller K or another spacing."
        )


def _check_training_pairs(config) -> None:
    """The sampling options against what the model was trained to predict (--method, --loss, --prediction)."""
    _check_flow_training(config)
    if config.prediction != "eps" and config.loss != "noise":
        raise ConfigError(
            f"--prediction {config.prediction} replaces the noise loss's target; --loss {config.loss} "
            "trains its own parameterization: use --loss noise, or --prediction eps."
        )
    if config.loss == "variational" and config.sampler != "tutorial":
        raise ConfigError(
            f"--loss variational trains the mean of each tutorial step, which only its ancestral "
            f"chain can use: leave out --sampler {config.sampler} (or use --loss noise or hybrid)."
        )


def _check_flow_training(config) -> None:
    """--method flow against the diffusion-only training options, and the flow-only options under diffusion."""
    method = getattr(config, "method", "diffusion")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    coupling, sigma = getattr(config, "coupling", "independent"), getattr(config, "flow_sigma", 0.0)
    if method == "diffusion":
        if coupling != "independent" or sigma != 0.0:
            what = f"--coupling {coupling}" if coupling != "independent" else f"--flow-sigma {sigma}"
            raise ConfigError(
                f"{what} is a flow-matching option; a diffusion model pairs each point with its own noise: "
                "add --method flow, or leave it out."
            )
        return
    if coupling not in ("independent", "ot"):
        raise ConfigError(f"unknown coupling {coupling!r}: choose one of independent, ot.")
    if config.loss != "noise":
        raise ConfigError(
            f"--loss {config.loss} is a diffusion loss; flow matching (--method flow) trains its own "
            "(the velocity regression): leave --loss out (or use --method diffusion)."
        )
    processes = getattr(config, "num_processes", None)
    if coupling == "ot" and (processes or 1) > 1:
        raise ConfigError(
            "--coupling ot pairs each whole batch with one exact assignment, which one process solves: "
            "use one process with --coupling ot (--devices N is fine), or --coupling independent."
        )


# ---- presets -----------------------------------------------------------------------------------
# A preset is a set of defaults. `resolve_preset` gives every field the user did not set the
# preset's value; a field counts as set when it was named on the command line or differs from the
# tutorial's default. So `--preset recommended --ema-decay 0.99` keeps 0.99, and so does
# `--preset recommended --sample-with raw` (named, though it is the tutorial's default).
# "recommended" is OT-CFM (flow matching with minibatch exact optimal transport) on the normalized
# data, sampled with the EMA by Euler in 20 steps: at the tutorial's budget (1000 epochs, 3 seeds,
# n = 10,000) it had the lower sliced W2 than the diffusion recipe at every NFE from 1 to 20 on moons,
# swiss roll and s-curve (benchmarks/results/methods_1000.md; Euler at 20: 1.91x / 1.65x / 2.59x the
# floor against 2.65x / 2.26x / 2.87x). Its cost: an exact assignment per batch (docs/flow.md).
# "recommended-diffusion" is the best diffusion recipe, the candidate norm-sigmoid-0.2-v of
# `python -m benchmarks.recipe_search`, the only one of the three measured on s_curve
# (benchmarks/results/recipe_search.jsonl) within 3x its floor: without --normalize a schedule meets
# s_curve's std of 0.1 at a tenth of the scale it was made for. Its sampler is the cheapest of the best
# on moons (DPM-Solver++, 20 evaluations) and its EMA decay the best there. Trained and scored on the
# three datasets: section 5 of benchmarks/results/quality.md; docs/samplers.md says which targets it meets.
PRESETS: dict[str, dict[str, object]] = {
    "tutorial": {},
    "recommended": dict(
        method="flow",
        coupling="ot",
        normalize=True,
        ema_decay=0.9995,
        sample_with="ema",
        sampler="euler",
        sample_steps=20,
    ),
    "recommended-diffusion": dict(
        method="diffusion",
        schedule="sigmoid",
        beta_start=1e-5,
        beta_end=0.2,
        prediction="v",
        normalize=True,
        ema_decay=0.9995,
        sample_with="ema",
        sampler="dpm-solver++",  # K = 20, its default: not set here, so --sampler ddpm alone gives K = T
    ),
}


def preset_values(preset: str, method, argv: Sequence[str] | None) -> tuple[dict[str, object], set[str]]:
    """(the values of `preset`, the fields named in argv) once the preset is known and agrees with a --method
    named there (`_check_preset_method`; a sweep's `method` is a tuple): what a run's and a sweep's
    resolution start from."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    given = given_fields(argv)
    _check_preset_method(preset, method, given)
    return PRESETS[preset], given


def _check_preset_method(preset: str, method, given: set[str]) -> None:
    """Refuse a --method named on the command line that is not its --preset's (a flow recipe's options
    make no diffusion model, and the reverse): name the preset of that method instead."""
    wanted = PRESETS[preset].get("method")
    methods = method if isinstance(method, tuple) else (method,)  # a sweep's list
    if wanted is None or "method" not in given or methods == (wanted,):
        return
    other = [name for name, values in PRESETS.items() if values and values.get("method", "diffusion") != wanted]
    raise ConfigError(
        f"--preset {preset} is a --method {wanted} recipe; for --method {', '.join(methods)} use "
        f"--preset {' or '.join(other)}, or leave --method out."
    )


def given_fields(argv: Sequence[str] | None) -> set[str]:
    """Config fields named on a command line: --name, --name=value, and --no-name for flags."""
    names = {f.name for f in dataclasses.fields(Config)}
    given = set()
    for token in argv or ():
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0].replace("-", "_")
        if name in names:
            given.add(name)
        elif name.startswith("no_") and name[3:] in names:
            given.add(name[3:])
    return given


def resolve_preset(config: Config, argv: Sequence[str] | None = None) -> Config:
    """`config` with its preset's values for the fields the user did not set (see PRESETS): those
    not named in argv (the command line it was parsed from; None: none named) that still hold the
    tutorial's default."""
    preset, given = preset_values(config.preset, config.method, argv)
    defaults = Config()
    values = {
        name: value
        for name, value in preset.items()
        if name not in given and getattr(config, name) == getattr(defaults, name)
    }
    return dataclasses.replace(config, **values)


def config_from_dict(fields) -> Config:
    """A Config from a dict such as a run's config.json: unknown keys are ignored, missing ones take
    their default. ConfigError when it is not a dict or a value has not its field's type (a JSON
    integer is a float's value too)."""
    if not isinstance(fields, dict):
        raise ConfigError(f"a config is a JSON object, not {type(fields).__name__}")
    hints = typing.get_type_hints(Config)
    values = {}
    for name, value in fields.items():
        if name in hints:
            if not _has_type(value, hints[name]):
                raise ConfigError(f"{name} is {repr(value)[:80]}, not {_describe(hints[name])}")
            values[name] = float(value) if hints[name] is float else value
    return Config(**values)


def _has_type(value, hint) -> bool:
    if typing.get_origin(hint) is Literal:
        return isinstance(value, str) and value in typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union:  # Optional[str]
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint in (int, float):  # bool is an int to Python, not to a config
        return isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if typing.get_origin(hint) is typing.Union:
        return " or ".join("null" if h is type(None) else _describe(h) for h in typing.get_args(hint))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def check_processes(config: Config) -> None:
    """The multi-process options on their own (whether they fit the launcher is checked when joining)."""
    if config.num_processes is not None and config.num_processes < 1:
        raise ConfigError(f"--num-processes must be a positive integer, got {config.num_processes}")
    if config.process_id is not None:
        if config.process_id < 0:
            raise ConfigError(f"--process-id must be >= 0, got {config.process_id}")
        if config.num_processes is not None and config.process_id >= config.num_processes:
            raise ConfigError(
                f"--process-id must lie in 0 .. {config.num_processes - 1} "
                f"(--num-processes {config.num_processes}), got {config.process_id}"
            )
    if config.coordinator_address is not None:
        host, _, port = config.coordinator_address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"--coordinator-address must be HOST:PORT (a port in 1 .. 65535), got {config.coordinator_address!r}"
            )
    if config.distributed_timeout < 1:
        raise ConfigError(
            f"--distributed-timeout must be a positive number of seconds, got {config.distributed_timeout}"
        )


# The options that only choose how a trained model is sampled (the sampler and its settings).
SAMPLING_FIELDS = ("sampler", "sample_steps", "eta", "variance", "timestep_spacing", "ode_rtol", "ode_atol")
