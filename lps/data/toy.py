"""One-step bandits for fast learning checks and the paper's analysis figures, trained through the
same code path as OGBench (`--env toy-<task>`, chunk length 1); see docs/data.md ("Toy bandits").

Tasks: `four-gaussians` (`toy-bandit`), `checkerboard`, `two-moons`, `rings`, `spiral` and
`mixture-50d`: a multimodal offline action distribution and a reward that only one region of the
data earns in full. Each "episode" is two rows with mask 0, so the critic's target is the reward.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

TOY_ENV = "toy-bandit"  # the four-Gaussians task, the default toy
REFERENCE_SAMPLES = 20_000  # data points an action is compared with for the support check


@dataclasses.dataclass(frozen=True)
class ToyTask:
    name: str
    dim: int
    sample: Callable[[np.random.Generator, int], np.ndarray]  # offline actions
    reward: Callable[[np.ndarray], np.ndarray]
    best: np.ndarray  # the action that earns most
    support_radius: float  # in support: this close to some data point
    best_radius: float  # "on the best mode": this close to `best`


def _four_gaussians() -> ToyTask:
    centres = np.array([[0.7, 0.7], [-0.7, 0.7], [-0.7, -0.7], [0.7, -0.7]])
    payoffs = np.array([1.0, 0.5, 0.3, 0.2])
    return _clusters("four-gaussians", centres, payoffs, std=0.08, radius=0.25)


def _mixture_50d() -> ToyTask:
    centres = np.random.default_rng(0).uniform(-0.6, 0.6, (8, 50))
    return _clusters("mixture-50d", centres, np.linspace(1.0, 0.1, 8), std=0.03, radius=0.5)


def _clusters(name, centres, payoffs, std, radius) -> ToyTask:
    def sample(rng, n):
        return centres[rng.integers(0, len(centres), n)] + std * rng.standard_normal((n, centres.shape[1]))

    def reward(a):
        dist = np.linalg.norm(a[:, None, :] - centres[None], axis=-1)
        return np.where(dist.min(-1) < radius, payoffs[np.argmin(dist, -1)], 0.0)

    return ToyTask(name, centres.shape[1], sample, reward, centres[np.argmax(payoffs)], radius, radius)


def _shape(name, sample_unit, best, support_radius=0.06, width=0.35) -> ToyTask:
    """A 2-D shape with reward exp(-|a - best|^2 / 2 width^2), observed only on the data."""
    best = np.asarray(best, float)

    def reward(a):
        return np.exp(-np.sum(np.square(a - best), -1) / (2 * width**2))

    return ToyTask(name, 2, sample_unit, reward, best, support_radius, 0.2)


def _checkerboard(rng, n):
    cells = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0])
    c = cells[rng.integers(0, len(cells), n)]
    return -1.0 + 0.5 * (c + rng.uniform(0, 1, (n, 2)))


def _two_moons(rng, n):
    theta = rng.uniform(0, np.pi, n)
    upper = rng.uniform(size=n) < 0.5
    x = np.where(upper, np.cos(theta), 1 - np.cos(theta))
    y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
    return np.stack([(x - 0.5) / 1.6, (y - 0.25) / 0.8], -1) + 0.03 * rng.standard_normal((n, 2))


def _rings(rng, n):
    radius = np.where(rng.uniform(size=n) < 0.5, 0.4, 0.85)
    theta = rng.uniform(0, 2 * np.pi, n)
    return radius[:, None] * np.stack([np.cos(theta), np.sin(theta)], -1) + 0.03 * rng.standard_normal((n, 2))


def _spiral(rng, n):
    s = rng.uniform(0, 1, n)
    r, theta = 0.15 + 0.75 * s, 3 * np.pi * s
    return r[:, None] * np.stack([np.cos(theta), np.sin(theta)], -1) + 0.02 * rng.standard_normal((n, 2))


TASKS: dict[str, ToyTask] = {
    t.name: t
    for t in [
        _four_gaussians(),
        _shape("checkerboard", _checkerboard, (0.75, 0.75)),
        _shape("two-moons", _two_moons, (0.9375, 0.3125)),
        _shape("rings", _rings, (0.6, 0.6)),
        _shape("spiral", _spiral, (-0.9, 0.0)),
        _mixture_50d(),
    ]
}


def is_toy(env: str) -> bool:
    return env == TOY_ENV or env.startswith("toy-")


def task_of(env: str) -> ToyTask:
    name = "four-gaussians" if env == TOY_ENV else env.removeprefix("toy-")
    if name not in TASKS:
        raise ValueError(f"unknown toy task {env!r}; valid: {TOY_ENV}, " + ", ".join(f"toy-{t}" for t in TASKS))
    return TASKS[name]


def make_dataset(env: str = TOY_ENV, samples: int = 4000, seed: int = 0) -> dict[str, np.ndarray]:
    task = task_of(env)
    actions = np.clip(task.sample(np.random.default_rng(seed), samples), -1, 1).astype(np.float32)
    rows = 2 * samples
    data = {
        "observations": np.zeros((rows, 1), np.float32),
        "actions": np.zeros((rows, task.dim), np.float32),
        "rewards": np.zeros(rows, np.float32),
        "masks": np.zeros(rows, np.float32),
        "terminals": np.tile([False, True], samples),
    }
    data["actions"][0::2] = actions
    data["rewards"][0::2] = task.reward(actions)
    return data


def score(task: ToyTask, actions: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Mean true reward, fraction on the best mode, and fraction within the data's support."""
    # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b: one matmul instead of an (actions, reference, dim) array.
    sq = np.sum(actions**2, -1)[:, None] + np.sum(reference**2, -1)[None] - 2 * actions @ reference.T
    nearest = np.sqrt(np.maximum(sq.min(-1), 0.0))
    return {
        "eval/return": float(np.mean(task.reward(actions))),
        "eval/success": float(np.mean(np.linalg.norm(actions - task.best, axis=-1) < task.best_radius)),
        "eval/in_support": float(np.mean(nearest < task.support_radius)),
    }


