"""Gradient clipping, one Adam + clip step, the EMA update, and 50 training steps.

The one documented difference: torch's clip_grad_norm_ scales by max_norm / (norm + 1e-6), optax's
clip_by_global_norm by max_norm / norm (and torch also clips, by a hair, when
max_norm - 1e-6 < norm < max_norm). When clipping happens, torch's gradients are therefore
smaller by the factor c = (norm + 1e-6) / norm, i.e. by ~1e-6 / norm relative: far above float64
round-off, about one ulp in float32. The tests check both regimes and account for c explicitly.

Clipping and one step are checked with the twin's make_optimizer ("twin", optax's clipping) and with the
optimizer a run compiles ("run", jax_ddpm.runner.chunk: the same formula, its norm summed in a fixed
order); the 50 steps with the run's, the program `python -m jax_ddpm.train` executes.
"""

import pytest

from parity_tests import layers
from parity_tests.compare import assert_pairs_close, errors

pytestmark = pytest.mark.torch

CLIPPED, UNCLIPPED = 1.0, 1000.0  # clip norms: fresh gradients have global norm 0.1 .. 5
PROGRAMS = ["twin", "run"]


def clip_factor(norm: float, clip_norm: float) -> float:
    """How much larger optax's clipped gradient is than torch's: (norm + 1e-6) / norm, or 1."""
    return (norm + 1e-6) / norm if norm > clip_norm else 1.0


def split(pairs, *prefixes):
    """The pairs whose names start with each prefix (a string or a tuple of strings)."""
    return [{k: v for k, v in pairs.items() if k.startswith(prefix)} for prefix in prefixes]


@pytest.mark.parametrize("program", PROGRAMS)
def test_clip_clipped_regime(precision, program):
    pairs, norm = layers.clip_pairs(precision, CLIPPED, program)
    assert norm > CLIPPED
    c = clip_factor(norm, CLIPPED)
    # Same input gradients on both sides; after undoing torch's 1e-6, one scaling each: 4 eps.
    assert_pairs_close({k: (out_ref * c, out_ans) for k, (out_ref, out_ans) in pairs.items()}, rel=4 * precision.eps)
    if precision.name == "float64":  # the raw difference is the documented one, not more
        for out_ref, out_ans in pairs.values():
            assert errors(out_ref, out_ans).max_rel == pytest.approx(1e-6 / norm, rel=1e-6)


@pytest.mark.parametrize("program", PROGRAMS)
def test_clip_unclipped_regime_is_identity_on_both_sides(precision, program):
    pairs, norm = layers.clip_pairs(precision, UNCLIPPED, program)
    assert norm < UNCLIPPED
    assert_pairs_close(pairs, rel=0.0)  # torch multiplies by exactly 1.0, optax passes through


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("clip_norm", [CLIPPED, UNCLIPPED], ids=["clipped", "unclipped"])
def test_one_adam_and_clip_step(precision, clip_norm, program):
    pairs, norm = layers.optimizer_step_pairs(precision, clip_norm, program)
    assert (norm > clip_norm) == (clip_norm == CLIPPED)
    c = clip_factor(norm, clip_norm)
    loss, params, mu, nu = split(pairs, "loss", ("params.", "ema."), "adam_mu.", "adam_nu.")
    assert_pairs_close(loss, rel=8 * precision.eps)
    # Adam's moments are (1 - beta) g and (1 - beta2) g^2 of the clipped gradient: scale by c and
    # c^2 and they agree like the gradients do (measured <= 8 eps).
    assert_pairs_close({k: (r * c, a) for k, (r, a) in mu.items()}, rel=32 * precision.eps)
    assert_pairs_close({k: (r * c**2, a) for k, (r, a) in nu.items()}, rel=32 * precision.eps)
    # Parameters (and the EMA, a tenth of the step): the first Adam step is lr g / (|g| + 1e-8),
    # blind to the scale of g except through 1e-8, so c moves it by at most lr (c - 1) (measured
    # 0.25 of that in float64). In float32, gradient entries of ~1e-9 (embedding rows and kernel
    # entries whose contributions cancel) carry a rounding error of a few % of themselves, which
    # 1e-8 turns into up to lr * dg / 1e-8: measured 6.3e-3 lr, so allow 0.02 lr there.
    # Otherwise round-off: measured <= 25 eps of each array's scale.
    atol = layers.LR * (c - 1) + (0.02 * layers.LR if precision.name == "float32" else 0.0)
    assert_pairs_close(params, rel=64 * precision.eps, atol=atol)


def test_ema_update(precision):
    # shadow = 0.1 param + 0.9 shadow: same two products and sum on both sides; measured exact.
    assert_pairs_close(layers.ema_pairs(precision, "twin"), rel=2 * precision.eps)


def test_sweep_ema_rate_update(precision):
    # A sweep's EmaRate holds 1 - mu and mu as float32 (a run's dtype): in float32 the twin's products
    # exactly; in float64 off by float32's rounding of 0.1 and 0.9 (relative 2^-24 each at most).
    assert_pairs_close(layers.ema_pairs(precision, "sweep"), rel=2 * max(precision.eps, 2.0**-24))


@pytest.mark.parametrize("clip_norm", [CLIPPED, UNCLIPPED], ids=["clipped", "unclipped"])
def test_fifty_training_steps(precision, clip_norm):
    pairs, norms = layers.training_pairs(precision, clip_norm, n_steps=50)
    assert len(pairs["loss"][0]) == 50
    if clip_norm == CLIPPED:  # the tutorial's setting: most steps clip, some do not
        assert max(norms) > CLIPPED > min(norms)
    else:
        assert max(norms) < UNCLIPPED
    # Round-off accumulated over 50 dependent steps: measured <= 110 eps (float64, unclipped) and
    # <= 230 eps (float32, Adam's moments) of each array's scale; allow 1024 eps.
    rel = 1024 * precision.eps
    # Clipped steps differ by ~1e-6 / norm (norms down to 0.3 here) and Adam's moments keep that:
    # measured 1.4e-6 in float64 (where the unclipped run agrees to round-off, which pins the
    # difference on the clip formula); allow 1e-5.
    if clip_norm == CLIPPED:
        rel += 1e-5
    # float32: the Adam 1e-8 effect of the one-step test (measured 3.9e-3 lr after 50 steps).
    atol = 0.02 * layers.LR if precision.name == "float32" else 0.0
    trajectory, moments = split(pairs, ("loss", "params.", "ema."), "adam_")
    assert_pairs_close(trajectory, rel=rel, atol=atol)
    assert_pairs_close(moments, rel=rel)
