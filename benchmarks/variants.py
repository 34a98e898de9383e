"""What a benchmark report compares, per device: the training and sampling variants, each a name and
a builder that returns (run, work) (benchmarks.timing).

The CPU report keeps the variants it always had. The GPU report adds torch with CUDA graphs (a
whole step captured with torch.cuda.graph, and torch.compile's mode "reduce-overhead"), torch.compile's
default mode, and TF32 rows, which stay out of the float32 comparisons.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ddpm_harness.config import Config

TORCH_EAGER = "torch eager (tutorial)"
TORCH_FAST = "torch fast eager (fused Adam, foreach clip + EMA)"
TORCH_COMPILE_CPU = "torch.compile whole step"
TORCH_CUDA_GRAPH = "torch CUDA graph of the whole step (torch.cuda.graph)"
TORCH_COMPILE_GRAPHS = "torch.compile whole step, CUDA graphs (mode reduce-overhead)"
TORCH_COMPILE_DEFAULT = "torch.compile whole step (default mode)"
JAX_LOOP = "JAX jitted step, Python loop"
JAX_SCAN = "JAX scan-fused epochs (default CLI path)"
JAX_SCAN_TF32 = "JAX scan-fused epochs, TF32 matmuls"
TORCH_CUDA_GRAPH_TF32 = "torch CUDA graph of the whole step, TF32 matmuls"

SAMPLE_TUTORIAL = "torch as the tutorial (autograd on)"
SAMPLE_NO_GRAD = "torch no_grad"
SAMPLE_COMPILED_CPU = "torch.compile model, no_grad"
SAMPLE_COMPILED_GPU = "torch.compile model, CUDA graphs (mode reduce-overhead), no_grad"
SAMPLE_JAX = "JAX sample_chain (lax.scan)"

NOT_ON_GPU = {
    SAMPLE_TUTORIAL: "not run on the GPU: with autograd on, the chain keeps every step's graph alive through "
    "the list of states; at 10^6 points that is hundreds of GB (on the CPU report, 10^4 points)",
}


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    build: Callable[[], tuple[Callable[[], None], float]]
    warmup: int = 1
    needs_cuda: bool = False  # skipped by a dry run on the CPU
    precision: str = "float32"  # "tf32": TF32 matmuls, kept out of the float32 comparisons
    optional: bool = False  # measured after the rest, and skipped once the time budget is spent


@dataclasses.dataclass(frozen=True)
class Setting:
    """What the variant lists depend on."""

    kind: str  # the report: "cpu" or "gpu"
    quick: bool
    torch_device: str  # "cpu", or "cuda" (a GPU report run on a GPU)
    compile_backend: str = "inductor"  # "aot_eager" in a dry run: traces, generates no code


def training_variants(
    setting: Setting, config: Config, data: np.ndarray, torch_steps: int, loop_steps: int, epochs: int
) -> list[Variant]:
    """One model, batch 128, in report order."""
    from benchmarks import jax_bench, torch_bench

    dev, backend = setting.torch_device, setting.compile_backend

    def fast(mode=None):
        return lambda: torch_bench.fast_train_runner(data, 128, torch_steps, dev, compile_mode=mode, backend=backend)

    variants = [
        Variant(TORCH_EAGER, lambda: torch_bench.tutorial_train_runner(data, 128, torch_steps, dev)),
        Variant(TORCH_FAST, fast()),
    ]
    if setting.kind == "gpu":
        variants += [
            Variant(
                TORCH_CUDA_GRAPH,
                lambda: torch_bench.cuda_graph_train_runner(data, 128, torch_steps, dev),
                needs_cuda=True,
            ),
            Variant(TORCH_COMPILE_GRAPHS, fast("reduce-overhead"), warmup=3, optional=True),
            Variant(TORCH_COMPILE_DEFAULT, fast("default"), warmup=2, optional=True),
        ]
    elif not setting.quick:
        variants.append(Variant(TORCH_COMPILE_CPU, fast("default"), warmup=2, optional=True))
    variants += [
        Variant(JAX_LOOP, lambda: jax_bench.python_loop_runner(config, loop_steps)),
        Variant(JAX_SCAN, lambda: jax_bench.chunk_runner(config, epochs)),
    ]
    if setting.kind == "gpu":
        variants += [
            Variant(
                JAX_SCAN_TF32,
                lambda: jax_bench.chunk_runner(config, epochs, precision="tensorfloat32"),
                precision="tf32",
                optional=True,
            ),
            Variant(
                TORCH_CUDA_GRAPH_TF32,
                lambda: torch_bench.cuda_graph_train_runner(data, 128, torch_steps, dev, use_tf32=True),
                needs_cuda=True,
                precision="tf32",
                optional=True,
            ),
        ]
    return variants


def sampling_variants(setting: Setting, n_points: int) -> list[Variant]:
    """The reverse chain of n_points over 100 steps, in report order."""
    from benchmarks import jax_bench, torch_bench

    dev, backend = setting.torch_device, setting.compile_backend

    def torch_chain(mode):
        return lambda: torch_bench.sampling_runner(n_points, dev, mode, backend=backend)

    gpu = setting.kind == "gpu"
    variants = [] if gpu else [Variant(SAMPLE_TUTORIAL, torch_chain("tutorial"))]
    variants.append(Variant(SAMPLE_NO_GRAD, torch_chain("no_grad")))
    if gpu or not setting.quick:
        variants.append(
            Variant(
                SAMPLE_COMPILED_GPU if gpu else SAMPLE_COMPILED_CPU,
                torch_chain("compiled"),
                warmup=3 if gpu else 2,
                optional=True,
            )
        )
    variants.append(Variant(SAMPLE_JAX, lambda: jax_bench.sampling_runner(n_points)))
    return variants
