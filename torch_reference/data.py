"""The tutorial's datasets (its first cell), as float32 tensors of shape (N, 2)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import make_moons, make_s_curve, make_swiss_roll


def swiss_roll(n: int = 10**4, noise: float = 0.1, random_state=None) -> np.ndarray:
    x, _ = make_swiss_roll(n, noise=noise, random_state=random_state)
    return x[:, [0, 2]] / 10.0


def s_curve(n: int = 10**4, noise: float = 0.1, random_state=None) -> np.ndarray:
    x, _ = make_s_curve(n, noise=noise, random_state=random_state)
    return x[:, [0, 2]] / 10.0


def moons(n: int = 10**4, noise: float = 0.1, random_state=None) -> np.ndarray:
    x, _ = make_moons(n, noise=noise, random_state=random_state)
    return x


def as_dataset(points: np.ndarray) -> torch.Tensor:
    """`dataset = torch.Tensor(data.T).float()` with data = points.T: a float32 (N, 2) tensor."""
    return torch.Tensor(np.asarray(points).T.T).float()
