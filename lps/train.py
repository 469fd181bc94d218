"""The training loop: a pure, jitted update scanned over many steps per dispatch.

    state, metrics = update(state, data)

`state` is a pytree (parameters, Polyak target, optimiser state, step, RNG key); the step's
randomness is `fold_in(state.rng, state.step)`, so a run's numbers depend only on its seed and
step count, never on how the steps were grouped into dispatches (which makes resume exact).
Batches are sampled inside the update from the on-device dataset: the hot path has no host
transfer and no Python per step. Seeds are a leading axis of the state: `train` vmaps the
update over them, so several seeds share one compiled program and one dataset.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from lps import checkpoint, online, rundir
from lps.agents import Spec, check_agent, config_class, resolve_config
from lps.config import TrainConfig, check_agent_config, from_dict, to_dict
from lps.critic import polyak
from lps.data.sampler import ChunkData, sample_chunks, to_device
from lps.encoders import build_agent, observation_spec, scan_updates
from lps.eval_schedule import EvaluationSchedule, seed_axis
from lps.render import check_image_size
from lps.runlog import RunLog
from lps.validation import Validator

CONFIG_JSON, SUMMARY_JSON = "config.json", "summary.json"


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class TrainState(struct.PyTreeNode):
    step: jax.Array
    rng: jax.Array
    params: Any
    target_params: Any
    opt_state: Any


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    lr = cfg.lr
    if cfg.lr_schedule == "cosine":  # the paper's real-robot schedule: 1 % warmup, cosine down to lr / 10
        lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.steps // 100, cfg.steps, cfg.lr / 10)
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(lr))
    return optax.adam(lr)


def create_state(agent, optimizer, seed: int) -> TrainState:
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    # Jitted: initialising conv/attention layers op by op costs tens of seconds on a CPU.
    params = jax.jit(agent.init)(init_key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        rng=train_key,
        params=params,
        # A copy, not an alias: the state's buffers are donated to the update.
        target_params=jax.tree_util.tree_map(jnp.copy, {k: params[k] for k in agent.target_keys}),
        opt_state=optimizer.init(params),
    )


def make_update(agent, optimizer, batch_size: int, sample=sample_chunks):
    """The pure update `(state, data) -> (state, metrics)`: sample, one gradient step, Polyak.
    `sample(data, key, batch_size, chunk_len, gamma)` draws the batch (the online phase passes
    its replay buffer's sampler, `lps.data.replay.make_sampler`)."""
    spec, tau = agent.spec, getattr(agent.cfg, "tau", 0.0)

    def update(state: TrainState, data: ChunkData):
        batch_key, loss_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
        batch = sample(data, batch_key, batch_size, spec.chunk_len, spec.gamma)
        grads, metrics = jax.grad(agent.loss, has_aux=True)(state.params, state.target_params, batch, loss_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        target = polyak(state.target_params, {k: params[k] for k in agent.target_keys}, tau)
        return state.replace(step=state.step + 1, params=params, target_params=target, opt_state=opt_state), metrics

    return update


def stack_seeds(states: list[TrainState]) -> TrainState:
    """Seeds as a leading axis of one state (a single seed stays as it is)."""
    return states[0] if len(states) == 1 else jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)


def make_seeds_update(agent, optimizer, batch_size: int, num_seeds: int):
    """The update for `num_seeds` stacked states: one compiled program and one dataset for all
    seeds. A single seed is not vmapped: on a CPU a batch-of-one vmap costs ~25 % in matmuls."""
    update = make_update(agent, optimizer, batch_size)
    return update if num_seeds == 1 else jax.vmap(update, in_axes=(0, None))


def make_multi_update(update, num_steps: int, scan: bool = True):
    """`num_steps` updates in one compiled program; returns per-step metrics stacked.

    `scan=False` dispatches the same jitted update `num_steps` times instead (data and state stay
    on the device; only the dispatch loop is on the host): XLA's CPU backend runs convolutions
    inside a loop body ~20x slower than at top level (measured: 14 s vs 0.7 s per update of the
    IMPALA encoder at 128x128x6), so image agents on a CPU use it (`lps.encoders.scan_updates`)."""
    if not scan:
        step = jax.jit(update, donate_argnums=0)

        def loop_update(state, data):
            rows = []
            for _ in range(num_steps):
                state, metrics = step(state, data)
                rows.append(metrics)
            return state, jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *rows)

        return loop_update

    @partial(jax.jit, donate_argnums=0)
    def multi_update(state, data):
        return jax.lax.scan(lambda s, _: update(s, data), state, None, length=num_steps)

    return multi_update


