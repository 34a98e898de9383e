"""The tutorial's training loop: Adam, clip_grad_norm_(1.), EMA(0.9), fresh permutation each epoch.

JAX twin of torch_reference/training.py. `train_step` is the body of the inner loop, with t and e injectable;
`train_epoch` is one pass of the loop itself: a fresh permutation, one lax.scan over the full
batches, then the short last batch as the tutorial takes it. The JAX state is a `TrainState` pytree
(parameters, their EMA, Adam's state, counters, keys) that every step returns anew.

Beyond the tutorial, below the twin: `make_train_chunk` compiles several epochs into one program,
optionally vmapped over seeds (`Config.seeds`) and spread over devices (`Config.devices`: the seeds
split across them, or one seed's batches); `make_loss_fn` picks the loss (--loss). Keys of
optimizer step s come from `fold_in(noise_key, s)` and of epoch e from `fold_in(order_key, e)`, so
the state at any epoch boundary (plus the config) determines the rest of the run: that is what
makes resume exact.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ddpm_harness.config import Config, ConfigError
from jax_ddpm import speed
from jax_ddpm.losses import antithetic_timesteps, loss_variational, noise_estimation_loss
from jax_ddpm.model import init_params
from jax_ddpm.objectives.predictions import loss_fn_for
from jax_ddpm.objectives.variance import hybrid_loss
from jax_ddpm.schedule import Schedule
from jax_ddpm.speed import epoch_permutation


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: counters, parameters, their EMA, Adam's moments, keys."""

    opt_step: jax.Array  # () int32, optimizer steps taken
    epoch: jax.Array  # () int32, epochs completed
    params: dict
    ema_params: dict
    opt_state: optax.OptState
    order_key: jax.Array  # permutation of epoch e: fold_in(order_key, e)
    noise_key: jax.Array  # t and e of optimizer step s: fold_in(noise_key, s)


def ema_update(ema_params: dict, params: dict, mu: float) -> dict:
    """shadow = (1 - mu) * param + mu * shadow, the tutorial's EMA.update. `mu` may also be an
    `EmaRate` (a sweep's per-model decay, traced)."""
    if isinstance(mu, EmaRate):
        return jax.tree_util.tree_map(lambda new, old: mu.step * new + mu.keep * old, params, ema_params)
    return optax.incremental_update(params, ema_params, 1.0 - mu)


def noise_loss(
    params: dict, batch_x: jax.Array, schedule: Schedule, n_steps: int, t: jax.Array, e: jax.Array
) -> jax.Array:
    """The loss train_step trains with unless told otherwise: the tutorial's, on `schedule`'s arrays."""
    return noise_estimation_loss(
        params, batch_x, schedule.alphas_bar_sqrt, schedule.one_minus_alphas_bar_sqrt, n_steps, t=t, e=e
    )


def train_step(state, optimizer, ema_mu, batch_x, schedule, n_steps, t=None, e=None, loss_fn=noise_loss):
    """One optimizer step on batch_x (B, 2): loss and gradients, clip + Adam (both in `optimizer`), then
    the EMA update; returns (new state, loss). Give t (B,) and e (B, 2) both, or neither: then they
    are drawn by `batch_noise` for `state.opt_step`. `loss_fn(params, batch_x, schedule, n_steps, t, e)`."""
    if t is None:
        t, e = batch_noise(state.noise_key, state.opt_step, batch_x.shape, n_steps, batch_x.dtype)
    # Compute the loss.
    # Backward pass: compute gradient of the loss with respect to parameters
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch_x, schedule, n_steps, t, e)
    # Perform gradient clipping (make_optimizer chains it before Adam)
    # Calling the step function to update the parameters
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Update the exponential moving average
    ema_params = ema_update(state.ema_params, params, ema_mu)
    state = state.replace(opt_step=state.opt_step + 1, params=params, opt_state=opt_state, ema_params=ema_params)
    return state, loss


