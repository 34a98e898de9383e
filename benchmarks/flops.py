"""Analytic FLOP counts of the tutorial's model, from its architecture (multiply-add = 2 FLOPs).

ConditionalModel: Linear(2, 128), Linear(128, 128) twice, Linear(128, n_outputs); each of the
first three scaled by a per-step gain and followed by softplus. Matmuls dominate; the element-wise
work (gains, softplus, the loss) is counted as a few FLOPs per activation.
"""

from __future__ import annotations

HIDDEN = 128
LAYERS = ((2, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, HIDDEN))  # the ConditionalLinear layers


def n_params(n_steps: int = 100, n_outputs: int = 2) -> int:
    """Parameter count: 72,066 for the tutorial's model (T = 100, 2 outputs)."""
    conditional = sum(n_in * n_out + n_out + n_steps * n_out for n_in, n_out in LAYERS)
    return conditional + HIDDEN * n_outputs + n_outputs


def matmul_flops(batch: int, n_outputs: int = 2) -> int:
    """Forward matmul FLOPs for a batch: 2 B (2*128 + 2*128^2 + 128*n_outputs)."""
    return 2 * batch * (sum(n_in * n_out for n_in, n_out in LAYERS) + HIDDEN * n_outputs)


def forward_flops(batch: int, n_outputs: int = 2) -> int:
    """Matmuls plus bias, gain and softplus (about 4 FLOPs per hidden activation)."""
    return matmul_flops(batch, n_outputs) + 4 * batch * HIDDEN * len(LAYERS)


def train_step_flops(batch: int, n_steps: int = 100, n_outputs: int = 2) -> int:
    """One optimizer step: forward, backward (two matmuls per forward matmul, so ~2x forward),
    then global-norm clipping (3/param), Adam (~10/param) and the EMA (3/param)."""
    return 3 * forward_flops(batch, n_outputs) + 16 * n_params(n_steps, n_outputs)


def sampling_flops(n_points: int, n_steps: int = 100, n_outputs: int = 2) -> int:
    """The whole reverse chain: one forward pass of n_points per step, plus the update (~6/point)."""
    return n_steps * (forward_flops(n_points, n_outputs) + 6 * n_points * 2)
