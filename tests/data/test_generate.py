"""Tests for lps.data.generate: reproducibility, OGBench layout/loadability, errors and atomic writes.

Episodes are cut to a few dozen steps so the whole file runs in well under a minute on 2 cores.
"""

import sys

import numpy as np
import pytest

pytest.importorskip("ogbench")
from lps.data import generate as g  # noqa: E402

# gymnasium complains about float64 space bounds and glfw about the missing display; both are harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered", "ignore:.*DISPLAY")
STEPS = 60
DTYPES = {
    "observations": np.float32,
    "actions": np.float32,
    "terminals": np.bool_,
    "qpos": np.float32,
    "qvel": np.float32,
}


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _make(env, data_dir, **kw):
    kw = dict(episodes=2, seed=0, workers=1, progress=False, max_episode_steps=STEPS) | kw
    return g.generate(env, data_dir, **kw)


@pytest.fixture(scope="module")
def cube_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cube") / "nested"  # generate must create missing directories
    _make("cube-single", d)
    return d


def test_dataset_paths(tmp_path):
    train, val = g.dataset_paths("scene", tmp_path)
    assert train == tmp_path / "scene-play-v0.npz" and val == tmp_path / "scene-play-v0-val.npz"


def test_reproducible_across_workers_and_seed_matters(cube_dir, tmp_path):
    par = _make("cube-single", tmp_path / "par", workers=2)
    other = _make("cube-single", tmp_path / "seed1", seed=1)
    for ref_path, par_path in zip(g.dataset_paths("cube-single", cube_dir), par):
        ref, got = _load(ref_path), _load(par_path)
        assert ref.keys() == got.keys()
        for k in ref:
            assert ref[k].dtype == got[k].dtype and np.array_equal(ref[k], got[k]), k
    assert not np.array_equal(_load(cube_dir / "cube-single-play-v0.npz")["actions"], _load(other[0])["actions"])


def test_raw_layout(cube_dir):
    for path, n_eps in zip(g.dataset_paths("cube-single", cube_dir), (2, 1)):
        data = _load(path)
        assert set(data) == set(DTYPES)
        for k, dtype in DTYPES.items():
            assert data[k].dtype == dtype and len(data[k]) == n_eps * STEPS, k
        ends = np.arange(1, n_eps + 1) * STEPS - 1
        assert np.array_equal(np.flatnonzero(data["terminals"]), ends)
        assert np.all(np.abs(data["actions"]) <= 1)
    assert not list(cube_dir.glob("*.tmp*"))


def _check_ogbench_loads(dataset_name, data_dir, ob_dim, train_eps, val_eps, steps):
    import ogbench

    env, train, val = ogbench.make_env_and_datasets(dataset_name, dataset_dir=str(data_dir))
    env.close()
    for ds, n_eps in ((train, train_eps), (val, val_eps)):
        n = n_eps * (steps - 1)  # OGBench drops each episode's last row (no next observation)
        assert ds["observations"].shape == ds["next_observations"].shape == (n, ob_dim)
        assert ds["actions"].shape == (n, 5)
        assert ds["rewards"].shape == ds["masks"].shape == ds["terminals"].shape == (n,)


def test_cube_loads_through_ogbench(cube_dir):
    _check_ogbench_loads("cube-single-play-singletask-task1-v0", cube_dir, 28, 2, 1, STEPS)


def test_puzzle_layout_and_loads_through_ogbench(tmp_path):
    train, val = _make("puzzle-3x3", tmp_path, episodes=1, max_episode_steps=20)
    data = _load(train)
    assert data["button_states"].dtype == np.int64 and data["button_states"].shape == (20, 9)
    assert set(np.unique(data["button_states"])) <= {0, 1}
    _check_ogbench_loads("puzzle-3x3-play-singletask-task1-v0", tmp_path, 55, 1, 1, 20)


