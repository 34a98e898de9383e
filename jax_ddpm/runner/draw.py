"""Drawing samples from a run's models: one model with the config's sampler (`draw_samples`), every
seed's chains (`sample_states`), large draws in chunks (`sample_points`), and K models at once
(`sample_models`: the raw and EMA parameters of every seed in one program, each model's points exactly those
`sample_points` draws for it, tests/test_batched_sampling.py).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_harness.config import SAMPLING_FIELDS, Config, SamplerOptions
from ddpm_harness.data import class_proportions, data_transform, n_classes_for
from ddpm_harness.memory import SAMPLE_CHUNK, available_memory_bytes, chain_bytes
from jax_ddpm import speed
from jax_ddpm.model import apply_model
from jax_ddpm.objectives.conditional import apply_class_model, n_classes_of
from jax_ddpm.objectives.guidance import guided_model_fn
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.runner.chunk import run_keys
from jax_ddpm.samplers import chains, flow
from jax_ddpm.samplers.tutorial import p_sample_for, scan_chain
from jax_ddpm.schedule import Schedule


@flax.struct.dataclass
class Guide:
    """What a class-conditional model (--conditional) is asked when it samples: a class per point,
    the null class for unconditional points, and the guidance weight w, a value of the compiled program."""

    labels: jax.Array  # (n,) int32 in 0 .. n_classes (n_classes: the null class)
    w: jax.Array  # () float32

    def part(self, start: int, size: int) -> "Guide":
        """The guide of points start .. start + size - 1 (a chunk of a large draw)."""
        return self.replace(labels=self.labels[start : start + size])


def class_labels(config: Config, which, n: int) -> np.ndarray:
    """(n,) int32 classes of a --conditional run's draw: `which` a class, "none" (the null class:
    unconditional) or "all": the training data's class proportions, stratified (each class's count
    rounded from its share) and shuffled with the run's seed, so the same n always gives the same classes."""
    n_classes = n_classes_for(config)
    if which == "none":
        return np.full(n, n_classes, np.int32)
    if which != "all":
        return np.full(n, int(which), np.int32)
    quantiles = (np.arange(n) + 0.5) / n
    labels = np.minimum(np.searchsorted(np.cumsum(class_proportions(config)), quantiles), n_classes - 1)
    return np.random.default_rng(config.seed).permutation(labels).astype(np.int32)


def guide_for(config: Config, n: int, which="all", w: float = 0.0) -> Optional[Guide]:
    """The guide of n points of class `which` (`class_labels`) at guidance w; None for a run without classes.
    A --conditional run's own samples and evaluations draw `which="all"` at w = 0."""
    if not config.conditional:
        return None
    return Guide(labels=jnp.asarray(class_labels(config, which, n)), w=jnp.asarray(w, jnp.float32))


def _model_fn(params: dict, config: Config, guide: Optional[Guide] = None) -> chains.ModelFn:
    """The model as the samplers call it: its eps/v/x0 output (the eps half of the hybrid loss's
    4-output model; a class model guided by `guide`), at float t through `chains.interpolate_steps` for the ODE;
    a flow model's velocity at float t in [0, 1] through `flow.grid_model` (the nearest of its T grid times)."""
    model_fn = functools.partial(apply_model, params)
    if guide is not None:  # (1 + w) * model(x, t, class) - w * model(x, t, null class)
        class_model_fn = functools.partial(apply_class_model, params)
        learned_variance = params["lin4"]["bias"].shape[-1] == 4
        model_fn = guided_model_fn(class_model_fn, guide.labels, guide.w, n_classes_of(params), learned_variance)
    if config is None:  # the tutorial's chain
        return model_fn
    if config.method == "flow":
        return flow.grid_model(model_fn, config.num_steps)
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
        _sample_from, static_argnames=("config", "trajectory"), compiler_options=speed.program_options("sampling")
    )


def _sample_from(params, schedule, key, x_T, guide=None, *, config, trajectory):
    model_fn = _model_fn(params, config, guide)
    return chains.sample(SamplerOptions.from_config(config), model_fn, schedule, x_T, key, trajectory)


