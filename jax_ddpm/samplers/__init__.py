"""The reverse process beyond the tutorial's p_sample_loop.

- `tutorial`: the tutorial's chain compiled for runs (`sample_chain`), with a learned variance too.
- `chains`: the DDPM (K of T steps), DDIM, DPM-Solver++ and probability-flow ODE samplers, and the
  registry `sample` that runs any of them with one checked `ddpm_harness.config.SamplerOptions`.
- `flow`: a flow model's samplers (--method flow): Euler, midpoint (K fixed steps) and the adaptive ODE.
- `samples`: `Samples`, what every sampler returns, and the ODE solver's settings.
- `likelihood`: the exact NLL through the probability-flow ODE.

May import: the twins, `speed`, `objectives` and ddpm_harness. Never imports `runner` or a command line.
"""
