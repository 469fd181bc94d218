"""`lps serve-replay URL EPISODE`: drive a running `lps serve` with a recorded episode's
observations and print how far its chunks are from the recorded actions.

    lps serve-replay ws://127.0.0.1:8000 demos.npz --episode 3          # a row-layout npz (README)
    lps serve-replay ws://robot-pc:8000 demos/success/ep_007.h5 --run RUN   # a DROID-style episode

As deployed, the policy is asked for a chunk at step 0, its H actions are compared with the
recorded actions of steps 0..H-1, then it is asked again at step H, and so on (`--stride` asks more
often; every chunk is compared over its whole length, cut at the episode's end). The numbers are
the mean squared error and the largest absolute error per action dimension over every compared
step, plus the client's round-trip latency. Episode readers are picked by file suffix
(`EPISODE_READERS`); add one there for another format.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass
class Episode:
    """Observations (an array or a nested dict of arrays, rows on the leading axis) and the
    recorded action taken at each of those rows."""

    observations: Any
    actions: np.ndarray
    source: str

    def __post_init__(self):
        self.actions = np.asarray(self.actions, np.float32)
        if self.actions.ndim != 2 or len(self.actions) == 0:
            raise ValueError(f"{self.source}: recorded actions must be (steps > 0, action_dim), got {self.actions.shape}")
        for key, rows in _leaves(self.observations):
            if len(rows) < len(self.actions):
                raise ValueError(f"{self.source}: observations{key} has {len(rows)} rows for {len(self.actions)} actions")

    def observation(self, t: int) -> Any:
        return _take(self.observations, t)


def _leaves(obs: Any, prefix: str = ""):
    if isinstance(obs, dict):
        for key, value in obs.items():
            yield from _leaves(value, f"{prefix}.{key}")
    else:
        yield prefix, obs


def _take(obs: Any, t: int) -> Any:
    if isinstance(obs, dict):
        return {key: _take(value, t) for key, value in obs.items()}
    return np.asarray(obs[t])


# --- episode readers ----------------------------------------------------------------------------


def read_npz_episode(path: str, index: int = 0, run_dir: str | None = None) -> Episode:
    """Episode `index` of a row-layout npz (README "Your own dataset"). Its last row is the final
    observation, whose action is unused, so it is not replayed. Dict observations may be stored
    as keys `observations/<name>`."""
    from lps.data.validate import DatasetError, read_npz

    arrays = read_npz(path, ("actions", "terminals"))
    if "observations" in arrays:
        observations: Any = arrays["observations"]
    else:
        observations = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("observations/")}
        if not observations:
            raise DatasetError(f"{path} has neither 'observations' nor 'observations/<name>' arrays; it has {sorted(arrays)}")
    ends = np.flatnonzero(np.asarray(arrays["terminals"]).astype(bool))
    if not 0 <= index < len(ends):
        raise ValueError(f"{path} holds {len(ends)} episode(s); --episode must be in 0..{len(ends) - 1}, got {index}")
    start, end = (int(ends[index - 1]) + 1 if index else 0), int(ends[index])  # rows start..end, end terminal
    if end == start:
        raise ValueError(f"{path}: episode {index} is a single row; nothing to replay")
    rows = slice(start, end)
    obs = {k: v[rows] for k, v in observations.items()} if isinstance(observations, dict) else observations[rows]
    return Episode(obs, arrays["actions"][rows], f"{path} episode {index}")


def read_h5_episode(path: str, index: int = 0, run_dir: str | None = None) -> Episode:
    """A DROID-style `.h5` episode through the robot-data loader `lps.data.robot.read_episode`,
    with the run's data settings (cameras, image size, key names) when `run_dir` is given."""
    if index != 0:
        raise ValueError(f"{path} is one episode; --episode does not apply to .h5 files")
    try:
        from lps.data import robot
    except ImportError as e:
        raise ImportError(
            f"replaying {path} needs the robot-data loader lps.data.robot and h5py ({e}); install lps with its "
            "robot extra (pip install -e '.[robot]'), or replay a row-layout .npz episode instead"
        ) from e
    cfg = None
    if run_dir is not None:
        from lps.train import load_config

        cfg = load_config(run_dir)[1]
    raw = robot.read_episode(path, cfg)
    if isinstance(raw, dict):
        obs, actions = raw["observations"], raw["actions"]
    elif isinstance(raw, tuple):
        obs, actions = raw[0], raw[1]
    else:
        obs, actions = raw.observations, raw.actions
    return Episode(obs, actions, path)