@functools.lru_cache(maxsize=None)
def _jitted_guided_tutorial():
    return jax.jit(
        _guided_tutorial, static_argnames="parameterization", compiler_options=speed.program_options("sampling")
    )


def _guided_tutorial(params, schedule, key, x_T, guide, parameterization="eps"):
    """The tutorial's chain of a class model guided by `guide`, from x_T; step k's noise from fold_in(key, k + 1)."""
    p_sample = p_sample_for(params, schedule, parameterization)
    return scan_chain(_model_fn(params, None, guide), schedule, x_T.shape, x_T=x_T, key=key, p_sample=p_sample)


def draw_samples(
    params: dict,
    schedule: Schedule,
    config: Config,
    key: jax.Array,
    n: Optional[int] = None,
    x_T: Optional[jax.Array] = None,
    trajectory: bool = False,
    guide: Optional[Guide] = None,
) -> chains.Samples:
    """One model's samples with the config's sampler (--sampler, --sample-steps, --eta, ...): from
    x_T (n, 2) ~ N(0, I) drawn from fold_in(key, 0), or from the given x_T (N, 2); step noise from key.
    A --conditional run's model is guided by `guide` (default `guide_for(config, n)`: the classes in
    the data's proportions, w = 0).

    The tutorial sampler is `samplers.tutorial.sample_chain` itself (bit for bit the tutorial's default run);
    the others run as one program with x_T as its input, so a deterministic sampler started from the
    x_T it drew reproduces its chain exactly. With --normalize every state is mapped back to data
    units (x_T is given in model units, where it is N(0, I)).
    """
    if config.conditional and guide is None:
        guide = guide_for(config, n if x_T is None else x_T.shape[0])
    return _to_data(_draw(params, schedule, config, key, n, x_T, trajectory, guide), *data_transform(config))


def _to_data(samples: chains.Samples, shift: np.ndarray, scale: float) -> chains.Samples:
    if scale == 1.0 and not np.any(shift):
        return samples
    trajectory = None if samples.trajectory is None else samples.trajectory * scale + shift
    return samples.replace(x_0=samples.x_0 * scale + shift, trajectory=trajectory)


def _draw(params, schedule, config, key, n, x_T, trajectory, guide=None) -> chains.Samples:
    sampling_config = sampling_part(config)
    if config.sampler == "tutorial" and guide is not None:
        x_T = jax.random.normal(jax.random.fold_in(key, 0), (n, 2)) if x_T is None else x_T
        x_T = jnp.asarray(x_T, jnp.float32)
        states = _jitted_guided_tutorial()(params, schedule, key, x_T, guide, config.parameterization)
        return chains.Samples(states[-1], states if trajectory else None, jnp.asarray(config.num_steps, jnp.int32))
    if config.sampler == "tutorial":
        x_T = None if x_T is None else jnp.asarray(x_T, jnp.float32)
        return chains.tutorial(
            params, schedule, x_T, key=key, n=n, trajectory=trajectory, parameterization=config.parameterization
        )
    if x_T is None:
        x_T = jax.random.normal(jax.random.fold_in(key, 0), (n, 2))
    return _jitted_sample_from()(
        params, schedule, key, jnp.asarray(x_T, jnp.float32), guide, config=sampling_config, trajectory=trajectory
    )


def sampling_part(config: Config) -> Config:
    """The config with every field that does not change sampling reset, so that jit (which keys its
    cache on the static config) compiles one sampler program per sampling setup."""
    keep = (*SAMPLING_FIELDS, "prediction", "loss", "num_steps", "zero_terminal_snr", "method", "conditional")
    return Config(**{name: getattr(config, name) for name in keep})


