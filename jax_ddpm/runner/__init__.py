"""The machinery of runs: set-up, the chunk loop, checkpoints, the compile cache, many processes.

- `experiment`: one run, set up, trained in compiled chunks and finished.
- `checkpoint`: orbax checkpoints with integrity checks.
- `compile_cache`: JAX's persistent compilation cache.
- `distributed`: a run over several processes (jax.distributed).
- `scoring`: the sample-quality metrics of K models in one jitted program (numpy's `metrics.evaluate` on device).
- `batched_sampling`: the final samples of K models in one vmapped program, bit for bit each model's own.

May import: everything below it (the twins, `objectives`, `samplers`, `speed`) and ddpm_harness.
The command lines at the package's top import it; it never imports them.
"""
