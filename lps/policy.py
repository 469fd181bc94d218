"""Loading a trained policy from a run directory, in one call.

policy = lps.load_policy("runs/cube-single-play-singletask-task1-v0/lps/seed0")
chunk = policy(obs)            # (H, action_dim) for one observation, (B, H, A) for a batch
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lps import checkpoint
from lps.agents import make_agent
from lps.train import jitted_act


DEFAULT_EVAL_EPISODES = 50  # the paper's protocol, for runs that never evaluated while training


class Policy:
    """A trained agent's acting rule with its parameters bound."""

    def __init__(self, agent, params, seed: int = 0):
        self.agent, self.params = agent, params
        self.spec = agent.spec
        self._act = jitted_act(agent)
        self._key = jax.random.PRNGKey(seed)
        self._calls = 0

    def __call__(self, obs, key: jax.Array | None = None) -> np.ndarray:
        obs = self._check_obs(obs)
        single = obs.ndim == 1
        if key is None:
            key, self._calls = jax.random.fold_in(self._key, self._calls), self._calls + 1
        chunk = self._act(self.params, jnp.atleast_2d(obs), key)
        chunk = np.asarray(chunk).reshape(-1, self.spec.chunk_len, self.spec.action_dim)
        return chunk[0] if single else chunk


    def _check_obs(self, obs) -> np.ndarray:
        """The observation(s) as float32, or a ValueError naming the shape the policy takes."""
        dim = self.spec.obs_dim
        expected = f"the policy takes one observation of shape ({dim},) or a batch of shape (B, {dim})"
        try:
            arr = np.asarray(obs)
            if np.iscomplexobj(arr):
                raise TypeError("complex values")
            arr = arr.astype(np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"observation is not an array of real numbers ({e}); {expected}") from None
        if arr.ndim not in (1, 2) or arr.shape[-1] != dim:
            raise ValueError(f"observation has shape {arr.shape}; {expected}")
        if arr.size == 0:
            raise ValueError(f"observation batch is empty (shape {arr.shape}); {expected} with B >= 1")
        if not np.isfinite(arr).all():
            raise ValueError(f"observation holds NaN or inf values at {np.argwhere(~np.isfinite(arr))[0].tolist()}")
        return arr


def load_policy(run_dir: str | Path, seed: int = 0) -> Policy:
    from lps.rundir import user_path
    from lps.train import create_state, load_config, make_optimizer

    run_dir = user_path(run_dir)
    agent_name, cfg, agent_cfg, spec = load_config(run_dir)
    if spec is None:
        raise ValueError(f"{run_dir}/config.json has no problem spec; was the run started?")
    agent = make_agent(agent_name, agent_cfg, spec)
    state = checkpoint.restore(run_dir, create_state(agent, make_optimizer(cfg), cfg.seed))
    return Policy(agent, state.params, seed)


def evaluate_run(run_dir: str | Path, episodes: int | None = None, seed: int | None = None) -> dict[str, float]:
    """Evaluate a run's latest checkpoint with the paper's protocol (same seed -> same result)."""
    import dataclasses

    from lps.train import load_config, make_evaluator, make_policy_fn

    from lps.rundir import user_path

    run_dir = user_path(run_dir)
    _, cfg, _, _ = load_config(run_dir)
    policy = load_policy(run_dir)
    if episodes is None and cfg.eval_episodes == 0:
        episodes = DEFAULT_EVAL_EPISODES
        print(f"[lps] {run_dir} was trained with --eval-episodes 0: evaluating {episodes} episodes "
              "(choose with --episodes)")  # fmt: skip
    episodes = cfg.eval_episodes if episodes is None else episodes
    seed = cfg.seed if seed is None else seed
    evaluator = make_evaluator(dataclasses.replace(cfg, eval_episodes=max(episodes, 1)))
    if evaluator is None:
        raise RuntimeError("no environment to evaluate in (is OGBench installed?)")
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
