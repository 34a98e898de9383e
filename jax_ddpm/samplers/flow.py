"""Samplers of a flow model (--method flow): Euler and midpoint with K fixed steps, and the adaptive ODE.

A flow model's velocity v(x, t) carries x from N(0, I) at t = 0 to the data at t = 1 (dx/dt = v). The
samplers call a continuous-time `model_fn(x, t)`, t a float array of shape (1,); `grid_model` makes one
from the tutorial's integer-step model (`jax_ddpm.objectives.flow`: trained at the grid times k / T).

- `euler`: x_{i+1} = x_i + h v(x_i, t_i), t_i = i h, h = 1 / K (K model evaluations).
- `midpoint`: x_{i+1} = x_i + h v(x_i + h/2 v(x_i, t_i), t_i + h/2) (2K evaluations); torchdiffeq's
  "midpoint", which Meta's flow_matching ODESolver runs (tests/test_flow_samplers.py proves both equal).
- `ode`: diffrax's Tsit5 with PIDController(rtol, atol) from t = 0 to 1, as the diffusion ODE sampler.

Each returns `chains.Samples`: the sample (at t = 1) in its x_0 field (the harness's name for "the
sample"), the trajectory (K + 1 states from t = 0 to 1; the ODE: T + 1 at the grid times and 1) and NFE.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jax_ddpm.samplers.samples import ODE_ATOL, ODE_RTOL, Samples, _nfe

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def grid_index(t: jax.Array, num_steps: int) -> jax.Array:
    """The grid index k of the grid time k / T nearest to t (ties upward), clipped to [0, T - 1]: int32."""
    return jnp.clip(jnp.floor(t * num_steps + 0.5), 0, num_steps - 1).astype(jnp.int32)


def grid_model(model_fn: ModelFn, num_steps: int) -> ModelFn:
    """A continuous-time velocity from a model trained at the grid times k / T (integer steps k): the
    model at the nearest grid time (`grid_index`). One call of model_fn per call."""

    def continuous_model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        return model_fn(x, grid_index(t, num_steps))

    return continuous_model_fn


def _times(k: int, dtype) -> tuple[jax.Array, jax.Array]:
    """t_i = i / K (K,) and h = 1 / K, computed in float64 and rounded once to `dtype`."""
    return jnp.asarray(np.arange(k) / k, dtype), jnp.asarray(1.0 / k, dtype)


@functools.partial(jax.jit, static_argnames=("model_fn", "sample_steps", "midpoint", "trajectory"))
def _fixed(model_fn, x_init, *, sample_steps, midpoint, trajectory):
    ts, h = _times(sample_steps, x_init.dtype)

    def body(x, t):
        t = jnp.reshape(t, (1,))
        v = model_fn(x, t)
        if midpoint:
            v = model_fn(x + v * (h / 2), t + h / 2)
        x = x + h * v
        return x, x if trajectory else None

    x_1, states = jax.lax.scan(body, x_init, ts)
    traj = jnp.concatenate([x_init[None], states]) if trajectory else None
    return Samples(x_1, traj, jnp.asarray(sample_steps * (2 if midpoint else 1), jnp.int32))


def euler(model_fn: ModelFn, x_init: jax.Array, *, sample_steps: int, trajectory: bool = False) -> Samples:
    """K = sample_steps Euler steps of dx/dt = model_fn(x, t) from x_init (N, 2) at t = 0 to t = 1."""
    return _fixed(model_fn, x_init, sample_steps=sample_steps, midpoint=False, trajectory=trajectory)


def midpoint(model_fn: ModelFn, x_init: jax.Array, *, sample_steps: int, trajectory: bool = False) -> Samples:
    """K = sample_steps explicit midpoint steps (2K model evaluations) from x_init (N, 2) at t = 0 to t = 1."""
    return _fixed(model_fn, x_init, sample_steps=sample_steps, midpoint=True, trajectory=trajectory)


@functools.partial(jax.jit, static_argnames=("model_fn", "num_steps", "rtol", "atol", "trajectory", "max_steps"))
def _ode(model_fn, x_init, *, num_steps, rtol, atol, trajectory, max_steps):
    import diffrax  # here, not at the top: only the ODE needs it (~0.4 s to import)

    dtype = x_init.dtype
    save_at = jnp.asarray(np.append(np.arange(num_steps) / num_steps, 1.0), dtype)  # grid times, then 1

    def vector_field(t, x, args):
        return model_fn(x, jnp.reshape(t, (1,)))

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        diffrax.Tsit5(),
        t0=jnp.zeros((), dtype),
        t1=jnp.ones((), dtype),
        dt0=None,
        y0=x_init,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(ts=save_at) if trajectory else diffrax.SaveAt(t1=True),
        max_steps=max_steps,
    )
    return Samples(solution.ys[-1], solution.ys if trajectory else None, _nfe(solution))


def ode(
    model_fn: ModelFn,
    x_init: jax.Array,
    *,
    num_steps: int,
    rtol: float = ODE_RTOL,
    atol: float = ODE_ATOL,
    trajectory: bool = False,
    max_steps: int = 4096,
) -> Samples:
    """dx/dt = model_fn(x, t) from t = 0 to 1 by diffrax's Tsit5, adaptive (PIDController(rtol, atol)).
    The trajectory holds x at the T grid times k / T and at t = 1 (T + 1, N, 2)."""
    return _ode(
        model_fn,
        x_init,
        num_steps=num_steps,
        rtol=float(rtol),
        atol=float(atol),
        trajectory=trajectory,
        max_steps=max_steps,
    )


def sample(options, model_fn: ModelFn, x_init: jax.Array, trajectory: bool = False) -> Samples:
    """The flow sampler `options.sampler` (euler, midpoint or ode) with its checked `SamplerOptions`;
    model_fn takes continuous time (`grid_model`)."""
    if options.sampler == "euler":
        return euler(model_fn, x_init, sample_steps=options.sample_steps, trajectory=trajectory)
    if options.sampler == "midpoint":
        return midpoint(model_fn, x_init, sample_steps=options.sample_steps, trajectory=trajectory)
    if options.sampler == "ode":
        return ode(
            model_fn, x_init, num_steps=options.num_steps, rtol=options.rtol, atol=options.atol, trajectory=trajectory
        )
    raise ValueError(f"{options.sampler!r} is not a flow sampler: use euler, midpoint or ode.")
