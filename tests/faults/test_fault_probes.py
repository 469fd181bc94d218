"""Faults a new user's probes found (issue 20), each refused with a message that names what is wrong.

Policies here are built from freshly initialised parameters (no training): what is checked is the
path from an observation to an action, not what was learned.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lps import client as C
from lps.agents import LPSConfig, Spec
from lps.agents.encoded import build_agent
from lps.data.validate import DatasetError, validate
from lps.deploy.policy import NonFiniteActionError, Policy
from lps.deploy.serve import PolicyServer
from lps.training.config import TrainConfig, with_flags

SMALL = LPSConfig(base_hidden=(16,), critic_hidden=(16,), actor_hidden=(8,))
ROBOT_SPEC = Spec(obs_dim=3, action_dim=2, chunk_len=2, image_shape=(8, 8, 3))


def make_policy(spec: Spec, **encoder) -> Policy:
    agent = build_agent("lps", SMALL, spec, **encoder)
    return Policy(agent, jax.jit(agent.init)(jax.random.PRNGKey(0)), device="cpu")


@pytest.fixture(scope="module")
def vector_policy():
    return make_policy(Spec(obs_dim=4, action_dim=2, chunk_len=3))


class ShapeOnly(Policy):
    """A Policy's observation checks without an agent: every refusal here comes before acting."""

    def __init__(self, spec: Spec):
        self.spec, self.robot, self.normalization, self.max_batch = spec, None, None, None


@pytest.fixture(scope="module")
def robot_policy():
    return ShapeOnly(ROBOT_SPEC)


def robot_obs(batch: int | None = None, images: int | None = None) -> dict:
    state = np.zeros((3,) if batch is None else (batch, 3), np.float32)
    image_rows = () if batch is None else (batch if images is None else images,)
    return {"state": state, "image": np.zeros((*image_rows, 8, 8, 3), np.uint8)}


# --- 1. no entry point takes a non-finite observation or gives a non-finite action -----------


def test_robot_policy_refuses_nan_state(robot_policy):
    for obs in (robot_obs(), robot_obs(batch=2)):
        obs["state"][..., 1] = np.nan
        with pytest.raises(ValueError, match="'state' holds NaN or inf"):
            robot_policy(obs)
    float_image = {**robot_obs(), "image": np.full((8, 8, 3), np.nan, np.float32)}
    with pytest.raises(ValueError, match="uint8"):
        robot_policy(float_image)


def test_image_only_policy_refuses_float_pixels():
    pixels = ShapeOnly(Spec(obs_dim=0, action_dim=2, chunk_len=2, image_shape=(8, 8, 3)))
    with pytest.raises(ValueError, match="uint8 pixels, got float32"):
        pixels(np.full((8, 8, 3), np.nan, np.float32))


def test_nan_weights_never_become_an_action(vector_policy):
    broken = Policy(vector_policy.agent, jax.tree_util.tree_map(lambda x: x * np.nan, vector_policy.params), device="cpu")
    with pytest.raises(NonFiniteActionError, match="no action is returned"):
        broken(np.zeros(4, np.float32))
    srv = PolicyServer(broken, log_every_s=0.0, log=lambda s: None)
    reply = C.unpack(srv.respond(C.pack({"obs": np.zeros(4, np.float32)}), 1)[0])
    assert "action" not in reply and "NaN/inf actions" in reply["error"]


# --- 2. a robot batch whose state and image batch sizes differ ---------------------------------


def test_robot_batch_with_different_leading_axes(robot_policy):
    with pytest.raises(ValueError, match=r"2 states \(leading axis of 'state'\) but 3 images"):
        robot_policy(robot_obs(batch=2, images=3))
    batch, single = robot_policy._batch(robot_obs(batch=2))
    assert batch["state"].shape == (2, 3) and batch["image"].shape == (2, 8, 8, 3) and not single


# --- 3. one client cannot make the server compile without bound --------------------------------


def test_batches_are_padded_to_powers_of_two(vector_policy):
    obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    key = jax.random.PRNGKey(3)
    before = vector_policy._act._cache_size()
    chunks = {n: vector_policy(obs[:n], key=key) for n in (5, 6, 7, 8)}
    assert vector_policy._act._cache_size() - before <= 1  # one program, for 8
    assert all(chunk.shape == (n, 3, 2) for n, chunk in chunks.items())
    np.testing.assert_allclose(chunks[5], chunks[7][:5], rtol=1e-6)  # padding rows change nothing