# --- data, agents and evaluation for a config -----------------------------------------------


def load_data(cfg: TrainConfig) -> dict[str, np.ndarray]:
    """The row-layout training dataset the config asks for, validated."""
    from lps import toy
    from lps.data import tasks
    from lps.data.validate import load_own_dataset, validate

    if cfg.dataset is not None and Path(cfg.dataset).is_dir():
        from lps.data.robot import load_folder

        return validate(load_folder(cfg.dataset, cfg.robot, cfg.chunk_len, cfg.progress), cfg.chunk_len, cfg.dataset)
    if cfg.dataset is not None:
        return load_own_dataset(cfg.dataset, cfg.chunk_len)
    if toy.is_toy(cfg.env):
        return validate(toy.make_dataset(cfg.env, seed=cfg.data_seed), cfg.chunk_len, source=cfg.env)
    task = tasks.parse_task(cfg.env, cfg.reward)
    data_dir = Path(cfg.data_dir).expanduser() if cfg.data_dir else tasks.default_data_dir()
    return tasks.load_task(task, data_dir, cfg.chunk_len, episodes_if_missing=cfg.episodes, seed=cfg.data_seed)


def make_evaluator(cfg: TrainConfig, num_seeds: int = 1):
    """An evaluator for the config's task and `num_seeds` seeds, or None (no evaluation asked,
    or no environment)."""
    from lps import toy
    from lps.data import tasks

    if cfg.eval_episodes == 0 or is_robot_dataset(cfg):
        return None
    if toy.is_toy(cfg.env):
        return toy.ToyEvaluator(cfg.env)
    from lps.evaluate import DEFAULT_POOL, Evaluator
    from lps.render import is_visual, require_renderer

    env_id = tasks.parse_task(cfg.env, cfg.reward).env_id
    if is_visual(env_id):
        require_renderer(env_id)  # a clear error naming what to install, before any env is made
    try:
        return Evaluator(env_id, min(cfg.eval_episodes, DEFAULT_POOL), num_seeds, cfg.eval_workers)
    except ImportError as e:
        print(f"[lps] evaluation disabled: {e}")
        return None


def overlap_evaluation(cfg: TrainConfig) -> bool:
    """--eval-async: auto overlaps only with >= 4 cores (on fewer the evaluation competes with
    training for the same cores, and evaluating in between is faster)."""
    from lps.envs import available_cores

    return cfg.eval_async == "true" or (cfg.eval_async == "auto" and available_cores() >= 4)


@lru_cache(maxsize=32)
def jitted_act(agent):
    """One compiled acting function per agent (agents are hashable), reused across evaluations."""
    return jax.jit(agent.act)


def make_policy_fn(agent, params, seed: int):
    """The evaluators' policy for one seed's parameters (no seed axis); see lps.evaluate."""
    from lps.evaluate import make_seeds_policy

    return make_seeds_policy(agent, jax.tree_util.tree_map(lambda x: x[None], params), [seed])


def is_robot_dataset(cfg: TrainConfig) -> bool:
    """A folder of robot episodes: no environment to evaluate in (see `lps eval RUN --dataset DIR`)."""
    return cfg.dataset is not None and Path(cfg.dataset).is_dir()


def build(agent_name: str, cfg: TrainConfig, agent_cfg, data: dict[str, np.ndarray]):
    obs_dim, image_shape = observation_spec(data["observations"])
    spec = Spec(obs_dim, data["actions"].shape[1], cfg.chunk_len, cfg.gamma, image_shape)
    return build_agent_for(agent_name, cfg, resolve_config(agent_name, agent_cfg, cfg.env), spec)


def build_agent_for(agent_name: str, cfg: TrainConfig, agent_cfg, spec: Spec):
    """The agent for a spec, with the config's image encoder when observations hold images."""
    return build_agent(agent_name, agent_cfg, spec, cfg.encoder, cfg.encoder_features, cfg.augment_shift,
                       cfg.augment_prob, getattr(cfg, "shared_encoder", False))  # fmt: skip


# --- run directories ------------------------------------------------------------------------


def task_name(cfg: TrainConfig) -> str:
    """What a run is trained on: the OGBench/toy task, or the robot dataset folder's name."""
    return Path(cfg.dataset).resolve().name if is_robot_dataset(cfg) else cfg.env


def default_run_dir(cfg: TrainConfig, agent_name: str) -> Path:
    return Path("runs") / task_name(cfg) / agent_name / f"seed{cfg.seed}"


