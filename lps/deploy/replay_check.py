"""`lps serve-replay URL EPISODE`: drive a running `lps serve` with a recorded episode's
observations and print how far its chunks are from the recorded actions; see docs/serving.md
("Replay check").

    lps serve-replay ws://127.0.0.1:8000 demos.npz --episode 3          # a row-layout npz (docs/data.md)
    lps serve-replay ws://robot-pc:8000 demos/success/ep_007.h5        # a DROID-style episode

A chunk is asked for every H steps (`--stride`) and compared over its length: per-dimension MSE
and largest absolute error, plus round-trip latency. Episode readers are picked by file suffix
(`EPISODE_READERS`: add one there for another format).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lps.client import PolicyClient
from lps.data.validate import DatasetError, read_npz


@dataclasses.dataclass
class RecordedEpisode:
    """A recorded episode to replay (not `lps.client.Episode`, a live one): observations (an array
    or a nested dict of arrays, rows on the leading axis) and the recorded action taken at each of
    those rows."""

    observations: Any
    actions: np.ndarray
    source: str

    def __post_init__(self):
        self.actions = np.asarray(self.actions, np.float32)
        if self.actions.ndim != 2 or len(self.actions) == 0:
            raise ValueError(
                f"{self.source}: recorded actions must be (steps > 0, action_dim), got {self.actions.shape}"
            )
        for key, rows in _leaves(self.observations):
            if len(rows) < len(self.actions):
                raise ValueError(
                    f"{self.source}: observations{key} has {len(rows)} rows for {len(self.actions)} actions"
                )

    def observation(self, t: int) -> Any:
        return _take(self.observations, t)


def _leaves(obs: Any, prefix: str = ""):
    if isinstance(obs, dict):
        for key, value in obs.items():
            yield from _leaves(value, f"{prefix}.{key}")
    else:
        yield prefix, obs


def _take(obs: Any, t: int | slice) -> Any:
    """Row(s) `t` of every array of an observation (nested dicts: robot cameras by name)."""
    if isinstance(obs, dict):
        return {key: _take(value, t) for key, value in obs.items()}
    return np.asarray(obs[t])


# --- episode readers ----------------------------------------------------------------------------


def read_npz_episode(path: str, index: int = 0, run_dir: str | None = None,
                     robot_data: dict | None = None) -> RecordedEpisode:  # fmt: skip
    """Episode `index` of a row-layout npz (docs/data.md). Dict observations may be
    stored as keys `observations/<name>`."""
    arrays = read_npz(path, ("actions", "terminals"))
    if "observations" in arrays:
        observations: Any = arrays["observations"]
    else:
        observations = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("observations/")}
        if not observations:
            raise DatasetError(
                f"{path} has neither 'observations' nor 'observations/<name>' arrays; it has {sorted(arrays)}"
            )
    return episode_from_rows(observations, arrays["actions"], arrays["terminals"], index, path)


def read_h5_episode(path: str, index: int = 0, run_dir: str | None = None,
                    robot_data: dict | None = None) -> RecordedEpisode:  # fmt: skip
    """A DROID-style `.h5` episode through the robot-data loader `lps.data.robot.read_episode`,
    read with the data settings (cameras, image size, key names) of the run `run_dir`, else those
    the server reports (`robot_data` in its spec), else the loader's defaults."""
    if index != 0:
        raise ValueError(f"{path} is one episode; --episode does not apply to .h5 files")
    try:
        from lps.data import robot
    except ImportError as e:
        raise ImportError(
            f"replaying {path} needs the robot-data loader lps.data.robot and h5py ({e}); update lps and "
            "`pip install h5py`, or replay a row-layout .npz episode instead"
        ) from e
    if run_dir is not None:
        from lps.training.config import load_config

        settings = load_config(run_dir)[1].robot
    elif robot_data is not None:
        try:
            settings = robot.RobotDataConfig(**robot_data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"the server's robot data settings do not fit this lps version ({e}); pass --run") from e
    else:
        settings = robot.RobotDataConfig()
    rows = robot.read_episode(path, settings, chunk_len=1)
    return episode_from_rows(rows["observations"], rows["actions"], rows["terminals"], 0, path)


def episode_from_rows(observations: Any, actions: np.ndarray, terminals: np.ndarray, index: int,
                      path: str) -> RecordedEpisode:  # fmt: skip
    """Episode `index` of row-layout arrays. Its last row is the final observation, whose action
    is unused (as in training), so it is not replayed."""
    ends = np.flatnonzero(np.asarray(terminals).astype(bool))
    if not 0 <= index < len(ends):
        raise ValueError(f"{path} holds {len(ends)} episode(s); --episode must be in 0..{len(ends) - 1}, got {index}")
    start, end = (int(ends[index - 1]) + 1 if index else 0), int(ends[index])  # rows start..end, end terminal
    if end == start:
        raise ValueError(f"{path}: episode {index} is a single row; nothing to replay")
    rows = slice(start, end)
    return RecordedEpisode(_take(observations, rows), np.asarray(actions)[rows], f"{path} episode {index}")


