"""Training on several devices and hosts (lps.training.distributed), on a CPU with forced host devices.

XLA fixes the device count when jax starts, so the checks on 4 devices run in a child process
started with XLA_FLAGS=--xla_force_host_platform_device_count=4: this file, run as a script, is
that child, and prints what it measured as one JSON line. The multi-host check starts two
`lps train` processes that join over localhost (CPU collectives through gloo), 2 devices each.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import helpers
import numpy as np

AGENT = "bc-fm"  # the quickest agent to compile: these checks are about devices, not methods
HIDDEN = (64, 64)  # 64x64 weights have MIN_SHARDED_ELEMENTS elements: --shard-params splits them
STEPS, LOG_EVERY, BATCH = 20, 10, 16


def _env(devices: int) -> dict:
    paths = [str(helpers.ROOT), str(helpers.ROOT / "tests"), str(Path(__file__).parent), os.environ.get("PYTHONPATH")]
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                PYTHONPATH=os.pathsep.join(filter(None, paths)))  # fmt: skip


def _final(run_dir: Path) -> tuple[list[dict], dict]:
    """The metrics rows (less timings) and the checkpointed parameters of a run, on the host."""
    from flax import serialization

    from lps.training import checkpoint
    from lps.training.runlog import read_rows

    rows = [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in read_rows(run_dir / "metrics.jsonl")]
    payload = checkpoint._unseal(run_dir / checkpoint.CHECKPOINT, (run_dir / checkpoint.CHECKPOINT).read_bytes())
    return rows, serialization.msgpack_restore(payload)


def _close(a, b, rtol=2e-5, atol=1e-6) -> bool:
    """Same numbers up to the summation order of a split batch."""
    import jax

    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.shape(x) == np.shape(y) and np.allclose(x, y, rtol=rtol, atol=atol) for x, y in zip(leaves_a, leaves_b)
    )


def _by_step(rows: list[dict]) -> dict[int, dict]:
    """The metrics at each step (training's row and an evaluation's row of one step merged)."""
    merged: dict[int, dict] = {}
    for row in rows:
        merged.setdefault(row["step"], {}).update(row)
    return merged


def _rows_close(a: list[dict], b: list[dict]) -> bool:
    """`a`'s metrics are those of `b` at the same steps (`b` may have more, e.g. an evaluation's); an
    episode's success may flip on a float's last bit, so rates get 1 %."""
    a, b = _by_step(a), _by_step(b)
    return a.keys() == b.keys() and all(
        k in b[step] and np.isclose(v, b[step][k], rtol=2e-5, atol=0.01 if k.startswith("eval/") else 1e-6)
        for step, row in a.items()
        for k, v in row.items()
    )


# --- the child: every 4-device check in one jax start ---------------------------------------------


def _child(root: Path) -> dict:
    import jax

    from lps.agents import config_class
    from lps.data import toy
    from lps.training.config import agent_overrides
    from lps.training.distributed import DistributedConfig, make_layout
    from lps.training.loop import train

    assert jax.device_count() == 4, jax.devices()
    agent_cls = config_class(AGENT)
    agent_cfg = agent_cls(**agent_overrides({"hidden": HIDDEN}, agent_cls))

    # The reference run and the FSDP one end with an evaluation (episodes and validation metrics).
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "val.npz", **toy.make_dataset("toy-bandit", seed=1))
    evaluated = dict(eval_episodes=50, val_dataset=str(root / "val.npz"))

    def run(name: str, resume: bool = False, **kw):
        small = dict(steps=STEPS, log_every=LOG_EVERY, save_every=LOG_EVERY, batch_size=BATCH)
        cfg = helpers.toy_config(root / name, **{**small, **kw})
        train(AGENT, cfg, agent_cfg, resume=resume)
        return None if "seeds" in kw else _final(root / name)

    report: dict = {}
    one_rows, one_params = run("one", **evaluated)
    report["evaluated"] = sorted(k for k in _by_step(one_rows)[STEPS] if k.startswith(("eval/", "val/")))
    for name, kw in {
        "two": dict(distributed=DistributedConfig(devices=2)),
        "four-fsdp-evaluated": dict(distributed=DistributedConfig(devices="all", shard_params=True,
                                                                  data_placement="sharded"), **evaluated),
    }.items():
        rows, params = run(name, **kw)
        same_keys = _by_step(rows)[STEPS].keys() == _by_step(one_rows)[STEPS].keys()
        report[name] = {"rows": _rows_close(rows, one_rows), "params": _close(params["params"], one_params["params"]),
                        "opt_state": _close(params["opt_state"], one_params["opt_state"]),
                        "evaluated": "evaluated" not in name or same_keys}  # fmt: skip
    # A policy trained on 4 devices (parameters split over them) loads and acts on one.
    import lps

    policy = lps.load_policy(root / "four-fsdp-evaluated")
    chunk = policy(toy.make_dataset("toy-bandit", seed=1)["observations"][0])
    report["policy"] = bool(np.all(np.isfinite(chunk))) and chunk.ndim == 2
    # Trained on 4 devices for half the steps, resumed on 1: the checkpoint holds no device layout.
    run("four-then-one", steps=STEPS // 2, distributed=DistributedConfig(devices=4))
    rows, params = run("four-then-one", resume=True)
    report["resumed"] = {"rows": _rows_close(rows, one_rows), "params": _close(params["params"], one_params["params"])}
    # Two seeds, one per device: seed 0's numbers are those of seed 0 trained alone.
    run("seeds-two", seeds=(0, 1), distributed=DistributedConfig(devices=2))
    rows, params = _final(root / "seeds-two" / "seed0")
    report["seeds"] = {"rows": _rows_close(rows, one_rows), "params": _close(params["params"], one_params["params"])}
    # The online phase runs on one device, from the offline state gathered off two.
    summary = train(AGENT, helpers.toy_config(root / "online", steps=LOG_EVERY, log_every=LOG_EVERY, batch_size=BATCH,
                                              save_every=LOG_EVERY, online_steps=16, online_envs=4, online_workers=0,
                                              distributed=DistributedConfig(devices=2)), agent_cfg)  # fmt: skip
    report["online"] = summary["gradient_steps"] == LOG_EVERY + 16
    report["seeds_axis"] = make_layout(DistributedConfig(devices=2), 2, BATCH).axis
    fsdp = make_layout(DistributedConfig(devices=4, shard_params=True), 1, BATCH)
    weights = {"kernel": np.zeros(HIDDEN), "wide": np.zeros((8, 1024)), "bias": np.zeros(HIDDEN[1]),
               "odd": np.zeros((5, 4099))}  # fmt: skip
    report["fsdp_specs"] = {k: list(v.spec) for k, v in fsdp.state_shardings(weights).items()}
    errors = {}
    for key, (dist, seeds, batch) in {
        "too_many": (DistributedConfig(devices=8), 1, BATCH),
        "batch": (DistributedConfig(devices=4), 1, 18),
        "seeds": (DistributedConfig(devices=4, device_axis="seeds"), 2, BATCH),
    }.items():
        try:
            make_layout(dist, seeds, batch)
        except ValueError as e:
            errors[key] = str(e)
    report["errors"] = errors
    return report


def _checked(report: dict) -> None:
    assert report["evaluated"], report["evaluated"]
    assert report["policy"] and report["online"]
    for name in ("two", "four-fsdp-evaluated", "resumed", "seeds"):
        assert all(report[name].values()), (name, report[name])
    assert report["seeds_axis"] == "seeds"  # the default with 2 seeds on 2 devices
    # FSDP splits the largest dimension the device count divides; small or indivisible arrays stay whole.
    specs = {"kernel": ["devices"], "wide": [None, "devices"], "bias": [], "odd": []}
    assert report["fsdp_specs"] == specs, report["fsdp_specs"]
    errors = report["errors"]
    assert errors["too_many"].startswith("--devices 8: only 4 cpu device(s) are present"), errors
    assert "--batch-size 18 is not divisible by --devices 4" in errors["batch"], errors
    assert "seed count (2) to be a multiple of --devices (4)" in errors["seeds"], errors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_devices_and_hosts_train_the_numbers_of_one_device(tmp_path):
    """The 4-device child, and two `lps train` processes of 2 devices each joined over localhost
    (run side by side: each jax start costs seconds), against the child's one-device run."""
    child = subprocess.Popen([sys.executable, __file__, str(tmp_path / "child")], env=_env(4), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    port, run_dir = _free_port(), tmp_path / "hosts"
    args = [sys.executable, "-m", "lps.cli", "train", "--agent", AGENT, "--preset", "toy", "--steps", STEPS,
            "--log-every", LOG_EVERY, "--save-every", LOG_EVERY, "--eval-every", 0, "--eval-episodes", 0,
            "--batch-size", BATCH, "--base-hidden", *HIDDEN, "--run-dir", run_dir, "--no-progress", "--devices", "all",
            "--coordinator-address", f"localhost:{port}", "--num-processes", 2,
            "--shard-params", "--data-placement", "sharded"]  # each host places its block of each array  # fmt: skip
    env = dict(_env(2), OGBENCH_DATA_DIR=str(tmp_path / "ogbench-data"))
    hosts = [subprocess.Popen([*map(str, args), "--process-id", str(i)], env=env, cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300)[0] for p in (child, *hosts)]
    assert [p.returncode for p in (child, *hosts)] == [0, 0, 0], "\n".join(o[-3000:] for o in outs)
    _checked(json.loads(outs[0].strip().splitlines()[-1]))

    assert "process 1 of 2: 2 local device(s), 4 in all" in outs[2]
    assert "[lps] done" in outs[1] and "[lps] done" not in outs[2]  # the summary is process 0's
    (rows, params), (one_rows, one_params) = _final(run_dir), _final(tmp_path / "child" / "one")
    assert [r["step"] for r in rows] == [LOG_EVERY, STEPS]  # one row per step, not one per process
    assert _rows_close(rows, one_rows)
    assert _close(params["params"], one_params["params"])


def test_launchers_and_flags():
    import pytest

    from lps.training.distributed import DistributedConfig, launcher

    assert launcher({}) is None
    assert launcher({"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "2"}) == "SLURM"
    assert launcher({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}) is None  # a job's batch script: one process
    assert launcher({"OMPI_COMM_WORLD_SIZE": "2"}) == "Open MPI"
    with pytest.raises(ValueError, match="--devices must be a positive count or 'all', got 0"):
        DistributedConfig(devices=0)
    with pytest.raises(ValueError, match="--coordinator-address, --num-processes and --process-id go together"):
        DistributedConfig(coordinator_address="host0:1234")
    with pytest.raises(ValueError, match=r"--process-id must be in \[0, --num-processes\) = \[0, 2\), got 2"):
        DistributedConfig(coordinator_address="host0:1234", num_processes=2, process_id=2)


if __name__ == "__main__":
    print(json.dumps(_child(Path(sys.argv[1]))))
