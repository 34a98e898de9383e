"""Comparison helpers shared by the parity tests and the error table: precisions, error measures,
the assertion, and conversions of either side's results to flat numpy dicts.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import torch

from jax_ddpm.convert import torch_to_flax
from parity_tests.precision import FLOAT32, FLOAT64, PRECISIONS, Precision  # noqa: F401  (re-exported)

Pairs = dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (out_ref, out_ans)


def to_numpy(value) -> np.ndarray:
    """A torch tensor, JAX array or number as a numpy array (same dtype)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def flat_params(params: dict) -> dict[str, np.ndarray]:
    """Nested Flax params -> {'lin1.lin.kernel': array, ...}."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return {".".join(k.key for k in path): to_numpy(v) for path, v in leaves}


def flat_torch(state_dict: dict) -> dict[str, np.ndarray]:
    """A torch state dict (or any dict keyed like one) mapped into the Flax layout by
    jax_ddpm.convert, flattened: kernels transposed, so it lines up with `flat_params`."""
    return flat_params(torch_to_flax(state_dict))


def tree_pairs(tree_ref: dict[str, np.ndarray], tree_ans: dict[str, np.ndarray], prefix: str = "") -> Pairs:
    """Pair up two flat dicts with the same keys."""
    assert tree_ref.keys() == tree_ans.keys(), (sorted(tree_ref), sorted(tree_ans))
    return {prefix + k: (tree_ref[k], tree_ans[k]) for k in tree_ref}


@dataclasses.dataclass(frozen=True)
class Errors:
    max_abs: float  # max |ans - ref|
    max_rel: float  # max |ans - ref| / max |ref|, per array (normwise)


def errors(out_ref, out_ans) -> Errors:
    """Absolute and normwise relative error of one array. Normwise (relative to the array's
    largest entry) so that entries near a zero crossing, which network outputs, samples,
    gradients and parameters all have, are judged against the array's scale, not against ~0."""
    out_ref, out_ans = np.asarray(out_ref, np.float64), np.asarray(out_ans, np.float64)
    assert out_ref.shape == out_ans.shape, (out_ref.shape, out_ans.shape)
    max_abs = float(np.max(np.abs(out_ans - out_ref), initial=0.0))
    scale = float(np.max(np.abs(out_ref), initial=0.0))
    return Errors(max_abs, max_abs / scale if scale else (0.0 if max_abs == 0 else np.inf))


def worst(pairs: Pairs) -> Errors:
    """The largest absolute and relative errors over all pairs."""
    errs = [errors(r, a) for r, a in pairs.values()]
    return Errors(max(e.max_abs for e in errs), max(e.max_rel for e in errs))


def assert_pairs_close(pairs: Pairs, *, rel: float, atol: float = 0.0) -> None:
    """Every pair has the same dtype on both sides (so a float32 result cannot sneak into a
    float64 comparison) and max |ans - ref| <= atol + rel * max |ref| (normwise, per array)."""
    assert pairs, "nothing compared"
    for name, (out_ref, out_ans) in pairs.items():
        out_ref, out_ans = np.asarray(out_ref), np.asarray(out_ans)
        assert out_ans.dtype == out_ref.dtype, f"{name}: dtype {out_ans.dtype}, reference {out_ref.dtype}"
        err = errors(out_ref, out_ans)
        bound = atol + rel * float(np.max(np.abs(out_ref), initial=0.0))
        assert err.max_abs <= bound, f"{name}: max abs error {err.max_abs:.3g} > {bound:.3g} ({err})"