def sample_states(
    params: dict,
    schedule: Schedule,
    config: Config,
    n: int,
    fold: Optional[int] = None,
    x_T: Optional[np.ndarray] = None,
    chunk: int = 0,
    guide: Optional[Guide] = None,
) -> tuple[np.ndarray, int]:
    """The reverse chains of every seed with the config's sampler, and its NFE: states (S + 1, n, 2),
    or (seeds, S + 1, n, 2) for several, x_T first (S = T for the tutorial sampler, K for ddpm, ddim
    and dpm-solver++, T + 1 for the ODE).

    Seed i samples with run_keys(seed + i)["sample"], folded with `fold` for the evaluations and,
    for chunk c > 0 of a large draw (`sample_points`), with c; x_T (n, 2), when given, starts every
    seed's chain. `guide`: a --conditional run's classes and w (`draw_samples`).
    """
    keys = sample_keys(config, fold)
    if chunk:
        keys = [jax.random.fold_in(k, chunk) for k in keys]

    def chain(p, key):
        out = draw_samples(p, schedule, config, key, n, x_T, trajectory=True, guide=guide)
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
    guide: Optional[Guide] = None,
):
    """n final samples (n, 2), or (seeds, n, 2), drawn SAMPLE_CHUNK points at a time into `out`
    (allocated when None; a memory-mapped .npy works), and the sampler's NFE; with `keep_chain`,
    (samples, the first chunk's chains, NFE) for the pictures. x_T (n, 2), when given, starts the chains;
    `guide` (n points' classes and w) guides a --conditional run's model.

    Points [c * SAMPLE_CHUNK, (c + 1) * SAMPLE_CHUNK) come from chunk c's keys (`sample_states`), so
    a draw of up to SAMPLE_CHUNK points is one chain, and the same n always gives the same points.
    """
    shape = (n, 2) if config.seeds == 1 else (config.seeds, n, 2)
    out = np.empty(shape, np.float32) if out is None else out
    first, nfe = None, 0
    for c, start in enumerate(range(0, n, SAMPLE_CHUNK)):
        size = min(SAMPLE_CHUNK, n - start)
        part = None if x_T is None else x_T[start : start + size]
        chunk_guide = None if guide is None else guide.part(start, size)
        chains, nfe = sample_states(params, schedule, config, size, fold=fold, x_T=part, chunk=c, guide=chunk_guide)
        out[..., start : start + size, :] = chains[..., -1, :, :]
        if keep_chain and first is None:
            first = chains
        del chains  # before the next chunk's chain is made
    return (out, first, nfe) if keep_chain else (out, nfe)


def final_samples(params: dict, config: Config, seed: int, n: int, x_T: Optional[np.ndarray] = None) -> np.ndarray:
    """n final samples (n, 2) of the config's sampler with seed's sampling key: from x_T ~ N(0, I),
    or from the given x_T (n, 2) with the step noise drawn from the same key."""
    out = draw_samples(params, run_schedule(config), config, run_keys(seed)["sample"], n, x_T)
    return np.asarray(out.x_0)


# ---- K models at once ----------------------------------------------------------------------------

MEMORY_BYTES = 1 << 30
"""About how much the reverse chains of the models sampled together may hold (sets `models_at_once`)."""


def sample_keys(config: Config, fold=None) -> list:
    """The sampling key of each of the config's seeds, as `sample_states` makes them."""
    keys = [run_keys(config.seed + i)["sample"] for i in range(config.seeds)]
    return keys if fold is None else [jax.random.fold_in(k, fold) for k in keys]