EPISODE_READERS: dict[str, Callable[[str, int, str | None], Episode]] = {
    ".npz": read_npz_episode,
    ".h5": read_h5_episode,
    ".hdf5": read_h5_episode,
}


def read_episode(path: str | os.PathLike, index: int = 0, run_dir: str | None = None) -> Episode:
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    if suffix not in EPISODE_READERS:
        raise ValueError(f"cannot replay {path}: episode files end in {', '.join(EPISODE_READERS)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"episode file not found: {path}")
    return EPISODE_READERS[suffix](path, index, run_dir)


# --- the check -----------------------------------------------------------------------------------


def replay(act: Callable[[Any], np.ndarray], episode: Episode, chunk_len: int, stride: int | None = None,
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


def replay_against_server(url: str, episode: Episode, stride: int | None = None, max_queries: int | None = None,
                          timeout: float = 60.0) -> dict:  # fmt: skip
    """`replay` through `lps.client.PolicyClient`, with the round-trip latency added."""
    from lps.client import PolicyClient

    round_trips: list[float] = []
    with PolicyClient(url, timeout=timeout) as client:
        chunk_len = int(client.spec()["chunk_len"])

        def act(obs):
            chunk = client.act(obs)
            round_trips.append(client.last_round_trip_ms)
            return chunk

        result = replay(act, episode, chunk_len, stride, max_queries)
    p50, p99 = np.percentile(round_trips, [50, 99])
    return result | {"round_trip_ms_p50": float(p50), "round_trip_ms_p99": float(p99)}


def format_result(result: dict, source: str) -> str:
    lines = [
        f"[lps serve-replay] {source}: {result['queries']} chunks, {result['steps']} action steps compared",
        f"  mse {result['mse']:.6g}   max |error| {result['max_abs']:.6g}   "
        f"round trip p50 {result['round_trip_ms_p50']:.2f} ms, p99 {result['round_trip_ms_p99']:.2f} ms",
        "  dim        mse   max |error|",
    ]
    for d, (mse, mx) in enumerate(zip(result["mse_per_dim"], result["max_abs_per_dim"])):
        lines.append(f"  {d:3d} {mse:10.4g} {mx:13.4g}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lps serve-replay",
        description="Replay a recorded episode's observations to `lps serve` and print the action error "
        "(MSE and max |error| per dimension) against the recorded actions.",
    )
    p.add_argument("url", help="the server, e.g. ws://127.0.0.1:8000")
    p.add_argument("episode", help=f"an episode file: {', '.join(EPISODE_READERS)}")
    p.add_argument("--episode", dest="index", type=int, default=0, help="which episode of an .npz (0-based)")
    p.add_argument("--stride", type=int, default=None, help="steps between queries (default: the chunk length)")
    p.add_argument("--max-queries", type=int, default=None, help="stop after this many chunks")
    p.add_argument("--run", default=None, help="the served run directory (its data settings read .h5 episodes)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each reply")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    a = p.parse_args(argv)
    if a.stride is not None and a.stride < 1:
        p.error("--stride must be at least 1")
    if a.max_queries is not None and a.max_queries < 1:
        p.error("--max-queries must be at least 1")
    episode = read_episode(a.episode, a.index, a.run)
    try:
        result = replay_against_server(a.url, episode, a.stride, a.max_queries, a.timeout)
    except (ConnectionError, TimeoutError) as e:
        raise RuntimeError(str(e)) from e
    print(format_result(result, episode.source))
    if a.json:
        from lps.checkpoint import write_json

        write_json(a.json, result | {"episode": episode.source, "url": a.url})
    return 0
