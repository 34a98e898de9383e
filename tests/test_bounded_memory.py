"""Bounded memory: `python -m jax_ddpm.sample` streams the chain in chunks of SAMPLE_CHUNK points
into a memory-mapped file, so its peak RSS does not grow with --n beyond the output itself (the
whole chain of 225,000 points would be 225,000 x 101 x 2 float32 = 182 MB)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ddpm_harness.memory import SAMPLE_CHUNK

REPO = Path(__file__).resolve().parents[1]

# Runs one command in a fresh process and prints its peak RSS in KiB (Linux ru_maxrss).
PEAK = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


# glibc raises its mmap threshold (up to 32 MiB) each time a mmapped block is freed, so after the
# first chunk each chunk's 19 MiB chain comes from a heap arena instead, and the arenas of the threads
# that ran chunks keep freed chains: with the default, the 9-chunk draw's peak was 13 to 61 MiB above
# the 1-chunk draw's (and a 17-chunk draw's no higher than a 9-chunk one's), one CI run failing at 56.6.
# A fixed threshold returns every freed chain to the system, so the peak measures what the program
# keeps alive (measured: -1 to 15 MiB), not what the allocator caches.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def peak_rss_mib(*argv: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", PEAK, sys.executable, "-m", "jax_ddpm.sample", *argv],
        cwd=REPO,
        env={**os.environ, **MALLOC_ENV},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1]) / 1024


def test_peak_memory_does_not_grow_with_n(tiny_run, tmp_path):
    one_chunk, nine_chunks = SAMPLE_CHUNK, 9 * SAMPLE_CHUNK
    small = peak_rss_mib("--run", str(tiny_run), "--n", str(one_chunk), "--out", str(tmp_path / "small.npy"))
    large = peak_rss_mib("--run", str(tiny_run), "--n", str(nine_chunks), "--out", str(tmp_path / "large.npy"))
    output_mib = (nine_chunks - one_chunk) * 2 * 4 / 2**20  # what the larger output adds: 1.5 MiB
    # Unstreamed, the eight extra chunks' chains would add ~154 MiB; streamed, the difference measured -1 to 15.
    assert large - small < output_mib + 48, (small, large)
    points = np.load(tmp_path / "large.npy")
    assert points.shape == (nine_chunks, 2) and np.isfinite(points).all()
    # The first chunk of a large draw is the small draw: the same n always gives the same points,
    # and a draw of one chunk is exactly the run's own chain.
    np.testing.assert_array_equal(points[:one_chunk], np.load(tmp_path / "small.npy"))
    assert not any(p.name.endswith(".partial.npy") for p in tmp_path.iterdir())