def test_server_refuses_batches_above_max_batch_and_compiles_outside_the_policy_lock(vector_policy):
    class Watched:  # the policy, noting whether the policy lock is held at each call
        def __init__(self):
            self.spec, self.calls = vector_policy.spec, []

        def __call__(self, obs, key=None):
            self.calls.append((len(obs), srv._policy_lock.locked()))
            return vector_policy(obs, key=key)

    srv = PolicyServer(Watched(), log_every_s=0.0, log=lambda s: None, max_batch=8)
    reply = C.unpack(srv.respond(C.pack({"obs": np.zeros((9, 4), np.float32)}), 1)[0])
    assert "larger than this server's --max-batch 8" in reply["error"]
    for size in (3, 4, 3):
        reply = C.unpack(srv.respond(C.pack({"obs": np.zeros((size, 4), np.float32)}), 1)[0])
        assert reply["action"].shape == (size, 3, 2)
    # The bucket of 4 is compiled once, first, without the lock every client waits on.
    assert srv.policy.calls == [(4, False), (3, True), (4, True), (3, True)]
    assert srv._compiled_buckets == {1, 4}


# --- 4. robot_data in the spec only for robot-data runs ---------------------------------------


def test_spec_reports_robot_data_only_for_dict_observations(vector_policy):
    from lps.deploy.policy import robot_settings
    from lps.training.config import TrainConfig

    cfg = TrainConfig(env="toy-bandit")
    assert robot_settings(cfg, vector_policy.spec) is None
    assert robot_settings(cfg, Spec(obs_dim=0, action_dim=2, image_shape=(8, 8, 3))) is None  # pixels
    assert robot_settings(cfg, ROBOT_SPEC) == cfg.robot
    spec = C.unpack(PolicyServer(vector_policy, log_every_s=0.0, log=lambda s: None).respond(C.pack({"type": "spec"}), 1)[0])
    assert "robot_data" not in spec


# --- 6. datasets: zero widths, terminals that are not 0/1, float32 overflow -------------------


def rows(n=12, obs_dim=3, action_dim=2) -> dict:
    terminals = np.zeros(n, np.float32)
    terminals[5::6] = 1
    return {"observations": np.zeros((n, obs_dim), np.float32), "actions": np.zeros((n, action_dim), np.float32),
            "terminals": terminals, "rewards": np.zeros(n, np.float32), "masks": np.ones(n, np.float32)}  # fmt: skip


@pytest.mark.parametrize("key, change, message", [
    ("observations", lambda d: np.zeros((12, 0)), r"'observations' has width 0"),
    ("actions", lambda d: np.zeros((12, 0)), r"'actions' has width 0"),
    ("terminals", lambda d: np.where(np.arange(12) == 2, 2.0, d["terminals"]), r"'terminals' must be 0 or 1 .* row 2"),
    ("terminals", lambda d: np.where(np.arange(12) == 4, np.nan, d["terminals"]), r"'terminals' must be 0 or 1 .* row 4"),
    ("rewards", lambda d: np.where(np.arange(12) == 7, 1e300, 0.0), r"'rewards' .* beyond float32's range.* row 7"),
    ("observations", lambda d: np.where(np.arange(36).reshape(12, 3) == 30, -1e39, 0.0),
     r"'observations' .* beyond float32's range.* row 10"),
])  # fmt: skip
def test_dataset_values_name_key_row_and_rule(key, change, message):
    data = rows()
    data[key] = change(data)
    with pytest.raises(DatasetError, match=message):
        validate(data, chunk_len=2)


def test_image_only_datasets_still_have_an_empty_state():
    data = {**rows(), "observations": np.zeros((12, 8, 8, 3), np.uint8)}
    assert validate(data, chunk_len=2)["observations"].shape == (12, 8, 8, 3)


# --- 5. data that is not the evaluation env's, refused before training ------------------------


def test_evaluation_env_of_another_width_is_refused_naming_both_sizes():
    from lps.data.toy import ToyEvaluator
    from lps.training.setup import check_fits_env

    closed = []
    evaluator = ToyEvaluator("toy-bandit")
    evaluator.close = lambda: closed.append(1)
    with pytest.raises(ValueError, match=r"toy-bandit observations have 1 dims but .* have 4.*--eval-episodes 0"):
        check_fits_env(evaluator, Spec(obs_dim=4, action_dim=2), "toy-bandit", "or --eval-episodes 0")
    assert closed == [1]
    check_fits_env(evaluator, Spec(obs_dim=1, action_dim=2), "toy-bandit", "")  # the toy's own width


