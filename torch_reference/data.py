"""The tutorial's dataset tensor. The points themselves come from ddpm_harness.data, which draws
the tutorial's three datasets exactly as its first cell does (shared by both implementations)."""

from __future__ import annotations

import numpy as np
import torch


def as_dataset(points: np.ndarray) -> torch.Tensor:
    """`dataset = torch.Tensor(data.T).float()` with data = points.T: a float32 (N, 2) tensor."""
    return torch.Tensor(np.asarray(points).T.T).float()
