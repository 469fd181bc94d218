"""Throughput and latency of lps, printed as medians over repeats.

    python bench/throughput.py                   # everything (update, acting, evaluation)
    python bench/throughput.py --only update --agents lps --sizes paper small

- update: gradient steps per second of the jitted, scanned update (batch 256, chunk 5,
  OGBench cube-single dims) at paper size (4x512 base, 4x256 critic, 2x256 actor) and small
  size (2x256 everywhere); data sampled on device as in training.
- seeds: aggregate updates/s with 1, 4 and 8 seeds vmapped in one program, and the ratio to
  running the seeds one after another.
- act: latency of one policy call producing one action chunk (batch 1), and per-step cost.
- eval: environment steps per second of a 50-episode batched evaluation with the policy in the
  loop, single-process (`--eval-workers 0`) against the worker pool (`--eval-workers 2`), and
  against a naive loop calling the policy at every step (one episode at a time) and the
  environment stepped alone with random actions.
- devices: updates/s of one global batch split over 1, 2, 4 ... devices (`lps train --devices N`,
  data parallel, dataset replicated), and the scaling efficiency rate(N) / (N * rate(1)); with
  `--batch-per-device` the global batch grows with N instead (weak scaling). On a CPU, force host
  devices to check the sharded program and its overhead (not a speed-up: they share the cores):
      XLA_FLAGS=--xla_force_host_platform_device_count=4 python bench/throughput.py --only devices
- memory: peak device memory of the training update per agent (the paper's Figure 11): on a GPU
  the allocator's peak; on a CPU XLA's memory analysis of the compiled update.
Timings on a shared machine are noisy: compare figures from one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lps.agents import REGISTRY, Spec, config_class, make_agent, resolve_config
from lps.data.sampler import chunk_arrays, to_device
from lps.data.synthetic import row_dataset
from lps.training import distributed
from lps.training.config import TrainConfig, agent_overrides
from lps.training.update import create_state, make_multi_update, make_optimizer, make_seeds_update, stack_seeds

SIZES = {
    "paper": {},
    "small": dict(hidden=(256, 256)),  # every *_hidden field, as the quick preset
}
OBS_DIM, ACTION_DIM, CHUNK = 28, 5, 5


def synthetic_dataset(episodes: int = 100, length: int = 1001, seed: int = 0) -> dict:
    return row_dataset(episodes, length, OBS_DIM, ACTION_DIM, seed)


def agent_for(name: str, size: str):
    cfg_cls = config_class(name)
    cfg = cfg_cls(**agent_overrides(SIZES[size], cfg_cls))
    cfg = resolve_config(name, cfg, "cube-single-play-singletask-task1-v0")
    return make_agent(name, cfg, Spec(OBS_DIM, ACTION_DIM, CHUNK, 0.99))


def _updates_per_sec(multi, state, data, updates_per_call: int, repeats: int) -> float:
    """Median updates/s of a compiled multi-step update over `repeats` timed calls (after one to compile)."""
    state, m = multi(state, data)  # compile
    jax.block_until_ready(m)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        state, m = multi(state, data)
        jax.block_until_ready(m)
        rates.append(updates_per_call / (time.perf_counter() - t))
    return statistics.median(rates)


def bench_update(name: str, size: str, steps_per_call: int, repeats: int, seeds: int = 1) -> float:
    """Aggregate updates/s (over all seeds) of the trainer's vmapped, scanned update."""
    agent = agent_for(name, size)
    optimizer = make_optimizer(TrainConfig())
    data = to_device(synthetic_dataset(), CHUNK)
    multi = make_multi_update(make_seeds_update(agent, optimizer, 256, seeds), steps_per_call)
    state = stack_seeds([create_state(agent, optimizer, s) for s in range(seeds)])
    return _updates_per_sec(multi, state, data, seeds * steps_per_call, repeats)


def bench_devices(name: str, size: str, steps_per_call: int, repeats: int, devices: int, batch_size: int,
                  shard_params: bool = False) -> float:  # fmt: skip
    """Updates/s of the trainer's update with its batch of `batch_size` split over `devices`
    devices, compiled as `lps train --devices N` compiles it (`lps.training.distributed`)."""
    agent = agent_for(name, size)
    optimizer = make_optimizer(TrainConfig())
    dataset = synthetic_dataset()
    layout = distributed.make_layout(distributed.DistributedConfig(devices, shard_params=shard_params), 1, batch_size)
    state = create_state(agent, optimizer, 0)
    if layout is None:
        data, shardings, batch_sharding = to_device(dataset, CHUNK), None, None
    else:
        data, state = layout.place_data(chunk_arrays(dataset, CHUNK)), layout.place_state(state)
        shardings, batch_sharding = layout.update_shardings(state, data), layout.batch_sharding
    update = make_seeds_update(agent, optimizer, batch_size, 1, batch_sharding)
    multi = make_multi_update(update, steps_per_call, shardings=shardings)
    return _updates_per_sec(multi, state, data, steps_per_call, repeats)


