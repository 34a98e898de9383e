"""Samplers beyond the tutorial's ancestral chain: DDPM, DDIM, DPM-Solver++(2M) and the probability-flow ODE.

Every sampler is a pure function of (model_fn, schedule, x_T, noise or key, options) and runs as one
jitted `lax.scan` (the ODE: one `diffrax.diffeqsolve`):

- `model_fn(x, t) -> output`: x (N, 2), t an array of shape (1,) broadcast over the batch (int32
  steps for the discrete samplers, as the tutorial's p_sample calls its model; float32/64 continuous
  time for the ODE: see `interpolate_steps`). It is a static argument of `jax.jit`: build it once
  (e.g. `functools.partial(apply_model, params)`) and reuse it, or every call compiles anew.
- `schedule`: a `jax_ddpm.schedule.Schedule`; only `alphas_prod` (alpha_bar) is read here.
- `prediction`: what the model outputs, "eps" (the tutorial's noise model), "v" (Salimans & Ho 2022,
  diffusers' "v_prediction") or "x0" (diffusers' "sample"); `predict_x0` / `predict_eps` convert.
- noise: injected as an array (the parity tests' way), or drawn from `key` inside the scan with
  `fold_in(key, i + 1)` at step i (`fold_in(key, 0)` is kept for x_T, as `samplers.tutorial.sample_chain` does).

The step rules follow diffusers' schedulers (DDPMScheduler, DDIMScheduler,
DPMSolverMultistepScheduler; proven equal in parity_tests/test_samplers_diffusers.py) with two
differences on purpose: (1) DDIM steps to the *next timestep of its own sequence* (the DDIM paper's
sub-sequence tau); diffusers' DDIMScheduler uses t - T // K, which is that only for "leading"
spacing and for "trailing" when K divides T (diffusers issues #11347, #12633); (2) DDPM adds no noise
at its last step whatever the spacing (Ho et al. Algorithm 2); diffusers adds noise at the last step
when its timestep is > 0 ("trailing"). The tutorial's own sampler, noise at t = 0 included, stays
`jax_ddpm.sampling` (compiled in `samplers.tutorial`); the `tutorial` entry of `sample` dispatches to it unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_harness.config import VARIANCES, SamplerOptions
from ddpm_harness.timesteps import SPACINGS, ddim_timesteps, dpm_solver_timesteps  # noqa: F401 (SPACINGS: for callers)
from jax_ddpm.model import apply_model
from jax_ddpm.objectives.predictions import predict_eps, predict_x0
from jax_ddpm.objectives.schedules import has_zero_terminal_snr
from jax_ddpm.samplers import flow
from jax_ddpm.samplers.samples import ODE_ATOL, ODE_RTOL, ODE_SOLVER, Samples, _nfe  # noqa: F401 (for callers)
from jax_ddpm.samplers.tutorial import p_sample_for, sample_chain, scan_chain
from jax_ddpm.schedule import Schedule

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

# DPM-Solver and the ODE cannot start at alpha_bar = 0 (sigma = sqrt(1 - abar) / sqrt(abar) = inf):
# a zero-terminal-SNR schedule's last alpha_bar is replaced by 2^-24 there, as diffusers'
# DPMSolverMultistepScheduler does.
ZERO_SNR_ALPHA_PROD = 2.0**-24


# --- timesteps ----------------------------------------------------------------------------------


def _alpha_prod(schedule: Schedule, t) -> jax.Array:
    """alpha_bar at integer steps t (any shape); 1 where t < 0 (diffusers' set_alpha_to_one=True)."""
    t = jnp.asarray(t)
    one = jnp.ones((), schedule.alphas_prod.dtype)
    return jnp.where(t >= 0, jnp.take(schedule.alphas_prod, jnp.maximum(t, 0)), one)


def _step_noise(noise, key, i, x):
    """The noise of step i: noise[i] when injected, else drawn from fold_in(key, i + 1)."""
    if noise is not None:
        return noise[i]
    return jax.random.normal(jax.random.fold_in(key, i + 1), x.shape, x.dtype)


def _scan_chain(body, init, xs, trajectory: bool):
    """Run `body(carry, xs_i) -> (carry, x_next)` over xs from `init` (x_T, or a tuple starting with
    x_T); the last state, and all states (x_T first) if asked."""
    carry, states = jax.lax.scan(body, init, xs)
    x_T = init[0] if isinstance(init, tuple) else init
    x_0 = carry[0] if isinstance(carry, tuple) else carry
    traj = jnp.concatenate([x_T[None], states]) if trajectory else None
    return x_0, traj


# --- DDPM ---------------------------------------------------------------------------------------


def ddpm_step(
    schedule: Schedule,
    model_output: jax.Array,
    x_t: jax.Array,
    t,
    t_prev,
    z: jax.Array,
    *,
    variance: str = "beta",
    prediction: str = "eps",
) -> jax.Array:
    """One ancestral step x_t -> x_{t_prev} (Ho et al. 2020, Algorithm 2 on any sub-sequence of steps).

    The respaced beta_t = 1 - abar_t / abar_prev (= betas[t] when t_prev = t - 1); sigma_t^2 =
    beta_t ("beta", diffusers' "fixed_large") or the posterior variance (1 - abar_prev) / (1 - abar_t)
    beta_t ("posterior", DDPM eq. 7, diffusers' "fixed_small"); no noise when t_prev < 0.
    """
    # 1. compute alphas, betas
    alpha_prod_t = _alpha_prod(schedule, t)
    alpha_prod_t_prev = _alpha_prod(schedule, t_prev)
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t
    # 2. compute predicted original sample, formula (15)
    pred_original_sample = predict_x0(model_output, x_t, alpha_prod_t, prediction)
    # 4. coefficients for pred_original_sample x_0 and current sample x_t, formula (7)
    pred_original_sample_coeff = (alpha_prod_t_prev**0.5 * current_beta_t) / beta_prod_t
    current_sample_coeff = current_alpha_t**0.5 * beta_prod_t_prev / beta_prod_t
    # 5. predicted previous sample mu_t, formula (7)
    pred_prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * x_t
    # 6. add noise sigma_t z, none at the last step (Algorithm 2, line 3)
    if variance == "beta":
        var = current_beta_t
    elif variance == "posterior":
        var = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t
    else:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    return pred_prev_sample + jnp.where(jnp.asarray(t_prev) >= 0, var**0.5, 0) * z


@functools.partial(jax.jit, static_argnames=("model_fn", "timesteps", "variance", "prediction", "trajectory"))
def _ddpm(model_fn, schedule, x_T, noise, key, *, timesteps, variance, prediction, trajectory):
    ts = np.asarray(timesteps, np.int32)
    prev = np.append(ts[1:], -1).astype(np.int32)

    def body(x, xs):
        i, t, t_prev = xs
        out = model_fn(x, jnp.reshape(t, (1,)))
        x = ddpm_step(
            schedule, out, x, t, t_prev, _step_noise(noise, key, i, x), variance=variance, prediction=prediction
        )
        return x, x

    x_0, traj = _scan_chain(body, x_T, (jnp.arange(len(ts)), ts, prev), trajectory)
    return Samples(x_0, traj, jnp.asarray(len(ts), jnp.int32))


def ddpm(
    model_fn: ModelFn,
    schedule: Schedule,
    x_T: jax.Array,
    noise: jax.Array | None = None,
    key: jax.Array | None = None,
    *,
    sample_steps: int | None = None,
    timestep_spacing: str = "leading",
    variance: str = "beta",
    prediction: str = "eps",
    trajectory: bool = False,
) -> Samples:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) on K = sample_steps of the T steps
    (default all T: 99, 98, ..., 0), from x_T (N, 2); noise (K, N, 2) injected (noise[i] at step i,
    the last one unused) or drawn from key. See `ddpm_step`."""
    ts = ddim_timesteps(schedule.num_steps, sample_steps or schedule.num_steps, timestep_spacing)
    return _ddpm(
        model_fn,
        schedule,
        x_T,
        noise,
        key,
        timesteps=tuple(int(t) for t in ts),
        variance=variance,
        prediction=prediction,
        trajectory=trajectory,
    )


# --- DDIM ---------------------------------------------------------------------------------------


def ddim_step(
    schedule: Schedule,
    model_output: jax.Array,
    x_t: jax.Array,
    t,
    t_prev,
    z: jax.Array | None,
    *,
    eta: float = 0.0,
    prediction: str = "eps",
) -> jax.Array:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12), abar_prev = 1 when t_prev < 0.

    x_prev = sqrt(abar_prev) x0_pred + sqrt(1 - abar_prev - sigma^2) eps_pred + sigma z with
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev)) (eq. 16).
    """
    # 2. compute alphas, betas
    alpha_prod_t = _alpha_prod(schedule, t)
    alpha_prod_t_prev = _alpha_prod(schedule, t_prev)
    beta_prod_t = 1 - alpha_prod_t
    # 3. compute predicted original sample from predicted noise also called "predicted x_0" of formula (12)
    pred_original_sample = predict_x0(model_output, x_t, alpha_prod_t, prediction)
    pred_epsilon = predict_eps(model_output, x_t, alpha_prod_t, prediction)
    # 5. compute variance: "sigma_t(eta)" -> see formula (16)
    variance = (1 - alpha_prod_t_prev) / beta_prod_t * (1 - alpha_prod_t / alpha_prod_t_prev)
    std_dev_t = eta * variance**0.5
    # 6. compute "direction pointing to x_t" of formula (12)
    pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * pred_epsilon
    # 7. compute x_t without "random noise" of formula (12)
    prev_sample = alpha_prod_t_prev**0.5 * pred_original_sample + pred_sample_direction
    if eta > 0:
        prev_sample = prev_sample + std_dev_t * z
    return prev_sample


