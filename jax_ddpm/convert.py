"""Weight conversion between the PyTorch reference's state dict and the Flax parameter dict, and
PyTorch checkpoints both ways as safetensors files:

    python -m jax_ddpm.convert export --run DIR --params raw|ema --out model.safetensors
    python -m jax_ddpm.convert import model.safetensors --out-dir DIR [--schedule ... --num-steps ...
                                     --beta-start ... --beta-end ... --loss ...]

`export` writes a run's parameters under the tutorial's state-dict keys (`lin1.lin.weight`, ...),
which torch_reference's ConditionalModel (and the tutorial's own) load with `load_state_dict`;
`import` turns such a file into a run folder that `python -m jax_ddpm.sample` samples from. The
file format and its metadata: ddpm_harness.safetensors_io.

PyTorch stores a Linear weight as (out, in); a Flax kernel is (in, out), so kernels are
transposed. Every key and shape is checked; a round trip is exact (a transpose loses nothing).
Bad input is one `error:` line: exit 2 for usage (options, a missing input, an existing output),
1 for a file that is not a usable model (not safetensors, truncated, a pickle, wrong key, shape or
dtype) or an unreadable run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from ddpm_harness.cli import run
from ddpm_harness.config import FLOW_SAMPLERS, Config, ConfigError, validate
from ddpm_harness.runs import CONFIG_FILE, RunDirError, write_json
from ddpm_harness.safetensors_io import ModelFileError, load_state_dict, model_metadata, save_state_dict
from jax_ddpm.runner.checkpoint import Checkpointer, CheckpointError, IncompatibleCheckpointError, restore_run
from jax_ddpm.runner.chunk import init_train_state, optimizer_for


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
        raise ConversionError(
            f"{what} does not match ConditionalModel: missing {missing or 'none'}, unexpected {unexpected or 'none'}"
        )


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


# ---- the command line ----------------------------------------------------------------------------


class UsageError(ValueError):
    """A missing input or an existing output; the message says which."""


@dataclasses.dataclass(frozen=True)
class ExportArgs:
    """Write a run's parameters as a PyTorch state dict in a safetensors file."""

    run: str
    """Run folder written by `python -m jax_ddpm.train` (holds config.json and checkpoints/)."""
    out: str
    """Output .safetensors file; never overwritten."""
    params: Literal["raw", "ema"] = "raw"
    """Export the raw parameters or their EMA."""
    seed_index: int = 0
    """Which model of a run trained with --seeds K (0 .. K-1)."""


@dataclasses.dataclass(frozen=True)
class ImportArgs:
    """Build a jax_ddpm run folder from a safetensors state dict (as `export` or torch_reference writes)."""

    file: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="MODEL.SAFETENSORS")]
    """The .safetensors file: the tutorial's ConditionalModel state dict, float32."""
    out_dir: str
    """Run folder to create; it must not exist."""
    schedule: Optional[Literal["linear", "quad", "sigmoid", "constant", "cosine"]] = None
    """Beta schedule to sample with; default: the file's metadata, else sigmoid (the tutorial's)."""
    num_steps: Optional[int] = None
    """Number of diffusion steps T; must equal the model's (its embeddings have one row per step)."""
    beta_start: Optional[float] = None
    """First beta; default: the file's metadata, else 1e-5."""
    beta_end: Optional[float] = None
    """Last beta; default: the file's metadata, else 5e-3."""
    loss: Optional[Literal["noise", "variational", "hybrid"]] = None
    """The loss the model was trained with (4 outputs: variational or hybrid); default: the metadata, else noise."""
    method: Optional[Literal["diffusion", "flow"]] = None
    """What the model predicts: diffusion's noise, or a flow's velocity (--method flow); default: the
    metadata, else diffusion. A flow model samples with euler (T steps) unless its metadata names a sampler."""


ConvertArgs = Union[
    Annotated[ExportArgs, tyro.conf.subcommand("export")], Annotated[ImportArgs, tyro.conf.subcommand("import")]
]


def export_run(args: ExportArgs) -> Path:
    """Restore the run's newest checkpoint and write one parameter set as safetensors; the file's path."""
    run_dir, out = Path(args.run), Path(args.out)
    if out.exists():
        raise UsageError(f"{str(out)!r} already exists; choose another --out (files are never overwritten)")
    config, state, record = restore_run(run_dir)
    if config.conditional:
        raise ConfigError(
            f"{run_dir} is a class-conditional run (--conditional): the reference has no class model to export "
            "it to (the tutorial's model has no classes)"
        )
    if not 0 <= args.seed_index < config.seeds:
        raise ConfigError(
            f"--seed-index must lie in 0 .. {config.seeds - 1} for this run of "
            f"--seeds {config.seeds}, got {args.seed_index}"
        )
    params = state.ema_params if args.params == "ema" else state.params
    if config.seeds > 1:  # stacked on a leading seed axis; model i was trained with seed + i
        params = _unflatten({path: np.asarray(x)[args.seed_index] for path, x in _flatten(params).items()})
        config = dataclasses.replace(config, seed=config.seed + args.seed_index, seeds=1, devices=1)
    save_state_dict(out, flax_to_state_dict(params), model_metadata(config, args.params, framework="jax"))
    print(f"{args.params} parameters of epoch {record['epoch']} of {run_dir} -> {out}")
    return out


