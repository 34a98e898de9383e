"""jax-ddpm: the classic 2D denoising-diffusion tutorial in JAX/Flax, proven equal to a PyTorch reference.

The data flows one way: config -> data -> schedule -> train state -> scanned steps ->
checkpoint and samples -> metrics and pictures.
"""

__version__ = "0.1.0"
