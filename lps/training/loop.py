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
from tqdm import tqdm

from lps.agents import check_agent, resolve_config
from lps.agents.encoded import scan_updates
from lps.data.sampler import chunk_arrays, to_device
from lps.files import write_json
from lps.training import checkpoint, distributed, online, rundir, setup
from lps.training.config import TrainConfig, check_agent_config, save_config, to_dict
from lps.training.eval_schedule import EvaluationSchedule, seed_axis
from lps.training.loggers import WandbSink
from lps.training.plan import RunPlan, resolve
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
from lps.training.val_split import ValSplit


def train(agent_name: str, cfg: TrainConfig, agent_cfg, resume: bool = False) -> dict | list[dict]:
    """Train (or resume) a run and return its summary; with `cfg.seeds`, train those seeds
    together (vmapped) and return one summary per seed. The run directories are locked for the
    whole run; SIGINT/SIGTERM stop it with a checkpoint."""
    check_agent(agent_name)
    check_agent_config(agent_cfg)
    plan = resolve(cfg)  # the task, environment and data source, resolved once for every part below
    runs = [SeedRun(c, agent_name, plan) for c in seed_configs(cfg, agent_name, plan.name)]
    multi_host = cfg.distributed.coordinator_address is not None or distributed.launcher() is not None
    online.check_config(cfg.online, plan, len(runs), multi_host)
    distributed.initialize(cfg.distributed)  # joins the other hosts of a multi-host run, if any
    # Only one process writes (and so locks) the run directories; the others read them to resume.
    claim = rundir.claim([run.dir for run in runs]) if distributed.is_writer() else contextlib.nullcontext()
    with claim, rundir.StopOnSignal() as stop:
        resume, changes = rundir.prepare(runs, agent_name, resolve_config(agent_name, agent_cfg, plan.defaults_task), resume)
        finished = [rundir.finished_summary(run.dir, run.cfg) for run in runs] if resume else [None]
        if all(finished):  # nothing to train: its files stay as they are
            further = ("an online phase cannot be extended (its replay buffer is sized by --online-steps): train "
                       "further in a new --run-dir" if cfg.online.steps else "pass a larger --steps to train further")
            print(f"[lps] {', '.join(str(r.dir) for r in runs)} already finished ({cfg.steps} steps"
                  + (f", {cfg.online.steps} online env steps" if cfg.online.steps else "")
                  + f"): nothing to do; {further}")  # fmt: skip
            return finished if cfg.seeds else finished[0]
        return _train(agent_name, cfg, plan, agent_cfg, runs, resume, changes, stop)


def _train(agent_name, cfg, plan, agent_cfg, runs, resume, changes, stop):
    training = _Training(agent_name, cfg, plan, agent_cfg, runs, resume, changes)  # devices, data, agent, state, records
    start_step = step = training.step
    bar = tqdm(total=cfg.steps, initial=step, disable=not (cfg.progress and distributed.is_writer()), unit="step",
               dynamic_ncols=True)  # fmt: skip
    if resume and step > 0 and _eval_due(cfg, step) and not all(_has_eval(run.log, step) for run in runs):
        training.evaluation(step, training.state)  # the run stopped before its evaluation of this step was written
    start = time.perf_counter()
    stop.armed = True  # from here on a signal stops the run with a checkpoint
    try:
        training.train_offline(bar, stop)
        bar.close()
        if cfg.online.steps:
            training.train_online(stop)  # continues from the offline state, checkpointing through training.save()
        training.evaluation.schedule.finish()
    finally:
        bar.close()
        training.close()
    elapsed = time.perf_counter() - start
    gradient_steps = int(training.state.step) if cfg.online.steps else training.step  # online: its updates too
    summaries = [_write_summary(agent_name, run, gradient_steps - start_step, elapsed, gradient_steps)
                 for run in runs]  # fmt: skip
    return summaries if cfg.seeds else summaries[0]


