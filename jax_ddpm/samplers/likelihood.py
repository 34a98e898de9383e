"""Exact negative log-likelihood through the probability-flow ODE (Song et al. 2021, "Score-Based
Generative Modeling through SDEs", sec. 4.3 and appendix D.2), with the exact divergence.

The ODE is `samplers`' one: in sigma = sqrt((1 - abar) / abar) and y = x / sqrt(abar) it reads
dy / dsigma = eps(x, t(sigma)), log alpha_bar linear between integer steps (`chains.continuous_time`).
Along it d log p(y(sigma)) / dsigma = -div_y eps, so integrating from the data (sigma = 0, y = x_0)
to t = T-1 (sigma_max):
    log p_0(x_0) = log p_Y(y_max) + int_0^sigma_max div_y eps dsigma,
    log p_Y(y_max) = log prior(x_{T-1}) + (d / 2) log abar_{T-1},   x_{T-1} = sqrt(abar_{T-1}) y_max
(the last term is the Jacobian of y = x / sqrt(abar)). In 2D the divergence is the trace of the 2x2
Jacobian of each point's eps (jax.jacrev: the model's `dense` layer has a custom VJP, which
forward mode cannot differentiate): exact, no Hutchinson estimator. Solved by diffrax's Tsit5
with PIDController(rtol, atol), as the ODE sampler.

The prior is N(0, I) on x at t = T-1, where every sampler starts; it is the exact marginal only when
alpha_bar_{T-1} is near 0 (not the tutorial's schedule: alpha_bar_{T-1} = 0.78), so pass the exact
marginal as `prior_logp` where it is known (the tests do for Gaussian data).

A flow model's NLL (`flow_nll_bits_per_dim`) integrates its own ODE, dx/dt = v(x, t), from the data at
t = 1 back to N(0, I) at t = 0 with the same exact divergence and solver.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import diffrax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jax_ddpm.samplers import chains
from jax_ddpm.schedule import Schedule


@flax.struct.dataclass
class Likelihood:
    """bits_per_dim (N,): -log p(x_0) / (d ln 2) per point; nfe: vector-field evaluations (each a
    model evaluation with its 2x2 Jacobian)."""

    bits_per_dim: jax.Array
    nfe: jax.Array


def standard_normal_logp(x: jax.Array) -> jax.Array:
    """log N(x; 0, I) per point: (N, d) -> (N,)."""
    return -0.5 * (jnp.sum(x**2, axis=-1) + x.shape[-1] * np.log(2 * np.pi))


def _augmented_vector_field(model_fn, schedule, prediction):
    """(y, delta) -> (eps, div_y eps): the ODE of `chains.ode` and its exact divergence per point."""
    eps_field = chains._ode_eps(model_fn, schedule, prediction)

    def vector_field(sigma, state, args):
        y, _ = state

        def eps_of_point(y_i):  # (2,) -> (2,), and the same as aux to get the value from the jvps
            out = eps_field(sigma, y_i[None], None)[0]
            return out, out

        jac, eps = jax.vmap(jax.jacrev(eps_of_point, has_aux=True))(y)  # (N, 2, 2), (N, 2)
        return eps, jnp.trace(jac, axis1=-2, axis2=-1)

    return vector_field


@functools.partial(jax.jit, static_argnames=("model_fn", "prediction", "prior_logp", "rtol", "atol", "max_steps"))
def _nll(model_fn, schedule, x_0, *, prediction, prior_logp, rtol, atol, max_steps):
    sigma_max = chains.ode_sigmas(schedule)[-1]
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(_augmented_vector_field(model_fn, schedule, prediction)),
        diffrax.Tsit5(),
        t0=jnp.zeros((), sigma_max.dtype),
        t1=sigma_max,
        dt0=None,
        y0=(x_0, jnp.zeros(x_0.shape[:1], x_0.dtype)),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
    )
    y_max, delta = solution.ys[0][-1], solution.ys[1][-1]
    alpha_prod_max = 1 / (1 + sigma_max**2)
    d = x_0.shape[-1]
    log_p_y = prior_logp(y_max * jnp.sqrt(alpha_prod_max)) + 0.5 * d * jnp.log(alpha_prod_max)
    log_p = log_p_y + delta
    return Likelihood(-log_p / (d * np.log(2.0)), chains._nfe(solution))


def nll_bits_per_dim(
    model_fn: chains.ModelFn,
    schedule: Schedule,
    x_0: jax.Array,
    *,
    prediction: str = "eps",
    prior_logp: Callable[[jax.Array], jax.Array] | None = None,
    rtol: float = chains.ODE_RTOL,
    atol: float = chains.ODE_ATOL,
    max_steps: int = 4096,
) -> Likelihood:
    """Negative log-likelihood of points x_0 (N, 2) in bits per dimension under the probability-flow ODE.

    model_fn(x, t) is called at float t in [-1, T-1] (t < 0 between the data and step 0: wrap an
    integer-step model with `chains.interpolate_steps`, which holds it at step 0 there).
    prior_logp(x_{T-1}) -> (N,): the log-density at t = T-1 (default N(0, I); static under jit).
    """
    if prediction not in ("eps", "v"):
        raise ValueError(
            f"the likelihood ODE starts at the data, where an {prediction!r}-prediction model's "
            "eps = (x - x0) / sigma is 0 / 0: use a model with --prediction eps or v."
        )
    return _nll(
        model_fn,
        schedule,
        x_0,
        prediction=prediction,
        prior_logp=prior_logp or standard_normal_logp,
        rtol=float(rtol),
        atol=float(atol),
        max_steps=max_steps,
    )


# --- a flow model's likelihood (--method flow) ---------------------------------------------------
# dx/dt = v(x, t) carries N(0, I) at t = 0 to the data at t = 1, and d log p_t(x_t) / dt = -div v, so
#     log p_1(x_1) = log p_0(x_0) + delta(0),   delta(0) = int_1^0 div v(x_t, t) dt,
# integrating (x, delta) backwards from (x_1, 0) at t = 1 to t = 0 (Chen et al. 2018; Meta's
# flow_matching `ODESolver.compute_likelihood` with exact_divergence=True computes the same).


def _flow_augmented_vector_field(velocity_fn):
    """(x, delta) -> (v, div_x v) of a velocity at float t: the exact 2x2 trace per point."""

    def vector_field(t, state, args):
        x, _ = state

        def v_of_point(x_i):
            out = velocity_fn(x_i[None], jnp.reshape(t, (1,)))[0]
            return out, out

        jac, v = jax.vmap(jax.jacrev(v_of_point, has_aux=True))(x)  # (N, 2, 2), (N, 2)
        return v, jnp.trace(jac, axis1=-2, axis2=-1)

    return vector_field


@functools.partial(jax.jit, static_argnames=("velocity_fn", "prior_logp", "rtol", "atol", "max_steps"))
def _flow_nll(velocity_fn, x_1, *, prior_logp, rtol, atol, max_steps):
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(_flow_augmented_vector_field(velocity_fn)),
        diffrax.Tsit5(),
        t0=jnp.ones((), x_1.dtype),
        t1=jnp.zeros((), x_1.dtype),
        dt0=None,
        y0=(x_1, jnp.zeros(x_1.shape[:1], x_1.dtype)),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
    )
    x_0, delta = solution.ys[0][-1], solution.ys[1][-1]
    log_p = prior_logp(x_0) + delta
    return Likelihood(-log_p / (x_1.shape[-1] * np.log(2.0)), chains._nfe(solution))


def flow_nll_bits_per_dim(
    velocity_fn: chains.ModelFn,
    x_1: jax.Array,
    *,
    prior_logp: Callable[[jax.Array], jax.Array] | None = None,
    rtol: float = chains.ODE_RTOL,
    atol: float = chains.ODE_ATOL,
    max_steps: int = 4096,
) -> Likelihood:
    """Negative log-likelihood of points x_1 (N, 2) in bits per dimension under a flow model's ODE.

    velocity_fn(x, t) at float t in [0, 1] (a trained model through `flow.grid_model`); prior_logp(x_0)
    -> (N,) the source's log-density at t = 0 (default N(0, I)). Tsit5 under PIDController(rtol, atol).
    """
    return _flow_nll(
        velocity_fn,
        x_1,
        prior_logp=prior_logp or standard_normal_logp,
        rtol=float(rtol),
        atol=float(atol),
        max_steps=max_steps,
    )
