"""The whole robot loop on one machine, with cube-single task 1 as the "robot" (issue 16's evidence).

    python bench/robot_loop.py [--demos 50] [--offline-steps 3000] [--online-episodes 50] [--seeds 0,1]

1. Demonstrations: `lps robot-sim --scripted --record demos.npz` (the scripted operator plays).
2. Offline LPS on them (the quick preset's nets, `--offline-steps` steps), one run per seed.
3. Success before: the served offline policy over `--eval-episodes` episodes (`--no-send`).
4. Online: `lps serve RUN --learn` (UTD 1, balanced batches) and `--online-episodes` robot-sim
   episodes sent to it; success after: the served fine-tuned policy over the same eval episodes.
5. Control: offline-only LPS with as many gradient steps as the fine-tuned run took in all.

Everything runs in this process (servers on 127.0.0.1), so the command lines of the README's
"Fine-tuning on a robot" are what it does. Prints one line per seed and the means.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "disable")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASK = "cube-single-play-singletask-task1-v0"
TOKEN = "bench-robot-loop"


LOG_EVERY = 50


def offline(demos: Path, run: Path, steps: int, seed: int) -> Path:
    """An offline LPS run of `steps` (rounded up to a multiple of LOG_EVERY), reused if finished."""
    from lps.agents import LPSConfig
    from lps.training.config import preset
    from lps.training.loop import train

    if (run / "summary.json").exists():
        return run
    steps = -(-steps // LOG_EVERY) * LOG_EVERY
    cfg, agent_cfg = preset("quick", LPSConfig)
    cfg = dataclasses.replace(cfg, env=TASK, dataset=str(demos), steps=steps, save_every=steps, log_every=LOG_EVERY,
                              eval_every=0, eval_episodes=0, run_dir=str(run), seed=seed, progress=False)  # fmt: skip
    train("lps", cfg, agent_cfg)
    return run


def serving(run: Path, learn: bool):
    """(url, server, learner or None, stop) of a server on a free port in this process."""
    from lps.deploy.learner import LearnerConfig, attach
    from lps.deploy.serve import load_server

    srv = load_server(run, device="cpu", log_every_s=0.0, log=lambda s: None)
    learner = attach(srv, run, LearnerConfig(token=TOKEN, utd=1.0), log=lambda s: None) if learn else None
    ws = srv.start("127.0.0.1", 0)
    thread = threading.Thread(target=ws.serve_forever, daemon=True)
    thread.start()

    def stop():
        if learner is not None:
            learner.close()
        ws.shutdown()

    return f"ws://127.0.0.1:{ws.socket.getsockname()[1]}", srv, learner, stop


def success(url: str, env, episodes: int, max_steps: int) -> float:
    from lps.client import PolicyClient
    from lps.deploy import robot_sim

    with PolicyClient(url) as policy:
        results = robot_sim.play_episodes(policy, env, episodes, seed=10_000, max_steps=max_steps, log=lambda s: None,
                                          chunk_len=int(policy.spec()["chunk_len"]), send=False)  # fmt: skip
    return float(np.mean([r["success"] for r in results]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--demos", type=int, default=50)
    p.add_argument("--offline-steps", type=int, default=3000)
    p.add_argument("--online-episodes", type=int, default=50)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--max-steps", type=int, default=200, help="episode limit of demos, online and eval episodes")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--out", default="runs/robot-loop")
    a = p.parse_args()

    from lps.client import PolicyClient
    from lps.deploy import robot_sim

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = robot_sim.make_env(TASK)
    demos = out / "demos.npz"
    if not demos.exists():
        recorder = robot_sim.Recorder(demos, robot_sim.DEFAULT_CHUNK_LEN, log=lambda s: None)
        res = robot_sim.play_episodes(None, env, a.demos, seed=0, max_steps=a.max_steps, log=lambda s: None,
                                      operator=robot_sim.CubeOperator(env), recorder=recorder)  # fmt: skip
        print(f"demos: {a.demos} scripted episodes, success {np.mean([r['success'] for r in res]):.2f}, "
              f"{sum(r['steps'] for r in res)} steps -> {demos}", flush=True)  # fmt: skip
    rows = []
    for seed in map(int, a.seeds.split(",")):
        t0 = time.perf_counter()
        run = offline(demos, out / f"lps-seed{seed}", a.offline_steps, seed)
        shutil.rmtree(run / "learner", ignore_errors=True)  # the online phase starts from the offline weights
        url, srv, learner, stop = serving(run, learn=True)
        try:
            before = success(url, env, a.eval_episodes, a.max_steps)
            with PolicyClient(url, token=TOKEN) as policy:
                online = robot_sim.play_episodes(policy, env, a.online_episodes, seed=1000 * (seed + 1),
                                                 max_steps=a.max_steps, log=lambda s: None, chunk_len=int(policy.spec()["chunk_len"]))  # fmt: skip
            assert learner.wait_idle(3600), "the learner did not finish its updates"
            after = success(url, env, a.eval_episodes, a.max_steps)
            updates = int(learner.state.train.step)
        finally:
            stop()
        online_rate = float(np.mean([r["success"] for r in online]))
        print(f"seed {seed}: success before {before:.2f} -> after {after:.2f} ({a.online_episodes} online episodes, "
              f"success while learning {online_rate:.2f}, {updates} gradient steps in all)", flush=True)  # fmt: skip
        control_run = offline(demos, out / f"control-seed{seed}", updates, seed)
        url, _, _, stop = serving(control_run, learn=False)
        try:
            control = success(url, env, a.eval_episodes, a.max_steps)
        finally:
            stop()
        rows.append((before, after, control, online_rate))
        print(f"seed {seed}: offline-only control with {updates} steps (rounded up to a multiple of {LOG_EVERY}): "
              f"{control:.2f}  [{time.perf_counter() - t0:.0f} s]", flush=True)  # fmt: skip
    env.close()
    mean = np.mean(rows, axis=0)
    print(f"mean over {len(rows)} seeds: before {mean[0]:.2f}, after {mean[1]:.2f}, offline-only control {mean[2]:.2f} "
          f"(eval: {a.eval_episodes} episodes per policy, same resets)")  # fmt: skip


if __name__ == "__main__":
    main()
