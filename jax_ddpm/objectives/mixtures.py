"""The exact model for Gaussian-mixture data: what a perfect network would learn, in closed form.

If x_0 ~ sum_k pi_k N(mu_k, Sigma_k), the DDPM forward process q(x_t | x_0) = N(sqrt(abar_t) x_0,
(1 - abar_t) I) (DDPM eq. 4) keeps it a mixture at every t:

    q_t(x) = sum_k pi_k N(x; sqrt(abar_t) mu_k, S_k),   S_k = abar_t Sigma_k + (1 - abar_t) I,

with the score grad log q_t(x) = sum_k r_k(x) S_k^-1 (sqrt(abar_t) mu_k - x), r_k(x) the posterior
weight of component k at x. Each component belongs to a class; the class-conditional density is the
sub-mixture of that class's components, reweighted, and its score the same sum over them. The noise
a perfect eps-model predicts is E[eps | x_t] = -sqrt(1 - abar_t) grad log q_t(x) (Tweedie), and v
and x0 follow from it (`objectives.predictions`). `class_model_fn` turns this into a class-conditional
model `(x, t, y) -> output` with y = n_classes the null class (the marginal), for
`objectives.guidance.guided_model_fn` and the samplers of `jax_ddpm.samplers.chains`.

t is a diffusion step of a schedule: integer t reads alphas_prod[t]; float t (the probability-flow
ODE's continuous time) interpolates log alpha_bar linearly between steps, alpha_bar(-1) = 1, as the
ODE sampler maps its noise level to t, so the model sees the noise level the sampler integrates at.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jax_ddpm.objectives.predictions import predict_x0
from jax_ddpm.schedule import Schedule


@flax.struct.dataclass
class GaussianMixture:
    """pi_k (K,), mu_k (K, 2), Sigma_k (K, 2, 2) and the class of each component (K,) int32 in 0 .. n_classes - 1."""

    weights: jax.Array
    means: jax.Array
    covs: jax.Array
    classes: jax.Array
    n_classes: int = flax.struct.field(pytree_node=False, default=1)


def mixture(weights, means, covs, classes, dtype=jnp.float32) -> GaussianMixture:
    """A GaussianMixture from array-likes; weights are normalised to sum to one."""
    weights = np.asarray(weights, np.float64)
    classes = np.asarray(classes, np.int32)
    return GaussianMixture(
        jnp.asarray(weights / weights.sum(), dtype),
        jnp.asarray(means, dtype),
        jnp.asarray(covs, dtype),
        jnp.asarray(classes),
        int(classes.max()) + 1,
    )


def eight_gaussians(noise: float = 0.1, radius: float = 2.0, dtype=jnp.float32) -> GaussianMixture:
    """The eight_gaussians dataset's law (`ddpm_harness.data`, in its own units): class k is the Gaussian
    N(radius (cos, sin)(k * 45 degrees), noise^2 I), each of weight 1/8."""
    angles = np.arange(8) * (np.pi / 4)
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return mixture(np.ones(8), means, np.broadcast_to(noise**2 * np.eye(2), (8, 2, 2)), np.arange(8), dtype)


def two_gaussians(separation: float = 1.0, std: float = 0.5, dtype=jnp.float32) -> GaussianMixture:
    """Two classes of equal weight, N((-separation / 2, 0), std^2 I) and N((separation / 2, 0), std^2 I):
    they overlap when separation is a few std or less."""
    means = [[-separation / 2, 0.0], [separation / 2, 0.0]]
    return mixture(np.ones(2), means, np.broadcast_to(std**2 * np.eye(2), (2, 2, 2)), [0, 1], dtype)


def alpha_prod_at(schedule: Schedule, t: jax.Array) -> jax.Array:
    """alpha_bar at step t: alphas_prod[t] for integer t; for float t in [-1, T-1], log alpha_bar
    interpolated linearly between integer steps with alpha_bar(-1) = 1 (the ODE sampler's continuous time)."""
    t = jnp.asarray(t)
    if jnp.issubdtype(t.dtype, jnp.integer):
        return jnp.take(schedule.alphas_prod, t)
    log_abar = jnp.concatenate([jnp.zeros(1, schedule.alphas_prod.dtype), jnp.log(schedule.alphas_prod)])
    steps = jnp.arange(-1, schedule.num_steps, dtype=log_abar.dtype)
    return jnp.exp(jnp.interp(t, steps, log_abar))


def _component_terms(mix: GaussianMixture, x: jax.Array, alpha_prod, label):
    """Per point and component: the log of pi_k N(x; sqrt(abar) mu_k, S_k), -inf off the point's class
    (B, K), and S_k^-1 (sqrt(abar) mu_k - x) (B, K, 2). label None or n_classes: every component."""
    abar = jnp.asarray(alpha_prod, x.dtype)
    eye = jnp.eye(2, dtype=x.dtype)
    S = abar * mix.covs + (1 - abar) * eye  # (K, 2, 2)
    S_inv = jnp.linalg.inv(S)
    diff = jnp.sqrt(abar) * mix.means[None] - x[:, None, :]  # (B, K, 2)
    pull = jnp.einsum("kij,bkj->bki", S_inv, diff)
    _, logdet = jnp.linalg.slogdet(S)
    log_comp = jnp.log(mix.weights) - 0.5 * (jnp.sum(diff * pull, -1) + logdet + 2 * jnp.log(2 * jnp.pi))
    if label is not None:
        y = jnp.broadcast_to(jnp.asarray(label, jnp.int32), x.shape[:1])[:, None]  # (B, 1)
        keep = (mix.classes[None] == y) | (y == mix.n_classes)
        log_comp = jnp.where(keep, log_comp, -jnp.inf)
    return log_comp, pull


def log_density(mix: GaussianMixture, x: jax.Array, alpha_prod, label=None) -> jax.Array:
    """log q_t(x | label) (B,) at noise level alpha_bar: the class's sub-mixture (label None or n_classes: all)."""
    log_comp, _ = _component_terms(mix, x, alpha_prod, label)
    log_w = jnp.log(mix.weights)
    if label is not None:
        y = jnp.broadcast_to(jnp.asarray(label, jnp.int32), x.shape[:1])[:, None]
        log_w = jnp.where((mix.classes[None] == y) | (y == mix.n_classes), log_w, -jnp.inf)
    return jax.nn.logsumexp(log_comp, axis=-1) - jax.nn.logsumexp(log_w, axis=-1)


def score(mix: GaussianMixture, x: jax.Array, alpha_prod, label=None) -> jax.Array:
    """grad_x log q_t(x | label) (B, 2) = sum_k r_k(x) S_k^-1 (sqrt(abar) mu_k - x) over the class's components."""
    log_comp, pull = _component_terms(mix, x, alpha_prod, label)
    r = jax.nn.softmax(log_comp, axis=-1)  # (B, K)
    return jnp.einsum("bk,bki->bi", r, pull)


def eps(mix: GaussianMixture, x: jax.Array, alpha_prod, label=None) -> jax.Array:
    """E[eps | x_t = x, label] = -sqrt(1 - abar) score (B, 2): the exact eps-model."""
    return -jnp.sqrt(1 - jnp.asarray(alpha_prod, x.dtype)) * score(mix, x, alpha_prod, label)


def class_model_fn(mix: GaussianMixture, schedule: Schedule, prediction: str = "eps"):
    """The exact class-conditional model (x (B, 2), t (1,) or (B,), y (B,)) -> output (B, 2): eps, v
    or x0 at class y, the marginal at y = n_classes (the null class)."""

    def model_fn(x: jax.Array, t: jax.Array, y: jax.Array) -> jax.Array:
        abar = jnp.reshape(alpha_prod_at(schedule, t), (-1, 1)).astype(x.dtype)  # (1, 1) or (B, 1)
        if abar.shape[0] == 1:  # one noise level for the batch (the samplers' call)
            e = -jnp.sqrt(1 - abar) * score(mix, x, abar[0, 0], y)
        else:
            e = -jnp.sqrt(1 - abar) * jax.vmap(lambda xi, ai, yi: score(mix, xi[None], ai, yi)[0])(x, abar[:, 0], y)
        if prediction == "eps":
            return e
        x0 = predict_x0(e, x, abar, "eps")
        if prediction == "x0":
            return x0
        if prediction == "v":
            return jnp.sqrt(abar) * e - jnp.sqrt(1 - abar) * x0
        raise ValueError(f"unknown prediction {prediction!r}; choose eps, v or x0")

    return model_fn


def sample(mix: GaussianMixture, key: jax.Array, n: int, label=None, alpha_prod=1.0) -> jax.Array:
    """n draws (n, 2) of q_t(x | label) at noise level alpha_bar (1: the data): a component of the class
    by its weight, then sqrt(abar) x_0 + sqrt(1 - abar) eps."""
    k_comp, k_x0, k_eps = jax.random.split(key, 3)
    log_w = jnp.log(mix.weights)
    if label is not None and label != mix.n_classes:
        log_w = jnp.where(mix.classes == label, log_w, -jnp.inf)
    comp = jax.random.categorical(k_comp, log_w, shape=(n,))
    chol = jnp.linalg.cholesky(mix.covs)[comp]  # (n, 2, 2)
    dtype = mix.means.dtype
    x_0 = mix.means[comp] + jnp.einsum("nij,nj->ni", chol, jax.random.normal(k_x0, (n, 2), dtype))
    abar = jnp.asarray(alpha_prod, dtype)
    return jnp.sqrt(abar) * x_0 + jnp.sqrt(1 - abar) * jax.random.normal(k_eps, (n, 2), dtype)
