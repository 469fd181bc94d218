"""Every bad input gets a clear error (its type and the key phrase of its message are checked),
and nothing already written is lost or half-written.

Training here is the toy bandit with tiny networks: the few runs that compile take a few
seconds each.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_run, run_cli, toy_config

import lps
from lps import cli, files
from lps.agents import LPSConfig, config_class
from lps.data import tasks
from lps.data.validate import DatasetError, load_own_dataset, validate
from lps.training import checkpoint
from lps.training import loop as T
from lps.training import rundir as R
from lps.training import update as U
from lps.training.config import TrainConfig, check_positive_widths, preset, with_flags
from lps.training.loop import train
from lps.training.update import TrainingDiverged

TINY = LPSConfig(base_hidden=(32, 32), critic_hidden=(32, 32), actor_hidden=(32,))


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of `directory` (recursively) with its bytes and mtime; the lock file, which
    every start rewrites with its PID, is not part of a run's results."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def episodes(n_episodes=4, length=10, obs_dim=3, action_dim=2, seed=0) -> dict[str, np.ndarray]:
    """A valid row-layout dataset of `n_episodes` episodes of `length` rows."""
    rng = np.random.default_rng(seed)
    n = n_episodes * length
    terminals = np.zeros(n, bool)
    terminals[length - 1 :: length] = True
    return {
        "observations": rng.standard_normal((n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, action_dim)).astype(np.float32),
        "terminals": terminals,
        "rewards": rng.standard_normal(n).astype(np.float32),
    }


def save_npz(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A finished 200-step toy run with checkpoints at 100 and 200 (shared, never modified: copy it)."""
    run_dir = tmp_path_factory.mktemp("toy") / "run"
    train("lps", toy_config(run_dir), TINY)
    return run_dir



# --- dataset files -------------------------------------------------------------------------


def test_missing_dataset_file(tmp_path):
    with pytest.raises(DatasetError, match="dataset file not found: .*nope.npz"):
        load_own_dataset(tmp_path / "nope.npz", 1)
    # Through the trainer: refused before anything is written.
    run_dir = tmp_path / "run"
    with pytest.raises(DatasetError, match="not found"):
        train("lps", toy_config(run_dir, dataset=str(tmp_path / "nope.npz")), TINY)
    assert not run_dir.exists()


def test_corrupt_dataset_file(tmp_path):
    path = tmp_path / "random.npz"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(DatasetError, match="is corrupt or not an npz file"):
        load_own_dataset(path, 1)
    good = save_npz(tmp_path / "good.npz", episodes())
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DatasetError, match="is corrupt or not an npz file"):
        load_own_dataset(truncated, 1)


def test_corrupt_compressed_member(tmp_path):
    buf = io.BytesIO()
    np.savez_compressed(buf, **episodes())
    raw = bytearray(buf.getvalue())
    start = 30 + int.from_bytes(raw[26:28], "little") + int.from_bytes(raw[28:30], "little")
    raw[start + 5 : start + 13] = b"\xff" * 8  # inside the first member's compressed data
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="corrupt"):
        load_own_dataset(path, 1)


def test_npy_instead_of_npz(tmp_path):
    path = tmp_path / "observations.npy"
    np.save(path, np.zeros((4, 3)))
    with pytest.raises(DatasetError, match="npz"):
        load_own_dataset(path, 1)


def test_missing_keys_lists_the_keys_present(tmp_path):
    data = episodes()
    path = save_npz(tmp_path / "partial.npz", {"observations": data["observations"], "actions": data["actions"]})
    with pytest.raises(
        DatasetError, match=r"lacks key\(s\) \['terminals', 'rewards'\]; it has \['actions', 'observations'\]"
    ):
        load_own_dataset(path, 1)


def test_one_dimensional_observations(tmp_path):
    data = episodes()
    data["observations"] = data["observations"][:, 0]
    with pytest.raises(DatasetError, match=r"must be 2-D \(rows, dim\), got \(40,\) and \(40, 2\)"):
        load_own_dataset(save_npz(tmp_path / "d.npz", data), 1)


def test_rewards_of_wrong_length(tmp_path):
    data = episodes()
    data["rewards"] = data["rewards"][:-1]
    with pytest.raises(DatasetError, match="'rewards' has 39 rows but observations has 40"):
        load_own_dataset(save_npz(tmp_path / "d.npz", data), 1)


def test_two_dimensional_terminals():
    data = episodes() | {"masks": np.ones(40, np.float32)}
    data["terminals"] = data["terminals"][:, None]
    with pytest.raises(DatasetError, match=r"'terminals' must be 1-D, got shape \(40, 1\)"):
        validate(data, 1)


def test_scalar_rewards(tmp_path):
    data = episodes()
    data["rewards"] = np.float32(1.0)
    with pytest.raises(DatasetError, match="rewards"):
        load_own_dataset(save_npz(tmp_path / "d.npz", data), 1)


