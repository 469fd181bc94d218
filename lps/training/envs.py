"""Environments for evaluation and online interaction, in this process or in a pool of "spawn"
worker processes (`--eval-workers`); see docs/training.md. Both hold `num_slots` environments:

    obs = envs.reset({slot: seed, ...})                 # {slot: first observation}
    out = envs.step_chunks({slot: chunk (H, A), ...})   # {slot: ChunkOutcome}
    envs.close()

A whole chunk runs where its environment lives (one message per chunk; slot s in worker
s % num_workers). A dead, raising or hung worker (past `chunk_timeout`) raises `EnvWorkerError`;
the pool is then closed and rebuilt.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
import traceback
import warnings
from dataclasses import dataclass

import numpy as np

from lps.data import toy
from lps.data.gym_env import make_gym_env
from lps.host import available_cores, available_memory_bytes

# Resident memory of one OGBench manipulation environment (its own MuJoCo model and renderer
# buffers), measured on cube-single / scene: used to cap how many environments we start.
ENV_MEMORY_BYTES = 150 * 2**20
# Seconds a worker may take to answer one reset or one action chunk before it is treated as dead:
# an OGBench chunk takes milliseconds (a rendered one well under a second), so only a stopped or
# hung worker reaches it. Evaluation's --eval-workers pools take --eval-chunk-timeout.
DEFAULT_CHUNK_TIMEOUT = 60.0


@dataclass
class ChunkOutcome:
    """What executing one action chunk (or its prefix, if the episode ended) produced."""

    obs: np.ndarray  # the observation after the last executed step
    rewards: np.ndarray  # (steps,) per-step rewards
    steps: int
    done: bool  # terminated or truncated
    success: float  # info['success'] at the last executed step
    # Per executed step, for the online replay buffer: the observation after it and its
    # info['success'] (None from code that does not record them).
    observations: np.ndarray | None = None  # (steps, obs_dim)
    successes: np.ndarray | None = None  # (steps,)

    @property
    def reward_sum(self) -> float:
        return float(self.rewards.sum())


class EnvWorkerError(RuntimeError):
    """A worker process died or its environment raised; names the worker and the slots it held."""

    def __init__(self, message: str, worker: int | None, slots: list[int]):
        super().__init__(message)
        self.worker, self.slots = worker, slots


def make_env(env_id: str, max_episode_steps: int | None = None):
    """One gymnasium environment of an OGBench task (OGBench registers them on import), or a toy
    bandit (`toy-*`, see `lps.data.toy.ToyEnv`). `max_episode_steps` overrides the task's time limit
    (None keeps it; shorter ones are for tests)."""
    if toy.is_toy(env_id):
        return toy.ToyEnv(env_id)

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*DISPLAY environment variable.*")
            import gymnasium  # noqa: F401
            import ogbench  # noqa: F401  (registers the environments)
    except ImportError as e:
        raise ImportError(f'evaluating {env_id} needs OGBench: pip install "lps[ogbench]" ({e})') from e
    limit = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}

    return make_gym_env(env_id, **limit)


def as_observation(ob) -> np.ndarray:
    """An env observation as stored: uint8 images stay uint8, state vectors become float32."""
    ob = np.asarray(ob)
    return ob if ob.dtype == np.uint8 else ob.astype(np.float32)


def observation_space_of(env) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name) of an env's observations, as `as_observation` returns them."""
    space = env.observation_space
    return tuple(int(d) for d in space.shape), "uint8" if getattr(space, "dtype", None) == np.uint8 else "float32"


def state_dim(obs_shape: tuple[int, ...]) -> int:
    """The state-vector size of observations of this shape (0 for images), as `Spec.obs_dim`."""
    return obs_shape[0] if len(obs_shape) == 1 else 0


def run_chunk(env, chunk: np.ndarray) -> ChunkOutcome:
    """Execute `chunk` open loop in `env`, stopping when the episode ends."""
    rewards, observations, successes = [], [], []
    ob, done, success = None, False, 0.0
    for action in chunk:
        ob, r, terminated, truncated, info = env.step(action)
        rewards.append(r)
        observations.append(as_observation(ob))
        successes.append(float(info.get("success", 0.0)))
        if terminated or truncated:
            done, success = True, float(info["success"])
            break
    return ChunkOutcome(as_observation(ob), np.asarray(rewards, np.float64), len(rewards), done, success,
                        np.stack(observations), np.asarray(successes, np.float64))  # fmt: skip


