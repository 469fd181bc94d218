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

from lps import checkpoint
from lps.agents import Spec, check_agent, config_class, resolve_config
from lps.config import TrainConfig, check_positive_widths, from_dict, to_dict
from lps.critic import polyak
from lps.data.sampler import ChunkData, sample_chunks, to_device
from lps.encoders import build_agent, observation_spec
from lps.render import check_image_size
from lps.runlog import RunLog

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
    if cfg.lr_schedule == "cosine":
        return optax.adam(optax.cosine_decay_schedule(cfg.lr, cfg.steps))
    return optax.adam(cfg.lr)


def create_state(agent, optimizer, seed: int) -> TrainState:
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    params = agent.init(init_key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        rng=train_key,
        params=params,
        # A copy, not an alias: the state's buffers are donated to the update.
        target_params=jax.tree_util.tree_map(jnp.copy, {k: params[k] for k in agent.target_keys}),
        opt_state=optimizer.init(params),
    )


def make_update(agent, optimizer, batch_size: int):
    """The pure update `(state, data) -> (state, metrics)`: sample, one gradient step, Polyak."""
    spec, tau = agent.spec, getattr(agent.cfg, "tau", 0.0)

    def update(state: TrainState, data: ChunkData):
        batch_key, loss_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
        batch = sample_chunks(data, batch_key, batch_size, spec.chunk_len, spec.gamma)
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


def make_multi_update(update, num_steps: int, host_loop: bool = False):
    """`num_steps` updates in one compiled program; returns per-step metrics stacked.

    `host_loop`: dispatch the same compiled update once per step instead (same numbers: a step's
    randomness depends only on its index). For image encoders on a CPU: XLA:CPU runs convolution
    gradients inside a scan's loop ~25x slower than outside it (jax 0.10; 13 s vs 0.5 s per step
    for IMPALA-small on 128 64x64 images), so there one dispatch per step is far faster."""
    if host_loop:
        step = jax.jit(update, donate_argnums=0)

        def stepped(state, data):
            metrics = []
            for _ in range(num_steps):
                state, m = step(state, data)
                metrics.append(m)
            return state, jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *metrics)

        return stepped

    @partial(jax.jit, donate_argnums=0)
    def multi_update(state, data):
        return jax.lax.scan(lambda s, _: update(s, data), state, None, length=num_steps)

    return multi_update


def needs_host_loop(agent) -> bool:
    """Whether `make_multi_update` should loop on the host (image encoders on a CPU, see there)."""
    from lps.encoders import EncodedAgent

    return jax.default_backend() == "cpu" and isinstance(agent, EncodedAgent)


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


def make_evaluator(cfg: TrainConfig):
    """An evaluator for the config's task, or None (no evaluation asked, or no environment)."""
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
        return Evaluator(env_id, min(cfg.eval_episodes, DEFAULT_POOL))
    except ImportError as e:
        print(f"[lps] evaluation disabled: {e}")
        return None


@lru_cache(maxsize=32)
def jitted_act(agent):
    """One compiled acting function per agent (agents are hashable), reused across evaluations."""
    return jax.jit(agent.act)


def make_policy_fn(agent, params, seed: int):
    """`(obs batch, call index) -> chunks (B, H, A)` for an evaluator: one jitted network call."""
    act = jitted_act(agent)
    key = jax.random.PRNGKey(seed)
    spec = agent.spec

    def policy(obs, call):
        chunk = act(params, jnp.asarray(obs), jax.random.fold_in(key, call))
        return np.asarray(chunk).reshape(len(obs), spec.chunk_len, spec.action_dim)

    return policy


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
                       cfg.augment_prob)  # fmt: skip


# --- run directories ------------------------------------------------------------------------