class ToyEvaluator:
    """Samples the policy `episodes` times (one batched call) and scores the actions."""

    def __init__(self, env: str = TOY_ENV):
        self.task = task_of(env)
        self.reference = self.task.sample(np.random.default_rng(12345), REFERENCE_SAMPLES)
        self.obs_dim = 1  # the bandit's observation is one constant zero

    def run_seeds(self, policy, seeds: list[int], episodes: int = 1000, cancel=None) -> list[dict[str, float]]:
        """One batched call of the SeedsPolicy (see lps.training.evaluate): episode i is the policy's i-th sample."""
        del cancel  # one call: nothing to interrupt
        shape = (len(seeds), episodes)
        index = np.broadcast_to(np.arange(episodes), shape)
        actions = np.asarray(policy(np.zeros((*shape, 1), np.float32), index, np.zeros(shape, np.int64)))
        return [score(self.task, a.reshape(episodes, self.task.dim), self.reference) for a in actions]

    def run(self, policy, episodes: int = 1000, seed: int = 0) -> dict[str, float]:
        return self.run_seeds(policy, [seed], episodes)[0]

    def close(self) -> None:
        pass


class ToyEnv:
    """A toy task as a one-step environment (the gymnasium calls the env pool uses), for online
    fine-tuning: the observation is a constant zero, the episode ends after one action, the
    reward is the task's reward of the (clipped) action, and success is landing on the best mode
    (as `score` counts it)."""

    max_episode_steps = 1

    class _Space:
        shape = (1,)

    observation_space = _Space()

    def __init__(self, env: str = TOY_ENV):
        self.task = task_of(env)
        self.unwrapped = self

    def reset(self, seed: int | None = None):
        del seed  # nothing random in a bandit's state
        return np.zeros(1, np.float32), {}

    def step(self, action):
        a = np.clip(np.asarray(action, np.float64).reshape(1, -1), -1, 1)
        reward = float(self.task.reward(a)[0])
        success = float(np.linalg.norm(a[0] - self.task.best) < self.task.best_radius)
        return np.zeros(1, np.float32), reward, True, False, {"success": success}

    def close(self) -> None:
        pass