def test_training_on_data_of_another_width_is_refused_before_any_step(tmp_path):
    import helpers

    from lps.training.loop import train

    data = rows(n=60, obs_dim=4)
    np.savez(tmp_path / "four.npz", **data)
    cfg = helpers.toy_config(tmp_path / "run", dataset=str(tmp_path / "four.npz"), eval_episodes=10, batch_size=8)
    with pytest.raises(ValueError, match=r"toy-bandit observations have 1 dims but .* have 4: .*--eval-episodes 0"):
        train("lps", cfg, SMALL)
    assert not (tmp_path / "run" / "checkpoint.msgpack").exists()


# --- 7. online settings bounded, and a signal acts within a dispatch ----------------------------


def test_online_utd_and_envs_are_bounded():
    from lps.training.config import TrainConfig

    with pytest.raises(ValueError, match=r"--utd 100000000 is above 1000"):
        with_flags(TrainConfig(), utd=10**8)
    with pytest.raises(ValueError, match=r"--online-envs 100000 is above 256: each environment"):
        with_flags(TrainConfig(), online_envs=100_000)


def test_online_dispatches_are_at_most_log_every_updates():
    from lps.training.online import dispatch_unit

    assert dispatch_unit(20, 1000) == 20 and dispatch_unit(4000, 100) == 100 and dispatch_unit(4000, 300) == 250
    assert dispatch_unit(7, 5) == 1 and dispatch_unit(10**8 * 20, 1000) == 1000


def test_signal_in_a_wave_stops_after_the_running_dispatch(tmp_path, monkeypatch):
    import os
    import signal

    import helpers

    from lps.training import update as update_module
    from lps.training.loop import train
    from lps.training.rundir import TrainingInterrupted

    real, dispatches = update_module.make_multi_update, []

    def counted(update, n, scan=True):
        compiled = real(update, n, scan)

        def call(*args):
            dispatches.append(n)
            if len(dispatches) == 3:  # the 1st of the 2nd wave's 2 dispatches of 50 updates
                os.kill(os.getpid(), signal.SIGINT)
            return compiled(*args)

        return call

    monkeypatch.setattr(update_module, "make_multi_update", counted)  # the online phase's import
    cfg = helpers.toy_config(tmp_path / "run", steps=50, log_every=50, save_every=50, online_steps=40, online_envs=4,
                             utd=25, online_workers=0, batch_size=16)  # fmt: skip
    with pytest.raises(TrainingInterrupted, match=r"during a wave .* dropped .* env step 4 \(gradient step 150\)"):
        train("lps", cfg, SMALL)
    assert dispatches == [50] * 3  # nothing dispatched after the signal: not the rest of its wave


# --- 12, 16. resuming a finished run, a changed online flag, the final line of an online run ---


def fake_run(run_dir, summary: dict | None = None, online_checkpoint: bool = False, **cfg_fields):
    """A run directory as `rundir.prepare` sees it: config, a checkpoint file, maybe a summary."""
    import json

    from lps.agents import resolve_config
    from lps.training.config import save_config

    cfg = with_flags(TrainConfig(), env="toy-bandit", run_dir=str(run_dir), chunk_len=1, progress=False, **cfg_fields)
    run_dir.mkdir(parents=True)
    save_config(run_dir, "lps", cfg, resolve_config("lps", SMALL, cfg.env), Spec(obs_dim=1, action_dim=2, chunk_len=1))
    from lps.training import checkpoint

    checkpoint.save(run_dir, {"step": np.zeros((), np.int32)})  # intact (verified), never restored here
    if online_checkpoint:
        (run_dir / "online").mkdir()
        (run_dir / "online" / "checkpoint.msgpack").write_bytes(b"not read either")
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
        final = {"step": summary.get("gradient_steps", cfg.steps), "eval/success": 0.5}
        (run_dir / "metrics.jsonl").write_text(json.dumps(final) + "\n")
    return cfg


