"""Compile once per machine: JAX's persistent compilation cache in the user's cache folder.

A run's programs (the training chunk, the sampling chain) are keyed by JAX on their computation,
shapes, compiler options, JAX version and device, so a second run of the same configuration loads
them instead of compiling. A stale entry (another JAX version or device) never matches its key; an
entry that cannot be read is treated by JAX as a miss and compiled again (tested with garbled
files), so the cache can only save time, never break a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import jax
from jax.experimental.compilation_cache import compilation_cache

from ddpm_harness.metrics import cache_root

CACHE_DIR_ENV = "JAX_DDPM_CACHE_DIR"


def default_cache_dir() -> Path:
    """The `xla` folder of the project's cache (`ddpm_harness.metrics.cache_root()`: $JAX_DDPM_CACHE_DIR,
    else $XDG_CACHE_HOME/jax_ddpm, else ~/.cache/jax_ddpm)."""
    return cache_root() / "xla"


_in_use: Optional[tuple[bool, Optional[Path]]] = None  # (enabled, folder) as last set in this process


def use_compile_cache(enabled: bool = True, directory: Optional[Path] = None) -> Optional[Path]:
    """Switch the persistent cache on (in `directory`, default `default_cache_dir()`) or off for
    every later compilation in this process; the folder in use, None when off.

    Every program is cached, however fast it compiled (JAX's default skips those under 1 s). A
    folder that cannot be created switches the cache off: it only ever costs time.
    """
    global _in_use
    directory = Path(directory or default_cache_dir()).absolute() if enabled else None
    if directory is not None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            directory = None
    wanted = (directory is not None, directory)
    if wanted != _in_use:
        # JAX decides once per process whether the cache is used, and opens its folder once:
        # a change of either needs its state reset.
        compilation_cache.reset_cache()
        jax.config.update("jax_enable_compilation_cache", directory is not None)
        if directory is not None:
            jax.config.update("jax_compilation_cache_dir", str(directory))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        _in_use = wanted
    return directory
