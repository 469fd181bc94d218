"""Robot-data training cost: updates/s, peak memory of the compiled update, and the latency of one
policy call, with two 128x128 cameras (images 128x128x6 uint8) + 7-D proprio, 7-D actions.

    python bench/robot.py                          # robot preset: IMPALA encoder, DiT-S base, batch 256
    python bench/robot.py --batch-size 32 --dit-width 128 --dit-depth 4   # something a CPU finishes

Peak memory is XLA's own accounting of the compiled scanned update (`memory_analysis`:
arguments + outputs + temporaries - aliased donations), so it needs no profiler and means the
same on CPU and GPU. The dataset is synthetic (random pixels, on the device as uint8), since
only sizes matter here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from lps.agents import LPSConfig, Spec
from lps.agents.encoded import build_agent, scan_updates, spec_fields
from lps.data.sampler import to_device
from lps.training.config import preset
from lps.training.update import create_state, make_multi_update, make_optimizer, make_update


def synthetic(rows: int, episode_len: int, size: int, cameras: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    terminals = np.zeros(rows, bool)
    terminals[episode_len - 1 :: episode_len] = True
    terminals[-1] = True
    return {
        "observations": {
            "state": rng.normal(size=(rows, 7)).astype(np.float32),
            "image": {f"camera{c}": rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8) for c in range(cameras)},
        },
        "actions": rng.uniform(-1, 1, (rows, 7)).astype(np.float32),
        "rewards": -np.ones(rows, np.float32),
        "masks": np.ones(rows, np.float32),
        "terminals": terminals,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="updates per timed dispatch (one lax.scan)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--rows", type=int, default=2000, help="dataset rows on the device")
    p.add_argument("--encoder", default="impala", choices=["impala", "impala-small"])
    p.add_argument("--base-arch", default="mfdit", choices=["mfdit", "dit", "mlp"])
    p.add_argument("--dit-width", type=int, default=384)
    p.add_argument("--dit-depth", type=int, default=12)
    p.add_argument("--dit-heads", type=int, default=6)
    p.add_argument("--memory-only", action="store_true", help="compile and report peak memory, run nothing")
    a = p.parse_args()

    train_cfg, agent_cfg = preset("robot", LPSConfig)
    train_cfg = dataclasses.replace(train_cfg, batch_size=a.batch_size, encoder=a.encoder)
    agent_cfg = dataclasses.replace(agent_cfg, base_arch=a.base_arch, dit_width=a.dit_width, dit_depth=a.dit_depth,
                                    dit_heads=a.dit_heads)  # fmt: skip
    data = synthetic(a.rows, 100, a.image_size, 2)
    spec = Spec(action_dim=7, chunk_len=train_cfg.chunk_len, gamma=train_cfg.gamma, **spec_fields(data["observations"]))
    agent = build_agent("lps", agent_cfg, spec, a.encoder, train_cfg.encoder_features, train_cfg.augment_shift)
    optimizer = make_optimizer(train_cfg)
    state = create_state(agent, optimizer, 0)
    device = to_device(data, spec.chunk_len)
    single = jax.jit(make_update(agent, optimizer, a.batch_size), donate_argnums=0)
    tick = time.perf_counter()
    mem = single.lower(state, device).compile().memory_analysis()  # one update: what the loop holds
    compile_s = time.perf_counter() - tick
    compiled = make_multi_update(make_update(agent, optimizer, a.batch_size), a.steps, scan=scan_updates(agent))
    peak = None
    if mem is not None:
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes)  # fmt: skip
    params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    result = {
        "device": jax.devices()[0].device_kind,
        "batch_size": a.batch_size,
        "image": [list(shape) for _, shape in spec.cameras],
        "encoder": a.encoder,
        "base": f"{a.base_arch} {a.dit_width}x{a.dit_depth}x{a.dit_heads}" if a.base_arch != "mlp" else "mlp",
        "params_M": round(params / 1e6, 2),
        "compile_s": round(compile_s, 1),
        "peak_memory_GiB": round(peak / 2**30, 3) if peak is not None else None,
    }
    if a.memory_only:
        print(json.dumps(result))
        return
    state, _ = compiled(state, device)  # warm-up
    jax.block_until_ready(state)
    rates = []
    for _ in range(a.repeats):
        tick = time.perf_counter()
        state, metrics = compiled(state, device)
        jax.block_until_ready(metrics)
        rates.append(a.steps / (time.perf_counter() - tick))

    act = jax.jit(agent.act)
    one = jax.tree_util.tree_map(lambda x: jnp.asarray(x[:1]), data["observations"])
    jax.block_until_ready(act(state.params, one, jax.random.PRNGKey(0)))
    latencies = []
    for i in range(20):
        tick = time.perf_counter()
        jax.block_until_ready(act(state.params, one, jax.random.PRNGKey(i)))
        latencies.append(time.perf_counter() - tick)

    result.update(updates_per_s=round(float(np.median(rates)), 3),
                  act_latency_ms_p50=round(1e3 * float(np.median(latencies)), 2))  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
