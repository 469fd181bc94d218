"""The online phase of offline-to-online fine-tuning (`lps train ... --online-steps N`); see
docs/offline-to-online.md.

After the offline steps, `--online-envs K` environments (`lps.training.envs`) play episodes in
waves of K with open-loop chunks of the current policy; their rows, labelled as the offline data
is (`lps.data.tasks`), go to the on-device replay buffer (`lps.data.replay`), and the update of
`lps.training.update` runs `--utd` steps per env step. Rounds overlap acting with the updates
owed (one round of staleness) unless `--online-sync`. Checkpoints are taken only at wave ends
(`<run>/online/checkpoint.msgpack`: state, buffer, env steps, episodes, update remainder), so a
resumed run replays exactly the episodes and updates of an uninterrupted one.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from tqdm import tqdm

from lps.data import replay, toy
from lps.training import checkpoint
from lps.training.config import OnlineConfig
from lps.training.envs import EnvWorkerPool, LocalEnvs, plan_pool
from lps.training.eval_schedule import seed_axis
from lps.training.evaluate import make_seeds_policy
from lps.training.plan import RunPlan
from lps.training.rollout import EpisodePool, episode_seed
from lps.training.rundir import ONLINE_DIR, TrainingInterrupted
from lps.training.update import check_finite


class OnlineState(struct.PyTreeNode):
    train: Any  # lps.training.update.TrainState
    buffer: replay.ReplayBuffer
    env_step: jax.Array  # environment steps taken online
    episodes: jax.Array  # online episodes started (whole waves)
    update_debt: jax.Array  # updates owed to env steps, not yet run (< one update block)


# --- what can be simulated ------------------------------------------------------------------


def check_config(online_cfg: OnlineConfig, plan: RunPlan, num_seeds: int, multi_host: bool) -> None:
    """Refuse, before any data is loaded, an online phase that cannot run."""
    if not online_cfg.steps:
        return
    if plan.dataset is not None:
        raise ValueError(
            f"--online-steps needs a live environment, but --dataset {plan.dataset} has none to simulate; "
            "train online on an OGBench task (--env) or a toy (--env toy-bandit), or drop --online-steps"
        )
    if num_seeds > 1:
        raise ValueError("--online-steps trains one seed per run; start one run per seed (--seed K)")
    if multi_host:
        raise ValueError("--online-steps runs on one host (the offline steps may use several devices of it)")


def max_episode_steps(plan: RunPlan) -> int:
    """The plan's environment's time limit, which sizes the replay buffer's episode blocks."""
    env = plan.env_id
    if plan.toy_env:
        return toy.ToyEnv.max_episode_steps
    try:
        import gymnasium
        import ogbench  # noqa: F401  (registers the environments)
    except ImportError as e:
        raise ImportError(f'online fine-tuning on {env} needs OGBench: pip install "lps[ogbench]" ({e})') from e
    steps = gymnasium.spec(env).max_episode_steps
    if not steps:
        raise ValueError(f"{env} has no episode time limit; the online replay buffer needs one to size its blocks")
    return int(steps)


def capacity_for(num_offline_rows: int, online_cfg: OnlineConfig, chunk_len: int, max_len: int) -> tuple[int, int]:
    """(rows, staging rows) of the buffer: the offline rows and, online, every env step plus one
    final row per episode (the last round may pass `--online-steps` by up to K*H - 1 steps, and
    a success can end an episode after one step, so twice the online steps is the bound; the toy
    reaches it), plus a staging segment of `max_len + 1` rows per environment."""
    staging = online_cfg.envs * (max_len + 1)
    return num_offline_rows + 2 * (online_cfg.steps + online_cfg.envs * chunk_len) + staging, staging


# --- labelling an episode's rows --------------------------------------------------------------


