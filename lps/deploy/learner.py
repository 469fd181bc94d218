"""Online fine-tuning behind the policy server: `lps serve RUN --learn [--token T]`; see
docs/fine-tuning-on-a-robot.md.

For each episode the robot sends (`lps.client.Episode`) the learner validates it against the
served spec and the training data's range (`--range-margin`), writes it atomically to
`<run>/learner/episodes/<outcome>/<seq>-<id>.h5|.npz` (the robot folder's own layout for HDF5
data), then in a background thread labels it (`read_episode_rows`), appends it to the replay
buffer, runs the updates and swaps the served weights (`policy_version` + 1) if all stayed finite,
else quarantines it. `<run>/learner/checkpoint.msgpack` plus the episode files rebuild the buffer
exactly on restart. Aborted episodes are stored, never trained on.
"""

from __future__ import annotations

import collections
import dataclasses
import hmac
import json
import os
import queue
import re
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lps.client import ProtocolError
from lps.data import normalize, replay
from lps.data.robot import layout_of, read_episode, semi_sparse_labels, write_rows_episode
from lps.data.sampler import chunk_starts
from lps.deploy.messages import flatten, key_paths, nest, nest_paths
from lps.files import atomic_write, atomic_writer
from lps.training import checkpoint
from lps.training.config import load_config
from lps.training.diagnostics import make_diagnose
from lps.training.plan import resolve
from lps.training.setup import build_agent_for, load_data
from lps.training.update import create_state, make_multi_update, make_optimizer, make_update

LEARNER_DIR = "learner"
METRICS = "metrics.jsonl"  # one diagnostics row per trained episode (lps.training.diagnostics)
# The diagnostics in the per-episode log line (all of them are in learner/metrics.jsonl).
LOGGED = ("success/last10", "offline/q_data", "online/q_data", "offline/td", "online/td", "online/bc", "shift/offline")
EPISODES_DIR = "episodes"
OUTCOMES = ("success", "failure", "aborted")
EPISODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # matched whole (fullmatch): no trailing newline
EPISODE_KEYS = {"type", "id", "token", "outcome", "observations", "actions", "interventions"}
QUARANTINE_DIR = "quarantine"  # episodes that could not be trained on, each with a .reason.json


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    token: str
    """Episodes are accepted only from clients presenting this token."""
    utd: float = 10.0
    """Gradient updates per received environment step (the release's robot recipe: 10 x episode steps)."""
    batch_size: int = 128
    """Batch of the online updates (the release's 128: 64 offline + 64 online chunks); 0: the run's --batch-size."""
    start_episodes: int = 4
    """Updates start once this many trainable episodes have arrived (the release: more than 3); the
    episodes before add their rows to the buffer but owe no updates, so a first failure cannot fill
    half of every batch on its own."""
    lr: float = 0.0
    """Learning rate of the online updates; 0: the run's --lr (its peak, under a cosine schedule)."""
    lr_schedule: Literal["restart", "continue"] = "restart"
    """restart: a constant --lr for the online updates, Adam's state going on from the offline run
    (the release rebuilds its schedule online); continue: the offline schedule goes on past its end
    (under --lr-schedule cosine every online update then runs at lr / 10)."""
    failures: Literal["timeout", "penalty"] = "timeout"
    """How a failed episode is labelled. timeout: it was cut off, not ended: -1 per step and its
    last chunk bootstraps from the value of where it stopped (a robot's state does not show the
    clock, so a penalty at a time limit is noise the critic cannot fit); penalty: the paper's
    semi-sparse failure reward (--failure-reward) at step T - H, masks 0 after (the release)."""
    clone: Literal["successes", "all"] = "successes"
    """Which online rows the base policy clones: successes (successful episodes and operator
    takeovers; failed episodes train the critic only) or all (the release)."""
    range_margin: float = 2.0
    """Incoming states and actions may leave the training data's per-dimension range by this many
    times its width on either side (width at least 1, or a tenth of the values' size); further out
    an episode is refused as a glitch, naming the dimension. inf: no range check."""
    mix: str = "balanced"
    """Batches: balanced = half offline, half online (the paper's robot recipe); buffer = uniform."""
    buffer_rows: int = 100_000
    """Online rows the replay buffer holds (beside the offline data)."""
    max_steps: int = 2000
    """Longest episode accepted."""
    update_block: int = 50
    """Updates per compiled dispatch (the remainder of an episode's updates carries over)."""
    dataset: str | None = None
    """The offline data of the balanced batches (default: the run's own --dataset / task data)."""
    skip_bad: bool = False
    """Skip bad episodes of a --dataset folder (listed) instead of refusing it."""

    def __post_init__(self):
        if not self.token:
            raise ValueError("the learner needs a token (--token or $LPS_TOKEN): it accepts data that changes the policy")
        if self.utd <= 0 or self.update_block < 1 or self.max_steps < 2 or self.buffer_rows < 1:
            raise ValueError("--utd must be > 0, --update-block, --max-steps and --buffer-rows positive")
        if not self.range_margin >= 0:
            raise ValueError(f"--range-margin must be >= 0 (inf: no check), got {self.range_margin}")
        if self.batch_size < 0 or self.start_episodes < 1 or self.lr < 0:
            raise ValueError("--batch-size must be >= 0 (0: the run's), --start-episodes >= 1 and --lr >= 0 (0: the run's)")
        if self.lr_schedule not in ("restart", "continue"):
            raise ValueError(f"--lr-schedule must be restart or continue, not {self.lr_schedule!r}")
        if self.failures not in ("timeout", "penalty"):
            raise ValueError(f"--failures must be timeout or penalty, not {self.failures!r}")
        if self.clone not in ("successes", "all"):
            raise ValueError(f"--clone must be successes or all, not {self.clone!r}")
        if self.mix not in replay.MIXES:
            raise ValueError(f"--online-mix must be one of {', '.join(replay.MIXES)}, not {self.mix!r}")


