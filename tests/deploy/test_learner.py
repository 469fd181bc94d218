"""`lps serve --learn`: online fine-tuning on episodes a robot sends over the serving protocol.

A tiny LPS policy trained offline on a small npz dataset is served with a learner on 127.0.0.1
(a free port, in this process); a client records episodes with `PolicyClient.episode()`. The
tests check that the policy version rises and served actions change after an episode, that the
episode file is written and labelled as offline robot data, that a client without the token and
a malformed episode are refused with the connection still served (and the next good episode is
accepted), that a resent episode id is not stored twice, that a learner killed with SIGKILL and
restarted ends with the buffer rows and weights of an uninterrupted one, and that `lps serve
--learn` refuses to start without a token.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lps import client as C
from lps.agents import LPSConfig
from lps.data.robot import RobotDataConfig, semi_sparse_labels
from lps.deploy import learner as L
from lps.deploy import robot_sim
from lps.deploy.serve import load_server
from lps.training.loop import train

OBS_DIM, ACTION_DIM, CHUNK = 4, 2, 3
EPISODES, STEPS = 6, 20
SMALL = LPSConfig(base_hidden=(16, 16), critic_hidden=(16, 16), actor_hidden=(8,))
TOKEN = "secret-test-token"
ROOT = Path(__file__).resolve().parents[2]


def write_dataset(path) -> None:
    data = helpers.drift_episodes(EPISODES, STEPS, OBS_DIM, ACTION_DIM)
    # Labelled as the learner labels a successful robot episode, so its episodes can be sent back as
    # online episodes and must then be the same rows (test_online_rows_equal_to_offline_rows_...).
    labels = [semi_sparse_labels(STEPS, True, CHUNK) for _ in range(EPISODES)]
    rewards, masks = (np.concatenate([lab[k] for lab in labels]) for k in ("rewards", "masks"))
    np.savez(path, **{**data, "rewards": rewards, "masks": masks})


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("learn")
    write_dataset(d / "demos.npz")
    cfg = helpers.toy_config(d / "run", dataset=str(d / "demos.npz"), chunk_len=CHUNK, steps=20, save_every=20,
                             log_every=20, batch_size=16)  # fmt: skip
    train("lps", cfg, SMALL)
    return d / "run"


def start(run_dir, **overrides):
    """A learning server on a free port in a thread; (server, learner, url, stop)."""
    srv = load_server(run_dir, device="cpu", log_every_s=0.0, log=lambda s: None, precompile=False)
    # UTD 1 from the first episode at the run's batch size: few updates, easy to count (the recipe's
    # defaults have their own test).
    settings = {"utd": 1.0, "start_episodes": 1, "batch_size": 0, "update_block": 10, "buffer_rows": 2000,
                "max_steps": 200, **overrides}  # fmt: skip
    lcfg = L.LearnerConfig(token=TOKEN, **settings)
    learner = L.attach(srv, run_dir, lcfg, log=lambda s: None)
    ws = srv.start("127.0.0.1", 0)
    thread = threading.Thread(target=ws.serve_forever, daemon=True)
    thread.start()

    def stop():
        learner.close()
        ws.shutdown()
        thread.join(timeout=10)

    return srv, learner, f"ws://127.0.0.1:{ws.socket.getsockname()[1]}", stop


class DriftEnv:
    """The smallest gymnasium-style env: 4-D observations drifting with the action, never solved."""

    limit = 9

    def reset(self, seed=None):
        self.t, self.obs = 0, np.random.default_rng(seed).normal(0, 0.1, OBS_DIM).astype(np.float32)
        return self.obs, {}

    def step(self, action):
        self.t += 1
        self.obs = self.obs + 0.1 * np.resize(action, OBS_DIM).astype(np.float32)
        return self.obs, -1.0, False, self.t >= self.limit, {"success": False}


class ZeroOperator:
    """A scripted operator that holds the arm still (its steps are easy to tell apart)."""

    def reset(self, obs, info):
        pass

    def act(self, obs, info):
        return np.zeros(ACTION_DIM, np.float32)


def play(policy: C.PolicyClient, seed: int, steps: int = 12, success: bool = True, episode_id=None) -> dict:
    rng = np.random.default_rng(seed)
    with C.Episode(policy, episode_id) as ep:
        obs = rng.normal(0, 0.1, OBS_DIM).astype(np.float32)
        while len(ep.actions) < steps:
            chunk = ep.act(obs)
            for action in chunk:
                if len(ep.actions) == steps:
                    break
                ep.record(obs, action, intervention=len(ep.actions) % 5 == 0)
                obs = (obs + 0.05 * rng.normal(size=OBS_DIM)).astype(np.float32)
        return ep.finish(success=success)


def test_learner_trains_swaps_and_refuses_bad_episodes(offline_run, tmp_path):
    run = helpers.copy_run(offline_run, tmp_path / "run")
    srv, learner, url, stop = start(run)
    swapped_ready = []  # the learner swaps in weights already computed, never ones still in flight
    swap = srv.swap_params
    srv.swap_params = lambda p: (swapped_ready.append(all(x.is_ready() for x in jax.tree_util.tree_leaves(p))),
                                 swap(p))[1]  # fmt: skip
    try:
        obs = np.zeros(OBS_DIM, np.float32)
        key = jax.random.PRNGKey(3)
        before = srv.policy(obs, key=key)
        with C.PolicyClient(url, token=TOKEN) as policy:
            assert policy.spec()["policy_version"] == 1  # the offline weights, published at start
            policy.act(obs)
            assert policy.last_policy_version == 1
            ack = play(policy, 0, success=True)
            assert ack["type"] == "episode_ack" and not ack["duplicate"] and ack["steps"] == 12
            assert learner.wait_idle(120)
            policy.act(obs)
            assert policy.last_policy_version == 2
            assert learner.updates_run == 10  # 12 steps x UTD 1 in blocks of 10; 2 carried over
            after = srv.policy(obs, key=key)
            assert not np.allclose(before, after), "the served actions did not change after an update"
            # load_policy (and lps serve without --learn) gives the fine-tuned weights, or the offline ones.
            from lps.deploy.policy import load_policy

            np.testing.assert_allclose(load_policy(run)(obs, key=key), after, atol=1e-6)
            np.testing.assert_allclose(load_policy(run, weights="offline")(obs, key=key), before, atol=1e-6)

            # The episode file, labelled as offline robot data is.
            files = L.episode_files(run / "learner" / "episodes")
            assert [p.parent.name for p in files] == ["success"]
            rows = L.read_episode_rows(files[0], CHUNK, RobotDataConfig())
            expected = semi_sparse_labels(12, True, CHUNK)
            for k in ("rewards", "masks", "terminals"):
                np.testing.assert_array_equal(rows[k], expected[k])
            assert int(learner.buffer.num_rows) == EPISODES * STEPS + 12

            # Without the token: refused, connection still served.
            with C.PolicyClient(url, token="wrong") as intruder:
                with pytest.raises(C.PolicyServerError, match="token"):
                    play(intruder, 1)
                intruder.act(obs)
            # Malformed: actions out of range, NaN observations, wrong shapes; then a good one.
            ep = C.Episode(policy)
            for t in range(8):
                ep.record(np.zeros(OBS_DIM, np.float32), np.full(ACTION_DIM, 3.0))
            with pytest.raises(C.PolicyServerError, match=r"\[-1, 1\]"):
                ep.finish(success=True)
            bad = C.Episode(policy)
            for t in range(8):
                bad.record(np.full(OBS_DIM, np.nan, np.float32), np.zeros(ACTION_DIM))
            with pytest.raises(C.PolicyServerError, match="NaN"):
                bad.finish(success=False)
            wrong = C.Episode(policy)
            for t in range(8):
                wrong.record(np.zeros(OBS_DIM + 1, np.float32), np.zeros(ACTION_DIM))
            with pytest.raises(C.PolicyServerError, match=r"shape \[8, 4\]"):
                wrong.finish(success=False)
            short = C.Episode(policy)
            short.record(np.zeros(OBS_DIM, np.float32), np.zeros(ACTION_DIM))
            with pytest.raises(C.PolicyServerError, match="chunk length"):
                short.finish(success=False)
            ack = play(policy, 2, success=False)
            assert not ack["duplicate"]
            # The same id again (a resend after a lost reply): acknowledged, not stored twice.
            again = play(policy, 2, success=False, episode_id=ack["id"])
            assert again["duplicate"]
            assert learner.wait_idle(120)
            assert len(L.episode_files(run / "learner" / "episodes")) == 2
            assert srv.policy_version == 3

            # The simulated robot's loop, on a tiny gymnasium-style env with this policy's observations.
            # An operator takes over about half the chunks; every episode is also recorded.
            recorder = robot_sim.Recorder(tmp_path / "sim.npz", CHUNK, log=lambda s: None)
            results = robot_sim.play_episodes(policy, DriftEnv(), 2, seed=5, log=lambda s: None, operator=ZeroOperator(),
                                              intervene_prob=0.5, recorder=recorder, chunk_len=CHUNK)  # fmt: skip
            assert [r["steps"] for r in results] == [DriftEnv.limit] * 2
            assert learner.wait_idle(120)
            assert srv.policy_version == 5 and len(L.episode_files(run / "learner" / "episodes")) == 4
            sent = [np.load(p) for p in L.episode_files(run / "learner" / "episodes")[2:]]
            flags = np.concatenate([f["interventions"] for f in sent])
            assert 0 < flags.sum() < len(flags) and sum(r["interventions"] for r in results) == flags.sum()
            actions = np.concatenate([f["actions"] for f in sent])
            np.testing.assert_array_equal(actions[flags], 0.0)  # the operator's actions, as executed
            recorded = np.load(tmp_path / "sim.npz")
            np.testing.assert_array_equal(recorded["interventions"], flags)
            np.testing.assert_array_equal(recorded["actions"], actions)
            np.testing.assert_array_equal(recorded["rewards"], np.concatenate([semi_sparse_labels(DriftEnv.limit, False, CHUNK)["rewards"]] * 2))
            assert swapped_ready == [True] * 4
    finally:
        stop()


def _serve_cmd(run, port, *extra):
    return [sys.executable, "-m", "lps.cli", "serve", str(run), "--learn", "--port", str(port), "--device", "cpu",
            "--log-every", "0", "--update-block", "10", "--buffer-rows", "2000", "--max-steps", "200",
            "--utd", "1", "--start-episodes", "1", "--batch-size", "0", *extra]  # as start()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_learn_refuses_to_start_without_token(offline_run):
    env = {k: v for k, v in os.environ.items() if k != "LPS_TOKEN"} | {"JAX_PLATFORMS": "cpu"}
    out = subprocess.run(_serve_cmd(offline_run, _free_port(), "--host", "0.0.0.0"), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode != 0 and "token" in out.stderr and "0.0.0.0" in out.stderr


def test_kill_9_and_restart_equals_uninterrupted(offline_run, tmp_path):
    """Three episodes into a learner subprocess, SIGKILL right after the third is acknowledged
    (its training maybe not done), plus a fourth stored but never trained, restart: the buffer and
    weights equal an in-process learner's that trained on the same four episodes without
    interruption."""
    killed = helpers.copy_run(offline_run, tmp_path / "killed")
    port = _free_port()
    env = os.environ | {"JAX_PLATFORMS": "cpu", "LPS_TOKEN": TOKEN}
    proc = subprocess.Popen(_serve_cmd(killed, port), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        url = f"ws://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                policy = C.PolicyClient(url, timeout=60, token=TOKEN)
                break
            except ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
                time.sleep(0.3)
        with policy:
            ids = [play(policy, 10 + i, steps=12 + i, success=i != 1)["id"] for i in range(3)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(L.episode_files(killed / "learner" / "episodes")) == 3
    # A fourth episode stored but surely not trained on (as if the learner died between writing and
    # training it): the third one's steps again, arriving after it under its own id.
    third = L.episode_files(killed / "learner" / "episodes")[-1]
    late = third.with_name(f"{3:08d}-arrived-untrained{third.suffix}")
    late.write_bytes(third.read_bytes())
    ids.append("arrived-untrained")

    # Restart in-process: the buffer is rebuilt and the rest trained on.
    srv, resumed, _, stop = start(killed)
    try:
        assert resumed.wait_idle(120)
    finally:
        stop()
    # Uninterrupted: the same three episode files trained on in one go.
    clean = helpers.copy_run(offline_run, tmp_path / "clean")
    for path in L.episode_files(killed / "learner" / "episodes"):
        dest = clean / "learner" / "episodes" / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(path.read_bytes())
    srv2, fresh, _, stop2 = start(clean)
    try:
        assert fresh.wait_idle(120)
    finally:
        stop2()
    assert sorted(p.stem.split("-", 1)[1] for p in L.episode_files(killed / "learner" / "episodes")) == sorted(ids)
    assert int(resumed.state.episodes_trained) == int(fresh.state.episodes_trained) == 4
    assert int(resumed.state.train.step) == int(fresh.state.train.step)
    n = int(fresh.buffer.num_rows)
    assert int(resumed.buffer.num_rows) == n == EPISODES * STEPS + 12 + 13 + 14 + 14
    np.testing.assert_array_equal(np.asarray(resumed.buffer.observations[:n]), np.asarray(fresh.buffer.observations[:n]))
    np.testing.assert_array_equal(np.asarray(resumed.buffer.rewards[:n]), np.asarray(fresh.buffer.rewards[:n]))
    for a, b in zip(jax.tree_util.tree_leaves(resumed.state.train.params), jax.tree_util.tree_leaves(fresh.state.train.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_robot_folder_episodes_are_written_in_the_folders_own_layout(tmp_path):
    """A run on an HDF5 robot folder: the learner's episode files are episodes of that folder's
    layout (so RUN/learner/episodes reads as a dataset), normalised on reading when the run is."""
    import dataclasses

    from lps.data import normalize
    from lps.data.robot import load_folder
    from lps.data.synthetic import hdf5_folder
    from lps.training.config import TrainConfig

    folder = hdf5_folder(tmp_path / "demos", success=2, failure=0, steps=10, size=8)
    cfg = RobotDataConfig(cache=False)
    data_cfg = TrainConfig(dataset=str(folder), robot=cfg)
    layout = L._hdf5_layout(data_cfg)
    assert [k for k, _, _ in layout.action] == list(cfg.action_keys) and len(layout.cameras) == 2
    assert L._hdf5_layout(dataclasses.replace(data_cfg, dataset=str(tmp_path / "demos.npz"))) is None

    rng = np.random.default_rng(0)
    sent = {"id": "ep1", "outcome": "success", "actions": rng.uniform(-3, 3, (9, 7)).astype(np.float32),
            "interventions": np.arange(9) % 2 == 0,
            "observations": {"state": rng.normal(size=(9, 7)).astype(np.float32),
                             "image": {cam: rng.integers(0, 255, (9, 8, 8, 3), dtype=np.uint8)
                                       for cam in ("ext1_left", "wrist_left")}}}  # fmt: skip
    spec = {"state": {"shape": [7]}, "image": {cam: {"shape": [8, 8, 3], "dtype": "uint8"} for cam in ("ext1_left", "wrist_left")}}
    with pytest.raises(ValueError, match=r"entries \['image.ext1_left', 'image.wrist_left', 'state'\]"):
        L.validate_episode({**sent, "observations": {**sent["observations"], "image": {"zz_left": 0}}}, spec, 7, CHUNK, 100,
                           robot_units=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        L.validate_episode(sent, spec, 7, CHUNK, 100)
    episode = L.validate_episode(sent, spec, 7, CHUNK, 100, robot_units=True)  # a normalised run's
    path = tmp_path / "episodes" / "success" / "00000000-ep1.h5"
    L.write_episode_file(path, episode, layout, cfg)
    assert L.episode_files(tmp_path / "episodes") == [path]

    back = load_folder(tmp_path / "episodes", dataclasses.replace(cfg, normalize="minmax"), CHUNK, False)
    for cam in ("ext1_left", "wrist_left"):
        np.testing.assert_array_equal(back["observations"]["image"][cam], sent["observations"]["image"][cam])
    np.testing.assert_allclose(back["observations"]["state"], sent["observations"]["state"])
    np.testing.assert_allclose(back["actions"], sent["actions"])
    stats = {"mode": "minmax", "action": normalize.fit(sent["actions"], "minmax", "action")}
    rows = L.read_episode_rows(path, CHUNK, dataclasses.replace(cfg, normalize="minmax"), stats)
    assert rows["actions"].min() >= -1 and rows["actions"].max() <= 1
    np.testing.assert_array_equal(rows["rewards"], semi_sparse_labels(9, True, CHUNK)["rewards"])


def test_camera_names_with_dots_keep_their_own_entry(tmp_path):
    """A camera called "cam.high" is one entry of the image dict, not a nested "cam" -> "high":
    validated, written as an npz episode and read back under its own name."""
    rng = np.random.default_rng(0)
    cams = ("cam.high", "wrist")
    spec = {"state": {"shape": [3]}, "image": {c: {"shape": [4, 4, 3], "dtype": "uint8"} for c in cams}}
    sent = {"id": "ep1", "outcome": "success", "actions": rng.uniform(-1, 1, (6, ACTION_DIM)).astype(np.float32),
            "observations": {"state": rng.normal(size=(6, 3)).astype(np.float32),
                             "image": {c: rng.integers(0, 255, (6, 4, 4, 3), dtype=np.uint8) for c in cams}}}  # fmt: skip
    episode = L.validate_episode(sent, spec, ACTION_DIM, CHUNK, 100)
    assert sorted(episode["observations"]["image"]) == sorted(cams)
    with pytest.raises(ValueError, match=r"entries \['image.cam.high', 'image.wrist', 'state'\]"):
        wrong = {**sent["observations"], "image": {"cam": {"high": sent["observations"]["image"]["cam.high"]},
                                                   "wrist": sent["observations"]["image"]["wrist"]}}  # fmt: skip
        L.validate_episode({**sent, "observations": wrong}, spec, ACTION_DIM, CHUNK, 100)
    path = tmp_path / "success" / "00000000-ep1.npz"
    L.write_episode_file(path, {**episode, "interventions": np.zeros(6, bool)})
    rows = L.read_episode_rows(path, CHUNK, RobotDataConfig())
    for c in cams:
        np.testing.assert_array_equal(rows["observations"]["image"][c], sent["observations"]["image"][c])


def _send_rows(policy, obs, actions, success=True, interventions=None) -> dict:
    with C.Episode(policy) as ep:
        for t in range(len(actions)):
            ep.record(obs[t], actions[t], intervention=bool(interventions[t]) if interventions is not None else False)
        return ep.finish(success=success)


def test_online_rows_equal_to_offline_rows_are_the_same_chunks(offline_run, tmp_path):
    """The learner's data path: offline episodes sent back as online episodes become exactly the
    offline rows (observations, actions, labels) in the buffer, the balanced sampler's online half
    draws from them only, a few hundred updates leave a diagnostics row per episode
    (learner/metrics.jsonl), and the policy stays near the offline one."""
    from lps.data import replay
    from lps.data.sampler import gather_chunks

    run = helpers.copy_run(offline_run, tmp_path / "run")
    data = np.load(offline_run.parent / "demos.npz")
    srv, learner, url, stop = start(run, utd=5.0)
    try:
        with C.PolicyClient(url, token=TOKEN) as policy:
            for e in range(3):
                rows = slice(e * STEPS, (e + 1) * STEPS)
                _send_rows(policy, data["observations"][rows], data["actions"][rows])
            assert learner.wait_idle(120)
            assert policy.spec()["learning"]["episodes_trained"] == 3 and policy.spec()["learning"]["queued"] == 0
    finally:
        stop()
    buffer, n_off = learner.buffer, EPISODES * STEPS
    online = slice(n_off, n_off + 3 * STEPS)
    np.testing.assert_array_equal(np.asarray(buffer.observations[online]), data["observations"][: 3 * STEPS])
    np.testing.assert_array_equal(np.asarray(buffer.actions[online]), data["actions"][: 3 * STEPS])
    np.testing.assert_array_equal(np.asarray(buffer.rewards[online]), data["rewards"][: 3 * STEPS])
    np.testing.assert_array_equal(np.asarray(buffer.masks[online]), data["masks"][: 3 * STEPS])
    rows = replay.sample_rows(buffer, jax.random.PRNGKey(0), 64, "balanced")
    online_rows = np.asarray(rows[32:])
    assert (online_rows >= n_off).all() and (np.asarray(rows[:32]) < n_off).all()
    as_online = gather_chunks(buffer, rows[32:], CHUNK, 0.99)
    as_offline = gather_chunks(buffer, rows[32:] - n_off, CHUNK, 0.99)  # the same episodes' offline copies
    for k in ("observations", "actions", "chunk_return", "chunk_mask", "next_observations"):
        np.testing.assert_array_equal(np.asarray(as_online[k]), np.asarray(as_offline[k]))
    metrics = [json.loads(line) for line in (run / "learner" / L.METRICS).read_text().splitlines()]
    assert [m["episode"] for m in metrics] == [1, 2, 3] and metrics[-1]["step"] == 20 + 300
    for key in ("offline/td", "online/td", "offline/q_data", "online/q_data", "online/bc", "shift/offline",
                "latent/spread", "batch/online_share"):  # fmt: skip
        assert np.isfinite(metrics[-1][key]), key
    assert metrics[-1]["batch/online_share"] == 0.5
    assert metrics[-1]["shift/offline"] < 0.5  # actions lie in [-1, 1]; a broken path moves them anywhere


def test_recipe_defaults_wait_for_episodes_restart_the_schedule_and_label_failures_as_timeouts(offline_run, tmp_path):
    """The recipe (LearnerConfig's defaults, bar the UTD and batch sizes kept small here): no update
    until `start_episodes` have arrived; then a constant learning rate (Adam's moments carried over
    from the offline run); failed episodes bootstrap (a time limit) and are not cloned, except the
    operator's takeovers."""
    run = helpers.copy_run(offline_run, tmp_path / "run")
    srv, learner, url, stop = start(run, start_episodes=3, utd=2.0)
    try:
        assert learner.cfg.failures == "timeout" and learner.cfg.clone == "successes"
        with C.PolicyClient(url, token=TOKEN) as policy:
            for i in range(2):
                play(policy, 40 + i, success=False)
            assert learner.wait_idle(120)
            assert srv.policy_version == 1 and int(learner.state.train.step) == 20  # waiting for a third episode
            play(policy, 42, success=True)
            assert learner.wait_idle(120)
    finally:
        stop()
    assert srv.policy_version == 2 and int(learner.state.train.step) == 20 + 20  # 12 steps x UTD 2, in blocks of 10
    opt_state = learner.state.train.opt_state
    adam = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(x, optax.ScaleByAdamState)]  # fmt: skip
    assert len(adam) == 1 and int(adam[0].count) == 40  # the offline run's 20 steps, then 20 online

    failed = L.episode_files(run / "learner" / "episodes")[0]
    assert failed.parent.name == "failure"
    rows = L.read_episode_rows(failed, CHUNK, RobotDataConfig(), clone="successes", failures="timeout")
    np.testing.assert_array_equal(rows["rewards"], -1.0)
    np.testing.assert_array_equal(rows["masks"], 1.0)
    flags = np.load(failed)["interventions"]
    np.testing.assert_array_equal(rows["bc_weights"], flags.astype(np.float32))  # only the takeovers are cloned
    penalty = L.read_episode_rows(failed, CHUNK, RobotDataConfig(), clone="all", failures="penalty")
    np.testing.assert_array_equal(penalty["rewards"], semi_sparse_labels(12, False, CHUNK)["rewards"])
    np.testing.assert_array_equal(penalty["bc_weights"], 1.0)


