"""Weight conversion between the PyTorch reference's state dict and the Flax parameter dict.

PyTorch stores a Linear weight as (out, in); a Flax kernel is (in, out), so kernels are
transposed. Every key and shape is checked; a round trip is exact (a transpose loses nothing).
"""

from __future__ import annotations

import numpy as np


class ConversionError(ValueError):
    """The two sides do not describe the same ConditionalModel."""


def _layout(n_steps: int, n_outputs: int) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], bool]]:
    """torch key -> (flax path, torch shape, transposed?) for ConditionalModel(n_steps, n_outputs)."""
    layout = {}
    for i, (num_in, num_out) in enumerate([(2, 128), (128, 128), (128, 128)], start=1):
        layout[f"lin{i}.lin.weight"] = ((f"lin{i}", "lin", "kernel"), (num_out, num_in), True)
        layout[f"lin{i}.lin.bias"] = ((f"lin{i}", "lin", "bias"), (num_out,), False)
        layout[f"lin{i}.embed.weight"] = ((f"lin{i}", "embed", "embedding"), (n_steps, num_out), False)
    layout["lin4.weight"] = (("lin4", "kernel"), (n_outputs, 128), True)
    layout["lin4.bias"] = (("lin4", "bias"), (n_outputs,), False)
    return layout


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; jax_ddpm itself never imports torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _check_keys(found: set, expected: set, what: str) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise ConversionError(f"{what} does not match ConditionalModel: missing {missing or 'none'}, "
                              f"unexpected {unexpected or 'none'}")


def _check_shape(name: str, shape: tuple, expected: tuple) -> None:
    if tuple(shape) != tuple(expected):
        raise ConversionError(f"{name} has shape {tuple(shape)}, expected {tuple(expected)}")


def torch_to_flax(state_dict) -> dict:
    """A ConditionalModel state dict (tensors or arrays) -> nested Flax params of numpy arrays."""
    if "lin1.embed.weight" not in state_dict or "lin4.bias" not in state_dict:
        _check_keys(set(state_dict), set(_layout(1, 2)), "state dict")
    n_steps = _to_numpy(state_dict["lin1.embed.weight"]).shape[0]
    n_outputs = _to_numpy(state_dict["lin4.bias"]).shape[0]
    layout = _layout(n_steps, n_outputs)
    _check_keys(set(state_dict), set(layout), "state dict")
    params: dict = {}
    for key, (path, shape, transposed) in layout.items():
        value = _to_numpy(state_dict[key])
        _check_shape(key, value.shape, shape)
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value.T.copy() if transposed else value.copy()
    return params


def _flatten(tree: dict, prefix: tuple = ()) -> dict[tuple[str, ...], object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, prefix + (key,)))
        else:
            flat[prefix + (key,)] = value
    return flat


def flax_to_state_dict(params: dict) -> dict[str, np.ndarray]:
    """Nested Flax params -> the tutorial's state dict as numpy arrays (torch layout, C order)."""
    flat = {path: _to_numpy(v) for path, v in _flatten(params).items()}
    embed = flat.get(("lin1", "embed", "embedding"))
    head = flat.get(("lin4", "bias"))
    layout = _layout(embed.shape[0] if embed is not None else 1, head.shape[0] if head is not None else 2)
    by_path = {path: key for key, (path, _, _) in layout.items()}
    _check_keys({".".join(p) for p in flat}, {".".join(p) for p in by_path}, "Flax params")
    state_dict = {}
    for path, key in by_path.items():
        _, shape, transposed = layout[key]
        # Checked in the Flax layout, so the message names the shape the caller passed.
        _check_shape(".".join(path), flat[path].shape, shape[::-1] if transposed else shape)
        value = flat[path].T if transposed else flat[path]
        state_dict[key] = np.ascontiguousarray(value).copy()
    return state_dict


def flax_to_torch(params: dict) -> dict:
    """Nested Flax params -> a state dict of torch tensors that ConditionalModel.load_state_dict takes."""
    import torch

    return {key: torch.from_numpy(value) for key, value in flax_to_state_dict(params).items()}