class LearnerState(struct.PyTreeNode):
    train: Any  # lps.training.update.TrainState
    update_debt: jax.Array  # float32: updates owed to received steps, below one block
    episodes_trained: jax.Array  # int32: episode files (arrival order) in the buffer and trained on
    policy_version: jax.Array  # int32: the version these weights were served as (never reused)


# --- episodes: validation and files ---------------------------------------------------------


def _leaves(spec: dict, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], dict]:
    """{(): spec} for an array spec, else {("state",): ..., ("image", "front"): ...}: each array
    spec of a (nested) dict spec by its key path (tuples: a camera may have a "." in its name)."""
    if "shape" in spec and not isinstance(spec["shape"], dict):
        return {path: spec}
    out = {}
    for key, sub in spec.items():
        out.update(_leaves(sub, (*path, str(key))))
    return out


def validate_episode(request: dict, obs_spec: dict, action_dim: int, chunk_len: int, max_steps: int,
                     robot_units: bool = False) -> dict:  # fmt: skip
    """The episode of an `{"type": "episode", ...}` request as host arrays, or a ValueError naming
    what is wrong: {"id", "outcome", "observations" (array or dict of (T, ...) arrays),
    "actions" (T, A) float32, "interventions" (T,) bool}. `robot_units`: a normalised run's
    episode, in the robot's units (no [-1, 1] range to check)."""
    unknown = sorted(map(str, set(request) - EPISODE_KEYS))
    if unknown:
        raise ValueError(f"unknown episode field(s) {unknown}; an episode has {sorted(EPISODE_KEYS)}")
    episode_id = request.get("id")
    if not isinstance(episode_id, str) or not EPISODE_ID.fullmatch(episode_id):
        raise ValueError(f"'id' must be a string of 1-64 letters, digits, '-' or '_' (got {episode_id!r})")
    outcome = request.get("outcome")
    if outcome not in OUTCOMES:
        raise ValueError(f"'outcome' must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
    actions = request.get("actions")
    if not isinstance(actions, np.ndarray) or actions.dtype.kind != "f" or actions.ndim != 2:
        raise ValueError(f"'actions' must be a float array (steps, {action_dim})")
    steps = len(actions)
    if actions.shape[1] != action_dim:
        raise ValueError(f"'actions' has {actions.shape[1]} dims per step; the policy's actions have {action_dim}")
    if not np.isfinite(actions).all():
        raise ValueError(f"'actions' holds NaN/inf at step {int(np.argwhere(~np.isfinite(actions))[0][0])}")
    worst = float(np.max(np.abs(actions))) if steps and not robot_units else 0.0
    if worst > 1.0 + 1e-5:
        raise ValueError(f"'actions' must lie in [-1, 1] (the policy's range) but reach {worst:.4g}")
    if steps == 0:
        raise ValueError("the episode has no steps; nothing to store (send episodes with at least one recorded step)")
    if outcome != "aborted" and steps <= chunk_len:
        raise ValueError(f"the episode has {steps} steps; a trainable one needs more than the chunk length {chunk_len}")
    if steps > max_steps:
        raise ValueError(f"the episode has {steps} steps; this learner accepts at most {max_steps} (--max-steps)")
    flags = request.get("interventions", np.zeros(steps, bool))
    flags = np.asarray(flags)
    if flags.dtype.kind not in "biu":
        raise ValueError(f"'interventions' must be booleans (or 0/1 integers), got dtype {flags.dtype}")
    if flags.shape != (steps,):
        raise ValueError(f"'interventions' must be {steps} booleans (one per step), got shape {list(flags.shape)}")
    raw = request.get("observations")
    specs = _leaves(obs_spec)
    if list(specs) == [()]:
        observations = _check_obs_column(raw, specs[()], steps, "observations")
        return {"id": episode_id, "outcome": outcome, "observations": observations,
                "actions": actions.astype(np.float32), "interventions": flags.astype(bool)}  # fmt: skip
    arrays = key_paths(raw) if isinstance(raw, dict) else None
    if arrays is None or sorted(arrays) != sorted(specs):
        got = sorted(map(".".join, arrays)) if arrays is not None else type(raw).__name__
        raise ValueError(f"'observations' must be a dict with entries {sorted(map('.'.join, specs))}, got {got}")
    observations = nest_paths({path: _check_obs_column(arrays[path], sub, steps, "observations." + ".".join(path))
                               for path, sub in specs.items()})  # fmt: skip
    return {"id": episode_id, "outcome": outcome, "observations": observations,
            "actions": actions.astype(np.float32), "interventions": flags.astype(bool)}  # fmt: skip


def _check_obs_column(arr: Any, spec: dict, steps: int, where: str) -> np.ndarray:
    shape = (steps, *spec["shape"])
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise ValueError(f"'{where}' must be a numeric array of shape {list(shape)}")
    if arr.shape != shape:
        raise ValueError(f"'{where}' must have shape {list(shape)} (one observation per step), got {list(arr.shape)}")
    if spec.get("dtype") == "uint8" and arr.dtype != np.uint8:
        raise ValueError(f"'{where}' must be uint8, got {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"'{where}' holds NaN/inf values")
    return arr.astype(np.uint8 if spec.get("dtype") == "uint8" else np.float32)


def data_bounds(data: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-dimension (min, max) of the training data's state vectors and actions, in the units the
    networks see (normalised for a --normalize run): what `check_ranges` compares episodes with."""
    obs = data["observations"]
    states = obs.get("state") if isinstance(obs, dict) else obs
    bounds = {"actions": (np.min(data["actions"], 0), np.max(data["actions"], 0))}
    if states is not None and np.ndim(states) == 2 and len(states):
        bounds["state"] = (np.min(states, 0), np.max(states, 0))
    return bounds


def check_ranges(episode: dict, bounds: dict, margin: float, stats: dict | None = None) -> None:
    """Refuse (ValueError naming the dimension, the step and the value) an episode whose states or
    actions leave the training data's range by more than `margin` times its width: a glitching
    sensor or actions in the wrong units, which would otherwise reach the weights."""
    if margin == float("inf"):
        return
    obs = episode["observations"]
    columns = {"actions": episode["actions"], "state": obs.get("state") if isinstance(obs, dict) else obs}
    for name, (low, high) in bounds.items():
        values = np.asarray(columns.get(name), np.float64)
        if values.ndim != 2:
            continue
        if stats is not None and (name == "actions" or name in stats):  # compared in the data's (normalised) units
            values = normalize.apply(values, stats["action" if name == "actions" else name])
        span = np.maximum(high - low, np.maximum(0.1 * np.maximum(np.abs(low), np.abs(high)), 1.0))
        lo, hi = low - margin * span, high + margin * span
        bad = (values < lo) | (values > hi)
        if bad.any():
            step, dim = (int(i) for i in np.argwhere(bad)[0])
            raw = np.asarray(columns[name], np.float64)[step, dim]
            where = "'actions'" if name == "actions" else "'observations.state'" if isinstance(obs, dict) else "'observations'"
            units = " (normalised with the run's statistics)" if stats is not None else ""
            raise ValueError(
                f"{where} dimension {dim} is {raw:.4g} at step {step}, far outside the training data's range "
                f"[{low[dim]:.4g}, {high[dim]:.4g}]{units} (accepted: [{lo[dim]:.4g}, {hi[dim]:.4g}] with "
                f"--range-margin {margin:g}); a glitching sensor or other units? Fix the data, or widen --range-margin"
            )


def write_episode_file(path: Path, episode: dict, layout=None, robot_cfg=None) -> None:
    """One episode, written to a temporary file and renamed (never half a file): in the offline
    HDF5 folder's own layout (`layout`, a `lps.data.robot.EpisodeLayout`) for a .h5 path, else
    an npz."""
    if path.suffix == ".h5":
        obs = episode["observations"]
        write_rows_episode(path, layout, obs["state"], episode["actions"], obs["image"], robot_cfg,
                           {"interventions": episode["interventions"]}, {"id": episode["id"], "outcome": episode["outcome"]})  # fmt: skip
        return
    obs = episode["observations"]
    arrays = {f"observations/{k}": v for k, v in flatten(obs).items()} if isinstance(obs, dict) else {"observations": obs}
    arrays.update(actions=episode["actions"], interventions=episode["interventions"],
                  outcome=np.array(episode["outcome"]), id=np.array(episode["id"]))  # fmt: skip
    with atomic_writer(path) as f:
        np.savez(f, **arrays)


def read_episode_rows(path: Path, chunk_len: int, robot_cfg, stats: dict | None = None, clone: str = "all",
                      failures: str = "penalty") -> dict:  # fmt: skip
    """An episode file in the row layout, labelled as offline robot episodes are (and normalised
    with the run's `stats`, as its offline data was). `failures`: how a failed episode is labelled
    (`LearnerConfig.failures`); `clone`: which rows the base policy clones (`bc_weights`): all, or
    successes (a failed episode's operator takeovers only)."""
    success = path.parent.name == "success"
    if path.suffix == ".h5":
        import h5py

        rows = read_episode(path, robot_cfg, chunk_len)
        with h5py.File(path, "r") as f:
            interventions = np.asarray(f["lps/interventions"], bool) if "lps/interventions" in f else None
    else:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        if "observations" in arrays:
            obs = arrays["observations"].astype(np.float32)
        else:
            obs = nest({k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("observations/")})
        rows = {"observations": obs, "actions": arrays["actions"].astype(np.float32)}
        interventions = arrays.get("interventions")
    steps = len(rows["actions"])
    rows.update(semi_sparse_labels(steps, success, chunk_len, robot_cfg, failure_ends=failures == "penalty"))
    if interventions is None or len(interventions) != steps:
        interventions = np.zeros(steps, bool)
    cloned = clone == "all" or success
    rows["bc_weights"] = np.where(cloned | np.asarray(interventions, bool), 1.0, 0.0).astype(np.float32)
    return normalize.apply_dataset(rows, stats) if stats is not None else rows


EPISODE_SUFFIXES = (".npz", ".h5")


def stored_files(folder: Path, outcomes=OUTCOMES) -> list[Path]:
    """The episode files under `folder`'s outcome subfolders, in arrival order (their seq prefix)."""
    files = [p for sub in outcomes for p in (folder / sub).glob("*") if p.suffix in EPISODE_SUFFIXES]
    return sorted(files, key=lambda p: p.name)


def episode_files(folder: Path) -> list[Path]:
    """The trainable (success/failure) episode files in arrival order."""
    return stored_files(folder, ("success", "failure"))


# --- the learner ----------------------------------------------------------------------------


class Learner:
    """Receives episodes (any connection thread), trains on them in its own thread, and swaps the
    weights the `server` serves after each one."""

    def __init__(self, server, run_dir: str | Path, lcfg: LearnerConfig, log=print, fresh: bool = False,
                 device: jax.Device | None = None):  # fmt: skip
        """`fresh`: start again from the offline weights (`lps serve RUN --learn --weights offline`):
        the learner's checkpoint is set aside (`learner/set-aside-<n>/`, nothing is deleted) and every
        stored episode is trained on again. `device`: where it trains (default: the acting device;
        `spare_device` finds another)."""
        self.server, self.cfg, self.log = server, lcfg, log
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / LEARNER_DIR
        self.episodes_dir = self.dir / EPISODES_DIR
        self.quarantine_dir = self.dir / QUARANTINE_DIR
        agent_name, train_cfg, agent_cfg, spec = load_config(run_dir)
        self.train_cfg = train_cfg
        self.agent = build_agent_for(agent_name, train_cfg, agent_cfg, spec)
        # The online phase's own learning rate (see LearnerConfig.lr_schedule): a constant rate, not
        # the offline schedule continued past its end; Adam's state is restored as it was.
        optimizer = make_optimizer(train_cfg, None if lcfg.lr_schedule == "continue" else lcfg.lr or train_cfg.lr)
        self.chunk_len = spec.chunk_len
        robot = dataclasses.replace(train_cfg.robot, skip_bad=train_cfg.robot.skip_bad or lcfg.skip_bad)
        data_cfg = dataclasses.replace(train_cfg, progress=False, dataset=lcfg.dataset or train_cfg.dataset,
                                       robot=robot)  # fmt: skip
        # A normalised run: episodes arrive in the robot's units and train normalised with the
        # run's own statistics, as the offline data (normalised here with those too) did.
        self.stats = normalize.load(run_dir)
        data = load_data(resolve(data_cfg), data_cfg, stats=self.stats)
        self.bounds = data_bounds(data)
        self.layout = _hdf5_layout(data_cfg)
        capacity = len(data["actions"]) + lcfg.buffer_rows
        self.device = device if device is not None else server.policy.device
        with jax.default_device(self.device):
            self.buffer = replay.create(data, self.chunk_len, capacity, frame_stack=self.agent.spec.frame_stack,
                                        bc_weights=True)  # fmt: skip
        self._online_sizes: collections.deque[tuple[int, int]] = collections.deque()  # (rows, starts) per online episode
        offline = checkpoint.restore(run_dir, create_state(self.agent, optimizer, train_cfg.seed))
        self.reference_params = jax.device_put(offline.params, self.device)  # the offline weights, for diagnostics
        zero = jnp.zeros((), jnp.int32)
        template = LearnerState(offline, jnp.zeros((), jnp.float32), zero, zero)
        state = self._restore(template, fresh)
        self.state = jax.device_put(jax.tree_util.tree_map(jnp.asarray, state), self.device)
        self.all_finite = jax.jit(all_finite)
        sampler = replay.make_sampler(lcfg.mix)
        batch_size = lcfg.batch_size or train_cfg.batch_size
        self._update = make_multi_update(make_update(self.agent, optimizer, batch_size, sampler), lcfg.update_block)
        self._diagnose = make_diagnose(self.agent, batch_size, lcfg.mix)
        self.metrics_path = self.dir / METRICS
        self._lock = threading.Lock()  # file names, ids and counters, across connection threads
        self.quarantined = len(list(self.quarantine_dir.glob("*.reason.json")))
        self.last_problem: str | None = None
        self._resume(int(offline.step))
        self._start_training_thread()

    def _resume(self, offline_step: int) -> None:
        """Rebuild the buffer and the queue from the stored episodes, and go on from the last
        policy version served (announced when something is resumed)."""
        trained, files = self._rebuild_buffer()
        stored = stored_files(self.episodes_dir) + [p for p in self.quarantine_dir.glob("*") if p.suffix in EPISODE_SUFFIXES]
        self._ids = {p.stem.split("-", 1)[1] for p in stored}
        self._seq = 1 + max((int(p.stem.split("-", 1)[0]) for p in stored), default=-1)
        self._episodes_done = trained
        self._pending = len(files) - trained  # received (queued or in training), not yet trained on
        if int(self.state.train.step) != offline_step or files:
            self.log(f"[lps learn] resumed: {trained} episode(s) in the buffer, {len(files) - trained} to train on, "
                     f"step {int(self.state.train.step)}, policy_version {int(self.state.policy_version)}")  # fmt: skip
        # Versions only go up, across restarts too: the server goes on from the last one served.
        resumed_version = int(self.state.policy_version)
        self.server.policy_version = max(self.server.policy_version, resumed_version)
        self._publish()
        if resumed_version:  # the version just served is kept too, should this process die before training
            checkpoint.save(self.dir, self.state)

    def _rebuild_buffer(self) -> tuple[int, list[Path]]:
        """The episodes already trained on back in the buffer, in arrival order (an unreadable one is
        quarantined), the rest queued; (episodes trained on, stored episode files)."""
        files = episode_files(self.episodes_dir)
        trained = int(self.state.episodes_trained)
        for path in files[:trained]:
            try:
                self._append(path)
            except Exception as e:  # noqa: BLE001 - an unreadable file must not stop the server
                self._quarantine(path, f"unreadable when rebuilding the buffer: {type(e).__name__}: {e}")
                trained -= 1  # its weights stay (they were good); the file no longer counts as trained on
        files = episode_files(self.episodes_dir)
        self.state = self.state.replace(episodes_trained=jnp.asarray(trained, jnp.int32))
        self._queue: queue.Queue[Path] = queue.Queue()
        for path in files[trained:]:
            self._queue.put(path)
        return trained, files

    def _start_training_thread(self) -> None:
        self._stop = threading.Event()
        self._idle = threading.Event()
        self.updates_run = 0
        self._busy = False  # the training thread is on an episode (status())
        self._failed: str | None = None  # why the training thread stopped, if it did
        self._outcomes: list[bool] = []  # of the episodes trained on by this process (the log's success rate)
        self._thread = threading.Thread(target=self._train_loop, name="lps-learner", daemon=True)
        self._thread.start()

    def _restore(self, template: LearnerState, fresh: bool) -> LearnerState:
        """The learner's checkpoint, or `template` (the offline weights) when there is none, when
        `fresh`, when it cannot be read, or when its weights are not finite (an older lps could save
        such). A checkpoint not used is set aside, never deleted; its policy version goes on."""
        if not checkpoint.exists(self.dir):
            return template
        try:
            state = restore_state(self.dir, template.train)
        except ValueError as e:
            state, reason = None, f"its checkpoint cannot be read ({e})"
        if state is not None and fresh:
            reason = "--weights offline"
        elif state is not None and not bool(all_finite(state.train.params)):
            reason = "its weights are not finite"
        elif state is not None:
            return state
        aside = self.dir / f"set-aside-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir(parents=True, exist_ok=True)
        for name in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS, METRICS):
            if (self.dir / name).exists():
                os.replace(self.dir / name, aside / name)
        self.log(f"[lps learn] {reason}: starting again from the offline weights; the learner's checkpoint moved to "
                 f"{aside} and every stored episode will be trained on again")  # fmt: skip
        version = int(state.policy_version) if state is not None else 0
        return template.replace(policy_version=jnp.asarray(version, jnp.int32))

    # --- receiving (connection threads) ---

    def receive(self, request: dict) -> dict:
        """Validate, store and queue one episode; the reply's fields (ValueError for a bad one)."""
        if not hmac.compare_digest(str(request.get("token", "")).encode(), self.cfg.token.encode()):
            raise ProtocolError("episode refused: missing or wrong 'token' (start the client with the server's --token)")
        spec = self.server.spec_message
        episode = validate_episode(request, spec["observation"], spec["action_dim"], self.chunk_len,
                                   self.cfg.max_steps, robot_units=self.stats is not None)  # fmt: skip
        check_ranges(episode, self.bounds, self.cfg.range_margin, self.stats)
        with self._lock:
            if episode["id"] in self._ids:
                return {"type": "episode_ack", "id": episode["id"], "duplicate": True}
            suffix = ".h5" if self.layout is not None else ".npz"
            path = self.episodes_dir / episode["outcome"] / f"{self._seq:08d}-{episode['id']}{suffix}"
            try:
                write_episode_file(path, episode, self.layout, self.train_cfg.robot)  # on disk before it counts as received
            except OSError as e:
                raise ValueError(f"the server could not store the episode ({e}); it was not accepted: resend it") from e
            self._seq += 1
            self._ids.add(episode["id"])
            trainable = episode["outcome"] != "aborted"
            if trainable and self._failed is None:
                self._idle.clear()
                self._pending += 1
                self._queue.put(path)
        steps = len(episode["actions"])
        self.log(f"[lps learn] episode {episode['id']}: {episode['outcome']}, {steps} steps -> {path.name}")
        ack = {"type": "episode_ack", "id": episode["id"], "duplicate": False, "steps": steps,
               "trained": trainable and self._failed is None, "queued": self._pending}  # fmt: skip
        if trainable and self._failed is not None:
            ack["reason"] = f"stored, but the learner has stopped ({self._failed}); restart the server to train on it"
        return ack

    def episode_message_bytes(self) -> int:
        """The size of the largest episode message `--max-steps` admits (msgpack: the arrays' bytes
        plus a margin for keys and headers), so the server can accept it."""
        per_step = 4 * int(self.server.spec_message["action_dim"]) + 1  # float32 actions, a bool flag
        for spec in _leaves(self.server.spec_message["observation"]).values():
            per_step += int(np.prod(spec["shape"])) * (1 if spec.get("dtype") == "uint8" else 8)  # float64 at worst
        return int(self.cfg.max_steps * per_step * 1.05) + (1 << 16)

    def status(self) -> dict:
        """The spec's `learning` block: the settings, the learner's state ("training", "idle" or
        "failed: why"), the episodes trained on, queued and quarantined, and the last problem."""
        state = f"failed: {self._failed}" if self._failed else "training" if self._busy or self._pending else "idle"
        return {"state": state, "utd": self.cfg.utd, "online_mix": self.cfg.mix, "max_steps": self.cfg.max_steps,
                "start_episodes": self.cfg.start_episodes, "episodes_trained": self._episodes_done,
                "queued": self._pending, "training": self._busy, "quarantined": self.quarantined,
                "last_problem": self.last_problem}  # fmt: skip

    # --- training (its own thread) ---

    def _append(self, path: Path) -> int:
        """The episode's rows into the buffer, the oldest online episodes dropped first when it is
        full (the offline data always stays)."""
        rows = read_episode_rows(path, self.chunk_len, self.train_cfg.robot, self.stats, self.cfg.clone,
                                 self.cfg.failures)  # fmt: skip
        n = len(rows["actions"])
        starts = len(chunk_starts(rows["terminals"], self.chunk_len))
        room = int(self.buffer.staging_start) - int(self.buffer.num_offline_rows)
        if n > room:
            raise ValueError(f"the episode has {n} rows but the buffer holds {room} online rows (--buffer-rows)")
        drop_rows = drop_starts = dropped = 0
        while int(self.buffer.num_rows) - drop_rows + n > int(self.buffer.staging_start):
            r, c = self._online_sizes.popleft()
            drop_rows, drop_starts, dropped = drop_rows + r, drop_starts + c, dropped + 1
        with jax.default_device(self.device):
            if dropped:
                self.buffer = replay.drop_oldest_online(self.buffer, jnp.asarray(drop_rows, jnp.int32),
                                                        jnp.asarray(drop_starts, jnp.int32))  # fmt: skip
                self.log(f"[lps learn] replay buffer full (--buffer-rows {self.cfg.buffer_rows}): dropped the oldest "
                         f"{dropped} online episode(s), {drop_rows} rows")  # fmt: skip
            self.buffer = replay.append(self.buffer, rows, self.chunk_len, self.cfg.max_steps)
        self._online_sizes.append((n, starts))
        return n

    def train_on(self, path: Path) -> None:
        """One episode: into the buffer, its updates (once `start_episodes` have arrived), then,
        if every loss and weight stayed finite, the swap, the checkpoint and a diagnostics row;
        otherwise the weights before it are kept and the episode is quarantined."""
        rows_before, starts_before = int(self.buffer.num_rows), int(self.buffer.num_starts)  # appending donates them
        steps = self._append(path)
        episode = int(self.state.episodes_trained) + 1
        debt = float(self.state.update_debt)
        if episode >= self.cfg.start_episodes:
            debt += self.cfg.utd * steps
        train = self.state.train
        step_before = int(train.step)
        kept = jax.tree_util.tree_map(jnp.copy, train) if debt >= self.cfg.update_block else train  # updates donate it
        problem = None
        while debt >= self.cfg.update_block and problem is None:
            train, metrics = self._update(train, self.buffer)
            debt -= self.cfg.update_block
            self.updates_run += self.cfg.update_block
            problem = _non_finite(metrics)
        if problem is None and int(train.step) != step_before and not bool(self.all_finite(train.params)):
            problem = "the weights became non-finite"
        if problem is not None:
            self.state = self.state.replace(train=kept)
            with jax.default_device(self.device):  # its rows unlisted (later appends overwrite them)
                self.buffer = self.buffer.replace(num_rows=jnp.asarray(rows_before, jnp.int32),
                                                  num_starts=jnp.asarray(starts_before, jnp.int32))  # fmt: skip
            self._online_sizes.pop()
            self._quarantine(path, f"training on it made {problem}; the weights before it are kept")
            return
        self.state = LearnerState(train, jax.device_put(jnp.asarray(debt, jnp.float32), self.device),
                                  self.state.episodes_trained + 1, self.state.policy_version)  # fmt: skip
        if int(train.step) != step_before:
            self._publish()
        checkpoint.save(self.dir, self.state)
        row = self._diagnostics(path, episode, steps)
        waiting = f" (updates start at episode {self.cfg.start_episodes})" if episode < self.cfg.start_episodes else ""
        self.log(f"[lps learn] trained on {path.name}: step {int(train.step)}, policy_version "
                 f"{int(self.state.policy_version)}{waiting}; " + ", ".join(f"{k} {row[k]:.3g}" for k in LOGGED if k in row))  # fmt: skip

    def _quarantine(self, path: Path, reason: str) -> None:
        """Move an episode file that cannot be trained on to `learner/quarantine/`, beside a
        `.reason.json`, and report it (the spec's `learning.last_problem`, the log)."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        dest = self.quarantine_dir / path.name
        atomic_write(dest.with_name(dest.name + ".reason.json"),
                     json.dumps({"file": str(path), "reason": reason, "time": time.time()}).encode())  # fmt: skip
        os.replace(path, dest)
        self.quarantined += 1
        self.last_problem = f"{path.name}: {reason}"
        self.log(f"[lps learn] quarantined {path.name} -> {dest}: {reason}")

    def _diagnostics(self, path: Path, episode: int, steps: int) -> dict:
        """One row of `learner/metrics.jsonl` (see `lps.training.diagnostics`): the episode, its
        outcome, the updates so far and the networks measured on offline and online data apart."""
        key = jax.random.fold_in(jax.random.PRNGKey(self.train_cfg.seed), episode)
        train = self.state.train
        measured = self._diagnose(train.params, train.target_params, self.reference_params, self.buffer, key)
        self._outcomes.append(path.parent.name == "success")
        row = {"episode": episode, "file": path.name, "outcome": path.parent.name, "steps": steps,
               "step": int(train.step), "success/last10": float(np.mean(self._outcomes[-10:])),
               **{k: float(v) for k, v in measured.items()}}  # fmt: skip
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({k: (v if v == v else None) if isinstance(v, float) else v for k, v in row.items()}) + "\n")
        return row

    def _publish(self) -> int:
        # A copy on the acting device: the next update donates (frees) the training state's buffers.
        # Wait for it here, in the training thread: dispatch is asynchronous, and weights swapped in
        # before the updates behind them finish would hold every robot request until they do.
        params = jax.device_put(jax.tree_util.tree_map(jnp.copy, self.state.train.params), self.server.policy.device)
        version = self.server.swap_params(jax.block_until_ready(params))
        self.state = self.state.replace(policy_version=jax.device_put(jnp.asarray(version, jnp.int32), self.device))
        return version

    def _train_loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    path = self._queue.get(timeout=0.05)
                except queue.Empty:
                    self._idle.set()
                    continue
                self._busy = True
                try:
                    self.train_on(path)
                    self._episodes_done = int(self.state.episodes_trained)
                except Exception as e:  # noqa: BLE001 - one bad episode must not stop the learner

                    self.log(traceback.format_exc())
                    self._quarantine(path, f"training on it failed: {type(e).__name__}: {e}")
                finally:
                    self._busy = False
                    with self._lock:
                        self._pending -= 1
        except BaseException as e:  # the thread itself failed: say so everywhere, never silently
            self._failed = f"{type(e).__name__}: {e}"
            self.log(f"[lps learn] the learner stopped: {self._failed}; the server keeps serving the last weights")
            raise

    def wait_idle(self, timeout: float = 300.0) -> bool:
        """Block until every queued episode is trained on (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.empty() and self._idle.wait(0.05) and self._queue.empty():
                return True
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def restore_state(folder: Path, offline_state) -> LearnerState:
    """The learner checkpoint in `folder`, shaped like `offline_state` (the run's TrainState). One
    saved before policy versions were kept goes on from its episodes' count."""
    zero = jnp.zeros((), jnp.int32)
    template = LearnerState(offline_state, jnp.zeros((), jnp.float32), zero, zero)
    try:
        return checkpoint.restore(folder, template)
    except ValueError:
        state = checkpoint.restore(folder, template.replace(policy_version=None))
        return state.replace(policy_version=jnp.asarray(int(state.episodes_trained) + 1, jnp.int32))


def all_finite(tree) -> jax.Array:
    """Whether every number of a pytree is finite (one device scalar)."""
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _non_finite(metrics: dict) -> str | None:
    """'a non-finite loss/critic' (the first metric with a NaN/inf), or None."""
    for name, values in metrics.items():
        if not np.isfinite(np.asarray(values)).all():
            return f"a non-finite {name}"
    return None


def _hdf5_layout(data_cfg):
    """The layout of the offline data's episodes when it is an HDF5 robot folder (the learner
    writes its episodes the same way, so its folder is a dataset like the offline one), else None
    (npz episode files: other formats' layouts are tables and videos)."""
    folder = Path(data_cfg.dataset) if data_cfg.dataset else None
    if folder is None or not (folder / "success").is_dir() or not any((folder / "success").glob("*.h5")):
        return None
    return layout_of(folder, data_cfg.robot)


def spare_device(acting: jax.Device) -> jax.Device:
    """Where the learner trains: another device of the acting one's kind when there is one, else the
    acting device. Computations on one device run in order, so an update block on the acting device
    would hold robot requests until it ends (`lps serve --learn` on a CPU-only host asks XLA for a
    second host device, see lps.cli.devices)."""
    others = [d for d in jax.devices(acting.platform) if d != acting]
    return others[0] if others else acting


def attach(server, run_dir, lcfg: LearnerConfig, log=print, fresh: bool = False,
           device: jax.Device | None = None) -> Learner:  # fmt: skip
    """Make `server` (an lps.deploy.serve.PolicyServer) learn from the episodes it receives, on
    `device` (default: the acting one; `fresh`: from the offline weights again, see `Learner`)."""
    learner = Learner(server, run_dir, lcfg, log, fresh, device)
    server.learner = learner
    return learner
