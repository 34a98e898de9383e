"""The speed tricks: what jax_ddpm does beyond the tutorial's translation only to run faster.

- `dense` / `FastLinear`: a linear layer whose backward pass computes the kernel gradient from a
  materialised transpose, which XLA:CPU runs as a fast row-major matmul.
- `epoch_permutation`: a uniform random permutation from packed uint32 sorts.
- `linear_assignment`: the exact assignment of a square cost (flow matching's OT coupling), per backend:
  scipy's on the CPU's host, optax's Hungarian algorithm compiled into the program elsewhere.
- `program_options`: per-program compiler options per backend: on the CPU `TRAINING` / `SAMPLING`,
  chosen by its vector ISA (`options_for`); on a GPU, `GPU_OPTIONS` (XLA's autotuning off).

Each changes results at most by float rounding (tests/test_speed.py). Why each pays, and by how much on
each kind of CPU measured: benchmarks/results/cpu-<isa>.md and docs/speed.md.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ddpm_harness.cpu_isa import vector_isa


@jax.custom_vjp
def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """x (B, in) @ kernel (in, out) + bias (out,), with a backward pass tuned for XLA:CPU.

    Same gradients as autodiff up to float rounding; only the kernel gradient x^T g is computed
    differently: XLA:CPU runs a dot that contracts both operands' leading axis as a slow generic
    loop, but a materialised x^T times g as a fast row-major matmul (copy included, about twice as
    fast: benchmarks/results/cpu-avx512.md). Forward and the other gradients are the plain matmuls; the
    bias gradient is a dot with a vector of ones, so that it rounds alike with and without vmap.
    """
    return x @ kernel + bias


def _dense_fwd(x, kernel, bias):
    return dense(x, kernel, bias), (x, kernel)


def _dense_bwd(residuals, g):
    x, kernel = residuals  # g: (B, out)
    x_t = jax.lax.optimization_barrier(x.T)  # (in, B), kept as a real transposed copy
    # The bias gradient as a dot too: XLA:CPU reduces jnp.sum(g, axis=0) in another order once the
    # layer is vmapped, a dot rounds the same either way, so one model trains bit for bit alike
    # alone and among the models of a sweep (tests/test_sweep.py).
    return g @ kernel.T, x_t @ g, jnp.ones(g.shape[:1], g.dtype) @ g


dense.defvjp(_dense_fwd, _dense_bwd)


class FastLinear(nnx.Linear):
    """nnx.Linear (same parameters, kernel (in, out)) evaluated with `dense`."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return dense(x, self.kernel[...], self.bias[...])


def epoch_permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniform random permutation of range(n) (int32), several times faster on XLA:CPU than
    `jax.random.permutation` (benchmarks/results/cpu-avx512.md).

    XLA:CPU sorts a lone uint32 array several times faster than key-value pairs, so each round
    sorts random bits with the position packed into the low bits (all keys distinct: no ties to
    break) and applies the order it finds. Together the rounds order the items by the
    concatenation of their random bits, at least 3 log2(n) of them as `jax.random.permutation`
    draws, so two items tie on all of them with probability below 1/n per call. Falls back to
    `jax.random.permutation` when n leaves fewer than 8 random bits a round.
    """
    index_bits = max(1, (n - 1).bit_length())
    random_bits = 32 - index_bits
    if random_bits < 8:
        return jax.random.permutation(key, n)
    low = jnp.uint32((1 << index_bits) - 1)
    positions = jnp.arange(n, dtype=jnp.uint32)
    perm = positions
    for round_key in jax.random.split(key, -(-3 * index_bits // random_bits)):
        packed = (jax.random.bits(round_key, (n,), jnp.uint32) & ~low) | positions
        perm = perm[jnp.sort(packed) & low]
    return perm.astype(jnp.int32)


# Per-program XLA:CPU compiler options, passed to `jax.jit(..., compiler_options=...)` of one
# program each rather than set in XLA_FLAGS, because what speeds one program up slows the other.
# Both change results only by float rounding. They are XLA DebugOptions of jax 0.10 (pyproject pins
# jax < 0.11); other backends get none.
#
# Chosen by the CPU's widest vector ISA (ddpm_harness.cpu_isa), as measured on each; the benchmark
# measures every set on the CPU it runs on (benchmarks/results/cpu-<isa>.md, "Per-program options").
# - The scan-fused training chunk: 512-bit vectors for the element-wise fusions (softplus, Adam,
#   EMA) pay on AVX-512 and made no difference on AVX2, so AVX2 gets none. Not YNNPACK's
#   reductions (LibraryFusionType REDUCE = 3): a little faster on an idle machine, but they keep a
#   pool thread spinning, which halves the rate when the other core is busy (--seeds K --devices 2,
#   a neighbour). Not YNNPACK's dots (types 1, 4): slower.
# - The sampling chain: YNNPACK's fused element-wise kernels (ELTWISE = 2) run the gains, softplus
#   and posterior arithmetic over n x 128 values faster (much on AVX-512, a little on AVX2); the
#   small training step is slower with them. On AVX-512 YNNPACK's dots too (DOT = 1): the same time
#   for a chain of 10,000 points, ~10% less for the 2,000 of a sweep's (115 against 127 ms, 6 rounds
#   interleaved, 2026-12-05); AVX2 keeps element-wise only until a machine of it measures both.
# A CPU of another ISA (Arm, x86 without AVX2) gets no options: none was measured there.
WIDE_VECTORS = {"xla_cpu_prefer_vector_width": 512}
YNN_ELTWISE = {"xla_cpu_experimental_ynn_fusion_type": "2"}
YNN_DOT_ELTWISE = {"xla_cpu_experimental_ynn_fusion_type": "1,2"}
OPTIONS_BY_ISA = {
    "avx512": dict(training=WIDE_VECTORS, sampling=YNN_DOT_ELTWISE),
    "avx2": dict(training={}, sampling=YNN_ELTWISE),
}


def options_for(isa: str) -> tuple[dict, dict]:
    """(training chunk options, sampling chain options) for a vector ISA; none for an unknown one."""
    chosen = OPTIONS_BY_ISA.get(isa, {})
    return dict(chosen.get("training", {})), dict(chosen.get("sampling", {}))


ISA = vector_isa()
TRAINING, SAMPLING = options_for(ISA)


def linear_assignment(cost: jax.Array, where: Optional[str] = None) -> jax.Array:
    """perm (B,) int32 minimising sum_j cost[j, perm[j]] over permutations, for a square cost (..., B, B)
    (leading axes: vmapped models). `where`: "host" runs scipy's linear_sum_assignment through
    `jax.pure_callback`, "compiled" runs optax's Hungarian algorithm inside the program; default: host on
    the CPU (measured 5x faster a solve at B = 128, docs/flow.md), compiled elsewhere (a GPU would wait on
    the host every step). Both are exact, so they agree wherever the optimum is unique (tests/test_flow.py)."""
    if (where or ("host" if jax.default_backend() == "cpu" else "compiled")) == "host":
        out = jax.ShapeDtypeStruct(cost.shape[:-1], jnp.int32)
        return jax.pure_callback(_host_assignment, out, cost, vmap_method="expand_dims")
    rows, cols = optax.assignment.hungarian_algorithm(cost)
    return jnp.zeros(cost.shape[0], jnp.int32).at[rows].set(cols.astype(jnp.int32))


def _host_assignment(cost: np.ndarray) -> np.ndarray:
    """scipy's exact assignment of each square matrix of cost (..., B, B): its column per row (int32)."""
    import scipy.optimize  # here, not at the top: 0.3 s of every run's start-up, for --coupling ot only

    costs = np.asarray(cost)
    flat = costs.reshape(-1, *costs.shape[-2:])
    perms = [scipy.optimize.linear_sum_assignment(c)[1] for c in flat]
    return np.stack(perms).astype(np.int32).reshape(costs.shape[:-1])


