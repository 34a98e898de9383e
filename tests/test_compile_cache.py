"""Compile once per machine: a second run of the same configuration loads its programs from the
persistent compilation cache, and a garbled cache never breaks a run (no timed assertions: cache
hits and misses are counted with jax.monitoring; the compile times are in benchmarks/results)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jax_ddpm.runner.compile_cache import CACHE_DIR_ENV
from tests.conftest import tiny_argv, train_main


@pytest.fixture
def cache_events():
    events = []

    def on_event(event, **kwargs):
        if event.startswith("/jax/compilation_cache/cache_"):
            events.append(event.rsplit("/", 1)[-1])

    jax.monitoring.register_event_listener(on_event)
    yield events
    jax.monitoring.unregister_event_listener(on_event)


def test_second_run_loads_its_programs_and_a_garbled_cache_is_recompiled(tmp_path, monkeypatch, cache_events):
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    assert train_main(tiny_argv(tmp_path / "first", "--no-plots")) == 0
    assert "cache_misses" in cache_events and "cache_hits" not in cache_events, cache_events
    entries = [p for p in (cache / "xla").rglob("*") if p.is_file()]
    assert entries, "the first run wrote no cache entry"

    cache_events.clear()
    assert train_main(tiny_argv(tmp_path / "second", "--no-plots")) == 0
    assert "cache_hits" in cache_events and "cache_misses" not in cache_events, cache_events
    first = np.load(tmp_path / "first" / "samples.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "second" / "samples.npy"), first)

    for path in entries:  # every entry garbled: JAX must treat them as misses and compile again
        path.write_bytes(b"not an executable" * 7)
    cache_events.clear()
    assert train_main(tiny_argv(tmp_path / "third", "--no-plots")) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "third" / "samples.npy"), first)


def test_no_compile_cache_uses_none(tmp_path, monkeypatch, cache_events):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    assert train_main(tiny_argv(tmp_path / "run", "--no-plots", "--no-compile-cache")) == 0
    assert not cache_events
    assert not (tmp_path / "cache" / "xla").exists() or not any((tmp_path / "cache" / "xla").rglob("*"))