def test_online_learning_rate_restarts_at_the_peak_under_a_cosine_schedule():
    """Past --steps the cosine schedule holds lr / 10; the online phase (`online_lr`) runs at a
    constant rate instead, with an optimiser state of the same structure (offline checkpoints
    restore into it, Adam's moments go on)."""
    from lps.training.config import TrainConfig
    from lps.training.update import make_optimizer

    cfg = TrainConfig(steps=100, lr=1e-3, lr_schedule="cosine")
    params = {"w": jnp.zeros(1)}

    def step_size(optimizer, count):
        state = optimizer.init(params)
        # The schedule's step only (Adam's own count stays 0: its first step is lr * sign(g)).
        state = jax.tree_util.tree_map(
            lambda x: x._replace(count=jnp.asarray(count, jnp.int32)) if isinstance(x, optax.ScaleByScheduleState) else x,
            state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))  # fmt: skip
        updates, _ = optimizer.update({"w": jnp.ones(1)}, state, params)
        return -float(updates["w"][0])

    offline, online = make_optimizer(cfg), make_optimizer(cfg, online_lr=1e-3)
    assert jax.tree_util.tree_structure(offline.init(params)) == jax.tree_util.tree_structure(online.init(params))
    np.testing.assert_allclose(step_size(offline, 50), step_size(online, 50), rtol=1e-6)  # the same offline
    np.testing.assert_allclose(step_size(offline, 150), 1e-4, rtol=1e-3)  # continued: lr / 10
    np.testing.assert_allclose(step_size(online, 150), 1e-3, rtol=1e-3)  # restarted: lr


