"""Pixel tasks: OGBench's visual envs render 64x64 RGB, visual play data is the state recipe plus
rendering, every agent trains on uint8 images, and the failure modes give clear errors.

Rendering is in software on CI (Mesa, installed by .ci/run), a few frames per second on a busy
2-core machine, so the data here is tiny: 2 + 1 episodes of 10 steps, evaluated on 8-step episodes.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lps.agents import REGISTRY, LPSConfig, Spec
from lps.data import render, tasks
from lps.data.sampler import to_device
from lps.data.validate import DatasetError, validate
from lps.training.config import TrainConfig, agent_overrides, with_flags
from tests.helpers import small_config

TASK = "visual-cube-single-play-singletask-task1-v0"
ENV_ID = "visual-cube-single-singletask-task1-v0"
EPISODE_STEPS = 10


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Tiny visual and state play data of the same seed (2 train + 1 val episodes each)."""
    from lps.data.generate import generate

    path = tmp_path_factory.mktemp("ogbench")
    for env in ("visual-cube-single", "cube-single"):
        generate(env, path, episodes=2, seed=3, workers=1, progress=False, max_episode_steps=EPISODE_STEPS)
    return path


def test_visual_env_renders_uint8_frames():
    import gymnasium

    tasks.require_ogbench()  # registers the envs
    assert render.require_renderer(ENV_ID) in ("egl", "osmesa", "glfw", "glx")
    env = gymnasium.make(ENV_ID, max_episode_steps=3)
    ob, _ = env.reset(seed=0)
    ob2, *_ = env.step(np.zeros(5, np.float32))
    assert ob.shape == (64, 64, 3) and ob.dtype == np.uint8
    assert ob.std() > 5  # a scene, not a blank frame
    assert render.image_shape(ENV_ID) == (64, 64, 3)


def test_visual_data_is_the_state_recipe_plus_rendering(data_dir):
    from lps.data.generate import dataset_paths

    for split in (0, 1):
        visual = np.load(dataset_paths("visual-cube-single", data_dir)[split])
        state = np.load(dataset_paths("cube-single", data_dir)[split])
        assert visual["observations"].dtype == np.uint8
        assert visual["observations"].shape == (len(state["observations"]), 64, 64, 3)
        for key in ("actions", "terminals", "qpos", "qvel"):
            np.testing.assert_array_equal(visual[key], state[key], err_msg=key)
    # Frames follow the arm: consecutive observations differ.
    frames = np.load(dataset_paths("visual-cube-single", data_dir)[0])["observations"]
    assert np.abs(frames[1:].astype(int) - frames[:-1]).sum() > 0


def test_visual_task_loads_with_the_state_tasks_rewards(data_dir):
    visual = tasks.load_task(tasks.parse_task(TASK), data_dir, chunk_len=3)
    state = tasks.load_task(tasks.parse_task("cube-single-play-singletask-task1-v0"), data_dir, chunk_len=3)
    assert visual["observations"].dtype == np.uint8 and visual["observations"].shape[1:] == (64, 64, 3)
    np.testing.assert_array_equal(visual["rewards"], state["rewards"])
    np.testing.assert_array_equal(visual["masks"], state["masks"])
    # The paper's sparse rewards apply to the pixel twins of scene and puzzle-3x3 too.
    assert tasks.parse_task("visual-scene-play-singletask-task1-v0").sparse
    assert not tasks.parse_task(TASK).sparse