def save_config(run_dir: Path, agent_name: str, cfg: TrainConfig, agent_cfg, spec: Spec | None = None) -> None:
    record = {"agent": agent_name, "train": to_dict(cfg), "agent_config": to_dict(agent_cfg)}
    if spec is not None:
        record["spec"] = dataclasses.asdict(spec)
    checkpoint.write_json(run_dir / CONFIG_JSON, record)


def load_config(run_dir: str | Path) -> tuple[str, TrainConfig, Any, Spec | None]:
    path = Path(run_dir) / CONFIG_JSON
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_JSON})")
    record = json.loads(path.read_text())
    agent_name = record["agent"]
    spec = Spec(**record["spec"]) if "spec" in record else None
    return (
        agent_name,
        from_dict(TrainConfig, record["train"]),
        from_dict(config_class(agent_name), record["agent_config"]),
        spec,
    )


# --- the loop -------------------------------------------------------------------------------


def train(agent_name: str, cfg: TrainConfig, agent_cfg, resume: bool = False) -> dict | list[dict]:
    """Train (or resume) a run and return its summary; with `cfg.seeds`, train those seeds
    together (vmapped) and return one summary per seed. See the module docstring. The run
    directories are locked for the whole run; SIGINT/SIGTERM stop it with a checkpoint."""
    check_agent(agent_name)
    check_agent_config(agent_cfg)
    runs = [_SeedRun(c, agent_name) for c in seed_configs(cfg, agent_name)]
    online.check_config(cfg, len(runs))
    with rundir.claim([run.dir for run in runs]), rundir.StopOnSignal() as stop:
        resume, changes = rundir.prepare(runs, agent_name, resolve_config(agent_name, agent_cfg, cfg.env), resume)
        return _train(agent_name, cfg, agent_cfg, runs, resume, changes, stop)