# --- faults: nothing a robot sends can break the learner -----------------------------------------


def _episode_request(steps=12, seed=0, **override) -> dict:
    rng = np.random.default_rng(seed)
    request = {"type": "episode", "id": f"ep{seed}", "token": TOKEN, "outcome": "success",
               "observations": rng.normal(0, 0.1, (steps, OBS_DIM)).astype(np.float32),
               "actions": rng.uniform(-0.5, 0.5, (steps, ACTION_DIM)).astype(np.float32),
               "interventions": np.zeros(steps, bool)}  # fmt: skip
    request.update(override)
    return request


def _wait(learner):
    assert learner.wait_idle(120)
    deadline = time.monotonic() + 30
    while learner.status()["queued"] and time.monotonic() < deadline:
        time.sleep(0.05)


def test_glitches_never_reach_the_weights(offline_run, tmp_path):
    """A sensor glitch is refused naming the dimension; with the range check off, an episode whose
    updates go non-finite is quarantined, the weights before it are kept and served, the version
    does not move, and the next good episode trains as usual."""
    run = helpers.copy_run(offline_run, tmp_path / "run")
    srv, learner, url, stop = start(run)
    try:
        glitch = _episode_request(seed=1)
        glitch["observations"][5, 2] = 1e20
        with pytest.raises(ValueError, match=r"'observations' dimension 2 is 1e\+20 at step 5.*--range-margin"):
            learner.receive(glitch)
        with pytest.raises(ValueError, match="'actions' must lie in"):
            learner.receive(_episode_request(seed=2, actions=np.full((12, ACTION_DIM), 30.0, np.float32)))
        assert not L.stored_files(run / "learner" / "episodes")

        unchecked = dataclasses.replace(learner.cfg, range_margin=float("inf"))
        learner.cfg = unchecked
        before = jax.tree_util.tree_map(np.asarray, learner.state.train.params)
        version, rows = srv.policy_version, int(learner.buffer.num_rows)
        learner.receive(glitch)
        _wait(learner)
        assert srv.policy_version == version and int(learner.buffer.num_rows) == rows
        for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(learner.state.train.params)):
            np.testing.assert_array_equal(a, np.asarray(b))
        assert np.isfinite(srv.policy(np.zeros(OBS_DIM, np.float32))).all()
        quarantined = list((run / "learner" / L.QUARANTINE_DIR).glob("*.npz"))
        assert len(quarantined) == 1 and "non-finite" in json.loads(
            quarantined[0].with_name(quarantined[0].name + ".reason.json").read_text())["reason"]
        status = learner.status()
        assert status["quarantined"] == 1 and "non-finite" in status["last_problem"] and status["state"] == "idle"
        learner.receive(_episode_request(seed=3))
        _wait(learner)
        assert srv.policy_version == version + 1 and int(learner.state.episodes_trained) == 1
    finally:
        stop()