@functools.partial(jax.jit, static_argnames=("model_fn", "timesteps", "eta", "prediction", "trajectory"))
def _ddim(model_fn, schedule, x_T, noise, key, *, timesteps, eta, prediction, trajectory):
    ts = np.asarray(timesteps, np.int32)
    prev = np.append(ts[1:], -1).astype(np.int32)

    def body(x, xs):
        i, t, t_prev = xs
        out = model_fn(x, jnp.reshape(t, (1,)))
        z = _step_noise(noise, key, i, x) if eta > 0 else None
        x = ddim_step(schedule, out, x, t, t_prev, z, eta=eta, prediction=prediction)
        return x, x

    x_0, traj = _scan_chain(body, x_T, (jnp.arange(len(ts)), ts, prev), trajectory)
    return Samples(x_0, traj, jnp.asarray(len(ts), jnp.int32))


def ddim(
    model_fn: ModelFn,
    schedule: Schedule,
    x_T: jax.Array,
    noise: jax.Array | None = None,
    key: jax.Array | None = None,
    *,
    sample_steps: int | None = None,
    eta: float = 0.0,
    timestep_spacing: str = "leading",
    prediction: str = "eps",
    trajectory: bool = False,
) -> Samples:
    """DDIM (Song et al. 2021, eq. 12) on the K = sample_steps steps of `ddim_timesteps` (default all
    T), each step to the next one of the sequence and the last to alpha_bar = 1 (diffusers'
    set_alpha_to_one=True). eta = 0: deterministic; eta > 0 uses noise (K, N, 2) or key."""
    ts = ddim_timesteps(schedule.num_steps, sample_steps or schedule.num_steps, timestep_spacing)
    return _ddim(
        model_fn,
        schedule,
        x_T,
        noise,
        key,
        timesteps=tuple(int(t) for t in ts),
        eta=float(eta),
        prediction=prediction,
        trajectory=trajectory,
    )


