"""The CPU's model name and widest vector instruction set, which pick the per-program XLA:CPU options
(jax_ddpm/speed.py) and name the CPU benchmark report (benchmarks/results/cpu-<isa>.md).

Read from /proc/cpuinfo (Linux); elsewhere from `sysctl` (macOS on Intel); anything not recognised
is "other", which gets no options.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Optional

ISAS = ("avx512", "avx2", "other")


def _flags(text: str) -> set[str]:
    """The feature flags of a /proc/cpuinfo text (x86 'flags', Arm 'Features'), lower case."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.lower().split())
    return set()


def isa_of_flags(flags: set[str]) -> str:
    """'avx512' when AVX-512 Foundation is there, else 'avx2', else 'other'."""
    flags = {f.lower().replace(".", "_") for f in flags}
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "other"


def _sysctl_flags() -> set[str]:
    try:
        done = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return set()
    return set(done.stdout.lower().split()) if done.returncode == 0 else set()


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def vector_isa(cpuinfo: Optional[str] = None) -> str:
    """'avx512', 'avx2' or 'other' for the text of a /proc/cpuinfo (default: this machine's)."""
    if cpuinfo is not None:
        return isa_of_flags(_flags(cpuinfo))
    return _this_machine_isa()


@functools.lru_cache(maxsize=None)
def _this_machine_isa() -> str:
    flags = _flags(_read_cpuinfo())
    if not flags and platform.system() == "Darwin":
        flags = _sysctl_flags()
    return isa_of_flags(flags)


def cpu_model(cpuinfo: Optional[str] = None) -> str:
    """The CPU's model name ('AMD EPYC', ...), from /proc/cpuinfo or the platform module."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"