def default_run_dir(cfg: TrainConfig, agent_name: str) -> Path:
    task = Path(cfg.dataset).resolve().name if is_robot_dataset(cfg) else cfg.env
    return Path("runs") / task / agent_name / f"seed{cfg.seed}"


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
    together (vmapped) and return one summary per seed. See the module docstring."""
    check_agent(agent_name)
    check_positive_widths(agent_cfg)
    runs = [_SeedRun(c, agent_name) for c in seed_configs(cfg, agent_name)]
    for run in runs:
        if not resume and (run.dir / CONFIG_JSON).exists() and not cfg.overwrite:
            raise FileExistsError(
                f"{run.dir} already holds a run: resume it with `lps train --resume {run.dir}`, "
                "or choose another --run-dir, or pass --overwrite"
            )
    data = load_data(cfg)
    agent = build(agent_name, cfg, agent_cfg, data)
    device_data = to_device(data, cfg.chunk_len)
    if cfg.batch_size > device_data.num_chunks:
        raise ValueError(
            f"--batch-size {cfg.batch_size} is larger than the dataset's {device_data.num_chunks} chunks; "
            "use a smaller batch or more data"
        )
    optimizer = make_optimizer(cfg)
    states = [create_state(agent, optimizer, run.cfg.seed) for run in runs]
    if resume:
        states = [checkpoint.restore(run.dir, state) for run, state in zip(runs, states)]
        if len({int(s.step) for s in states}) > 1:
            raise ValueError("seeds trained together must resume from the same step; resume them one by one")
        print(f"[lps] resuming {', '.join(str(r.dir) for r in runs)} from step {int(states[0].step)}")
    for run in runs:
        if not resume:
            _clear_run_dir(run.dir)
            save_config(run.dir, agent_name, run.cfg, agent.cfg, agent.spec)
        run.log = RunLog(run.dir, cfg.tensorboard, resume_step=int(states[0].step) if resume else 0)
    state = stack_seeds(states)
    update = make_seeds_update(agent, optimizer, cfg.batch_size, len(runs))
    evaluator = make_evaluator(cfg)
    if evaluator is not None:
        check_image_size(agent.spec.image_shape, getattr(evaluator, "obs_shape", None), cfg.env)
    if evaluator is not None and getattr(evaluator, "obs_dim", agent.spec.obs_dim) != agent.spec.obs_dim:
        print(f"[lps] evaluation disabled: {cfg.env} observations have {evaluator.obs_dim} dims, the data "
              f"{agent.spec.obs_dim}; pass the matching --env or --eval-episodes 0")  # fmt: skip
        evaluator.close()
        evaluator = None
    compiled: dict[int, Any] = {}

    def per_seed(tree, i: int):
        return jax.tree_util.tree_map(lambda x: x[i], tree) if len(runs) > 1 else tree

    def evaluate(step: int) -> list[dict]:
        if evaluator is None:
            return []
        results = []
        for i, run in enumerate(runs):
            policy = make_policy_fn(agent, per_seed(state.params, i), run.cfg.seed)
            results.append(evaluator.run(policy, cfg.eval_episodes, seed=run.cfg.seed))
            run.log.log(step, results[-1])
            run.log.plot(run.title)
        return results

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
    last_eval: list[dict] = []
    start, start_step = time.perf_counter(), step
    try:
        while step < cfg.steps:
            n = min(cfg.log_every, cfg.steps - step)
            if n not in compiled:
                compiled[n] = make_multi_update(update, n, host_loop=needs_host_loop(agent))
            tick = time.perf_counter()
            new_state, metrics = compiled[n](state, device_data)
            metrics = {k: np.asarray(v).reshape(n, len(runs)) for k, v in jax.device_get(metrics).items()}
            elapsed = time.perf_counter() - tick
            for i, run in enumerate(runs):
                _check_finite({k: v[:, i] for k, v in metrics.items()}, step, run.dir)
            state, step = new_state, step + n
            for i, run in enumerate(runs):
                row = {k: float(np.mean(v[:, i])) for k, v in metrics.items()}
                run.log.log(step, {**row, "steps_per_sec": n / elapsed})
            bar.update(n)
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                last_eval = evaluate(step)
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
                save()
            success = [r["eval/success"] for r in last_eval]
            bar.set_postfix(
                sps=f"{n * len(runs) / elapsed:.0f}",
                success=" ".join(f"{x:.2f}" for x in success) if success else "-",
                refresh=False,
            )
    finally:
        bar.close()
        for run in runs:
            if run.log is not None:
                run.log.close()
        if evaluator is not None:
            evaluator.close()

    elapsed = time.perf_counter() - start
    summaries = []
    for run in runs:
        summary = _summary(agent_name, run.cfg, run.dir, run.log, step - start_step, elapsed)
        checkpoint.write_json(run.dir / SUMMARY_JSON, summary)
        print(_summary_line(summary))
        summaries.append(summary)
    return summaries if cfg.seeds else summaries[0]


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
        self.title = f"{agent_name} on {cfg.env} (seed {cfg.seed})"


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

    for name in (checkpoint.CHECKPOINT, SUMMARY_JSON, CONFIG_JSON, "metrics.csv", "metrics.jsonl", "curves.png"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)


def _summary(agent_name, cfg, run_dir, log: RunLog, steps_run: int, elapsed: float) -> dict:
    steps, success = log.series("eval/success")
    return {
        "agent": agent_name,
        "env": cfg.env,
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
