"""The machinery of runs: set-up, the chunk loop, sampling and evaluation, sweeps, checkpoints, many processes.

- `chunk`: the compiled program of a run (epochs of the twin's train_step, seeds, devices), its
  initial state and keys, and what keeps a sweep's models bit for bit its single runs.
- `experiment`: one run, `train_and_evaluate(config)`: the three phases below in order.
- `setup`: a run's `Run`, `set_up` (or restore with --resume), `set_up_together` on every process.
- `loop`: the one chunk loop (`train`) of a run (a group of one configuration) and of a sweep's group.
- `evaluation`: the quality of samples (every model scored at once) and of a state (`evaluate_state`).
- `finish`: a run's last phase: sample with both parameters, evaluate, draw the pictures, write the summary;
  `finish_runs` does it for a sweep group's runs as one batch.
- `scoring`: the sample-quality metrics of K models in one jitted program (numpy's `metrics.evaluate` on device).
- `sweep`: a sweep's groups (`HyperParams`, `make_sweep_chunk`, `set_up_group`, `finish_group`, `run_sweep`).
- `checkpoint`: orbax checkpoints with integrity checks.
- `compile_cache`: JAX's persistent compilation cache.
- `distributed`: a run over several processes (jax.distributed).
- `draw`: samples of a run's models: one model (`draw_samples`), every seed's chains, large draws in chunks,
  and K models in one call (`sample_models`: vmapped on a GPU, one after another on a CPU), bit for bit each
  model's own.

May import: everything below it (the twins, `objectives`, `samplers`, `speed`) and ddpm_harness.
The command lines at the package's top import it; it never imports them.
"""
