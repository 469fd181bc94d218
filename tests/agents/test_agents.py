"""Every agent of the comparison set: it trains, its losses are finite, it improves on the toy
bandit; and method-specific checks that pin the maths."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lps.agents import REGISTRY, Spec, config_class, make_agent, resolve_config
from lps.agents.lpsd import LPSD
from lps.agents.qc_fql import QCFQLConfig, alpha_for
from lps.data import toy
from lps.data.sampler import to_device
from lps.data.validate import validate
from lps.nets import flows
from lps.training.config import TrainConfig
from lps.training.setup import make_policy_fn
from lps.training.update import create_state, make_multi_update, make_optimizer, make_update
from tests.helpers import small_config

SPEC = Spec(obs_dim=6, action_dim=2, chunk_len=3)


def random_batch(spec=SPEC, b=16, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return {
        "observations": jax.random.normal(k[0], (b, spec.obs_dim)),
        "actions": jax.random.uniform(k[1], (b, spec.chunk_dim), minval=-1, maxval=1),
        "chunk_return": -jax.random.uniform(k[2], (b,)),
        "chunk_mask": jnp.ones((b,)),
        "next_observations": jax.random.normal(k[3], (b, spec.obs_dim)),
    }


def norm(tree):
    return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree_util.tree_leaves(tree)))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_loss_finite_and_act_in_range(name):
    agent = make_agent(name, small_config(name), SPEC)
    params = agent.init(jax.random.PRNGKey(0))
    target = {k: params[k] for k in agent.target_keys}
    loss, metrics = jax.jit(agent.loss)(params, target, random_batch(), jax.random.PRNGKey(1))
    assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values()), metrics
    chunk = jax.jit(agent.act)(params, jnp.ones((4, SPEC.obs_dim)), jax.random.PRNGKey(2))
    assert chunk.shape == (4, SPEC.chunk_dim) and jnp.all(jnp.abs(chunk) <= 1.0)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_short_toy_run_improves_over_initial_policy(name):
    """2000 updates on the toy bandit raise the mean reward of every agent's actions."""
    data = to_device(validate(toy.make_dataset(seed=0), 1, source="toy"), 1)
    agent = make_agent(name, small_config(name, hidden=(128, 128)), Spec(1, 2, 1, 0.99))
    optimizer = make_optimizer(TrainConfig(lr=1e-3))
    state = create_state(agent, optimizer, 0)
    mean_reward = lambda s: toy.ToyEvaluator().run(make_policy_fn(agent, s.params, 0), 512)["eval/return"]  # noqa: E731
    before = mean_reward(state)
    state, metrics = make_multi_update(make_update(agent, optimizer, 256), 2000)(state, data)
    assert all(np.isfinite(v).all() for v in jax.device_get(metrics).values())
    after = mean_reward(state)
    assert after > before + 0.05, (before, after)


def test_dsrl_latent_critic_sends_no_gradient_into_the_action_critic():
    agent = make_agent("dsrl-na", small_config("dsrl-na"), SPEC)
    params = agent.init(jax.random.PRNGKey(0))
    grad = jax.grad(
        lambda p: agent.loss(p, {"critic": params["critic"]}, random_batch(), jax.random.PRNGKey(1))[1][
            "loss/latent_critic"
        ]
    )(params)
    assert norm(grad["critic"]) == 0.0 and norm(grad["base"]) == 0.0
    assert norm(grad["latent_critic"]) > 0.0
    actor_grad = jax.grad(
        lambda p: agent.loss(p, {"critic": params["critic"]}, random_batch(), jax.random.PRNGKey(1))[1]["loss/actor"]
    )(params)
    assert norm(actor_grad["latent_critic"]) == 0.0 and norm(actor_grad["critic"]) == 0.0
    assert norm(actor_grad["latent_actor"]) > 0.0