def test_scene_health_check_and_retry(tmp_path, monkeypatch):
    q = np.zeros((3, 25))
    q[:, 15], q[:, 16] = 0.0, 0.02
    assert g._scene_healthy(q)
    q[1, 15] = 0.3  # fell off the back
    assert not g._scene_healthy(q)
    q[1, 15], q[1, 16] = -0.35, 0.02  # off the front edge, not resting on it
    assert not g._scene_healthy(q)
    q[1, 16] = 0.07
    assert g._scene_healthy(q)

    first = g.collect_episodes("scene", [3], max_episode_steps=10)
    calls = []
    monkeypatch.setattr(g, "_scene_healthy", lambda qpos: calls.append(1) or len(calls) > 1)
    retried = g.collect_episodes("scene", [3], max_episode_steps=10)
    assert len(calls) == 2 and not np.array_equal(first["qpos"], retried["qpos"])
    calls.clear()
    assert np.array_equal(g.collect_episodes("scene", [3], max_episode_steps=10)["qpos"], retried["qpos"])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="cube-single.*cube-double.*scene.*puzzle-3x3.*puzzle-4x4"):
        g.generate("cube-triple", tmp_path)
    with pytest.raises(ValueError, match="episodes"):
        g.generate("cube-single", tmp_path, episodes=0)
    with pytest.raises(ValueError, match="workers"):
        g.generate("cube-single", tmp_path, workers=0)
    assert not list(tmp_path.iterdir())


def test_missing_ogbench_message(monkeypatch):
    monkeypatch.setattr(g, "_cache", {})
    monkeypatch.setitem(sys.modules, "ogbench.manipspace", None)  # makes the import fail
    with pytest.raises(ImportError, match=r'pip install "lps\[ogbench\]"'):
        g.collect_episodes("cube-single", [0], max_episode_steps=5)


def test_collection_failure_writes_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("collection failed")

    monkeypatch.setattr(g, "collect_episodes", boom)
    with pytest.raises(RuntimeError, match="collection failed"):
        _make("cube-single", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_write_failure_leaves_no_temp_or_train_file(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(g.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        _make("cube-single", tmp_path, episodes=1, max_episode_steps=5)
    assert not list(tmp_path.iterdir())


# --- workers and stopping on a signal ------------------------------------------------------------


def test_workers_are_capped_at_the_cores(monkeypatch, capsys):
    monkeypatch.setattr(g, "available_cores", lambda: 2)
    assert g.plan_workers(1000) == 2
    assert "[lps] --workers 1000 is more than the 2 core(s) available; using 2" in capsys.readouterr().out
    assert g.plan_workers(2) == 2 and g.plan_workers(1) == 1 and g.plan_workers(None) == 2
    assert capsys.readouterr().out == ""  # no message when nothing is capped
    for bad in (0, -4, 1.5):
        with pytest.raises(ValueError, match="--workers must be at least 1"):
            g.plan_workers(bad)


def test_signal_stops_collection_and_writes_nothing(tmp_path, monkeypatch):
    import signal

    calls = []

    def collect(env, seeds, max_episode_steps=1001):  # the second batch is cut by a SIGTERM
        calls.append(seeds)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGTERM)
        return {"terminals": np.ones(len(seeds), bool), "actions": np.zeros((len(seeds), 5), np.float32)}

    monkeypatch.setattr(g, "collect_episodes", collect)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(g.GenerationStopped, match="stopped by SIGTERM; nothing written for cube-single") as info:
        _make("cube-single", tmp_path, episodes=40)
    assert info.value.exit_code == 143 and len(calls) == 2
    assert not list(tmp_path.iterdir())  # no file, no temporary file
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_signal_while_writing_finishes_the_files(tmp_path):
    import signal

    paths = g.dataset_paths("cube-single", tmp_path)
    with g.StopOnSignal("cube-single") as stop:
        with pytest.raises(g.GenerationStopped, match="stopped by SIGINT; nothing written"):
            with stop.holding():  # e.g. starting the workers: the signal waits for the end of the block
                signal.raise_signal(signal.SIGINT)
    with g.StopOnSignal("cube-single") as stop:
        stop.writing = True
        signal.raise_signal(signal.SIGTERM)  # recorded only
    with pytest.raises(g.GenerationStopped, match="stopped by SIGTERM after writing") as info:
        stop.stopped_after_writing(paths)
    assert info.value.exit_code == 143


def test_sigterm_ends_the_workers_cleanly(tmp_path):
    """`lps data generate` with two workers, sent SIGTERM once collecting: one line, no worker
    traceback or leaked semaphore, no file."""
    import os
    import signal
    import subprocess
    import time

    from helpers import ROOT

    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path)
    data_dir = tmp_path / "data"
    cmd = [sys.executable, "-m", "lps.cli", "data", "generate", "cube-single", "--episodes", "40",
           "--max-episode-steps", "500", "--workers", "2", "--data-dir", str(data_dir)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("generating cube-single play data")  # the pool is next
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "lps data: stopped by SIGTERM; nothing written for cube-single" in err
    assert "Traceback" not in err and "BrokenPipe" not in err and "leaked" not in err, err
    assert not list(data_dir.iterdir())