def test_resuming_a_finished_run_changes_nothing(tmp_path, capsys):

    from lps.training.loop import train

    summary = {"steps": 2000, "online_env_steps": 40, "gradient_steps": 2040, "wall_time_s": 12.5, "steps_per_sec": 300.0}
    cfg = fake_run(tmp_path / "run", summary, online_checkpoint=True, steps=2000, online_steps=40)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert train("lps", cfg, SMALL, resume=True) == summary
    assert "already finished (2000 steps, 40 online env steps): nothing to do" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file() and p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k != ".lock"}
    # A changed --online-envs is named first, before any checkpoint is read; the run has finished, so
    # "resume with --online-envs 4" would do nothing: a new run is the way on.
    with pytest.raises(ValueError, match=r"^\S+ online phase began with --online-envs 4, not 8: .* the run has finished, "
                                         r"so train further in a new --run-dir"):  # fmt: skip
        train("lps", with_flags(cfg, online_envs=8), SMALL, resume=True)


def test_final_line_of_an_online_run_counts_its_online_updates():
    from lps.training.loop import _summary_line

    s = {"agent": "lps", "env": "toy-bandit", "seed": 0, "steps": 100, "wall_time_s": 61, "steps_per_sec": 8.2,
         "final_success": None, "run_dir": "r", "online_env_steps": 40, "gradient_steps": 500}  # fmt: skip
    assert "500 gradient steps (100 offline, 400 online over 40 env steps) in 1m01s" in _summary_line(s)


# --- 8, 15. the command line: two presets, an unknown --env ------------------------------------


def test_two_presets_are_refused(capsys):
    from lps.cli import main

    assert main(["train", "--preset", "quick", "--preset=toy"]) == 1
    assert "--preset is given 2 times (quick, toy); give one" in capsys.readouterr().err


def test_unknown_env_leaves_no_folders_behind(tmp_path, monkeypatch):
    from lps.training.loop import train

    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(env="nosuch-env", data_dir=str(tmp_path / "data"), progress=False)
    with pytest.raises(ValueError, match="unknown task 'nosuch-env'"):
        train("lps", cfg, SMALL)
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs" / "mine").mkdir(parents=True)  # folders that were there stay
    with pytest.raises(ValueError, match="unknown task"):
        train("lps", cfg, SMALL)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["mine"]


# --- 9. an env pool that broke while idle: that evaluation is marked failed, the next gets a fresh pool


def test_overlapped_evaluation_after_a_failed_one_gets_a_fresh_pool():
    from lps.training.eval_schedule import EvaluationSchedule
    from lps.training.evaluate import EvaluationFailed

    pools = []

    class Pool:  # the first pool's worker died while idle: its evaluation fails at start-up
        def __init__(self):
            self.broken, self.closed = not pools, False
            pools.append(self)

        def run_seeds(self, policy, seeds, episodes, cancel=None):
            if self.broken:
                raise EvaluationFailed("evaluation failed at start-up: env worker 1 died (exit code -9) before reset")
            return [{"eval/success": 0.5}]

        def close(self):
            self.closed = True

    class Agent:
        spec = Spec(obs_dim=1, action_dim=1, chunk_len=1)

    class Log:
        rows = []

        def log(self, step, row):
            self.rows.append((step, row))

    log = Log()
    schedule = EvaluationSchedule(Pool(), Pool, Agent(), [0], 2, [log], overlap=True)
    schedule.submit(10, {})
    schedule.submit(20, {})  # the failure of step 10 is taken first, then a fresh pool evaluates
    schedule.finish()
    assert log.rows == [(10, {"eval/failed": 1.0}), (20, {"eval/success": 0.5})]
    assert len(pools) == 2 and pools[0].closed


# --- 11, 13. lps report beside unreadable runs ------------------------------------------------


def test_report_skips_unreadable_configs_beside_good_runs(tmp_path, capsys):
    import json

    from lps.experiments.report import collect

    def run(name: str, config: bytes) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_bytes(config)
        (tmp_path / name / "metrics.jsonl").write_text('{"step": 100, "eval/success": 0.5}\n[1, 2]\n')

    run("good", json.dumps({"agent": "lps", "train": {"env": "toy-bandit", "seed": 0}}).encode())
    run("binary", bytes(range(256)))
    run("garbage", b"{not json")
    run("list-train", json.dumps({"agent": "lps", "train": [1]}).encode())
    assert [r.run_dir.name for r in collect(tmp_path)] == ["good"]
    err = capsys.readouterr().err
    for name, why in (("binary", "UnicodeDecodeError"), ("garbage", "JSONDecodeError"), ("list-train", "TypeError")):
        assert f"skipping {tmp_path / name}: unreadable config.json or metrics.jsonl ({why}" in err


