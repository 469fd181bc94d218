"""Seeded, parallel generator for OGBench manipulation play datasets (`lps data generate ENV`); see
docs/data.md.

It follows OGBench's play-data recipe and file layout with the scripted plan oracles of the
`ogbench` package, so `ogbench.make_env_and_datasets(..., dataset_dir=...)` loads the files.
Every episode gets its own seed derived from (seed, split, episode index), so a dataset is
byte-identical for a given (env, episodes, seed) however many workers collect it. Visual envs
run the same recipe in OGBench's pixel twin and store the rendered 64x64 RGB frame.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pathlib
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from lps.data.gym_env import FLOAT32_BOUNDS_WARNING, make_gym_env
from lps.data.render import VISUAL_PREFIX, is_visual, measure_render_rate, require_renderer, state_env
from lps.host import SignalCatcher, StoppedBySignal, available_cores

# The OGBench manipulation envs whose play data this module generates.
ENVS: tuple[str, ...] = ("cube-single", "cube-double", "scene", "puzzle-3x3", "puzzle-4x4")
# Pixel twins of the state envs: 64x64 RGB observations, same scenes, tasks and rewards.
VISUAL_ENVS: tuple[str, ...] = tuple(f"{VISUAL_PREFIX}{e}" for e in ENVS)
DATA_ENVS: tuple[str, ...] = ENVS + VISUAL_ENVS

_DTYPES = {
    "observations": np.float32,
    "actions": np.float32,
    "terminals": bool,
    "qpos": np.float32,
    "qvel": np.float32,
    "button_states": np.int64,
}
_MAX_ATTEMPTS = 100  # scene re-collects blocks knocked off the table; this only guards against a hang


def require_ogbench():
    # MuJoCo's viewer complains about the missing display and gymnasium about float64 bounds;
    # neither matters for state-based environments.
    warnings.filterwarnings("ignore", message=".*DISPLAY environment variable.*")
    warnings.filterwarnings("ignore", message=FLOAT32_BOUNDS_WARNING)
    try:
        import ogbench.manipspace  # noqa: F401  (imports ogbench and registers the environments)
    except ImportError as e:
        raise ImportError(
            'OGBench is not installed: `pip install "lps[ogbench]"`, or train from a prepared npz '
            "with --dataset (see `lps data prepare`)"
        ) from e


def dataset_paths(env: str, data_dir: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    """(train, val) paths in OGBench's naming, e.g. ``cube-single-play-v0.npz`` and ``...-val.npz``."""
    _check_env(env)
    data_dir = pathlib.Path(data_dir)
    return data_dir / f"{env}-play-v0.npz", data_dir / f"{env}-play-v0-val.npz"


def _check_env(env: str) -> None:
    if env not in DATA_ENVS:
        raise ValueError(f"unknown env {env!r}; valid names: {', '.join(DATA_ENVS)}")


def _episode_seeds(seed: int, split: int, n: int) -> list[int]:
    # Train (split 0) and val (split 1) are separate streams, so val never overlaps a larger train set.
    return [int(np.random.SeedSequence([seed, split, i]).generate_state(1)[0]) for i in range(n)]


_cache: dict = {}  # one env + oracle set per process; building the MuJoCo model is the slow part


def _env_and_agents(env: str, max_episode_steps: int):
    key = (env, max_episode_steps)
    if key not in _cache:
        try:
            import ogbench.manipspace  # noqa: F401  (registers the *-v0 envs with gymnasium)
            from ogbench.manipspace.oracles.plan import button_plan, cube_plan, drawer_plan, window_plan
        except ImportError as e:
            raise ImportError(
                'generating OGBench data needs ogbench, mujoco and gymnasium: pip install "lps[ogbench]"'
            ) from e
        for old_env, _ in _cache.values():
            _close(old_env)
        _cache.clear()
        gym_env = make_gym_env(
            f"{env}-v0", terminate_at_goal=False, mode="data_collection", max_episode_steps=max_episode_steps
        )
        kw = dict(env=gym_env, noise=0.1, noise_smoothing=0.5)
        base = state_env(env)
        if base.startswith("cube"):
            agents = {"cube": cube_plan.CubePlanOracle(**kw)}
        elif base == "scene":
            agents = {
                "cube": cube_plan.CubePlanOracle(**kw),
                "button": button_plan.ButtonPlanOracle(**kw),
                "drawer": drawer_plan.DrawerPlanOracle(**kw),
                "window": window_plan.WindowPlanOracle(**kw),
            }
        else:  # puzzle: the arm only presses buttons, so it never needs to open the gripper
            agents = {"button": button_plan.ButtonPlanOracle(gripper_always_closed=True, **kw)}
        _cache[key] = (gym_env, agents)
    return _cache[key]


