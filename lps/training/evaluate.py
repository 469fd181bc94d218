"""Batched evaluation with the paper's protocol, for several seeds at once; see docs/training.md
("Evaluation protocol") and docs/method.md.

Episodes run side by side: one policy call (the parameters' seed axis vmapped) draws a chunk for
every running episode of every seed, each chunk runs open loop in `lps.training.envs`, and
success is the final step's `info['success']`. Episode i of seed s is reset with a seed derived
from (s, i) and its c-th chunk uses fold_in(fold_in(PRNGKey(s), i), c), so results do not depend
on the pool size, the workers, or which seeds are evaluated together (`DEFAULT_POOL` slots per seed).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lps.training.envs import DEFAULT_CHUNK_TIMEOUT, EnvWorkerError, EnvWorkerPool, LocalEnvs, plan_pool
from lps.training.rollout import EpisodePool, Slot, episode_seed

# (observations (S, B, *obs_shape): state vectors or uint8 images, episode index (S, B), chunk index within the episode (S, B))
#   -> action chunks (S, B, H, A); row (j, b) belongs to the j-th evaluated seed.
SeedsPolicy = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
DEFAULT_POOL = 10
# Episodes per evaluation and seed: each one's results (and final observation) stay in memory, and
# 1e8 of them would take gigabytes before the first episode starts. The paper evaluates 50.
MAX_EVAL_EPISODES = 100_000


def check_episodes(episodes: int, flag: str = "--episodes") -> None:
    """Refuse, before any environment steps, an episode count that is not 1..MAX_EVAL_EPISODES."""
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)):
        raise ValueError(f"{flag} must be a whole number of episodes, got {episodes!r}")
    if not 1 <= episodes <= MAX_EVAL_EPISODES:
        raise ValueError(f"{flag} must be from 1 to {MAX_EVAL_EPISODES} (every episode's results are kept in "
                         f"memory), got {episodes}")  # fmt: skip


class EvaluationFailed(RuntimeError):
    """An environment failed during an evaluation; the message names the seed, episode and env."""


class EvaluationCancelled(RuntimeError):
    """The evaluation was asked to stop (Ctrl-C or shutdown of an overlapped evaluation)."""


class Evaluator:
    """Environments of one task, in this process (`workers=0`) or in worker processes, that run
    the evaluation episodes of one or more seeds."""

    def __init__(self, env_id: str, slots_per_seed: int = DEFAULT_POOL, num_seeds: int = 1, workers: int | None = 0,
                 report=print, max_episode_steps: int | None = None, frame_stack: int = 1,
                 chunk_timeout: float | None = DEFAULT_CHUNK_TIMEOUT):  # fmt: skip
        """`chunk_timeout`: seconds a worker process may take per reset or action chunk before it is
        killed and treated as dead, failing the evaluation as a dead worker does (in-process
        environments, `workers=0`, have no deadline)."""
        self.env_id, self.num_seeds, self.frame_stack = env_id, num_seeds, frame_stack
        slots, num_workers = plan_pool(slots_per_seed * num_seeds, workers if workers != 0 else 1, report)
        self.slots_per_seed = max(1, slots // num_seeds)
        total = self.slots_per_seed * num_seeds
        if workers == 0:
            self.envs = LocalEnvs(env_id, total, max_episode_steps)
        else:
            self.envs = EnvWorkerPool(env_id, total, num_workers, max_episode_steps=max_episode_steps,
                                      chunk_timeout=chunk_timeout, report=report)  # fmt: skip
        self.workers = 0 if workers == 0 else self.envs.num_workers
        # (obs_dim,) for state vectors, (H, W, 3) uint8 images for visual envs (obs_dim 0): one frame.
        self.obs_shape, self.obs_dtype, self.obs_dim = self.envs.obs_shape, self.envs.obs_dtype, self.envs.obs_dim
        # What the policy is given: with --frame-stack K, each episode's last K frames (lps.data.frames).
        *hw, channels = self.obs_shape
        self.policy_obs_shape = (*hw, channels * frame_stack) if frame_stack > 1 else self.obs_shape

    def run_seeds(self, policy: SeedsPolicy, seeds: list[int], episodes: int = 50,
                  cancel: threading.Event | None = None) -> list[dict[str, float]]:  # fmt: skip
        """Per seed: mean success, return and length over `episodes`, and the evaluation's env
        steps/s (all seeds together, with the policy in the loop). Raises EvaluationFailed
        naming the seed, episode and env slot if an environment or worker fails."""
        if len(seeds) != self.num_seeds:
            raise ValueError(f"this evaluator was built for {self.num_seeds} seed(s), got {len(seeds)}")
        check_episodes(episodes, "episodes")
        start = time.perf_counter()
        pool = EpisodePool(self.envs, len(seeds), self.slots_per_seed, self.frame_stack)
        tally = _Tally(len(seeds), episodes, self.obs_shape, self.obs_dtype)
        pending = [deque(range(episodes)) for _ in seeds]
        with self._failures_named(pool, seeds):
            self._start_next(pool, seeds, pending, [(j, b) for j in range(len(seeds)) for b in range(pool.per_group)])
            while pool.running.any():
                if cancel is not None and cancel.is_set():
                    raise EvaluationCancelled(f"evaluation on {self.env_id} cancelled")
                ended = tally.record(pool.episode, pool.step(pool.act(policy)))
                if ended:
                    self._start_next(pool, seeds, pending, ended)  # from the next policy call: chunks are open loop
        rate = float(tally.length.sum()) / (time.perf_counter() - start)
        # Per episode, for checks and analysis: [seed index, episode].
        self.last_episodes = {"success": tally.success, "return": tally.ret, "length": tally.length,
                              "final_obs": tally.final_obs}  # fmt: skip
        return tally.summary(rate)

    @staticmethod
    def _start_next(pool: EpisodePool, seeds: list[int], pending: list[deque], free: list[Slot]) -> None:
        """Each free slot starts its seed's next pending episode, or is released when none is left."""
        starts = {}
        for j, b in free:
            if pending[j]:
                i = pending[j].popleft()
                starts[j, b] = (i, episode_seed(seeds[j], i))
            else:
                pool.release((j, b))
        pool.start(starts)

    @contextlib.contextmanager
    def _failures_named(self, pool: EpisodePool, seeds: list[int]):
        """An environment or worker failure as EvaluationFailed, naming the episodes it hit."""
        try:
            yield
        except EnvWorkerError as e:
            where = []
            for s in e.slots:
                j, b = pool.slot_of(s)
                if pool.episode[j, b] >= 0:
                    where.append(f"episode {pool.episode[j, b]} of seed {seeds[j]} (slot {s})")
            raise EvaluationFailed(f"evaluation on {self.env_id} failed at {', '.join(where) or 'start-up'}: {e}") from e

    def run(self, policy: SeedsPolicy, episodes: int = 50, seed: int = 0) -> dict[str, float]:
        """One seed's evaluation (`policy` takes a seed axis of length 1)."""
        return self.run_seeds(policy, [seed], episodes)[0]

    def close(self) -> None:
        self.envs.close()


