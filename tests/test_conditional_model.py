"""The class-conditional model and its loss with label dropout (issue 19), unit by unit."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_harness.data import make_labelled_dataset
from jax_ddpm.losses import noise_estimation_loss
from jax_ddpm.model import apply_model, model_of
from jax_ddpm.objectives import conditional, guidance, variance
from jax_ddpm.objectives.objective import variational_loss
from jax_ddpm.objectives.schedules import cosine_betas, device_schedule
from jax_ddpm.objectives.step import EmaRate, TrainState, pure_train_step
from jax_ddpm.runner.chunk import run_optimizer
from jax_ddpm.samplers import chains
from jax_ddpm.schedule import make_schedule

T, N_CLASSES = 100, 8


def without_classes(params: dict) -> dict:
    """The tutorial model's parameters inside a class model's: every layer's class scale dropped."""
    return {k: {n: v for n, v in layer.items() if n != "class_embed"} for k, layer in params.items()}


def test_shapes_and_the_null_class():
    params = conditional.init_class_params(jax.random.key(0), T, N_CLASSES)
    assert conditional.n_classes_of(params) == N_CLASSES
    for name in ("lin1", "lin2", "lin3"):
        assert params[name]["class_embed"]["embedding"].shape == (N_CLASSES + 1, 128)  # + the null class
        np.testing.assert_array_equal(params[name]["class_embed"]["embedding"], 1.0)
    x = jax.random.normal(jax.random.key(1), (16, 2))
    y = jnp.arange(16) % (N_CLASSES + 1)
    assert conditional.apply_class_model(params, x, jnp.full((16,), 5), y).shape == (16, 2)
    assert conditional.apply_class_model(params, x, jnp.array([5]), y).shape == (16, 2)
    four = conditional.init_class_params(jax.random.key(0), T, N_CLASSES, n_outputs=4)
    assert conditional.apply_class_model(four, x, jnp.array([5]), y).shape == (16, 4)


def test_with_class_scales_at_one_it_is_the_tutorials_model():
    """An untrained class model (class scales 1) is the tutorial's ConditionalModel with the same
    weights, bit for bit, for every class: multiplying by 1.0 is exact."""
    params = conditional.init_class_params(jax.random.key(0), T, N_CLASSES)
    x = jax.random.normal(jax.random.key(1), (32, 2))
    t = jax.random.randint(jax.random.key(2), (32,), 0, T)
    out_ref = apply_model(without_classes(params), x, t)
    for y in (jnp.zeros(32, jnp.int32), jnp.arange(32) % (N_CLASSES + 1)):
        np.testing.assert_array_equal(conditional.apply_class_model(params, x, t, y), out_ref)
    # The loss too: the tutorial's noise loss with the same t and noise, whatever is dropped.
    schedule = make_schedule()
    e = jax.random.normal(jax.random.key(3), (32, 2))
    labels = jnp.arange(32) % N_CLASSES
    loss_ref = noise_estimation_loss(
        model_of(without_classes(params)), x, schedule.alphas_bar_sqrt, schedule.one_minus_alphas_bar_sqrt, T, t=t, e=e
    )
    for p in (0.0, 0.5):
        loss = conditional.class_prediction_loss(params, schedule, x, labels, t, e, jax.random.key(4), p)
        np.testing.assert_array_equal(loss, loss_ref)


def test_a_learned_class_scale_changes_only_its_class():
    params = conditional.init_class_params(jax.random.key(0), T, N_CLASSES)
    params["lin2"]["class_embed"]["embedding"] = params["lin2"]["class_embed"]["embedding"].at[3].set(2.0)
    x = jax.random.normal(jax.random.key(1), (8, 2))
    t = jnp.array([10])
    at = lambda c: conditional.apply_class_model(params, x, t, jnp.full((8,), c))  # noqa: E731
    np.testing.assert_array_equal(at(0), at(N_CLASSES))
    assert np.abs(np.asarray(at(3) - at(0))).max() > 1e-3