# --- DPM-Solver++(2M) ---------------------------------------------------------------------------


def _dpm_alpha_prod(schedule: Schedule, t) -> jax.Array:
    abar = _alpha_prod(schedule, t)
    return jnp.where(abar == 0, jnp.asarray(ZERO_SNR_ALPHA_PROD, abar.dtype), abar)


@functools.partial(jax.jit, static_argnames=("model_fn", "timesteps", "prediction", "trajectory"))
def _dpm_solver_pp(model_fn, schedule, x_T, *, timesteps, prediction, trajectory):
    ts = np.asarray(timesteps, np.int32)
    k = len(ts)
    # Noise levels of the K + 1 states: alpha_i = sqrt(abar), sigma_i = sqrt(1 - abar), and
    # lambda_i = log(alpha_i / sigma_i) (half the log-SNR), the last one at abar = 1 (lambda = inf).
    abar = _dpm_alpha_prod(schedule, np.append(ts, -1))
    alpha, sigma = jnp.sqrt(abar), jnp.sqrt(1 - abar)
    lam = jnp.log(alpha) - jnp.log(sigma)
    # First order (DDIM) at the first step (no previous x_0) and at the last (final_sigmas_type="zero").
    second = (np.arange(k) > 0) & (np.arange(k) < k - 1)

    def body(carry, xs):
        x, m1 = carry
        i, t, second_order = xs
        sigma_s0, lambda_s0 = sigma[i], lam[i]
        alpha_t, sigma_t, lambda_t = alpha[i + 1], sigma[i + 1], lam[i + 1]
        lambda_s1 = lam[jnp.maximum(i - 1, 0)]
        m0 = predict_x0(model_fn(x, jnp.reshape(t, (1,))), x, abar[i], prediction)
        h = lambda_t - lambda_s0
        # DPM-Solver++(1), Lu et al. 2022b eq. (9) / DDIM: x_t = sigma_t / sigma_s x - alpha_t (e^-h - 1) x0
        x_first = (sigma_t / sigma_s0) * x - (alpha_t * (jnp.exp(-h) - 1.0)) * m0
        # DPM-Solver++(2M), Lu et al. 2022b Algorithm 2: D = x0_i + (x0_i - x0_{i-1}) / (2 r), r = h_{i-1} / h_i
        h_safe = jnp.where(second_order, h, 1.0)
        h_0 = jnp.where(second_order, lambda_s0 - lambda_s1, 1.0)
        r0 = h_0 / h_safe
        D0, D1 = m0, (1.0 / r0) * (m0 - m1)
        x_second = (
            (sigma_t / sigma_s0) * x - (alpha_t * (jnp.exp(-h) - 1.0)) * D0 - 0.5 * (alpha_t * (jnp.exp(-h) - 1.0)) * D1
        )
        x = jnp.where(second_order, x_second, x_first)
        return (x, m0), x

    x_0, traj = _scan_chain(body, (x_T, jnp.zeros_like(x_T)), (jnp.arange(k), ts, second), trajectory)
    return Samples(x_0, traj, jnp.asarray(k, jnp.int32))