@pytest.mark.parametrize("key", ["observations", "rewards"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_name_key_and_row(tmp_path, key, value):
    data = episodes()
    data[key] = data[key].copy()
    data[key][7] = value if key == "rewards" else [0.0, value, 0.0]
    with pytest.raises(DatasetError, match=rf"'{key}' holds 1 NaN/inf value\(s\), first at row 7; clean the data"):
        load_own_dataset(save_npz(tmp_path / "d.npz", data), 1)


def test_actions_outside_unit_box(tmp_path):
    data = episodes()
    data["actions"][5, 1] = -1.75
    with pytest.raises(DatasetError, match=r"actions must lie in \[-1, 1\].*reach 1\.75; rescale them to \[-1, 1\]"):
        load_own_dataset(save_npz(tmp_path / "d.npz", data), 1)
    # Rounding error within the tolerance is accepted and clipped.
    data["actions"][5, 1] = -1.0 - 1e-7
    assert load_own_dataset(save_npz(tmp_path / "ok.npz", data), 1)["actions"].min() >= -1.0


def test_empty_dataset(tmp_path):
    data = {k: v[:0] for k, v in episodes().items()}
    with pytest.raises(
        DatasetError, match=r"last row must end an episode \(terminals\[-1\] = 1\), or the dataset is empty"
    ):
        load_own_dataset(save_npz(tmp_path / "d.npz", data), 1)


def test_unterminated_last_episode(tmp_path):
    data = episodes()
    data["terminals"][-1] = False
    with pytest.raises(DatasetError, match=r"last row must end an episode"):
        load_own_dataset(save_npz(tmp_path / "d.npz", data), 1)


def test_episodes_shorter_than_chunk(tmp_path):
    # An episode of H rows has no chunk (H actions and the observation after them need H + 1 rows).
    path = save_npz(tmp_path / "d.npz", episodes(length=5))
    with pytest.raises(DatasetError, match="no episode is longer than the chunk length 5"):
        load_own_dataset(path, 5)
    assert load_own_dataset(save_npz(tmp_path / "ok.npz", episodes(length=6)), 5)["observations"].shape == (24, 3)


def test_batch_larger_than_number_of_chunks(tmp_path):
    path = save_npz(tmp_path / "d.npz", episodes())  # 4 episodes x 9 chunks of length 1
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="--batch-size 64 is larger than the dataset's 36 chunks"):
        train("lps", toy_config(run_dir, dataset=str(path), batch_size=64), TINY)
    assert not run_dir.exists()


# --- names: envs, agents, presets, reward modes ----------------------------------------------


def test_unknown_env_lists_valid_envs(tmp_path):
    valid = "cube-single, cube-double, scene, puzzle-3x3, puzzle-4x4"
    with pytest.raises(ValueError, match=f"unknown task 'cube-triple-play-singletask-task1-v0'.*{valid}"):
        tasks.parse_task("cube-triple-play-singletask-task1-v0")
    with pytest.raises(ValueError, match=f"unknown task 'nosuch-env'.*{valid}"):
        train("lps", toy_config(tmp_path / "run", env="nosuch-env", data_dir=str(tmp_path / "data")), TINY)
    from lps.data.generate import dataset_paths

    with pytest.raises(ValueError, match=f"unknown env 'cube-triple'; valid names: {valid}"):
        dataset_paths("cube-triple", tmp_path)
    assert not list(tmp_path.iterdir())


def test_unknown_agent_lists_valid_agents(tmp_path):
    with pytest.raises(ValueError, match=r"unknown agent 'nosuch'; valid agents: (.*, )?lps(,|$)"):
        config_class("nosuch")
    with pytest.raises(ValueError, match=r"unknown agent 'nosuch'; valid agents: (.*, )?lps(,|$)"):
        train("nosuch", toy_config(tmp_path / "run"), TINY)
    assert not (tmp_path / "run").exists()


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="unknown preset 'nope'; valid presets: paper, quick, toy"):
        preset("nope", LPSConfig)


def test_sparse_task_with_dense_reward(tmp_path):
    name = "scene-play-sparse-singletask-task1-v0"
    with pytest.raises(ValueError, match="names sparse rewards but reward='dense'"):
        tasks.parse_task(name, "dense")
    # Refused before any play data is generated.
    data_dir = tmp_path / "data"
    with pytest.raises(ValueError, match="names sparse rewards"):
        train("lps", toy_config(tmp_path / "run", env=name, reward="dense", data_dir=str(data_dir)), TINY)
    assert not data_dir.exists() and not (tmp_path / "run").exists()
    assert tasks.parse_task(name, "paper").sparse and tasks.parse_task(name, "sparse").sparse


