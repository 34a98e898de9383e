"""jax_ddpm.samplers.flow against Meta's flow_matching 1.0.10 (Lipman et al. 2024), a library nobody here wrote.

Its `ODESolver` (torchdiffeq's fixed-grid euler and midpoint on a time grid of K + 1 points from 0 to 1)
drives the PyTorch reference's ConditionalModel with our weights (`jax_ddpm.convert.flax_to_torch`), its
time mapped to the model's grid index as ours maps it (`flow.grid_index`: the nearest grid time k / T);
ours runs the same weights from the same x_init. K divides T (and 2K divides T for midpoint) so that
every evaluation time lies on the grid, where float32 rounding of t cannot choose another index.
Its likelihood (`ODESolver.compute_likelihood`, exact divergence, dopri5) agrees with ours (Tsit5)
within the solvers' tolerances on a smooth velocity (the Gaussian's closed form): the grid model's
velocity jumps at every grid time, where two adaptive solvers agree only to ~1e-3 bits/dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flow_matching.solver import ODESolver

from ddpm_harness.config import SamplerOptions
from jax_ddpm.convert import flax_to_torch
from jax_ddpm.model import apply_model, init_params
from jax_ddpm.samplers import flow, likelihood
from parity_tests.precision import FLOAT64
from torch_reference.model import ConditionalModel

pytestmark = pytest.mark.torch  # compares with flow_matching (torch) and the PyTorch reference

T = 100
N = 128
# K steps of a float32 network on both sides, differing only in rounding (torchdiffeq's step sizes are
# differences of its float32 time grid, ours 1 / K): measured <= 2.3e-7 of max |x| (K up to 100); allow 1e-5.
REL = 1e-5


def velocity_fields(seed: int = 0):
    """(our grid model in JAX, the same weights as a torch velocity(x, t) on the same grid)."""
    params = init_params(jax.random.PRNGKey(seed), T)
    model = ConditionalModel(T)
    model.load_state_dict(flax_to_torch(jax.tree_util.tree_map(np.asarray, params)))

    def torch_velocity(x, t):
        k = torch.clamp(torch.floor(t.double() * T + 0.5), 0, T - 1).long()
        return model(x, k.expand(x.shape[0]))

    return flow.grid_model(functools.partial(apply_model, params), T), torch_velocity


@pytest.mark.parametrize("method, k", [("euler", 20), ("midpoint", 10)])
def test_fixed_step_samples_equal_ode_solver(method, k):
    ours_fn, torch_velocity = velocity_fields()
    x_init = np.random.default_rng(0).normal(size=(N, 2)).astype(np.float32)
    with torch.no_grad():
        ref = ODESolver(velocity_model=torch_velocity).sample(
            x_init=torch.from_numpy(x_init),
            step_size=None,
            method=method,
            time_grid=torch.linspace(0.0, 1.0, k + 1),
            return_intermediates=True,
        )
    out = flow.sample(SamplerOptions(method, T, sample_steps=k, method="flow"), ours_fn, jnp.asarray(x_init), True)
    ref = ref.numpy()
    assert ref.shape == out.trajectory.shape == (k + 1, N, 2)
    scale = np.max(np.abs(ref))
    np.testing.assert_allclose(np.asarray(out.trajectory), ref, rtol=0, atol=REL * scale)


M, S = np.array([1.5, -0.5]), 0.4  # Gaussian data N(M, S^2 I): tests/test_flow.py's closed-form velocity


def gaussian_velocity(x, t):
    """The exact marginal velocity of N(M, S^2 I) data (tests/test_flow.py), for either framework: t (1,) or ()."""
    t = t.reshape(())
    m = x.new_tensor(M) if isinstance(x, torch.Tensor) else jnp.asarray(M, x.dtype)
    var = (1 - t) ** 2 + t**2 * S**2
    return m + (t * S**2 - (1 - t)) / var * (x - t * m)


def test_likelihood_agrees_with_compute_likelihood():
    """The same smooth velocity (the Gaussian's, float64) through both likelihood computations: Meta's
    exact-divergence compute_likelihood (torchdiffeq's dopri5) and ours (diffrax's Tsit5)."""
    x_1 = M + S * np.random.default_rng(1).normal(size=(8, 2))
    log_p0 = lambda x: -0.5 * (x**2).sum(-1) - np.log(2 * np.pi)
    _, log_p = ODESolver(velocity_model=gaussian_velocity).compute_likelihood(
        x_1=torch.from_numpy(x_1),
        log_p0=log_p0,
        step_size=None,
        method="dopri5",
        atol=1e-8,
        rtol=1e-8,
        exact_divergence=True,
    )
    with FLOAT64.context():
        ours = likelihood.flow_nll_bits_per_dim(gaussian_velocity, jnp.asarray(x_1), rtol=1e-8, atol=1e-8)
        bits = np.asarray(ours.bits_per_dim)
    bits_ref = -log_p.detach().numpy() / (2 * np.log(2.0))
    # Two 5th-order adaptive solvers at rtol = atol = 1e-8 on a smooth field: far within 1e-6 bits/dim.
    np.testing.assert_allclose(bits, bits_ref, rtol=0, atol=1e-6)
