"""Loading a trained policy from a run directory, in one call; see docs/training.md ("Acting ...").

    policy = lps.load_policy("runs/cube-single-play-singletask-task1-v0/lps/seed0", device="auto")
    chunk = policy(obs)            # (H, action_dim) for one observation, (B, H, A) for a batch

`device="auto"` acts on the host CPU (fastest for one observation); "gpu" for large batches.
Robot-data runs take the robot's own observation (DROID's dict, a LeRobot frame) or `{"state",
"image"}`, matching cameras by name (docs/robot-data.md). `--frame-stack` runs keep the episode's
last K frames (`policy.observe`, `policy.reset`, `policy.new_frames`). Non-finite inputs are
refused and a non-finite action raises `NonFiniteActionError`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lps.data import normalize
from lps.data.frames import Frames
from lps.data.normalize import apply, invert
from lps.data.robot import RobotDataConfig, droid_obs_to_lps, read_cameras
from lps.deploy import learner
from lps.files import user_path
from lps.training import checkpoint
from lps.training.config import MAX_SEED, load_config
from lps.training.evaluate import check_episodes
from lps.training.plan import resolve
from lps.training.setup import build_agent_for, check_fits_env, make_evaluator, make_policy_fn
from lps.training.update import create_state, jitted_act, make_optimizer

DEFAULT_EVAL_EPISODES = 50  # the paper's protocol, for runs that never evaluated while training


class NonFiniteActionError(RuntimeError):
    """The acting rule returned NaN/inf: the chunk is withheld rather than sent to a robot."""


class Policy:
    """A trained agent's acting rule with its parameters bound."""

    def __init__(self, agent, params, seed: int = 0, device: str = "auto", robot=None, normalization=None,
                 cameras: dict | None = None):  # fmt: skip
        self.device = acting_device(device)
        self.agent, self.params = agent, jax.device_put(params, self.device)
        self.robot = robot  # the RobotDataConfig the data was read with (robot runs)
        self.cameras = cameras  # {name: {"shape", "channels", "order"}} as recorded (lps.data.robot.CAMERAS_JSON)
        self.spec = agent.spec
        # Stats fitted on the training data (lps.data.normalize): raw state in, actions out in robot units.
        self.normalization = normalization
        self._act = jitted_act(agent)
        self._key = jax.random.PRNGKey(seed)
        self._calls = 0
        self.max_batch: int | None = None  # larger batches are refused (set by `lps serve --max-batch`)
        self.frames = self.new_frames()  # --frame-stack: the episode's last frames (None without)

    def new_frames(self) -> Frames | None:
        """An empty frame stack for one episode (None for a policy without --frame-stack)."""
        return Frames(self.spec.frame_stack) if self.spec.frame_stack > 1 else None

    def reset(self, frames: Frames | None = None) -> None:
        """Start a new episode: forget the frames of the last one."""
        stack = self._stack(frames)
        if stack is not None:
            stack.reset()

    def observe(self, obs, frames: Frames | None = None) -> None:
        """Add the observation of a step executed between policy calls to the frame stack (a
        policy without --frame-stack only checks it)."""
        obs, _ = self._batch(obs)
        stack = self._stack(frames)
        if stack is not None:
            stack.push(obs)

    def _stack(self, frames: Frames | None) -> Frames | None:
        return frames if frames is not None else self.frames

    def __call__(self, obs, key: jax.Array | None = None, frames: Frames | None = None) -> np.ndarray:
        obs, single = self._batch(obs)
        stack = self._stack(frames)
        if stack is not None:  # act on the episode's last K frames
            stack.push(obs)
            obs = jax.tree_util.tree_map(jnp.asarray, stack.stacked())
        size = batch_size(obs)
        if self.max_batch is not None and size > self.max_batch:
            raise ValueError(
                f"a batch of {size} observations is larger than this policy takes (max_batch {self.max_batch}, "
                f"`lps serve --max-batch`): send at most {self.max_batch} per call"
            )
        if key is None:
            key, self._calls = jax.random.fold_in(self._key, self._calls), self._calls + 1
        # Batches are padded to a power of two, so a stream of different batch sizes compiles at
        # most log2(largest) + 1 programs instead of one per size (each compile stalls every caller).
        obs = pad_batch(obs, bucket_size(size))
        obs, key = jax.device_put(obs, self.device), jax.device_put(key, self.device)
        chunk = self._act(self.params, obs, key)
        chunk = np.asarray(chunk).reshape(-1, self.spec.chunk_len, self.spec.action_dim)[:size]
        if self.normalization is not None:
            chunk = invert(chunk, self.normalization["action"])
        if not np.isfinite(chunk).all():
            # Never a command for a robot. Finite weights: a finite but absurd observation overflowed them.
            if all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(self.params)):
                largest = max(float(np.max(np.abs(np.asarray(x, np.float64)))) for x in jax.tree_util.tree_leaves(obs))
                raise ValueError(
                    f"the policy's actions overflow for this observation (its largest |value| is {largest:.3g}, far "
                    "outside anything it was trained on): check the sensor and its units; no action is returned"
                )
            raise NonFiniteActionError(
                f"the policy produced NaN/inf actions for finite observations (first at "
                f"{np.argwhere(~np.isfinite(chunk))[0].tolist()}): its parameters are damaged; no action is returned"
            )
        return chunk[0] if single else chunk

    def _check_obs(self, obs) -> np.ndarray:
        """The observation(s) as float32, or a ValueError naming the shape the policy takes."""
        dim = self.spec.obs_dim
        expected = f"the policy takes one observation of shape ({dim},) or a batch of shape (B, {dim})"
        try:
            arr = np.asarray(obs)
            if np.iscomplexobj(arr):
                raise TypeError("complex values")
            arr = arr.astype(np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"observation is not an array of real numbers ({e}); {expected}") from None
        if arr.ndim not in (1, 2) or arr.shape[-1] != dim:
            raise ValueError(f"observation has shape {arr.shape}; {expected}")
        if arr.size == 0:
            raise ValueError(f"observation batch is empty (shape {arr.shape}); {expected} with B >= 1")
        if not np.isfinite(arr).all():
            raise ValueError(f"observation holds NaN or inf values at {np.argwhere(~np.isfinite(arr))[0].tolist()}")
        return arr

    def _batch(self, obs):
        """(observation batch as the agent takes it, whether a single observation was given)."""
        image_shape = self.spec.image_shape
        if not self.spec.has_images:
            obs = self._check_obs(obs)
            return np.atleast_2d(obs), obs.ndim == 1
        if self.spec.obs_dim == 0:  # image-only observations (pixel tasks)
            image = _check_image(obs, image_shape, "observation")
            single = image.ndim == 3
            return jnp.asarray(image[None] if single else image), single
        if not isinstance(obs, dict):
            raise ValueError("this policy takes a dict observation ({state, image}, or the robot's raw dict)")
        single = not ("state" in obs and np.ndim(obs["state"]) == 2)
        if single:
            obs = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], self._robot_obs(obs))
        try:
            state = np.asarray(obs["state"], np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"observation 'state' is not an array of real numbers ({e})") from None
        if self.spec.cameras:
            image = self._check_cameras(obs.get("image"))
            rows = {len(frames) for frames in image.values()}
        else:  # a run made before cameras had names: one array, cameras stacked on channels
            image = _check_image(obs["image"], image_shape, "observation 'image'", batched=True)
            rows = {len(image)}
        if state.shape[1:] != (self.spec.obs_dim,):
            raise ValueError(f"observation has state {state.shape[1:]}; the policy takes state ({self.spec.obs_dim},)")
        if rows != {len(state)}:
            images = min(rows - {len(state)})
            raise ValueError(
                f"observation batch has {len(state)} states (leading axis of 'state') but {images} images "
                "(leading axis of each camera's frames): all need one entry per observation"
            )
        if not len(state):
            raise ValueError("observation batch is empty; send at least one observation")
        if not np.isfinite(state).all():
            raise ValueError(
                f"observation 'state' holds NaN or inf values at {np.argwhere(~np.isfinite(state))[0].tolist()}"
            )
        if self.normalization is not None and "state" in self.normalization:
            state = apply(state, self.normalization["state"])
        return {"state": jnp.asarray(state), "image": jax.tree_util.tree_map(jnp.asarray, image)}, single

    def _robot_obs(self, raw: dict) -> dict:
        """One observation in any form the robot stack sends (`droid_obs_to_lps`) as the run's
        `{"state", "image"}`; a run made before cameras had names gets its cameras stacked."""
        robot = self.robot or RobotDataConfig()
        if not self.spec.cameras:
            if "state" in raw and "image" in raw and not isinstance(raw["image"], dict):
                return {"state": np.asarray(raw["state"], np.float32).reshape(-1), "image": np.asarray(raw["image"])}
            obs = droid_obs_to_lps(raw, robot)
            return {"state": obs["state"], "image": np.concatenate([obs["image"][c] for c in sorted(obs["image"])], -1)}
        cameras = self.cameras or {name: {"shape": list(shape)} for name, shape in self.spec.cameras}
        return droid_obs_to_lps(raw, robot, cameras)

    def _check_cameras(self, image) -> dict[str, np.ndarray]:
        """A batch's {camera: (B, H, W, 3) uint8}, matched to the run's cameras by name."""
        names = [name for name, _ in self.spec.cameras]
        if not isinstance(image, dict):
            raise ValueError(f"observation 'image' must be a dict of camera frames {{{', '.join(names)}}}, got "
                             f"{type(image).__name__}")  # fmt: skip
        missing, unknown = sorted(set(names) - set(map(str, image))), sorted(set(map(str, image)) - set(names))
        if missing or unknown:
            raise ValueError(f"observation has camera(s) {sorted(map(str, image))}; this policy takes exactly {names}"
                             + (f" (missing {missing})" if missing else "") + (f" (unknown {unknown})" if unknown else ""))  # fmt: skip
        return {name: _check_image(image[name], shape, f"camera '{name}'", batched=True) for name, shape in self.spec.cameras}


