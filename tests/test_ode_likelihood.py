"""The probability-flow ODE sampler and the exact likelihood, where the answer is known in closed form.

Gaussian data N(mu, s^2 I) has the exact noise prediction
    eps*(x, t) = sqrt(1 - abar) (x - sqrt(abar) mu) / (abar s^2 + 1 - abar),
and in y = x / sqrt(abar), sigma = sqrt((1 - abar) / abar) the ODE dy/dsigma = eps* = sigma (y - mu) /
(s^2 + sigma^2) has the solution y(sigma) - mu = (y(0) - mu) sqrt((s^2 + sigma^2) / s^2): an affine
map that depends on the end points only, and an NLL that is exactly -log N(x_0; mu, s^2 I) when the
prior is the exact marginal at t = T-1. The model below computes abar(t) at float t by its own
log-linear interpolation, so a wrong sigma <-> t mapping in the sampler gives a wrong eps and fails.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_ddpm.samplers import chains, likelihood
from jax_ddpm.schedule import make_schedule
from parity_tests.precision import FLOAT32, FLOAT64

MU = np.array([0.5, -0.3])
S = 0.6
N = 200


def schedules(dtype):
    """The tutorial's (alpha_bar_{T-1} = 0.78) and one that ends near noise (alpha_bar_{T-1} = 4e-5)."""
    return {
        "tutorial": make_schedule("sigmoid", 100, 1e-5, 5e-3, dtype),
        "linear": make_schedule("linear", 100, 1e-4, 0.2, dtype),
    }


def gaussian_eps_model(schedule):
    """eps*(x, t) of N(MU, S^2 I) data, abar(t) = exp(linear interpolation of log abar on t = -1..T-1)."""
    log_abar = np.concatenate([[0.0], np.log(np.asarray(schedule.alphas_prod, np.float64))])
    steps = np.arange(-1, schedule.num_steps, dtype=np.float64)

    def model_fn(x, t):
        abar = jnp.exp(jnp.interp(t[0], jnp.asarray(steps, x.dtype), jnp.asarray(log_abar, x.dtype)))
        mu = jnp.asarray(MU, x.dtype)
        return jnp.sqrt(1 - abar) * (x - jnp.sqrt(abar) * mu) / (abar * S**2 + 1 - abar)

    return model_fn


def exact_ode_sample(schedule, x_T):
    """The exact flow from t = T-1 to t = 0, then the sampler's last step x_0 = predicted x_0 at t = 0."""
    abar = np.asarray(schedule.alphas_prod, np.float64)
    sigma_max2, sigma_min2 = (1 - abar[-1]) / abar[-1], (1 - abar[0]) / abar[0]
    y_max = x_T / np.sqrt(abar[-1])
    y_min = MU + (y_max - MU) * np.sqrt((S**2 + sigma_min2) / (S**2 + sigma_max2))
    return MU + (y_min - MU) * S**2 / (S**2 + sigma_min2)  # y - sigma eps*(y) at sigma_min


@pytest.mark.parametrize(
    "precision, name", [(FLOAT64, "tutorial"), (FLOAT32, "linear")], ids=lambda p: getattr(p, "name", p)
)
def test_ode_sample_is_the_exact_flow_for_gaussian_data(precision, name):
    with precision.context():
        schedule = schedules(precision.np_dtype)[name]
        x_T = np.random.default_rng(0).normal(size=(N, 2))
        calls = []
        model = gaussian_eps_model(schedule)

        def counted_model(x, t):
            jax.debug.callback(lambda: calls.append(1))
            return model(x, t)

        # The solver converges to the closed form: an adaptive solver's global error is up to ~10x its
        # local tolerance. Measured max |x_0 - exact|: 6.6e-9 / 2.3e-8 (float64, rtol = atol = 1e-8),
        # 9.0e-6 / 2.6e-5 (float32, 1e-6), tutorial / linear; allow 2e-7 and 1e-4. (At the default
        # 1e-5 the error is ~1e-4, far below the data's scale.)
        tol = 1e-8 if precision.np_dtype == np.float64 else 1e-6
        out = chains.ode(
            counted_model, schedule, jnp.asarray(x_T, precision.np_dtype), rtol=tol, atol=tol, trajectory=True
        )
        err = np.abs(np.asarray(out.x_0, np.float64) - exact_ode_sample(schedule, x_T)).max()
        assert err <= (2e-7 if precision.np_dtype == np.float64 else 1e-4), err
        # nfe is every call of model_fn, counted on the host.
        assert int(out.nfe) == len(calls) > 20
        assert out.trajectory.shape == (101, N, 2)
        np.testing.assert_array_equal(out.trajectory[0], x_T.astype(precision.np_dtype))
        np.testing.assert_array_equal(out.trajectory[-1], out.x_0)