# --- impossible config values -----------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(steps=0), "--steps must be positive, got 0"),
        (dict(batch_size=-1), "--batch-size must be positive, got -1"),
        (dict(chunk_len=0), "--chunk-len must be positive"),
        (dict(lr=0.0), "--lr must be positive, got 0.0"),
        (dict(lr=float("nan")), "--lr must be positive"),
        (dict(gamma=1.5), r"--gamma must be in \(0, 1\], got 1.5"),
        (dict(gamma=0.0), r"--gamma must be in \(0, 1\]"),
        (dict(eval_every=150, log_every=100), r"--eval-every \(150\) must be a multiple of --log-every \(100\)"),
        (dict(save_every=250, log_every=100), r"--save-every \(250\) must be a multiple of --log-every \(100\)"),
        (dict(eval_episodes=-1), "--eval-episodes must be >= 0"),
    ],
)
def test_impossible_config_values(fields, message):
    with pytest.raises(ValueError, match=message):
        with_flags(TrainConfig(), **fields)
    with pytest.raises(ValueError, match=message):
        with_flags(TrainConfig(), **fields)


def test_network_widths_must_be_positive():
    check_positive_widths(TINY)
    with pytest.raises(ValueError, match=r"--base-hidden needs at least one positive width, got \(0,\)"):
        check_positive_widths(dataclasses.replace(TINY, base_hidden=(0,)))
    with pytest.raises(ValueError, match=r"--critic-hidden needs at least one positive width, got \(32, -4\)"):
        check_positive_widths(dataclasses.replace(TINY, critic_hidden=(32, -4)))
    with pytest.raises(ValueError, match=r"--actor-hidden needs at least one positive width, got \(\)"):
        check_positive_widths(dataclasses.replace(TINY, actor_hidden=()))
    with pytest.raises(ValueError, match="--num-critics must be positive, got 0"):
        check_positive_widths(dataclasses.replace(TINY, num_critics=0))


def test_cli_zero_width_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--preset", "toy", "--base-hidden", "0", "--run-dir", str(run_dir), "--no-progress"]) == 1
    assert "lps train: error: --base-hidden needs at least one positive width, got (0,)" in capsys.readouterr().err
    assert not run_dir.exists()


# --- existing runs ------------------------------------------------------------------------------