def _close(gym_env) -> None:
    # gymnasium's close does not free a MuJoCo renderer (a GL context and its buffers).
    renderer = getattr(gym_env.unwrapped, "_renderer", None)
    if renderer is not None:
        renderer.close()
        gym_env.unwrapped._renderer = None
    gym_env.close()


def _episode(env: str, gym_env, agents, seed: int) -> dict[str, np.ndarray]:
    # The oracles draw from numpy's global RNG and the env from env.np_random: seed both.
    np.random.seed(seed)
    base = state_env(env)
    p_stack = 0.0 if base == "cube-single" else np.random.uniform(0, 0.25) if base == "cube-double" else 0.5
    ob, info = gym_env.reset(seed=seed)
    agent = agents[info["privileged/target_task"]]
    agent.reset(ob, info)
    has_buttons = hasattr(gym_env.unwrapped, "_cur_button_states")
    rows = {k: [] for k in _DTYPES if k != "button_states" or has_buttons}
    done = False
    while not done:
        action = np.clip(np.array(agent.select_action(ob, info)), -1, 1)
        next_ob, _, terminated, truncated, info = gym_env.step(action)
        done = terminated or truncated
        if agent.done:  # play data: chain a fresh random sub-task as soon as the current one ends
            # every ogbench env (also puzzle, which ignores it) accepts p_stack in set_new_target
            agent_ob, agent_info = gym_env.unwrapped.set_new_target(p_stack=p_stack)
            agent = agents[agent_info["privileged/target_task"]]
            agent.reset(agent_ob, agent_info)
        rows["observations"].append(ob)
        rows["actions"].append(action)
        rows["terminals"].append(done)
        rows["qpos"].append(info["prev_qpos"])  # 'prev_' = state before the step, i.e. matching `ob`
        rows["qvel"].append(info["prev_qvel"])
        if has_buttons:
            rows["button_states"].append(info["prev_button_states"])
        ob = next_ob
    dtypes = {**_DTYPES, "observations": np.uint8} if is_visual(env) else _DTYPES
    return {k: np.asarray(v, dtype=dtypes[k]) for k, v in rows.items()}


def _scene_healthy(qpos: np.ndarray) -> bool:
    # Same check as the official script: no block fell off the back of the table or sank/floated at its edge.
    y, z = qpos[:, 15], qpos[:, 16]
    return not (np.any(y >= 0.29) or np.any((y <= -0.3) & ((z < 0.06) | (z > 0.08))))


def collect_episodes(env: str, episode_seeds: Sequence[int], max_episode_steps: int = 1001) -> dict[str, np.ndarray]:
    """Collect one episode per seed in this process and concatenate them.

    ``max_episode_steps`` is the episode length in rows (official: 1001); lower it only for tests or tiny datasets.
    """
    _check_env(env)
    gym_env, agents = _env_and_agents(env, max_episode_steps)
    episodes = []
    for seed in episode_seeds:
        for attempt in range(_MAX_ATTEMPTS):
            s = seed if attempt == 0 else int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])
            ep = _episode(env, gym_env, agents, s)
            if state_env(env) != "scene" or _scene_healthy(ep["qpos"]):
                break
        else:
            raise RuntimeError(f"{env}: no healthy episode for seed {seed} in {_MAX_ATTEMPTS} attempts")
        episodes.append(ep)
    return {k: np.concatenate([ep[k] for ep in episodes]) for k in episodes[0]}