def test_cfgrl_labels_come_from_the_target_critic_and_both_value_networks():
    agent = make_agent("cfgrl", small_config("cfgrl"), SPEC)
    params = agent.init(jax.random.PRNGKey(0))
    target = {"critic": agent.init(jax.random.PRNGKey(7))["critic"]}
    batch = random_batch(b=256)
    obs, chunk = batch["observations"], batch["actions"]
    v = agent.v(params["value"], obs)
    assert v.shape == (2, 256)  # two value networks
    q_target = agent.cfg.critic.apply({"params": target["critic"]}, obs, chunk)[..., 0].min(0)
    labels = agent.optimality_labels(params, target, obs, chunk)
    np.testing.assert_array_equal(labels, ((q_target[None] - v) > 0).mean(0).astype(np.float32))
    assert 0 < labels.mean() < 1  # both labels occur, so the check means something
    # The online critic plays no part in the labels.
    moved = {**params, "critic": jax.tree_util.tree_map(lambda x: x + 1.0, params["critic"])}
    np.testing.assert_array_equal(agent.optimality_labels(moved, target, obs, chunk), labels)
    q_online = agent.cfg.critic.apply({"params": params["critic"]}, obs, chunk)[..., 0].min(0)
    assert not np.array_equal(labels, ((q_online[None] - v) > 0).mean(0).astype(np.float32))


def test_cfgrl_conditional_pass_uses_positive_rows_only_and_unconditional_pass_all_rows():
    positive = jnp.arange(16) < 6

    @dataclasses.dataclass(frozen=True)
    class FixedLabels(type(make_agent("cfgrl", small_config("cfgrl"), SPEC))):
        def optimality_labels(self, params, target_params, obs, chunk):
            return positive.astype(jnp.float32)

    agent = FixedLabels(small_config("cfgrl"), SPEC)
    params = agent.init(jax.random.PRNGKey(0))
    target, key = {"critic": params["critic"]}, jax.random.PRNGKey(3)
    batch = random_batch(b=16)
    loss, m = agent.loss(params, target, batch, key)
    assert float(m["loss/guided"]) > 0 and float(m["loss/bc"]) > 0
    total = m["loss/critic"] + m["loss/value"] + m["loss/guided"] + 0.1 * m["loss/bc"]
    np.testing.assert_allclose(loss, total, rtol=1e-6)
    # Changing the chunks of negative-advantage rows leaves the conditional pass unchanged and
    # changes the unconditional one; changing a positive row changes both.
    for rows, guided_changes in ((~positive, False), (positive, True)):
        other = {**batch, "actions": jnp.where(rows[:, None], -batch["actions"], batch["actions"])}
        _, m2 = agent.loss(params, target, other, key)
        assert (float(m2["loss/guided"]) != float(m["loss/guided"])) == guided_changes
        assert float(m2["loss/bc"]) != float(m["loss/bc"])


def test_cfgrl_guidance_one_is_the_conditional_policy():
    agent = make_agent("cfgrl", small_config("cfgrl", guidance=1.0), SPEC)
    params = agent.init(jax.random.PRNGKey(0))
    obs, key = jnp.ones((3, SPEC.obs_dim)), jax.random.PRNGKey(5)
    cond = jnp.concatenate([obs, jnp.ones((3, 1))], -1)
    expected = agent.policy.sample(params["base"], cond, agent.policy.noise(key, 3))
    np.testing.assert_allclose(agent.act(params, obs, key), expected, rtol=1e-5, atol=1e-6)


def test_lpsd_regulariser_is_zero_when_the_latent_actor_is_the_identity_on_noise():
    @dataclasses.dataclass(frozen=True)
    class IdentityLPSD(LPSD):
        def latent_from_noise(self, actor_params, obs, noise):
            return noise + 0.0 * jnp.sum(jax.tree_util.tree_leaves(actor_params)[0])

    agent = IdentityLPSD(small_config("lpsd"), SPEC)
    params = agent.init(jax.random.PRNGKey(0))
    _, metrics = agent.loss(params, {"critic": params["critic"]}, random_batch(), jax.random.PRNGKey(1))
    assert float(metrics["loss/distill"]) == 0.0
    real = make_agent("lpsd", small_config("lpsd"), SPEC)
    _, metrics = real.loss(params, {"critic": params["critic"]}, random_batch(), jax.random.PRNGKey(1))
    assert float(metrics["loss/distill"]) > 0.0