# --- 13. one line that names the file, instead of a traceback -----------------------------------


def test_sweep_files_that_cannot_be_read_are_named(tmp_path):
    from lps.cli.sweep import parse_args
    from lps.experiments.sweep import load_spec

    (tmp_path / "bad.yaml").write_text("agents: [lps\ntasks: x\n")
    with pytest.raises(ValueError, match=r"bad.yaml is not valid YAML: .*line"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "no-tasks.toml").write_text('agents = ["lps"]\n')
    with pytest.raises(ValueError, match=r"no-tasks.toml: the sweep names no tasks; add them"):
        load_spec(tmp_path / "no-tasks.toml")
    spec, _ = parse_args([str(tmp_path / "no-tasks.toml"), "--tasks", "toy-bandit"])  # a flag may add them
    assert spec.tasks == ["toy-bandit"] and spec.agents == ["lps"]
    (tmp_path / "list.yaml").write_text("- lps\n")
    with pytest.raises(ValueError, match="holds a mapping of keys"):
        load_spec(tmp_path / "list.yaml")


def test_serve_replay_with_a_bad_address_is_one_line(tmp_path, capsys):
    from lps.cli import main

    assert main(["serve-replay", "notaurl", str(tmp_path / "episode.npz")]) == 1
    err = capsys.readouterr().err.strip()
    assert "'notaurl' is not a websocket address" in err and "ws://HOST:PORT" in err and len(err.splitlines()) == 1


def test_damaged_config_json_is_named(tmp_path):
    from lps.training.config import load_config

    for content in (b"{not json", bytes(range(256)), b'{"agent": "lps"}'):
        (tmp_path / "config.json").write_bytes(content)
        with pytest.raises(ValueError, match=rf"{tmp_path / 'config.json'} is damaged or not a run's config"):
            load_config(tmp_path)


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch, capsys):
    import errno
    import os

    from lps import cli
    from lps.files import atomic_write

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "metrics.jsonl", "{}\n")
    assert caught.value.filename == str(tmp_path / "metrics.jsonl") and not list(tmp_path.iterdir())
    assert cli._os_error(caught.value) == (f"No space left on device: {tmp_path / 'metrics.jsonl'} (the disk is full: "
                                           "free some space; files written before stay intact, so resume after)")
    from lps.files import naming

    with pytest.raises(OSError) as caught, naming(tmp_path / "metrics.jsonl"):  # as the metrics log appends
        raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.filename == str(tmp_path / "metrics.jsonl")


# --- 14. the --skip-bad hint of a bad robot episode holds for every command that reads a folder --


def test_every_command_reading_robot_folders_takes_skip_bad(monkeypatch, capsys):
    from lps import cli
    from lps.cli import train as cli_train
    from lps.cli.serve import serve_command

    calls = []  # what `lps eval` hands to lps.deploy.offline_eval
    monkeypatch.setattr(cli_train, "evaluate_on_dataset", lambda *a, **kw: calls.append(kw) or {"offline/mse": 0.0})
    assert cli.main(["eval", "run", "--dataset", "held-out", "--skip-bad"]) == 0
    assert calls == [{"seed": None, "skip_bad": True}]
    with pytest.raises(SystemExit):
        serve_command(["--help"])
    assert "--skip-bad" in capsys.readouterr().out  # lps serve --learn --dataset DIR


# --- 10. a damaged robot-data cache is ignored, said so, and rebuilt ----------------------------


def test_truncated_robot_cache_is_rebuilt(tmp_path, capsys):
    pytest.importorskip("h5py")
    from lps.data import robot, synthetic

    folder = synthetic.hdf5_folder(tmp_path / "demos", success=2, failure=0, steps=8, size=8)
    cfg = robot.RobotDataConfig(image_size=8)
    first = robot.load_folder(folder, cfg, chunk_len=2, progress=False)
    (cache,) = (folder / robot.CACHE_DIR).glob("robot-*.npz")
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # a copy cut short
    capsys.readouterr()
    again = robot.load_folder(folder, cfg, chunk_len=2, progress=False)
    assert f"ignoring the cache {cache} (ValueError: BadZipFile" in capsys.readouterr().out
    np.testing.assert_array_equal(again["actions"], first["actions"])
    from lps.data import robot_cache

    assert robot_cache.read(cache)["action"].shape == first["actions"].shape  # rebuilt whole