def test_a_full_buffer_drops_the_oldest_online_episodes(offline_run, tmp_path):
    """Online rows beyond --buffer-rows push out the oldest online episodes; the offline data stays,
    and the buffer then holds exactly the newest episodes' rows."""
    run = helpers.copy_run(offline_run, tmp_path / "run")
    srv, learner, url, stop = start(run, buffer_rows=30)
    try:
        sent = [_episode_request(seed=10 + i) for i in range(4)]
        for request in sent:
            learner.receive(request)
            _wait(learner)
        assert learner.status()["state"] == "idle" and learner.status()["last_problem"] is None
        assert srv.policy_version == 5 and int(learner.state.episodes_trained) == 4
        n_off = EPISODES * STEPS
        buffer = learner.buffer
        assert int(buffer.num_rows) == n_off + 24 and int(buffer.num_offline_rows) == n_off
        np.testing.assert_array_equal(np.asarray(buffer.observations[n_off: n_off + 24]),
                                      np.concatenate([r["observations"] for r in sent[2:]]))  # fmt: skip
        starts = np.asarray(buffer.starts[: int(buffer.num_starts)])
        assert (starts[int(buffer.num_offline_starts):] >= n_off).all() and starts.max() < n_off + 24
    finally:
        stop()


def test_versions_go_up_across_restarts_and_bad_files_are_quarantined(offline_run, tmp_path):
    run = helpers.copy_run(offline_run, tmp_path / "run")
    srv, learner, url, stop = start(run)
    try:
        for i in range(2):
            learner.receive(_episode_request(seed=20 + i))
            _wait(learner)
        served = srv.policy_version
    finally:
        stop()
    assert served == 3
    files = L.episode_files(run / "learner" / "episodes")
    files[0].write_bytes(b"not an npz")  # damaged on disk while the server was down
    srv, learner, url, stop = start(run)
    try:
        assert srv.policy_version == served + 1  # never reused
        status = learner.status()
        assert status["quarantined"] == 1 and "unreadable" in status["last_problem"]
        assert int(learner.state.episodes_trained) == 1 and L.episode_files(run / "learner" / "episodes") == files[1:]
        with C.PolicyClient(url) as client:
            health = client.spec()["learning"]
        assert health["state"] == "idle" and health["quarantined"] == 1
    finally:
        stop()
    # A learner checkpoint with NaN weights (saved by an lps without the guard) is set aside.
    state = L.restore_state(run / "learner", learner.state.train)
    from lps.training import checkpoint as ckpt

    ckpt.save(run / "learner", state.replace(train=state.train.replace(
        params=jax.tree_util.tree_map(lambda x: np.full_like(np.asarray(x), np.nan), state.train.params))))  # fmt: skip
    srv, learner, url, stop = start(run)
    try:
        assert list((run / "learner").glob("set-aside-*/checkpoint.msgpack"))
        assert np.isfinite(srv.policy(np.zeros(OBS_DIM, np.float32))).all()
        assert srv.policy_version > served + 1
    finally:
        stop()


