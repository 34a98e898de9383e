"""Classifier-free guidance proven against closed forms (issue 19, deliverable 4, the analytic half).

For Gaussian-mixture data the noised class-conditional and marginal densities are Gaussian mixtures
at every t, so the exact eps-model is known (`jax_ddpm.objectives.mixtures`). It is plugged into the
project's samplers as the model, through the guidance wrapper the trained models use
(`objectives.guidance.guided_model_fn`):

1. w = 0: DDPM (ancestral, sigma^2 = beta) and DDIM (eta = 0) draw each class's Gaussian: mean and
   covariance within 4 standard errors of the sample (SE of a mean sqrt(var / n), of a variance
   sqrt(2 / n) var, of a covariance var / sqrt(n) for isotropic classes), and a KS test per coordinate
   against the class's normal marginal (p > 1e-3).
2. w > 0: the `ode` sampler equals an independent float64 integration of the same guided
   probability-flow ODE by scipy's `solve_ivp` (DOP853, rtol = atol = 1e-10) on a numpy copy of the
   guided field written here from the formulas, not from the library.
3. On two overlapping Gaussians, a class's spread along the axis joining the means and its overlap with
   the other class (the fraction of its samples on the other side of the Bayes boundary x = 0) fall as
   w goes 0, 1, 3; across the axis nothing changes (the two classes agree there, so guidance adds nothing).

Data: eight_gaussians in the dataset's own units (class k: N(2 (cos, sin)(k 45 degrees), 0.1^2 I), as
`ddpm_harness.data` draws it with --data-noise 0.1), and two Gaussians N((-/+0.5, 0), 0.5^2 I) one std
apart. Schedule: cosine, T = 1000, in float64: the tutorial's own schedule ends at alpha_bar = 0.78, far
from noise, so x_T ~ N(0, I) would not be q_T; the cosine one ends at 2e-9, and 1000 steps keep DDIM's
discretisation error on the 0.1-wide Gaussians below the sampling error (at T = 200 DDIM's variance
was measured 6% low). x_T is drawn from the exact q_T(x | c), so the chains start where they should.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.integrate import solve_ivp

from jax_ddpm.objectives import guidance, mixtures
from jax_ddpm.objectives.schedules import cosine_betas, device_schedule
from jax_ddpm.samplers import chains

T = 1000


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def schedule64():
    return device_schedule(cosine_betas(T))


def eight():
    return mixtures.eight_gaussians(noise=0.1, dtype=jnp.float64)


def two():
    return mixtures.two_gaussians(separation=1.0, std=0.5, dtype=jnp.float64)


def start(mix, schedule, n_per_class, seed):
    """x_T drawn from the exact q_{T-1}(x | c) (numpy), n_per_class of each class, and the labels (one per point):
    the class's component, then sqrt(abar) x_0 + sqrt(1 - abar) eps (the classes here are one Gaussian each)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(mix.n_classes), n_per_class)
    abar = float(schedule.alphas_prod[-1])
    std = np.sqrt(np.asarray(mix.covs)[labels, 0, 0])[:, None]
    x_0 = np.asarray(mix.means)[labels] + std * rng.standard_normal((len(labels), 2))
    return jnp.asarray(np.sqrt(abar) * x_0 + np.sqrt(1 - abar) * rng.standard_normal((len(labels), 2))), labels


# ---- 1. w = 0 draws each class's Gaussian -----------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("data, n_per_class", [("eight_gaussians", 800), ("two_gaussians", 2000)])
def test_unguided_samplers_draw_each_class(x64, sampler, data, n_per_class):
    mix = eight() if data == "eight_gaussians" else two()
    schedule = schedule64()
    x_T, labels = start(mix, schedule, n_per_class, 10)
    model_fn = guidance.guided_model_fn(mixtures.class_model_fn(mix, schedule), labels, 0.0, mix.n_classes)
    if sampler == "ddpm":
        out = chains.ddpm(model_fn, schedule, x_T, key=jax.random.key(11), variance="beta")
    else:
        out = chains.ddim(model_fn, schedule, x_T, eta=0.0)
    x_0 = np.asarray(out.x_0)
    for c in range(mix.n_classes):
        samples = x_0[labels == c]
        n = len(samples)
        mu, var = np.asarray(mix.means[c]), float(mix.covs[c][0, 0])  # isotropic classes
        se_mean, se_var, se_cov = np.sqrt(var / n), np.sqrt(2 / n) * var, var / np.sqrt(n)
        np.testing.assert_array_less(np.abs(samples.mean(0) - mu), 4 * se_mean)
        cov = np.cov(samples.T)
        np.testing.assert_array_less(np.abs(np.diag(cov) - var), 4 * se_var)
        assert abs(cov[0, 1]) < 4 * se_cov, (c, cov)
        for d in range(2):
            p = stats.kstest(samples[:, d], stats.norm(mu[d], np.sqrt(var)).cdf).pvalue
            assert p > 1e-3, (sampler, c, d, p)