def bench_act(name: str, size: str, calls: int) -> float:
    agent = agent_for(name, size)
    params = agent.init(jax.random.PRNGKey(0))
    act = jax.jit(agent.act)
    obs, key = jnp.zeros((1, OBS_DIM)), jax.random.PRNGKey(0)
    np.asarray(act(params, obs, key))
    times = []
    for i in range(calls):
        t = time.perf_counter()
        np.asarray(act(params, obs, jax.random.fold_in(key, i)))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_eval(name: str, size: str, episodes: int, repeats: int, workers: int) -> dict[str, float]:
    """Env steps/s of one evaluation (`episodes` episodes, same parameters and seed): the
    single-process evaluator (`--eval-workers 0`), the worker pool with `workers` processes, a
    naive loop that calls the policy at every step for one episode at a time (what research code
    commonly does), and the env alone with random actions. Pool start-up is not counted (the
    pool lives for the whole training run)."""
    from lps.training.envs import make_env
    from lps.training.evaluate import DEFAULT_POOL, Evaluator
    from lps.training.setup import make_policy_fn

    env_id = "cube-single-singletask-task1-v0"
    agent = agent_for(name, size)
    params = agent.init(jax.random.PRNGKey(0))
    policy = make_policy_fn(agent, params, 0)
    evaluators = {label: Evaluator(env_id, min(episodes, DEFAULT_POOL), 1, w, report=lambda m: None)
                  for label, w in (("single", 0), ("pool", workers))}  # fmt: skip
    samples: dict[str, list[float]] = {label: [] for label in evaluators}
    for evaluator in evaluators.values():
        evaluator.run(policy, min(episodes, 2), seed=0)  # compile the acting function; warm the workers
    for r in range(repeats):  # alternated, so that a busy moment of the machine hits both alike
        for label, evaluator in evaluators.items():
            samples[label].append(evaluator.run(policy, episodes, seed=r)["eval/env_steps_per_sec"])
    for evaluator in evaluators.values():
        evaluator.close()
    rates = {label: statistics.median(xs) for label, xs in samples.items()}

    env = make_env(env_id)
    act = jax.jit(agent.act)
    naive, alone = [], []
    for r in range(repeats):
        steps, t = 0, time.perf_counter()
        for episode in range(max(1, episodes // 10)):
            ob, _ = env.reset(seed=1000 * r + episode)
            done = False
            while not done:
                chunk = np.asarray(act(params, jnp.asarray(ob)[None], jax.random.PRNGKey(steps)))
                ob, _, term, trunc, _ = env.step(chunk[0, :ACTION_DIM])
                done, steps = term or trunc, steps + 1
        naive.append(steps / (time.perf_counter() - t))

        env.reset(seed=r)
        rng = np.random.default_rng(r)
        steps, t = 0, time.perf_counter()
        while steps < 2000:
            _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, ACTION_DIM))
            steps += 1
            if term or trunc:
                env.reset()
        alone.append(steps / (time.perf_counter() - t))
    return dict(rates, naive=statistics.median(naive), alone=statistics.median(alone))


def bench_memory(name: str, size: str, steps_per_call: int) -> tuple[float, str]:
    """Peak device memory of the training update (one seed, batch 256): on a GPU the allocator's
    peak_bytes_in_use after running it; elsewhere XLA's memory analysis of the compiled program
    (arguments + outputs + temporaries - donated aliases), which is what the device must hold."""
    agent = agent_for(name, size)
    optimizer = make_optimizer(TrainConfig())
    data = to_device(synthetic_dataset(), CHUNK)
    multi = make_multi_update(make_seeds_update(agent, optimizer, 256, 1), steps_per_call)
    state = create_state(agent, optimizer, 0)
    device = jax.devices()[0]
    if device.platform == "gpu" and device.memory_stats():  # None where the backend keeps no counts
        state, m = multi(state, data)
        jax.block_until_ready(m)
        return float(device.memory_stats()["peak_bytes_in_use"]), "GPU peak_bytes_in_use (whole process)"
    analysis = multi.lower(state, data).compile().memory_analysis()
    total = (
        analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )  # fmt: skip
    parts = f"arguments {analysis.argument_size_in_bytes / 2**20:.1f} MiB incl. the dataset, temporaries " \
        f"{analysis.temp_size_in_bytes / 2**20:.1f} MiB"  # fmt: skip
    return float(total), f"XLA memory_analysis of the compiled update on {device.platform}: {parts}"


