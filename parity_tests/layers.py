"""Layer-by-layer comparisons of torch_reference (out_ref) and jax_ddpm (out_ans).

Each `*_pairs(p)` function builds the same inputs in numpy (np.random.default_rng), feeds them to
both sides in precision `p`, and returns {name: (out_ref, out_ans)} as numpy arrays. Call them
inside `p.context()` (the tests' `precision` fixture and `error_table` do). The tests assert these
pairs with explicit tolerances; `python -m parity_tests.error_table` prints their errors.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

import torch_reference.losses as ref_losses
import torch_reference.sampling as ref_sampling
import torch_reference.schedule as ref_schedule
import torch_reference.training as ref_training
from ddpm_harness.data import make_dataset
from jax_ddpm import ema as jax_ema
from jax_ddpm import losses, sampling, schedule, training
from jax_ddpm.convert import torch_to_flax
from jax_ddpm.model import apply_model, model_of
from jax_ddpm.objectives import step
from jax_ddpm.runner import chunk
from parity_tests.compare import Pairs, Precision, flat_params, flat_torch, to_numpy, tree_pairs
from torch_reference.ema import EMA
from torch_reference.model import ConditionalModel

# (kind, T, start, end): the tutorial's, the DDPM paper's (T = 1000), and a short steep one.
SCHEDULE_CASES = [
    (kind, n, start, end)
    for kind in ("linear", "quad", "sigmoid", "constant")
    for n, start, end in ((100, 1e-5, 5e-3), (1000, 1e-4, 2e-2), (10, 1e-3, 0.2))
]
N_STEPS = 100  # the tutorial's schedule: sigmoid, 1e-5 .. 5e-3 over 100 steps
EMA_DECAY = 0.9
LR = 1e-3


def schedule_pairs(p: Precision, kind: str, n_timesteps: int, start: float, end: float) -> Pairs:
    """Every array of the Schedule (betas and all derived ones)."""
    out_ref = ref_schedule.make_schedule(kind, n_timesteps, start, end, dtype=p.torch_dtype)
    out_ans = schedule.make_schedule(kind, n_timesteps, start, end, dtype=p.np_dtype)
    return {
        name: (to_numpy(getattr(out_ref, name)), to_numpy(getattr(out_ans, name)))
        for name in schedule.Schedule.__dataclass_fields__
    }


def tutorial_schedules(p: Precision):
    """The tutorial's schedule on both sides: (torch Schedule, jax Schedule)."""
    return (ref_schedule.make_schedule(dtype=p.torch_dtype), schedule.make_schedule(dtype=p.np_dtype))


def ported_model(p: Precision, n_outputs: int = 2, seed: int = 0):
    """A freshly initialised reference ConditionalModel(N_STEPS, n_outputs) in dtype p and the
    same weights as JAX params (through jax_ddpm.convert).

    The weights are drawn in dtype p: float32 weights cast to float64 would hide any float32
    rounding inside the JAX model (the values would survive it exactly)."""
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(p.torch_dtype)
    try:
        model = ConditionalModel(N_STEPS, n_outputs)
    finally:
        torch.set_default_dtype(default_dtype)
    params = jax.tree_util.tree_map(jnp.asarray, torch_to_flax(model.state_dict()))
    return model, params