EPISODE_READERS: dict[str, Callable[..., RecordedEpisode]] = {
    ".npz": read_npz_episode,
    ".h5": read_h5_episode,
    ".hdf5": read_h5_episode,
}


def read_recorded_episode(path: str | os.PathLike, index: int = 0, run_dir: str | None = None,
                          robot_data: dict | None = None) -> RecordedEpisode:  # fmt: skip
    """Episode `index` of an episode file, by suffix (`EPISODE_READERS`)."""
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    if suffix not in EPISODE_READERS:
        raise ValueError(f"cannot replay {path}: episode files end in {', '.join(EPISODE_READERS)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"episode file not found: {path}")
    return EPISODE_READERS[suffix](path, index, run_dir, robot_data)


# --- the check -----------------------------------------------------------------------------------


def replay(act: Callable[[Any], np.ndarray], episode: RecordedEpisode, chunk_len: int, stride: int | None = None,
           max_queries: int | None = None) -> dict:  # fmt: skip
    """Query `act` along the episode and compare its chunks with the recorded actions.

    Returns `queries`, `steps` (compared action rows), `mse` and `max_abs` overall, and per action
    dimension `mse_per_dim` and `max_abs_per_dim` (lists)."""
    stride = chunk_len if stride is None else stride
    if stride < 1 or chunk_len < 1:
        raise ValueError(f"stride and chunk length must be at least 1, got {stride} and {chunk_len}")
    steps = len(episode.actions)
    starts = list(range(0, steps, stride))[:max_queries]
    diffs = []
    for t in starts:
        chunk = np.asarray(act(episode.observation(t)), np.float32)
        if chunk.ndim != 2 or chunk.shape[1] != episode.actions.shape[1]:
            raise ValueError(
                f"the policy returns chunks of shape {list(chunk.shape)} but {episode.source} records "
                f"{episode.actions.shape[1]}-D actions: is this the run trained on these demonstrations?"
            )
        k = min(chunk_len, len(chunk), steps - t)
        diffs.append(chunk[:k] - episode.actions[t : t + k])
    diff = np.concatenate(diffs).astype(np.float64)
    return {
        "queries": len(starts),
        "steps": len(diff),
        "mse": float(np.mean(diff**2)),
        "max_abs": float(np.max(np.abs(diff))),
        "mse_per_dim": np.mean(diff**2, axis=0).tolist(),
        "max_abs_per_dim": np.max(np.abs(diff), axis=0).tolist(),
    }


def replay_against_server(
    url: str,
    episode: RecordedEpisode | str | os.PathLike,
    index: int = 0,
    run_dir: str | None = None,
    stride: int | None = None,
    max_queries: int | None = None,
    timeout: float = 60.0,
) -> dict:
    """`replay` through `lps.client.PolicyClient`, with the round-trip latency and the episode's
    name added. `episode` is a RecordedEpisode or a file (read after asking the server for its
    spec, whose robot data settings read .h5 episodes when no `run_dir` is given)."""
    round_trips: list[float] = []
    with PolicyClient(url, timeout=timeout) as client:
        spec = client.spec()
        if not isinstance(episode, RecordedEpisode):
            episode = read_recorded_episode(episode, index, run_dir, spec.get("robot_data"))

        def act(obs):
            chunk = client.act(obs)
            round_trips.append(client.last_round_trip_ms)
            return chunk

        result = replay(act, episode, int(spec["chunk_len"]), stride, max_queries)
    p50, p99 = np.percentile(round_trips, [50, 99])
    return result | {"round_trip_ms_p50": float(p50), "round_trip_ms_p99": float(p99), "episode": episode.source}


def format_result(result: dict) -> str:
    lines = [
        f"[lps serve-replay] {result['episode']}: {result['queries']} chunks, {result['steps']} action steps compared",
        f"  mse {result['mse']:.6g}   max |error| {result['max_abs']:.6g}   "
        f"round trip p50 {result['round_trip_ms_p50']:.2f} ms, p99 {result['round_trip_ms_p99']:.2f} ms",
        "  dim        mse   max |error|",
    ]
    for d, (mse, mx) in enumerate(zip(result["mse_per_dim"], result["max_abs_per_dim"])):
        lines.append(f"  {d:3d} {mse:10.4g} {mx:13.4g}")
    return "\n".join(lines)

