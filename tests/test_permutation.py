"""`epoch_permutation`: a permutation of range(n), fixed by its key, uniform over all orders."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import scipy.stats

from jax_ddpm.speed import epoch_permutation

# Goodness-of-fit tests reject a truly uniform sampler with this probability.
ALPHA = 1e-3


def permutations(n: int, draws: int, seed: int = 0) -> np.ndarray:
    keys = jax.random.split(jax.random.PRNGKey(seed), draws)
    return np.asarray(jax.vmap(lambda k: epoch_permutation(k, n))(keys))  # (draws, n)


def test_every_draw_is_a_permutation_fixed_by_its_key():
    for n in (1, 2, 7, 100, 10_000, 70_000):  # 70,000 needs 17 index bits: 4 rounds
        drawn = permutations(n, 3)
        assert drawn.dtype == np.int32
        assert (np.sort(drawn, axis=1) == np.arange(n)).all(), n
    np.testing.assert_array_equal(permutations(100, 3), permutations(100, 3))
    assert not (permutations(100, 3, seed=1) == permutations(100, 3)).all()


def test_all_orders_of_five_items_are_equally_likely():
    n, draws = 5, 12_000  # 120 orders, 100 expected each
    orders = {p: i for i, p in enumerate(itertools.permutations(range(n)))}
    counts = np.bincount([orders[tuple(p)] for p in permutations(n, draws)], minlength=len(orders))
    assert scipy.stats.chisquare(counts).pvalue > ALPHA, counts


def test_several_rounds_put_every_item_anywhere_uniformly():
    # n = 10,000 takes 3 sorting rounds: where items 0..9 land (in 10 bins of positions) and which
    # item comes first (10 bins of items) are both uniform.
    n, draws = 10_000, 2_000
    drawn = permutations(n, draws)
    where = np.argsort(drawn, axis=1)[:, :10] * 10 // n
    assert scipy.stats.chisquare(np.bincount(where.ravel(), minlength=10)).pvalue > ALPHA
    assert scipy.stats.chisquare(np.bincount(drawn[:, 0] * 10 // n, minlength=10)).pvalue > ALPHA