def test_lps_fm_1step_backbone_is_one_euler_step():
    agent = make_agent("lps", small_config("lps", backbone="fm-1step"), SPEC)
    params = agent.init(jax.random.PRNGKey(0))
    obs = jnp.ones((4, SPEC.obs_dim))
    z = agent.latent(params, obs, None)
    net = agent.base.bind(params["base"], obs)
    one = jnp.ones((4, 1))
    expected = jnp.clip(z - net(z, one, jnp.zeros_like(one)), -1, 1)
    np.testing.assert_allclose(agent.act(params, obs, None), expected, rtol=1e-5, atol=1e-6)
    ten = make_agent("lps", small_config("lps", backbone="fm-10step"), SPEC)
    np.testing.assert_allclose(
        ten.act(params, obs, None), jnp.clip(flows.euler_sample(net, z, 10), -1, 1), rtol=1e-5, atol=1e-6
    )


def test_qc_fql_alpha_defaults_per_environment():
    assert alpha_for("cube-single-play-singletask-task1-v0") == 30
    assert alpha_for("puzzle-3x3-play-sparse-singletask-task4-v0") == 3
    assert alpha_for("scene-play-singletask-task2-v0") == 1
    assert resolve_config("qc-fql", QCFQLConfig(), "puzzle-4x4-play-singletask-task1-v0").alpha == 10
    assert resolve_config("qc-fql", QCFQLConfig(alpha=7.0), "puzzle-4x4-play-singletask-task1-v0").alpha == 7.0
    assert resolve_config("qc-mfql", config_class("qc-mfql")(), "cube-double-play-singletask-task1-v0").alpha == 3


def test_robot_data_takes_the_fallback_alpha_whatever_the_env(tmp_path):
    """A robot folder is no OGBench task: QC-FQL / QC-MFQL resolve alpha to the fallback (10), not to
    the default --env's (cube-single, 30)."""
    from lps.agents.qc_fql import ALPHA_FALLBACK
    from lps.training.config import TrainConfig
    from lps.training.plan import resolve

    folder = tmp_path / "robot"
    (folder / "success").mkdir(parents=True)
    robot = TrainConfig(dataset=str(folder))
    assert robot.env.startswith("cube-single") and resolve(robot).defaults_task == ""
    for name in ("qc-fql", "qc-mfql"):
        assert resolve_config(name, config_class(name)(), resolve(robot).defaults_task).alpha == ALPHA_FALLBACK == 10
    assert resolve_config("qc-fql", QCFQLConfig(), resolve(TrainConfig()).defaults_task).alpha == 30


def test_velocity_parameterisation_and_geometries_train():
    for kw in (dict(parameterisation="velocity"), dict(geometry="normal"), dict(geometry="truncated")):
        agent = make_agent("lps", small_config("lps", **kw), SPEC)
        params = agent.init(jax.random.PRNGKey(0))
        loss, _ = agent.loss(params, {"critic": params["critic"]}, random_batch(), jax.random.PRNGKey(1))
        assert np.isfinite(loss)


@pytest.mark.parametrize("name", ["qc-fql", "qc-mfql"])
def test_qc_fql_distils_the_unclipped_one_step_output(name):
    """An output outside [-1, 1] is still pulled back by the distillation (the clip would zero it)."""
    agent = make_agent(name, small_config(name), SPEC)
    params = agent.init(jax.random.PRNGKey(0))
    # Push every output of the one-step policy far outside the box through its output bias.
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params["actor"])
    actor = jax.tree_util.tree_unflatten(
        treedef, [x + 5.0 if (path[-1].key == "bias" and x.shape == (SPEC.chunk_dim,)) else x for path, x in leaves]
    )
    params = {**params, "actor": actor}
    obs = jax.random.normal(jax.random.PRNGKey(1), (8, SPEC.obs_dim))
    assert jnp.all(agent.raw_one_step_chunk(params["actor"], obs, jnp.zeros((8, SPEC.chunk_dim))) > 1.0)

    def distill(p):
        return agent.loss(p, {"critic": params["critic"]}, random_batch(), jax.random.PRNGKey(2))[1]["loss/distill"]

    assert norm(jax.grad(distill)(params)["actor"]) > 0.0
    # The critic is still queried, and the policy still acts, inside the box.
    assert jnp.all(jnp.abs(agent.act(params, obs, jax.random.PRNGKey(3))) <= 1.0)


