"""Throughput of `lps serve --learn` and the served latency while it trains in the background.

    python bench/learner.py [--episodes 4] [--steps 100] [--utds 1,10,20] [--requests 500]

Writes a small offline run (an npz of state-vector episodes, LPS with the `quick` preset's nets,
a few offline steps: the figures depend on the networks' shapes, not on their weights), serves it
with a learner on 127.0.0.1 in this process, then measures
- the client's round-trip latency p50/p99/max for one observation every 20 ms with the learner
  idle (`--requests` before the episodes arrive and as many after they are trained on);
- the same while episodes of `--steps` steps arrive and are trained on (a second client sends
  them back to back), for each UTD of `--utds` in turn, each on a fresh learner;
- the learner's throughput: episodes absorbed per hour and updates per second while serving.
The ratio busy/idle is the figure to compare (a shared machine makes absolute numbers noisy).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lps.cli.devices import ask_for_host_devices  # noqa: E402  (after the sys.path line: runs from a checkout)

ask_for_host_devices(2)  # as `lps serve --learn` on a CPU-only host: a second device for the learner (before JAX)

OBS_DIM, ACTION_DIM, CHUNK = 28, 5, 5  # OGBench cube-single's dims


def offline_run(root: Path) -> Path:

    from lps.agents import LPSConfig
    from lps.training.config import preset, with_flags
    from lps.training.loop import train

    rng = np.random.default_rng(0)
    rows, steps = 2000, 100
    obs = rng.normal(0, 1, (rows, OBS_DIM)).astype(np.float32)
    actions = np.tanh(obs[:, :ACTION_DIM]).astype(np.float32)
    terminals = np.zeros(rows, np.float32)
    terminals[steps - 1 :: steps] = 1
    np.savez(root / "demos.npz", observations=obs, actions=actions, rewards=-np.ones(rows, np.float32), terminals=terminals)
    cfg, agent_cfg = preset("quick", LPSConfig)
    cfg = with_flags(cfg, dataset=str(root / "demos.npz"), chunk_len=CHUNK, steps=10, save_every=10, log_every=10,
                              eval_every=0, eval_episodes=0, run_dir=str(root / "run"), progress=False)  # fmt: skip
    train("lps", cfg, agent_cfg)
    return root / "run"


def paced_latencies(client, n: int, period_s: float = 0.02) -> np.ndarray:
    """Round-trip latencies of `n` single-observation requests, one every `period_s` (a robot's
    control loop at 50 Hz)."""
    obs = np.zeros(OBS_DIM, np.float32)
    out = []
    for _ in range(n):
        start = time.perf_counter()
        client.act(obs)
        out.append(client.last_round_trip_ms)
        time.sleep(max(0.0, period_s - (time.perf_counter() - start)))
    return np.asarray(out)


def measure(run: Path, utd: float, episodes: int, steps: int, requests: int, update_block: int) -> dict:
    """Idle and training latencies and the learner's throughput for one UTD, on a fresh learner."""
    import shutil

    from lps.client import PolicyClient
    from lps.deploy.learner import LearnerConfig, attach, spare_device
    from lps.deploy.serve import load_server

    shutil.rmtree(run / "learner", ignore_errors=True)
    srv = load_server(run, device="cpu", log_every_s=0.0, log=lambda s: None)
    lcfg = LearnerConfig(token="bench", utd=utd, update_block=update_block, start_episodes=1)
    learner = attach(srv, run, lcfg, log=lambda s: None, device=spare_device(srv.policy.device))
    ws = srv.start("127.0.0.1", 0)
    threading.Thread(target=ws.serve_forever, daemon=True).start()
    url = f"ws://127.0.0.1:{ws.socket.getsockname()[1]}"
    rng = np.random.default_rng(1)

    def send(client, i):
        with client.episode() as ep:
            for _ in range(steps):
                ep.record(rng.normal(0, 1, OBS_DIM).astype(np.float32), np.tanh(rng.normal(0, 1, ACTION_DIM)))
            ep.finish(success=i % 2 == 0)

    try:
        with PolicyClient(url) as actor, PolicyClient(url, token="bench") as robot:
            send(robot, -2)  # compile the update and buffer write before timing
            learner.wait_idle(600)
            paced_latencies(actor, 50)
            idle_before = paced_latencies(actor, requests)
            updates0, start = learner.updates_run, time.perf_counter()
            sender = threading.Thread(target=lambda: [send(robot, i) for i in range(episodes)])
            sender.start()
            busy = []
            while sender.is_alive() or not learner.wait_idle(0.01):
                busy.extend(paced_latencies(actor, 10))
            elapsed = time.perf_counter() - start
            idle = np.concatenate([idle_before, paced_latencies(actor, requests)])
    finally:
        learner.close()
        ws.shutdown()
    return {"idle": idle, "busy": np.asarray(busy), "elapsed": elapsed,
            "updates_per_s": (learner.updates_run - updates0) / elapsed}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--utds", default="1,10,20", help="UTDs to measure, one after another")
    p.add_argument("--requests", type=int, default=500, help="idle requests timed before and again after training")
    p.add_argument("--update-block", type=int, default=None, help="updates per compiled dispatch (default: the learner's)")
    a = p.parse_args()
    from lps.deploy.learner import LearnerConfig

    block = a.update_block or LearnerConfig(token="-").update_block
    with tempfile.TemporaryDirectory() as tmp:
        run = offline_run(Path(tmp))
        for utd in (float(u) for u in a.utds.split(",")):
            m = measure(run, utd, a.episodes, a.steps, a.requests, block)
            print(f"UTD {utd:g}: {a.episodes} episodes x {a.steps} steps in {m['elapsed']:.1f} s, "
                  f"{m['updates_per_s']:.1f} updates/s while serving (update block {block})", flush=True)  # fmt: skip
            for name in ("idle", "busy"):
                lat = m[name]
                print(f"  {'training' if name == 'busy' else name:8s} p50 {np.percentile(lat, 50):6.2f} ms, p99 "
                      f"{np.percentile(lat, 99):7.2f} ms, max {lat.max():7.2f} ms ({len(lat)} requests, one per 20 ms)")  # fmt: skip
            print(f"  p99 training/idle {np.percentile(m['busy'], 99) / np.percentile(m['idle'], 99):.2f}x", flush=True)


if __name__ == "__main__":
    main()