# Per-program XLA:GPU options. On a GPU, XLA autotunes the kernels of every GEMM and fusion when it
# compiles a program; for this model's small matmuls that search costs most of a first compile and
# finds nothing faster. Measured on one H200 (JAX 0.11.2, 2026-12-04, the default run's 50-epoch
# chunk): compiled in 31.4 s with autotuning and 7.0 s at level 0, training at 13,900 and 13,676
# steps/s. The sampling programs get the same option by the same reasoning, unmeasured so far;
# `python -m benchmarks.gpu_newcomer` measures both against none (JAX_DDPM_NO_PROGRAM_OPTIONS=1).
GPU_OPTIONS = {"training": {"xla_gpu_autotune_level": 0}, "sampling": {"xla_gpu_autotune_level": 0}}
NO_PROGRAM_OPTIONS_ENV = "JAX_DDPM_NO_PROGRAM_OPTIONS"


def program_options(program: str) -> Optional[dict]:
    """The compiler options of one of the library's programs ("training" or "sampling") on the backend
    JAX runs on: the CPU's ISA options, the GPU's, or None (jit's default) elsewhere or when
    JAX_DDPM_NO_PROGRAM_OPTIONS=1 (to measure the options against none)."""
    if os.environ.get(NO_PROGRAM_OPTIONS_ENV) == "1":
        return None
    backend = jax.default_backend()
    if backend == "cpu":
        return on_cpu(TRAINING if program == "training" else SAMPLING)
    if backend == "gpu":
        return supported_options(GPU_OPTIONS[program]) or None
    return None


def on_cpu(options: dict) -> Optional[dict]:
    """The `supported_options` of `options` when JAX runs on CPU, else None (jit's default)."""
    return (supported_options(options) or None) if jax.default_backend() == "cpu" else None


def supported_options(options: dict) -> dict:
    """The entries of `options` that this jaxlib's XLA accepts. They are XLA DebugOptions, which come
    and go between XLA versions: each rejected one (an unknown name, a bad value) is dropped with
    one warning line on stderr, once per process."""
    return {name: value for name, value in options.items() if _option_accepted(name, value)}


@functools.cache
def _option_accepted(name: str, value) -> bool:
    """Compile a one-addition program with the option alone: XLA refuses unknown names and bad
    values at compile time (JaxRuntimeError: "No such compile option")."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(jnp.zeros((), jnp.float32)).compile()
    except Exception as err:  # noqa: BLE001  (jaxlib's error types vary between versions)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        print(
            f"warning: XLA option {name}={value!r} is not accepted by jax {jax.__version__} ({reason}); "
            "compiling without it",
            file=sys.stderr,
        )
        return False
    return True
