"""Every agent on image observations (`EncodedAgent`, `build_agent`), the DiT base policy and the
cosine learning-rate schedule. The encoders and the random shift: tests/nets/test_encoders.py."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lps.agents import REGISTRY, Spec, make_agent
from lps.agents import encoded as E
from lps.agents.lps import LPSConfig
from lps.data.sampler import to_device
from lps.nets import encoders
from lps.nets.generative import GenerativePolicy
from lps.training.config import TrainConfig, preset
from lps.training.update import create_state, make_multi_update, make_optimizer, make_update


def test_spec_and_encoder_resolution():
    spec = Spec(7, 7, 5, 0.99, [32, 32, 6])  # a JSON list becomes a (hashable) tuple
    assert spec.image_shape == (32, 32, 6) and hash(spec) == hash(Spec(**json.loads(json.dumps(dataclasses.asdict(spec)))))
    assert E.resolve_encoder("auto", spec) == "impala"
    assert E.resolve_encoder("auto", Spec(0, 5, 5, 0.99, (64, 64, 3))) == "impala-small"
    assert E.resolve_encoder("auto", Spec(28, 5)) == "none"
    with pytest.raises(ValueError, match="needs image observations"):
        E.resolve_encoder("impala", Spec(28, 5))
    with pytest.raises(ValueError, match="need an image encoder"):
        E.resolve_encoder("none", spec)
    # robot cameras stacked on channels: one IMPALA's features per camera, the state appended
    assert E.feature_dim(Spec(3, 2, 3, 0.99, (16, 16, 9)), "impala-small", 8) == 3 * 8 + 3


def _image_dataset(n_episodes=4, steps=12, size=16, channels=6):
    rng = np.random.default_rng(0)
    n = n_episodes * steps
    terminals = np.zeros(n, bool)
    terminals[steps - 1 :: steps] = True
    return {
        "observations": {
            "state": rng.normal(size=(n, 3)).astype(np.float32),
            "image": rng.integers(0, 255, (n, size, size, channels), dtype=np.uint8),
        },
        "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        "rewards": -np.ones(n, np.float32),
        "masks": np.ones(n, np.float32),
        "terminals": terminals,
    }


def _tiny_config(name):
    cfg_cls = REGISTRY[name][1]
    overrides = {f.name: (16,) for f in dataclasses.fields(cfg_cls) if f.name.endswith("_hidden")}
    if any(f.name == "alpha" for f in dataclasses.fields(cfg_cls)) and cfg_cls().alpha is None:
        overrides["alpha"] = 1.0
    return cfg_cls(**overrides)


def _encoded(name, monkeypatch, cameras=2, size=16, **kwargs):
    monkeypatch.setitem(encoders.ARCHS, "test", ((4,), 1))  # a one-stack encoder keeps compilation short
    spec = Spec(3, 2, 3, 0.99, (size, size, 3 * cameras))
    inner = make_agent(name, _tiny_config(name), Spec(cameras * 8 + 3, 2, 3, 0.99))
    return E.EncodedAgent(inner, spec, "test", 8, 2, **kwargs), spec


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_agent_takes_image_observations(name, monkeypatch):
    """Every agent, wrapped, traces on {state, image} batches: a scalar loss whose gradient has an
    encoder entry shaped like the encoder, and chunks of the right shape (traced, not compiled,
    so all eight stay cheap; the next test runs real updates)."""
    agent, spec = _encoded(name, monkeypatch)
    data = _image_dataset()
    params = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
    target = {k: params[k] for k in agent.target_keys}
    from lps.data.sampler import sample_chunks

    batch = jax.eval_shape(lambda d: sample_chunks(d, jax.random.PRNGKey(0), 8, 3, 0.99), to_device(data, 3))
    assert batch["observations"]["image"].dtype == jnp.uint8
    loss, _ = jax.eval_shape(agent.loss, params, target, batch, jax.random.PRNGKey(1))
    grads = jax.eval_shape(
        lambda p, t, b: jax.grad(lambda q: agent.loss(q, t, b, jax.random.PRNGKey(1))[0])(p), params, target, batch
    )
    assert loss.shape == ()
    assert set(agent.encoder_keys) == {f"{net}_encoder" for net in agent.inner.init(jax.random.PRNGKey(0))}
    for key in agent.encoder_keys:  # one encoder per network
        assert jax.tree_util.tree_structure(grads[key]) == jax.tree_util.tree_structure(params[key])
    for net in agent.inner.target_keys:  # and a target encoder beside each target network
        assert f"{net}_encoder" in agent.target_keys
    chunk = jax.eval_shape(agent.act, params, batch["observations"], jax.random.PRNGKey(2))
    assert chunk.shape == (8, spec.chunk_dim)


@pytest.mark.parametrize("name", ["lps", "bc-mf"])
def test_agents_train_and_act_on_images(name, monkeypatch):
    """A few scanned updates on {state, image} observations: finite losses, every network's
    encoder learns, the chunk is in range, and images stay uint8 on the device."""
    agent, spec = _encoded(name, monkeypatch)
    data = _image_dataset()
    device = to_device(data, spec.chunk_len)
    assert device.observations["image"].dtype == jnp.uint8
    optimizer = make_optimizer(TrainConfig(steps=3))
    state = create_state(agent, optimizer, 0)
    before = jax.tree_util.tree_map(np.array, {k: state.params[k] for k in agent.encoder_keys})
    state, metrics = make_multi_update(make_update(agent, optimizer, 8), 3)(state, device)
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values()), metrics
    for key in agent.encoder_keys:
        changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), before[key], state.params[key])
        assert all(jax.tree_util.tree_leaves(changed)), f"part of {key} did not train"
    obs = jax.tree_util.tree_map(lambda x: jnp.asarray(x[:4]), data["observations"])
    chunk = agent.act(state.params, obs, jax.random.PRNGKey(1))
    assert chunk.shape == (4, spec.chunk_dim) and bool(jnp.all(jnp.abs(chunk) <= 1))


@pytest.mark.parametrize("arch", ["dit", "mfdit"])
def test_dit_base_policy_fits_conditional_chunks(arch):
    """MeanFlow with either DiT learns two observation-dependent chunks (one-step sampling)."""
    from lps.nets.generative import DiTSpec

    # mfdit: the observation's last number is its "state" token, the first its "image features" token.
    policy = GenerativePolicy((), 3 * 2, "meanflow", dit=DiTSpec(3, 32, 1, 2, arch, state_dim=1))
    obs = jnp.array([[1.0, 0.0], [0.0, 1.0]]).repeat(8, axis=0)
    chunks = jnp.array([[0.5] * 6, [-0.5, 0.5] * 3]).repeat(8, axis=0)
    params = policy.init(jax.random.PRNGKey(0), 2)
    if arch == "dit":
        assert params["position"].shape == (1, 3, 32)
    else:
        assert params["pos_embed"].shape == (1, 2 + 3, 32)  # image token, state token, H action tokens
    opt = optax.adam(1e-3)

    def step(carry, key):
        params, opt_state = carry
        grads = jax.grad(policy.loss)(params, obs, chunks, key)
        updates, opt_state = opt.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), None

    def error(params):
        sample = policy.sample(params, obs, policy.noise(jax.random.PRNGKey(9), obs.shape[0]))
        return float(jnp.mean(jnp.abs(sample - chunks)))

    train = jax.jit(lambda p, s: jax.lax.scan(step, (p, s), jax.random.split(jax.random.PRNGKey(1), 300))[0][0])
    start, trained = error(params), train(params, opt.init(params))
    assert error(trained) < 0.1 < start


def test_release_dit_matches_the_release_recipe():
    """MFDiT_REAL as read: zero output at init (zero final layer and gates), qkv bias and qk-norm,
    adaLN from the time embeddings only (the observation enters as tokens), 256 frequencies."""
    from lps.nets.dit import MeanFlowDiT

    net = MeanFlowDiT(tokens=3, width=32, depth=2, heads=2, state_dim=2)
    cond, z, t = jnp.ones((4, 7)), jnp.ones((4, 6)), jnp.full((4, 1), 0.5)
    params = net.init(jax.random.PRNGKey(0), cond, z, t, t)["params"]
    np.testing.assert_array_equal(net.apply({"params": params}, cond, z, t, t), 0.0)
    block = params["MeanFlowDiTBlock_0"]
    assert block["QKNormAttention_0"]["qkv"]["bias"].shape == (96,)
    assert {"q_norm", "k_norm"} <= set(block["QKNormAttention_0"])
    assert params["t_embedder"]["Dense_0"]["kernel"].shape == (256, 32)
    assert params["Dense_0"]["kernel"].shape == (5, 32) and params["Dense_1"]["kernel"].shape == (2, 32)
    # The observation reaches the action tokens only through attention: open the first block's
    # gates and the output layer, and a changed state changes the chunk.
    bumped = jax.tree_util.tree_map(lambda x: x, params)
    bumped["MeanFlowDiTBlock_0"]["Dense_0"]["bias"] = jnp.ones_like(block["Dense_0"]["bias"])
    bumped["Dense_4"]["kernel"] = jnp.ones_like(params["Dense_4"]["kernel"])
    a, b = (net.apply({"params": bumped}, c, z, t, t) for c in (cond, cond.at[:, -1].set(-1.0)))
    assert not np.allclose(a, b)


def test_robot_dit_gives_the_state_its_own_token():
    """On robot data ({state, image}) the release's DiT sees [image features token, state token, H
    action tokens]: `build_agent` tells the inner agent which features are the state."""
    spec = Spec(obs_dim=7, action_dim=2, chunk_len=3, image_shape=(16, 16, 6))
    cfg = LPSConfig(base_arch="mfdit", dit_width=32, dit_depth=1, dit_heads=2, critic_hidden=(16,), actor_hidden=(16,))
    agent = E.build_agent("lps", cfg, spec, encoder="impala-small", encoder_features=8)
    base = jax.eval_shape(agent.init, jax.random.PRNGKey(0))["base"]
    assert base["pos_embed"].shape == (1, 2 + 3, 32)  # image, state, H actions
    assert base["Dense_0"]["kernel"].shape == (2 * 8, 32)  # two cameras' features -> the image token
    assert base["Dense_1"]["kernel"].shape == (7, 32)  # the state -> its own token


def test_dit_config_is_checked():
    from lps.agents import LPSConfig

    agent = make_agent("lps", LPSConfig(base_arch="dit", dit_width=30, dit_heads=4), Spec(3, 2, 3))
    with pytest.raises(ValueError, match="multiple of the heads"):
        agent.base


def test_cosine_schedule_warms_up_and_decays_to_a_tenth():
    """Adam's first steps move a parameter by about the learning rate, so the step size traces it."""
    steps, lr = 300, 1e-2
    opt = make_optimizer(TrainConfig(steps=steps, lr=lr, lr_schedule="cosine"))
    params = jnp.zeros(())
    state = opt.init(params)
    moves = []
    for _ in range(steps):
        updates, state = opt.update(jnp.ones(()), state, params)
        moves.append(-float(updates))
    assert moves[0] == 0.0  # warmup starts at 0
    assert moves[3] == pytest.approx(lr, rel=0.02)  # peak after 1 % of the steps
    assert moves[-1] == pytest.approx(lr / 10, rel=0.05)
    assert moves[150] < moves[30]
    constant = make_optimizer(TrainConfig(steps=steps, lr=lr))
    updates, _ = constant.update(jnp.ones(()), constant.init(params), params)
    assert -float(updates) == pytest.approx(lr, rel=1e-3)