def _run_task(task):
    i, env, seeds, max_episode_steps = task
    return i, collect_episodes(env, seeds, max_episode_steps)


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: the parent stops the pool (SIGTERM to each worker,
    # which ends it quietly); a worker's own KeyboardInterrupt would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class GenerationStopped(StoppedBySignal):
    """Generation stopped on SIGINT/SIGTERM: the workers were ended and the pool closed; either
    no file was written (stopped while collecting) or both were (the signal came while writing,
    which is finished first, so no half-written pair is left)."""


class StopOnSignal(SignalCatcher):
    """Within the block, SIGINT and SIGTERM raise GenerationStopped in the main thread, so that the
    pool is terminated and joined on the way out. While `held` (workers being started, or the
    files being written once all is collected) a signal is only recorded: leaving `holding()`
    raises it, `stopped_after_writing` once the files are written. A second signal acts as usual,
    at once. Outside the main thread it does nothing."""

    def __init__(self, env: str):
        super().__init__()
        self.env = env
        self.held = False
        self.writing = False

    def _handle(self, signum, frame):
        if self.signum is not None:  # asked twice: stop now, as without this block
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum
        if not (self.held or self.writing):
            raise self.stopped()
        if self.writing:
            try:  # os.write, not print: a handler that prints while tqdm prints raises a reentrancy error
                name = signal.Signals(signum).name
                os.write(2, f"\n[lps] {name} received: finishing the files being written first\n".encode())
            except OSError:
                pass

    def stopped(self) -> GenerationStopped:
        name = signal.Signals(self.signum).name
        return GenerationStopped(self.signum, f"stopped by {name}; nothing written for {self.env} (workers ended; run "
                                              "the command again to generate it)")  # fmt: skip

    @contextlib.contextmanager
    def holding(self):
        """A block a signal does not cut in two (starting the worker processes): it stops after it."""
        self.held = True
        try:
            yield
        finally:
            self.held = False
        if self.signum is not None:
            raise self.stopped()

    def stopped_after_writing(self, paths: Sequence[pathlib.Path]) -> None:
        if self.signum is not None:
            name = signal.Signals(self.signum).name
            raise GenerationStopped(self.signum, f"stopped by {name} after writing {' and '.join(map(str, paths))}")



def plan_workers(workers: int | None, report=print) -> int:
    """Worker processes for a request (None: all cores, at most 8): at least 1, and no more than
    the cores this process may run on (more only add memory, ~150 MB each, and contention)."""
    cores = available_cores()
    if workers is None:
        return min(cores, 8)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"--workers must be at least 1 (worker processes), got {workers!r}")
    if workers > cores:
        report(f"[lps] --workers {workers} is more than the {cores} core(s) available; using {cores}")
        return cores
    return int(workers)


def _save_atomic(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}.npz")  # ends in .npz so numpy keeps the name
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


BYTES_PER_ROW = 320  # compressed play data takes 260-300 bytes per step (measured on all five envs)


def check_output(paths: Sequence[pathlib.Path], estimated_bytes: int, overwrite: bool) -> None:
    """Refuse, before hours of collection, an output folder the files could not be written to."""
    folder = paths[0].parent
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"--data-dir {folder}: {parent} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; move it away or choose another --data-dir")
    clash = [str(p) for p in paths if p.exists()]
    if clash and not overwrite:
        raise FileExistsError(
            f"{' and '.join(clash)} already exist(s); pass --overwrite to replace, or choose another --data-dir"
        )
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write to {folder} ({e.strerror}); choose another --data-dir") from None
    free = shutil.disk_usage(folder).free
    if free < estimated_bytes:  # a request that cannot fit (nothing written yet), not a disk that filled up
        raise ValueError(
            f"{folder} has {free / 1e6:.0f} MB free but the data needs about {estimated_bytes / 1e6:.0f} MB; "
            "free some space, choose another --data-dir, or pass fewer --episodes"
        )


def _print_estimate(env: str, backend: str, frames: int, workers: int) -> None:
    require_ogbench()
    rate, _ = measure_render_rate(f"{env}-v0")
    # Software rendering is CPU-bound: workers beyond the core count add nothing.
    minutes = frames / (rate * min(workers, os.cpu_count() or 1)) / 60
    print(
        f"[lps] rendering with MUJOCO_GL={backend} at ~{rate:.1f} frames/s per process here: {frames} frames "
        f"take roughly {minutes:.0f} min with {workers} worker(s)",
        flush=True,
    )