def _train(agent_name, cfg, agent_cfg, runs, resume, changes, stop):
    data = load_data(cfg)
    if cfg.online_steps:
        online.check_memory(data, cfg)  # refused before the offline steps, not after them
    agent = build(agent_name, cfg, agent_cfg, data)
    device_data = to_device(data, cfg.chunk_len)
    if cfg.batch_size > device_data.num_chunks:
        raise ValueError(
            f"--batch-size {cfg.batch_size} is larger than the dataset's {device_data.num_chunks} chunks; "
            "use a smaller batch or more data"
        )
    optimizer = make_optimizer(cfg)
    states = [create_state(agent, optimizer, run.cfg.seed) for run in runs]
    online_resume = None
    if resume:
        states = [checkpoint.restore(run.dir, state) for run, state in zip(runs, states)]
        if len({int(s.step) for s in states}) > 1:
            raise ValueError("seeds trained together must resume from the same step; resume them one by one")
        online_resume = online.restore(runs[0].dir, states[0], data, cfg) if cfg.online_steps else None
        if online_resume is not None:
            states = [online_resume.train]
            print(f"[lps] resuming the online phase at env step {int(online_resume.env_step)}")
        else:  # online, the state's step counts online updates too: no longer comparable to --steps
            rundir.check_resume_steps(cfg.steps, int(states[0].step), [r.dir for r in runs])
        print(f"[lps] resuming {', '.join(str(r.dir) for r in runs)} from step {int(states[0].step)}")
        for run, run_changes in zip(runs, changes):
            rundir.record_changes(run.dir, int(states[0].step), run_changes)
    for run in runs:
        if not resume:
            _clear_run_dir(run.dir)
            save_config(run.dir, agent_name, run.cfg, agent.cfg, agent.spec)
        run.log = RunLog(run.dir, cfg.tensorboard, resume_step=int(states[0].step) if resume else 0)
        if cfg.wandb:
            run.log.sinks.append(_wandb_sink(run, agent_name, agent.cfg, resume))
    state = stack_seeds(states)
    update = make_seeds_update(agent, optimizer, cfg.batch_size, len(runs))
    evaluator = make_evaluator(cfg, len(runs))
    if evaluator is not None:
        check_image_size(agent.spec.image_shape, getattr(evaluator, "obs_shape", None), cfg.env)
    if evaluator is not None and getattr(evaluator, "obs_dim", agent.spec.obs_dim) != agent.spec.obs_dim:
        print(f"[lps] evaluation disabled: {cfg.env} observations have {evaluator.obs_dim} dims, the data "
              f"{agent.spec.obs_dim}; pass the matching --env or --eval-episodes 0")  # fmt: skip
        evaluator.close()
        evaluator = None
    validator = Validator(cfg, agent)
    compiled: dict[int, Any] = {}
    last_eval: list[dict] = []

    def per_seed(tree, i: int):
        return jax.tree_util.tree_map(lambda x: x[i], tree) if len(runs) > 1 else tree

    def after_eval(step: int, results: list[dict]) -> None:
        nonlocal last_eval
        last_eval = results
        for run in runs:
            run.log.plot(run.title)

    schedule = EvaluationSchedule(
        evaluator, (lambda: make_evaluator(cfg, len(runs))) if evaluator is not None else None, agent,
        [run.cfg.seed for run in runs], cfg.eval_episodes, [run.log for run in runs], overlap_evaluation(cfg),
        after_eval,
    )  # fmt: skip

    def evaluate(step: int) -> None:
        """The evaluation step: each seed's evaluation row at `step` holds its episodes' results
        and the extra metrics below (one dict per seed)."""
        extra_rows: list[dict] = [
            # the validation split's val/ metrics (lps.validation)
            validator(per_seed(state.params, i), per_seed(state.target_params, i)) if validator.active else {}
            for i in range(len(runs))
        ]
        schedule.submit(step, seed_axis(state.params, len(runs)), extra_rows)

    def save() -> None:
        for i, run in enumerate(runs):
            checkpoint.save(run.dir, per_seed(state, i))
            # A resumed run's (possibly changed) config is recorded with its first checkpoint, so
            # a resume that fails early leaves the run as it was.
            save_config(run.dir, agent_name, run.cfg, agent.cfg, agent.spec)

    from tqdm import tqdm

    step = int(states[0].step)
    del states
    bar = tqdm(total=cfg.steps, initial=step, disable=not cfg.progress, unit="step", dynamic_ncols=True)
    if resume and step > 0 and _eval_due(cfg, step) and not all(_has_eval(run.log, step) for run in runs):
        evaluate(step)  # the run stopped before its evaluation of this step was written
    start, start_step = time.perf_counter(), step
    stop.armed = True  # from here on a signal stops the run with a checkpoint
    try:
        while step < cfg.steps:
            n = min(cfg.log_every, cfg.steps - step)
            if n not in compiled:
                compiled[n] = make_multi_update(update, n, scan=scan_updates(agent))
            tick = time.perf_counter()
            new_state, metrics = compiled[n](state, device_data)
            metrics = {k: np.asarray(v).reshape(n, len(runs)) for k, v in jax.device_get(metrics).items()}
            elapsed = time.perf_counter() - tick
            for i, run in enumerate(runs):
                _check_finite({k: v[:, i] for k, v in metrics.items()}, step, run.dir)
            state, step = new_state, step + n
            rows = [{k: float(np.mean(v[:, i])) for k, v in metrics.items()} for i in range(len(runs))]
            schedule.log_training(step, [{**row, "steps_per_sec": n / elapsed} for row in rows])
            bar.update(n)
            if _eval_due(cfg, step):
                evaluate(step)
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
                schedule.wait_before(step)
                save()
            elif stop.signum is not None:
                save()
            if stop.signum is not None and step < cfg.steps:
                raise stop.interrupted(step, runs[0].dir.parent if cfg.seeds else runs[0].dir)
            success = [r["eval/success"] for r in last_eval]
            bar.set_postfix(
                sps=f"{n * len(runs) / elapsed:.0f}",
                success=" ".join(f"{x:.2f}" for x in success) if success else "-",
                refresh=False,
            )
        bar.close()
        if cfg.online_steps:

            def save_online(train_state) -> None:
                nonlocal state
                state = train_state
                save()

            start_online = online_resume or online.initial_state(state, data, cfg)
            state = online.run(cfg, agent, optimizer, start_online, run_dir=runs[0].dir, schedule=schedule,
                               save_train=save_online, progress=cfg.progress, stop=stop).train  # fmt: skip
        schedule.finish()
    finally:
        bar.close()
        schedule.shutdown()
        for run in runs:
            if run.log is not None:
                run.log.close()

    elapsed = time.perf_counter() - start
    summaries = []
    for run in runs:
        steps_run = (int(state.step) if cfg.online_steps else step) - start_step  # online: its updates too
        summary = _summary(agent_name, run.cfg, run.dir, run.log, steps_run, elapsed)
        if cfg.online_steps:
            summary.update(online_env_steps=cfg.online_steps, gradient_steps=int(state.step))
        checkpoint.write_json(run.dir / SUMMARY_JSON, summary)
        print(_summary_line(summary))
        summaries.append(summary)
    return summaries if cfg.seeds else summaries[0]