def test_existing_run_is_not_overwritten(toy_run, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(toy_run, tmp_path / "run")
    before = snapshot(run_dir)
    assert {"config.json", "checkpoint.msgpack", "metrics.jsonl", "metrics.csv", "summary.json"} <= set(before)
    with pytest.raises(
        FileExistsError, match=f"{run_dir} already holds a run: resume it with `lps train --resume {run_dir}`"
    ):
        train("lps", toy_config(run_dir), TINY)
    assert snapshot(run_dir) == before
    # Through the CLI: exit code 1 and the same advice.
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--preset", "toy", "--run-dir", str(run_dir), "--no-progress"]) == 1
    assert "--resume" in capsys.readouterr().err
    assert snapshot(run_dir) == before


def test_interrupted_overwrite_leaves_no_stale_checkpoint(toy_run, tmp_path, monkeypatch):
    run_dir = copy_run(toy_run, tmp_path / "run")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the new run is killed before its first checkpoint

    monkeypatch.setattr(T, "make_multi_update", killed)
    wider = LPSConfig(base_hidden=(16,), critic_hidden=(16,), actor_hidden=(16,))
    with pytest.raises(KeyboardInterrupt):
        train("lps", toy_config(run_dir, overwrite=True), wider)
    assert not (run_dir / checkpoint.CHECKPOINT).exists()
    assert not (run_dir / R.SUMMARY_JSON).exists()


# --- divergence -----------------------------------------------------------------------------------


def test_diverged_resume_keeps_last_good_checkpoint(toy_run, tmp_path):
    run_dir = copy_run(toy_run, tmp_path / "run")
    ckpt = run_dir / checkpoint.CHECKPOINT
    good_bytes, good_mtime = ckpt.read_bytes(), ckpt.stat().st_mtime_ns
    with pytest.raises(TrainingDiverged) as info:
        train("lps", toy_config(run_dir, steps=400, lr=1e12), TINY, resume=True)
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert info.match(r"training diverged at step (20[1-9]|2[1-9]\d|300): '(loss|q)/\w+' = -?(nan|inf)")
    assert info.match(f"the last good checkpoint is kept in {ckpt}")
    assert "--lr" in message
    assert ckpt.read_bytes() == good_bytes and ckpt.stat().st_mtime_ns == good_mtime
    # The failed resume's lr was not recorded: a plain --resume continues the good run.
    assert json.loads((run_dir / "config.json").read_text())["train"]["lr"] != 1e12
    # Metrics stop at the last good dispatch; nothing past step 200 was logged.
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [100, 200]
    policy = lps.load_policy(run_dir)
    actions = policy(np.zeros((8, 1), np.float32))
    assert actions.shape == (8, 1, 2) and np.all(np.isfinite(actions)) and np.all(np.abs(actions) <= 1)


def test_huge_rewards_diverge_before_any_checkpoint(tmp_path):
    data = episodes(n_episodes=50, length=2, obs_dim=1)
    data["rewards"][:] = 1e38  # finite, but its square is not
    path = save_npz(tmp_path / "huge.npz", data)
    run_dir = tmp_path / "run"
    cfg = toy_config(run_dir, dataset=str(path), batch_size=16, steps=100, save_every=100)
    # loss/critic is inf at step 1 and loss/actor NaN from step 2; see test_divergence_reports_the_earliest_step.
    pattern = (
        r"training diverged at step 1: 'loss/critic' = inf.*; training stopped and no checkpoint had been written yet"
    )
    with pytest.raises(TrainingDiverged, match=pattern + r".*check the data's rewards"):
        train("lps", cfg, TINY)
    assert not (run_dir / checkpoint.CHECKPOINT).exists()
    assert not (run_dir / R.SUMMARY_JSON).exists()


def test_divergence_reports_the_earliest_step(tmp_path):
    nan = float("nan")
    metrics = {"loss/actor": np.array([0.0, 0.0, nan]), "loss/critic": np.array([0.0, nan, nan])}
    with pytest.raises(TrainingDiverged, match="training diverged at step 12: 'loss/critic' = nan;"):
        U.check_finite(metrics, 10, tmp_path)


# --- the command line -------------------------------------------------------------------------------


def test_cli_unknown_flag_exits_2(tmp_path):
    out = run_cli("train", "--no-such-flag", "1", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "--no-such-flag" in out.stderr
    assert not list(tmp_path.iterdir())


def test_cli_negative_steps(tmp_path):
    out = run_cli("train", "--steps", "-5", "--preset", "toy", cwd=tmp_path)
    # tyro builds TrainConfig while parsing, so the refusal is a usage error (exit 2, like argparse).
    assert out.returncode == 2, out.stderr
    assert "--steps must be positive, got -5" in out.stderr
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir())


def test_cli_unknown_command_exits_2(tmp_path):
    out = run_cli("nosuchcommand", cwd=tmp_path)
    assert out.returncode == 2
    assert "unknown command 'nosuchcommand'; commands: train, eval, data, agents" in out.stderr


def test_cli_unknown_agent_exits_1(tmp_path):
    out = run_cli("train", "--agent", "nosuch", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert re.search(r"lps train: error: unknown agent 'nosuch'; valid agents: (.*, )?lps(,|$)", out.stderr, re.M)
    assert "Traceback" not in out.stderr


# --- atomic writes ------------------------------------------------------------------------------


def _only_file(path: Path) -> None:
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "file.json"
    files.atomic_write(path, "old")
    files.atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    _only_file(path)


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_write_failing_rename_keeps_old_file(tmp_path, monkeypatch, failure):
    path = tmp_path / "checkpoint.msgpack"
    path.write_bytes(b"old contents")

    def failing_replace(src, dst):
        raise failure

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(type(failure)):
        files.atomic_write(path, b"new contents")
    assert path.read_bytes() == b"old contents"
    _only_file(path)


def test_atomic_write_failing_midway_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        files.atomic_write(path, 12345)  # type: ignore[arg-type]  # f.write fails after the temp file exists
    assert path.read_text() == "old"
    _only_file(path)

    def failing_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(checkpoint.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        files.atomic_write(path, "new " * 10_000)
    assert path.read_text() == "old"
    _only_file(path)


def test_atomic_write_files_are_readable_by_others(tmp_path):
    # mkstemp creates 0600 files; results must be as readable as a plain open() would make them.
    path = tmp_path / "config.json"
    old_umask = os.umask(0o022)
    try:
        files.atomic_write(path, "{}")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_damaged_checkpoint_is_a_clear_error(toy_run, tmp_path, capsys):
    run_dir = copy_run(toy_run, tmp_path / "run")
    ckpt, previous = run_dir / checkpoint.CHECKPOINT, run_dir / checkpoint.PREVIOUS
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    lps.load_policy(run_dir)  # the previous checkpoint stands in, and that is said
    assert f"checkpoint {ckpt} is damaged" in capsys.readouterr().err
    previous.write_bytes(previous.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"checkpoint {ckpt} is damaged.*previous one is unusable too"):
        lps.load_policy(run_dir)
    ckpt.unlink()
    previous.unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        lps.load_policy(run_dir)
    with pytest.raises(FileNotFoundError, match="is not a run directory"):
        lps.load_policy(tmp_path / "nothing")
