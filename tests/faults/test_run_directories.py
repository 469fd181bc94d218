"""Runs that cannot be lost (issue 11): one trainer per run directory, resumes that cannot relabel
a run, verified checkpoints with a fallback, tolerant metrics, clean stops, and one-line errors.

Training is the toy bandit with tiny networks; runs that need training share module fixtures and
are copied before being changed.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, copy_run, toy_config

import lps
from lps import cli
from lps.agents import LPSConfig
from lps.data import generate as gen
from lps.data import tasks
from lps.data.validate import DatasetError, validate
from lps.training import checkpoint, rundir
from lps.training import config as C
from lps.training import loop as T
from lps.training import rundir as R
from lps.training import setup as S
from lps.training import update as U
from lps.training.config import TrainConfig, check_agent_config
from lps.training.loop import train
from lps.training.runlog import METRICS_JSONL, RunLog

TINY = LPSConfig(base_hidden=(32, 32), critic_hidden=(32, 32), actor_hidden=(32,))
# The CLI's flags for the same tiny toy run as `toy_config` + TINY.
TINY_FLAGS = ["--preset", "toy", "--steps", "200", "--log-every", "100", "--eval-every", "0", "--save-every",
              "100", "--eval-episodes", "0", "--batch-size", "64", "--base-hidden", "32", "32", "--critic-hidden",
              "32", "32", "--actor-hidden", "32", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 200-step toy run with checkpoints at 100 (previous) and 200 (latest); copy it."""
    run_dir = tmp_path_factory.mktemp("safety") / "run"
    train("lps", toy_config(run_dir), TINY)
    return run_dir



def config_of(run_dir: Path) -> dict:
    return json.loads((run_dir / C.CONFIG_JSON).read_text())


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / METRICS_JSONL).read_text().splitlines()]


def restored_step(run_dir: Path) -> int:
    agent_name, cfg, agent_cfg, spec = C.load_config(run_dir)
    agent = lps.agents.make_agent(agent_name, agent_cfg, spec)
    return int(checkpoint.restore(run_dir, U.create_state(agent, U.make_optimizer(cfg), cfg.seed)).step)


