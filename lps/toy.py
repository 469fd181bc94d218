"""A one-step bandit for fast learning checks, trained through the same code path as OGBench.

Offline actions come from four Gaussian clusters in the 2-D action square; only actions near a
cluster's centre are rewarded, and the cluster at (0.7, 0.7) pays most. A good offline agent
puts its actions on that cluster (best reward) without leaving the data (every other point of
the square pays 0, and the critic knows nothing about it).

Each "episode" is two rows (constant observation, action, final observation): chunk length 1,
and the mask is 0 so the target is the reward alone.
"""

from __future__ import annotations

import numpy as np

TOY_ENV = "toy-bandit"
CENTRES = np.array([[0.7, 0.7], [-0.7, 0.7], [-0.7, -0.7], [0.7, -0.7]], np.float32)
PAYOFFS = np.array([1.0, 0.5, 0.3, 0.2], np.float32)
REWARD_RADIUS = 0.25
DATA_STD = 0.08


def reward(actions: np.ndarray) -> np.ndarray:
    """Payoff of the cluster whose centre is within REWARD_RADIUS, else 0."""
    dist = np.linalg.norm(actions[:, None, :] - CENTRES[None], axis=-1)
    near = dist < REWARD_RADIUS
    return np.where(near.any(-1), PAYOFFS[np.argmin(dist, -1)], 0.0).astype(np.float32)


def make_dataset(samples: int = 4000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    actions = CENTRES[rng.integers(0, len(CENTRES), samples)] + DATA_STD * rng.standard_normal((samples, 2))
    actions = np.clip(actions, -1, 1).astype(np.float32)
    rows = 2 * samples
    data = {
        "observations": np.zeros((rows, 1), np.float32),
        "actions": np.zeros((rows, 2), np.float32),
        "rewards": np.zeros(rows, np.float32),
        "masks": np.zeros(rows, np.float32),
        "terminals": np.tile([False, True], samples),
    }
    data["actions"][0::2] = actions
    data["rewards"][0::2] = reward(actions)
    return data


class ToyEvaluator:
    """Samples the policy `episodes` times and scores the actions."""

    def run(self, policy, episodes: int = 1000, seed: int = 0) -> dict[str, float]:
        del seed  # the policy's own key decides its samples
        actions = np.asarray(policy(np.zeros((episodes, 1), np.float32), 0)).reshape(episodes, 2)
        dist = np.linalg.norm(actions[:, None, :] - CENTRES[None], axis=-1)
        return {
            "eval/success": float(np.mean(dist[:, 0] < REWARD_RADIUS)),  # on the best cluster
            "eval/in_support": float(np.mean(dist.min(-1) < REWARD_RADIUS)),
            "eval/return": float(np.mean(reward(actions))),
        }

    def close(self) -> None:
        pass
