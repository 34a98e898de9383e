"""Train state, optimizer, EMA and the scan-fused training loop.

One pure `train_step(state, x_0) -> (state, loss)` (randomness drawn from the state's keys;
`update_step` takes it injected); `train_epoch` shuffles with a fresh permutation and scans over
the full batches, then takes the short last batch as the tutorial does; `make_train_chunk`
compiles several epochs into one program, optionally vmapped over seeds (`Config.seeds`) and
spread over devices (`Config.devices`: the seeds split across them, or one seed's batches).
Per-step keys come from `fold_in(key, step)` and per-epoch keys from `fold_in(key, epoch)`, so
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
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jax_ddpm import cpu_options
from ddpm_harness.config import Config
from jax_ddpm.losses import antithetic_timesteps, hybrid_loss, noise_estimation_loss, variational_loss
from jax_ddpm.model import init_params
from jax_ddpm.predictions import loss_fn_for
from jax_ddpm.schedule import Schedule


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: counters, parameters, their EMA, Adam's moments, keys."""

    step: jax.Array  # () int32, optimizer steps taken
    epoch: jax.Array  # () int32, epochs completed
    params: dict
    ema_params: dict
    opt_state: optax.OptState
    order_key: jax.Array  # permutation of epoch e: fold_in(order_key, e)
    noise_key: jax.Array  # t and e of step s: fold_in(noise_key, s)


def run_keys(seed: int) -> dict[str, jax.Array]:
    """The independent key streams of one run, all derived from its seed (raw uint32 keys)."""
    init, order, noise, sample = jax.random.split(jax.random.PRNGKey(seed), 4)
    return dict(init=init, order=order, noise=noise, sample=sample)


def make_optimizer(lr: float = 1e-3, clip_norm: float = 1.0) -> optax.GradientTransformation:
    """Global-norm clipping then Adam, as the tutorial's clip_grad_norm_ + optim.Adam."""
    adam = optax.adam(lr)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adam) if clip_norm > 0 else adam


def optimizer_for(config: Config) -> optax.GradientTransformation:
    """The optimizer a config asks for (--lr, --clip-norm)."""
    return make_optimizer(config.lr, config.clip_norm)


def ema_update(ema_params: dict, params: dict, mu: float) -> dict:
    """shadow = (1 - mu) * param + mu * shadow, the tutorial's EMA.update."""
    return optax.incremental_update(params, ema_params, 1.0 - mu)


def init_train_state(seed: int, n_steps: int, n_outputs: int,
                     optimizer: optax.GradientTransformation) -> TrainState:
    """Fresh state for one seed: reference-distributed weights, EMA registered as a copy."""
    keys = run_keys(seed)
    params = init_params(keys["init"], n_steps, n_outputs)
    return TrainState(step=jnp.zeros((), jnp.int32), epoch=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.array, params), opt_state=optimizer.init(params),
                      order_key=keys["order"], noise_key=keys["noise"])


def make_loss_fn(loss: str = "noise", hybrid_lambda: float = 0.001) -> Callable:
    """loss(params, schedule, x_0, t, e) for --loss noise | variational | hybrid."""
    losses = {"noise": noise_estimation_loss, "variational": variational_loss,
              "hybrid": functools.partial(hybrid_loss, hybrid_lambda=hybrid_lambda)}
    if loss not in losses:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(losses)}")
    return losses[loss]


def update_step(state: TrainState, x_0: jax.Array, t: jax.Array, e: jax.Array, *, schedule: Schedule,
                optimizer: optax.GradientTransformation, ema_decay: float,
                loss_fn: Callable = noise_estimation_loss) -> tuple[TrainState, jax.Array]:
    """One optimizer step on batch x_0 (B, 2) with given steps t (B,) and noise e (B, 2):
    loss and gradients, clip + Adam, then the EMA update (the tutorial's inner-loop body)."""
    loss, grads = jax.value_and_grad(loss_fn)(state.params, schedule, x_0, t, e)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                          ema_params=ema_update(state.ema_params, params, ema_decay))
    return state, loss


