"""Loading a trained policy from a run directory, in one call.

policy = lps.load_policy("runs/cube-single-play-singletask-task1-v0/lps/seed0")
chunk = policy(obs)            # (H, action_dim) for one observation, (B, H, A) for a batch

A policy trained on robot data takes one observation as the robot stack produces it (DROID's
`{"robot_state": ..., "image": {cam: BGRA}}`), our `{"state", "image"}` dict, or a batch of the
latter (leading axis on both); images are converted and resized exactly as in training.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lps import checkpoint
from lps.train import jitted_act


class Policy:
    """A trained agent's acting rule with its parameters bound."""

    def __init__(self, agent, params, seed: int = 0, robot=None):
        self.agent, self.params = agent, params
        self.robot = robot  # the RobotDataConfig the data was read with (robot runs)
        self.spec = agent.spec
        self._act = jitted_act(agent)
        self._key = jax.random.PRNGKey(seed)
        self._calls = 0

    def __call__(self, obs, key: jax.Array | None = None) -> np.ndarray:
        obs, single = self._batch(obs)
        if key is None:
            key, self._calls = jax.random.fold_in(self._key, self._calls), self._calls + 1
        chunk = self._act(self.params, obs, key)
        chunk = np.asarray(chunk).reshape(-1, self.spec.chunk_len, self.spec.action_dim)
        return chunk[0] if single else chunk


    def _batch(self, obs):
        """(observation batch as the agent takes it, whether a single observation was given)."""
        image_shape = self.spec.image_shape
        if image_shape is None:
            obs = np.asarray(obs, np.float32)
            if obs.shape[-1] != self.spec.obs_dim:
                raise ValueError(f"observation has {obs.shape[-1]} dims; the policy takes {self.spec.obs_dim}")
            return jnp.atleast_2d(obs), obs.ndim == 1
        if self.spec.obs_dim == 0:  # image-only observations (pixel tasks)
            obs = np.asarray(obs)
            single = obs.ndim == 3
            return jnp.asarray(obs[None] if single else obs, jnp.uint8), single
        if not isinstance(obs, dict):
            raise ValueError("this policy takes a dict observation ({state, image}, or the robot's raw dict)")
        single = not ("state" in obs and np.ndim(obs["state"]) == 2)
        if single:
            from lps.data.robot import RobotDataConfig, droid_obs_to_lps

            obs = droid_obs_to_lps(obs, self.robot or RobotDataConfig())
            obs = {k: v[None] for k, v in obs.items()}
        state, image = np.asarray(obs["state"], np.float32), np.asarray(obs["image"])
        if state.shape[1:] != (self.spec.obs_dim,) or image.shape[1:] != tuple(image_shape):
            raise ValueError(
                f"observation has state {state.shape[1:]} and image {image.shape[1:]}; the policy takes state "
                f"({self.spec.obs_dim},) and image {tuple(image_shape)} uint8"
            )
        return {"state": jnp.asarray(state), "image": jnp.asarray(image, jnp.uint8)}, single


def load_policy(run_dir: str | Path, seed: int = 0) -> Policy:
    from lps.train import build_agent_for, create_state, load_config, make_optimizer

    agent_name, cfg, agent_cfg, spec = load_config(run_dir)
    if spec is None:
        raise ValueError(f"{run_dir}/config.json has no problem spec; was the run started?")
    agent = build_agent_for(agent_name, cfg, agent_cfg, spec)
    state = checkpoint.restore(run_dir, create_state(agent, make_optimizer(cfg), cfg.seed))
    return Policy(agent, state.params, seed, robot=cfg.robot)


def evaluate_run(run_dir: str | Path, episodes: int | None = None, seed: int | None = None) -> dict[str, float]:
    """Evaluate a run's latest checkpoint with the paper's protocol (same seed -> same result)."""
    import dataclasses

    from lps.render import check_image_size
    from lps.train import load_config, make_evaluator, make_policy_fn

    _, cfg, _, _ = load_config(run_dir)
    policy = load_policy(run_dir)
    episodes = cfg.eval_episodes if episodes is None else episodes
    seed = cfg.seed if seed is None else seed
    evaluator = make_evaluator(dataclasses.replace(cfg, eval_episodes=max(episodes, 1)))
    if evaluator is None:
        raise RuntimeError("no environment to evaluate in (is OGBench installed?)")
    try:
        check_image_size(policy.spec.image_shape, getattr(evaluator, "obs_shape", None), cfg.env)
    except ValueError:
        evaluator.close()
        raise
    if getattr(evaluator, "obs_dim", policy.spec.obs_dim) != policy.spec.obs_dim:
        evaluator.close()
        raise ValueError(
            f"{cfg.env} observations have {evaluator.obs_dim} dims but the policy takes {policy.spec.obs_dim}: "
            "the run was trained for another environment"
        )
    try:
        return evaluator.run(make_policy_fn(policy.agent, policy.params, seed), episodes, seed=seed)
    finally:
        evaluator.close()
