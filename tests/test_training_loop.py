"""The twin's `train` (the tutorial's Python loop over epochs and batches) trains what the compiled chunk
program of a run trains: same permutations, same t and e, same steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_harness.config import Config
from ddpm_harness.data import dataset_for
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.runner.chunk import init_states, make_train_chunk, optimizer_for
from jax_ddpm.training import train


@pytest.mark.parametrize("clip_norm", [0.0, 1.0], ids=["unclipped", "clipped"])
def test_python_loop_equals_the_compiled_chunk(clip_norm):
    config = Config(n_points=200, batch_size=32, epochs=2, seed=3, clip_norm=clip_norm)  # 6 full batches, one of 8
    schedule, data = run_schedule(config), jnp.asarray(dataset_for(config))
    optimizer = optimizer_for(config)
    state = init_states(config, optimizer)
    out_ref, metrics = make_train_chunk(config, schedule, optimizer, config.epochs)(state, data)
    epochs = []
    out_ans, _, _ = train(
        state,
        data,
        schedule,
        config.num_steps,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        clip_norm=config.clip_norm,
        ema_mu=config.ema_decay,
        on_epoch=lambda epoch, losses, wall_s: epochs.append(losses),
    )
    assert [len(losses) for losses in epochs] == [7, 7]
    assert int(out_ans.opt_step) == int(out_ref.opt_step) == 14 and int(out_ans.epoch) == int(out_ref.epoch) == 2
    # Two programs (one jitted step from Python; the scan of the run, its model axis of one, its clipping
    # norm summed in a fixed order where the twin uses optax's) round differently: float32 round-off grown
    # over 14 dependent Adam steps, measured <= 7.4e-7 of each array's scale; allow 1e-5.
    np.testing.assert_allclose([losses[-1] for losses in epochs], np.asarray(metrics["last_loss"]), rtol=1e-5)
    for ans, ref in zip(
        jax.tree_util.tree_leaves((out_ans.params, out_ans.ema_params, out_ans.opt_state)),
        jax.tree_util.tree_leaves((out_ref.params, out_ref.ema_params, out_ref.opt_state)),
    ):
        ans, ref = np.asarray(ans), np.asarray(ref)
        np.testing.assert_allclose(ans, ref, rtol=0, atol=1e-5 * max(1e-30, float(np.abs(ref).max())))