def test_cond_drop_reaches_the_null_class_at_its_rate():
    """The loss drops labels as guidance.drop_labels does with its key (all at cond_drop = 1, none at 0),
    and the null class's row learns from the dropped labels only."""
    params = conditional.init_class_params(jax.random.key(0), T, 2)
    params["lin1"]["class_embed"]["embedding"] = jnp.ones((3, 128)).at[2].set(0.5)  # tell the null class apart
    schedule = make_schedule()
    x = jax.random.normal(jax.random.key(1), (64, 2))
    t, e = jnp.full((64,), 7), jax.random.normal(jax.random.key(2), (64, 2))
    labels = jnp.arange(64) % 2
    x_t = x * schedule.alphas_bar_sqrt[7] + e * schedule.one_minus_alphas_bar_sqrt[7]

    def loss_at(y):
        return jnp.mean(jnp.square(e - conditional.apply_class_model(params, x_t, t, y)))

    key = jax.random.key(5)
    for p, y in ((0.0, labels), (1.0, jnp.full((64,), 2)), (0.25, guidance.drop_labels(key, labels, 0.25, 2))):
        loss = conditional.class_prediction_loss(params, schedule, x, labels, t, e, key, p)
        np.testing.assert_allclose(loss, loss_at(y), rtol=1e-6)
    for p in (0.0, 1.0):
        grads = jax.grad(conditional.class_prediction_loss)(params, schedule, x, labels, t, e, key, p)
        rows = np.abs(np.asarray(grads["lin2"]["class_embed"]["embedding"])).sum(1)  # (3,)
        assert ((rows > 0) == ([True, True, False] if p == 0 else [False, False, True])).all(), (p, rows)


@pytest.mark.parametrize("loss", ["variational", "hybrid"])
def test_with_class_scales_at_one_the_bound_losses_are_the_tutorials(loss):
    """class_bound_loss of an untrained 4-output class model equals the tutorial's loss_variational
    (or variance.hybrid_loss) of its weights, bit for bit, whatever is dropped."""
    params = conditional.init_class_params(jax.random.key(0), T, N_CLASSES, n_outputs=4)
    schedule = make_schedule()
    x = jax.random.normal(jax.random.key(1), (32, 2))
    t, e = jax.random.randint(jax.random.key(2), (32,), 0, T), jax.random.normal(jax.random.key(3), (32, 2))
    labels = jnp.arange(32) % N_CLASSES
    plain = without_classes(params)
    if loss == "hybrid":
        loss_ref = variance.hybrid_loss(plain, schedule, x, t, e, 0.001)
    else:
        loss_ref = variational_loss(plain, x, schedule, T, t, e)
    for p in (0.0, 0.5):
        out = conditional.class_bound_loss(params, schedule, x, labels, t, e, jax.random.key(4), p, loss, 0.001)
        np.testing.assert_array_equal(out, loss_ref)


def tiny_state(params, optimizer, ema):
    return TrainState(
        jnp.int32(0),
        jnp.int32(0),
        params,
        jax.tree_util.tree_map(jnp.array, params),
        optimizer.init(params),
        jax.random.key(1),
        jax.random.key(2),
    )


def test_one_class_step_is_the_tutorials_step_on_its_weights():
    """With class scales at one the class model's gradients of the tutorial's weights are the tutorial's,
    so one Adam step (no clipping: a global norm would mix in the class scales' gradients) moves them the
    same, bit for bit; and the class scales move."""
    params = conditional.init_class_params(jax.random.key(0), T, N_CLASSES)
    optimizer, ema = run_optimizer(1e-3, 0.0, clipped=False), EmaRate.constant(0.9)
    schedule = make_schedule()
    x = jax.random.normal(jax.random.key(1), (32, 2))
    labels = jnp.arange(32) % N_CLASSES
    t, e = jax.random.randint(jax.random.key(2), (32,), 0, T), jax.random.normal(jax.random.key(3), (32, 2))
    state, loss = conditional.class_train_step(
        tiny_state(params, optimizer, ema), optimizer, ema, x, labels, schedule, 0.1, t=t, e=e
    )
    ref_params = without_classes(params)
    ref_state, ref_loss = pure_train_step(
        tiny_state(ref_params, optimizer, ema), optimizer, ema, x, schedule, T, t=t, e=e
    )
    np.testing.assert_array_equal(loss, ref_loss)
    jax.tree.map(np.testing.assert_array_equal, without_classes(state.params), ref_state.params)
    assert int(state.opt_step) == 1
    assert not np.array_equal(state.params["lin1"]["class_embed"]["embedding"], 1.0)