# ---- 2. w > 0: the ode sampler is the guided probability-flow ODE ----------------------------------
# The ode sampler solves dy/dsigma = eps(x, t(sigma)) with y = x / sqrt(abar), sigma = sqrt(1 / abar - 1)
# (DDIM's ODE, Song et al. 2021 eq. 14), from the noise level of t = T-1 down to that of t = 0, then
# takes DDIM's last step x_0 = (x - sqrt(1 - abar_0) eps) / sqrt(abar_0). The same ODE, from scratch:


def np_class_eps(means, covs, classes, x, abar, label, null_class):
    """numpy: -sqrt(1 - abar) grad log q(x | label) for a Gaussian mixture of equal-weight components
    (the class's components; all of them for the null class); x (N, 2), label (N,)."""
    S = abar * covs + (1 - abar) * np.eye(2)  # (K, 2, 2)
    S_inv = np.linalg.inv(S)
    diff = np.sqrt(abar) * means[None] - x[:, None]  # (N, K, 2)
    pull = np.einsum("kij,nkj->nki", S_inv, diff)
    log_p = -0.5 * np.einsum("nki,nki->nk", diff, pull) - 0.5 * np.log(np.linalg.det(S))[None]
    log_p = np.where((classes[None] == label[:, None]) | (label[:, None] == null_class), log_p, -np.inf)
    r = np.exp(log_p - log_p.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return -np.sqrt(1 - abar) * np.einsum("nk,nki->ni", r, pull)


def np_guided_eps(mix, x, abar, label, w):
    means, covs, classes = (np.asarray(a, np.float64) for a in (mix.means, mix.covs, mix.classes))
    cond = np_class_eps(means, covs, classes, x, abar, label, mix.n_classes)
    uncond = np_class_eps(means, covs, classes, x, abar, np.full_like(label, mix.n_classes), mix.n_classes)
    return (1 + w) * cond - w * uncond


def scipy_guided_flow(mix, schedule, x_T, labels, w):
    """x at t = 0 and x_0 after DDIM's last step, integrating the guided ODE in float64 with solve_ivp."""
    abar = np.asarray(schedule.alphas_prod, np.float64)
    sigma_max, sigma_min = np.sqrt(1 / abar[-1] - 1), np.sqrt(1 / abar[0] - 1)
    n = len(x_T)

    def field(sigma, y):
        a = 1 / (1 + sigma**2)
        return np_guided_eps(mix, y.reshape(n, 2) * np.sqrt(a), a, labels, w).ravel()

    y_T = np.asarray(x_T, np.float64) * np.sqrt(1 + sigma_max**2)
    solution = solve_ivp(field, (sigma_max, sigma_min), y_T.ravel(), method="DOP853", rtol=1e-10, atol=1e-10)
    assert solution.success
    x_t0 = solution.y[:, -1].reshape(n, 2) / np.sqrt(1 + sigma_min**2)
    x_0 = (x_t0 - np.sqrt(1 - abar[0]) * np_guided_eps(mix, x_t0, abar[0], labels, w)) / np.sqrt(abar[0])
    return x_t0, x_0


def ode_sweep(mix, schedule, x_T, labels, ws, tol):
    """The ode sampler's x at t = 0 and x_0 (each (len(ws), N, 2)) at every w, and how many times the
    sweep was traced: every w in one compiled program (w is traced, not a constant of the sampler)."""
    class_model = mixtures.class_model_fn(mix, schedule)
    traces = []

    @jax.jit
    def sweep(ws):
        traces.append(1)

        def one(w):
            model_fn = guidance.guided_model_fn(class_model, labels, w, mix.n_classes)
            out = chains.ode(model_fn, schedule, x_T, rtol=tol, atol=tol, trajectory=True, max_steps=20_000)
            return out.trajectory[-2], out.x_0

        return jax.vmap(one)(ws)

    x_t0, x_0 = sweep(jnp.asarray(ws))
    sweep(jnp.asarray(ws) + 0.5)  # other values of w: no second trace
    return np.asarray(x_t0), np.asarray(x_0), len(traces)


# diffrax's Tsit5 at rtol = atol = 1e-9 against scipy's DOP853 at 1e-10: max |diff| measured 4.2e-10
# (eight_gaussians) and 4.8e-10 (two Gaussians), at w = 0, 1, 3; allow 1e-8, ten times the solver's tolerance.
ODE_TOL, ODE_MATCH = 1e-9, 1e-8


def test_guided_ode_sampler_is_the_guided_flow_eight_gaussians(x64):
    mix, schedule = eight(), schedule64()
    x_T, labels = start(mix, schedule, 4, 20)
    x_t0, x_0, traces = ode_sweep(mix, schedule, x_T, labels, [1.0, 3.0], ODE_TOL)
    assert traces == 1
    for i, w in enumerate([1.0, 3.0]):
        ref_t0, ref_0 = scipy_guided_flow(mix, schedule, np.asarray(x_T), labels, w)
        np.testing.assert_allclose(x_t0[i], ref_t0, rtol=0, atol=ODE_MATCH)
        np.testing.assert_allclose(x_0[i], ref_0, rtol=0, atol=ODE_MATCH)


# ---- 3. guidance narrows a class and pulls it off the other -----------------------------------------


def test_guidance_narrows_overlapping_classes(x64):
    """Also the ODE check of 2. on the overlapping mixture, on the same compiled sweep."""
    mix, schedule = two(), schedule64()
    n = 1000
    x_T, labels = start(mix, schedule, n, 30)
    x_t0, x_0, traces = ode_sweep(mix, schedule, x_T, labels, [0.0, 1.0, 3.0], ODE_TOL)
    assert traces == 1
    every = slice(None, None, 25)  # scipy on 80 of the 2000 points
    for i, w in enumerate([0.0, 1.0, 3.0]):
        ref_t0, ref_0 = scipy_guided_flow(mix, schedule, np.asarray(x_T)[every], labels[every], w)
        np.testing.assert_allclose(x_t0[i][every], ref_t0, rtol=0, atol=ODE_MATCH)
        np.testing.assert_allclose(x_0[i][every], ref_0, rtol=0, atol=ODE_MATCH)

    side = np.where(labels == 0, 1.0, -1.0)  # the other class's side of x = 0, per point
    spread = [x[:, 0].reshape(2, n).std(1) for x in x_0]  # (2,) per w: each class's std along the means' axis
    overlap = [(x[:, 0] * side > 0).reshape(2, n).mean(1) for x in x_0]
    # w = 0 is the class's Gaussian: std 0.5, overlap P(N(-0.5, 0.5^2) > 0) = 1 - Phi(1) = 0.159.
    np.testing.assert_allclose(spread[0], 0.5, rtol=4 * np.sqrt(0.5 / n))
    np.testing.assert_allclose(overlap[0], stats.norm.sf(1.0), atol=4 * np.sqrt(0.159 * 0.841 / n))
    for c in range(2):
        assert spread[0][c] > spread[1][c] > spread[2][c], (c, spread)
        assert overlap[0][c] > overlap[1][c] > overlap[2][c], (c, overlap)
    # Across the means' axis the classes agree, so guidance changes nothing there.
    np.testing.assert_allclose(x_0[1][:, 1], x_0[0][:, 1], rtol=0, atol=ODE_MATCH)
    np.testing.assert_allclose(x_0[2][:, 1], x_0[0][:, 1], rtol=0, atol=ODE_MATCH)