def dpm_solver_pp(
    model_fn: ModelFn,
    schedule: Schedule,
    x_T: jax.Array,
    *,
    sample_steps: int = 20,
    timestep_spacing: str = "linspace",
    prediction: str = "eps",
    trajectory: bool = False,
) -> Samples:
    """DPM-Solver++(2M) (Lu et al. 2022b, "DPM-Solver++", Algorithm 2, data prediction, midpoint form)
    in K = sample_steps model evaluations, as diffusers' DPMSolverMultistepScheduler(algorithm_type=
    "dpmsolver++", solver_order=2) with its defaults: solver_type="midpoint", timestep_spacing="linspace"
    (`dpm_solver_timesteps`), final_sigmas_type="zero" (the last step goes to alpha_bar = 1 and is first
    order), lower_order_final=True (no effect at order 2 once the last step is first order), no
    thresholding, no Karras/exponential/beta/Lu sigmas, euler_at_final=False. Deterministic."""
    ts = dpm_solver_timesteps(schedule.num_steps, sample_steps, timestep_spacing)
    return _dpm_solver_pp(
        model_fn, schedule, x_T, timesteps=tuple(int(t) for t in ts), prediction=prediction, trajectory=trajectory
    )


# --- the probability-flow ODE ------------------------------------------------------------------
# Continuous time: log alpha_bar is interpolated linearly between the integer steps t = 0 .. T-1
# (and t = -1, where alpha_bar = 1). The ODE is solved in sigma = sqrt((1 - abar) / abar), the noise
# level of y = x / sqrt(abar), where it reads dy / dsigma = eps(x, t) (DDIM's ODE, Song et al. 2021,
# eq. 14): smooth in sigma down to sigma = 0, whatever the schedule. sigma <-> t goes through the
# interpolated log alpha_bar; the model sees t as a float.


def _log_alpha_prod_grid(schedule: Schedule) -> jax.Array:
    """log alpha_bar at t = -1, 0, ..., T-1 (T + 1,), alpha_bar(-1) = 1; a zero-SNR end gets 2^-24."""
    abar = _dpm_alpha_prod(schedule, jnp.arange(schedule.num_steps))
    return jnp.concatenate([jnp.zeros(1, abar.dtype), jnp.log(abar)])


def continuous_time(schedule: Schedule, sigma: jax.Array) -> jax.Array:
    """The continuous step t in [-1, T-1] where sigma(t) = sqrt((1 - abar(t)) / abar(t)) = sigma,
    log abar(t) being linear between integer steps: t = interp(log(1 + sigma^2), -log abar, steps)."""
    la = _log_alpha_prod_grid(schedule)
    steps = jnp.arange(-1, schedule.num_steps, dtype=la.dtype)
    return jnp.interp(jnp.log1p(sigma**2), -la, steps)


