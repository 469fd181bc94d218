"""The simulated robot's scripted operator and recorder on a real OGBench task (no server)."""

from __future__ import annotations

import numpy as np
import pytest

from lps.cli.robot import robot_sim_command
from lps.data.validate import load_own_dataset
from lps.deploy import robot_sim

TASK = "cube-single-play-singletask-task1-v0"


def test_scripted_operator_solves_cube_single_and_records_a_dataset(tmp_path, monkeypatch):
    pytest.importorskip("ogbench")
    monkeypatch.setenv("MUJOCO_GL", "disable")
    env = robot_sim.make_env(TASK)
    try:
        recorder = robot_sim.Recorder(tmp_path / "demos.npz", 5, log=lambda s: None)
        results = robot_sim.play_episodes(None, env, 2, seed=0, max_steps=150, log=lambda s: None,
                                          operator=robot_sim.CubeOperator(env), recorder=recorder)  # fmt: skip
    finally:
        env.close()
    assert [r["success"] for r in results] == [True, True]  # the oracle solves task 1 in ~40 steps
    data = load_own_dataset(tmp_path / "demos.npz", chunk_len=5)  # what `lps train --dataset` reads
    assert len(data["actions"]) == sum(r["steps"] for r in results)
    assert int(np.sum(data["terminals"])) == 2
    recorded = np.load(tmp_path / "demos.npz")
    assert recorded["interventions"].all() and recorded["success"].all()
    # Appending: a second recorder on the same file keeps the first two episodes.
    again = robot_sim.Recorder(tmp_path / "demos.npz", 5, log=lambda s: None)
    assert again.episodes == 2


def test_robot_sim_refuses_unclear_commands(tmp_path, capsys):
    for argv, message in (
        (["--env", TASK], "--scripted"),
        (["ws://127.0.0.1:1", "--env", TASK, "--scripted", "--record", str(tmp_path / "x.npz")], "--scripted"),
        (["--env", TASK, "--scripted"], "--record"),
        (["ws://127.0.0.1:1", "--env", TASK, "--intervene-prob", "1.5"], "[0, 1]"),
    ):
        with pytest.raises(SystemExit):
            robot_sim_command(argv)
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match=".npz"):
        robot_sim.Recorder(tmp_path / "demos.h5", 5)