PUBLISHED_CRITIC_AGG = {
    "lps": "min",
    "lpsd": "min",
    "qc-mfql": "min",
    "qc-fql": "mean",
    "dsrl-na": "mean",
    "cfgrl": "min",
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_CRITIC_AGG))
def test_critic_aggregation_defaults_to_the_published_choice(name):
    cfg = config_class(name)(**({"alpha": 3.0} if name.startswith("qc-") else {}))
    assert cfg.critic_agg is None  # resolved when the agent is built, then recorded
    assert make_agent(name, cfg, SPEC).cfg.critic_agg == PUBLISHED_CRITIC_AGG[name]
    assert resolve_config(name, cfg, "scene-play-singletask-task1-v0").critic_agg == PUBLISHED_CRITIC_AGG[name]
    other = {"min": "mean", "mean": "min"}[PUBLISHED_CRITIC_AGG[name]]
    assert make_agent(name, dataclasses.replace(cfg, critic_agg=other), SPEC).cfg.critic_agg == other


@pytest.mark.parametrize("backbone", ["fm-10step", "fm-1step"])
def test_flow_matching_lps_ablations_average_the_target_critics(backbone):
    assert make_agent("lps", config_class("lps")(backbone=backbone), SPEC).cfg.critic_agg == "mean"


def test_critic_aggregation_changes_the_td_target():
    batch = random_batch()
    targets = {}
    for agg in ("min", "mean"):
        agent = make_agent("qc-fql", small_config("qc-fql", critic_agg=agg), SPEC)
        params = agent.init(jax.random.PRNGKey(0))
        target = {"critic": agent.init(jax.random.PRNGKey(4))["critic"]}
        targets[agg] = float(agent.loss(params, target, batch, jax.random.PRNGKey(1))[1]["q/target"])
    assert targets["min"] < targets["mean"]


def _train_params(name, alpha, steps=3):
    agent = make_agent(name, small_config(name, alpha=alpha), SPEC)
    optimizer = make_optimizer(TrainConfig())
    state = create_state(agent, optimizer, 0)
    batch = random_batch(b=32)

    @jax.jit
    def step(state, key):
        grads, _ = jax.grad(agent.loss, has_aux=True)(state.params, state.target_params, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state.replace(params=jax.tree_util.tree_map(jnp.add, state.params, updates), opt_state=opt_state)

    for i in range(steps):
        state = step(state, jax.random.PRNGKey(i))
    return state.params


@pytest.mark.parametrize("name", ["lps", "dsrl-na"])
def test_alpha_is_a_no_op_under_adam_for_lps_and_dsrl(name):
    """alpha scales a loss whose parameters no other loss touches; Adam ignores a constant scale."""
    one, ten = _train_params(name, 1.0), _train_params(name, 10.0)
    for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(ten)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["qc-fql", "lpsd"])
def test_alpha_acts_for_qc_fql_and_lpsd(name):
    one, ten = _train_params(name, 1.0), _train_params(name, 10.0)
    leaves = zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(ten))
    gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in leaves)
    assert gap > 1e-4


def test_alpha_no_op_flag_marks_exactly_the_agents_tested_above():
    """`lps report` reads this flag to draw an agent as one untuned line in the alpha figure."""
    flagged = {name for name, (cls, _) in REGISTRY.items() if getattr(cls, "alpha_is_no_op", False)}
    assert flagged == {"lps", "dsrl-na"}