def test_episode_messages_are_checked_field_by_field(offline_run):
    spec = {"shape": [OBS_DIM]}
    good = _episode_request()
    L.validate_episode(good, spec, ACTION_DIM, CHUNK, 200)
    cases = [({"id": "ep\n"}, "'id' must be"), ({"extra": np.zeros(10)}, r"unknown episode field\(s\) \['extra'\]"),
             ({"interventions": np.zeros(12, np.float32)}, "must be booleans.*float32"),
             ({"outcome": "aborted", "actions": np.zeros((0, ACTION_DIM), np.float32),
               "observations": np.zeros((0, OBS_DIM), np.float32), "interventions": np.zeros(0, bool)}, "no steps")]  # fmt: skip
    for override, message in cases:
        with pytest.raises(ValueError, match=message):
            L.validate_episode({**good, **override}, spec, ACTION_DIM, CHUNK, 200)


def _start_server(run, port, env):
    proc = subprocess.Popen(_serve_cmd(run, port), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            C.PolicyClient(f"ws://127.0.0.1:{port}", timeout=60, token=TOKEN, retries=0).close()
            return proc
        except ConnectionError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "no start"
            time.sleep(0.3)


def test_chaos_good_bad_duplicate_and_half_sent_episodes_with_a_kill_9(offline_run, tmp_path):
    """A scripted robot sends good episodes mixed with poisoned, oversized, duplicated and
    half-sent ones while two clients act; the learner is killed with SIGKILL once in the middle and
    restarted. No non-finite action is ever served, each client's policy_version only goes up,
    every good episode is stored once and trained on, nothing else is."""
    run = helpers.copy_run(offline_run, tmp_path / "run")
    port = _free_port()
    env = os.environ | {"JAX_PLATFORMS": "cpu", "LPS_TOKEN": TOKEN}
    url = f"ws://127.0.0.1:{port}"
    proc = _start_server(run, port, env)
    done, problems, versions = threading.Event(), [], {0: [], 1: []}

    def act(k):  # an acting client that rides through the restart (reconnects)
        rng = np.random.default_rng(k)
        with C.PolicyClient(url, token=TOKEN, retries=60, backoff_s=0.1, max_backoff_s=0.5) as client:
            while not done.is_set():
                chunk = client.act(rng.normal(0, 0.1, OBS_DIM).astype(np.float32))
                if not np.isfinite(chunk).all():
                    problems.append(f"client {k}: non-finite action")
                versions[k].append(client.last_policy_version)
                time.sleep(0.02)

    actors = [threading.Thread(target=act, args=(k,), daemon=True) for k in (0, 1)]
    for t in actors:
        t.start()
    good = []
    try:
        with C.PolicyClient(url, token=TOKEN, retries=60, backoff_s=0.1, max_backoff_s=0.5) as robot:
            for i in range(2):
                good.append(play(robot, 100 + i)["id"])
            poisoned = _episode_request(seed=7, id="poisoned")
            poisoned["observations"][3, 1] = 1e30
            oversized = _episode_request(steps=201, seed=8, id="oversized")
            for bad, message in ((poisoned, "far outside"), (oversized, "at most 200")):
                with pytest.raises(C.PolicyServerError, match=message):
                    robot.send_episode({k: v for k, v in bad.items() if k not in ("type", "token")})
            again = play(robot, 100, episode_id=good[0])
            assert again["duplicate"]
            with pytest.raises(RuntimeError):  # the robot stops mid-episode: sent as aborted, never trained
                with C.Episode(robot) as half:
                    for t in range(4):
                        half.record(np.zeros(OBS_DIM, np.float32), np.zeros(ACTION_DIM, np.float32))
                    raise RuntimeError("emergency stop")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc = _start_server(run, port, env)
            for i in range(2, 4):
                good.append(play(robot, 100 + i)["id"])
            learning = robot.wait_for_learner(timeout=120)
    finally:
        done.set()
        for t in actors:
            t.join(timeout=30)
        if proc.poll() is None:
            proc.kill()
    assert not problems
    for k, seen in versions.items():
        assert seen and all(a <= b for a, b in zip(seen, seen[1:])), f"client {k}: versions went down"
    assert learning["state"] == "idle" and learning["episodes_trained"] == 4 and learning["quarantined"] == 0
    files = L.episode_files(run / "learner" / "episodes")
    assert sorted(p.stem.split("-", 1)[1] for p in files) == sorted(good)  # each good one stored once
    aborted = L.stored_files(run / "learner" / "episodes", ("aborted",))
    assert len(aborted) == 1 and len(np.load(aborted[0])["actions"]) == 4