def step_noise(noise_key: jax.Array, step: jax.Array, shape: tuple[int, int],
               n_steps: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Antithetic steps t (B,) and noise e (B, D) of optimizer step `step`, from fold_in(noise_key, step)."""
    k_t, k_e = jax.random.split(jax.random.fold_in(noise_key, step))
    return antithetic_timesteps(k_t, shape[0], n_steps), jax.random.normal(k_e, shape, dtype)


def train_step(state: TrainState, x_0: jax.Array, **step_kwargs) -> tuple[TrainState, jax.Array]:
    """`update_step` with antithetic t and noise e drawn by `step_noise` for `state.step`."""
    t, e = step_noise(state.noise_key, state.step, x_0.shape, step_kwargs["schedule"].num_steps, x_0.dtype)
    return update_step(state, x_0, t, e, **step_kwargs)


def epoch_permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniform random permutation of range(n) (int32), about 3x faster on CPU than
    `jax.random.permutation`.

    XLA:CPU sorts a lone uint32 array several times faster than key-value pairs, so each round
    sorts random bits with the position packed into the low bits (all keys distinct: no ties to
    break) and applies the order it finds. Together the rounds order the items by the
    concatenation of their random bits, at least 3 log2(n) of them as `jax.random.permutation`
    draws, so two items tie on all of them with probability below 1/n per call. Falls back to
    `jax.random.permutation` when n leaves fewer than 8 random bits a round.
    """
    index_bits = max(1, (n - 1).bit_length())
    random_bits = 32 - index_bits
    if random_bits < 8:
        return jax.random.permutation(key, n)
    low = jnp.uint32((1 << index_bits) - 1)
    positions = jnp.arange(n, dtype=jnp.uint32)
    perm = positions
    for round_key in jax.random.split(key, -(-3 * index_bits // random_bits)):
        packed = (jax.random.bits(round_key, (n,), jnp.uint32) & ~low) | positions
        perm = perm[jnp.sort(packed) & low]
    return perm.astype(jnp.int32)


def train_epoch(state: TrainState, data: jax.Array, *, batch_size: int, update_fn: Callable,
                num_steps: int, batch_sharding: Optional[NamedSharding] = None) -> tuple[TrainState, dict]:
    """One pass over `data` (N, 2) in a fresh random order; returns the mean and last-batch loss.

    `update_fn(state, x_0, t, e)` is `update_step` with its keywords bound. Every step gets the t
    and e `train_step` would draw, but the full batches' draws are made in one vectorised call
    before the scan: drawn step by step, threefry's small loops cost about 70 us of a ~450 us
    step on CPU.
    """
    n, dim = data.shape
    n_full, rest = divmod(n, batch_size)
    perm = epoch_permutation(jax.random.fold_in(state.order_key, state.epoch), n)
    shuffled = data[perm]
    losses = []
    if n_full:
        batches = shuffled[: n_full * batch_size].reshape(n_full, batch_size, dim)
        steps = state.step + jnp.arange(n_full)
        t, e = jax.vmap(lambda s: step_noise(state.noise_key, s, (batch_size, dim), num_steps, data.dtype))(steps)
        xs = (batches, t, e)  # (n_full, B, 2), (n_full, B), (n_full, B, 2)
        if batch_sharding is not None:
            xs = jax.lax.with_sharding_constraint(xs, batch_sharding)
        state, full_losses = jax.lax.scan(lambda s, x_t_e: update_fn(s, *x_t_e), state, xs)
        losses.append(full_losses)
    if rest:  # the tutorial keeps the short last batch
        t, e = step_noise(state.noise_key, state.step, (rest, dim), num_steps, data.dtype)
        state, last = update_fn(state, shuffled[n_full * batch_size:], t, e)
        losses.append(last[None])
    losses = jnp.concatenate(losses)
    # The tutorial's mean epoch loss weights batches equally, as it prints single-batch losses.
    metrics = dict(loss=jnp.mean(losses), last_loss=losses[-1])
    return state.replace(epoch=state.epoch + 1), metrics


def make_train_chunk(config: Config, schedule: Schedule, optimizer: optax.GradientTransformation,
                     n_epochs: int, mesh: Optional[Mesh] = None) -> Callable:
    """Compile `n_epochs` epochs into one program: (state, data) -> (state, per-epoch metrics).

    With `config.seeds > 1` the state carries a leading seed axis and the program is vmapped over
    it (data shared). With a `mesh` (axis 'data'), one seed has each batch split across its
    devices (parameters replicated, gradients all-reduced every step); several seeds are split
    instead (`shard_map`: each device trains seeds / devices whole models, no communication).
    """
    update_fn = functools.partial(update_step, schedule=schedule, optimizer=optimizer,
                                  ema_decay=config.ema_decay,
                                  loss_fn=loss_fn_for(config))
    seeds_on_devices = mesh is not None and config.seeds > 1
    batch_sharding = NamedSharding(mesh, P(None, "data")) if mesh is not None and not seeds_on_devices else None
    epoch_fn = functools.partial(train_epoch, batch_size=config.batch_size, update_fn=update_fn,
                                 num_steps=schedule.num_steps, batch_sharding=batch_sharding)

    def chunk(state, data):
        return jax.lax.scan(lambda s, _: epoch_fn(s, data), state, None, length=n_epochs)

    if config.seeds > 1:
        chunk = jax.vmap(chunk, in_axes=(0, None))
    if seeds_on_devices:
        chunk = jax.shard_map(chunk, mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data"))
    return jax.jit(chunk, compiler_options=cpu_options.on_cpu(cpu_options.TRAINING))


def state_sharding(config: Config, mesh: Mesh) -> NamedSharding:
    """Where a run's state lives on `mesh`: seeds split along it, or one seed's replicated."""
    return NamedSharding(mesh, P("data") if config.seeds > 1 else P())


def init_states(config: Config, optimizer: optax.GradientTransformation, mesh: Optional[Mesh] = None) -> TrainState:
    """The initial state of a run: one seed, or `config.seeds` stacked on a leading axis; placed
    on `mesh` as `make_train_chunk` uses it when one is given."""
    if config.seeds == 1:
        state = init_train_state(config.seed, config.num_steps, config.n_outputs, optimizer)
    else:
        states = [init_train_state(config.seed + i, config.num_steps, config.n_outputs, optimizer)
                  for i in range(config.seeds)]
        state = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)
    return state if mesh is None else jax.device_put(state, state_sharding(config, mesh))


def make_mesh(n_devices: int) -> Optional[Mesh]:
    """A 1D 'data' mesh over the first n_devices devices, or None for a single device."""
    if n_devices == 1:
        return None
    devices = jax.devices()
    if len(devices) < n_devices:
        raise ValueError(f"--devices {n_devices} asked for, but JAX sees {len(devices)} "
                         f"({devices[0].platform}); on CPU set "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={n_devices}")
    return Mesh(np.array(devices[:n_devices]), ("data",))
