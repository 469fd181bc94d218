"""`lps robot-sim [URL] --env TASK --episodes N`: an OGBench task as the robot of `lps serve --learn`;
see docs/fine-tuning-on-a-robot.md ("Without hardware").

It speaks the robot's protocol (`lps.client.PolicyClient`): each served chunk runs open loop, every
step is recorded, and the episode is sent with the environment's success label (time limit:
failure). `--intervene-prob p` lets a scripted operator take over a chunk (recorded as
interventions); `--scripted` plays every step without a server; `--record FILE.npz` appends each
episode, labelled with `lps.data.robot.semi_sparse_labels`, to a dataset `lps train --dataset`
reads (rewritten atomically after each episode).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from lps.client import Episode, PolicyClient
from lps.data import tasks
from lps.data.gym_env import make_gym_env
from lps.data.robot import semi_sparse_labels
from lps.files import atomic_writer

DEFAULT_CHUNK_LEN = 5  # the labels' chunk length of a --scripted recording (the paper's H)


# --- the scripted operator ------------------------------------------------------------------


class CubeOperator:
    """OGBench's Markov cube oracle, acting in a single-cube task: the oracle was written for play
    data, where the env tells it the target block and pose; in a task the target is the task's goal
    (the env's target mocap body), so it is filled in here. Closed-loop: it reacts to the current
    state, so it can take over mid-episode."""

    def __init__(self, env):
        try:
            from ogbench.manipspace import lie
            from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
        except ImportError as e:
            raise ImportError(f'the scripted operator needs OGBench: pip install "lps[ogbench]" ({e})') from e
        self._env, self._lie = env.unwrapped, lie
        if getattr(self._env, "_num_cubes", None) != 1:
            raise ValueError("the scripted operator (--scripted, --intervene-prob) plays single-cube tasks only, "
                             "e.g. cube-single-play-singletask-task1-v0")  # fmt: skip
        self._oracle = CubeMarkovOracle(env=env)

    def _with_goal(self, info: dict) -> dict:
        target = self._env._cube_target_mocap_ids[0]
        yaw = self._lie.SO3(wxyz=self._env._data.mocap_quat[target]).compute_yaw_radians()
        return {**info, "privileged/target_block": 0, "privileged/target_block_pos": self._env._data.mocap_pos[target].copy(),
                "privileged/target_block_yaw": np.array([yaw])}  # fmt: skip

    def reset(self, obs, info: dict) -> None:
        self._oracle.reset(obs, self._with_goal(info))

    def act(self, obs, info: dict) -> np.ndarray:
        return np.clip(np.asarray(self._oracle.select_action(obs, self._with_goal(info)), np.float32), -1.0, 1.0)


# --- the recorder ---------------------------------------------------------------------------


class Recorder:
    """Finished episodes as one row-layout dataset file (see the module docstring)."""

    KEYS = ("observations", "actions", "rewards", "masks", "terminals", "success", "interventions")

    def __init__(self, path: str | os.PathLike, chunk_len: int, log=print):
        self.path, self.chunk_len = Path(path), chunk_len
        if self.path.suffix != ".npz":
            raise ValueError(f"--record must name an .npz file (what `lps train --dataset` reads), got {self.path}")
        self.columns: dict[str, list[np.ndarray]] = {k: [] for k in self.KEYS}
        if self.path.exists():
            try:
                recording = np.load(self.path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:  # not an npz at all (numpy's own text says "pickled")
                raise ValueError(f"{self.path} exists but is not an .npz file ({type(e).__name__}); choose another "
                                 "--record file, or move this one away") from None  # fmt: skip
            with recording as f:
                missing = [k for k in self.KEYS if k not in f.files]
                if missing:
                    raise ValueError(f"{self.path} exists but is not a robot-sim recording (no {missing}); "
                                     "choose another --record file")  # fmt: skip
                for k in self.KEYS:
                    self.columns[k].append(f[k])
            log(f"[lps robot-sim] appending to {self.path} ({self.episodes} episodes there)")

    @property
    def episodes(self) -> int:
        return int(sum(np.sum(t) for t in self.columns["terminals"]))

    def add(self, message: dict, success: bool) -> None:
        """One finished episode (an `Episode.message`), then the whole file rewritten atomically."""
        steps = len(message["actions"])
        if steps <= self.chunk_len:
            return  # too short to label (and to train on): as the learner refuses it
        labels = semi_sparse_labels(steps, success, self.chunk_len)
        row = {"observations": message["observations"], "actions": message["actions"], **labels,
               "success": np.full(steps, success), "interventions": message["interventions"]}  # fmt: skip
        for k in self.KEYS:
            self.columns[k].append(np.asarray(row[k]))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(self.path) as f:
            np.savez(f, **{k: np.concatenate(v) for k, v in self.columns.items()})


# --- playing episodes -----------------------------------------------------------------------


def play_episodes(policy: PolicyClient | None, env, episodes: int, seed: int = 0, max_steps: int | None = None,
                  log=print, operator=None, intervene_prob: float = 0.0, recorder: Recorder | None = None,
                  chunk_len: int = DEFAULT_CHUNK_LEN, send: bool = True, wait: bool = False) -> list[dict]:  # fmt: skip
    """Play `episodes` episodes of a gymnasium-style `env` (reset(seed=) -> (obs, info); step(a) ->
    (obs, reward, terminated, truncated, info) with info["success"]) through the served `policy`
    (None: the `operator` plays every step), each sent to the server on its end and added to the
    `recorder` (`send=False`: kept from the server, to measure the served policy without training
    it). With an `operator` and `intervene_prob` p, each chunk is the operator's with
    probability p. `wait`: after sending an episode, wait until the server's learner has trained on
    it (as a robot waits between rollouts while the updates run), so every episode is played by the
    weights of all the episodes before it. Returns one {"success", "steps", "interventions",
    "policy_version", "ack"} per episode."""
    if policy is None and operator is None:
        raise ValueError("play_episodes needs a served policy, an operator, or both")
    if not 0.0 <= intervene_prob <= 1.0:
        raise ValueError(f"--intervene-prob must lie in [0, 1], got {intervene_prob}")
    rng = np.random.default_rng(seed)  # the operator's takeover draws: reproducible per seed
    results = []
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        if operator is not None:
            operator.reset(obs, info)
        success, steps, done = False, 0, False
        ep = Episode(policy)
        # Sent as aborted if the env or the server fails mid-episode; a scripted one has no server.
        sending = policy is not None and send
        with ep if sending else contextlib.nullcontext():
            while not done:
                takeover = operator is not None and (policy is None or rng.random() < intervene_prob)
                chunk = None if takeover else ep.act(_observation(obs))
                for k in range(chunk_len if takeover else len(chunk)):
                    action = operator.act(obs, info) if takeover else np.clip(chunk[k], -1.0, 1.0)
                    ep.record(_observation(obs), action, intervention=takeover)
                    obs, _, terminated, truncated, info = env.step(action)
                    steps += 1
                    success = bool(info.get("success", False))
                    done = terminated or truncated or success or (max_steps is not None and steps >= max_steps)
                    if done:
                        break
            ack = ep.finish(success=success) if sending else None
            if recorder is not None:
                recorder.add(ep.message("success" if success else "failure"), success)
        if sending and wait:
            policy.wait_for_learner()
        version = policy.last_policy_version if policy is not None else None
        results.append({"success": success, "steps": steps, "interventions": int(np.sum(ep.interventions)),
                        "policy_version": version, "ack": ack})  # fmt: skip
        took = f", operator {results[-1]['interventions']} steps" if operator is not None and policy is not None else ""
        served = f", policy_version {version}" if policy is not None else ""
        log(f"[lps robot-sim] episode {i + 1}/{episodes}: {'success' if success else 'failure'} in {steps} steps"
            f"{took}{served}")  # fmt: skip
    return results


def _observation(obs) -> np.ndarray:
    """What the policy takes: float32 state vectors, uint8 images as rendered."""
    obs = np.asarray(obs)
    return obs if obs.dtype == np.uint8 else obs.astype(np.float32)


def make_env(task: str):
    """The OGBench task's environment (e.g. cube-single-play-singletask-task1-v0)."""
    try:
        import ogbench  # noqa: F401  (registers the environments)
    except ImportError as e:
        raise ImportError(f'lps robot-sim needs OGBench: pip install "lps[ogbench]" ({e})') from e

    return make_gym_env(tasks.parse_task(task).env_id)


def simulate(task: str, url: str | None = None, *, episodes: int = 10, token: str | None = None, seed: int = 0,
             max_steps: int | None = None, intervene_prob: float = 0.0, scripted: bool = False, send: bool = True,
             wait: bool = True, record: str | None = None, chunk_len: int | None = None) -> list[dict]:  # fmt: skip
    """`lps robot-sim`: play `episodes` of the OGBench `task` with the policy served at `url` (or,
    `scripted`, the operator alone), recording them to `record` when given; `play_episodes`'s results.
    `wait`: between episodes, for the learner of a server that learns; `chunk_len`: of the
    recording's labels (default: the server's; DEFAULT_CHUNK_LEN when scripted)."""
    env = make_env(task)
    operator = CubeOperator(env) if scripted or intervene_prob > 0 else None
    try:
        if scripted:
            recorder = Recorder(record, chunk_len or DEFAULT_CHUNK_LEN) if record else None
            return play_episodes(None, env, episodes, seed, max_steps, operator=operator, recorder=recorder,
                                 chunk_len=chunk_len or DEFAULT_CHUNK_LEN)  # fmt: skip
        with PolicyClient(url, token=token) as policy:
            chunk_len = chunk_len or int(policy.spec()["chunk_len"])
            recorder = Recorder(record, chunk_len) if record else None
            learns = isinstance(policy.spec().get("learning"), dict)
            return play_episodes(policy, env, episodes, seed, max_steps, operator=operator,
                                 intervene_prob=intervene_prob, recorder=recorder, chunk_len=chunk_len,
                                 send=send, wait=learns and wait)  # fmt: skip
    finally:
        env.close()