def ode_sigmas(schedule: Schedule) -> jax.Array:
    """sigma = sqrt(1 / abar - 1) at the integer steps t = -1, 0, ..., T-1 (T + 1,), sigma(-1) = 0."""
    return jnp.sqrt(jnp.expm1(-_log_alpha_prod_grid(schedule)))


def interpolate_steps(model_fn: ModelFn, num_steps: int) -> ModelFn:
    """A continuous-time model from one trained at integer steps (the tutorial's embedding table):
    outputs at floor(t) and floor(t) + 1 mixed linearly, t clamped to [0, T-1]. Two calls of model_fn
    per call: an ODE NFE of n with it is 2n evaluations of model_fn."""

    def continuous_model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        t = jnp.clip(t, 0, num_steps - 1)
        lo = jnp.minimum(jnp.floor(t), num_steps - 2).astype(jnp.int32)
        w = (t - lo).astype(x.dtype)
        return (1 - w) * model_fn(x, lo) + w * model_fn(x, lo + 1)

    return continuous_model_fn


def _ode_eps(model_fn, schedule, prediction):
    """The vector field dy/dsigma = eps(x = y / sqrt(1 + sigma^2), t(sigma)) of the ODE in (sigma, y)."""

    def vector_field(sigma, y, args):
        alpha_prod = 1 / (1 + sigma**2)
        x = y * jnp.sqrt(alpha_prod)
        t = continuous_time(schedule, sigma)
        return predict_eps(model_fn(x, jnp.reshape(t, (1,))), x, alpha_prod, prediction)

    return vector_field


@functools.partial(jax.jit, static_argnames=("model_fn", "prediction", "rtol", "atol", "trajectory", "max_steps"))
def _ode(model_fn, schedule, x_T, *, prediction, rtol, atol, trajectory, max_steps):
    import diffrax  # here, not at the top: only --sampler ode needs it, and it costs every run ~0.4 s to import

    sigmas = ode_sigmas(schedule)  # (T + 1,) at t = -1, 0, ..., T-1
    sigma_max, sigma_min = sigmas[-1], sigmas[1]
    y_T = x_T * jnp.sqrt(1 + sigma_max**2)
    save_at = sigmas[:0:-1]  # sigma at t = T-1, ..., 0
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(_ode_eps(model_fn, schedule, prediction)),
        diffrax.Tsit5(),
        t0=sigma_max,
        t1=sigma_min,
        dt0=None,
        y0=y_T,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(ts=save_at) if trajectory else diffrax.SaveAt(t1=True),
        max_steps=max_steps,
    )
    # x at the noise levels of t = T-1 .. 0; then the last step from t = 0 to alpha_bar = 1 as DDIM's:
    # x_0 = predicted x_0 (the Euler step of the same ODE to sigma = 0; no model call below t = 0).
    xs = solution.ys / jnp.sqrt(1 + save_at[-solution.ys.shape[0] :] ** 2)[:, None, None]
    t_0 = jnp.zeros((1,), sigmas.dtype)
    x_0 = predict_x0(model_fn(xs[-1], t_0), xs[-1], 1 / (1 + sigma_min**2), prediction)
    traj = jnp.concatenate([x_T[None], xs[1:], x_0[None]]) if trajectory else None
    return Samples(x_0, traj, _nfe(solution) + 1)


def ode(
    model_fn: ModelFn,
    schedule: Schedule,
    x_T: jax.Array,
    *,
    prediction: str = "eps",
    rtol: float = ODE_RTOL,
    atol: float = ODE_ATOL,
    trajectory: bool = False,
    max_steps: int = 4096,
) -> Samples:
    """The probability-flow ODE from x_T at t = T-1 down to t = 0, solved by diffrax's Tsit5 (5th order,
    adaptive: PIDController(rtol, atol), dt0 chosen by diffrax), then DDIM's last step to alpha_bar = 1.

    The model is called at float t in [0, T-1] (wrap an integer-step model with `interpolate_steps`).
    nfe counts calls of model_fn (6 per attempted solver step + 1 at the start + 1 for the last step).
    The trajectory has the T + 1 states at t = T-1, ..., 0 and alpha_bar = 1, like the tutorial's.
    """
    return _ode(
        model_fn,
        schedule,
        x_T,
        prediction=prediction,
        rtol=float(rtol),
        atol=float(atol),
        trajectory=trajectory,
        max_steps=max_steps,
    )