def generate(
    env: str,
    data_dir: str | os.PathLike,
    episodes: int = 1000,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    max_episode_steps: int = 1001,
    overwrite: bool = False,
) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``episodes`` train and ``max(1, episodes // 10)`` val episodes of ``env`` play data to ``data_dir``.

    Returns the (train, val) paths. ``max_episode_steps`` shortens episodes for tests or tiny datasets only.
    The output folder is checked (writable, free space, no existing files unless ``overwrite``) before
    anything is collected.
    """
    train_path, val_path = dataset_paths(env, data_dir)
    workers = _check_request(episodes, seed, workers, max_episode_steps)
    n_val = max(1, episodes // 10)
    check_output((train_path, val_path), (episodes + n_val) * max_episode_steps * BYTES_PER_ROW, overwrite)
    _announce(env, episodes, n_val, seed, workers, max_episode_steps, train_path.parent)
    tasks, split_of = _plan_tasks(env, seed, episodes, n_val, workers, max_episode_steps)
    # SIGINT/SIGTERM: the workers are ended, the pool closed, and nothing is written (the files
    # come only from complete collections, through a temporary file and a rename).
    with StopOnSignal(env) as stop:
        results = _collect(env, tasks, workers, stop, episodes + n_val, progress)

        def assemble(split):
            parts = [results[i] for i in range(len(tasks)) if split_of[i] == split]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

        # Everything is collected (`stop.writing`): a signal from here on is honoured once both
        # files are written, as stopping between them would leave a validation file alone.
        train_path.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic(val_path, assemble(1))  # val first: a present train file then implies a complete pair
        _save_atomic(train_path, assemble(0))
    stop.stopped_after_writing((train_path, val_path))
    return train_path, val_path


def _check_request(episodes: int, seed: int, workers: int | None, max_episode_steps: int) -> int:
    """Refuse bad counts before anything else; the number of worker processes to use."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= 2**32 - 1:
        raise ValueError(f"--seed must be a whole number from 0 to {2**32 - 1}, got {seed!r}")
    workers = plan_workers(workers)
    if max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
    return workers


def _announce(env: str, episodes: int, n_val: int, seed: int, workers: int, max_episode_steps: int,
              folder: pathlib.Path) -> None:  # fmt: skip
    """What is about to be collected, and for rendered tasks the renderer (and, if long, how long)."""
    if is_visual(env):
        # Here, not in a worker: a missing renderer is one clear error, and the backend chosen
        # ($MUJOCO_GL) is inherited by the workers.
        backend = require_renderer(env)
        frames = (episodes + n_val) * max_episode_steps
        if frames > 2000:  # a job of more than a few minutes: say up front how long it will take
            _print_estimate(env, backend, frames, min(workers, episodes + n_val))
        else:
            print(f"[lps] rendering with MUJOCO_GL={backend}", flush=True)
    print(
        f"generating {env} play data: {episodes} train + {n_val} val episodes, seed {seed}, "
        f"{workers} worker(s) -> {folder}",
        flush=True,
    )


def _plan_tasks(env: str, seed: int, episodes: int, n_val: int, workers: int, max_episode_steps: int):
    """The collection as tasks of a few episodes each, `(index, env, seeds, max steps)`, and each
    task's split (0: train, 1: val)."""
    # Small batches keep the progress bar moving and the workers evenly loaded.
    batch = max(1, min(8, (episodes + n_val) // (4 * workers)))
    tasks, split_of = [], []
    for split, n in ((0, episodes), (1, n_val)):
        seeds = _episode_seeds(seed, split, n)
        for j in range(0, n, batch):
            tasks.append((len(tasks), env, seeds[j : j + batch], max_episode_steps))
            split_of.append(split)
    return tasks, split_of


def _collect(env: str, tasks: list, workers: int, stop, total_episodes: int, progress: bool) -> dict[int, dict]:
    """Every task's episodes, `{task index: arrays}`, in this process or in `workers` processes."""
    results, steps, t0 = {}, 0, time.perf_counter()
    with tqdm(total=total_episodes, desc=env, unit="ep", disable=not progress) as bar:

        def done(i, data):
            nonlocal steps
            results[i] = data
            steps += len(data["terminals"])
            bar.update(int(data["terminals"].sum()))
            rate = f"{steps / (time.perf_counter() - t0):.1f}"
            bar.set_postfix(**{"frames_per_s" if is_visual(env) else "steps_per_s": rate})

        if workers == 1 or len(tasks) == 1:
            for task in tasks:
                done(*_run_task(task))
        else:
            _collect_in_workers(tasks, workers, stop, done)
        stop.writing = True
    return results


def _collect_in_workers(tasks: list, workers: int, stop, done) -> None:
    """The tasks in a pool of worker processes, `done(index, arrays)` as each finishes."""
    # 'spawn': MuJoCo (and JAX, if the caller imported it) are not fork-safe.
    ctx = multiprocessing.get_context("spawn")
    pool = None
    try:
        with stop.holding():  # no worker left half-started
            pool = ctx.Pool(min(workers, len(tasks)), initializer=_worker_init)
        for i, data in pool.imap_unordered(_run_task, tasks):
            done(i, data)
        stop.writing = True  # all collected: a signal now waits for the files (below)
        pool.close()
    except BaseException:
        if pool is not None:
            pool.terminate()  # on a signal or a failed task: end the workers at once
        raise
    finally:
        if pool is not None:
            pool.join()