def _reset(env, seed: int) -> np.ndarray:
    ob, _ = env.reset(seed=int(seed))
    return as_observation(ob)


# --- in this process --------------------------------------------------------------------------


class LocalEnvs:
    """`num_slots` environments stepped one after another in this process."""

    def __init__(self, env_id: str, num_slots: int, max_episode_steps: int | None = None):
        self.env_id, self.num_slots = env_id, num_slots
        self.envs = [make_env(env_id, max_episode_steps) for _ in range(num_slots)]
        self.obs_shape, self.obs_dtype = observation_space_of(self.envs[0])
        self.obs_dim = state_dim(self.obs_shape)

    def reset(self, seeds: dict[int, int]) -> dict[int, np.ndarray]:
        return {slot: _reset(self.envs[slot], seed) for slot, seed in seeds.items()}

    def step_chunks(self, chunks: dict[int, np.ndarray]) -> dict[int, ChunkOutcome]:
        return {slot: run_chunk(self.envs[slot], chunk) for slot, chunk in chunks.items()}

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []


# --- in worker processes ----------------------------------------------------------------------


def _worker_main(conn, env_id: str, num_envs: int, max_episode_steps: int | None = None) -> None:
    """A worker's loop: hold `num_envs` environments and answer reset/step/close messages."""
    # Ctrl-C goes to the whole process group; the parent decides when the workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    current = None
    try:
        envs = [make_env(env_id, max_episode_steps) for _ in range(num_envs)]
        conn.send(("ready", observation_space_of(envs[0])))
        while True:
            command, payload = conn.recv()
            if command == "close":
                break
            answers = []
            for local, arg in payload:
                current = local
                answers.append(_reset(envs[local], arg) if command == "reset" else run_chunk(envs[local], arg))
            current = None
            conn.send(("ok", answers))
    except EOFError:  # the parent went away
        return
    except BaseException:
        try:
            conn.send(("error", (current, traceback.format_exc())))
        except OSError:
            pass


