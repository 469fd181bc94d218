"""The training loop (`lps train`): build the run, then for each dispatch update / log / evaluate /
checkpoint; see docs/training.md.

    state, metrics = multi_update(state, data)     # K scanned updates on the device (lps.training.update)

Each part is one call into its own module: `update`, `rundir`, `runlog`, `checkpoint`,
`eval_schedule`, `validation`, `distributed` (`--devices N`) and, with `--online-steps`, `online`.
Seeds are a vmapped leading axis of the state: one compiled program and one dataset, one run
directory per seed.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lps.agents import check_agent, resolve_config
from lps.agents.encoded import scan_updates
from lps.data.sampler import chunk_arrays, to_device
from lps.files import write_json
from lps.training import checkpoint, distributed, online, rundir, setup
from lps.training.config import TrainConfig, check_agent_config, defaults_task, save_config, task_name, to_dict
from lps.training.eval_schedule import EvaluationSchedule, seed_axis
from lps.training.rundir import SUMMARY_JSON, seed_configs
from lps.training.runlog import RunLog
from lps.training.update import (
    check_finite,
    create_state,
    make_multi_update,
    make_optimizer,
    make_seeds_update,
    stack_seeds,  # fmt: skip
)
from lps.training.validation import Validator


def train(agent_name: str, cfg: TrainConfig, agent_cfg, resume: bool = False) -> dict | list[dict]:
    """Train (or resume) a run and return its summary; with `cfg.seeds`, train those seeds
    together (vmapped) and return one summary per seed. The run directories are locked for the
    whole run; SIGINT/SIGTERM stop it with a checkpoint."""
    check_agent(agent_name)
    check_agent_config(agent_cfg)
    runs = [SeedRun(c, agent_name) for c in seed_configs(cfg, agent_name)]
    online.check_config(cfg, len(runs))
    distributed.initialize(cfg.distributed)  # joins the other hosts of a multi-host run, if any
    # Only one process writes (and so locks) the run directories; the others read them to resume.
    claim = rundir.claim([run.dir for run in runs]) if distributed.is_writer() else contextlib.nullcontext()
    with claim, rundir.StopOnSignal() as stop:
        resume, changes = rundir.prepare(runs, agent_name, resolve_config(agent_name, agent_cfg, defaults_task(cfg)), resume)
        finished = [rundir.finished_summary(run.dir, run.cfg) for run in runs] if resume else [None]
        if all(finished):  # nothing to train: its files stay as they are
            print(f"[lps] {', '.join(str(r.dir) for r in runs)} already finished ({cfg.steps} steps"
                  + (f", {cfg.online_steps} online env steps" if cfg.online_steps else "")
                  + "): nothing to do; pass a larger --steps (or --online-steps) to train further")  # fmt: skip
            return finished if cfg.seeds else finished[0]
        return _train(agent_name, cfg, agent_cfg, runs, resume, changes, stop)


def _train(agent_name, cfg, agent_cfg, runs, resume, changes, stop):
    # --- build: devices, data, agent, optimiser, state (fresh or resumed), records, evaluation ---
    layout = distributed.make_layout(cfg.distributed, len(runs), cfg.batch_size)  # None: one device
    data = setup.load_data(cfg, [run.dir for run in runs] if distributed.is_writer() else [])  # stats: one writer
    if cfg.online_steps:
        online.check_memory(data, cfg)  # refused before the offline steps, not after them
    agent = setup.build(agent_name, cfg, agent_cfg, data)
    if layout is None:
        device_data = to_device(data, cfg.chunk_len, cfg.frame_stack)
    else:
        layout = layout.fit_data(_nbytes(data), cfg.distributed.data_placement)
        device_data = layout.place_data(chunk_arrays(data, cfg.chunk_len, cfg.frame_stack))
    if cfg.batch_size > device_data.num_chunks:
        raise ValueError(
            f"--batch-size {cfg.batch_size} is larger than the dataset's {device_data.num_chunks} chunks; "
            "use a smaller batch or more data"
        )
    online_lr = cfg.lr if cfg.online_steps and cfg.online_lr_schedule == "restart" else None
    optimizer = make_optimizer(cfg, online_lr)  # online_lr: the rate past --steps (the online phase)
    states = [create_state(agent, optimizer, run.cfg.seed) for run in runs]
    online_resume = None
    if resume:
        states, online_resume = _restore(cfg, runs, states, data, changes)
    _open_records(runs, agent_name, agent, cfg, resume, int(states[0].step))
    state = stack_seeds(states) if layout is None else layout.place_state(stack_seeds(states))
    step = start_step = int(states[0].step)
    del states
    update = make_seeds_update(agent, optimizer, cfg.batch_size, len(runs), layout and layout.batch_sharding)
    shardings = None if layout is None else layout.update_shardings(state, device_data)
    evaluation = _Evaluation(cfg, agent, runs, layout)

    def save() -> None:
        host_state = state if layout is None else distributed.gather(state)  # every process takes part
        if not distributed.is_writer():
            return
        for i, run in enumerate(runs):
            checkpoint.save(run.dir, _per_seed(host_state, i, len(runs)))
            # A resumed run's (possibly changed) config is recorded with its first checkpoint, so
            # a resume that fails early leaves the run as it was.
            save_config(run.dir, agent_name, run.cfg, agent.cfg, agent.spec)

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, disable=not (cfg.progress and distributed.is_writer()), unit="step",
               dynamic_ncols=True)  # fmt: skip
    if resume and step > 0 and _eval_due(cfg, step) and not all(_has_eval(run.log, step) for run in runs):
        evaluation(step, state)  # the run stopped before its evaluation of this step was written
    start = time.perf_counter()
    stop.armed = True  # from here on a signal stops the run with a checkpoint
    compiled: dict[int, Any] = {}  # one compiled program per dispatch length
    try:
        # --- the offline loop: K updates per dispatch, then log / evaluate / checkpoint ---
        while step < cfg.steps:
            n = min(cfg.log_every, cfg.steps - step)
            if n not in compiled:
                compiled[n] = make_multi_update(update, n, scan=scan_updates(agent), shardings=shardings)
            tick = time.perf_counter()
            new_state, metrics = compiled[n](state, device_data)
            metrics = {k: np.asarray(v).reshape(n, len(runs)) for k, v in jax.device_get(metrics).items()}
            elapsed = time.perf_counter() - tick
            for i, run in enumerate(runs):
                check_finite({k: v[:, i] for k, v in metrics.items()}, step, run.dir)
            state, step = new_state, step + n
            rows = [{k: float(np.mean(v[:, i])) for k, v in metrics.items()} for i in range(len(runs))]
            evaluation.schedule.log_training(step, [{**row, "steps_per_sec": n / elapsed} for row in rows])
            bar.update(n)
            if _eval_due(cfg, step):
                evaluation(step, state)
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
                evaluation.schedule.wait_before(step)
                save()
            elif stop.signum is not None:
                save()
            if stop.signum is not None and step < cfg.steps:
                raise stop.interrupted(step, runs[0].dir.parent if cfg.seeds else runs[0].dir)
            bar.set_postfix(sps=f"{n * len(runs) / elapsed:.0f}", success=evaluation.last_success(), refresh=False)
        bar.close()
        # --- the online phase: continues from the offline state, checkpointing through save() ---
        if cfg.online_steps:

            def save_online(train_state) -> None:
                nonlocal state
                state = train_state
                save()

            # The online phase runs on one device: a state on several is gathered onto the first.
            offline_state = state if layout is None else jax.tree_util.tree_map(jnp.asarray, distributed.gather(state))
            start_online = online_resume or online.initial_state(offline_state, data, cfg)
            state = online.run(cfg, agent, optimizer, start_online, run_dir=runs[0].dir, schedule=evaluation.schedule,
                               save_train=save_online, progress=cfg.progress, stop=stop).train  # fmt: skip
        evaluation.schedule.finish()
    finally:
        bar.close()
        evaluation.schedule.shutdown()
        for run in runs:
            if run.log is not None:
                run.log.close()

    # --- summaries ---
    elapsed = time.perf_counter() - start
    steps_run = (int(state.step) if cfg.online_steps else step) - start_step  # online: its updates too
    gradient_steps = int(state.step) if cfg.online_steps else step  # online: one seed, its updates too
    summaries = [_write_summary(agent_name, run, cfg, steps_run, elapsed, gradient_steps) for run in runs]
    return summaries if cfg.seeds else summaries[0]


# --- the parts of a run ---------------------------------------------------------------------


class SeedRun:
    """The per-seed side of a run: its config, directory and records."""

    def __init__(self, cfg: TrainConfig, agent_name: str):
        self.cfg, self.dir, self.log = cfg, Path(cfg.run_dir), None
        self.title = f"{agent_name} on {task_name(cfg)} (seed {cfg.seed})"


def _per_seed(tree, i: int, num_seeds: int):
    return jax.tree_util.tree_map(lambda x: x[i], tree) if num_seeds > 1 else tree


def _restore(cfg: TrainConfig, runs: list[SeedRun], states: list, data, changes):
    """The checkpointed states of a resumed run (and its online phase's state, if it had begun)."""
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
        if distributed.is_writer():
            rundir.record_changes(run.dir, int(states[0].step), run_changes)
    return states, online_resume


def _open_records(runs: list[SeedRun], agent_name: str, agent, cfg: TrainConfig, resume: bool, step: int) -> None:
    """Each seed's config (a fresh run) and metric log (continued on resume); written by one process."""
    writer = distributed.is_writer()
    for run in runs:
        if not resume and writer:
            rundir.clear_outputs(run.dir)
            save_config(run.dir, agent_name, run.cfg, agent.cfg, agent.spec)
        run.log = RunLog(run.dir, cfg.tensorboard and writer, resume_step=step if resume else 0, writes=writer)
        if cfg.wandb and writer:
            run.log.sinks.append(_wandb_sink(run, agent_name, agent.cfg, resume))


class _Evaluation:
    """The evaluation step: each seed's episodes (through the schedule, which may overlap them with
    training) plus its validation metrics, logged as one row per seed at the step."""

    def __init__(self, cfg: TrainConfig, agent, runs: list[SeedRun], layout: distributed.Layout | None = None):
        self.runs, self.layout = runs, layout
        self.last: list[dict] = []
        # Episodes are played by the process that writes them (the others' results would be dropped).
        evaluator = setup.make_evaluator(cfg, len(runs)) if distributed.is_writer() else None
        if evaluator is not None:  # refused now, not after the training
            setup.check_fits_env(evaluator, agent.spec, cfg.env,
                                 "pass the --env the data was recorded in, or --eval-episodes 0 to train without evaluation")  # fmt: skip
        self.validator = Validator(cfg, agent)
        rebuild = (lambda: setup.make_evaluator(cfg, len(runs))) if evaluator is not None else None
        self.schedule = EvaluationSchedule(
            evaluator, rebuild, agent, [run.cfg.seed for run in runs], cfg.eval_episodes, [run.log for run in runs],
            setup.overlap_evaluation(cfg), self._after,
        )  # fmt: skip

    def __call__(self, step: int, state) -> None:
        n = len(self.runs)
        params, target = state.params, state.target_params
        if self.layout is not None:  # on several devices: one host copy for the whole evaluation
            params, target = distributed.gather((params, target))
        extra_rows: list[dict] = [
            # the validation split's val/ metrics (lps.training.validation)
            self.validator(_per_seed(params, i, n), _per_seed(target, i, n)) if self.validator.active else {}
            for i in range(n)
        ]
        self.schedule.submit(step, seed_axis(params, n), extra_rows)

    def _after(self, step: int, results: list[dict]) -> None:
        self.last = results
        for run in self.runs:
            run.log.plot(run.title)

    def last_success(self) -> str:
        success = [r["eval/success"] for r in self.last]
        return " ".join(f"{x:.2f}" for x in success) if success else "-"


def _wandb_sink(run: SeedRun, agent_name: str, agent_cfg, resume: bool):
    from lps.training.loggers import WandbSink

    c = run.cfg
    return WandbSink(run.dir, {"agent": agent_name, "train": to_dict(c), "agent_config": to_dict(agent_cfg)},
                     project=c.wandb_project, group=c.wandb_group, mode=c.wandb_mode, resume=resume,
                     name=c.wandb_name or f"{c.env}/{agent_name}/seed{c.seed}")  # fmt: skip


def _nbytes(data: dict) -> int:
    return sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(data))


