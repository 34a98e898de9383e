"""The model file both implementations write and read: a ConditionalModel state dict as safetensors.

A safetensors file is a JSON header (names, dtypes, shapes, offsets, and string metadata) followed
by the raw tensor bytes; reading one executes nothing, unlike torch.save's pickles, which are never
opened here. The tensors are the tutorial's state dict (`lin1.lin.weight` (out, in), ...), so
PyTorch's `load_state_dict` takes them as they are, and `jax_ddpm.convert` maps them to Flax params.
The header's metadata says what the model is and how it was trained (see `model_metadata`).
Framework-free (numpy, json, safetensors), like outputs.py: both training CLIs use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

FORMAT = "jax-ddpm ConditionalModel state dict"
RAW_FILE = "model.safetensors"  # the files a training run writes: raw parameters, and their EMA
EMA_FILE = "model_ema.safetensors"
DTYPE = "F32"  # float32, the only dtype both sides train in by default


class ModelFileError(RuntimeError):
    """A file that is not a usable model file; the message says why and what to do."""


def model_metadata(config, params: str, framework: str) -> dict[str, str]:
    """The header metadata of a model trained with `config` (a Config): all strings.

    n_steps, n_outputs: ConditionalModel(n_steps, n_outputs); schedule, num_steps, beta_start,
    beta_end: the schedule to sample with; loss: what the model predicts (noise: eps; variational:
    mean and log-variance; hybrid: eps and log-variance); params: raw or ema; framework: jax or
    torch; config: the run's whole Config as JSON.
    """
    fields = dataclasses.asdict(config)
    return dict(
        format=FORMAT,
        n_steps=str(config.num_steps),
        n_outputs=str(config.n_outputs),
        schedule=config.schedule,
        num_steps=str(config.num_steps),
        beta_start=repr(config.beta_start),
        beta_end=repr(config.beta_end),
        loss=config.loss,
        params=params,
        framework=framework,
        config=json.dumps(fields),
    )


def save_state_dict(path: str | Path, state_dict: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write numpy arrays (torch layout) and metadata; replaced in one rename, never half-written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_state_dict(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(state dict of float32 numpy arrays, metadata) of a safetensors file.

    Raises FileNotFoundError for a missing file and ModelFileError for anything that is not a
    complete safetensors file of float32 tensors (a pickle is recognised and never unpickled).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist or is not a file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            dtypes = {name: spec["dtype"] for name, spec in _header(path).items() if name != "__metadata__"}
            wrong = {name: dtype for name, dtype in dtypes.items() if dtype != DTYPE}
            if wrong:
                name, dtype = min(wrong.items())
                raise ModelFileError(
                    f"{str(path)!r}: tensor {name} has dtype {dtype}, expected {DTYPE} (float32)"
                    f"{f' (and {len(wrong) - 1} more)' if len(wrong) > 1 else ''}; "
                    "convert the state dict to float32 before saving"
                )
            state_dict = {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as err:
        raise ModelFileError(
            f"{str(path)!r} is not a safetensors file ({_first_line(err)}){_what_it_is(path)}"
        ) from None
    except OSError as err:
        raise ModelFileError(f"cannot read {str(path)!r}: {_first_line(err)}") from None
    return state_dict, metadata


def _header(path: Path) -> dict:
    """The JSON header of a file that safe_open has already validated."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size))


def _what_it_is(path: Path) -> str:
    """A hint for files that are PyTorch's own checkpoints (checked only after safetensors refused)."""
    with path.open("rb") as f:
        start = f.read(4)
    if start.startswith(b"PK\x03\x04") or start[:1] == b"\x80":
        return (
            "; it looks like a torch.save checkpoint (zip or pickle), which is never loaded here because "
            "unpickling runs code: in PyTorch, save it with safetensors.torch.save_file(model.state_dict(), path)"
        )
    return ""


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
