"""Batched evaluation with the paper's protocol (REFERENCE.md §4).

Episodes run side by side in a pool of environments: one policy call produces a chunk for
every running episode, each chunk is executed open loop, and a new chunk is asked for only when
the last one is used up. Success is the final step's `info['success']`. When an episode ends
its environment starts the next pending episode at the next policy call, so the batch stays
full. Episode i is reset with a seed derived from (evaluation seed, i), so the same policy and
seed give the same result whatever the pool size.

The pool is small by default because every OGBench environment holds its own copy of the MuJoCo
model (about 150 MB for the manipulation scenes).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

import numpy as np

# (observations (n, obs_dim) or uint8 images (n, H, W, 3), call index) -> action chunks (n, H, action_dim)
PolicyFn = Callable[[np.ndarray, int], np.ndarray]
DEFAULT_POOL = 10


class Evaluator:
    """A pool of environments of one task that runs batches of episodes."""

    def __init__(self, env_id: str, num_envs: int = DEFAULT_POOL, max_episode_steps: int | None = None):
        from lps.data.tasks import _require_ogbench

        _require_ogbench()
        import gymnasium

        self.env_id = env_id
        # max_episode_steps: None keeps the env's own time limit (shorter ones are for tests).
        limit = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
        self.envs = [gymnasium.make(env_id, **limit) for _ in range(num_envs)]
        # (obs_dim,) for state vectors, (H, W, 3) uint8 images for visual envs.
        self.obs_shape = tuple(int(d) for d in self.envs[0].observation_space.shape)
        self.obs_dim = self.obs_shape[0] if len(self.obs_shape) == 1 else 0

    def run(self, policy: PolicyFn, episodes: int = 50, seed: int = 0) -> dict[str, float]:
        """Mean success, return and length over `episodes`, and env steps/s with the policy in the loop."""
        start = time.perf_counter()
        n = len(self.envs)
        pending = deque(range(episodes))
        episode = np.full(n, -1)  # which episode each env is running; -1: idle
        obs = None
        success, ret, length = np.zeros(episodes), np.zeros(episodes), np.zeros(episodes, np.int64)

        def start_next(slot: int) -> None:
            nonlocal obs
            if not pending:
                episode[slot] = -1
                return
            i = pending.popleft()
            ob, _ = self.envs[slot].reset(seed=_episode_seed(seed, i))
            if obs is None:
                obs = np.zeros((n, *ob.shape), np.uint8 if ob.dtype == np.uint8 else np.float32)
            obs[slot], episode[slot] = ob, i

        for slot in range(n):
            start_next(slot)
        calls = 0
        while (episode >= 0).any():
            # A fixed batch shape for every call (idle slots keep their last observation).
            chunks = np.asarray(policy(obs, calls))
            calls += 1
            running = list(np.flatnonzero(episode >= 0))
            for k in range(chunks.shape[1]):
                for slot in list(running):
                    i = episode[slot]
                    ob, r, terminated, truncated, info = self.envs[slot].step(chunks[slot, k])
                    obs[slot], ret[i], length[i] = ob, ret[i] + r, length[i] + 1
                    if terminated or truncated:
                        success[i] = float(info["success"])
                        running.remove(slot)
                        start_next(slot)  # runs from the next policy call: chunks are open loop
        return {
            "eval/success": float(success.mean()),
            "eval/return": float(ret.mean()),
            "eval/length": float(length.mean()),
            "eval/env_steps_per_sec": float(length.sum()) / (time.perf_counter() - start),
        }

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _episode_seed(seed: int, episode: int) -> int:
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])
