"""The two floating-point precisions of the parity tests, without importing torch (tests that need
only JAX use them too, in the compatibility job that has no torch)."""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Precision:
    """One floating-point precision on both sides: numpy/JAX dtype, torch dtype, JAX x64 switch."""

    name: str
    np_dtype: type

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.name)

    @property
    def eps(self) -> float:
        """Machine epsilon (one ulp at 1.0): tolerances are written as multiples of it."""
        return float(np.finfo(self.np_dtype).eps)

    def context(self) -> contextlib.AbstractContextManager:
        """JAX x64 on for float64 only, scoped (jax.enable_x64 is a context manager in jax 0.10),
        so float32 tests run in JAX's default 32-bit mode whatever ran before them."""
        return jax.enable_x64(self.np_dtype == np.float64)


FLOAT32 = Precision("float32", np.float32)
FLOAT64 = Precision("float64", np.float64)
PRECISIONS = (FLOAT32, FLOAT64)