class _EpisodeRows:
    """One episode's rows while it is played, labelled as the offline data is. Its arrays grow by
    doubling, so a round adds its chunk's steps without copying the episode so far (`rows()` is
    taken every round, to stage it)."""

    def __init__(self, index: int, obs: np.ndarray, toy_rows: bool, sparse: bool):
        self.index, self.toy_rows, self.sparse = index, toy_rows, sparse
        obs = np.asarray(obs)
        self._observations = np.zeros((8, *obs.shape), obs.dtype)
        self._observations[0] = obs
        self._actions: np.ndarray | None = None  # (room, action_dim), made by the first chunk
        self._step_rewards = np.zeros(8)  # env reward of each step
        self._step_successes = np.zeros(8)  # env info['success'] of each step
        self.steps = 0
        self.done, self.chunks, self.success = False, 0, 0.0

    def add(self, chunk: np.ndarray, outcome) -> None:
        n, end = outcome.steps, self.steps + outcome.steps
        if self._actions is None:
            self._actions = np.zeros((len(self._step_rewards), np.shape(chunk)[-1]), np.float32)
        if end + 1 > len(self._step_rewards):
            room = max(2 * len(self._step_rewards), end + 1)
            self._observations, self._actions, self._step_rewards, self._step_successes = (
                replay.padded_rows(x, room) for x in (self._observations, self._actions, self._step_rewards, self._step_successes))
        self._actions[self.steps : end] = np.asarray(chunk[:n], np.float32)
        self._observations[self.steps + 1 : end + 1] = outcome.observations
        self._step_rewards[self.steps : end] = outcome.rewards
        self._step_successes[self.steps : end] = outcome.successes
        self.steps = end
        self.chunks += 1
        self.done, self.success = outcome.done, outcome.success

    @property
    def step_rewards(self) -> np.ndarray:
        return self._step_rewards[: self.steps]

    def rows(self) -> dict[str, np.ndarray]:
        """The row layout: every state, the last one ending the episode (its action unused)."""
        n = self.steps + 1
        action_dim = 0 if self._actions is None else self._actions.shape[1]
        actions = np.zeros((n, action_dim), np.float32)
        actions[: self.steps] = self._actions[: self.steps] if self.steps else 0
        rewards, masks = np.zeros(n, np.float32), np.zeros(n, np.float32)  # the last row's are never used
        rewards[: self.steps] = -(self.step_rewards != 0).astype(np.float64) if self.sparse else self.step_rewards
        if not self.toy_rows:  # the toy's rows never bootstrap, as in its offline data
            masks[: self.steps] = 1.0 - self._step_successes[: self.steps]
        terminals = np.zeros(n, bool)
        terminals[-1] = True
        return {"observations": self._observations[:n], "actions": actions, "rewards": rewards,
                "masks": masks, "terminals": terminals}  # fmt: skip


def _concat(episodes: list[_EpisodeRows]) -> dict[str, np.ndarray]:
    parts = [e.rows() for e in episodes]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def online_seed(seed: int) -> int:
    """The seed of the online episodes' resets and acting keys (distinct from evaluation's)."""
    return int(np.random.SeedSequence([seed, 0x0411]).generate_state(1)[0])


# --- state, checkpoint ------------------------------------------------------------------------


def initial_state(train_state, data: dict[str, np.ndarray], cfg, plan: RunPlan) -> OnlineState:
    """The online phase's state at its start: the buffer holds the offline data."""
    check_memory(data, cfg, plan)
    capacity, staging = capacity_for(len(data["actions"]), cfg.online, cfg.chunk_len, max_episode_steps(plan))
    zero = jnp.zeros((), jnp.int32)
    return OnlineState(train_state, replay.create(data, cfg.chunk_len, capacity, staging, cfg.frame_stack), zero, zero, zero)


def restore(run_dir: str | Path, train_state, data: dict[str, np.ndarray], cfg, plan: RunPlan) -> OnlineState | None:
    """The online checkpoint of `run_dir`, or None when the run has not saved one yet."""
    directory = Path(run_dir) / ONLINE_DIR
    if not (directory / checkpoint.CHECKPOINT).exists():
        return None
    template = initial_state(train_state, data, cfg, plan)
    try:
        # As device arrays: numpy 0-d leaves would turn into numpy scalars under arithmetic and
        # be written back in a different format.
        return jax.tree_util.tree_map(jnp.asarray, checkpoint.restore(directory, template))
    except ValueError as e:
        raise ValueError(
            f"cannot resume the online phase of {run_dir}: {e}. Resume with the --online-steps, --online-envs "
            "and --chunk-len the run was started with"
        ) from e