def _check_image(image, image_shape, what: str, batched: bool = False) -> np.ndarray:
    """A uint8 image (or batch of them, leading axis) as the policy takes it, or a ValueError
    naming what differs: other dtypes are refused rather than cast (a float NaN would wrap to
    an arbitrary pixel value)."""
    arr = np.asarray(image)
    shape = tuple(image_shape)
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 pixels, got {arr.dtype}")
    if arr.shape[-len(shape):] != shape or arr.ndim not in ((len(shape) + 1,) if batched else (len(shape), len(shape) + 1)):
        raise ValueError(f"{what} has shape {arr.shape}; the policy takes {shape} (or a batch (B, *{shape}))")
    if arr.ndim > len(shape) and not len(arr):
        raise ValueError(f"{what} batch is empty; send at least one observation")
    return arr


def batch_size(obs) -> int:
    """Observations in a batch as `_batch` returns it (an array, or a {state, image} dict)."""
    return len(obs["state"]) if isinstance(obs, dict) else len(obs)


def bucket_size(size: int) -> int:
    """The power of two a batch of `size` is padded to (1, 2, 4, 8, ...)."""
    return 1 << max(size - 1, 0).bit_length()


def pad_batch(obs, size: int):
    """The batch with its last observation repeated up to `size` rows (their actions are dropped)."""

    def pad(x):
        missing = size - len(x)
        return x if missing == 0 else jnp.concatenate([x, jnp.repeat(x[-1:], missing, axis=0)])

    return jax.tree_util.tree_map(pad, obs)