class _Tally:
    """Each evaluated episode's return, length, success and final observation, [seed index, episode]."""

    def __init__(self, num_seeds: int, episodes: int, obs_shape: tuple[int, ...], obs_dtype):
        self.success, self.ret = np.zeros((num_seeds, episodes)), np.zeros((num_seeds, episodes))
        self.length = np.zeros((num_seeds, episodes), np.int64)
        self.final_obs = np.zeros((num_seeds, episodes, *obs_shape), obs_dtype)

    def record(self, episode: np.ndarray, outcomes: dict) -> list[Slot]:
        """Add a round's chunk outcomes (`episode`: the episode each slot plays); the slots whose episode ended."""
        ended = []
        for (j, b), out in outcomes.items():
            i = episode[j, b]
            self.ret[j, i], self.length[j, i] = self.ret[j, i] + out.reward_sum, self.length[j, i] + out.steps
            if out.done:
                self.success[j, i], self.final_obs[j, i] = out.success, out.obs
                ended.append((j, b))
        return ended

    def summary(self, rate: float) -> list[dict[str, float]]:
        return [
            {
                "eval/success": float(self.success[j].mean()),
                "eval/return": float(self.ret[j].mean()),
                "eval/length": float(self.length[j].mean()),
                "eval/env_steps_per_sec": rate,
            }
            for j in range(len(self.success))
        ]


# --- the policy side: one batched call for every seed -----------------------------------------

_ACT_CACHE: dict = {}


def seeds_act(agent):
    """Jitted `(params (S, ...), obs (S, B, D), seeds (S,), episodes (S, B), chunks (S, B)) -> (S, B, H*A)`.

    Each row acts as a batch of one with its own key, fold_in(fold_in(PRNGKey(seed), episode),
    chunk), so a row's chunk does not depend on the rest of the batch."""
    if agent not in _ACT_CACHE:
        def one_row(params, obs, key):
            return agent.act(params, obs[None], key)[0]

        def one_seed(params, obs, seed, episodes, chunks):
            base = jax.random.PRNGKey(seed)
            keys = jax.vmap(lambda e, c: jax.random.fold_in(jax.random.fold_in(base, e), c))(episodes, chunks)
            return jax.vmap(one_row, in_axes=(None, 0, 0))(params, obs, keys)

        _ACT_CACHE[agent] = jax.jit(jax.vmap(one_seed))
    return _ACT_CACHE[agent]


def one_seed_act(agent):
    """`seeds_act` for one seed's parameters, without their seed axis: the axis is added inside
    the compiled program (per-leaf `x[None]` on the host is one dispatch per leaf, every call)."""
    key = (agent, "one seed")
    if key not in _ACT_CACHE:
        act = seeds_act(agent)
        _ACT_CACHE[key] = jax.jit(lambda params, *args: act(jax.tree_util.tree_map(lambda x: x[None], params), *args))
    return _ACT_CACHE[key]


def make_seeds_policy(agent, params, seeds: list[int], device=None, seed_axis: bool = True) -> SeedsPolicy:
    """A SeedsPolicy for parameters with a leading seed axis (one entry per seed in `seeds`), or
    with `seed_axis=False` one seed's parameters as they are (`seeds` then holds that one seed),
    acting on `device` (default: JAX's default device)."""
    if not seed_axis and len(seeds) != 1:
        raise ValueError(f"parameters without a seed axis act for one seed, not {len(seeds)}")
    act = seeds_act(agent) if seed_axis else one_seed_act(agent)
    spec = agent.spec
    put = (lambda x: jax.device_put(x, device)) if device is not None else jnp.asarray
    params = jax.device_put(params, device) if device is not None else params
    seed_array = put(np.asarray(seeds, np.uint32))

    def policy(obs, episodes, chunks):
        obs = np.asarray(obs) if np.asarray(obs).dtype == np.uint8 else np.asarray(obs, np.float32)  # images stay uint8
        episodes, chunks = episodes.astype(np.int32), chunks.astype(np.int32)
        out = act(params, put(obs), seed_array, put(episodes), put(chunks))
        return np.asarray(out).reshape(*obs.shape[:2], spec.chunk_len, spec.action_dim)

    return policy
