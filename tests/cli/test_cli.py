"""End to end through the real `lps` command: generate a tiny OGBench dataset, train on it,
evaluate the run, load its policy, prepare an npz that trains without OGBench, and generate
missing data on first use.

Everything is tiny (2 episodes of 120 steps, 64-wide networks, 300 steps) so the file runs in
about a minute on 2 CPU cores. Each command runs in a temporary directory with
$OGBENCH_DATA_DIR pointing inside it, so nothing is written to the home directory or the repo.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import helpers
import numpy as np
import pytest

import lps
from lps.data import generate as gen
from lps.data import tasks
from lps.data.validate import load_own_dataset

TASK = "cube-single-play-singletask-task1-v0"
EPISODES, STEPS = 2, 120  # 2 x (120 - 5) = 230 chunks of length 5
TINY_FLAGS = ["--base-hidden", "64", "64", "--critic-hidden", "64", "64", "--actor-hidden", "32", "--batch-size", "64"]

needs_ogbench = pytest.mark.skipif(importlib.util.find_spec("ogbench") is None, reason="needs lps[ogbench]")
pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered", "ignore:.*DISPLAY")


def run_cli(*args, cwd, extra_path: Path | None = None, timeout=180):
    return helpers.run_cli(*args, cwd=cwd, extra_path=extra_path, timeout=timeout, check=True)


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def data_dir(workdir) -> Path:
    """Play data written by `lps data generate`."""
    pytest.importorskip("ogbench")
    d = workdir / "data"
    out = run_cli(
        "data",
        "generate",
        "cube-single",
        "--episodes",
        EPISODES,
        "--max-episode-steps",
        STEPS,
        "--workers",
        1,
        "--data-dir",
        d,
        cwd=workdir,
    )
    assert "[lps] wrote" in out.stdout
    return d


@pytest.fixture(scope="module")
def trained(workdir, data_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """A 300-step run trained by `lps train` on the generated data."""
    run_dir = workdir / "run"
    out = run_cli(
        "train",
        "--preset",
        "quick",
        "--env",
        TASK,
        "--data-dir",
        data_dir,
        "--steps",
        300,
        "--log-every",
        100,
        "--eval-every",
        300,
        "--save-every",
        300,
        "--eval-episodes",
        2,
        *TINY_FLAGS,
        "--run-dir",
        run_dir,
        "--no-progress",
        cwd=workdir,
    )
    return run_dir, out


@needs_ogbench
def test_generate_writes_play_data(data_dir):
    train_path, val_path = gen.dataset_paths("cube-single", data_dir)
    with np.load(train_path) as f:
        assert f["observations"].shape == (EPISODES * STEPS, 28) and f["actions"].shape == (EPISODES * STEPS, 5)
        assert int(f["terminals"].sum()) == EPISODES
    assert val_path.exists()
    assert not list(data_dir.glob("*.tmp*"))


@needs_ogbench
def test_train_writes_a_complete_run(trained):
    run_dir, out = trained
    assert last_line(out.stdout).startswith("[lps] done:")
    assert "generating" not in out.stdout  # the data was there already
    for name in ("config.json", "metrics.csv", "metrics.jsonl", "curves.png", "checkpoint.msgpack", "summary.json"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert not list(run_dir.glob(".*.tmp"))

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss/critic" in r]
    eval_rows = [r for r in rows if "eval/success" in r]
    assert [r["step"] for r in train_rows] == [100, 200, 300]
    assert all(np.isfinite(r[k]) for r in train_rows for k in ("loss/critic", "loss/bc", "loss/actor"))
    assert [r["step"] for r in eval_rows] == [300]
    assert 0.0 <= eval_rows[0]["eval/success"] <= 1.0

    csv_lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,") and "eval/success" in csv_lines[0] and len(csv_lines) == 1 + len(rows)
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    config = json.loads((run_dir / "config.json").read_text())
    assert config["agent"] == "lps" and config["train"]["steps"] == 300 and config["train"]["env"] == TASK
    assert config["agent_config"]["base_hidden"] == [64, 64] and config["spec"]["obs_dim"] == 28
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 300 and summary["final_success"] == eval_rows[0]["eval/success"]


@needs_ogbench
def test_eval_command(trained, workdir):
    run_dir, _ = trained
    results = []
    for workers in (0, 2):  # in-process environments, then two worker processes: the same episodes
        out = run_cli("eval", run_dir, "--episodes", 3, "--workers", workers, cwd=workdir)
        assert f"[lps] evaluating {run_dir} on {TASK}: 3 episode(s), seed 0," in out.stdout  # before any episode
        result = dict(item.split("=") for item in last_line(out.stdout).split())
        assert 0.0 <= float(result["eval/success"]) <= 1.0
        assert float(result["eval/length"]) > 0
        results.append({k: v for k, v in result.items() if "per_sec" not in k})
    assert results[0] == results[1]


@needs_ogbench
def test_load_policy_gives_chunks(trained, data_dir):
    run_dir, _ = trained
    policy = lps.load_policy(run_dir)
    with np.load(gen.dataset_paths("cube-single", data_dir)[0]) as f:
        obs = f["observations"][:3]
    chunk = policy(obs[0])
    assert chunk.shape == (5, 5) and np.all(np.abs(chunk) <= 1)
    chunks = policy(obs)
    assert chunks.shape == (3, 5, 5) and np.all(np.isfinite(chunks)) and np.all(np.abs(chunks) <= 1)
    np.testing.assert_allclose(chunks[0], chunk, atol=1e-5)  # acting is deterministic


@needs_ogbench
def test_prepare_then_train_without_ogbench(workdir, data_dir, tmp_path):
    npz = tmp_path / "task1.npz"
    out = run_cli("data", "prepare", TASK, "--out", npz, "--data-dir", data_dir, cwd=workdir)
    assert f"--dataset {npz}" in out.stdout
    with np.load(npz) as f:
        assert set(f.files) == {"observations", "actions", "terminals", "rewards", "masks"}
        assert f["observations"].shape == (EPISODES * STEPS, 28)
        assert f["terminals"].sum() == EPISODES and f["terminals"][-1]
        assert np.all(f["rewards"] <= 0)  # cube-single's dense reward counts unsolved subtasks
    assert load_own_dataset(npz, 5)["actions"].shape == (EPISODES * STEPS, 5)
    val_npz = tmp_path / "task1-val.npz"  # the validation split comes along
    assert f"--val-dataset {val_npz}" in out.stdout and load_own_dataset(val_npz, 5)["terminals"].sum() >= 1

    # Train with OGBench made unimportable: the npz alone must do.
    blocker = tmp_path / "blocker"
    (blocker / "ogbench").mkdir(parents=True)
    (blocker / "ogbench" / "__init__.py").write_text("raise ImportError('ogbench is blocked in this test')\n")
    run_dir = tmp_path / "run"
    out = run_cli(
        "train",
        "--preset",
        "quick",
        "--dataset",
        npz,
        "--val-dataset",
        val_npz,
        "--steps",
        100,
        "--log-every",
        100,
        "--eval-every",
        0,
        "--save-every",
        100,
        "--eval-episodes",
        0,
        *TINY_FLAGS,
        "--run-dir",
        run_dir,
        "--no-progress",
        cwd=tmp_path,
        extra_path=blocker,
    )
    assert last_line(out.stdout).startswith("[lps] done:") and "no evaluation" in last_line(out.stdout)
    assert (run_dir / "checkpoint.msgpack").is_file()
    assert json.loads((run_dir / "config.json").read_text())["train"]["dataset"] == str(npz)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/td_error" in r] == [100]  # scored at the final evaluation


@needs_ogbench
def test_missing_play_data_is_generated_first(tmp_path, monkeypatch, capsys):
    calls = []
    real_generate = gen.generate

    def short_generate(env, data_dir, episodes=1000, seed=0, workers=None, **kwargs):
        calls.append((env, episodes, seed))
        return real_generate(env, data_dir, episodes, seed, workers=1, progress=False, max_episode_steps=60)

    monkeypatch.setattr(gen, "generate", short_generate)
    data_dir = tmp_path / "fresh"
    from lps.training.config import TrainConfig
    from lps.training.plan import resolve
    from lps.training.setup import load_data

    # The trainer's path: missing data is generated with the config's episodes and data seed.
    cfg = TrainConfig(env=TASK, data_dir=str(data_dir), episodes=1, data_seed=3)
    data = load_data(resolve(cfg), cfg)
    assert f"[lps] no cube-single play data in {data_dir}: generating 1 episodes first" in capsys.readouterr().out
    assert calls == [("cube-single", 1, 3)]
    assert all(p.is_file() for p in gen.dataset_paths("cube-single", data_dir))
    assert data["observations"].shape == (60, 28) and data["terminals"].sum() == 1

    # Present data is used as is.
    data = tasks.load_task(tasks.parse_task(TASK), data_dir, chunk_len=5, episodes_if_missing=1)
    assert "generating" not in capsys.readouterr().out and len(calls) == 1
    assert data["observations"].shape == (60, 28)


def test_agents_lists_lps(tmp_path):
    out = run_cli("agents", cwd=tmp_path)
    names = [line.split()[0] for line in out.stdout.splitlines() if line and not line[0].isspace()]
    assert "lps" in names
    blocks = {}
    for line in out.stdout.splitlines():
        if line and not line[0].isspace():
            name = line.split()[0]
        blocks[name] = blocks.get(name, "") + line + "\n"
    # Published target aggregation per agent, and what alpha means for each.
    for name, agg in {"lps": "min", "qc-fql": "mean", "qc-mfql": "min", "dsrl-na": "mean", "cfgrl": "min"}.items():
        assert f"critic_agg={agg}" in blocks[name], blocks[name]
    assert "alpha is a no-op" in blocks["lps"] and "alpha is a no-op" in blocks["dsrl-na"]
    assert "no-op" not in blocks["qc-fql"] and "no-op" not in blocks["lpsd"]
    assert "did not publish" in blocks["qc-mfql"] and "4x512" in blocks["dsrl-na"]