def acting_device(device: str = "auto") -> jax.Device:
    """"auto": the host CPU if JAX has one, else the default device; "cpu"; "gpu"."""
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    if device == "gpu":
        try:
            return jax.devices("gpu")[0]
        except RuntimeError as e:
            raise RuntimeError(f"device='gpu' but JAX has no GPU here ({e}); use device='cpu' or 'auto'") from None
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        if device == "cpu":
            raise RuntimeError("device='cpu' but JAX was started without its CPU backend (JAX_PLATFORMS)") from None
        return jax.devices()[0]


WEIGHTS = ("latest", "offline")


def load_policy(run_dir: str | Path, seed: int = 0, device: str = "auto", weights: str = "latest") -> Policy:
    """The run's policy. `weights`: "latest" (default) is the fine-tuned state of the run's
    learner (`lps serve --learn`) when it has one, else the offline result; "offline" is always
    the offline result (`RUN/checkpoint.msgpack`)."""
    run_dir = user_path(run_dir)
    agent_name, cfg, agent_cfg, spec = load_config(run_dir)
    if spec is None:
        raise ValueError(f"{run_dir}/config.json has no problem spec; was the run started?")
    agent = build_agent_for(agent_name, cfg, agent_cfg, spec)
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    state = checkpoint.restore(run_dir, create_state(agent, make_optimizer(cfg), cfg.seed))
    if weights == "latest":
        state = _fine_tuned(Path(run_dir), state)

    return Policy(agent, state.params, seed, device, robot=robot_settings(cfg, spec),
                  normalization=normalize.load(run_dir), cameras=read_cameras(run_dir))  # fmt: skip


