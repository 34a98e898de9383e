"""--conditional with --method flow (docs/guidance.md): the class model learns the velocity, labels dropped
to the null class with probability cond_drop, and the flow samplers follow the guided velocity
(1 + w) v(x, t, c) - w v(x, t, null).

CI trains one tiny conditional flow run (eight_gaussians, the conftest's sizes) and checks the plumbing:
its pictures (guidance.png, the GIF coloured by class),
`sample --class c --guidance w` through every flow sampler, the guided velocity against the formula on
injected inputs, the loss against the plain flow loss, and resume after SIGKILL. A plain flow run is unchanged: its
loss is the same function (test_flow.py and test_flow_torchcfm.py pin it).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ddpm_harness.config import Config, SamplerOptions
from ddpm_harness.plots import class_colours
from jax_ddpm.objectives import flow as flow_objective
from jax_ddpm.objectives.conditional import apply_class_model, init_class_params
from jax_ddpm.objectives.guidance import guided_model_fn
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.runner import draw
from jax_ddpm.runner.checkpoint import Checkpointer, restore_run
from jax_ddpm.sample import main as sample_main
from jax_ddpm.samplers import chains, flow
from jax_ddpm.train import main as train_main
from tests.conftest import assert_same_run, tiny_argv, train_killed_after_first_checkpoint
from tests.test_conditional_model import without_classes

FLOW_CONDITIONAL = ("--dataset", "eight_gaussians", "--conditional", "--method", "flow", "--sampler", "euler")


@pytest.fixture(scope="module")
def flow_class_run(tmp_path_factory) -> Path:
    """A tiny class-conditional flow run of 20 epochs (checkpoints at 10 and 20), with its pictures."""
    run_dir = tmp_path_factory.mktemp("conditional-flow") / "run"
    assert train_main(tiny_argv(run_dir, *FLOW_CONDITIONAL)) == 0
    return run_dir


def test_pictures_colour_points_by_class(flow_class_run):
    """guidance.png is written (a row per w in 0, 1, 3, 7), and the GIF's dots carry the classes' colours:
    its first frame (the data) and its last (the samples) each hold all 8 of tab10's first colours."""
    assert (flow_class_run / "guidance.png").stat().st_size > 0
    gif = Image.open(flow_class_run / "diffusion.gif")
    tab10 = {tuple(c) for c in class_colours(np.arange(8))}
    for frame in (0, gif.n_frames - 1):
        gif.seek(frame)
        colours = {tuple(c) for c in np.asarray(gif.convert("RGB")).reshape(-1, 3)}
        assert tab10 <= colours, frame


def test_the_guided_velocity_is_the_formula_on_injected_inputs(flow_class_run):
    """What the flow samplers call, `draw._model_fn` of a guide (class 3, w = 2.5), at x and t injected:
    (1 + w) v(x, k, 3) - w v(x, k, null), k the grid index nearest t."""
    config, state, _ = restore_run(flow_class_run)
    x = jax.random.normal(jax.random.key(4), (32, 2))
    t = jnp.asarray([0.371])
    guide = draw.guide_for(config, 32, "3", 2.5)
    out_ans = draw._model_fn(state.params, config, guide)(x, t)
    k = jnp.full((32,), 37)  # round(0.371 * 100)
    cond = apply_class_model(state.params, x, k, jnp.full((32,), 3))
    uncond = apply_class_model(state.params, x, k, jnp.full((32,), 8))  # the null class
    out_ref = 3.5 * cond - 2.5 * uncond
    np.testing.assert_allclose(np.asarray(out_ans), np.asarray(out_ref), rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(cond - uncond)).max() > 1e-4  # the classes did reach the model


@pytest.mark.parametrize("sampler", ["euler", "midpoint", "ode"])
def test_sample_class_and_guidance_through_every_flow_sampler(flow_class_run, sampler, tmp_path):
    """`sample --class 3 --guidance 1.5` from a given x_T equals the library's flow sampler on the guided
    velocity (float32 round-off; the adaptive ODE to its step control), and class 5 differs from class 3."""
    x_T = np.asarray(jax.random.normal(jax.random.key(1), (16, 2)), np.float32)
    np.save(tmp_path / "x_T.npy", x_T)
    out = {}
    for c in ("3", "5"):
        out[c] = tmp_path / f"c{c}.npy"
        argv = ["--run", str(flow_class_run), "--sampler", sampler, "--x-T", str(tmp_path / "x_T.npy")]
        assert sample_main([*argv, "--class", c, "--guidance", "1.5", "--out", str(out[c])]) == 0
    three, five = np.load(out["3"]), np.load(out["5"])
    assert np.isfinite(three).all() and np.abs(three - five).max() > 1e-3
    config, state, _ = restore_run(flow_class_run)
    config = dataclasses.replace(config, sampler=sampler)
    model = functools.partial(apply_class_model, state.params)
    velocity = flow.grid_model(guided_model_fn(model, 3, 1.5, 8), config.num_steps)
    options = SamplerOptions.from_config(config)
    out_ref = chains.sample(options, velocity, run_schedule(config), jnp.asarray(x_T), jax.random.key(0)).x_0
    # The adaptive ODE's steps follow float32 round-off across the jumps of the grid model's velocity at the
    # grid times (a different program, a different step sequence): equal to its tolerance only.
    np.testing.assert_allclose(three, np.asarray(out_ref), rtol=1e-4, atol=5e-2 if sampler == "ode" else 1e-4)


@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_the_class_flow_loss_is_the_flow_loss_of_an_untrained_class_model(coupling):
    """Class scales at one: the class model is the tutorial's, so its flow loss equals the plain flow loss
    bit for bit, whatever labels survive the dropout; the loss config.conditional selects is this one."""
    config = Config(method="flow", sampler="euler", conditional=True, dataset="moons", coupling=coupling)
    schedule, key = run_schedule(config), jax.random.key(0)
    x_1 = jax.random.normal(jax.random.key(1), (16, 2))
    k, e = flow_objective.flow_noise(key, 3, (16, 2), config.num_steps)
    labels = jnp.arange(16) % 2
    params = init_class_params(key, config.num_steps, 2)
    out_ans = flow_objective.flow_loss_fn(config)(params, schedule, x_1, labels, k, e, jax.random.key(2))
    plain = dataclasses.replace(config, conditional=False)
    out_ref = flow_objective.flow_loss_fn(plain)(without_classes(params), x_1, schedule, config.num_steps, k, e)
    np.testing.assert_array_equal(np.asarray(out_ans), np.asarray(out_ref))


def test_a_conditional_flow_run_resumes_bit_for_bit_after_sigkill(tmp_path):
    """Killed with SIGKILL after its first checkpoint and resumed, a conditional flow run (labels, label
    dropout and the class model through the checkpoint) ends bit for bit where an uninterrupted run ends."""
    argv = (*FLOW_CONDITIONAL, "--no-plots")
    sizes = dict(epochs=40, n_samples=64, n_eval=64)  # checkpoints every 10 epochs
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    train_killed_after_first_checkpoint(tiny_argv(killed, *argv, **sizes), killed, 10)
    kept = Checkpointer(killed).latest_epoch()
    assert kept is not None and kept < 40, f"the kill came too late to test resume (checkpoint {kept})"
    assert train_main(tiny_argv(killed, *argv, "--resume", **sizes)) == 0
    assert train_main(tiny_argv(whole, *argv, **sizes)) == 0
    assert_same_run(killed, whole)