@pytest.mark.skipif(
    not os.environ.get("JAX_DDPM_GUIDANCE_TRAIN"), reason="trains a model (~10 s): JAX_DDPM_GUIDANCE_TRAIN=1"
)
def test_a_trained_class_model_draws_its_class():
    """eight_gaussians (4096 points, --data-noise 0.1), cosine T = 100, 3000 steps of batch 128 at lr 3e-3,
    cond_drop 0.1; DDPM samples at w = 1, 250 a class. Measured: every sample nearest its class's centre,
    class 3's mean (-1.48, 1.47) for the centre (-1.41, 1.41)."""
    x, y = make_labelled_dataset("eight_gaussians", 4096, 0.1, 0)
    schedule = device_schedule(cosine_betas(100).astype(np.float32))
    params = conditional.init_class_params(jax.random.key(0), 100, 8)
    optimizer, ema = run_optimizer(3e-3, 1.0, clipped=True), EmaRate.constant(0.99)
    data, classes = jnp.asarray(x), jnp.asarray(y)

    @jax.jit
    def train(state):
        def body(state, i):
            idx = jax.random.randint(jax.random.fold_in(jax.random.key(3), i), (128,), 0, data.shape[0])
            return conditional.class_train_step(state, optimizer, ema, data[idx], classes[idx], schedule, 0.1)

        return jax.lax.scan(body, state, jnp.arange(3000))

    state, _ = train(tiny_state(params, optimizer, ema))
    model = functools.partial(conditional.apply_class_model, state.params)
    labels = jnp.arange(2000) % 8
    x_T = jax.random.normal(jax.random.key(5), (2000, 2))
    out = np.asarray(
        chains.ddpm(guidance.guided_model_fn(model, labels, 1.0, 8), schedule, x_T, key=jax.random.key(6)).x_0
    )
    angles = np.arange(8) * np.pi / 4
    centres = 2 * np.stack([np.cos(angles), np.sin(angles)], 1)
    nearest = np.argmin(((out[:, None] - centres[None]) ** 2).sum(-1), 1)
    assert (nearest == np.asarray(labels)).mean() >= 0.99
    np.testing.assert_allclose(out[np.asarray(labels) == 3].mean(0), centres[3], atol=0.15)


def test_the_class_model_at_one_class_is_a_tutorial_model():
    """class_params_at: the per-step scales times a class's scales give the tutorial's model that computes
    the class model at that class (and at the null class), to float32 round-off."""
    params = conditional.init_class_params(jax.random.key(0), T, N_CLASSES)
    for layer in ("lin1", "lin2", "lin3"):  # class scales as a trained model's: apart from one
        shape = params[layer]["class_embed"]["embedding"].shape
        params[layer]["class_embed"]["embedding"] = jax.random.uniform(jax.random.key(3), shape, minval=0.5, maxval=2)
    x, t = jax.random.normal(jax.random.key(1), (16, 2)), jnp.arange(16) * 6
    for y in (0, 5, N_CLASSES):
        out_ref = conditional.apply_class_model(params, x, t, jnp.full((16,), y))
        out_ans = apply_model(conditional.class_params_at(params, y), x, t)
        np.testing.assert_allclose(np.asarray(out_ans), np.asarray(out_ref), rtol=1e-5, atol=1e-5)
