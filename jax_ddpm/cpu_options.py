"""Per-program XLA:CPU compiler options, measured on the 2-core AVX-512 machine.

They are passed to `jax.jit(..., compiler_options=...)` of one program each, not set in XLA_FLAGS,
because what speeds one program up slows the other. Both change results only by float rounding.
They are XLA DebugOptions of jax 0.10 (pyproject pins jax < 0.11); other backends get none.
"""

from __future__ import annotations

from typing import Optional

import jax

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
    """`options` when JAX runs on CPU, else None (jit's default)."""
    return options if jax.default_backend() == "cpu" else None
