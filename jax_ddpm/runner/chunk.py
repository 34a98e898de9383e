"""The compiled program a run executes: several epochs of the twin's step (`objectives.step.pure_train_step`),
its seeds and devices.

`make_train_chunk` compiles `n_epochs` epochs (`train_epoch`: the tutorial's epoch as one `lax.scan`)
into one program, vmapped over seeds (`Config.seeds`) and spread over devices (`Config.devices`: the
seeds split across them, or one seed's batches). Keys of optimizer step s come from fold_in(noise_key, s)
and of epoch k from fold_in(order_key, k), so the state at any epoch boundary (plus the config)
determines the rest of the run: that is what makes resume exact.

A sweep trains many models in one vmapped program (`jax_ddpm.sweep`) and must round exactly as a single
run does (tests/test_sweep.py). What makes that hold lives here, used by both: the gradient norm summed in
a fixed order (`ordered_sum`, `clip_by_global_norm`), the EMA decay as two rounded factors
(`objectives.step.EmaRate.of`: the twin's `EMA.update` with a per-model decay), a lone model run as one of
many (`_as_one_of_many`), and `run_optimizer`, the optimizer both build.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ddpm_harness.config import Config, ConfigError
from ddpm_harness.data import n_classes_for
from jax_ddpm import speed
from jax_ddpm.model import init_params
from jax_ddpm.objectives.conditional import class_train_step, init_class_params
from jax_ddpm.objectives.objective import loss_fn_for, noise_fn_for
from jax_ddpm.objectives.step import EmaRate, TrainState, batch_noise, pure_train_step
from jax_ddpm.schedule import Schedule
from jax_ddpm.speed import epoch_permutation


def ordered_sum(x: jax.Array) -> jax.Array:
    """The sum of every element of x, in a fixed order: halves added element-wise, zeros padding to a power of two.

    XLA:CPU orders a `reduce` by how it fuses and vectorises it, which changes with the program around it
    (a model alone, or vmapped among 16); element-wise adds it never reorders. So a sum taken this way
    rounds alike for a model trained alone and among the models of a sweep (tests/test_sweep.py).
    """
    x = x.reshape(-1)
    x = jnp.pad(x, (0, (1 << max(0, (x.size - 1).bit_length())) - x.size))
    while x.size > 1:
        x = x[: x.size // 2] + x[x.size // 2 :]
    return x[0]


def clip_by_global_norm(max_norm) -> optax.GradientTransformation:
    """optax.clip_by_global_norm with the norm summed by `ordered_sum`: the same formula, a fixed order."""

    def update_fn(updates, state, params=None):
        del params
        g_norm = jnp.sqrt(sum(ordered_sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(updates)))
        trigger = g_norm < max_norm
        return jax.tree_util.tree_map(
            lambda g: jax.lax.select(trigger, g, (g / g_norm.astype(g.dtype)) * max_norm), updates
        ), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def run_optimizer(lr, clip_norm, clipped: bool) -> optax.GradientTransformation:
    """The twin's make_optimizer (clipping, then Adam) with the clipping norm summed in a fixed order.
    `clipped` is given apart so that lr and clip_norm may be traced (a sweep's per-model values)."""
    adam = optax.adam(lr)
    return optax.chain(clip_by_global_norm(clip_norm), adam) if clipped else adam


def optimizer_for(config: Config) -> optax.GradientTransformation:
    """The optimizer a config asks for (--lr, --clip-norm)."""
    return run_optimizer(config.lr, config.clip_norm, clipped=config.clip_norm > 0)


def run_keys(seed: int) -> dict[str, jax.Array]:
    """The independent key streams of one run, all derived from its seed (raw uint32 keys)."""
    init, order, noise, sample = jax.random.split(jax.random.PRNGKey(seed), 4)
    return dict(init=init, order=order, noise=noise, sample=sample)


def init_train_state(
    seed: int, n_steps: int, n_outputs: int, optimizer: optax.GradientTransformation, n_classes: Optional[int] = None
) -> TrainState:
    """Fresh state for one seed: reference-distributed weights, EMA registered as a copy; with
    `n_classes`, the class-conditional model's (the same weights, class scales at one)."""
    return _state_of(*_fresh_model(seed, n_steps, n_outputs, n_classes), optimizer)


def _fresh_model(seed, n_steps: int, n_outputs: int, n_classes: Optional[int]) -> tuple[dict, jax.Array, jax.Array]:
    """(initial parameters, order key, noise key) of one seed (a Python int, or traced uint32)."""
    keys = run_keys(seed)
    if n_classes is None:
        params = init_params(keys["init"], n_steps, n_outputs)
    else:
        params = init_class_params(keys["init"], n_steps, n_classes, n_outputs)
    return params, keys["order"], keys["noise"]


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _fresh_models(seeds: jax.Array, n_steps: int, n_outputs: int, n_classes: Optional[int]):
    """`_fresh_model` of each of seeds (K,) uint32, stacked, in one compiled program (one per K). Eager
    initialisation runs ~30 small programs a seed, seed after seed: a 64-model sweep's warm set-up took 1.3 s
    that way and 0.5 s this way on the 2-core CPU; on an empty compile cache this one compile costs about
    what the small ones did there (docs/speed.md). The values are the same bit for bit (tests/test_parallel.py)."""
    return jax.vmap(lambda seed: _fresh_model(seed, n_steps, n_outputs, n_classes))(seeds)


def _state_of(params: dict, order_key, noise_key, optimizer: optax.GradientTransformation, models: int = 0):
    """The TrainState of fresh parameters; `models` > 0: stacked along a leading axis of that many."""
    shape = (models,) if models else ()
    init = jax.vmap(optimizer.init) if models else optimizer.init
    return TrainState(
        opt_step=jnp.zeros(shape, jnp.int32),
        epoch=jnp.zeros(shape, jnp.int32),
        params=params,
        ema_params=jax.tree_util.tree_map(jnp.array, params),
        opt_state=init(params),
        order_key=order_key,
        noise_key=noise_key,
    )


def train_epoch(
    state: TrainState,
    dataset: jax.Array,
    *,
    batch_size: int,
    train_step_fn: Callable,
    n_steps: int,
    batch_sharding: Optional[NamedSharding] = None,
    noise_fn: Callable = batch_noise,
    labels: Optional[jax.Array] = None,
) -> tuple[TrainState, dict]:
    """One pass of the tutorial's epoch loop over `dataset` (N, 2), compiled; returns the mean and last-batch loss.

    `train_step_fn(state, batch_x=, t=, e=)` is `pure_train_step` with its other arguments bound; with
    `labels` (N,) (a --conditional run), `train_step_fn(state, batch_x=, batch_y=, t=, e=)`, each batch's
    labels permuted with its points. A fresh
    permutation, one lax.scan over the full batches, then the short last batch as the tutorial takes it.
    Every step gets the t and e `batch_noise` draws for it, but the full batches' draws are made in one
    vectorised call before the scan: drawn step by step, threefry's small loops cost a noticeable part of
    a step on CPU. `noise_fn` draws them (`objective.noise_fn_for`: `batch_noise`, or flow matching's).
    """
    n, dim = dataset.shape
    n_full, rest = divmod(n, batch_size)
    permutation = epoch_permutation(jax.random.fold_in(state.order_key, state.epoch), n)
    shuffled = dataset[permutation]
    with_labels = {} if labels is None else dict(batch_y=labels[permutation])  # (N,)
    losses = []
    if n_full:
        # Every full batch: (n_full, B, 2), their t (n_full, B) and e (n_full, B, 2)
        batches = shuffled[: n_full * batch_size].reshape(n_full, batch_size, dim)
        opt_steps = state.opt_step + jnp.arange(n_full)
        t, e = jax.vmap(lambda s: noise_fn(state.noise_key, s, (batch_size, dim), n_steps, dataset.dtype))(opt_steps)
        xs = (batches, t, e)
        if batch_sharding is not None:
            xs = jax.lax.with_sharding_constraint(xs, batch_sharding)
        batch_ys = {k: y[: n_full * batch_size].reshape(n_full, batch_size) for k, y in with_labels.items()}
        state, full_losses = jax.lax.scan(
            lambda s, x_t_e_y: train_step_fn(s, batch_x=x_t_e_y[0][0], t=x_t_e_y[0][1], e=x_t_e_y[0][2], **x_t_e_y[1]),
            state,
            (xs, batch_ys),
        )
        losses.append(full_losses)
    if rest:  # the tutorial keeps the short last batch
        t, e = noise_fn(state.noise_key, state.opt_step, (rest, dim), n_steps, dataset.dtype)
        rest_ys = {k: y[n_full * batch_size :] for k, y in with_labels.items()}
        state, loss = train_step_fn(state, batch_x=shuffled[n_full * batch_size :], t=t, e=e, **rest_ys)
        losses.append(loss[None])
    losses = jnp.concatenate(losses)
    # The tutorial's mean epoch loss weights batches equally, as it prints single-batch losses.
    metrics = dict(loss=jnp.mean(losses), last_loss=losses[-1])
    return state.replace(epoch=state.epoch + 1), metrics


def make_train_chunk(
    config: Config,
    schedule: Schedule,
    optimizer: optax.GradientTransformation,
    n_epochs: int,
    mesh: Optional[Mesh] = None,
) -> Callable:
    """Compile `n_epochs` epochs into one program: (state, data) -> (state, per-epoch metrics).

    With `config.seeds > 1` the state carries a leading seed axis and the program is vmapped over
    it (data shared). With a `mesh` (axis 'data'), one seed has each batch split across its
    devices (parameters replicated, gradients all-reduced every step); several seeds are split
    instead (`shard_map`: each device trains seeds / devices whole models, no communication).
    """
    if config.conditional:  # data: (points (N, 2), labels (N,))
        train_step_fn = functools.partial(
            class_train_step,
            optimizer=optimizer,
            ema=EmaRate.constant(config.ema_decay),
            schedule=schedule,
            loss_fn=loss_fn_for(config),
        )
    else:
        train_step_fn = functools.partial(
            pure_train_step,
            optimizer=optimizer,
            ema=EmaRate.constant(config.ema_decay),
            schedule=schedule,
            n_steps=schedule.num_steps,
            loss_fn=loss_fn_for(config),
        )
    seeds_on_devices = mesh is not None and config.seeds > 1
    batch_sharding = NamedSharding(mesh, P(None, "data")) if mesh is not None and not seeds_on_devices else None
    epoch_fn = functools.partial(
        train_epoch,
        batch_size=config.batch_size,
        train_step_fn=train_step_fn,
        n_steps=schedule.num_steps,
        batch_sharding=batch_sharding,
        noise_fn=noise_fn_for(config),
    )

    def chunk(state, data):
        if config.conditional:
            points, labels = data
            return jax.lax.scan(lambda s, _: epoch_fn(s, points, labels=labels), state, None, length=n_epochs)
        return jax.lax.scan(lambda s, _: epoch_fn(s, data), state, None, length=n_epochs)

    if config.seeds > 1:
        chunk = jax.vmap(chunk, in_axes=(0, None))
    elif mesh is None:  # one model runs the program of many with a model axis of one: bit for bit a sweep's model
        chunk = _as_one_of_many(chunk)
    if seeds_on_devices:
        chunk = jax.shard_map(chunk, mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data"))
    return jax.jit(chunk, compiler_options=speed.program_options("training"))


def _as_one_of_many(chunk: Callable) -> Callable:
    """chunk(state, data) run as vmap(chunk) over a leading model axis of one. XLA:CPU compiles a
    lone model's program differently (a division by a broadcast scalar stays a division; with a
    model axis it becomes a multiplication by the reciprocal), and rounds differently; with the axis
    it rounds as each model of a vmapped sweep does (tests/test_sweep.py)."""
    many = jax.vmap(chunk, in_axes=(0, None))

    @functools.wraps(chunk)  # still compiled as jit(chunk)
    def one(state, data):
        add_axis = functools.partial(jax.tree_util.tree_map, lambda x: x[None])
        return jax.tree_util.tree_map(lambda x: x[0], many(add_axis(state), data))

    return one


def state_sharding(config: Config, mesh: Mesh) -> NamedSharding:
    """Where a run's state lives on `mesh`: seeds split along it, or one seed's replicated."""
    return NamedSharding(mesh, P("data") if config.seeds > 1 else P())


def init_states(config: Config, optimizer: optax.GradientTransformation, mesh: Optional[Mesh] = None) -> TrainState:
    """The initial state of a run: one seed, or `config.seeds` stacked on a leading axis; placed
    on `mesh` as `make_train_chunk` uses it when one is given."""
    n_classes = n_classes_for(config) if config.conditional else None
    seeds = np.arange(config.seed, config.seed + config.seeds, dtype=np.uint32)  # config: seeds < 2**32
    fresh = _fresh_models(seeds, config.num_steps, config.n_outputs, n_classes)
    if config.seeds == 1:
        state = _state_of(*jax.tree_util.tree_map(lambda x: x[0], fresh), optimizer)
    else:
        state = _state_of(*fresh, optimizer, models=config.seeds)
    return state if mesh is None else jax.device_put(state, state_sharding(config, mesh))


def make_mesh(n_devices: int, ot_models_split: bool = False) -> Optional[Mesh]:
    """A 1D 'data' mesh over the first n_devices devices, or None for a single device; ConfigError
    (the command lines' one-line refusal) when JAX sees fewer devices, or when models trained with
    --coupling ot would be split over devices (`ot_models_split`) off the CPU: the compiled assignment
    solver a GPU uses (`speed.linear_assignment`) does not compile inside shard_map (its while_loop
    mixes device-varying and replicated carries), where the CPU's host solver does."""
    if n_devices == 1:
        return None
    if ot_models_split and jax.default_backend() != "cpu":
        raise ConfigError(
            f"--coupling ot with several models split over --devices {n_devices} runs on the CPU only for now: "
            "use --devices 1, one seed per run, or --coupling independent"
        )
    devices = jax.devices()
    if len(devices) < n_devices:
        raise ConfigError(
            f"--devices {n_devices} asked for, but JAX sees {len(devices)} "
            f"({devices[0].platform}); on CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n_devices}"
        )
    return Mesh(np.array(devices[:n_devices]), ("data",))
