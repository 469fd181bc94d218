"""Latency of `lps serve` for one observation over localhost: p50/p99 of the client's round trip
(encode, websocket, decode, policy call) and of the server's own time (`latency_ms` in the reply).

    python bench/serve_latency.py                      # an LPS policy at paper size, OGBench cube-single dims
    python bench/serve_latency.py RUN_DIR              # any run (state or, once trained on robot data, dict/image)
    python bench/serve_latency.py --requests 1000 --clients 3 --device cpu

The server runs as `lps serve` in its own process (as on a robot's policy computer), the client
here. Without RUN_DIR the script writes a run whose LPS policy is freshly initialised at the paper's
sizes (4x512 MeanFlow base, 2x256 latent actor; obs 28, action 5, chunk 5): latency depends on
the networks' shapes, not on their trained weights. The observation sent is the spec's zeros plus
noise (uint8 images stay uint8). Figures on a shared machine are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lps.client import PolicyClient  # noqa: E402  (after the sys.path line: runs from a checkout)

OBS_DIM, ACTION_DIM, CHUNK = 28, 5, 5


def write_untrained_run(run_dir: Path) -> None:
    """A run directory (config + checkpoint) of a freshly initialised paper-size LPS policy."""
    from lps.agents import LPSConfig, Spec, make_agent
    from lps.training import checkpoint
    from lps.training.config import TrainConfig, save_config, with_flags
    from lps.training.update import create_state, make_optimizer

    cfg, agent_cfg = with_flags(TrainConfig(), chunk_len=CHUNK, eval_episodes=0, run_dir=str(run_dir)), LPSConfig()
    spec = Spec(OBS_DIM, ACTION_DIM, CHUNK, cfg.gamma)
    agent = make_agent("lps", agent_cfg, spec)
    save_config(run_dir, "lps", cfg, agent_cfg, spec)
    checkpoint.save(run_dir, create_state(agent, make_optimizer(cfg), cfg.seed))


def random_observation(spec: dict, rng: np.random.Generator):
    if "shape" in spec and not isinstance(spec["shape"], dict):
        shape, dtype = tuple(spec["shape"]), np.dtype(spec.get("dtype", "float32"))
        if dtype == np.uint8:
            return rng.integers(0, 256, shape, dtype=np.uint8)
        return rng.normal(0, 1, shape).astype(dtype)
    return {key: random_observation(sub, rng) for key, sub in spec.items()}


def start_server(run_dir: Path, device: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "lps.cli", "serve", str(run_dir), "--port", "0", "--device", device]
    cmd += ["--log-every", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "listening on ws://" in line:
            return proc, line.split("listening on ", 1)[1].split()[0]
    proc.wait()
    raise RuntimeError("lps serve did not start:\n" + "".join(lines))


def measure(url: str, requests: int, warmup: int, seed: int) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    round_trips, server_ms = [], []
    with PolicyClient(url) as client:
        spec = client.spec()["observation"]
        for i in range(warmup + requests):
            client.act(random_observation(spec, rng))
            if i >= warmup:
                round_trips.append(client.last_round_trip_ms)
                server_ms.append(client.last_latency_ms)
    return round_trips, server_ms


def line(label: str, ms: list[float]) -> str:
    p50, p99 = np.percentile(ms, [50, 99])
    return f"{label:34s} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   mean {np.mean(ms):7.2f} ms   (n={len(ms)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", default=None, help="default: a fresh paper-size LPS policy")
    p.add_argument("--requests", type=int, default=500, help="timed requests per client")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--clients", type=int, default=1, help="clients asking at the same time")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(a.run_dir) if a.run_dir else Path(tmp) / "run"
        if a.run_dir is None:
            write_untrained_run(run_dir)
        proc, url = start_server(run_dir, a.device)
        try:
            results: list = [None] * a.clients

            def client(i):
                results[i] = measure(url, a.requests, a.warmup, seed=i)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    round_trips = [x for r in results for x in r[0]]
    server_ms = [x for r in results for x in r[1]]
    print(f"run: {a.run_dir or 'fresh paper-size LPS (obs 28, action 5, chunk 5)'}; {a.clients} client(s), "
          f"device {a.device}")  # fmt: skip
    print(line("client round trip (one obs)", round_trips))
    print(line("server time (decode+policy+queue)", server_ms))
    print(f"throughput: {a.clients * (a.requests + a.warmup) / elapsed:.0f} chunks/s over all clients")


if __name__ == "__main__":
    main()