class _Training:
    """A run being trained: its data on the device(s), agent, optimiser, state (the seeds stacked on
    a leading axis), the scanned update and the evaluation."""

    def __init__(self, agent_name: str, cfg: TrainConfig, plan: RunPlan, agent_cfg, runs: list[SeedRun], resume: bool,
                 changes):  # fmt: skip
        self.agent_name, self.cfg, self.plan, self.runs = agent_name, cfg, plan, runs
        self.layout = distributed.make_layout(cfg.distributed, len(runs), cfg.batch_size)  # None: one device
        self.data = setup.load_data(plan, cfg, [run.dir for run in runs] if distributed.is_writer() else [])  # stats: one writer
        if cfg.online.steps:
            online.check_memory(self.data, cfg, plan)  # refused before the offline steps, not after them
        self.agent = setup.build(agent_name, cfg, agent_cfg, self.data, plan.defaults_task)
        self.device_data = self._place_data()
        online_lr = cfg.lr if cfg.online.steps and cfg.online.lr_schedule == "restart" else None
        self.optimizer = make_optimizer(cfg, online_lr)  # online_lr: the rate past --steps (the online phase)
        states = [create_state(self.agent, self.optimizer, run.cfg.seed) for run in runs]
        self.online_resume = None
        if resume:
            states, self.online_resume = _restore(cfg, plan, runs, states, self.data, changes)
        _open_records(runs, agent_name, self.agent, cfg, resume, int(states[0].step))
        self.state = stack_seeds(states) if self.layout is None else self.layout.place_state(stack_seeds(states))
        self.step = int(states[0].step)
        del states
        self.update = make_seeds_update(self.agent, self.optimizer, cfg.batch_size, len(runs),
                                        self.layout and self.layout.batch_sharding)  # fmt: skip
        self.shardings = None if self.layout is None else self.layout.update_shardings(self.state, self.device_data)
        self.evaluation = _Evaluation(cfg, plan, self.agent, runs, self.layout)
        self.compiled: dict[int, Any] = {}  # one compiled program per dispatch length

    def _place_data(self):
        """The dataset's chunks on the device, or placed on the mesh of several; refused when it holds
        fewer chunks than a batch."""
        cfg = self.cfg
        if self.layout is None:
            device_data = to_device(self.data, cfg.chunk_len, cfg.frame_stack)
        else:
            self.layout = self.layout.fit_data(_nbytes(self.data), cfg.distributed.data_placement)
            device_data = self.layout.place_data(chunk_arrays(self.data, cfg.chunk_len, cfg.frame_stack))
        if cfg.batch_size > device_data.num_chunks:
            raise ValueError(
                f"--batch-size {cfg.batch_size} is larger than the dataset's {device_data.num_chunks} chunks; "
                "use a smaller batch or more data"
            )
        return device_data

    def train_offline(self, bar, stop) -> None:
        """--log-every updates per dispatch, then log / evaluate / checkpoint, until --steps."""
        cfg = self.cfg
        while self.step < cfg.steps:
            n = min(cfg.log_every, cfg.steps - self.step)
            elapsed = self.dispatch(n)
            bar.update(n)
            if _eval_due(cfg, self.step):
                self.evaluation(self.step, self.state)
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                self.evaluation.schedule.wait_before(self.step)
                self.save()
            elif stop.signum is not None:
                self.save()
            if stop.signum is not None and self.step < cfg.steps:
                raise stop.interrupted(self.step, self.runs[0].dir.parent if cfg.seeds else self.runs[0].dir)
            sps = f"{n * len(self.runs) / elapsed:.0f}"
            bar.set_postfix(sps=sps, success=self.evaluation.last_success(), refresh=False)

    def dispatch(self, n: int) -> float:
        """`n` scanned updates of every seed in one device call; their metrics logged as one row per
        seed. The seconds it took."""
        if n not in self.compiled:
            self.compiled[n] = make_multi_update(self.update, n, scan=scan_updates(self.agent), shardings=self.shardings)
        tick = time.perf_counter()
        new_state, metrics = self.compiled[n](self.state, self.device_data)
        metrics = {k: np.asarray(v).reshape(n, len(self.runs)) for k, v in jax.device_get(metrics).items()}
        elapsed = time.perf_counter() - tick
        for i, run in enumerate(self.runs):
            check_finite({k: v[:, i] for k, v in metrics.items()}, self.step, run.dir)
        self.state, self.step = new_state, self.step + n
        rows = [{k: float(np.mean(v[:, i])) for k, v in metrics.items()} for i in range(len(self.runs))]
        self.evaluation.schedule.log_training(self.step, [{**row, "steps_per_sec": n / elapsed} for row in rows])
        return elapsed

    def train_online(self, stop) -> None:
        """The online phase (`lps.training.online`), from the offline state or its own checkpoint."""

        def save_online(train_state) -> None:
            self.state = train_state
            self.save()

        # The online phase runs on one device: a state on several is gathered onto the first.
        offline_state = self.state
        if self.layout is not None:
            offline_state = jax.tree_util.tree_map(jnp.asarray, distributed.gather(self.state))
        start_online = self.online_resume or online.initial_state(offline_state, self.data, self.cfg, self.plan)
        self.state = online.run(self.cfg, self.plan, self.agent, self.optimizer, start_online, run_dir=self.runs[0].dir,
                                schedule=self.evaluation.schedule, save_train=save_online, progress=self.cfg.progress,
                                stop=stop).train  # fmt: skip

    def save(self) -> None:
        """Each seed's checkpoint (gathered from the devices by every process, written by one)."""
        host_state = self.state if self.layout is None else distributed.gather(self.state)  # every process takes part
        if not distributed.is_writer():
            return
        for i, run in enumerate(self.runs):
            checkpoint.save(run.dir, _per_seed(host_state, i, len(self.runs)))
            # A resumed run's (possibly changed) config is recorded with its first checkpoint, so
            # a resume that fails early leaves the run as it was.
            save_config(run.dir, self.agent_name, run.cfg, self.agent.cfg, self.agent.spec)

    def close(self) -> None:
        self.evaluation.schedule.shutdown()
        for run in self.runs:
            if run.log is not None:
                run.log.close()