def test_lps_trains_on_pixels_and_evaluates(data_dir, tmp_path, monkeypatch):
    """`lps train --env visual-... --frame-stack 2`: impala-small by default, images uint8 on the
    device, a few updates on stacked frames, then an evaluation of 2 short episodes in the rendered
    env (which stacks each episode's frames) and a loaded policy that keeps its own stack."""
    from lps.training import loop as T
    from lps.training import setup as S
    from lps.training import update as U
    from lps.training.evaluate import Evaluator

    # The env's own limit is 200 rendered steps per episode; 8 keep the test short.
    monkeypatch.setattr(S, "make_evaluator", lambda plan, eval_cfg, frame_stack=1, num_seeds=1: Evaluator(
        ENV_ID, 2, max_episode_steps=8, frame_stack=frame_stack))
    cfg = with_flags(TrainConfig(), env=TASK, data_dir=str(data_dir), steps=2, log_every=2, eval_every=0, save_every=2,
                      eval_episodes=2, batch_size=4, chunk_len=3, encoder_features=16, run_dir=str(tmp_path / "run"),
                      progress=False, frame_stack=2)  # fmt: skip
    agent_cfg = LPSConfig(**agent_overrides({"hidden": (16, 16)}, LPSConfig))
    summary = T.train("lps", cfg, agent_cfg)
    assert summary["final_success"] is not None and 0.0 <= summary["final_success"] <= 1.0
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any('"eval/length": 8.0' in r for r in rows), rows[-1]

    from lps.deploy.policy import load_policy

    policy = load_policy(tmp_path / "run")
    agent = policy.agent
    assert agent.arch == "impala-small" and agent.spec.image_shape == (64, 64, 3) and agent.spec.frame_stack == 2
    assert (agent.augment_shift, agent.augment_prob) == (3, 0.5)  # the release's pixel settings
    initial = U.create_state(agent, U.make_optimizer(cfg), cfg.seed).params
    for key in ("critic_encoder", "base_encoder", "latent_actor_encoder"):
        moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), initial[key], policy.params[key])
        assert max(jax.tree_util.tree_leaves(moved)) > 0, f"{key} was not trained"
    frames = np.load(data_dir / "visual-cube-single-play-v0.npz")["observations"]
    assert policy(frames[0]).shape == (cfg.chunk_len, 5)
    policy.observe(frames[1])  # the steps between calls join the stack
    assert len(policy.frames) == 2 and policy(frames[2]).shape == (cfg.chunk_len, 5)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_agent_wraps_an_image_encoder(name):
    """Each agent, wrapped with the image encoder, takes uint8 images: its loss has a gradient for
    the encoder and its acting rule returns chunks. Traced only (no compilation, to stay fast on
    CPU); `test_lps_trains_on_pixels_and_evaluates` runs the same path for real."""
    from lps.agents.encoded import build_agent
    from lps.data.sampler import sample_chunks

    rng = np.random.default_rng(0)
    n = 24
    data = validate(
        {"observations": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
         "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
         "terminals": np.arange(n) % 12 == 11, "rewards": -np.ones(n, np.float32), "masks": np.ones(n, np.float32)},
        chunk_len=3,
    )  # fmt: skip
    spec = Spec(0, 2, 3, 0.99, (16, 16, 3))
    agent = build_agent(name, small_config(name, hidden=(16, 16)), spec, encoder_features=16)
    assert agent.arch == "impala-small"  # `auto` for image-only observations
    params = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
    target = {k: params[k] for k in agent.target_keys}
    batch = sample_chunks(to_device(data, 3), jax.random.PRNGKey(1), 8, 3, 0.99)
    assert batch["observations"].dtype == jnp.uint8
    grads, metrics = jax.eval_shape(jax.grad(agent.loss, has_aux=True), params, target, batch, jax.random.PRNGKey(2))
    for key in agent.encoder_keys:  # one per network
        assert jax.tree_util.tree_structure(grads[key]) == jax.tree_util.tree_structure(params[key])
    assert metrics, "the loss reports its metrics"
    chunk = jax.eval_shape(agent.act, params, batch["observations"][:4], jax.random.PRNGKey(3))
    assert chunk.shape == (4, spec.chunk_dim)