def import_model(args: ImportArgs) -> Path:
    """Read a safetensors state dict and write a run folder (config.json + an epoch-0 checkpoint)."""
    out_dir = Path(args.out_dir)
    if out_dir.exists():
        raise UsageError(
            f"{str(out_dir)!r} already exists; choose another --out-dir (earlier results are never overwritten)"
        )
    try:
        state_dict, metadata = load_state_dict(args.file)
    except FileNotFoundError as err:
        raise UsageError(f"{err}; give the path of a .safetensors file") from None
    try:
        params = torch_to_flax(state_dict)
    except ConversionError as err:
        raise ConversionError(f"{args.file!r}: {err}") from None
    n_steps = params["lin1"]["embed"]["embedding"].shape[0]
    n_outputs = params["lin4"]["bias"].shape[0]
    config = _imported_config(args, metadata, n_steps, n_outputs)
    config = validate(dataclasses.replace(config, out_dir=str(out_dir)))
    optimizer = optimizer_for(config)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    state = init_train_state(config.seed, config.num_steps, config.n_outputs, optimizer)
    # One file holds one parameter set: it is both the raw and the EMA parameters of the new run.
    state = state.replace(params=params, ema_params=jax.tree_util.tree_map(jnp.array, params))
    out_dir.mkdir(parents=True)
    write_json(
        out_dir / CONFIG_FILE,
        dict(
            dataclasses.asdict(config),
            framework="jax",
            imported_from=str(Path(args.file).resolve()),
            imported_framework=metadata.get("framework"),
            imported_params=metadata.get("params"),
        ),
    )
    checkpointer = Checkpointer(out_dir)
    checkpointer.save(state, epoch=0, wall_s=0.0, config=config)
    checkpointer.close()
    print(
        f"{args.file} (ConditionalModel({n_steps}, {n_outputs}), {config.schedule} schedule "
        f"{config.beta_start:g}..{config.beta_end:g}, loss {config.loss}) -> {out_dir}"
    )
    return out_dir


def _imported_config(args: ImportArgs, metadata: dict[str, str], n_steps: int, n_outputs: int) -> Config:
    """The Config of an imported model: the file's own (metadata "config"), else the defaults; the
    schedule options from the command line, else from the metadata; T from the model."""
    base = Config()
    if "config" in metadata:
        try:
            fields = json.loads(metadata["config"])
            names = {f.name for f in dataclasses.fields(Config)}
            base = Config(**{k: v for k, v in fields.items() if k in names})
        except (ValueError, TypeError) as err:
            raise ModelFileError(f"{args.file!r}: its metadata 'config' is not a Config ({err})") from None

    def option(name: str, parse):
        value = getattr(args, name)
        if value is not None:
            return value
        if name in metadata:
            try:
                return parse(metadata[name])
            except ValueError:
                raise ModelFileError(f"{args.file!r}: metadata {name}={metadata[name]!r} is not valid") from None
        return getattr(base, name)

    num_steps = args.num_steps if args.num_steps is not None else n_steps
    if num_steps != n_steps:
        raise ConfigError(
            f"--num-steps {num_steps} does not match the model, whose embeddings have "
            f"{n_steps} rows (one per diffusion step)"
        )
    loss = option("loss", str)
    if loss not in ("noise", "variational", "hybrid"):
        raise ConfigError(f"the file's metadata says loss {loss!r}; give --loss noise, variational or hybrid")
    if (n_outputs == 2) != (loss == "noise"):
        want = "--loss noise" if n_outputs == 2 else "--loss variational or --loss hybrid"
        raise ConfigError(f"the model has {n_outputs} outputs but the loss is {loss!r}; give {want}")
    method, sampler = _imported_method(option("method", str), n_outputs, base.sampler)
    return dataclasses.replace(
        base,
        method=method,
        sampler=sampler,
        schedule=option("schedule", str),
        num_steps=num_steps,
        beta_start=option("beta_start", float),
        beta_end=option("beta_end", float),
        loss=loss,
        seeds=1,
        devices=1,
        resume=False,
    )


def _imported_method(method: str, n_outputs: int, sampler: str) -> tuple[str, str]:
    """(method, sampler) of an imported model: a flow model (2 outputs, a velocity) samples with a flow
    sampler, euler unless its config names one."""
    if method not in ("diffusion", "flow"):
        raise ConfigError(f"the file's metadata says method {method!r}; give --method diffusion or flow")
    if method == "flow" and n_outputs != 2:
        raise ConfigError(
            f"the model has {n_outputs} outputs, but a flow model predicts a 2-D velocity: leave out --method flow"
        )
    return method, sampler if method == "diffusion" or sampler in FLOW_SAMPLERS else "euler"


def _unflatten(flat: dict[tuple[str, ...], object]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def run_convert(args) -> Path:
    return export_run(args) if isinstance(args, ExportArgs) else import_model(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse argv (default: sys.argv[1:]) and export or import; the exit status."""
    return run(
        ConvertArgs,
        argv,
        "python -m jax_ddpm.convert",
        run_convert,
        (UsageError, ConfigError, RunDirError, IncompatibleCheckpointError),
        (ModelFileError, ConversionError, CheckpointError, OSError),
    )


if __name__ == "__main__":
    sys.exit(main())