def dispatch_unit(block: int, most: int) -> int:
    """The updates of one device dispatch: the largest divisor of `block` (the updates owed per
    round) that is at most `most` (--log-every)."""
    divisors = {d for i in range(1, int(block**0.5) + 1) if block % i == 0 for d in (i, block // i)}
    return max(d for d in divisors if d <= most)


def save(run_dir: str | Path, state: OnlineState) -> None:
    checkpoint.save(Path(run_dir) / ONLINE_DIR, state)


# --- the phase ------------------------------------------------------------------------------


def make_envs(online_cfg: OnlineConfig, env: str):
    if online_cfg.workers == 0:
        return LocalEnvs(env, online_cfg.envs)
    slots, workers = plan_pool(online_cfg.envs, online_cfg.workers, print)
    if slots < online_cfg.envs:
        raise MemoryError(f"--online-envs {online_cfg.envs} environments do not fit in memory; use at most {slots}")
    return EnvWorkerPool(env, slots, workers)


def run(cfg, plan: RunPlan, agent, optimizer, state: OnlineState, *, run_dir: Path, schedule,
        save_train: Callable[[Any], None], progress: bool = True, stop=None) -> OnlineState:  # fmt: skip
    """Play and train until `cfg.online.steps` environment steps; returns the final state (saved).

    `schedule` is the run's `lps.training.eval_schedule.EvaluationSchedule` (evaluations every
    --eval-every gradient steps go on, and at the end); `save_train(train_state)` writes the plain
    checkpoint and config. `stop` (the run's `lps.training.rundir.StopOnSignal`): after a SIGINT/SIGTERM
    the wave in progress is dropped (a checkpoint exists only at a wave's end, where resume is exact)
    and `TrainingInterrupted` is raised after the dispatch running; a signal between waves
    checkpoints first."""
    return OnlinePhase(cfg, plan, agent, optimizer, state, run_dir=run_dir, schedule=schedule, save_train=save_train,
                       stop=stop).run(progress)  # fmt: skip


class OnlinePhase:
    """The online phase's loop and what it carries from round to round. A wave of K episodes is
    played round by round (act a chunk each, run the updates owed, step the envs, stage the rows),
    then its episodes are stored in the buffer and, at save points, the phase is checkpointed.

    Host copies of the counters (`step`, `env_step`, `debt`) are kept, so that nothing waits on
    the device for them while an update block runs (int(state.train.step) would)."""

    def __init__(self, cfg, plan: RunPlan, agent, optimizer, state: OnlineState, *, run_dir: Path, schedule,
                 save_train: Callable[[Any], None], stop=None):  # fmt: skip
        from lps.training.update import make_multi_update, make_update

        self.cfg, self.agent, self.state, self.run_dir = cfg, agent, state, run_dir
        self.schedule, self.save_train, self.stop = schedule, save_train, stop
        env = plan.env_id
        self.toy_rows, self.sparse = plan.toy_env, plan.sparse
        self.K, self.H = cfg.online.envs, agent.spec.chunk_len
        self.block_rows = self.K * (max_episode_steps(plan) + 1)
        self.block = cfg.online.utd * self.K * self.H  # updates owed per round of K chunks
        # A dispatch holds at most --log-every updates, as offline: a signal is noticed between dispatches.
        self.unit = dispatch_unit(self.block, cfg.log_every)
        self.start_steps = start_steps(cfg.online, plan)
        sampler = replay.make_sampler(cfg.online.mix)
        self.update = make_multi_update(make_update(agent, optimizer, cfg.batch_size, sampler), self.unit)
        self.acting_seed = online_seed(cfg.seed)
        self.step, self.env_step, self.debt = int(state.train.step), int(state.env_step), int(state.update_debt)
        self.pending_rows: list[dict] = []  # update metrics since the last metrics row
        self.finished: list[_EpisodeRows] = []  # episodes finished since the last metrics row
        self.in_flight: list[tuple[int, Any, Any]] = []  # dispatched update blocks: (first step, metrics, params after)
        self.timer = {"start": time.perf_counter(), "env_steps": 0}
        self.last_eval = -1  # the gradient step of the last evaluation submitted
        self.saved = {"env_step": self.env_step, "step": self.step}  # where a resume would start
        self.last_save = self.step
        self.envs = make_envs(cfg.online, env)
        if self.envs.obs_dim != agent.spec.obs_dim:
            self.envs.close()
            raise ValueError(f"{env} observations have {self.envs.obs_dim} dims but the data's have {agent.spec.obs_dim}")
        self.pool = EpisodePool(self.envs, 1, self.K, cfg.frame_stack)

    @property
    def done(self) -> bool:
        return self.env_step >= self.cfg.online.steps

    def run(self, progress: bool = True) -> OnlineState:
        """Wave after wave until the step budget is spent; the final state (saved)."""
        self.bar = tqdm(total=self.cfg.online.steps, initial=self.env_step, disable=not progress, unit="env step",
                        dynamic_ncols=True, desc="online")  # fmt: skip
        try:
            if self.done:
                self.save_train(self.state.train)  # resumed after the online checkpoint but maybe before the plain one
            while not self.done:
                wave, committed_starts = self.play_wave()
                self.store(wave, committed_starts)
                self.checkpoint_at_wave_end()
        finally:
            self.envs.close()
            self.bar.close()
        return self.state

    # --- a wave: collect chunks, stage their rows, update ---

    def play_wave(self) -> tuple[list[_EpisodeRows], int]:
        """The next K episodes of the run, reset together and played round by round until they
        end or the step budget is spent; the episodes and the buffer's chunk starts before them."""
        first = int(self.state.episodes)
        resets = self.pool.start({(0, k): (first + k, episode_seed(self.acting_seed, first + k)) for k in range(self.K)})
        wave = [_EpisodeRows(first + k, resets[0, k], self.toy_rows, self.sparse) for k in range(self.K)]
        committed_starts = int(self.state.buffer.num_starts)
        staged_rows = [0] * self.K  # each episode's rows staged as they stand (only later ones change)
        while not self.done and not all(e.done for e in wave):
            self.check_stop()
            self.collect_chunks(wave)
            staged_rows = self.stage(wave, committed_starts, staged_rows)
            if self.cfg.online.sync:
                self.dispatch_updates()
                self.collect_updates()
        # The updates owed for the wave's last round run on the buffer as it was staged (as they
        # would strictly), so a wave's end, where checkpoints are taken, has nothing in flight and
        # the next wave acts with up-to-date parameters.
        self.dispatch_updates()
        self.collect_updates()
        return wave, committed_starts

    def collect_chunks(self, wave: list[_EpisodeRows]) -> None:
        """One round: a chunk per environment drawn in one batched call, executed open loop.

        Overlap: the chunks are drawn from the parameters as they are (the updates owed for the
        previous round not yet run), then those updates are queued on the device and run while
        the workers step the envs. Strict: they ran at the previous round's end. Either way the
        updates sample the same buffer (the rows up to the previous round), so only the acting
        parameters differ."""
        policy = make_seeds_policy(self.agent, self.state.train.params, [self.acting_seed], seed_axis=False)
        chunks = self.pool.act(policy)
        if not self.cfg.online.sync:
            self.dispatch_updates()
        outcomes = self.pool.step(chunks)
        self.collect_updates()
        steps = 0
        for (_, k), outcome in outcomes.items():
            wave[k].add(chunks[0, k], outcome)
            steps += outcome.steps
            if wave[k].done:
                self.finished.append(wave[k])
        self.timer["env_steps"] += steps
        self.bar.update(steps)
        self.debt += self.cfg.online.utd * owed_steps(self.env_step, steps, self.start_steps)
        self.env_step += steps

    def stage(self, wave: list[_EpisodeRows], committed_starts: int, staged_rows: list[int]) -> list[int]:
        """The wave's rows so far into the buffer's staging area (sampled from now on); the rows
        of each episode that are final (an episode's last row gains its action, reward and mask
        next round; a finished one's are final)."""
        staged = replay.stage(self.state.buffer, [e.rows() for e in wave], committed_starts, self.H, staged_rows)
        self.state = self.state.replace(buffer=staged, env_step=jnp.asarray(self.env_step, jnp.int32),
                                        update_debt=jnp.asarray(self.debt, jnp.int32))  # fmt: skip
        return [e.steps + 1 if e.done else e.steps for e in wave]

    def store(self, wave: list[_EpisodeRows], committed_starts: int) -> None:
        """The wave's episodes (those stopped by the step budget end there) join the buffer for
        good, and the staging area is free again."""
        played = [e for e in wave if e.steps > 0]
        buffer = replay.stage(self.state.buffer, [], committed_starts, self.H)
        self.state = self.state.replace(buffer=buffer)
        if played:
            self.state = self.state.replace(buffer=replay.append(buffer, _concat(played), self.H, self.block_rows))
        self.state = self.state.replace(episodes=self.state.episodes + self.K)

    # --- updates, dispatched asynchronously ---

    def dispatch_updates(self) -> None:
        """Queue the update blocks owed on the device (JAX dispatches asynchronously: this returns
        at once, the host goes on while they run). At most two dispatches wait on the device, so a
        signal stops the run after the one running, whatever --utd and --online-envs are."""
        while self.debt >= self.block:
            for _ in range(self.block // self.unit):
                if len(self.in_flight) >= 2:
                    self.collect_updates(keep=1)
                self.check_stop()
                new_train, metrics = self.update(self.state.train, self.state.buffer)
                self.in_flight.append((self.step, metrics, new_train.params))
                self.step += self.unit
                self.state = self.state.replace(train=new_train)
            self.debt -= self.block
            self.state = self.state.replace(update_debt=jnp.asarray(self.debt, jnp.int32))

    def collect_updates(self, keep: int = 0) -> None:
        """Wait for the dispatched blocks (all but the last `keep`); their metrics rows and evaluations,
        block by block."""
        while len(self.in_flight) > keep:
            first, metrics, params = self.in_flight.pop(0)
            metrics = {k: np.asarray(v).reshape(-1) for k, v in jax.device_get(metrics).items()}
            check_finite(metrics, first, self.run_dir)
            self.pending_rows.append({k: float(np.mean(v)) for k, v in metrics.items()})
            step = first + self.unit
            if step // self.cfg.log_every > first // self.cfg.log_every:
                self.write_row(step)  # at that block's step, even when later blocks are already queued
            if self.cfg.eval.every and step // self.cfg.eval.every > first // self.cfg.eval.every:
                self.evaluate(step, params)

    # --- metrics, evaluation, checkpoints ---

    def write_row(self, step: int | None = None) -> None:
        """The metrics row of the updates and episodes since the previous one, at gradient `step`
        (default: the latest)."""
        if not self.pending_rows and not self.finished:
            return
        rows, finished = self.pending_rows, self.finished
        row = {k: float(np.mean([r[k] for r in rows])) for k in (rows[0] if rows else {})}
        row["env_step"] = float(self.env_step)
        if finished:
            row["online/return"] = float(np.mean([sum(e.step_rewards) for e in finished]))
            row["online/success"] = float(np.mean([e.success for e in finished]))
        elapsed = time.perf_counter() - self.timer["start"]
        row["env_steps_per_sec"] = self.timer["env_steps"] / elapsed if elapsed > 0 else 0.0
        self.schedule.log_training(self.step if step is None else step, [row])
        rows.clear()
        finished.clear()
        self.timer.update(start=time.perf_counter(), env_steps=0)

    def evaluate(self, step: int, params) -> None:
        if not self.cfg.eval.episodes:
            return
        self.last_eval = step
        self.schedule.submit(step, seed_axis(params, 1), [{"env_step": float(self.env_step)}])

    def checkpoint_at_wave_end(self) -> None:
        """Checkpoint at the end of the phase, every --save-every gradient steps and after a signal
        (waves are the online phase's only checkpoint-safe points); then stop if signalled."""
        step, cfg = self.step, self.cfg
        stopping = self.stop is not None and self.stop.signum is not None and not self.done
        if stopping or self.done or (cfg.save_every and step // cfg.save_every > self.last_save // cfg.save_every):
            if self.done and self.last_eval != step:
                self.evaluate(step, self.state.train.params)
            self.checkpoint()
            self.last_save = step
        if stopping:
            raise self.stop.interrupted(step, self.run_dir)

    def checkpoint(self) -> None:
        self.write_row()
        self.schedule.wait_before(self.step)
        save(self.run_dir, self.state)
        self.save_train(self.state.train)
        self.saved.update(env_step=self.env_step, step=self.step)

    def check_stop(self) -> None:
        """After a signal, within a wave: its episodes are dropped (checkpoints exist only at wave
        ends, where resume is exact) and the run stops now rather than after the wave."""
        if self.stop is not None and self.stop.signum is not None:
            raise TrainingInterrupted(self.stop.signum, (
                f"stopped by {signal.Signals(self.stop.signum).name} during a wave of online episodes; the wave is "
                f"dropped and the checkpoint at env step {self.saved['env_step']} (gradient step {self.saved['step']}) "
                f"stands; continue with `lps train --resume {self.run_dir}`"))  # fmt: skip


QCHUNKING_START_STEPS = 5_000  # Q-chunking's `start_training` (REFERENCE.md §5)


def start_steps(online_cfg: OnlineConfig, plan: RunPlan) -> int:
    """Online env steps before the first update: --online-start-steps, else Q-chunking's 5,000 on
    OGBench tasks and 0 on the toy bandits (one-step episodes, a few hundred online steps)."""
    if online_cfg.start_steps is not None:
        return online_cfg.start_steps
    return 0 if plan.toy_env else QCHUNKING_START_STEPS


def owed_steps(env_step: int, steps: int, start: int) -> int:
    """Of `steps` env steps played from `env_step` on, those past the first `start` (which owe updates)."""
    return max(0, env_step + steps - start) - max(0, env_step - start)


def check_memory(data: dict[str, np.ndarray], cfg, plan: RunPlan) -> int:
    """Refuse up front a replay buffer that would not fit (MemoryError naming the size); its bytes."""
    capacity, _ = capacity_for(len(data["actions"]), cfg.online, cfg.chunk_len, max_episode_steps(plan))
    available, where = replay.device_memory_bytes()
    return replay.check_fits(capacity, replay.row_bytes(data["observations"][0], data["actions"].shape[1]),
                             available, where)  # fmt: skip
