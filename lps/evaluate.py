"""Batched evaluation with the paper's protocol (REFERENCE.md §4).

All episodes run side by side: one policy call produces a chunk for every running episode, the
chunk is executed open loop, and a new chunk is asked for only when the last one is used up.
Success is the final step's `info['success']`. Episode i is reset with a seed derived from the
evaluation seed, so the same policy and seed give the same result.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

# (observations (n, obs_dim), chunk index) -> action chunks (n, H, action_dim)
PolicyFn = Callable[[np.ndarray, int], np.ndarray]


class Evaluator:
    """Holds `num_envs` environments of one task and runs batches of episodes on them."""

    def __init__(self, env_id: str, num_envs: int = 50):
        from lps.data.tasks import _require_ogbench

        _require_ogbench()
        import gymnasium

        self.env_id = env_id
        self.envs = [gymnasium.make(env_id) for _ in range(num_envs)]

    def run(self, policy: PolicyFn, episodes: int = 50, seed: int = 0) -> dict[str, float]:
        """Mean success, return and length over `episodes`, plus env steps/s with the policy in the loop."""
        results, start, env_steps = [], time.perf_counter(), 0
        for first in range(0, episodes, len(self.envs)):
            wave = self._wave(policy, range(first, min(first + len(self.envs), episodes)), seed)
            results.append(wave)
            env_steps += int(wave[2].sum())
        success, ret, length = (np.concatenate(x) for x in zip(*results))
        return {
            "eval/success": float(success.mean()),
            "eval/return": float(ret.mean()),
            "eval/length": float(length.mean()),
            "eval/env_steps_per_sec": env_steps / (time.perf_counter() - start),
        }

    def _wave(self, policy: PolicyFn, episode_ids: range, seed: int):
        n = len(episode_ids)
        envs = self.envs[:n]
        obs = np.stack([env.reset(seed=_episode_seed(seed, i))[0] for env, i in zip(envs, episode_ids)])
        # A fixed batch shape for every policy call: finished episodes keep their last observation.
        batch = np.zeros((len(self.envs), obs.shape[1]), np.float32)
        running = np.ones(n, bool)
        success, ret, length = np.zeros(n), np.zeros(n), np.zeros(n, np.int64)
        calls = 0
        while running.any():
            batch[:n] = obs
            chunks = np.asarray(policy(batch, calls))[:n]
            calls += 1
            for k in range(chunks.shape[1]):
                for i in np.flatnonzero(running):
                    ob, r, terminated, truncated, info = envs[i].step(chunks[i, k])
                    obs[i], ret[i], length[i] = ob, ret[i] + r, length[i] + 1
                    if terminated or truncated:
                        running[i] = False
                        success[i] = float(info["success"])
                if not running.any():
                    break
        return success, ret, length

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _episode_seed(seed: int, episode: int) -> int:
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])
