"""`python -m benchmarks.guidance_exact`: docs/guidance_exact.png, what guidance does to the exact model.

The exact class-conditional eps of two Gaussian mixtures (`jax_ddpm.objectives.mixtures`): eight_gaussians
in the dataset's units (class k: N(2 (cos, sin)(k 45 degrees), 0.1^2 I)) and two classes N((-/+0.5, 0),
0.5^2 I), guided by `objectives.guidance` at w = 0, 1, 3, 7, sampled by DDIM (eta = 0) on the cosine
schedule with T = 1000 in float64, from the same x_T ~ N(0, I) at every w (one compiled program per
mixture for all four w). No trained model: this is what a perfect model would draw (docs/guidance.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_harness.plots import plot_guidance
from jax_ddpm.objectives import guidance, mixtures
from jax_ddpm.objectives.schedules import cosine_betas, device_schedule
from jax_ddpm.samplers import chains

WS = (0.0, 1.0, 3.0, 7.0)


def exact_guided_samples(
    mix: mixtures.GaussianMixture, schedule, ws, n_per_class: int, key
) -> tuple[np.ndarray, np.ndarray]:
    """DDIM samples (len(ws), N, 2) of the exact model guided at each w, and their labels (N,)."""
    labels = jnp.arange(n_per_class * mix.n_classes) % mix.n_classes
    x_T = jax.random.normal(key, (len(labels), 2), schedule.alphas_prod.dtype)
    model = mixtures.class_model_fn(mix, schedule)

    def one(w):
        return chains.ddim(guidance.guided_model_fn(model, labels, w, mix.n_classes), schedule, x_T).x_0

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(ws))), np.asarray(labels)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "docs" / "guidance_exact.png")
    args = parser.parse_args(argv)
    with jax.enable_x64(True):
        schedule = device_schedule(cosine_betas(1000))
        rows = {w: {} for w in WS}
        for name, mix, n in (
            ("eight gaussians", mixtures.eight_gaussians(0.1, dtype=jnp.float64), 250),
            ("two gaussians", mixtures.two_gaussians(1.0, 0.5, dtype=jnp.float64), 1000),
        ):
            samples, labels = exact_guided_samples(mix, schedule, WS, n, jax.random.key(0))
            for i, w in enumerate(WS):
                rows[w][f"{name} (exact)"] = (samples[i], labels)
    plot_guidance(rows, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