def test_grad_clip_bounds_the_gradient_norm_before_adam():
    """A gradient of norm 100 then one of norm 1: clipped at 1 both are the same gradient, so Adam's
    second step is the full learning rate; unclipped, the large first gradient shrinks it (~0.68 lr)."""
    lr = 1e-2

    def second_step(cfg):
        opt, params = make_optimizer(cfg), jnp.zeros(())
        state = opt.init(params)
        _, state = opt.update(jnp.array(100.0), state, params)
        updates, _ = opt.update(jnp.array(1.0), state, params)
        return -float(updates)

    assert second_step(TrainConfig(lr=lr, grad_clip=1.0)) == pytest.approx(lr, rel=1e-3)
    assert second_step(TrainConfig(lr=lr)) == pytest.approx(0.677 * lr, rel=0.01)
    with pytest.raises(ValueError, match="--grad-clip"):
        TrainConfig(grad_clip=-1.0)
    assert preset("robot", LPSConfig)[0].grad_clip == 1.0


def _image_batch(spec, n=6):
    from lps.data.sampler import sample_chunks

    data = _image_dataset(size=spec.image_shape[0], channels=spec.image_shape[-1])
    return sample_chunks(to_device(data, spec.chunk_len), jax.random.PRNGKey(5), n, spec.chunk_len, spec.gamma)


