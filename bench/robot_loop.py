"""The whole robot loop on one machine, cube-single task 1 as the "robot": does fine-tuning help?

    python bench/robot_loop.py [--seeds 0,1,2,3] [--demos 50] [--offline-steps 3000] [--online-episodes 16]
                               [--eval-episodes 20] [--intervene-prob 0] [--failures timeout] [--clone successes]

1. Demonstrations: the scripted operator plays `--demos` episodes (`lps robot-sim --scripted --record`).
2. Offline LPS on them (the quick preset's nets, `--offline-steps` steps), one run per seed.
3. Before: the served offline policy's success over `--eval-episodes` episodes (not sent).
4. Online: `lps serve RUN --learn` with the learner's defaults (or the flags given) and
   `--online-episodes` robot-sim episodes, each played after the learner has trained on the one
   before (as a robot waits between rollouts); after: the served fine-tuned policy.
5. Control: offline-only LPS with as many gradient steps as the fine-tuned run took in all.

Every policy is evaluated on the same resets. Prints a line per seed, the learner's diagnostics
at its first and last trained episode (`RUN/learner/metrics.jsonl`), and last the means with a
95 % bootstrap interval (over seeds) of after - before and after - control.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "disable")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lps.cli.devices import ask_for_host_devices  # noqa: E402  (after the sys.path line: runs from a checkout)

ask_for_host_devices(2)  # as `lps serve --learn` on a CPU-only host: a second device for the learner (before JAX)

TASK = "cube-single-play-singletask-task1-v0"
TOKEN = "bench-robot-loop"
LOG_EVERY = 50
EVAL_SEED = 10_000  # the evaluation resets: the same for every policy
SHOWN = ("success/last10", "offline/q_data", "online/q_data", "offline/td", "online/td", "online/bc", "shift/offline")


def offline(demos: Path, run: Path, steps: int, seed: int) -> Path:
    """An offline LPS run of `steps` (rounded up to a multiple of LOG_EVERY), reused if finished."""
    from lps.agents import LPSConfig
    from lps.training.config import preset, with_flags
    from lps.training.loop import train

    if (run / "summary.json").exists():
        return run
    steps = -(-steps // LOG_EVERY) * LOG_EVERY
    cfg, agent_cfg = preset("quick", LPSConfig)
    cfg = with_flags(cfg, env=TASK, dataset=str(demos), steps=steps, save_every=steps, log_every=LOG_EVERY,
                              eval_every=0, eval_episodes=0, run_dir=str(run), seed=seed, progress=False)  # fmt: skip
    train("lps", cfg, agent_cfg)
    return run


def serving(run: Path, learner_cfg=None):
    """(url, learner or None, stop) of a server on a free port in this process."""
    from lps.deploy.learner import attach, spare_device
    from lps.deploy.serve import load_server

    srv = load_server(run, device="cpu", log_every_s=0.0, log=lambda s: None)
    learner = None
    if learner_cfg is not None:
        learner = attach(srv, run, learner_cfg, log=lambda s: None, device=spare_device(srv.policy.device))
    ws = srv.start("127.0.0.1", 0)
    threading.Thread(target=ws.serve_forever, daemon=True).start()

    def stop():
        if learner is not None:
            learner.close()
        ws.shutdown()

    return f"ws://127.0.0.1:{ws.socket.getsockname()[1]}", learner, stop


def success(url: str, env, episodes: int, max_steps: int) -> float:
    from lps.client import PolicyClient
    from lps.deploy import robot_sim

    with PolicyClient(url) as policy:
        results = robot_sim.play_episodes(policy, env, episodes, seed=EVAL_SEED, max_steps=max_steps, log=lambda s: None,
                                          chunk_len=int(policy.spec()["chunk_len"]), send=False)  # fmt: skip
    return float(np.mean([r["success"] for r in results]))


def bootstrap_interval(values: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of `values` (one per seed)."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, (resamples, len(values)), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def diagnostics(run: Path) -> str:
    rows = [json.loads(line) for line in (run / "learner" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r["step"] > rows[0]["step"]] or rows

    def show(r):
        return ", ".join(f"{k} {r[k]:.3g}" for k in SHOWN if r.get(k) is not None)

    return f"    first updates (episode {trained[0]['episode']}): {show(trained[0])}\n" \
           f"    last (episode {rows[-1]['episode']}): {show(rows[-1])}"  # fmt: skip


def main() -> None:
    from lps.deploy.learner import LearnerConfig

    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1,2,3")
    p.add_argument("--demos", type=int, default=50)
    p.add_argument("--offline-steps", type=int, default=3000)
    p.add_argument("--online-episodes", type=int, default=16)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--max-steps", type=int, default=200, help="episode limit of demos, online and eval episodes")
    p.add_argument("--intervene-prob", type=float, default=0.0,
                   help="the scripted operator takes over a chunk of the online episodes with this probability")
    defaults = LearnerConfig(token=TOKEN)
    p.add_argument("--utd", type=float, default=defaults.utd)
    p.add_argument("--start-episodes", type=int, default=defaults.start_episodes)
    p.add_argument("--failures", choices=["timeout", "penalty"], default=defaults.failures)
    p.add_argument("--clone", choices=["successes", "all"], default=defaults.clone)
    p.add_argument("--out", default="runs/robot-loop")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    learner_cfg = dataclasses.replace(defaults, utd=a.utd, start_episodes=a.start_episodes, failures=a.failures,
                                      clone=a.clone)  # fmt: skip

    from lps.client import PolicyClient
    from lps.deploy import robot_sim

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = robot_sim.make_env(TASK)
    operator = robot_sim.CubeOperator(env)
    demos = out / "demos.npz"
    if not demos.exists():
        recorder = robot_sim.Recorder(demos, robot_sim.DEFAULT_CHUNK_LEN, log=lambda s: None)
        res = robot_sim.play_episodes(None, env, a.demos, seed=0, max_steps=a.max_steps, log=lambda s: None,
                                      operator=operator, recorder=recorder)  # fmt: skip
        print(f"demos: {a.demos} scripted episodes, success {np.mean([r['success'] for r in res]):.2f}, "
              f"{sum(r['steps'] for r in res)} steps -> {demos}", flush=True)  # fmt: skip
    print(f"learner: utd {learner_cfg.utd}, batch {learner_cfg.batch_size}, updates from episode "
          f"{learner_cfg.start_episodes}, lr {learner_cfg.lr_schedule}, failures {learner_cfg.failures}, clone "
          f"{learner_cfg.clone}, intervene-prob {a.intervene_prob}", flush=True)  # fmt: skip
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        run = offline(demos, out / f"lps-seed{seed}", a.offline_steps, seed)
        shutil.rmtree(run / "learner", ignore_errors=True)  # the online phase starts from the offline weights
        url, learner, stop = serving(run, learner_cfg)
        try:
            before = success(url, env, a.eval_episodes, a.max_steps)
            with PolicyClient(url, token=TOKEN) as policy:
                online = robot_sim.play_episodes(policy, env, a.online_episodes, seed=1000 * (seed + 1),
                                                 max_steps=a.max_steps, log=lambda s: None, chunk_len=int(policy.spec()["chunk_len"]),
                                                 operator=operator if a.intervene_prob > 0 else None,
                                                 intervene_prob=a.intervene_prob, wait=True)  # fmt: skip
            after = success(url, env, a.eval_episodes, a.max_steps)
            updates = int(learner.state.train.step)
        finally:
            stop()
        online_rate = float(np.mean([r["success"] for r in online]))
        takeovers = sum(r["interventions"] for r in online)
        print(f"seed {seed}: success before {before:.2f} -> after {after:.2f} ({a.online_episodes} online episodes, "
              f"success while learning {online_rate:.2f}, {takeovers} operator steps, {updates} gradient steps in all)",
              flush=True)  # fmt: skip
        print(diagnostics(run), flush=True)
        url, _, stop = serving(offline(demos, out / f"control-seed{seed}-{updates}", updates, seed))
        try:
            control = success(url, env, a.eval_episodes, a.max_steps)
        finally:
            stop()
        rows.append((before, after, control, online_rate))
        print(f"seed {seed}: offline-only control with {updates} steps (rounded up to a multiple of {LOG_EVERY}): "
              f"{control:.2f}  [{time.perf_counter() - t0:.0f} s]", flush=True)  # fmt: skip
    env.close()
    table = np.asarray(rows)
    mean = table.mean(axis=0)
    gain, lead = table[:, 1] - table[:, 0], table[:, 1] - table[:, 2]
    (g_lo, g_hi), (l_lo, l_hi) = bootstrap_interval(gain), bootstrap_interval(lead)
    print(f"mean over {len(rows)} seeds: before {mean[0]:.2f}, after {mean[1]:.2f}, offline-only control {mean[2]:.2f}; "
          f"after - before {gain.mean():+.2f} [{g_lo:+.2f}, {g_hi:+.2f}], after - control {lead.mean():+.2f} "
          f"[{l_lo:+.2f}, {l_hi:+.2f}] (95 % bootstrap over seeds; {a.eval_episodes} evaluation episodes per policy, "
          "same resets)")  # fmt: skip


if __name__ == "__main__":
    main()
