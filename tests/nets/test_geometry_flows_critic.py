"""Sphere projection, the MeanFlow target against finite differences, the critic target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lps.nets import critic as C
from lps.nets import flows
from lps.nets.latent import TRUNCATION_BOUND, actor_latent, sample_latent, sphere_project

jax.config.update("jax_enable_x64", False)


def test_sphere_project_norm_and_direction():
    z = jax.random.normal(jax.random.PRNGKey(0), (64, 25)) * 3.0
    p = sphere_project(z)
    np.testing.assert_allclose(jnp.linalg.norm(p, axis=-1), 5.0, rtol=1e-5)
    cos = jnp.sum(p * z, -1) / (jnp.linalg.norm(p, axis=-1) * jnp.linalg.norm(z, axis=-1))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)
    np.testing.assert_allclose(sphere_project(p), p, rtol=1e-5)  # idempotent
    assert jnp.all(jnp.isfinite(sphere_project(jnp.zeros((2, 25)))))  # no NaN at the origin


def test_geometries():
    key = jax.random.PRNGKey(1)
    assert np.allclose(jnp.linalg.norm(sample_latent(key, (8, 10), "sphere"), axis=-1), np.sqrt(10), rtol=1e-5)
    assert jnp.abs(sample_latent(key, (1000, 10), "truncated")).max() <= TRUNCATION_BOUND
    raw = 100.0 * jnp.ones((2, 4))
    assert jnp.abs(actor_latent(raw, "truncated")).max() <= TRUNCATION_BOUND
    np.testing.assert_allclose(actor_latent(raw, "normal"), raw)
    with pytest.raises(ValueError, match="sphere"):
        sample_latent(key, (2, 2), "cube")


def _toy_net(z, t, h):
    # A smooth nonlinear "network" of (z, t, h) with a fixed random weight.
    w = jnp.linspace(-1.0, 1.0, z.shape[-1])
    return jnp.tanh(z * (1.0 + t) + w * h) + 0.3 * z * t**2


@pytest.mark.parametrize("parameterisation", ["action", "velocity"])
def test_meanflow_target_matches_finite_differences(parameterisation):
    """u_tgt = v - (t - r) du/dt, with du/dt the total derivative along the path."""
    key = jax.random.PRNGKey(0)
    d, b = 6, 5
    x = jax.random.uniform(key, (b, d), minval=-1, maxval=1)
    e = sphere_project(jax.random.normal(jax.random.PRNGKey(1), (b, d)))
    t, r = jnp.array([[0.9], [0.7], [0.5], [0.3], [0.6]]), jnp.array([[0.2], [0.7], [0.1], [0.0], [0.6]])
    u_fn = flows.average_velocity(_toy_net, parameterisation)
    z_of = lambda tt: (1 - tt) * x + tt * e  # noqa: E731
    v = e - x
    _, du_dt = jax.jvp(u_fn, (z_of(t), t, r), (v, jnp.ones_like(t), jnp.zeros_like(r)))
    eps = 1e-3
    fd = (u_fn(z_of(t + eps), t + eps, r) - u_fn(z_of(t - eps), t - eps, r)) / (2 * eps)
    np.testing.assert_allclose(du_dt, fd, atol=2e-3, rtol=2e-3)

    # The loss is zero exactly when u equals that target: check by plugging the target back.
    u = u_fn(z_of(t), t, r)
    target = v - jnp.clip(t - r, 0, 1) * du_dt
    expected = flows.adaptive_l2(u - target)
    # Reproduce the loss's own time sampling to compare against meanflow_loss.
    tk, rk = flows.sample_meanflow_times(key, b)
    u2, du2 = jax.jvp(u_fn, (z_of(tk), tk, rk), (v, jnp.ones_like(tk), jnp.zeros_like(rk)))
    loss = flows.meanflow_loss(_toy_net, x, e, key, parameterisation)
    np.testing.assert_allclose(loss, flows.adaptive_l2(u2 - (v - jnp.clip(tk - rk, 0, 1) * du2)), rtol=1e-5)
    assert jnp.isfinite(expected)


def test_meanflow_times():
    t, r = flows.sample_meanflow_times(jax.random.PRNGKey(0), 20000)
    assert jnp.all(t >= r) and jnp.all((t > 0) & (t < 1))
    assert abs(float(jnp.mean(t != r)) - 0.25) < 0.02


def test_one_step_sample_is_one_network_call():
    calls = []

    def net(z, t, h):
        calls.append(1)
        return z * 0.5 + t

    z = jnp.ones((3, 4))
    np.testing.assert_allclose(flows.meanflow_sample(net, z, "action"), 1.5)
    np.testing.assert_allclose(flows.meanflow_sample(net, z, "velocity"), z - 1.5)
    assert len(calls) == 2


def test_fm_one_euler_step_equals_single_step():
    net = lambda z, t, h: 0.5 * z + t  # noqa: E731
    z = jnp.ones((2, 3))
    np.testing.assert_allclose(flows.euler_sample(net, z, steps=1), z - net(z, 1.0, 0.0))


def test_critic_target_by_hand():
    batch = {"chunk_return": jnp.array([1.0, -2.0]), "chunk_mask": jnp.array([1.0, 0.0])}
    next_q = jnp.array([10.0, 10.0])
    y = C.chunk_target(batch, next_q, gamma=0.9, chunk_len=3)
    np.testing.assert_allclose(y, [1.0 + 0.729 * 10.0, -2.0], rtol=1e-6)
    q = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    assert C.aggregate(q, "min").tolist() == [1.0, 2.0]
    np.testing.assert_allclose(C.critic_loss(q, jnp.array([1.0, 2.0])), (0 + 0 + 4 + 4) / 4)
    np.testing.assert_allclose(C.polyak({"w": jnp.array(0.0)}, {"w": jnp.array(1.0)}, 0.1)["w"], 0.1)


def test_release_velocity_tangent_differs_from_ours_as_the_release_computes_it():
    """velocity-release: du/dt taken along (v, 0, 1) on (z, t, r), the public code's tangent."""
    key = jax.random.PRNGKey(0)
    b, d = 5, 6
    x = jax.random.uniform(key, (b, d), minval=-1, maxval=1)
    e = sphere_project(jax.random.normal(jax.random.PRNGKey(1), (b, d)))
    tk, rk = flows.sample_meanflow_times(key, b)
    z, v = (1 - tk) * x + tk * e, e - x
    u_fn = flows.average_velocity(_toy_net, "velocity-release")
    u, du = jax.jvp(u_fn, (z, tk, rk), (v, jnp.zeros_like(tk), jnp.ones_like(rk)))
    release = flows.meanflow_loss(_toy_net, x, e, key, "velocity-release")
    np.testing.assert_allclose(release, flows.adaptive_l2(u - (v - jnp.clip(tk - rk, 0, 1) * du)), rtol=1e-5)
    assert not np.isclose(release, flows.meanflow_loss(_toy_net, x, e, key, "velocity"))
    # Sampling is the velocity parameterisation's.
    np.testing.assert_array_equal(flows.meanflow_sample(_toy_net, e, "velocity-release"),
                                  flows.meanflow_sample(_toy_net, e, "velocity"))  # fmt: skip


