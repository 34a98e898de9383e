"""The guidance combinator, the label dropout and the Gaussian-mixture model, unit by unit (issue 19).

The samplers driven by them are in tests/test_guidance_closed_form.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jax_ddpm.objectives import guidance, mixtures
from jax_ddpm.objectives.predictions import predict_eps
from jax_ddpm.schedule import make_schedule


def toy_class_model(x, t, y):
    """An affine 'model' whose output depends on x, t and the class: (B, 2)."""
    return x * (1.0 + y[:, None]) + t.astype(x.dtype)[..., None] * 0.01


def test_guided_is_the_classifier_free_mix():
    cond, uncond = jnp.array([[1.0, 2.0]]), jnp.array([[0.5, -1.0]])
    np.testing.assert_array_equal(guidance.guided(cond, uncond, 0.0), cond)
    np.testing.assert_allclose(guidance.guided(cond, uncond, 2.0), 3 * cond - 2 * uncond, rtol=0, atol=1e-6)
    np.testing.assert_allclose(guidance.guided(cond, uncond, -1.0), uncond, rtol=0, atol=1e-6)


def test_guided_model_fn_asks_the_class_and_the_null_class():
    x, t = jnp.arange(8.0).reshape(4, 2), jnp.array([3])
    null = 5
    at = lambda y: toy_class_model(x, t, jnp.full((4,), y))  # noqa: E731
    w0 = guidance.guided_model_fn(toy_class_model, 2, 0.0, null)(x, t)
    np.testing.assert_array_equal(w0, at(2))  # w = 0: the conditional model
    w3 = guidance.guided_model_fn(toy_class_model, 2, 3.0, null)(x, t)
    np.testing.assert_allclose(w3, 4 * at(2) - 3 * at(null), rtol=1e-6)
    unconditional = guidance.guided_model_fn(toy_class_model, null, 3.0, null)(x, t)
    np.testing.assert_allclose(unconditional, at(null), rtol=1e-6)  # 4 u - 3 u, to float32 round-off
    # One class per point.
    labels = jnp.array([0, 1, 2, 1])
    per_point = guidance.guided_model_fn(toy_class_model, labels, 1.0, null)(x, t)
    np.testing.assert_allclose(per_point, 2 * toy_class_model(x, t, labels) - at(null), rtol=1e-6)


def test_drop_labels_rate_is_cond_drop():
    labels = jnp.zeros(20_000, jnp.int32) + 3
    for p in (0.0, 0.1, 0.5, 1.0):
        out = np.asarray(guidance.drop_labels(jax.random.key(0), labels, p, 8))
        assert set(np.unique(out)) <= {3, 8}
        rate = (out == 8).mean()
        # 4 standard errors of a binomial proportion (exact at 0 and 1).
        assert abs(rate - p) <= 4 * np.sqrt(p * (1 - p) / len(out)), (p, rate)


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def test_mixture_score_is_the_gradient_of_its_log_density(x64):
    mix = mixtures.mixture(
        [1.0, 2.0, 1.0], [[0.0, 0.0], [1.0, 0.5], [-1.0, 1.0]], [np.eye(2) * 0.3, [[0.5, 0.2], [0.2, 0.4]], np.eye(2)],
        [0, 1, 1], dtype=jnp.float64,
    )  # fmt: skip
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 2)))

    @jax.jit
    def score_and_grad(abar, label):
        grad = jax.vmap(jax.grad(lambda xi: mixtures.log_density(mix, xi[None], abar, label)[0]))(x)
        return mixtures.score(mix, x, abar, label), grad

    for abar in (1.0, 0.7, 0.05):
        for label in (0, 1, 2):  # 2 = n_classes: the null class, the marginal
            np.testing.assert_allclose(*score_and_grad(abar, label), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mixtures.score(mix, x, 0.7), score_and_grad(0.7, 2)[0], rtol=1e-12)  # label None
    # The null class is the marginal; the classes' densities mix to it by their weights (1/4, 3/4).
    np.testing.assert_allclose(mixtures.log_density(mix, x, 0.7, 2), mixtures.log_density(mix, x, 0.7), rtol=1e-12)
    mixed = 0.25 * np.exp(mixtures.log_density(mix, x, 0.7, 0)) + 0.75 * np.exp(mixtures.log_density(mix, x, 0.7, 1))
    np.testing.assert_allclose(np.exp(mixtures.log_density(mix, x, 0.7)), mixed, rtol=1e-12)
    # At abar = 1 class 0 is its Gaussian, scipy's.
    ref = stats.multivariate_normal([0.0, 0.0], np.eye(2) * 0.3).logpdf(np.asarray(x))
    np.testing.assert_allclose(mixtures.log_density(mix, x, 1.0, 0), ref, rtol=1e-12)


def test_mixture_model_predictions_agree(x64):
    """The eps, v and x0 outputs of the exact model are one prediction read three ways."""
    schedule = make_schedule("linear", 50, 1e-4, 0.2, dtype=np.float64)
    mix = mixtures.eight_gaussians(dtype=jnp.float64)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 2)))
    y = jnp.arange(8) % 9
    models = {p: jax.jit(mixtures.class_model_fn(mix, schedule, p)) for p in ("eps", "v", "x0")}
    for t in (jnp.array([0]), jnp.array([30]), jnp.array([49])):
        abar = schedule.alphas_prod[t[0]]
        eps = models["eps"](x, t, y)
        np.testing.assert_allclose(eps, jax.jit(mixtures.eps)(mix, x, abar, y), rtol=1e-12)
        for prediction in ("v", "x0"):
            out = models[prediction](x, t, y)
            np.testing.assert_allclose(predict_eps(out, x, abar, prediction), eps, rtol=1e-9, atol=1e-12)
    # Float t between steps: log alpha_bar interpolated; integer steps read exactly.
    at_30 = mixtures.alpha_prod_at(schedule, jnp.asarray(30.0))
    np.testing.assert_allclose(at_30, schedule.alphas_prod[30], rtol=1e-14)
    half = mixtures.alpha_prod_at(schedule, jnp.asarray(29.5))
    np.testing.assert_allclose(half, np.sqrt(schedule.alphas_prod[29] * schedule.alphas_prod[30]), rtol=1e-14)
    np.testing.assert_allclose(mixtures.alpha_prod_at(schedule, jnp.asarray(-1.0)), 1.0)
    # Per-point t (the training loss's call) gives each point its own noise level.
    t = jnp.array([0, 30, 49, 10, 10, 2, 3, 4])
    per_point = models["eps"](x, t, y)
    for i in range(8):
        np.testing.assert_allclose(per_point[i], models["eps"](x, t[i : i + 1], y)[i], rtol=1e-12)


def test_guiding_any_prediction_is_the_same_guided_field(x64):
    """eps, v and x0 are affine in one another at fixed x and t with weights that sum to one, so mixing the
    model's v (or x0) by (1 + w, -w) and reading eps off it is mixing eps: one guided field whatever is predicted."""
    schedule = make_schedule("linear", 50, 1e-4, 0.2, dtype=np.float64)
    mix = mixtures.two_gaussians(dtype=jnp.float64)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(16, 2)))
    labels = jnp.arange(16) % 2
    t = jnp.array([20])
    abar = schedule.alphas_prod[20]
    for w in (0.0, 1.0, 3.0):
        eps = guidance.guided_model_fn(mixtures.class_model_fn(mix, schedule, "eps"), labels, w, 2)(x, t)
        for prediction in ("v", "x0"):
            out = guidance.guided_model_fn(mixtures.class_model_fn(mix, schedule, prediction), labels, w, 2)(x, t)
            np.testing.assert_allclose(predict_eps(out, x, abar, prediction), eps, rtol=1e-9, atol=1e-11)


def test_plot_guidance_draws_a_row_per_w(tmp_path):
    from PIL import Image

    from ddpm_harness.plots import plot_guidance

    points, labels = np.random.default_rng(0).normal(size=(40, 2)), np.arange(40) % 8
    rows = {w: {"a": (points * (1 + w), labels), "b": (points, labels % 2)} for w in (0.0, 1.0, 3.0)}
    plot_guidance(rows, tmp_path / "guidance.png")
    width, height = Image.open(tmp_path / "guidance.png").size
    assert height > 2.5 * width / 2  # three rows of two square panels
