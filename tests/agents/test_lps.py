"""The LPS agent: shapes, finiteness, and that the latent-actor loss moves only the latent actor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lps.agents import LPSConfig, Spec, make_agent

SMALL = dict(base_hidden=(32, 32), critic_hidden=(32, 32), actor_hidden=(16,))


def batch_for(spec, b=8, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return {
        "observations": jax.random.normal(k[0], (b, spec.obs_dim)),
        "actions": jax.random.uniform(k[1], (b, spec.chunk_dim), minval=-1, maxval=1),
        "chunk_return": jax.random.normal(k[2], (b,)),
        "chunk_mask": jnp.ones((b,)),
        "next_observations": jax.random.normal(k[3], (b, spec.obs_dim)),
    }


@pytest.mark.parametrize("backbone", ["meanflow", "fm-10step", "fm-1step"])
@pytest.mark.parametrize("geometry", ["sphere", "normal", "truncated"])
def test_loss_finite_and_act_in_range(backbone, geometry):
    spec = Spec(obs_dim=7, action_dim=3, chunk_len=4)
    agent = make_agent("lps", LPSConfig(**SMALL, backbone=backbone, geometry=geometry), spec)
    params = agent.init(jax.random.PRNGKey(0))
    loss, metrics = agent.loss(params, {"critic": params["critic"]}, batch_for(spec), jax.random.PRNGKey(1))
    assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    chunk = agent.act(params, jnp.ones((5, 7)), jax.random.PRNGKey(2))
    assert chunk.shape == (5, 12) and jnp.all(jnp.abs(chunk) <= 1.0)


def test_latent_actor_loss_moves_only_the_latent_actor():
    spec = Spec(obs_dim=7, action_dim=3, chunk_len=4)
    agent = make_agent("lps", LPSConfig(**SMALL), spec)
    params = agent.init(jax.random.PRNGKey(0))
    batch = batch_for(spec)

    def actor_term(p):
        return agent.loss(p, {"critic": params["critic"]}, batch, jax.random.PRNGKey(1))[1]["loss/actor"]

    grads = jax.grad(actor_term)(params)
    norm = lambda tree: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree_util.tree_leaves(tree)))  # noqa: E731
    assert norm(grads["base"]) == 0.0
    assert norm(grads["critic"]) == 0.0
    assert norm(grads["latent_actor"]) > 0.0

    # ...and the other losses never touch the latent actor except through the critic target,
    # which is a stop-gradient: the total loss's actor gradient equals the actor term's.
    total = jax.grad(lambda p: agent.loss(p, {"critic": params["critic"]}, batch, jax.random.PRNGKey(1))[0])(params)
    for a, b in zip(jax.tree_util.tree_leaves(total["latent_actor"]), jax.tree_util.tree_leaves(grads["latent_actor"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_acting_is_deterministic_and_one_base_call():
    spec = Spec(obs_dim=4, action_dim=2, chunk_len=5)
    agent = make_agent("lps", LPSConfig(**SMALL), spec)
    params = agent.init(jax.random.PRNGKey(0))
    obs = jnp.ones((3, 4))
    a = agent.act(params, obs, jax.random.PRNGKey(0))
    b = agent.act(params, obs, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, b)
    # One base-policy call: the acting program contains exactly the base MLP's 3 Dense layers once
    # plus the latent actor's 2.
    hlo = jax.jit(agent.act).lower(params, obs, jax.random.PRNGKey(0)).as_text()
    assert hlo.count("dot_general") == 5