def test_interpolate_steps_mixes_neighbouring_steps():
    model = chains.interpolate_steps(lambda x, t: x * t.astype(x.dtype), num_steps=100)
    x = jnp.ones((3, 2))
    assert float(model(x, jnp.array([7.0]))[0, 0]) == 7.0
    assert float(model(x, jnp.array([7.25]))[0, 0]) == pytest.approx(7.25)
    assert float(model(x, jnp.array([-0.5]))[0, 0]) == 0.0 and float(model(x, jnp.array([99.0]))[0, 0]) == 99.0


def gaussian_logp(x, mean, var):
    return -0.5 * np.sum((x - mean) ** 2 / var + np.log(2 * np.pi * var), axis=-1)


def exact_nll(schedule, x_0, prior_logp):
    """-log p(x_0) / (d ln 2) under the exact flow: x_{T-1} = sqrt(abar) (mu + (x_0 - mu) r), r =
    sqrt((s^2 + sigma^2) / s^2), log p = prior(x_{T-1}) + (d / 2) log abar + d log r."""
    abar = float(np.asarray(schedule.alphas_prod, np.float64)[-1])
    r = np.sqrt((S**2 + (1 - abar) / abar) / S**2)
    x_max = np.sqrt(abar) * (MU + (x_0 - MU) * r)
    return -(prior_logp(x_max) + np.log(abar) + 2 * np.log(r)) / (2 * np.log(2))


@pytest.mark.parametrize(
    "precision, name, prior",
    [(FLOAT64, "tutorial", "exact"), (FLOAT32, "linear", "standard")],
    ids=lambda p: getattr(p, "name", p),
)
def test_nll_is_the_gaussian_closed_form(precision, name, prior):
    # With the exact marginal N(sqrt(abar) mu, abar s^2 + 1 - abar) at t = T-1 as prior, the NLL is
    # the data's own -log N(x_0; mu, s^2 I); with N(0, I) (what the library assumes by default) it is
    # the closed form `exact_nll`. The tutorial's schedule ends at alpha_bar = 0.78, far from noise:
    # there only the exact marginal makes sense. Allowed: 1e-3 bits/dim (the bar); measured at
    # the default tolerances (rtol = atol = 1e-5): 2.4e-6 (float64, tutorial, exact prior) and 9.7e-5
    # (float32, linear, N(0, I) prior) bits/dim.
    with precision.context():
        schedule = schedules(precision.np_dtype)[name]
        abar = float(np.asarray(schedule.alphas_prod, np.float64)[-1])
        mean, var = np.sqrt(abar) * MU, abar * S**2 + 1 - abar
        x_0 = MU + S * np.random.default_rng(1).normal(size=(N, 2))

        def exact_prior(x):
            return -0.5 * jnp.sum((x - mean) ** 2 / var + np.log(2 * np.pi * var), axis=-1)

        out = likelihood.nll_bits_per_dim(
            gaussian_eps_model(schedule),
            schedule,
            jnp.asarray(x_0, precision.np_dtype),
            prior_logp=exact_prior if prior == "exact" else None,
        )
        if prior == "exact":
            expected = -gaussian_logp(x_0, MU, S**2) / (2 * np.log(2))
            np.testing.assert_allclose(exact_nll(schedule, x_0, lambda x: gaussian_logp(x, mean, var)), expected)
        else:
            expected = exact_nll(schedule, x_0, lambda x: gaussian_logp(x, 0.0, 1.0))
        err = np.abs(np.asarray(out.bits_per_dim, np.float64) - expected).max()
        assert err <= 1e-3, err
        assert int(out.nfe) > 0


def test_nll_refuses_x0_prediction():
    schedule = schedules(np.float32)["linear"]
    with pytest.raises(ValueError, match="use a model with --prediction eps or v"):
        likelihood.nll_bits_per_dim(gaussian_eps_model(schedule), schedule, jnp.zeros((2, 2)), prediction="x0")
