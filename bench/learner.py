"""Throughput of `lps serve --learn` and the served latency while it trains in the background.

    python bench/learner.py [--episodes 6] [--steps 100] [--utd 1] [--requests 300]

Writes a small offline run (an npz of state-vector episodes, LPS with the `quick` preset's nets,
a few offline steps: the figures depend on the networks' shapes, not on their weights), serves it
with a learner on 127.0.0.1 in this process, then measures
- the client's round-trip latency p50/p99 for one observation with the learner idle (`--requests`
  before the episodes arrive and as many after they are trained on: one short window is noisy);
- the same while episodes of `--steps` steps arrive and are trained on at `--utd` (a second
  client sends them back to back);
- the learner's throughput: episodes absorbed per hour and updates per second while serving.
The ratio busy/idle is the figure to compare (a shared machine makes absolute numbers noisy).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# As `lps serve --learn` does: a second host device for the learner (set before JAX starts).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OBS_DIM, ACTION_DIM, CHUNK = 28, 5, 5  # OGBench cube-single's dims


def offline_run(root: Path) -> Path:
    import dataclasses

    from lps.agents import LPSConfig
    from lps.training.config import preset
    from lps.training.loop import train

    rng = np.random.default_rng(0)
    rows, steps = 2000, 100
    obs = rng.normal(0, 1, (rows, OBS_DIM)).astype(np.float32)
    actions = np.tanh(obs[:, :ACTION_DIM]).astype(np.float32)
    terminals = np.zeros(rows, np.float32)
    terminals[steps - 1 :: steps] = 1
    np.savez(root / "demos.npz", observations=obs, actions=actions, rewards=-np.ones(rows, np.float32), terminals=terminals)
    cfg, agent_cfg = preset("quick", LPSConfig)
    cfg = dataclasses.replace(cfg, dataset=str(root / "demos.npz"), chunk_len=CHUNK, steps=10, save_every=10, log_every=10,
                              eval_every=0, eval_episodes=0, run_dir=str(root / "run"), progress=False)  # fmt: skip
    train("lps", cfg, agent_cfg)
    return root / "run"


def latencies(client, n: int) -> np.ndarray:
    obs = np.zeros(OBS_DIM, np.float32)
    out = []
    for _ in range(n):
        client.act(obs)
        out.append(client.last_round_trip_ms)
    return np.asarray(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=6)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--utd", type=float, default=1.0)
    p.add_argument("--requests", type=int, default=1000, help="idle requests timed before and again after training")
    p.add_argument("--update-block", type=int, default=25, help="updates per compiled dispatch")
    a = p.parse_args()

    from lps.client import PolicyClient
    from lps.deploy.learner import LearnerConfig, attach
    from lps.deploy.serve import load_server

    with tempfile.TemporaryDirectory() as tmp:
        run = offline_run(Path(tmp))
        srv = load_server(run, device="cpu", log_every_s=0.0, log=lambda s: None)
        learner = attach(srv, run, LearnerConfig(token="bench", utd=a.utd, update_block=a.update_block), log=lambda s: None)
        ws = srv.start("127.0.0.1", 0)
        threading.Thread(target=ws.serve_forever, daemon=True).start()
        url = f"ws://127.0.0.1:{ws.socket.getsockname()[1]}"
        rng = np.random.default_rng(1)

        def send(client, i):
            with client.episode() as ep:
                for _ in range(a.steps):
                    ep.record(rng.normal(0, 1, OBS_DIM).astype(np.float32), np.tanh(rng.normal(0, 1, ACTION_DIM)))
                ep.finish(success=i % 2 == 0)

        with PolicyClient(url) as actor, PolicyClient(url, token="bench") as robot:
            send(robot, -2)  # compile the update and buffer write before timing
            learner.wait_idle(600)
            latencies(actor, 50)
            idle_before = latencies(actor, a.requests)
            updates0, start = learner.updates_run, time.perf_counter()
            sender = threading.Thread(target=lambda: [send(robot, i) for i in range(a.episodes)])
            sender.start()
            busy = []
            while sender.is_alive() or not learner.wait_idle(0.01):
                busy.extend(latencies(actor, 10))
            elapsed = time.perf_counter() - start
            busy = np.asarray(busy)
            idle = np.concatenate([idle_before, latencies(actor, a.requests)])
        learner.close()
        ws.shutdown()
    ups = (learner.updates_run - updates0) / elapsed
    print(f"learner: {a.episodes} episodes x {a.steps} steps at UTD {a.utd:g} in {elapsed:.1f} s: "
          f"{3600 * a.episodes / elapsed:.0f} episodes/h, {ups:.1f} updates/s while serving")  # fmt: skip
    for name, lat in (("idle", idle), ("training", busy)):
        print(f"served latency ({name}): p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms "
              f"({len(lat)} requests)")  # fmt: skip
    print(f"ratio training/idle: p50 {np.percentile(busy, 50) / np.percentile(idle, 50):.2f}x, "
          f"p99 {np.percentile(busy, 99) / np.percentile(idle, 99):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