def rate_line(rate: float, batch: int, ideal: float) -> str:
    return f"{rate:10.1f} updates/s  batch {batch:5d}  ({rate * batch:9.0f} samples/s, scaling efficiency {rate / ideal:.2f})"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--only", choices=["update", "seeds", "devices", "act", "eval", "memory"], nargs="*",
        default=["update", "seeds", "devices", "act", "eval", "memory"],
    )  # fmt: skip
    p.add_argument("--eval-workers", type=int, default=2, help="for 'eval': worker processes of the pool")
    p.add_argument("--seed-counts", type=int, nargs="*", default=[1, 4, 8], help="for 'seeds': seeds per program")
    p.add_argument("--devices", type=int, nargs="*", default=None,
                   help="for 'devices': device counts (default 1, 2, 4 ... up to every device present)")
    p.add_argument("--batch-size", type=int, default=256, help="for 'devices': the global batch")
    p.add_argument("--batch-per-device", action="store_true",
                   help="for 'devices': --batch-size per device, the global batch growing with the count")
    p.add_argument("--shard-params", action="store_true", help="for 'devices': FSDP (lps train --shard-params)")
    p.add_argument("--agents", nargs="*", default=sorted(REGISTRY))
    p.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--steps-per-call", type=int, default=200, help="updates per dispatch (lax.scan length)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--eval-episodes", type=int, default=50)
    a = p.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()})")
    for name in a.agents:
        for size in a.sizes:
            if "update" in a.only:
                rate = bench_update(name, size, a.steps_per_call, a.repeats)
                print(f"update  {name:8s} {size:6s} {rate:10.1f} updates/s  (median of {a.repeats})")
            if "seeds" in a.only:
                rates = {n: bench_update(name, size, a.steps_per_call, a.repeats, n) for n in a.seed_counts}
                base = bench_update(name, size, a.steps_per_call, a.repeats, 1)  # seeds one after another
                for n, rate in rates.items():
                    print(
                        f"seeds   {name:8s} {size:6s} {n:2d} seeds {rate:10.1f} aggregate updates/s "
                        f"({rate / base:.2f}x running them one after another)"
                    )
            if "devices" in a.only:
                counts = a.devices or [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= jax.device_count()]
                rates = {}
                for n in counts:
                    batch = a.batch_size * n if a.batch_per_device else a.batch_size
                    rates[n] = bench_devices(name, size, a.steps_per_call, a.repeats, n, batch, a.shard_params)
                    # ideal: the same global batch N times as fast (strong scaling), or N times the batch
                    # at one device's rate (weak scaling, --batch-per-device)
                    ideal = rates[counts[0]] * (1 if a.batch_per_device else n / counts[0])
                    print(f"devices {name:8s} {size:6s} {n:2d} devices {rate_line(rates[n], batch, ideal)}")
            if "memory" in a.only:
                peak, how = bench_memory(name, size, a.steps_per_call)
                print(f"memory  {name:8s} {size:6s} {peak / 2**20:10.1f} MiB peak  ({how})")
            if "act" in a.only:
                latency = bench_act(name, size, 200)
                print(
                    f"act     {name:8s} {size:6s} {latency * 1e3:10.3f} ms/chunk   "
                    f"({latency * 1e3 / CHUNK:.3f} ms per env step, median of 200)"
                )
    if "eval" in a.only:
        for name in a.agents:
            r = bench_eval(name, "paper", a.eval_episodes, max(1, a.repeats // 2), a.eval_workers)
            print(
                f"eval    {name:8s} paper  {r['single']:10.1f} env steps/s single-process, {r['pool']:.1f} with "
                f"{a.eval_workers} worker processes ({r['pool'] / r['single']:.2f}x), {a.eval_episodes} episodes; "
                f"{r['naive']:.1f} calling the policy every step, {r['alone']:.1f} env alone"
            )


if __name__ == "__main__":
    main()
