"""What the model learns, beyond the tutorial's noise loss, and the step that teaches it.

- `step`: one optimizer step as a pure function (`pure_train_step` on a `TrainState`: the twin's
  stateful `training.train_step` for a compiled program), the step's draws (`batch_noise`), the EMA
  decay as factors (`EmaRate`).
- `schedules`: the schedule a run's config asks for (`run_schedule`): cosine betas, zero terminal SNR.
- `predictions`: the model's output read as eps, v or x0, and the training target of each.
- `variance`: the learned variance (a 4-output model), the hybrid loss and the variational bound.
- `guidance`: classifier-free guidance: `guided` ((1 + w) cond - w uncond on any prediction), a
  class-conditional model asked at a class and at the null class (`guided_model_fn`), label dropout.
- `conditional`: the class-conditional model (the tutorial's, with a learned per-class scale and a null
  class) and its loss with label dropout (`cond_drop`).
- `mixtures`: the exact model of Gaussian-mixture data (noised class-conditional scores in closed form).
- `flow`: flow matching (--method flow): TorchCFM's path, target and couplings, and its loss.
- `objective`: `loss_fn_for(config)`, the one place a run's loss is chosen (the single run and the sweep).

May import: the twins at the package's top (schedule, model, losses, ema), `speed`, and ddpm_harness.
Never imports `samplers`, `runner` or a command line.
"""
