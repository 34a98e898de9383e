"""What every sampler returns (`Samples`), and the adaptive ODE solver's settings and evaluation count,
shared by the diffusion samplers (`chains`) and the flow samplers (`flow`)."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

# The solver of the probability-flow ODE and its default tolerances (mixed error per entry:
# |err| <= atol + rtol |y|, RMS over the state, diffrax's PIDController).
ODE_SOLVER = "Tsit5"
ODE_RTOL = 1e-5
ODE_ATOL = 1e-5


@flax.struct.dataclass
class Samples:
    """What a sampler returns: x_0 (N, 2), the trajectory (S + 1, N, 2) with x_T first (None unless
    asked for), and the number of model evaluations (NFE, an int32 scalar)."""

    x_0: jax.Array
    trajectory: jax.Array | None
    nfe: jax.Array


def _nfe(solution) -> jax.Array:
    # Tsit5 under diffrax's PIDController with dt0=None: one evaluation to start (shared with the
    # initial step-size choice) and 6 per attempted step, accepted or rejected (tests/test_ode_likelihood.py
    # counts the calls).
    return (6 * solution.stats["num_steps"] + 1).astype(jnp.int32)
