"""Classifier-free guidance (Ho & Salimans 2022): one class-conditional model, asked twice.

A class-conditional model `class_model_fn(x, t, y) -> output` is trained with its labels y in
0 .. n_classes - 1, some of them dropped to the null class y = n_classes (`drop_labels`), so that the
same network is both p(x | c) and p(x). At sampling time the two predictions are mixed,

    guided = (1 + w) * cond - w * uncond        (Ho & Salimans 2022, eq. 6),

on whatever the model predicts: eps, v, x0 (each linear in the score at fixed x and t, so mixing
any of them is the same guided field), or a flow model's velocity. A 4-output model with a learned
variance (--loss variational: mean and log-variance; hybrid: eps and log-variance) has its first half
guided and keeps the conditional log-variance, as GLIDE guides its learned-variance model (Nichol et al.
2022): a log-variance is not a prediction of the score, so it is not mixed. w = 0 is plain conditional
sampling; w > 0 pushes samples toward their class.

`guided_model_fn` returns an ordinary `model_fn(x, t)` for `jax_ddpm.samplers.chains`. The samplers
take model_fn as a static argument of `jax.jit`: built inside a jitted (or vmapped) function of w, w is
a traced value and a sweep over w is one compiled program (tests/test_guidance_closed_form.py shows it).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

ClassModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def guided(cond: jax.Array, uncond: jax.Array, w) -> jax.Array:
    """(1 + w) * cond - w * uncond: classifier-free guidance of any prediction (any shape; w broadcasts)."""
    return (1 + w) * cond - w * uncond


def guided_model_fn(
    class_model_fn: ClassModelFn, label, w, null_class: int, learned_variance: bool = False
) -> Callable:
    """model_fn(x, t) = guided(class_model_fn(x, t, label), class_model_fn(x, t, null_class), w); with
    `learned_variance` (a 4-output model), its first two outputs guided, its last two the conditional ones.

    label: one class (a scalar) or one per point (B,); the null class is unconditional, and
    label = null_class gives the unconditional model whatever w. w: a number or a traced scalar.
    """

    def model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        y = jnp.broadcast_to(jnp.asarray(label, jnp.int32), x.shape[:1])  # (B,)
        cond = class_model_fn(x, t, y)
        uncond = class_model_fn(x, t, jnp.full_like(y, null_class))
        if learned_variance:
            return jnp.concatenate([guided(cond[..., :2], uncond[..., :2], w), cond[..., 2:]], axis=-1)
        return guided(cond, uncond, w)

    return model_fn


def drop_labels(key: jax.Array, labels: jax.Array, cond_drop, null_class: int) -> jax.Array:
    """labels (B,) with each one replaced by null_class with probability cond_drop (independently)."""
    dropped = jax.random.bernoulli(key, cond_drop, labels.shape)
    return jnp.where(dropped, jnp.asarray(null_class, labels.dtype), labels)