def test_host_loop_gives_the_scans_numbers():
    """On a CPU image agents dispatch one update per step (XLA:CPU is slow at convolutions in a
    scan); the numbers are those of the scan."""
    from lps.agents.encoded import build_agent, scan_updates
    from lps.training.update import create_state, make_multi_update, make_optimizer, make_update

    rng = np.random.default_rng(0)
    n = 24
    data = to_device(validate(
        {"observations": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
         "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
         "terminals": np.arange(n) % 12 == 11, "rewards": -np.ones(n, np.float32), "masks": np.ones(n, np.float32)},
        chunk_len=2,
    ), 2)  # fmt: skip
    agent = build_agent("bc-mf", small_config("bc-mf", hidden=(8,)), Spec(0, 2, 2, 0.99, (8, 8, 3)), encoder_features=8)
    assert scan_updates(agent) == (jax.default_backend() != "cpu")
    optimizer = make_optimizer(TrainConfig(lr=1e-3))
    update = make_update(agent, optimizer, 4)
    scanned, m_scan = make_multi_update(update, 3)(create_state(agent, optimizer, 0), data)
    looped, m_loop = make_multi_update(update, 3, scan=False)(create_state(agent, optimizer, 0), data)
    assert int(looped.step) == int(scanned.step) == 3
    # Two compiled programs (a scan body and a single step) fuse differently: float32 rounding apart.
    for a, b in zip(jax.tree_util.tree_leaves((scanned.params, m_scan)), jax.tree_util.tree_leaves((looped.params, m_loop))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


# --- bad input --------------------------------------------------------------------------------


def test_wrong_image_size_is_a_clear_error(tmp_path):
    from lps.data.generate import dataset_paths

    n = 10
    small = {"observations": np.zeros((n, 32, 32, 3), np.uint8), "actions": np.zeros((n, 5), np.float32),
             "terminals": np.arange(n) == n - 1, "qpos": np.zeros((n, 21), np.float32)}  # fmt: skip
    np.savez(dataset_paths("visual-cube-single", tmp_path)[0], **small)
    with pytest.raises(DatasetError, match=r"\(64, 64, 3\).*got uint8 \(32, 32, 3\).*lps data generate"):
        tasks.load_task(tasks.parse_task(TASK), tmp_path, chunk_len=3)
    with pytest.raises(ValueError, match=r"images are \(32, 32, 3\) but .* renders \(64, 64, 3\)"):
        render.check_image_size((32, 32, 3), (64, 64, 3), ENV_ID)


def test_augment_prob_is_a_probability():
    with pytest.raises(ValueError, match="--augment-prob must be in"):
        TrainConfig(augment_prob=1.5)


def test_float_images_are_refused():
    n = 10
    data = {"observations": np.zeros((n, 8, 8, 3), np.float32), "actions": np.zeros((n, 2), np.float32),
            "terminals": np.arange(n) == n - 1, "rewards": np.zeros(n), "masks": np.ones(n)}  # fmt: skip
    with pytest.raises(DatasetError, match="must be uint8"):
        validate(data, chunk_len=3)


def test_missing_renderer_names_what_to_install(tmp_path, monkeypatch):
    import mujoco

    from lps.data.generate import generate

    def no_gl(*args, **kwargs):
        raise RuntimeError("Cannot create an EGL context.")

    monkeypatch.setattr(mujoco, "Renderer", no_gl)
    render._render_one_frame.cache_clear()
    try:
        with pytest.raises(render.RendererUnavailable, match=r"visual-cube-single.*apt-get install -y libosmesa6.*apt-get install -y libegl1"):
            generate("visual-cube-single", tmp_path, episodes=1, workers=1, progress=False)
        assert not list(tmp_path.iterdir()), "nothing is written without a renderer"
        from lps.training import setup as S
        from lps.training.plan import resolve

        cfg = with_flags(TrainConfig(), env=TASK, eval_episodes=2)
        with pytest.raises(render.RendererUnavailable, match="MUJOCO_GL"):
            S.make_evaluator(resolve(cfg), cfg.eval)
    finally:
        render._render_one_frame.cache_clear()


def test_headless_backend_choice_respects_the_user(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert render.choose_gl_backend() == "osmesa"
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    chosen = render.choose_gl_backend()
    assert chosen in ("egl", "osmesa", None)
    if chosen is not None:
        assert os.environ["MUJOCO_GL"] == chosen == os.environ["PYOPENGL_PLATFORM"]