def hold_lock_in_child(run_dir: Path) -> subprocess.Popen:
    """Another process holding `run_dir`'s lock until killed."""
    code = (
        "import sys, time; from lps.training.rundir import lock; f = lock(sys.argv[1]); print('locked', flush=True); "
        "time.sleep(600)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "locked"
    return child


# --- 1. one trainer per run directory -------------------------------------------------------------


def test_second_trainer_is_refused_naming_the_holder_and_a_dead_holder_does_not_block(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    child = hold_lock_in_child(run_dir)
    try:
        with pytest.raises(rundir.RunDirLocked, match=f"in use by another training process \\(PID {child.pid} on host "
                           f"{socket.gethostname()}"):  # fmt: skip
            train("lps", toy_config(run_dir), TINY)
        assert not (run_dir / C.CONFIG_JSON).exists()  # nothing of the live run was touched
        monkeypatch.chdir(tmp_path)
        assert cli.main(["train", *TINY_FLAGS, "--run-dir", str(run_dir)]) == 1
        err = capsys.readouterr().err
        assert f"PID {child.pid}" in err and "Traceback" not in err
    finally:
        child.kill()  # kill -9: the kernel drops its lock, so it cannot go stale
        child.wait()
    train("lps", toy_config(run_dir, steps=100), TINY)
    assert steps_logged(run_dir) == [100]
    # Released on exit: the lock can be taken again at once.
    rundir.lock(run_dir).close()


def test_lock_is_released_when_training_fails(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="--batch-size"):
        train("lps", toy_config(run_dir, batch_size=10**6), TINY)
    rundir.lock(run_dir).close()


# --- 2, 3, 8. resume cannot change what a run is ---------------------------------------------------


@pytest.mark.parametrize(
    "flags, field",
    [
        (["--seed", "1"], "--seed 0 -> 1"),
        (["--env", "toy-two-moons"], "--env 'toy-bandit' -> 'toy-two-moons'"),
        (["--gamma", "0.9"], "--gamma"),
        (["--alpha", "2.0"], "--alpha 1.0 -> 2.0"),
        (["--critic-hidden", "64", "64"], "--critic-hidden"),
    ],
)
def test_resume_refuses_a_change_to_what_was_trained(finished, tmp_path, monkeypatch, capsys, flags, field):
    run_dir = copy_run(finished, tmp_path / "run")
    before = (run_dir / C.CONFIG_JSON).read_bytes()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--resume", str(run_dir), "--steps", "300", *flags]) == 1
    err = capsys.readouterr().err
    assert "cannot change what it trains" in err and field in err and "Traceback" not in err
    assert (run_dir / C.CONFIG_JSON).read_bytes() == before


def test_resume_may_change_length_cadence_and_records_lr_and_batch_size(finished, tmp_path, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    cfg = toy_config(run_dir, steps=300, log_every=50, save_every=50, lr=1e-4, batch_size=32)
    train("lps", cfg, TINY, resume=True)
    assert steps_logged(run_dir) == [100, 200, 250, 300]
    (entry,) = [json.loads(line) for line in (run_dir / rundir.RESUME_LOG).read_text().splitlines()]
    assert entry["step"] == 200
    assert entry["changes"] == [
        {"field": "batch_size", "old": 64, "new": 32},
        {"field": "lr", "old": 0.0003, "new": 0.0001},
    ]
    assert "--lr 0.0003 -> 0.0001" in capsys.readouterr().out
    assert config_of(run_dir)["train"]["lr"] == 1e-4


def test_resume_with_fewer_steps_than_the_checkpoint_is_refused(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path / "run")
    summary = (run_dir / R.SUMMARY_JSON).read_bytes()
    with pytest.raises(ValueError, match="--steps 100 is below the step 200 of the checkpoint.*--steps 200 or more"):
        train("lps", toy_config(run_dir, steps=100), TINY, resume=True)
    assert config_of(run_dir)["train"]["steps"] == 200
    assert (run_dir / R.SUMMARY_JSON).read_bytes() == summary


def test_outputs_without_any_checkpoint_are_not_retrained_over(finished, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    (run_dir / checkpoint.CHECKPOINT).unlink()
    (run_dir / checkpoint.PREVIOUS).unlink()
    kept = {name: (run_dir / name).read_bytes() for name in (METRICS_JSONL, R.SUMMARY_JSON)}
    monkeypatch.chdir(tmp_path)
    for flags in (["--resume", str(run_dir), "--steps", "300"], [*TINY_FLAGS, "--run-dir", str(run_dir)]):
        assert cli.main(["train", *flags]) == 1
        err = capsys.readouterr().err
        assert "rows up to step 200" in err and R.SUMMARY_JSON in err and "no checkpoint" in err, err
        assert "restore" in err and "--overwrite" in err and "Traceback" not in err
        assert {name: (run_dir / name).read_bytes() for name in kept} == kept


def test_unreadable_summary_is_named_and_not_rewritten_with_a_rate_never_measured(finished, tmp_path, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    (run_dir / R.SUMMARY_JSON).write_text("{garbage")
    summary = train("lps", toy_config(run_dir), TINY, resume=True)  # at --steps already: no step to train
    assert f"{run_dir / R.SUMMARY_JSON} is unreadable" in capsys.readouterr().out
    assert summary["steps_per_sec"] is None and json.loads((run_dir / R.SUMMARY_JSON).read_text()) == summary


def test_resume_with_another_run_dir_is_refused(finished, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--resume", str(run_dir), "--run-dir", str(tmp_path / "other")]) == 1
    err = capsys.readouterr().err
    assert f"--run-dir {tmp_path / 'other'} differs from --resume {run_dir}" in err and "Traceback" not in err
    assert not (tmp_path / "other").exists()


def test_resume_with_an_empty_path_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--resume", ""]) == 1
    assert "--resume needs a run directory" in capsys.readouterr().err


# --- 4. checksummed checkpoints with a fallback ------------------------------------------------------


def flip_bytes(path: Path, count: int = 200) -> None:
    """Damage a file as a bad disk would: `count` bytes inverted in its middle, its size unchanged."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_checkpoint_holds_a_verified_checksum_and_keeps_the_previous_one(finished):
    latest, previous = finished / checkpoint.CHECKPOINT, finished / checkpoint.PREVIOUS
    assert latest.read_bytes().startswith(checkpoint.MAGIC)
    assert checkpoint.verify(latest) and checkpoint.verify(previous)
    assert restored_step(finished) == 200


def test_damaged_checkpoint_falls_back_to_the_previous_one_everywhere(finished, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    flip_bytes(run_dir / checkpoint.CHECKPOINT)
    assert not checkpoint.verify(run_dir / checkpoint.CHECKPOINT)
    assert restored_step(run_dir) == 100
    assert "checksum does not match" in capsys.readouterr().err
    # `lps eval` says which checkpoint it used.
    monkeypatch.chdir(tmp_path)
    assert cli.main(["eval", str(run_dir), "--episodes", "20"]) == 0
    assert "using the previous checkpoint checkpoint.prev.msgpack (step 100)" in capsys.readouterr().err
    # Resume continues from step 100; the rows after it belong to the damaged checkpoint and are dropped.
    train("lps", toy_config(run_dir, steps=200), TINY, resume=True)
    assert steps_logged(run_dir) == [100, 200] and restored_step(run_dir) == 200
    assert checkpoint.verify(run_dir / checkpoint.CHECKPOINT)


def test_both_checkpoints_damaged_is_an_error_not_numbers(finished, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    flip_bytes(run_dir / checkpoint.CHECKPOINT)
    flip_bytes(run_dir / checkpoint.PREVIOUS)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["eval", str(run_dir), "--episodes", "20"]) == 1
    captured = capsys.readouterr()
    assert "is damaged" in captured.err and "previous one is unusable too" in captured.err
    assert "success" not in captured.out


def test_a_damaged_latest_checkpoint_never_replaces_a_good_previous_one(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path / "run")
    good_previous = (run_dir / checkpoint.PREVIOUS).read_bytes()
    flip_bytes(run_dir / checkpoint.CHECKPOINT)
    agent = lps.agents.make_agent("lps", TINY, C.load_config(run_dir)[3])
    state = checkpoint.restore(run_dir, U.create_state(agent, U.make_optimizer(toy_config(run_dir)), 0))
    checkpoint.save(run_dir, state)
    assert (run_dir / checkpoint.PREVIOUS).read_bytes() == good_previous


# --- 5. metrics.jsonl --------------------------------------------------------------------------------


def test_torn_last_metrics_line_is_dropped_on_resume(finished, tmp_path, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    with open(run_dir / METRICS_JSONL, "a") as f:
        f.write('{"step": 300, "loss/crit')  # the disk filled up mid-append
    train("lps", toy_config(run_dir, steps=300), TINY, resume=True)
    assert "dropped its unfinished last line 3" in capsys.readouterr().out
    assert steps_logged(run_dir) == [100, 200, 300]


def test_damaged_metrics_line_names_file_and_line(tmp_path):
    path = tmp_path / METRICS_JSONL
    path.write_text('{"step": 100}\nGARBAGE\n{"step": 200}\n')
    with pytest.raises(ValueError, match=f"{path} is damaged at line 2"):
        RunLog(tmp_path, resume_step=200)
    path.write_text('{"step": 100}\n{"no_step": 1}\n')
    with pytest.raises(ValueError, match=f"{path} is damaged at line 2"):
        RunLog(tmp_path, resume_step=200)


# --- 6. lps data generate checks its output first ----------------------------------------------------


@pytest.fixture
def no_collection(monkeypatch):
    """Fail the test if generation starts collecting episodes (the checks must come first)."""

    def collect(*args, **kwargs):
        raise AssertionError("episodes were collected before the output folder was checked")

    monkeypatch.setattr(gen, "_run_task", collect)


def test_generate_refuses_existing_files_before_collecting(tmp_path, no_collection, monkeypatch, capsys):
    train_path, _ = gen.dataset_paths("cube-single", tmp_path)
    train_path.write_bytes(b"old data")
    with pytest.raises(FileExistsError, match="already exist.*--overwrite"):
        gen.generate("cube-single", tmp_path, episodes=2, workers=1, progress=False)
    assert train_path.read_bytes() == b"old data"
    assert cli.main(["data", "generate", "cube-single", "--data-dir", str(tmp_path), "--episodes", "2"]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_generate_refuses_without_free_space_or_write_access(tmp_path, no_collection, monkeypatch, capsys):
    import tempfile

    usage = shutil.disk_usage(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10_000_000))
        with pytest.raises(ValueError, match="10 MB free but the data needs about 352 MB"):
            gen.generate("cube-single", tmp_path, episodes=1000, workers=1, progress=False)
        assert cli.main(["data", "generate", "cube-single", "--data-dir", str(tmp_path), "--episodes", "1000"]) == 1
    err = capsys.readouterr().err  # the request does not fit: no talk of a full disk or of resuming
    assert "352 MB; free some space" in err and "the disk is full" not in err

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")  # what a read-only folder gives a non-root user

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(PermissionError, match=f"cannot write to {tmp_path}"):
        gen.generate("cube-single", tmp_path, episodes=2, workers=1, progress=False)


def test_generate_refuses_a_data_dir_that_is_a_file(tmp_path, no_collection):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        gen.generate("cube-single", tmp_path / "file", episodes=2, workers=1, progress=False)


# --- 7. lps eval on a run trained without evaluation --------------------------------------------------


def test_eval_of_a_run_trained_without_evaluation_uses_50_episodes(finished, tmp_path, monkeypatch, capsys):
    assert config_of(finished)["train"]["eval"]["episodes"] == 0
    monkeypatch.chdir(tmp_path)
    assert cli.main(["eval", str(finished)]) == 0
    out = capsys.readouterr().out
    assert "trained with --eval-episodes 0: evaluating 50 episodes" in out
    assert "nan" not in out.split("choose with --episodes)")[-1].lower()


# --- 9, 10. a run that died early; leftovers of a kill ------------------------------------------------


def die_before_first_checkpoint(run_dir: Path, monkeypatch) -> None:
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(T, "make_multi_update", killed)
        with pytest.raises(KeyboardInterrupt):
            train("lps", toy_config(run_dir), TINY)
    assert (run_dir / C.CONFIG_JSON).exists() and not checkpoint.exists(run_dir)


@pytest.mark.parametrize("resume", [False, True])
def test_run_that_died_before_its_first_checkpoint_restarts(tmp_path, monkeypatch, capsys, resume):
    run_dir = tmp_path / "run"
    die_before_first_checkpoint(run_dir, monkeypatch)
    train("lps", toy_config(run_dir, steps=100), TINY, resume=resume)
    assert "before its first checkpoint" in capsys.readouterr().out
    assert steps_logged(run_dir) == [100] and restored_step(run_dir) == 100


def test_leftover_temp_files_are_removed_at_the_next_start(finished, tmp_path, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    leftovers = [run_dir / ".checkpoint.msgpack.k3j2h1.tmp", run_dir / ".metrics.csv.abc.tmp"]
    for p in leftovers:
        p.write_bytes(b"half")
    train("lps", toy_config(run_dir), TINY, resume=True)  # already at --steps: nothing to train
    assert not any(p.exists() for p in leftovers)
    assert "removed 2 unfinished temporary file(s)" in capsys.readouterr().out


# --- SIGINT / SIGTERM ---------------------------------------------------------------------------------


def test_signal_stops_between_dispatches_with_a_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGINT)
    real_log = RunLog.log

    def log_then_signal(self, step, metrics):
        real_log(self, step, metrics)
        if step == 100 and "steps_per_sec" in metrics:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first dispatch's row is written

    monkeypatch.setattr(RunLog, "log", log_then_signal)
    message = f"stopped by SIGINT at step 100; checkpoint written.*--resume {run_dir}"
    with pytest.raises(rundir.TrainingInterrupted, match=message) as info:
        train("lps", toy_config(run_dir, steps=1000, save_every=500), TINY)
    assert info.value.exit_code == 130
    assert restored_step(run_dir) == 100 and steps_logged(run_dir) == [100]
    assert not (run_dir / R.SUMMARY_JSON).exists()
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored


def test_signal_before_training_begins_stops_at_once(tmp_path, monkeypatch):
    def load_data_interrupted(plan, cfg, run_dirs=()):  # Ctrl-C while data is loaded (or generated, which can take hours)
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("loading went on after Ctrl-C")

    monkeypatch.setattr(S, "load_data", load_data_interrupted)
    # Ctrl-C as in a terminal (a suite started in the background, `cmd &`, inherits it ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            train("lps", toy_config(tmp_path / "run"), TINY)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_ends_the_cli_with_one_line_and_exit_143(tmp_path):
    run_dir = tmp_path / "run"
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=python_path)
    flags = [*TINY_FLAGS, "--steps", "10000000", "--save-every", "0", "--log-every", "10", "--run-dir", str(run_dir)]
    proc = subprocess.Popen([sys.executable, "-m", "lps.cli", "train", *flags], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not ((run_dir / METRICS_JSONL).exists() and (run_dir / METRICS_JSONL).read_text()):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("lps train")]
    assert "stopped by SIGTERM" in line and "--resume" in line
    assert restored_step(run_dir) == steps_logged(run_dir)[-1] > 0


# --- OS errors as one line ------------------------------------------------------------------------------


def test_run_dir_that_is_a_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *TINY_FLAGS, "--run-dir", str(tmp_path / "afile")]) == 1
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and len(err.strip().splitlines()) == 1


def test_run_dir_name_too_long(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *TINY_FLAGS, "--run-dir", str(tmp_path / ("x" * 300))]) == 1
    err = capsys.readouterr().err
    assert "File name too long" in err and "shorter path" in err and len(err.strip().splitlines()) == 1


def test_read_only_run_dir(finished, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    real_open = open

    def read_only(path, mode="r", *args, **kwargs):  # tests run as root, where chmod does not bite
        if str(path).startswith(str(run_dir)) and any(c in mode for c in "wa+"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--resume", str(run_dir), "--steps", "300"]) == 1
    err = capsys.readouterr().err
    assert "Permission denied" in err and "choose a folder you can write to" in err
    assert len(err.strip().splitlines()) == 1


def test_disk_full_is_one_line_and_keeps_the_checkpoint(finished, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    before = (run_dir / checkpoint.CHECKPOINT).read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--resume", str(run_dir), "--steps", "300", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "disk is full" in err and len(err.strip().splitlines()) == 1
    assert (run_dir / checkpoint.CHECKPOINT).read_bytes() == before
    assert not list(run_dir.glob(".*.tmp"))


def test_disk_full_while_saving_keeps_the_last_checkpoint_as_the_latest(finished, tmp_path, monkeypatch):
    run_dir = copy_run(finished, tmp_path / "run")
    latest = (run_dir / checkpoint.CHECKPOINT).read_bytes()
    template = U.create_state(lps.agents.make_agent("lps", TINY, C.load_config(run_dir)[3]),
                              U.make_optimizer(toy_config(run_dir)), 0)  # fmt: skip

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(run_dir, template)
    assert (run_dir / checkpoint.CHECKPOINT).read_bytes() == latest
    assert not list(run_dir.glob(".*.tmp"))


def test_prepare_out_pointing_at_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["data", "prepare", "cube-single-play-singletask-task1-v0", "--out", str(tmp_path)]) == 1
    assert "is a folder; give a file name" in capsys.readouterr().err


# --- load_policy(run)(obs) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obs, message",
    [
        (np.zeros(3, np.float32), r"shape \(3,\)"),
        (np.zeros((4, 2), np.float32), r"shape \(4, 2\)"),
        (np.zeros((0, 1), np.float32), "empty"),
        (np.zeros((2, 3, 1), np.float32), r"shape \(2, 3, 1\)"),
        (np.array([np.nan], np.float32), "NaN or inf"),
        (np.array([[0.0], [np.inf]], np.float32), "NaN or inf"),
        (np.array(["a"]), "not an array of real numbers"),
    ],
)
def test_policy_refuses_malformed_observations(finished, obs, message):
    policy = lps.load_policy(finished)
    with pytest.raises(ValueError, match=message) as info:
        policy(obs)
    if "NaN" not in message:
        assert info.match(r"shape \(1,\) or a batch of shape \(B, 1\)")


def test_policy_accepts_one_observation_and_a_batch(finished):
    policy = lps.load_policy(finished)
    assert policy(np.zeros(1)).shape == (1, 2) and policy([[0.0], [0.5]]).shape == (2, 1, 2)


# --- values with no meaning ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(alpha=-1.0), "--alpha must be >= 0"),
        (dict(tau=0.0), r"--tau must be in \(0, 1\]"),
        (dict(tau=1.5), r"--tau must be in \(0, 1\]"),
        (dict(alpha=float("nan")), "--alpha must be >= 0"),
    ],
)
def test_meaningless_agent_values(fields, message):
    with pytest.raises(ValueError, match=message):
        check_agent_config(dataclasses.replace(TINY, **fields))


@pytest.mark.parametrize("fields", [dict(seed=-1), dict(seeds=(0, -2)), dict(data_seed=-5)])
def test_negative_seeds(fields):
    with pytest.raises(ValueError, match="must be >= 0"):
        TrainConfig(**fields)


def test_cli_negative_alpha_and_seed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *TINY_FLAGS, "--alpha", "-1"]) == 1
    assert "--alpha must be >= 0" in capsys.readouterr().err
    # tyro builds TrainConfig while parsing: a usage error (exit 2), as for other impossible values.
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *TINY_FLAGS, "--seed", "-1"])
    assert info.value.code == 2 and "--seed must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_complex_actions_are_refused():
    n = 10
    data = {
        "observations": np.zeros((n, 2), np.float32),
        "actions": np.zeros((n, 1), np.complex64) + 0.5j,
        "terminals": np.arange(n) == n - 1,
        "rewards": np.zeros(n, np.float32),
        "masks": np.ones(n, np.float32),
    }
    with pytest.raises(DatasetError, match="'actions' holds complex numbers"):
        validate(data, 1)


def test_nan_in_ogbench_qpos_is_refused(tmp_path):
    n = 20
    qpos = np.zeros((n, 14), np.float32)
    qpos[7, 3] = np.nan
    np.savez(tmp_path / "cube-single-play-v0.npz", observations=np.zeros((n, 3), np.float32),
             actions=np.zeros((n, 2), np.float32), terminals=np.arange(n) == n - 1, qpos=qpos)  # fmt: skip
    task = tasks.parse_task("cube-single-play-singletask-task1-v0")
    with pytest.raises(DatasetError, match="'qpos' holds 1 NaN/inf value\\(s\\), first at row 7"):
        tasks.load_task(task, tmp_path, chunk_len=1)


# --- paths -------------------------------------------------------------------------------------------------


def test_home_and_relative_paths(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    cfg = TrainConfig(run_dir="~/run", dataset="~/d.npz", data_dir="~/data")
    assert (cfg.run_dir, cfg.dataset, cfg.data_dir) == (str(home / "run"), str(home / "d.npz"), str(home / "data"))
    monkeypatch.chdir(home)
    assert TrainConfig(dataset="d.npz").dataset == str(home / "d.npz")


def test_relative_dataset_resumes_from_another_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    rng = np.random.default_rng(0)
    n = 100
    np.savez(work / "mine.npz", observations=rng.standard_normal((n, 1)).astype(np.float32),
             actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32), terminals=np.arange(n) % 10 == 9,
             rewards=rng.standard_normal(n).astype(np.float32))  # fmt: skip
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path))
    train("lps", toy_config("~/run", dataset="mine.npz", steps=100, batch_size=16), TINY)
    assert config_of(tmp_path / "run")["train"]["dataset"] == str(work / "mine.npz")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--resume", "~/run", "--steps", "200"]) == 0  # the dataset is found from here
    assert steps_logged(tmp_path / "run") == [100, 200]
    assert lps.load_policy("~/run")(np.zeros(1)).shape == (1, 2)


# --- groups and reports -------------------------------------------------------------------------------------


def test_group_resume_names_a_seed_without_config(finished, tmp_path, monkeypatch, capsys):
    group = tmp_path / "group"
    for seed in (0, 1):  # seeds 0 and 1 trained together (as `--seeds 0 1` lays them out)
        seed_dir = copy_run(finished, group / f"seed{seed}")
        record = config_of(seed_dir)
        record["train"].update(seed=seed, run_dir=str(seed_dir))
        (seed_dir / C.CONFIG_JSON).write_text(json.dumps(record))
        (seed_dir / "summary.json").unlink()  # killed after its last checkpoint: a resume has work left
    (group / "seed2").mkdir()  # a seed that died before writing its config
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--resume", str(group)]) == 0
    out = capsys.readouterr().out
    assert f"{group / 'seed2'} has no config.json" in out and "not resumed" in out
    assert f"resuming {group / 'seed0'}, {group / 'seed1'} from step 200" in out


def test_report_says_which_folders_it_skipped(tmp_path, capsys):
    from lps.experiments.report import collect

    (tmp_path / "no-config").mkdir()
    (tmp_path / "no-config" / METRICS_JSONL).write_text('{"step": 1}\n')
    (tmp_path / "no-metrics").mkdir()
    (tmp_path / "no-metrics" / C.CONFIG_JSON).write_text(json.dumps({"agent": "lps", "train": {}}))
    assert collect(tmp_path) == []
    err = capsys.readouterr().err
    assert f"skipping {tmp_path / 'no-config'}: it holds metrics.jsonl but no config.json" in err
    assert f"skipping {tmp_path / 'no-metrics'}: no metrics.jsonl" in err
    # A run's own subfolder (the online phase's checkpoint) is part of that run, not a skipped one.
    (tmp_path / "no-metrics" / "online").mkdir()
    (tmp_path / "no-metrics" / "online" / "checkpoint.msgpack").write_bytes(b"x")
    collect(tmp_path)
    assert "online" not in capsys.readouterr().err


def test_a_finished_online_run_is_not_told_to_pass_a_larger_online_steps(tmp_path, capsys):
    """Issue 32 item 13: a finished run with an online phase was told to pass a larger
    --online-steps, which resuming then refused; both messages now say what can be done."""
    run = tmp_path / "run"
    assert cli.main(["train", "--preset", "toy", "--steps", "20", "--online-steps", "20", "--run-dir", str(run),
                     "--no-progress", "--eval-episodes", "8"]) == 0  # fmt: skip
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and "cannot be extended" in out and "larger --online-steps" not in out
    assert cli.main(["train", "--resume", str(run), "--online-steps", "40", "--no-progress"]) == 1
    assert "the run has finished, so train further in a new --run-dir" in capsys.readouterr().err