def test_release_switches_of_the_comparison_set():
    from lps.agents import DSRLConfig, LPSConfig, QCFQLConfig, QCMFQLConfig, Spec, make_agent

    spec = Spec(3, 2, 3)
    assert make_agent("dsrl-na", DSRLConfig(release_actor=True), spec).cfg.actor_hidden == (512,) * 4
    assert make_agent("dsrl-na", DSRLConfig(), spec).cfg.actor_hidden == (256, 256)
    assert make_agent("lps", LPSConfig(backbone="fm-1step", release_actor=True), spec).cfg.actor_hidden == (512,) * 4
    assert make_agent("lps", LPSConfig(release_actor=True), spec).cfg.actor_hidden == (256, 256)
    # The release's robot script (its MeanFlow DiT) builds LPS's latent actor at 2x512.
    robot = LPSConfig(release_actor=True, base_arch="mfdit", dit_width=32, dit_depth=1, dit_heads=2)
    assert make_agent("lps", robot, spec).cfg.actor_hidden == (512, 512)
    assert QCFQLConfig().clip_critic_input and not QCMFQLConfig().clip_critic_input
    # A QC-MFQL run recorded before the switch existed (it clipped) resumes clipping.
    import dataclasses

    from lps.training.config import from_dict

    recorded = dataclasses.asdict(QCMFQLConfig())
    del recorded["clip_critic_input"]
    assert from_dict(QCMFQLConfig, recorded).clip_critic_input
