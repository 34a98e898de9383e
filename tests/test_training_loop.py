"""The twin's `train` (the tutorial's Python loop over epochs and batches, NNX model, optimizer and EMA updated
in place) trains what the compiled chunk program of a run trains (a pure step on a TrainState): same
permutations, same t and e, same steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ddpm_harness.config import Config
from ddpm_harness.data import dataset_for
from jax_ddpm.model import model_of
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
    model, ema, optimizer = train(
        model_of(state.params),
        data,
        schedule,
        config.num_steps,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        clip_norm=config.clip_norm,
        ema_mu=config.ema_decay,
        on_epoch=lambda epoch, losses, wall_s: epochs.append(losses),
        rngs=nnx.Rngs(order=state.order_key, noise=state.noise_key),
    )
    assert [len(losses) for losses in epochs] == [7, 7]
    assert int(optimizer.step[...]) == int(out_ref.opt_step) == 14 and int(out_ref.epoch) == 2
    # Two programs (the twin's NNX step jitted and called from Python; the scan of the run, its model axis
    # of one, its clipping norm summed in a fixed order where the twin uses optax's) round differently:
    # float32 round-off grown over 14 dependent Adam steps, measured <= 7.4e-7 of each array's scale; allow 1e-5.
    np.testing.assert_allclose([losses[-1] for losses in epochs], np.asarray(metrics["last_loss"]), rtol=1e-5)
    adam = nnx.to_pure_dict(nnx.state(optimizer))["opt_state"]
    twin = _named(nnx.to_pure_dict(nnx.state(model, nnx.Param)), optax.tree.get(adam, "mu"), optax.tree.get(adam, "nu"))
    twin |= {f"ema.{name}": variable[...] for name, variable in ema.state_dict().items()}
    run = _named(out_ref.params, optax.tree.get(out_ref.opt_state, "mu"), optax.tree.get(out_ref.opt_state, "nu"))
    run |= {f"ema.{name}": leaf for name, leaf in _named(out_ref.ema_params).items()}
    assert twin.keys() == run.keys()
    for name, ref in run.items():
        ans, ref = np.asarray(twin[name]), np.asarray(ref)
        np.testing.assert_allclose(ans, ref, rtol=0, atol=1e-5 * max(1e-30, float(np.abs(ref).max())), err_msg=name)


def _named(params: dict, mu: dict = None, nu: dict = None) -> dict:
    """{"lin1.lin.kernel": array, "mu.lin1.lin.kernel": ..., "nu. ...": ...} of parameters and Adam's moments."""
    named = {}
    for prefix, tree in (("", params), ("mu.", mu), ("nu.", nu)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree or {}):
            named[prefix + ".".join(k.key for k in path)] = leaf
    return named