def batch_noise(
    noise_key: jax.Array, opt_step: jax.Array, shape: tuple[int, int], n_steps: int, dtype=jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """Antithetic diffusion steps t (B,) and noise e (B, D) of optimizer step `opt_step`, from
    fold_in(noise_key, opt_step)."""
    k_t, k_e = jax.random.split(jax.random.fold_in(noise_key, opt_step))
    return antithetic_timesteps(k_t, shape[0], n_steps), jax.random.normal(k_e, shape, dtype)


def make_optimizer(
    lr: float = 1e-3, clip_norm: float = 1.0, clipped: Optional[bool] = None
) -> optax.GradientTransformation:
    """Global-norm clipping then Adam, as the tutorial's clip_grad_norm_ + optim.Adam. `clipped`
    (default: clip_norm > 0) lets lr and clip_norm be traced arrays (a sweep's per-model values)."""
    adam = optax.adam(lr)
    return (
        optax.chain(clip_by_global_norm(clip_norm), adam) if (clip_norm > 0 if clipped is None else clipped) else adam
    )


def train_epoch(
    state: TrainState,
    dataset: jax.Array,
    *,
    batch_size: int,
    train_step_fn: Callable,
    n_steps: int,
    batch_sharding: Optional[NamedSharding] = None,
) -> tuple[TrainState, dict]:
    """One pass of the tutorial's epoch loop over `dataset` (N, 2); returns the mean and last-batch loss.

    `train_step_fn(state, batch_x=, t=, e=)` is `train_step` with its other arguments bound. Every
    step gets the t and e `batch_noise` draws for it, but the full batches' draws are made in one
    vectorised call before the scan: drawn step by step, threefry's small loops cost a noticeable
    part of a step on CPU.
    """
    n, dim = dataset.shape
    n_full, rest = divmod(n, batch_size)
    permutation = epoch_permutation(jax.random.fold_in(state.order_key, state.epoch), n)
    shuffled = dataset[permutation]
    losses = []
    if n_full:
        # Retrieve every full batch: (n_full, B, 2), their t (n_full, B) and e (n_full, B, 2)
        batches = shuffled[: n_full * batch_size].reshape(n_full, batch_size, dim)
        opt_steps = state.opt_step + jnp.arange(n_full)
        t, e = jax.vmap(lambda s: batch_noise(state.noise_key, s, (batch_size, dim), n_steps, dataset.dtype))(opt_steps)
        xs = (batches, t, e)
        if batch_sharding is not None:
            xs = jax.lax.with_sharding_constraint(xs, batch_sharding)
        state, full_losses = jax.lax.scan(
            lambda s, x_t_e: train_step_fn(s, batch_x=x_t_e[0], t=x_t_e[1], e=x_t_e[2]), state, xs
        )
        losses.append(full_losses)
    if rest:  # the tutorial keeps the short last batch
        t, e = batch_noise(state.noise_key, state.opt_step, (rest, dim), n_steps, dataset.dtype)
        state, loss = train_step_fn(state, batch_x=shuffled[n_full * batch_size :], t=t, e=e)
        losses.append(loss[None])
    losses = jnp.concatenate(losses)
    # The tutorial's mean epoch loss weights batches equally, as it prints single-batch losses.
    metrics = dict(loss=jnp.mean(losses), last_loss=losses[-1])
    return state.replace(epoch=state.epoch + 1), metrics


# Beyond the tutorial: the run's compiled program, its losses, seeds and devices.


@flax.struct.dataclass
class EmaRate:
    """An EMA decay as the two float32 factors `optax.incremental_update(params, ema, 1.0 - mu)`
    multiplies by, rounded from Python's float64 arithmetic as it rounds them: step = 1 - mu, keep =
    1 - step. Traced (one per model of a sweep), they give the EMA of a float `mu` bit for bit,
    which `1.0 - mu` on a float32 array would not (1 - float32(0.9) is not float32(0.1))."""

    step: jax.Array  # () float32
    keep: jax.Array  # () float32

    @classmethod
    def of(cls, mu: float) -> "EmaRate":
        step = 1.0 - float(mu)
        return cls(step=np.float32(step), keep=np.float32(1.0 - step))


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


def optimizer_for(config: Config) -> optax.GradientTransformation:
    """The optimizer a config asks for (--lr, --clip-norm)."""
    return make_optimizer(config.lr, config.clip_norm)


def run_keys(seed: int) -> dict[str, jax.Array]:
    """The independent key streams of one run, all derived from its seed (raw uint32 keys)."""
    init, order, noise, sample = jax.random.split(jax.random.PRNGKey(seed), 4)
    return dict(init=init, order=order, noise=noise, sample=sample)


def init_train_state(seed: int, n_steps: int, n_outputs: int, optimizer: optax.GradientTransformation) -> TrainState:
    """Fresh state for one seed: reference-distributed weights, EMA registered as a copy."""
    keys = run_keys(seed)
    params = init_params(keys["init"], n_steps, n_outputs)
    return TrainState(
        opt_step=jnp.zeros((), jnp.int32),
        epoch=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree_util.tree_map(jnp.array, params),
        opt_state=optimizer.init(params),
        order_key=keys["order"],
        noise_key=keys["noise"],
    )


def make_loss_fn(loss: str = "noise", hybrid_lambda: float = 0.001) -> Callable:
    """loss_fn(params, batch_x, schedule, n_steps, t, e) of train_step for --loss noise | variational | hybrid."""

    def variational(params, batch_x, schedule, n_steps, t, e):
        return loss_variational(
            params,
            batch_x,
            schedule.alphas_bar_sqrt,
            schedule.one_minus_alphas_bar_sqrt,
            schedule.posterior_mean_coef_1,
            schedule.posterior_mean_coef_2,
            schedule.posterior_log_variance_clipped,
            n_steps,
            t=t,
            noise=e,
        )

    def hybrid(params, batch_x, schedule, n_steps, t, e):
        return hybrid_loss(params, schedule, batch_x, t, e, hybrid_lambda)

    losses = {"noise": noise_loss, "variational": variational, "hybrid": hybrid}
    if loss not in losses:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(losses)}")
    return losses[loss]


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
    train_step_fn = functools.partial(
        train_step,
        optimizer=optimizer,
        ema_mu=config.ema_decay,
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
    )

    def chunk(state, data):
        return jax.lax.scan(lambda s, _: epoch_fn(s, data), state, None, length=n_epochs)

    if config.seeds > 1:
        chunk = jax.vmap(chunk, in_axes=(0, None))
    elif mesh is None:  # one model runs the program of many with a model axis of one: bit for bit a sweep's model
        chunk = _as_one_of_many(chunk)
    if seeds_on_devices:
        chunk = jax.shard_map(chunk, mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data"))
    return jax.jit(chunk, compiler_options=speed.on_cpu(speed.TRAINING))


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
    if config.seeds == 1:
        state = init_train_state(config.seed, config.num_steps, config.n_outputs, optimizer)
    else:
        states = [
            init_train_state(config.seed + i, config.num_steps, config.n_outputs, optimizer)
            for i in range(config.seeds)
        ]
        state = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)
    return state if mesh is None else jax.device_put(state, state_sharding(config, mesh))


def make_mesh(n_devices: int) -> Optional[Mesh]:
    """A 1D 'data' mesh over the first n_devices devices, or None for a single device; ConfigError
    (the command lines' one-line refusal) when JAX sees fewer devices."""
    if n_devices == 1:
        return None
    devices = jax.devices()
    if len(devices) < n_devices:
        raise ConfigError(
            f"--devices {n_devices} asked for, but JAX sees {len(devices)} "
            f"({devices[0].platform}); on CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n_devices}"
        )
    return Mesh(np.array(devices[:n_devices]), ("data",))
