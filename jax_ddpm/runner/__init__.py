"""The machinery of runs: set-up, the chunk loop, checkpoints, the compile cache, many processes.

- `chunk`: the compiled program of a run (epochs of the twin's train_step, seeds, devices), its
  initial state and keys, and what keeps a sweep's models bit for bit its single runs.
- `experiment`: one run, set up, trained in compiled chunks and finished.
- `checkpoint`: orbax checkpoints with integrity checks.
- `compile_cache`: JAX's persistent compilation cache.
- `distributed`: a run over several processes (jax.distributed).

May import: everything below it (the twins, `objectives`, `samplers`, `speed`) and ddpm_harness.
The command lines at the package's top import it; it never imports them.
"""
