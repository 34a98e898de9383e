"""Layer-by-layer parity of jax_ddpm against torch_reference, in float32 and float64.

`layers` builds the (out_ref, out_ans) pairs, `compare` measures and asserts them, the test files
hold one test per layer with its tolerance, and `python -m parity_tests.error_table` prints the
measured errors as a markdown table.
"""
