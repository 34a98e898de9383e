"""The tutorial in PyTorch, quirks included: the oracle that jax_ddpm is tested against.

Do not "fix" anything here; better behaviour belongs in jax_ddpm behind an option. Every function
that draws randomness also accepts it injected (t, e, z, x_T) so tests can drive both sides with
the same numbers.
"""