# --- the parts of a run ---------------------------------------------------------------------


class SeedRun:
    """The per-seed side of a run: its config, directory and records."""

    def __init__(self, cfg: TrainConfig, agent_name: str, plan: RunPlan):
        self.cfg, self.dir, self.log = cfg, Path(cfg.run_dir), None
        self.task = plan.name
        self.title = f"{agent_name} on {plan.name} (seed {cfg.seed})"


def _per_seed(tree, i: int, num_seeds: int):
    return jax.tree_util.tree_map(lambda x: x[i], tree) if num_seeds > 1 else tree


def _restore(cfg: TrainConfig, plan: RunPlan, runs: list[SeedRun], states: list, data, changes):
    """The checkpointed states of a resumed run (and its online phase's state, if it had begun)."""
    states = [checkpoint.restore(run.dir, state) for run, state in zip(runs, states)]
    if len({int(s.step) for s in states}) > 1:
        raise ValueError("seeds trained together must resume from the same step; resume them one by one")
    online_resume = online.restore(runs[0].dir, states[0], data, cfg, plan) if cfg.online.steps else None
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

    def __init__(self, cfg: TrainConfig, plan: RunPlan, agent, runs: list[SeedRun],
                 layout: distributed.Layout | None = None):  # fmt: skip
        self.runs, self.layout = runs, layout
        self.last: list[dict] = []

        def make_evaluator():
            return setup.make_evaluator(plan, cfg.eval, cfg.frame_stack, len(runs))

        # Episodes are played by the process that writes them (the others' results would be dropped).
        evaluator = make_evaluator() if distributed.is_writer() else None
        if evaluator is not None:  # refused now, not after the training
            setup.check_fits_env(evaluator, agent.spec, cfg.env,
                                 "pass the --env the data was recorded in, or --eval-episodes 0 to train without evaluation")  # fmt: skip
        self.val_split = ValSplit(plan, cfg.val_dataset, agent)
        self.schedule = EvaluationSchedule(
            evaluator, make_evaluator if evaluator is not None else None, agent, [run.cfg.seed for run in runs],
            cfg.eval.episodes, [run.log for run in runs], setup.overlap_evaluation(cfg.eval), self._after,
        )  # fmt: skip

    def __call__(self, step: int, state) -> None:
        n = len(self.runs)
        params, target = state.params, state.target_params
        if self.layout is not None:  # on several devices: one host copy for the whole evaluation
            params, target = distributed.gather((params, target))
        extra_rows: list[dict] = [
            # the validation split's val/ metrics (lps.training.val_split)
            self.val_split(_per_seed(params, i, n), _per_seed(target, i, n)) if self.val_split.active else {}
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
    c = run.cfg
    return WandbSink(run.dir, {"agent": agent_name, "train": to_dict(c), "agent_config": to_dict(agent_cfg)},
                     project=c.wandb_project, group=c.wandb_group, mode=c.wandb_mode, resume=resume,
                     name=c.wandb_name or f"{c.env}/{agent_name}/seed{c.seed}")  # fmt: skip


def _nbytes(data: dict) -> int:
    return sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(data))


def _eval_due(cfg: TrainConfig, step: int) -> bool:
    return bool(cfg.eval.every and step % cfg.eval.every == 0) or step == cfg.steps


def _has_eval(log: RunLog, step: int) -> bool:
    return any(r["step"] == step and ("eval/success" in r or "eval/failed" in r) for r in log.rows)


# --- the summary ----------------------------------------------------------------------------


def _write_summary(agent_name: str, run: SeedRun, steps_run: int, elapsed: float, gradient_steps: int) -> dict:
    steps, success = run.log.series("eval/success")
    summary = {
        "agent": agent_name,
        "env": run.task,
        "seed": run.cfg.seed,
        "steps": run.cfg.steps,
        "run_dir": str(run.dir),
        "wall_time_s": elapsed,
        # None: this session trained no step (a resume of a run at its --steps), so it measured no rate
        "steps_per_sec": (steps_run / elapsed if elapsed > 0 else math.nan) if steps_run > 0 else None,
        "final_success": success[-1] if success else None,
        "best_success": max(success) if success else None,
        "eval_episodes": run.cfg.eval.episodes,
    }
    if run.cfg.online.steps:
        summary.update(online_env_steps=run.cfg.online.steps, gradient_steps=gradient_steps)
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