def models_at_once(config: Config, n: int) -> int:
    """Models sampled in one vmapped call: at least the config's seeds (what the memory check admits),
    more while their chains of n points fit MEMORY_BYTES and a quarter of the memory available."""
    one = chain_bytes(dataclasses.replace(config, seeds=1), n)
    budget = min(MEMORY_BYTES, (available_memory_bytes() or MEMORY_BYTES) // 4)
    return max(config.seeds, budget // one)


def sample_models(
    params, schedule: Schedule, config: Config, keys, n: int, chunk: Optional[int] = None, keep: Sequence[int] = (0,)
):
    """Final samples (K, n, 2), NFE (K,) (the last chunk's, as `sample_points` reports it) and the
    first chunk's chains (len(keep), S + 1, min(n, chunk), 2) of the models in `keep`, of K models: params
    with a leading model axis, one Schedule for all or one per model (leading axis), keys (K,) as
    `sample_keys` gives them; `chunk` points per chain (SAMPLE_CHUNK unless given: give n for
    `sample_states`' single chain). Models go in blocks whose chains fit the memory (`models_at_once`)."""
    keys, chunk = list(keys), chunk or SAMPLE_CHUNK
    at_once = models_at_once(config, min(n, chunk))
    parts = [
        _sample_block(
            _take(params, start, at_once),
            _block_schedule(schedule, start, at_once),
            config,
            keys[start : start + at_once],
            n,
            chunk,
            [k - start for k in keep if start <= k < start + at_once],
        )
        for start in range(0, len(keys), at_once)
    ]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def stack_models(trees: list, seeds: int):
    """One leading model axis over parameter trees that each hold `seeds` models (none when seeds is 1)."""
    with_axis = trees if seeds > 1 else [jax.tree_util.tree_map(lambda x: x[None], t) for t in trees]
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *with_axis)


def _take(tree, start: int, size: int):
    return jax.tree_util.tree_map(lambda x: x[start : start + size], tree)


def _block_schedule(schedule: Schedule, start: int, size: int) -> Schedule:
    return _take(schedule, start, size) if _per_model(schedule) else schedule


def _per_model(schedule: Schedule) -> bool:
    return jnp.ndim(schedule.betas) == 2


def _sample_block(params, schedule: Schedule, config: Config, keys: list, n: int, chunk: int, keep: list):
    out, nfe, first = np.empty((len(keys), n, 2), np.float32), None, None
    schedule_axis = 0 if _per_model(schedule) else None
    for c, start in enumerate(range(0, n, chunk)):
        size = min(chunk, n - start)
        chunk_keys = jnp.stack([jax.random.fold_in(k, c) if c else k for k in keys])
        states, chunk_nfe = _model_chains(params, schedule, config, chunk_keys, size, schedule_axis)
        states = np.asarray(states)
        out[:, start : start + size] = states[:, -1]
        nfe = np.asarray(chunk_nfe)  # the last chunk's, as sample_points reports it
        first = states[keep] if first is None else first
        del states  # before the next chunk's chains are made
    return out, nfe, first


# Whether the models of a block are sampled vmapped (one batched program), per backend. On XLA:CPU a vmapped
# chain's batched matmuls ran ~1.7x slower per model than one model's own chain (docs/speed.md), so the CPU runs
# each model's own compiled chain, one after another (dispatched without waiting; the same program for all); a
# GPU vmaps them. Either way each model's points are bit for bit its own (tests/test_batched_sampling.py).
VMAP_MODELS = {"cpu": False, "gpu": True, "tpu": True}


def _model_chains(params, schedule: Schedule, config: Config, keys, size: int, schedule_axis: Optional[int]):
    """(states (K, S + 1, size, 2), NFE (K,)) of K models' chains of `size` points (`draw_samples` with its
    states, as `sample_states` draws them): params and keys (K,) with a leading model axis, the schedule too
    when schedule_axis is 0."""

    def chain(p, s, k):
        drawn = draw_samples(p, s, config, k, size, trajectory=True)
        return drawn.trajectory, drawn.nfe

    if VMAP_MODELS.get(jax.default_backend(), True):
        return jax.vmap(chain, in_axes=(0, schedule_axis, 0))(params, schedule, keys)
    model = lambda tree, i: jax.tree_util.tree_map(lambda x: x[i], tree)  # noqa: E731
    own = [
        chain(model(params, i), model(schedule, i) if schedule_axis == 0 else schedule, keys[i])
        for i in range(len(keys))
    ]
    return tuple(np.stack([np.asarray(part[j]) for part in own]) for j in range(2))


def split_models(samples: np.ndarray, names: tuple, seeds: int) -> dict:
    """{name: (seeds, n, 2), or (n, 2) for one seed} from samples (len(names) * seeds, n, 2) stacked name by name."""
    per_name = samples.reshape(len(names), seeds, *samples.shape[1:])
    return {name: part if seeds > 1 else part[0] for name, part in zip(names, per_name)}
