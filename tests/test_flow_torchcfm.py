"""jax_ddpm.objectives.flow against TorchCFM 1.0.7 (Tong et al.), a library nobody here wrote.

The same injected x_0, x_1, t and eps on both sides (numpy, float64): TorchCFM's ConditionalFlowMatcher
draws eps itself, so it runs first with return_noise=True and ours takes its eps. The OT coupling:
TorchCFM's OTPlanSampler("exact") solves the plan with POT's ot.emd; ours is an assignment
(scipy's linear_sum_assignment) inside JAX. For B noise and B data points with uniform weights the
plan is B times a permutation matrix; ours must be that permutation. TorchCFM then samples pairs
from the plan (with replacement by default); without replacement it takes every pair once, as ours
does, in another order: the pairs are compared as sets.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torchcfm.conditional_flow_matching import (
    ConditionalFlowMatcher,
    ExactOptimalTransportConditionalFlowMatcher,
)
from torchcfm.optimal_transport import OTPlanSampler

from jax_ddpm import speed
from jax_ddpm.model import init_params
from jax_ddpm.objectives import flow
from parity_tests.precision import FLOAT64

pytestmark = pytest.mark.torch  # compares with TorchCFM (torch)

B = 64
# (x_t, u_t) are a multiply-add of the same float64 numbers on both sides: a few ulps.
RTOL = 8 * FLOAT64.eps


def draws(seed: int = 0):
    rng = np.random.default_rng(seed)
    x_0 = rng.normal(size=(B, 2))
    x_1 = rng.normal(size=(B, 2)) * 0.5 + np.array([2.0, -1.0])
    t = rng.uniform(size=B)
    return x_0, x_1, t


@pytest.mark.parametrize("sigma", [0.0, 0.1])
def test_path_and_target_match_conditional_flow_matcher(sigma):
    x_0, x_1, t = draws()
    torch.manual_seed(0)
    t_ref, x_t_ref, u_t_ref, eps = ConditionalFlowMatcher(sigma=sigma).sample_location_and_conditional_flow(
        torch.from_numpy(x_0), torch.from_numpy(x_1), t=torch.from_numpy(t), return_noise=True
    )
    with FLOAT64.context():
        x_t, u_t = flow.sample_location_and_conditional_flow(
            jnp.asarray(x_0), jnp.asarray(x_1), jnp.asarray(t), sigma, jnp.asarray(eps.numpy())
        )
        assert x_t.dtype == jnp.float64
        np.testing.assert_array_equal(t_ref.numpy(), t)
        np.testing.assert_allclose(np.asarray(x_t), x_t_ref.numpy(), rtol=RTOL, atol=RTOL)
        np.testing.assert_allclose(np.asarray(u_t), u_t_ref.numpy(), rtol=RTOL, atol=RTOL)


@pytest.mark.parametrize("where", ["host", "compiled"])  # the CPU's solver (scipy) and the GPU's (optax)
def test_ot_pairing_is_the_exact_plan_of_pot(where, monkeypatch):
    monkeypatch.setattr(flow, "linear_assignment", functools.partial(speed.linear_assignment, where=where))
    x_0, x_1, _ = draws(1)
    plan = OTPlanSampler(method="exact").get_map(torch.from_numpy(x_0), torch.from_numpy(x_1))  # (B noise, B data)
    with FLOAT64.context():
        perm = np.asarray(jax.jit(flow.ot_pairing)(jnp.asarray(x_0), jnp.asarray(x_1)))
    ours = np.zeros((B, B))
    ours[perm, np.arange(B)] = 1.0 / B
    np.testing.assert_allclose(plan, ours, rtol=0, atol=1e-12)
    assert sorted(perm) == list(range(B))  # a permutation: every noise point used once


def test_ot_coupling_matches_exact_ot_flow_matcher_without_replacement():
    """ExactOptimalTransportConditionalFlowMatcher with its plan sampled without replacement: the same
    (x_0, x_1) pairs, and the same (x_t, u_t) for each pair at the same t."""
    x_0, x_1, t = draws(2)
    matcher = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    np.random.seed(0)
    x_0_ref, x_1_ref = matcher.ot_sampler.sample_plan(torch.from_numpy(x_0), torch.from_numpy(x_1), replace=False)
    _, x_t_ref, u_t_ref = ConditionalFlowMatcher.sample_location_and_conditional_flow(
        matcher, x_0_ref, x_1_ref, t=torch.from_numpy(t)
    )
    with FLOAT64.context():
        x_0_ours = np.asarray(flow.couple(jnp.asarray(x_0), jnp.asarray(x_1), "ot"))
    pairs = lambda a, b: sorted(map(tuple, np.concatenate([a, b], axis=1).tolist()))
    assert pairs(x_0_ours, x_1) == pairs(x_0_ref.numpy(), x_1_ref.numpy())
    # The same pairs at TorchCFM's order and t: ours computes what TorchCFM computes.
    with FLOAT64.context():
        x_t, u_t = flow.sample_location_and_conditional_flow(
            jnp.asarray(x_0_ref.numpy()), jnp.asarray(x_1_ref.numpy()), jnp.asarray(t), 0.0, jnp.zeros((B, 2))
        )
        np.testing.assert_allclose(np.asarray(x_t), x_t_ref.numpy(), rtol=RTOL, atol=RTOL)
        np.testing.assert_allclose(np.asarray(u_t), u_t_ref.numpy(), rtol=RTOL, atol=RTOL)


def test_ot_coupling_shortens_the_pairs():
    """The OT pairing's total squared distance is no more than the independent pairing's (sanity)."""
    x_0, x_1, _ = draws(3)
    x_0_ot = np.asarray(flow.couple(jnp.asarray(x_0, jnp.float32), jnp.asarray(x_1, jnp.float32), "ot"))
    assert np.sum((x_0_ot - x_1) ** 2) < np.sum((x_0 - x_1) ** 2)


def test_loss_is_torchcfm_regression_on_the_ported_model():
    """The flow loss of a batch (grid times k / T) equals torch.mean((v - u_t)^2) of the PyTorch
    reference model with the same weights on TorchCFM's (x_t, u_t), float64."""
    from jax_ddpm.convert import flax_to_torch
    from torch_reference.model import ConditionalModel

    n_steps, sigma = 100, 0.05
    x_0, x_1, _ = draws(4)
    k = np.random.default_rng(4).integers(0, n_steps, size=B)
    eps = np.random.default_rng(5).normal(size=(B, 2))
    with FLOAT64.context():
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), init_params(jax.random.PRNGKey(0), 100))
        e = jnp.stack([jnp.asarray(x_0), jnp.asarray(eps)], axis=1)
        loss = float(flow.flow_matching_loss(params, jnp.asarray(x_1), n_steps, jnp.asarray(k), e, sigma=sigma))
    model = ConditionalModel(n_steps).double()
    model.load_state_dict(flax_to_torch(jax.tree_util.tree_map(np.asarray, params)))
    t = torch.from_numpy(k).double() / n_steps
    matcher = ConditionalFlowMatcher(sigma=sigma)
    matcher.sample_noise_like = lambda x: torch.from_numpy(eps)
    _, x_t, u_t = matcher.sample_location_and_conditional_flow(torch.from_numpy(x_0), torch.from_numpy(x_1), t=t)
    loss_ref = torch.mean((model(x_t, torch.from_numpy(k)) - u_t) ** 2).item()
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