def _nonzero(tree) -> bool:
    return any(bool(jnp.any(g != 0)) for g in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", ["lps", "lpsd"])
def test_actor_loss_reaches_no_critic_or_base_parameter_encoders_included(name, monkeypatch):
    """The latent actor's loss (-Q/|Q| through the frozen base policy) trains the latent actor and
    its encoder only: the critic's and the base policy's encoders get no gradient from it."""
    agent, spec = _encoded(name, monkeypatch, cameras=1, size=8)
    params = agent.init(jax.random.PRNGKey(0))
    target = {k: params[k] for k in agent.target_keys}
    batch = _image_batch(spec)

    def actor_loss(p):
        features = agent.features_by_network(p, target, batch["observations"])
        return agent.inner.actor_loss(agent._inner_params(p), features, jax.random.PRNGKey(1))[0]

    grads = jax.jit(jax.grad(actor_loss))(params)
    for key in ("critic", "critic_encoder", "base", "base_encoder"):
        assert not _nonzero(grads[key]), f"the actor loss trains {key}"
    assert _nonzero(grads["latent_actor"]) and _nonzero(grads["latent_actor_encoder"])
    # the whole loss does train the critic's encoder (through the TD loss) and the base's (BC)
    total = jax.jit(jax.grad(lambda p: agent.loss(p, target, batch, jax.random.PRNGKey(1))[0]))(params)
    assert _nonzero(total["critic_encoder"]) and _nonzero(total["base_encoder"])


@pytest.mark.parametrize("name", ["qc-fql", "dsrl-na"])
def test_policy_losses_of_the_baselines_reach_no_critic_or_base_parameter(name, monkeypatch):
    """QC-FQL's Q term and DSRL-NA's latent-actor loss (each agent's "loss/actor") train its own
    policy network and encoder only: the critic's and the base policy's get no gradient from it."""
    agent, spec = _encoded(name, monkeypatch, cameras=1, size=8)
    params = agent.init(jax.random.PRNGKey(0))
    target = {k: params[k] for k in agent.target_keys}
    batch = _image_batch(spec)
    policy_loss = lambda p: agent.loss(p, target, batch, jax.random.PRNGKey(1))[1]["loss/actor"]  # noqa: E731
    grads = jax.jit(jax.grad(policy_loss))(params)
    frozen = ("critic", "critic_encoder", "base", "base_encoder") + (("latent_critic", "latent_critic_encoder")
                                                                      if name == "dsrl-na" else ())  # fmt: skip
    for key in frozen:
        assert not _nonzero(grads[key]), f"the policy loss trains {key}"
    own = "actor" if name == "qc-fql" else "latent_actor"
    assert _nonzero(grads[own]) and _nonzero(grads[f"{own}_encoder"])


def test_target_encoder_moves_by_polyak_only(monkeypatch):
    agent, spec = _encoded("lps", monkeypatch, cameras=1, size=8)
    assert agent.target_keys == ("critic", "critic_encoder")
    optimizer = make_optimizer(TrainConfig(steps=2))
    state = create_state(agent, optimizer, 0)
    np.testing.assert_array_equal(*(jax.tree_util.tree_leaves(t)[0] for t in (state.target_params["critic_encoder"],
                                                                               state.params["critic_encoder"])))  # fmt: skip
    device = to_device(_image_dataset(size=8, channels=3), spec.chunk_len)
    before = state.target_params["critic_encoder"]
    after = make_update(agent, optimizer, 8)(state, device)[0]
    tau = agent.cfg.tau
    for old, online, new in zip(*(jax.tree_util.tree_leaves(t) for t in (before, after.params["critic_encoder"],
                                                                         after.target_params["critic_encoder"]))):  # fmt: skip
        np.testing.assert_allclose(new, (1 - tau) * old + tau * online, rtol=1e-5, atol=1e-7)
    assert _nonzero(jax.tree_util.tree_map(lambda a, b: a - b, after.params["critic_encoder"], before))
    assert not np.allclose(jax.tree_util.tree_leaves(after.target_params["critic_encoder"])[0],
                           jax.tree_util.tree_leaves(after.params["critic_encoder"])[0])  # fmt: skip


def test_shared_encoder_is_one_encoder_for_every_network(monkeypatch):
    agent, spec = _encoded("lps", monkeypatch, cameras=1, size=8, shared_encoder=True)
    params = agent.init(jax.random.PRNGKey(0))
    assert agent.encoder_keys == ("encoder",) and "encoder" in params and "critic_encoder" not in params
    assert agent.target_keys == ("critic",)
    target = {k: params[k] for k in agent.target_keys}
    batch = _image_batch(spec)
    grads = jax.jit(jax.grad(lambda p: agent.loss(p, target, batch, jax.random.PRNGKey(1))[0]))(params)
    assert _nonzero(grads["encoder"])


def test_checkpoint_of_a_shared_encoder_run_is_refused_with_a_clear_error(tmp_path, monkeypatch):
    from lps.training import checkpoint

    old_agent, _ = _encoded("bc-mf", monkeypatch, cameras=1, size=8, shared_encoder=True)  # the layout runs had before
    new_agent, _ = _encoded("bc-mf", monkeypatch, cameras=1, size=8)
    optimizer = make_optimizer(TrainConfig(steps=2))
    checkpoint.save(tmp_path, create_state(old_agent, optimizer, 0))
    with pytest.raises(ValueError, match="predates per-network image encoders"):
        checkpoint.restore(tmp_path, create_state(new_agent, optimizer, 0))


def test_robot_preset_is_the_release_recipe():
    train, _ = preset("robot", LPSConfig)
    assert train.augment_prob == 0.5 and train.encoder == "impala"
    assert train.robot.include_failure is False  # successful demonstrations only; failure/ opt-in
    assert train.robot.image_size == 0  # images at their recorded size
