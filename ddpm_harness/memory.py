"""The memory budget of a run: what its data, samples and reverse chains hold, and the refusal, before
any work, of a request that would not fit. Framework-free."""

from __future__ import annotations

from typing import Optional

from ddpm_harness.config import Config, ConfigError

# Bytes per point that a run holds at once: the dataset (float64 and float32 copies, shuffled and
# on the device) and the final samples (float32, plus the chain's working copies).
DATA_BYTES_PER_POINT = 64
SAMPLE_BYTES_PER_POINT = 32
# Bytes per diffusion step of each seed's model: the schedule's arrays, and the three 128-wide step
# embeddings with their EMA, Adam's two moments and the gradients.
STEP_BYTES = 8192
# Points whose reverse chains are sampled at once (jax_ddpm.runner.finish.sample_points streams the rest),
# and the bytes of each point's state in a chain: float32 (x, y) on the device and its copy on the host.
SAMPLE_CHUNK = 25_000
CHAIN_BYTES_PER_STATE = 16


def chain_states(config: Config) -> int:
    """States a reverse chain of this config keeps (x_T first): K + 1 with --sample-steps K, else T + 1."""
    return (config.sample_steps or config.num_steps) + 1


def chain_bytes(config: Config, n: int) -> int:
    """Memory that the reverse chains of n points (for each seed) hold at once."""
    return config.seeds * n * chain_states(config) * CHAIN_BYTES_PER_STATE


def available_memory_bytes() -> Optional[int]:
    """Memory available to a new allocation (Linux MemAvailable), None when unknown."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits_in_memory(config: Config) -> None:
    """Refuse, before any work, a request whose data or samples alone would not fit in memory."""
    available = available_memory_bytes()
    if available is None:
        return
    for name, n, per_point in (
        ("n_points", config.n_points, DATA_BYTES_PER_POINT),
        ("n_samples", config.n_samples * config.seeds, SAMPLE_BYTES_PER_POINT),
        ("n_eval", config.n_eval * config.seeds, DATA_BYTES_PER_POINT),
        ("num_steps", config.num_steps * config.seeds, STEP_BYTES),
    ):
        needed = n * per_point
        if needed > available:
            raise ConfigError(
                f"--{name.replace('_', '-')} {getattr(config, name):,} needs about "
                f"{needed / 2**30:,.1f} GiB, more than the {available / 2**30:.1f} GiB available; "
                f"ask for fewer {'steps' if name == 'num_steps' else 'points'}"
            )
    check_chain_fits(config, min(config.n_samples, SAMPLE_CHUNK), available, "--num-steps", "ask for fewer steps")


def check_chain_fits(config: Config, n: int, available: Optional[int], option: str, advice: str) -> None:
    """Refuse a request whose reverse chains of n points would not fit in `available` bytes."""
    needed = chain_bytes(config, n)
    if available is not None and needed > available:
        raise ConfigError(
            f"{option}: the reverse chains of {n:,} points over {chain_states(config):,} states "
            f"{f'for {config.seeds} seeds ' if config.seeds > 1 else ''}need about {needed / 2**30:,.1f} GiB, "
            f"more than the {available / 2**30:.1f} GiB available; {advice}"
        )
