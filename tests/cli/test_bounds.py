"""Bounds on counts and seeds, refused up front with one clear message: the training config's step
counts (int32 step counters), seeds (unsigned 32-bit), and `lps eval`'s episodes and seed.

Nothing here trains or evaluates: every case fails while the arguments are checked. Where today's
code would accept a value, the command is also given a missing dataset or run, so it fails at
once there instead of starting work.
"""

from __future__ import annotations

import re

import pytest

from lps import cli
from lps.cli import args as cli_args
from lps.training.config import MAX_SEED, MAX_STEPS, TrainConfig, with_flags
from lps.training.evaluate import MAX_EVAL_EPISODES

BIG = 2**31  # one above MAX_STEPS


def one_line(text: str) -> str:
    """tyro's error box, as one line: frame characters dropped and wrapped lines joined."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


def test_limits():
    assert MAX_STEPS == 2**31 - 1 and MAX_SEED == 2**32 - 1 == cli_args.MAX_SEED and MAX_EVAL_EPISODES == 100_000


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(steps=BIG), f"--steps {BIG} is above {MAX_STEPS}"),
        (dict(steps=10**20, lr_schedule="cosine"), f"--steps {10**20} is above {MAX_STEPS}"),
        (dict(online_steps=BIG), f"--online-steps {BIG} is above {MAX_STEPS}"),
        (dict(online_start_steps=BIG), f"--online-start-steps {BIG} is above {MAX_STEPS}"),
        (dict(eval_every=BIG), f"--eval-every {BIG} is above {MAX_STEPS}"),
        (dict(save_every=BIG), f"--save-every {BIG} is above {MAX_STEPS}"),
        (dict(log_every=BIG), f"--log-every {BIG} is above {MAX_STEPS}"),
        (dict(episodes=BIG), f"--episodes {BIG} is above {MAX_STEPS}"),
        (dict(batch_size=BIG), f"--batch-size {BIG} is above {MAX_STEPS}"),
        (dict(eval_episodes=MAX_EVAL_EPISODES + 1), f"--eval-episodes {MAX_EVAL_EPISODES + 1} is above"),
        (dict(steps=1e20), r"--steps must be a whole number, got 1e\+20"),
        (dict(steps=1000.0), r"--steps must be a whole number, got 1000.0"),
        (dict(eval_episodes=True), "--eval-episodes must be a whole number"),
        (dict(steps=2**30, online_steps=2**21, utd=512), r"--steps 1073741824 \+ --online-steps 2097152 x --utd 512"),
        (dict(seed=MAX_SEED + 1), f"--seed {MAX_SEED + 1} is above {MAX_SEED}"),
        (dict(seeds=(0, MAX_SEED + 1)), f"--seeds .* is above {MAX_SEED}"),
        (dict(data_seed=2**40), f"--data-seed {2**40} is above {MAX_SEED}"),
        (dict(eval_chunk_timeout=0), "--eval-chunk-timeout must be a positive number of seconds, got 0"),
        (dict(eval_chunk_timeout=float("inf")), "--eval-chunk-timeout must be a positive number of seconds"),
    ],
)
def test_train_config_bounds(fields, message):
    with pytest.raises(ValueError, match=message):
        with_flags(TrainConfig(), **fields)


def test_train_config_limits_themselves_are_accepted():
    with_flags(TrainConfig(), steps=MAX_STEPS, log_every=1, eval_every=0, save_every=0, seed=MAX_SEED,
                eval_episodes=MAX_EVAL_EPISODES)  # fmt: skip


def test_cli_train_huge_steps_is_one_message(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    missing = str(tmp_path / "missing.npz")  # accepted today: fails on the missing file (exit 1), not at parsing
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--preset", "toy", "--steps", str(10**20), "--lr-schedule", "cosine", "--dataset", missing])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert f"--steps {10**20} is above {MAX_STEPS}" in one_line(err) and "Traceback" not in err
    with pytest.raises(SystemExit) as info:  # a float is no step count
        cli.main(["train", "--preset", "toy", "--steps", "1e20", "--dataset", missing])
    assert info.value.code == 2 and "--steps" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_train_seed_above_32_bits(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--preset", "toy", "--seed", str(2**32), "--dataset", str(tmp_path / "missing.npz")])
    err = one_line(capsys.readouterr().err)
    assert info.value.code == 2 and f"--seed {2**32} is above {MAX_SEED}" in err


@pytest.mark.parametrize("seed", ["-1", str(2**32), "x"])
def test_cli_eval_refuses_bad_seed(tmp_path, capsys, seed):
    with pytest.raises(SystemExit) as info:  # before the run is read: it does not exist
        cli.main(["eval", str(tmp_path / "no-run"), "--seed", seed])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "lps eval: error: argument --seed: must be" in err and "Traceback" not in err
    assert f"from 0 to {MAX_SEED}" in err


def test_cli_eval_refuses_too_many_episodes(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["eval", str(tmp_path / "no-run"), "--episodes", "100000000"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert f"lps eval: error: --episodes 100000000 is above {MAX_EVAL_EPISODES}" in err


@pytest.mark.parametrize("seconds", ["0", "-1", "nan"])
def test_cli_eval_refuses_a_chunk_timeout_that_is_not_positive(tmp_path, capsys, seconds):
    with pytest.raises(SystemExit) as info:
        cli.main(["eval", str(tmp_path / "no-run"), "--chunk-timeout", seconds])
    assert info.value.code == 2 and "--chunk-timeout must be a positive number of seconds" in capsys.readouterr().err


def test_evaluate_run_checks_its_arguments_first(tmp_path):
    from lps.deploy.policy import evaluate_run

    missing = tmp_path / "no-run"  # the arguments are refused before the run is looked at
    with pytest.raises(ValueError, match=f"--episodes must be from 1 to {MAX_EVAL_EPISODES}.*got 100000000"):
        evaluate_run(missing, episodes=10**8)
    with pytest.raises(ValueError, match="--seed must be a whole number from 0 to 4294967295.*got -1"):
        evaluate_run(missing, seed=-1)
    with pytest.raises(ValueError, match="--workers must be >= 0"):
        evaluate_run(missing, workers=-2)


def test_other_seed_flags(tmp_path, capsys):
    for argv in (["data", "generate", "cube-single", "--seed", "-3", "--data-dir", str(tmp_path)],
                 ["report", str(tmp_path), "--seed", "-1"],
                 ["toy", "figure3", "--seed", "-1", "--task", "no-such-task"]):  # fmt: skip
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2 and "argument --seed: must be from 0 to" in capsys.readouterr().err, argv
    assert not list(tmp_path.iterdir())


def test_cli_generate_refuses_zero_workers(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["data", "generate", "cube-single", "--workers", "0", "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "lps data generate: error: --workers must be at least 1" in err
    assert not list(tmp_path.iterdir())


# --- issue 32 items 12 and 14: the last tracebacks and messages that named the wrong thing ------


def test_a_closed_pipe_ends_lps_quietly():
    import subprocess
    import sys

    out = subprocess.run(["bash", "-c", f"{sys.executable} -m lps.cli agents | head -1; exit ${{PIPESTATUS[0]}}"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and out.stdout.count("\n") == 1 and "Broken pipe" not in out.stderr, out


def test_report_on_a_file_says_it_is_a_file(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    assert cli.main(["report", str(tmp_path / "metrics.jsonl")]) == 1
    assert "is a file; lps report reads a folder of run directories" in capsys.readouterr().err


def test_serve_refuses_a_negative_log_interval(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", str(tmp_path), "--log-every", "-1"])
    assert e.value.code == 2 and "--log-every must be >= 0 seconds" in capsys.readouterr().err


def test_robot_sim_record_on_a_file_that_is_not_npz(tmp_path):
    from lps.deploy.robot_sim import Recorder

    (tmp_path / "notes.npz").write_text("not numpy")
    with pytest.raises(ValueError, match=r"notes.npz exists but is not an .npz file \(ValueError\); choose another"):
        Recorder(tmp_path / "notes.npz", 5)


def test_a_huge_finite_observation_is_refused_as_such_not_as_damaged_weights(tmp_path):
    """3e38 is a finite float32: the actions overflow, the weights are fine; the message says so."""
    import numpy as np

    import lps
    from lps.agents import LPSConfig
    from lps.training.loop import train
    from tests import helpers

    cfg = helpers.toy_config(tmp_path / "run", steps=2, log_every=2, save_every=2)
    train("lps", cfg, LPSConfig(base_hidden=(8,), critic_hidden=(8,), actor_hidden=(8,)))
    policy = lps.load_policy(tmp_path / "run")
    good = policy(np.zeros(policy.spec.obs_dim, np.float32))
    act = policy._act  # where such an input overflows depends on the weights: make this call overflow
    policy._act = lambda params, obs, key: act(params, obs, key) * np.inf
    with pytest.raises(ValueError, match="overflow for this observation .* largest \\|value\\| is 3e\\+38"):
        policy(np.full(policy.spec.obs_dim, 3e38, np.float32))
    policy._act = act
    np.testing.assert_array_equal(policy(np.zeros(policy.spec.obs_dim, np.float32)).shape, good.shape)