def _eval_due(cfg: TrainConfig, step: int) -> bool:
    return bool(cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps


def _has_eval(log: RunLog, step: int) -> bool:
    return any(r["step"] == step and ("eval/success" in r or "eval/failed" in r) for r in log.rows)


# --- the summary ----------------------------------------------------------------------------


def _write_summary(agent_name: str, run: SeedRun, cfg: TrainConfig, steps_run: int, elapsed: float,
                   gradient_steps: int) -> dict:  # fmt: skip
    steps, success = run.log.series("eval/success")
    summary = {
        "agent": agent_name,
        "env": task_name(run.cfg),
        "seed": run.cfg.seed,
        "steps": run.cfg.steps,
        "run_dir": str(run.dir),
        "wall_time_s": elapsed,
        # None: this session trained no step (a resume of a run at its --steps), so it measured no rate
        "steps_per_sec": (steps_run / elapsed if elapsed > 0 else math.nan) if steps_run > 0 else None,
        "final_success": success[-1] if success else None,
        "best_success": max(success) if success else None,
        "eval_episodes": run.cfg.eval_episodes,
    }
    if cfg.online_steps:
        summary.update(online_env_steps=cfg.online_steps, gradient_steps=gradient_steps)
    if distributed.is_writer():
        write_json(run.dir / SUMMARY_JSON, summary)
        print(_summary_line(summary))
    return summary


def _summary_line(s: dict) -> str:
    minutes, seconds = divmod(int(s["wall_time_s"]), 60)
    result = (
        f"final success {s['final_success']:.2f} (best {s['best_success']:.2f}, {s['eval_episodes']} episodes)"
        if s["final_success"] is not None
        else "no evaluation"
    )
    steps = f"{s['steps']} steps"
    if "online_env_steps" in s:  # the online updates count too
        steps = (f"{s['gradient_steps']} gradient steps ({s['steps']} offline, {s['gradient_steps'] - s['steps']} "
                 f"online over {s['online_env_steps']} env steps)")  # fmt: skip
    rate = "no step trained now" if s["steps_per_sec"] is None else f"{s['steps_per_sec']:.0f} steps/s"
    return (
        f"[lps] done: {s['agent']} on {s['env']} seed {s['seed']}: {steps} in {minutes}m{seconds:02d}s "
        f"({rate}), {result}; outputs in {s['run_dir']}"
    )
