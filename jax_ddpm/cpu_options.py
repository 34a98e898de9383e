"""Per-program XLA:CPU compiler options, measured on the 2-core AVX-512 machine.

They are passed to `jax.jit(..., compiler_options=...)` of one program each, not set in XLA_FLAGS,
because what speeds one program up slows the other. Both change results only by float rounding.
They are XLA DebugOptions, which come and go between XLA versions: `supported_options` keeps the
ones this jaxlib accepts and drops the others with one warning line; other backends get none.
"""

from __future__ import annotations

import functools
import sys
from typing import Optional

import jax
import jax.numpy as jnp

# The scan-fused training chunk: 512-bit vectors for the element-wise fusions (softplus, Adam,
# EMA): ~6% more steps/s for one model. YNNPACK's reductions (LibraryFusionType REDUCE = 3) added
# ~7% more on an idle machine, but keep a pool thread spinning (process CPU 1.75x wall for one
# model): when the other core is busy (--seeds K --devices 2, a neighbour) that halved the rate.
# YNNPACK's dots (types 1, 4) were 15% slower.
TRAINING = {"xla_cpu_prefer_vector_width": 512}
# The sampling chain: YNNPACK's fused element-wise kernels (ELTWISE = 2) run the gains, softplus
# and posterior arithmetic over n x 128 values about twice as fast (10,000 points x 100 steps:
# 0.28 s instead of 0.54 s); the small training step is 20-25% slower with them.
SAMPLING = {"xla_cpu_experimental_ynn_fusion_type": "2"}


def on_cpu(options: dict) -> Optional[dict]:
    """The `supported_options` of `options` when JAX runs on CPU, else None (jit's default)."""
    return (supported_options(options) or None) if jax.default_backend() == "cpu" else None


def supported_options(options: dict) -> dict:
    """The entries of `options` that this jaxlib's XLA accepts; each rejected one (an unknown name,
    a bad value) is dropped with one warning line on stderr, once per process."""
    return {name: value for name, value in options.items() if _option_accepted(name, value)}


@functools.cache
def _option_accepted(name: str, value) -> bool:
    """Compile a one-addition program with the option alone: XLA refuses unknown names and bad
    values at compile time (JaxRuntimeError: "No such compile option")."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(jnp.zeros((), jnp.float32)).compile()
    except Exception as err:  # noqa: BLE001  (jaxlib's error types vary between versions)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        print(f"warning: XLA option {name}={value!r} is not accepted by jax {jax.__version__} ({reason}); "
              "compiling without it", file=sys.stderr)
        return False
    return True
