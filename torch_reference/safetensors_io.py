"""The reference's model as a safetensors file, the format jax_ddpm reads and writes too.

`save_model` writes the tutorial's state dict (the EMA's shadow dict has the same keys) with
`safetensors.torch.save_file`; `load_model` builds a ConditionalModel of the file's size and loads
it strictly. No pickle anywhere: reading a safetensors file executes nothing. The metadata comes
from ddpm_harness.safetensors_io, which is framework-free (this module never imports jax).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ddpm_harness.safetensors_io import EMA_FILE, RAW_FILE, model_metadata
from torch_reference.model import ConditionalModel


def save_model(model_or_state_dict, path, metadata: dict[str, str]) -> None:
    """Write a ConditionalModel (or its state dict, or EMA.shadow) as safetensors with `metadata`."""
    state_dict = (
        model_or_state_dict.state_dict() if isinstance(model_or_state_dict, torch.nn.Module) else model_or_state_dict
    )
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(path), metadata=metadata)


def load_model(path) -> ConditionalModel:
    """A ConditionalModel with the weights of a safetensors file (load_state_dict, strict)."""
    state_dict = load_file(str(path))
    model = ConditionalModel(state_dict["lin1.embed.weight"].shape[0], state_dict["lin4.bias"].shape[0])
    model.load_state_dict(state_dict, strict=True)
    return model


def save_run_models(run_dir, model, ema, config) -> None:
    """A training run's model.safetensors (raw parameters) and model_ema.safetensors (EMA.shadow)."""
    save_model(model, Path(run_dir) / RAW_FILE, model_metadata(config, "raw", framework="torch"))
    save_model(ema.shadow, Path(run_dir) / EMA_FILE, model_metadata(config, "ema", framework="torch"))