def antithetic_t(rng: np.random.Generator, batch_size: int, n_steps: int = N_STEPS) -> np.ndarray:
    """The tutorial's antithetic steps, drawn in numpy."""
    t0 = rng.integers(0, n_steps, batch_size // 2 + 1)
    return np.concatenate([t0, n_steps - t0 - 1])[:batch_size]


def inputs(p: Precision, batch_size: int, seed: int = 0):
    """A moons batch x_0 (B, 2), antithetic t (B,) and noise e (B, 2), all made in numpy."""
    rng = np.random.default_rng(seed)
    x_0 = make_dataset("moons", batch_size, 0.1, seed).astype(p.np_dtype)
    return x_0, antithetic_t(rng, batch_size), rng.standard_normal((batch_size, 2)).astype(p.np_dtype)


def both(*arrays):
    """Each numpy array as (torch tensor, jax array)."""
    return [(torch.from_numpy(a), jnp.asarray(a)) for a in arrays]


def q_sample_pairs(p: Precision) -> Pairs:
    sched_ref, sched_ans = tutorial_schedules(p)
    (x0_ref, x0_ans), (t_ref, t_ans), (e_ref, e_ans) = both(*inputs(p, 512))
    out_ref = ref_schedule.q_sample(
        x0_ref, t_ref, sched_ref.alphas_bar_sqrt, sched_ref.one_minus_alphas_bar_sqrt, noise=e_ref
    )
    out_ans = schedule.q_sample(x0_ans, t_ans, sched_ans.alphas_bar_sqrt, sched_ans.one_minus_alphas_bar_sqrt, e_ans)
    return {"x_t": (to_numpy(out_ref), to_numpy(out_ans))}


def posterior_pairs(p: Precision) -> Pairs:
    sched_ref, sched_ans = tutorial_schedules(p)
    x_0, t, e = inputs(p, 512)
    x_t = x_0 + e  # any x_t will do: the posterior is linear in (x_0, x_t)
    (x0_ref, x0_ans), (xt_ref, xt_ans), (t_ref, t_ans) = both(x_0, x_t, t)
    mean_ref, log_var_ref = ref_schedule.q_posterior_mean_variance(
        x0_ref,
        xt_ref,
        t_ref,
        sched_ref.posterior_mean_coef_1,
        sched_ref.posterior_mean_coef_2,
        sched_ref.posterior_log_variance_clipped,
    )
    mean_ans, log_var_ans = schedule.q_posterior_mean_variance(
        x0_ans,
        xt_ans,
        t_ans,
        sched_ans.posterior_mean_coef_1,
        sched_ans.posterior_mean_coef_2,
        sched_ans.posterior_log_variance_clipped,
    )
    return {
        "mean": (to_numpy(mean_ref), to_numpy(mean_ans)),
        "log_variance": (to_numpy(log_var_ref), to_numpy(log_var_ans)),
    }


def forward_pairs(p: Precision, n_outputs: int = 2) -> Pairs:
    """Model output for 5 points at every t in 0..T-1; one point in ten is scaled up so some
    pre-activations pass torch's softplus threshold (20)."""
    model, params = ported_model(p, n_outputs)
    rng = np.random.default_rng(1)
    t = np.repeat(np.arange(N_STEPS), 5)
    x = rng.standard_normal((t.size, 2)) * np.where(np.arange(t.size) % 10 == 0, 60.0, 1.0)[:, None]
    (x_ref, x_ans), (t_ref, t_ans) = both(x.astype(p.np_dtype), t)
    with torch.no_grad():
        out_ref = model(x_ref, t_ref)
    return {"output": (to_numpy(out_ref), to_numpy(apply_model(params, x_ans, t_ans)))}


def _torch_noise_loss(model, sched_ref, x0_ref, t_ref, e_ref):
    return ref_losses.noise_estimation_loss(
        model, x0_ref, sched_ref.alphas_bar_sqrt, sched_ref.one_minus_alphas_bar_sqrt, N_STEPS, t=t_ref, e=e_ref
    )


def _jax_noise_loss(params, sched_ans, x0_ans, t_ans, e_ans):
    return losses.noise_estimation_loss(
        model_of(params),
        x0_ans,
        sched_ans.alphas_bar_sqrt,
        sched_ans.one_minus_alphas_bar_sqrt,
        N_STEPS,
        t=t_ans,
        e=e_ans,
    )


def noise_loss_pairs(p: Precision) -> Pairs:
    model, params = ported_model(p)
    sched_ref, sched_ans = tutorial_schedules(p)
    (x0_ref, x0_ans), (t_ref, t_ans), (e_ref, e_ans) = both(*inputs(p, 128))
    with torch.no_grad():
        out_ref = _torch_noise_loss(model, sched_ref, x0_ref, t_ref, e_ref)
    out_ans = _jax_noise_loss(params, sched_ans, x0_ans, t_ans, e_ans)
    return {"loss": (to_numpy(out_ref), to_numpy(out_ans))}


def _torch_grads(model, sched_ref, x0_ref, t_ref, e_ref) -> dict[str, torch.Tensor]:
    model.zero_grad()
    _torch_noise_loss(model, sched_ref, x0_ref, t_ref, e_ref).backward()
    return {name: param.grad.clone() for name, param in model.named_parameters()}


def gradient_pairs(p: Precision) -> Pairs:
    """d loss / d parameter for every parameter, torch grads mapped into the Flax layout."""
    model, params = ported_model(p)
    sched_ref, sched_ans = tutorial_schedules(p)
    (x0_ref, x0_ans), (t_ref, t_ans), (e_ref, e_ans) = both(*inputs(p, 128))
    grads_ref = flat_torch(_torch_grads(model, sched_ref, x0_ref, t_ref, e_ref))
    grads_ans = flat_params(jax.grad(_jax_noise_loss)(params, sched_ans, x0_ans, t_ans, e_ans))
    return tree_pairs(grads_ref, grads_ans)


def clip_pairs(p: Precision, max_norm: float, program: str = "run") -> tuple[Pairs, float]:
    """The same (reference) gradients clipped by torch's clip_grad_norm_ and by the clipping of `program`
    (the twin's: optax's clip_by_global_norm; a run's: the same, its norm summed in a fixed order); also returns the
    global norm. torch scales by max_norm / (norm + 1e-6), JAX by max_norm / norm, so clipped results differ
    by the factor (norm + 1e-6) / norm."""
    model, _ = ported_model(p)
    sched_ref, _ = tutorial_schedules(p)
    (x0_ref, _), (t_ref, _), (e_ref, _) = both(*inputs(p, 128))
    _torch_grads(model, sched_ref, x0_ref, t_ref, e_ref)
    grads = jax.tree_util.tree_map(jnp.asarray, torch_to_flax({n: q.grad for n, q in model.named_parameters()}))
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    clipped_ref = flat_torch({name: param.grad for name, param in model.named_parameters()})
    clip = optax.clip_by_global_norm(max_norm) if program == "twin" else chunk.clip_by_global_norm(max_norm)
    clipped_ans, _ = clip.update(grads, clip.init(grads))
    return tree_pairs(clipped_ref, flat_params(clipped_ans)), norm


def _train_twin(params: dict, batches_ans, clip_norm: float, sched_ans):
    """jax_ddpm.training.train_step (the NNX twin) over batches from `params`: the per-step losses and
    the final (params, EMA params, Adam's mu, Adam's nu), each flat as `flat_params` gives it."""
    model = model_of(params)
    optimizer = training.make_optimizer(model, LR)
    ema = jax_ema.EMA(EMA_DECAY)
    ema.register(model)
    losses_ans = [
        to_numpy(training.train_step(model, optimizer, ema, x_0, sched_ans, N_STEPS, clip_norm, t=t, e=e))
        for x_0, t, e in batches_ans
    ]
    adam = nnx.to_pure_dict(nnx.state(optimizer))["opt_state"][0]
    params_ans = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return losses_ans, (flat_params(params_ans), flat_shadow(ema), flat_params(adam["mu"]), flat_params(adam["nu"]))


def flat_shadow(ema: jax_ema.EMA) -> dict[str, np.ndarray]:
    """The twin EMA's shadow, keyed by parameter name ("lin1.lin.kernel") as `flat_params` keys it."""
    return {name: to_numpy(variable[...]) for name, variable in ema.shadow.items()}


def _train_run(params: dict, batches_ans, clip_norm: float, sched_ans):
    """A run's step (objectives.step.pure_train_step with the optimizer and EMA a run compiles) over
    batches from `params`: what `_train_twin` returns."""
    optimizer = chunk.run_optimizer(LR, clip_norm, clipped=clip_norm > 0)
    key = jax.random.PRNGKey(0)  # unused: t and e are injected
    zero = jnp.zeros((), jnp.int32)
    state = step.TrainState(
        zero, zero, params, jax.tree_util.tree_map(jnp.array, params), optimizer.init(params), key, key
    )
    train_step = jax.jit(
        functools.partial(
            step.pure_train_step,
            optimizer=optimizer,
            ema=step.EmaRate.constant(EMA_DECAY),
            schedule=sched_ans,
            n_steps=N_STEPS,
        )
    )
    losses_ans = []
    for x_0, t, e in batches_ans:
        state, loss = train_step(state, batch_x=x_0, t=t, e=e)
        losses_ans.append(to_numpy(loss))
    adam = (optax.tree.get(state.opt_state, "mu"), optax.tree.get(state.opt_state, "nu"))
    return losses_ans, tuple(flat_params(tree) for tree in (state.params, state.ema_params, *adam))


def _train_both(p: Precision, batches, clip_norm: float, program: str = "run") -> tuple[Pairs, list[float]]:
    """Drive torch_reference.training.train_step and the JAX `program` ("twin": jax_ddpm.training's NNX
    train_step; "run": the pure step a run compiles) over the same (x_0, t, e) batches from the same
    weights. Returns pairs for the parameters, EMA parameters, Adam's moments and per-step losses, and
    torch's pre-clip gradient norm at every step."""
    model, params = ported_model(p)
    sched_ref, sched_ans = tutorial_schedules(p)
    optimizer_ref = ref_training.make_optimizer(model, LR)
    ema = EMA(EMA_DECAY)
    ema.register(model)
    losses_ref, norms, batches_ans = [], [], []
    for x_0, t, e in batches:
        (x0_ref, x0_ans), (t_ref, t_ans), (e_ref, e_ans) = both(x_0, t, e)
        batches_ans.append((x0_ans, t_ans, e_ans))
        grads = _torch_grads(model, sched_ref, x0_ref, t_ref, e_ref).values()
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        losses_ref.append(
            to_numpy(
                ref_training.train_step(
                    model, optimizer_ref, ema, x0_ref, sched_ref, N_STEPS, clip_norm, t=t_ref, e=e_ref
                )
            )
        )
    train_ans = _train_twin if program == "twin" else _train_run
    losses_ans, (params_ans, ema_ans, mu_ans, nu_ans) = train_ans(params, batches_ans, clip_norm, sched_ans)
    named = dict(model.named_parameters())
    pairs = {"loss": (np.stack(losses_ref), np.stack(losses_ans))}
    pairs |= tree_pairs(flat_torch(model.state_dict()), params_ans, "params.")
    pairs |= tree_pairs(flat_torch(ema.shadow), ema_ans, "ema.")
    for moment_ref, moment_ans, name in (("exp_avg", mu_ans, "mu"), ("exp_avg_sq", nu_ans, "nu")):
        pairs |= tree_pairs(
            flat_torch({n: optimizer_ref.state[q][moment_ref] for n, q in named.items()}),
            moment_ans,
            f"adam_{name}.",
        )
    return pairs, norms


def optimizer_step_pairs(p: Precision, clip_norm: float, program: str = "run") -> tuple[Pairs, float]:
    """One training step (loss, backward, clip, Adam, EMA) on both sides; also returns the
    gradient's global norm, so a caller can check which clipping regime it exercised."""
    pairs, norms = _train_both(p, [inputs(p, 128)], clip_norm, program)
    return pairs, norms[0]


def ema_pairs(p: Precision, program: str = "twin") -> Pairs:
    """One EMA update, shadow from one model's weights, params from a second model's: by the twin's NNX
    EMA ("twin") or by a sweep's per-model `EmaRate` ("sweep")."""
    model_0, params_0 = ported_model(p, seed=0)
    model_1, params_1 = ported_model(p, seed=1)
    ema = EMA(EMA_DECAY)
    ema.register(model_0)
    ema.update(model_1)
    if program == "twin":
        ema_ans = jax_ema.EMA(EMA_DECAY)
        ema_ans.register(model_of(params_0))
        ema_ans.update(model_of(params_1))
        shadow = flat_shadow(ema_ans)
    else:
        shadow = flat_params(step.EmaRate.of(EMA_DECAY).update(params_0, params_1))
    return tree_pairs(flat_torch(ema.shadow), shadow)


def variational_inputs(p: Precision, batch_size: int = 256):
    """x_0, t, noise for the variational loss: t == 0 for the first quarter of the batch, and x_0
    spread over [-1.5, 1.5] so the decoder NLL's three bins (x < -0.999, x > 0.999, between) all occur."""
    rng = np.random.default_rng(2)
    x_0 = rng.uniform(-1.5, 1.5, (batch_size, 2)).astype(p.np_dtype)
    t = antithetic_t(rng, batch_size)
    t[: batch_size // 4] = 0
    return x_0, t, rng.standard_normal((batch_size, 2)).astype(p.np_dtype)


def variational_pairs(p: Precision) -> Pairs:
    """The variational loss with the 4-output model, and its per-example terms (KL, or the
    decoder NLL where t == 0)."""
    model, params = ported_model(p, n_outputs=4)
    sched_ref, sched_ans = tutorial_schedules(p)
    (x0_ref, x0_ans), (t_ref, t_ans), (e_ref, e_ans) = both(*variational_inputs(p))
    coefs = [
        getattr(sched_ref, name)
        for name in (
            "alphas_bar_sqrt",
            "one_minus_alphas_bar_sqrt",
            "posterior_mean_coef_1",
            "posterior_mean_coef_2",
            "posterior_log_variance_clipped",
        )
    ]
    with torch.no_grad():
        # The reference returns only the batch mean; its per-example terms are that mean of a batch of one.
        loss_ref = ref_losses.loss_variational(model, x0_ref, *coefs, N_STEPS, t=t_ref, noise=e_ref)
        terms_ref = torch.stack(
            [
                ref_losses.loss_variational(
                    model, x0_ref[i : i + 1], *coefs, N_STEPS, t=t_ref[i : i + 1], noise=e_ref[i : i + 1]
                )
                for i in range(x0_ref.shape[0])
            ]
        )
    coefs_ans = [
        getattr(sched_ans, name)
        for name in (
            "alphas_bar_sqrt",
            "one_minus_alphas_bar_sqrt",
            "posterior_mean_coef_1",
            "posterior_mean_coef_2",
            "posterior_log_variance_clipped",
        )
    ]
    loss_variational = jax.jit(
        lambda x_0, t, e: losses.loss_variational(model_of(params), x_0, *coefs_ans, N_STEPS, t=t, noise=e)
    )
    loss_ans = loss_variational(x0_ans, t_ans, e_ans)
    terms_ans = jnp.stack(
        [loss_variational(x0_ans[i : i + 1], t_ans[i : i + 1], e_ans[i : i + 1]) for i in range(x0_ans.shape[0])]
    )
    return {"loss": (to_numpy(loss_ref), to_numpy(loss_ans)), "terms": (to_numpy(terms_ref), to_numpy(terms_ans))}


def p_sample_pairs(p: Precision) -> Pairs:
    """One reverse step with injected z, at the first, a middle and the last (t = 0) step."""
    model, params = ported_model(p)
    sched_ref, sched_ans = tutorial_schedules(p)
    rng = np.random.default_rng(3)
    x, z = (rng.standard_normal((500, 2)).astype(p.np_dtype) for _ in range(2))
    (x_ref, x_ans), (z_ref, z_ans) = both(x, z)
    model_ans = functools.partial(apply_model, params)
    pairs = {}
    for t in (N_STEPS - 1, N_STEPS // 2, 0):
        with torch.no_grad():
            out_ref = ref_sampling.p_sample(
                model, x_ref, t, sched_ref.alphas, sched_ref.betas, sched_ref.one_minus_alphas_bar_sqrt, z=z_ref
            )
        out_ans = sampling.p_sample(
            model_ans, x_ans, t, sched_ans.alphas, sched_ans.betas, sched_ans.one_minus_alphas_bar_sqrt, z=z_ans
        )
        pairs[f"t={t}"] = (to_numpy(out_ref), to_numpy(out_ans))
    return pairs


def chain_pairs(p: Precision, n_points: int = 500) -> Pairs:
    """The whole T-step chain from injected x_T and zs: all T + 1 states."""
    model, params = ported_model(p)
    sched_ref, sched_ans = tutorial_schedules(p)
    rng = np.random.default_rng(4)
    x_T = rng.standard_normal((n_points, 2)).astype(p.np_dtype)
    zs = rng.standard_normal((N_STEPS, n_points, 2)).astype(p.np_dtype)
    (xT_ref, xT_ans), (zs_ref, zs_ans) = both(x_T, zs)
    with torch.no_grad():
        out_ref = ref_sampling.p_sample_loop(
            model,
            x_T.shape,
            N_STEPS,
            sched_ref.alphas,
            sched_ref.betas,
            sched_ref.one_minus_alphas_bar_sqrt,
            x_T=xT_ref,
            zs=zs_ref,
        )
    out_ans = sampling.p_sample_loop(  # the tutorial's Python loop, step by step as torch's
        functools.partial(apply_model, params),
        x_T.shape,
        N_STEPS,
        sched_ans.alphas,
        sched_ans.betas,
        sched_ans.one_minus_alphas_bar_sqrt,
        x_T=xT_ans,
        zs=zs_ans,
    )
    return {"x_seq": (np.stack([to_numpy(x) for x in out_ref]), np.stack([to_numpy(x) for x in out_ans]))}


def training_batches(p: Precision, n_steps: int, batch_size: int = 128):
    """n_steps (x_0, t, e) batches: moons drawn in fresh permutations, antithetic t, normal e."""
    rng = np.random.default_rng(5)
    data = make_dataset("moons", 1000, 0.1, 5).astype(p.np_dtype)
    return [
        (
            data[rng.permutation(len(data))[:batch_size]],
            antithetic_t(rng, batch_size),
            rng.standard_normal((batch_size, 2)).astype(p.np_dtype),
        )
        for _ in range(n_steps)
    ]


def training_pairs(p: Precision, clip_norm: float = 1.0, n_steps: int = 50) -> tuple[Pairs, list[float]]:
    """n_steps training steps (Adam 1e-3, EMA 0.9, clipping at clip_norm; the tutorial clips at
    1.0) from identical weights and identical batches, t and e: pairs for the per-step losses,
    parameters, EMA parameters and Adam moments, and the gradient norm of every step."""
    return _train_both(p, training_batches(p, n_steps), clip_norm)