def _fine_tuned(run_dir: Path, offline_state):
    """The training state of the run's learner when it has a checkpoint, else `offline_state`."""
    folder = run_dir / learner.LEARNER_DIR
    if not any((folder / name).exists() for name in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS)):
        return offline_state
    restored = learner.restore_state(folder, offline_state)
    if not bool(learner.all_finite(restored.train.params)):  # saved by an lps without the learner's guard
        print(f"[lps] {run_dir}: the learner's weights are not finite; using the offline weights "
              "(`lps serve RUN --learn --weights offline` sets that checkpoint aside and trains again)")  # fmt: skip
        return offline_state
    print(f"[lps] {run_dir}: the fine-tuned weights of its learner ({int(restored.episodes_trained)} episode(s) "
          "trained on; weights='offline' / --weights offline for the offline ones)")  # fmt: skip
    return restored.train


def robot_settings(cfg, spec):
    """The RobotDataConfig a run's episodes were read with, or None: only runs on robot episodes
    ({state, image} observations) have one; any other run's config holds its defaults, which
    describe nothing it saw."""
    return cfg.robot if spec.has_images and spec.obs_dim > 0 else None


def evaluate_run(run_dir: str | Path, episodes: int | None = None, seed: int | None = None,
                 workers: int | None = None, chunk_timeout: float | None = None) -> dict[str, float]:  # fmt: skip
    """Evaluate a run's latest checkpoint with the paper's protocol (same seed -> same result,
    whatever the number of env `workers`: default one per core, 0 for none). A worker that takes
    over `chunk_timeout` seconds (default: the run's --eval-chunk-timeout) per chunk fails it."""
    # The arguments first, before the run is loaded or any environment made.
    if episodes is not None:
        check_episodes(episodes)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or not 0 <= seed <= MAX_SEED):  # fmt: skip
        raise ValueError(f"--seed must be a whole number from 0 to {MAX_SEED} (seeds are unsigned 32-bit), "
                         f"got {seed!r}")  # fmt: skip
    if workers is not None and workers < 0:
        raise ValueError(f"--workers must be >= 0 (0: environments in this process), got {workers}")
    run_dir = user_path(run_dir)
    _, cfg, _, _ = load_config(run_dir)
    policy = load_policy(run_dir)
    if episodes is None and cfg.eval.episodes == 0:
        episodes = DEFAULT_EVAL_EPISODES
        print(f"[lps] {run_dir} was trained with --eval-episodes 0: evaluating {episodes} episodes "
              "(choose with --episodes)")  # fmt: skip
    episodes = cfg.eval.episodes if episodes is None else episodes
    seed = cfg.seed if seed is None else seed

    timeout = {} if chunk_timeout is None else {"chunk_timeout": chunk_timeout}
    eval_cfg = dataclasses.replace(cfg.eval, episodes=max(episodes, 1), workers=workers, **timeout)
    plan = resolve(dataclasses.replace(cfg, eval=eval_cfg))
    if plan.is_robot:
        raise ValueError(
            f"{run_dir} was trained on robot episodes ({cfg.dataset}); there is no environment to roll out in: "
            "evaluate offline with `lps eval RUN --dataset HELD_OUT_DIR`"
        )
    evaluator = make_evaluator(plan, eval_cfg, cfg.frame_stack)
    if evaluator is None:
        raise RuntimeError("no environment to evaluate in (is OGBench installed?)")
    check_fits_env(evaluator, policy.spec, cfg.env,
                   "the run was trained on data of another environment (its recorded --env is not the data's); "
                   "score it on held-out episodes with `lps eval RUN --dataset FILE`")  # fmt: skip
    n = getattr(evaluator, "workers", 0)  # what the pool got (capped by cores, memory and episodes)
    where = f"{n} env worker process(es)" if n else "environments in this process"
    print(f"[lps] evaluating {run_dir} on {cfg.env}: {episodes} episode(s), seed {seed}, {where}", flush=True)
    try:
        return evaluator.run(make_policy_fn(policy.agent, policy.params, seed), episodes, seed=seed)
    finally:
        evaluator.close()