# --- the tutorial's sampler, the registry -------------------------------------------------------


def tutorial(
    params: dict,
    schedule: Schedule,
    x_T: jax.Array | None = None,
    noise: jax.Array | None = None,
    key: jax.Array | None = None,
    *,
    n: int | None = None,
    trajectory: bool = False,
    parameterization: str = "eps",
) -> Samples:
    """The tutorial's ancestral sampler, unchanged (`jax_ddpm.sampling`, noise at t = 0 included), for a model
    that predicts `parameterization` (`samplers.tutorial.p_sample_for`: eps, or a learned variance).

    x_T None: `samplers.tutorial.sample_chain(params, schedule, key, n)`, bit for bit today's default; x_T given:
    the same chain (`samplers.tutorial.scan_chain`) with noise (T, N, 2), or with the noise sample_chain would
    draw from key.
    """
    if x_T is None:
        states = sample_chain(params, schedule, key, n, parameterization=parameterization)
    else:  # noise not given: step k's from fold_in(key, k + 1), as sample_chain draws it
        p_sample = p_sample_for(params, schedule, parameterization)
        model = functools.partial(apply_model, params)
        states = scan_chain(model, schedule, x_T.shape, x_T=x_T, zs=noise, key=key, p_sample=p_sample)
    return Samples(states[-1], states if trajectory else None, jnp.asarray(schedule.num_steps, jnp.int32))


def options_for(schedule: Schedule, sampler: str = "tutorial", **options) -> SamplerOptions:
    """SamplerOptions (checked: a ConfigError, which is a ValueError) for sampling this schedule, whose
    T and zero terminal SNR it takes; `options`: SamplerOptions' other fields."""
    return SamplerOptions(sampler, schedule.num_steps, zero_terminal_snr=has_zero_terminal_snr(schedule), **options)


def sample(
    options: SamplerOptions,
    model_fn: ModelFn | None,
    schedule: Schedule,
    x_T: jax.Array | None = None,
    key: jax.Array | None = None,
    trajectory: bool = False,
    *,
    noise: jax.Array | None = None,
    n: int | None = None,
    params: dict | None = None,
) -> Samples:
    """Run sampler `options.sampler` with its (already checked) options on `schedule` (a flow model's,
    --method flow: `flow.sample`, from x_T at t = 0 to the sample at t = 1; the schedule unused).

    x_T (N, 2), or None: drawn from fold_in(key, 0) with shape (n, 2) (the tutorial's sample_chain
    convention). Step noise injected (`noise`) or drawn from `key`. `tutorial` runs the tutorial's
    model with `params` (model_fn unused); the others call model_fn.
    """
    if options.num_steps != schedule.num_steps:
        raise ValueError(f"the options are for T = {options.num_steps}, the schedule has T = {schedule.num_steps}.")
    if x_T is None and (key is None or n is None):
        raise ValueError("give x_T (N, 2), or a key and n to draw x_T ~ N(0, I).")
    name, k, prediction = options.sampler, options.sample_steps, options.prediction
    if options.method == "flow":  # model_fn: a velocity at continuous t (`flow.grid_model`)
        if x_T is None:
            x_T = jax.random.normal(jax.random.fold_in(key, 0), (n, 2), schedule.alphas_prod.dtype)
        return flow.sample(options, model_fn, x_T, trajectory)
    if name == "tutorial":
        if params is None:
            raise ValueError("the tutorial sampler runs the tutorial's model: pass params=.")
        return tutorial(params, schedule, x_T, noise, key, n=n, trajectory=trajectory)
    if x_T is None:
        x_T = jax.random.normal(jax.random.fold_in(key, 0), (n, 2), schedule.alphas_prod.dtype)
    spacing = dict(timestep_spacing=options.timestep_spacing, prediction=prediction, trajectory=trajectory)
    if name == "ddpm":
        return ddpm(model_fn, schedule, x_T, noise, key, sample_steps=k, variance=options.variance, **spacing)
    if name == "ddim":
        return ddim(model_fn, schedule, x_T, noise, key, sample_steps=k, eta=options.eta, **spacing)
    if name == "dpm-solver++":
        return dpm_solver_pp(model_fn, schedule, x_T, sample_steps=k, **spacing)
    return ode(
        model_fn, schedule, x_T, prediction=prediction, rtol=options.rtol, atol=options.atol, trajectory=trajectory
    )