def _wandb_sink(run: "_SeedRun", agent_name: str, agent_cfg, resume: bool):
    from lps.loggers import WandbSink

    c = run.cfg
    return WandbSink(run.dir, {"agent": agent_name, "train": to_dict(c), "agent_config": to_dict(agent_cfg)},
                     project=c.wandb_project, group=c.wandb_group, mode=c.wandb_mode, resume=resume,
                     name=c.wandb_name or f"{c.env}/{agent_name}/seed{c.seed}")  # fmt: skip


def _eval_due(cfg: TrainConfig, step: int) -> bool:
    return bool(cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps


def _has_eval(log: RunLog, step: int) -> bool:
    return any(r["step"] == step and ("eval/success" in r or "eval/failed" in r) for r in log.rows)


def seed_configs(cfg: TrainConfig, agent_name: str) -> list[TrainConfig]:
    """One single-seed config per seed; each seed's run directory is that of a single-seed run
    (`--run-dir` with several seeds is the parent of their `seed<k>` folders)."""
    if not cfg.seeds:
        run_dir = cfg.run_dir or str(default_run_dir(cfg, agent_name))
        return [dataclasses.replace(cfg, run_dir=run_dir)]
    out = []
    for seed in cfg.seeds:
        single = dataclasses.replace(cfg, seed=seed, seeds=())
        run_dir = Path(cfg.run_dir) / f"seed{seed}" if cfg.run_dir else default_run_dir(single, agent_name)
        out.append(dataclasses.replace(single, run_dir=str(run_dir)))
    return out


class _SeedRun:
    """The per-seed side of a run: its config, directory and records."""

    def __init__(self, cfg: TrainConfig, agent_name: str):
        self.cfg, self.dir, self.log = cfg, Path(cfg.run_dir), None
        self.title = f"{agent_name} on {task_name(cfg)} (seed {cfg.seed})"


def _check_finite(metrics: dict, first_step: int, run_dir: Path) -> None:
    """Raise at the earliest step where any metric is NaN/inf, naming every metric bad there."""
    bad = {name: ~np.isfinite(np.asarray(values)) for name, values in metrics.items()}
    bad_steps = [int(np.argmax(b)) for b in bad.values() if b.any()]
    if not bad_steps:
        return
    index = min(bad_steps)
    names = ", ".join(f"'{n}' = {metrics[n][index]}" for n, b in bad.items() if b[index])
    kept = (
        f"the last good checkpoint is kept in {run_dir / checkpoint.CHECKPOINT}"
        if (run_dir / checkpoint.CHECKPOINT).exists()
        else "no checkpoint had been written yet"
    )
    raise TrainingDiverged(
        f"training diverged at step {first_step + index + 1}: {names}; training stopped and {kept}. "
        "Try a lower --lr, or check the data's rewards"
    )


def _clear_run_dir(run_dir: Path) -> None:
    """Remove a previous run's outputs (only with --overwrite) so none is mistaken for this run's."""
    import shutil

    names = (checkpoint.CHECKPOINT, checkpoint.PREVIOUS, SUMMARY_JSON, CONFIG_JSON, rundir.RESUME_LOG)
    for name in (*names, "metrics.csv", "metrics.jsonl", "curves.png"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / online.ONLINE_DIR, ignore_errors=True)
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)


def _summary(agent_name, cfg, run_dir, log: RunLog, steps_run: int, elapsed: float) -> dict:
    steps, success = log.series("eval/success")
    return {
        "agent": agent_name,
        "env": task_name(cfg),
        "seed": cfg.seed,
        "steps": cfg.steps,
        "run_dir": str(run_dir),
        "wall_time_s": elapsed,
        "steps_per_sec": steps_run / elapsed if elapsed > 0 else math.nan,
        "final_success": success[-1] if success else None,
        "best_success": max(success) if success else None,
        "eval_episodes": cfg.eval_episodes,
    }


def _summary_line(s: dict) -> str:
    minutes, seconds = divmod(int(s["wall_time_s"]), 60)
    result = (
        f"final success {s['final_success']:.2f} (best {s['best_success']:.2f}, {s['eval_episodes']} episodes)"
        if s["final_success"] is not None
        else "no evaluation"
    )
    return (
        f"[lps] done: {s['agent']} on {s['env']} seed {s['seed']}: {s['steps']} steps in {minutes}m{seconds:02d}s "
        f"({s['steps_per_sec']:.0f} steps/s), {result}; outputs in {s['run_dir']}"
    )
