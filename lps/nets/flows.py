"""Flow matching and MeanFlow: the losses that train a generative policy and the samplers that
draw from it; see docs/method.md (conventions) and docs/agents.md (ablations).

t = 1 is noise and t = 0 is data, `z_t = (1 - t) x + t e`. Every function takes the network as a
callable `net(z, t, h) -> output` with the observation and parameters bound. MeanFlow learns the
average velocity over [r, t] (one step from noise to data); its parameterisations are `action`
(the network predicts the clean chunk; LPS's default), `velocity` (original MeanFlow) and
`velocity-release` (the release's JVP tangent (v, 0, 1), kept to reproduce the paper's curve).
Flow matching learns the instantaneous velocity and samples with Euler steps.
"""

from __future__ import annotations

from typing import Callable, Literal

import jax
import jax.numpy as jnp

Net = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]
Parameterisation = Literal["action", "velocity", "velocity-release"]
PARAMETERISATIONS: tuple[str, ...] = ("action", "velocity", "velocity-release")

# MeanFlow time sampling and loss weighting (REFERENCE.md §1.2).
LOGIT_MEAN, LOGIT_STD = -0.4, 1.0
FRACTION_R_NEQ_T = 0.25
ADAPTIVE_EPS, ADAPTIVE_POWER = 1e-3, 0.5


def average_velocity(net: Net, parameterisation: Parameterisation) -> Callable:
    """`u(z, t, r)`: the average velocity over [r, t] implied by the network's output."""

    def u(z, t, r):
        out = net(z, t, t - r)
        return z - out if parameterisation == "action" else out

    return u


def sample_meanflow_times(key: jax.Array, batch: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(t, r), each (batch, 1), t >= r, logit-normal, with r = t on 75 % of the rows."""
    k_times, k_equal = jax.random.split(key)
    times = jax.nn.sigmoid(LOGIT_MEAN + LOGIT_STD * jax.random.normal(k_times, (2, batch, 1)))
    t, r = jnp.maximum(times[0], times[1]), jnp.minimum(times[0], times[1])
    # Most rows learn the instantaneous velocity (r = t); the rest learn to jump.
    r = jnp.where(jax.random.uniform(k_equal, (batch, 1)) < FRACTION_R_NEQ_T, r, t)
    return t, r


def weighted_mean(x: jnp.ndarray, weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """The mean of the per-sample `x` (B,), or its `weights`-weighted mean (the rows a policy
    clones: `bc_weights` of a batch)."""
    if weights is None:
        return jnp.mean(x)
    return jnp.sum(weights * x) / jnp.maximum(jnp.sum(weights), 1e-6)


def adaptive_l2(err: jnp.ndarray, weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """MeanFlow's adaptive loss: per-sample squared error, down-weighted where it is large."""
    per_sample = jnp.mean(jnp.square(err), axis=-1)
    weight = jax.lax.stop_gradient(1.0 / (per_sample + ADAPTIVE_EPS) ** ADAPTIVE_POWER)
    return weighted_mean(weight * per_sample, weights)


def meanflow_loss(
    net: Net, x: jnp.ndarray, noise: jnp.ndarray, key: jax.Array, parameterisation: Parameterisation = "action",
    weights: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """MeanFlow loss on data chunks `x` (B, d) with training noise `noise` (B, d).

    The MeanFlow identity u(z, t, r) = v - (t - r) du/dt gives the regression target; du/dt is
    the total derivative along the path (dz/dt = v, dt/dt = 1, dr/dt = 0), one forward-mode
    JVP through the network.
    """
    t, r = sample_meanflow_times(key, x.shape[0])
    z = (1.0 - t) * x + t * noise
    v = noise - x
    u_fn = average_velocity(net, parameterisation)
    if parameterisation == "velocity-release":  # the release's tangent, see the module docstring
        tangent = (v, jnp.zeros_like(t), jnp.ones_like(r))
    else:  # along the path: dz/dt = v, dt/dt = 1, dr/dt = 0
        tangent = (v, jnp.ones_like(t), jnp.zeros_like(r))
    u, du_dt = jax.jvp(u_fn, (z, t, r), tangent)
    target = jax.lax.stop_gradient(v - jnp.clip(t - r, 0.0, 1.0) * du_dt)
    return adaptive_l2(u - target, weights)


def meanflow_sample(net: Net, noise: jnp.ndarray, parameterisation: Parameterisation = "action") -> jnp.ndarray:
    """One-step MeanFlow sample from t = 1 to t = 0: a single network call."""
    ones = jnp.ones(noise.shape[:-1] + (1,), noise.dtype)
    out = net(noise, ones, ones)
    return out if parameterisation == "action" else noise - out


def flow_matching_errors(net: Net, x: jnp.ndarray, noise: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """Per-row squared error (B,) of the predicted velocity against `e - x` at times `t` (B, 1)."""
    z = (1.0 - t) * x + t * noise
    v_hat = net(z, t, jnp.zeros_like(t))
    return jnp.mean(jnp.square(v_hat - (noise - x)), axis=-1)


def flow_matching_loss(net: Net, x: jnp.ndarray, noise: jnp.ndarray, key: jax.Array,
                       weights: jnp.ndarray | None = None) -> jnp.ndarray:  # fmt: skip
    """Conditional flow matching: regress the velocity `e - x` at a uniform time t."""
    return weighted_mean(flow_matching_errors(net, x, noise, jax.random.uniform(key, (x.shape[0], 1))), weights)


def euler_sample(net: Net, noise: jnp.ndarray, steps: int = 10) -> jnp.ndarray:
    """Integrate the flow from noise (t = 1) to data (t = 0) with `steps` Euler steps.

    Differentiable end to end, so a latent actor can backpropagate through it (FM-LPS).
    """
    dt = 1.0 / steps

    def step(z, i):
        t = jnp.full(z.shape[:-1] + (1,), 1.0 - i * dt, z.dtype)
        return z - dt * net(z, t, jnp.zeros_like(t)), None

    z, _ = jax.lax.scan(step, noise, jnp.arange(steps))
    return z
