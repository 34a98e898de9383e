"""The per-program XLA:CPU options (jax_ddpm.speed) change speed, not results: the compiled
training chunk equals the same epochs jitted without options, and `sample_chain` equals
`p_sample_loop` fed the noise it draws from its key, both up to float rounding. An option this
jaxlib does not know is dropped with one warning line instead of breaking compilation, and every
ISA's option set is checked on whatever CPU runs the tests (an option only changes the code XLA generates)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_harness.config import Config
from ddpm_harness.data import dataset_for
from jax_ddpm import speed
from jax_ddpm.model import apply_model, init_params
from jax_ddpm.objectives.objective import loss_fn_for
from jax_ddpm.objectives.schedules import run_schedule
from jax_ddpm.objectives.step import EmaRate, pure_train_step
from jax_ddpm.runner.chunk import init_states, make_train_chunk, optimizer_for, train_epoch
from jax_ddpm.samplers import tutorial
from jax_ddpm.sampling import p_sample_loop

# Other fused kernels for exp, log1p and the sums only round differently: after 100 steps the
# chains measured ~1e-5 apart on values of order 1.
RTOL, ATOL = 1e-4, 1e-4


def _option_sets(program: str) -> dict:
    """Each distinct option set some ISA uses for `program`, and none."""
    sets = {"none": {}}
    for isa, chosen in speed.OPTIONS_BY_ISA.items():
        if chosen[program] and chosen[program] not in sets.values():
            sets[isa] = chosen[program]
    return sets


@pytest.mark.parametrize("options", list(_option_sets("training").values()), ids=list(_option_sets("training")))
def test_training_chunk_equals_epochs_jitted_without_options(options, monkeypatch):
    monkeypatch.setattr(speed, "TRAINING", options)  # read when the chunk is built
    config = Config(n_points=200, batch_size=32, epochs=2, seed=7)  # 6 full batches and one of 8
    schedule = run_schedule(config)
    optimizer = optimizer_for(config)
    data = jnp.asarray(dataset_for(config))
    state = init_states(config, optimizer)
    chunked, metrics = make_train_chunk(config, schedule, optimizer, config.epochs)(state, data)
    train_step_fn = functools.partial(
        pure_train_step,
        optimizer=optimizer,
        ema=EmaRate.constant(config.ema_decay),
        schedule=schedule,
        n_steps=config.num_steps,
        loss_fn=loss_fn_for(config),
    )
    epoch = jax.jit(
        functools.partial(
            train_epoch, batch_size=config.batch_size, train_step_fn=train_step_fn, n_steps=config.num_steps
        )
    )
    plain, losses = state, []
    for _ in range(config.epochs):
        plain, epoch_metrics = epoch(plain, data)
        losses.append(float(epoch_metrics["loss"]))
    assert int(chunked.opt_step) == int(plain.opt_step) == 14
    np.testing.assert_allclose(np.asarray(metrics["loss"]), losses, rtol=RTOL)
    for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("options", list(_option_sets("sampling").values()), ids=list(_option_sets("sampling")))
def test_sample_chain_equals_p_sample_loop_with_the_same_noise(options):
    chain = jax.jit(
        tutorial._sample_chain, static_argnames=("n", "parameterization"), compiler_options=speed.on_cpu(options)
    )
    config, n = Config(), 500
    schedule = run_schedule(config)
    params = init_params(jax.random.PRNGKey(3), config.num_steps)
    key = jax.random.PRNGKey(11)
    x_T = jax.random.normal(jax.random.fold_in(key, 0), (n, 2))
    zs = jnp.stack([jax.random.normal(jax.random.fold_in(key, k + 1), (n, 2)) for k in range(config.num_steps)])
    expected = np.asarray(
        p_sample_loop(
            functools.partial(apply_model, params),
            (n, 2),
            config.num_steps,
            schedule.alphas,
            schedule.betas,
            schedule.one_minus_alphas_bar_sqrt,
            x_T=x_T,
            zs=zs,
        )
    )
    actual = np.asarray(chain(params, schedule, key, n=n, parameterization="eps"))
    assert actual.shape == (config.num_steps + 1, n, 2)
    if options == speed.SAMPLING:  # the program sample_chain runs on this CPU
        np.testing.assert_array_equal(np.asarray(tutorial.sample_chain(params, schedule, key, n)), actual)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)
    assert np.abs(expected[-1] - expected[0]).mean() > 0.1  # the chain really moved the points


def test_an_unknown_option_is_dropped_with_one_warning_line(capsys):
    options = {"xla_cpu_prefer_vector_width": 512, "xla_jax_ddpm_no_such_option": "1"}
    assert speed.supported_options(options) == {"xla_cpu_prefer_vector_width": 512}
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: XLA option xla_jax_ddpm_no_such_option='1' is not")
    assert "No such compile option" in lines[0] and lines[0].endswith("compiling without it")
    assert speed.supported_options(options) == {"xla_cpu_prefer_vector_width": 512}
    assert capsys.readouterr().err == ""  # warned once per process
    # A program jitted with what is left compiles and runs.
    jitted = jax.jit(lambda x: 2 * x, compiler_options=speed.on_cpu({"xla_jax_ddpm_no_such_option": "1"}))
    assert float(jitted(jnp.float32(3))) == 6.0


def test_the_projects_options_are_accepted_here():
    # The options measured for the training chunk and the sampling chain still exist in this jaxlib
    # (a rename would silently cost speed: the warning line above is the only other sign).
    for options in (speed.TRAINING, speed.SAMPLING):
        assert speed.supported_options(options) == options, "re-measure the options for this jaxlib"


def test_each_program_gets_its_backends_options(monkeypatch):
    """program_options: on the CPU the ISA's options of that program (what on_cpu gives), on a GPU the GPU's
    (autotuning off: a compile option XLA accepts), elsewhere none, and none at all with
    JAX_DDPM_NO_PROGRAM_OPTIONS=1 (how the benchmarks measure the options against none)."""
    assert speed.program_options("training") == speed.on_cpu(speed.TRAINING)
    assert speed.program_options("sampling") == speed.on_cpu(speed.SAMPLING)
    monkeypatch.setattr(speed.jax, "default_backend", lambda: "gpu")
    assert speed.program_options("training") == {"xla_gpu_autotune_level": 0} == speed.program_options("sampling")
    monkeypatch.setattr(speed.jax, "default_backend", lambda: "tpu")
    assert speed.program_options("training") is None
    monkeypatch.setattr(speed.jax, "default_backend", lambda: "gpu")
    monkeypatch.setenv(speed.NO_PROGRAM_OPTIONS_ENV, "1")
    assert speed.program_options("training") is None and speed.program_options("sampling") is None