class EnvWorkerPool:
    """`num_slots` environments spread over `num_workers` processes (slot s in worker s % W)."""

    def __init__(self, env_id: str, num_slots: int, num_workers: int, start_timeout: float = 300.0,
                 max_episode_steps: int | None = None, chunk_timeout: float | None = DEFAULT_CHUNK_TIMEOUT,
                 report=print):  # fmt: skip
        if num_workers < 1 or num_slots < 1:
            raise ValueError(f"an env pool needs >= 1 worker and >= 1 slot, got {num_workers} and {num_slots}")
        self.env_id, self.num_slots = env_id, num_slots
        self.chunk_timeout, self.report = chunk_timeout, report  # None: wait for an answer for ever
        self.num_workers = min(num_workers, num_slots)
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for w in range(self.num_workers):
            parent, child = ctx.Pipe()
            count = len(range(w, num_slots, self.num_workers))
            proc = ctx.Process(target=_worker_main, args=(child, env_id, count, max_episode_steps), name=f"lps-env-{w}", daemon=True)
            proc.start()
            child.close()  # so that the parent's recv sees EOF when the worker dies
            self.conns.append(parent)
            self.procs.append(proc)
        try:
            dims = [self._receive(w, "ready", timeout=start_timeout) for w in range(self.num_workers)]
        except BaseException:
            self.close()
            raise
        self.obs_shape, self.obs_dtype = dims[0]
        self.obs_dim = state_dim(self.obs_shape)

    def _slots_of(self, worker: int) -> list[int]:
        return list(range(worker, self.num_slots, self.num_workers))

    def _fail(self, worker: int, why: str, local: int | None = None) -> EnvWorkerError:
        slots = self._slots_of(worker)
        where = f"env slot {slots[local]}" if local is not None else f"env slots {slots}"
        failed = slots if local is None else [slots[local]]
        return EnvWorkerError(f"env worker {worker} ({self.env_id}, {where}) {why}", worker, failed)

    def _unresponsive(self, worker: int, timeout: float) -> EnvWorkerError:
        """A worker past its deadline (stopped or hung) is killed and reaped, then failed as a dead one."""
        proc = self.procs[worker]
        self.report(f"[lps] warning: env worker {worker} (PID {proc.pid}) did not answer within {timeout:g} s "
                    f"({self.env_id}): it is stopped or hung, so it is killed and its environments count as dead")  # fmt: skip
        proc.kill()  # SIGKILL ends a stopped process too
        proc.join(timeout=5.0)
        return self._fail(worker, f"did not answer within {timeout:g} s (stopped or hung; killed)")

    def _receive(self, worker: int, expect: str = "ok", timeout: float | None = None, since: float | None = None):
        """The worker's answer; `timeout` seconds from `since` (time.monotonic(), default now) at most."""
        conn, proc = self.conns[worker], self.procs[worker]
        deadline = None if timeout is None else (time.monotonic() if since is None else since) + timeout
        try:
            while not conn.poll(1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))):
                if not proc.is_alive():
                    raise self._fail(worker, f"died (exit code {proc.exitcode})")
                if deadline is not None and time.monotonic() >= deadline:
                    raise self._unresponsive(worker, timeout)
            kind, payload = conn.recv()
        except (EOFError, OSError) as e:
            proc.join(timeout=1.0)
            raise self._fail(worker, f"died (exit code {proc.exitcode}): {type(e).__name__}") from None
        if kind == "error":
            local, tb = payload
            raise self._fail(worker, f"raised:\n{tb}", local)
        if kind != expect:
            raise self._fail(worker, f"sent {kind!r} instead of {expect!r}")
        return payload

    def _call(self, command: str, requests: dict[int, object]) -> dict:
        by_worker: dict[int, list[tuple[int, object]]] = {}
        for slot, arg in requests.items():
            by_worker.setdefault(slot % self.num_workers, []).append((slot, arg))
        sent = time.monotonic()  # the workers run at once: each one's deadline counts from here
        for w, items in by_worker.items():
            try:
                self.conns[w].send((command, [(slot // self.num_workers, arg) for slot, arg in items]))
            except (BrokenPipeError, OSError):
                raise self._fail(w, f"died (exit code {self.procs[w].exitcode}) before {command}") from None
        out = {}
        for w, items in by_worker.items():
            for (slot, _), answer in zip(items, self._receive(w, timeout=self.chunk_timeout, since=sent)):
                out[slot] = answer
        return out

    def reset(self, seeds: dict[int, int]) -> dict[int, np.ndarray]:
        return self._call("reset", seeds)

    def step_chunks(self, chunks: dict[int, np.ndarray]) -> dict[int, ChunkOutcome]:
        return self._call("step", {slot: np.asarray(c, np.float32) for slot, c in chunks.items()})

    def close(self) -> None:
        for conn, proc in zip(self.conns, self.procs):
            if proc.is_alive():
                try:
                    conn.send(("close", None))
                except OSError:
                    pass
        for conn, proc in zip(self.conns, self.procs):
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5.0)
            conn.close()
        self.conns, self.procs = [], []


# --- how many -------------------------------------------------------------------------------


def plan_pool(slots: int, workers: int | None, report=print) -> tuple[int, int]:
    """(environments, worker processes) for a request of `slots` environments and `workers`
    processes (None: one per core). Both are capped, with a message, so that the environments
    fit in available memory and no more workers run than there are cores or environments."""
    memory = available_memory_bytes()
    if memory is not None:
        fit = max(1, int(memory * 0.8) // ENV_MEMORY_BYTES)
        if slots > fit:
            report(f"[lps] evaluation: {slots} environments need ~{slots * ENV_MEMORY_BYTES / 2**30:.1f} GiB but "
                   f"{memory / 2**30:.1f} GiB is available; using {fit}")  # fmt: skip
            slots = fit
    cores = available_cores()
    if workers is None:
        workers = cores
    elif workers > cores:
        report(f"[lps] evaluation: --eval-workers {workers} is more than the {cores} cores available; using {cores}")
        workers = cores
    return slots, max(1, min(workers, slots))
