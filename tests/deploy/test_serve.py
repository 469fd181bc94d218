"""`lps serve` and its client: a tiny LPS policy trained on a small own npz dataset is served on
127.0.0.1 (an ephemeral port, in a thread of this process); the tests check the spec message,
that served chunks equal `load_policy(run)(obs)`, error replies for malformed requests with the
connection still served afterwards, three concurrent clients, the replay check's numbers against
a direct computation, and the `lps serve` command end to end (start, serve, SIGINT, clean exit).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import helpers
import msgpack
import numpy as np
import pytest

import lps
from lps import client as C
from lps.agents import LPSConfig
from lps.deploy import replay_check
from lps.deploy.serve import PolicyServer, check_observation, load_server, observation_spec
from lps.training.loop import train

OBS_DIM, ACTION_DIM, CHUNK = 4, 2, 3
EPISODES, STEPS = 6, 20
SMALL = LPSConfig(base_hidden=(32, 32), critic_hidden=(32, 32), actor_hidden=(16,))


def write_dataset(path) -> dict[str, np.ndarray]:
    """Row-layout episodes: a drifting 4-D state, 2-D actions that depend on it, -1 rewards."""
    data = helpers.drift_episodes(EPISODES, STEPS, OBS_DIM, ACTION_DIM)
    np.savez(path, **data)
    return data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    write_dataset(d / "demos.npz")
    cfg = helpers.toy_config(d / "run", dataset=str(d / "demos.npz"), chunk_len=CHUNK, steps=60, save_every=60,
                             log_every=30, batch_size=32)  # fmt: skip
    train("lps", cfg, SMALL)
    return d


@pytest.fixture(scope="module")
def server(run):
    """A PolicyServer on 127.0.0.1:<free port>, serving in a thread; stopped at the end."""
    lines: list[str] = []
    srv = load_server(run / "run", device="cpu", log_every_s=0.0, log=lines.append)
    ws = srv.start("127.0.0.1", 0)
    thread = threading.Thread(target=ws.serve_forever, daemon=True)
    thread.start()
    srv.url = f"ws://127.0.0.1:{ws.socket.getsockname()[1]}"
    srv.lines = lines
    yield srv
    ws.shutdown()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the server thread did not stop"


@pytest.fixture(scope="module")
def policy(run):
    return lps.load_policy(run / "run")


def observations(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.5, (n, OBS_DIM)).astype(np.float32)


def test_codec_roundtrip_and_refusals():
    msg = {"obs": {"state": np.arange(6, dtype=np.float32).reshape(2, 3), "image": np.zeros((2, 2, 3), np.uint8)},
           "n": np.int64(3), "flag": np.bool_(True)}  # fmt: skip
    back = C.unpack(C.pack(msg))
    assert back["obs"]["state"].dtype == np.float32 and back["obs"]["image"].dtype == np.uint8
    np.testing.assert_array_equal(back["obs"]["state"], msg["obs"]["state"])
    assert back["n"] == 3 and back["flag"] is True
    # msgpack-numpy's layout (bytes keys) decodes too.
    other = msgpack.packb({b"nd": True, b"type": "<f8", b"kind": b"", b"shape": [2], b"data": np.ones(2).tobytes()})
    np.testing.assert_array_equal(C.unpack(other), np.ones(2))
    with pytest.raises(C.ProtocolError, match="needs 24 bytes but carries 8"):
        C.unpack(msgpack.packb({"__ndarray__": True, "data": b"\0" * 8, "dtype": "<f8", "shape": [3]}))
    with pytest.raises(C.ProtocolError, match="not allowed"):
        C.unpack(msgpack.packb({"__ndarray__": True, "data": b"\0" * 8, "dtype": "|O", "shape": [1]}))
    with pytest.raises(C.ProtocolError, match="undecodable"):
        C.unpack(b"\xc1\xff garbage")
    with pytest.raises(TypeError, match="dtype object"):
        C.pack({"obs": np.array([object()])})


def test_a_shape_that_is_not_a_list_of_integers_is_refused():
    data = np.zeros(16, np.float32).tobytes()  # 16 values: what a shape "28" read as (2, 8) would take
    for shape in ("28", b"28", [2.0, 8], [True, 16], 16):
        with pytest.raises(C.ProtocolError, match="a shape must be a list of integers"):
            C.unpack(msgpack.packb({"__ndarray__": True, "data": data, "dtype": "<f4", "shape": shape}))
    with pytest.raises(ValueError, match=r"spec of 'obs': its shape must be a list of non-negative integers, got '28'"):
        check_observation(np.zeros((2, 8), np.float32), {"shape": "28", "dtype": "float32"})

    class StringShape(StubPolicy):
        def observation_spec(self):
            return {"state": {"shape": [7], "dtype": "float32"}, "image": {"shape": "28", "dtype": "uint8"}}

    with pytest.raises(ValueError, match=r"spec of 'obs.image': its shape .* got '28'"):
        PolicyServer(StringShape(7, None), log_every_s=0.0, log=lambda s: None)


def test_client_is_a_standalone_file_without_jax(tmp_path):
    """lps/client.py copied alone onto a robot computer imports with numpy, msgpack and websockets."""
    (tmp_path / "policy_client.py").write_text((helpers.ROOT / "lps" / "client.py").read_text())
    code = ("import sys, policy_client; policy_client.PolicyClient; "
            "assert not {'jax', 'lps'} & set(sys.modules), sorted(m for m in sys.modules if m in ('jax', 'lps'))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_check_observation_names_the_problem():
    spec = {"shape": [OBS_DIM], "dtype": "float32"}
    check_observation(np.zeros(OBS_DIM), spec)
    check_observation(np.zeros((5, OBS_DIM)), spec)  # a batch
    for bad, message in [
        (np.zeros(OBS_DIM + 1), r"shape \[4\].*got \[5\]"),
        (np.array([0, np.nan, 0, 0]), "1 NaN/inf"),
        ({"state": np.zeros(OBS_DIM)}, "got a dict with keys"),
        ("hello", "must hold numbers"),
        (np.zeros(OBS_DIM, bool), r"must hold numbers \(float32\), got booleans"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_observation(bad, spec)
    with pytest.raises(ValueError, match=r"'obs.image' holds 1 NaN"):
        check_observation({"state": np.zeros(3), "image": np.array([np.inf])}, {"state": {}, "image": {}})


def test_spec_message_and_health(server):
    with C.PolicyClient(server.url) as client:
        spec = client.spec()
    assert spec["type"] == "spec" and spec["agent"] == "lps"
    assert spec["chunk_len"] == CHUNK and spec["action_dim"] == ACTION_DIM
    assert spec["observation"] == {"shape": [OBS_DIM], "dtype": "float32"}
    health = json.loads(urllib.request.urlopen(server.url.replace("ws://", "http://") + "/health", timeout=10).read())
    assert health["chunk_len"] == CHUNK and health["observation"]["shape"] == [OBS_DIM]


def test_served_chunks_equal_load_policy(server, policy):
    obs = observations(4)
    with C.PolicyClient(server.url) as client:
        for i, o in enumerate(obs):
            chunk = client.act(o)
            assert chunk.shape == (CHUNK, ACTION_DIM) and chunk.dtype == np.float32
            np.testing.assert_allclose(chunk, policy(o), rtol=1e-6, atol=1e-6)
            assert client.last_latency_ms > 0
        batch = client.act(obs)  # a batch of state vectors gives (B, H, A)
    np.testing.assert_allclose(batch, policy(obs), rtol=1e-6, atol=1e-6)


def test_every_batch_size_up_to_max_batch_is_compiled_at_start_up(run):
    """Issue 32 item 10: a batch size compiled while serving stalled other clients' single
    observations (p99 74 ms, max 158 ms); load_server compiles every bucket up to --max-batch (here
    6: 1, 2, 4 and 8, the last from 6 rows), so serving any size compiles nothing."""
    lines: list[str] = []
    srv = load_server(run / "run", device="cpu", log_every_s=0.0, log=lines.append, max_batch=6)
    compiles = []
    compile_call = srv._compile_call
    srv._compile_call = lambda obs, key: compiles.append(obs) or compile_call(obs, key)
    programs = srv.policy._act._cache_size()
    for size in (1, 3, 6, 2, 5, 4):
        obs = observations(size) if size > 1 else observations(1)[0]
        reply = C.unpack(srv.respond(C.pack({"obs": obs}), 1)[0])
        assert reply["action"].shape == ((size,) if size > 1 else ()) + (CHUNK, ACTION_DIM), reply
    assert compiles == [] and srv.policy._act._cache_size() == programs
    assert any("compiled in" in line and "(batch sizes 1, 2, 4, 8)" in line for line in lines), lines
    lines.clear()
    lazy = load_server(run / "run", device="cpu", log_every_s=0.0, log=lines.append, max_batch=6, precompile=False)
    assert lazy._compiled_buckets == {1} and "(batch size 1)" in lines[-1]  # --no-precompile: each on first use


def test_malformed_requests_get_errors_and_the_connection_lives_on(server, policy):
    from websockets.sync.client import connect

    good = observations(1)[0]
    bad_requests = [
        (b"\xc1 not msgpack", "undecodable"),
        ("a text frame", "binary msgpack"),
        (C.pack([1, 2, 3]), "msgpack map"),
        (C.pack({"observation": good}), "unknown request"),
        (C.pack({"obs": np.zeros(OBS_DIM + 2, np.float32)}), r"shape \[4\]"),
        (C.pack({"obs": {"state": good}}), "got a dict"),
        (C.pack({"obs": np.full(OBS_DIM, np.nan, np.float32)}), "NaN"),
        (C.pack({"obs": "four numbers"}), "must hold numbers"),
        (C.pack({"obs": {1: good, "state": good}}), "got a dict with keys"),
        (C.pack({"obs": [[1, 2], [3]]}), "not an array"),
    ]
    with connect(server.url) as ws:
        for payload, message in bad_requests:
            ws.send(payload)
            reply = C.unpack(ws.recv(timeout=30))
            assert set(reply) == {"error"} and reply["error"].startswith("bad request"), reply
            assert re.search(message, reply["error"]), (message, reply["error"])
            ws.send(C.pack({"obs": good}))  # the same connection is still served
            reply = C.unpack(ws.recv(timeout=30))
            np.testing.assert_allclose(reply["action"], policy(good), rtol=1e-6, atol=1e-6)
    with C.PolicyClient(server.url) as client:
        with pytest.raises(C.PolicyServerError, match=r"must have shape \[4\]"):
            client.act(np.zeros(3, np.float32))
        assert client.act(good).shape == (CHUNK, ACTION_DIM)


def test_three_concurrent_clients(server, policy):
    obs = observations(3 * 8, seed=2).reshape(3, 8, OBS_DIM)
    barrier = threading.Barrier(3, timeout=30)

    def client_run(i):
        with C.PolicyClient(server.url) as client:
            barrier.wait()  # every client connected before any asks
            return [(client.act(o), client.last_latency_ms) for o in obs[i]]

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(client_run, range(3)))
    for i, replies in enumerate(results):
        assert len(replies) == 8
        for o, (chunk, _) in zip(obs[i], replies):
            np.testing.assert_allclose(chunk, policy(o), rtol=1e-6, atol=1e-6)


def test_step_counts_chunks_per_connection(server):
    from websockets.sync.client import connect

    with connect(server.url) as ws:
        steps = []
        for payload in (C.pack({"obs": observations(1)[0]}), C.pack({"type": "spec"}), b"\xc1",
                        C.pack({"obs": observations(1)[0]})):  # fmt: skip
            ws.send(payload)
            steps.append(C.unpack(ws.recv(timeout=30)).get("step"))
    assert steps == [1, None, None, 2]


def test_latency_summary_lines(server):
    server.latency.flush_window()  # start a fresh window
    assert server.latency.flush_window() is None  # no traffic, no line
    with C.PolicyClient(server.url) as client:
        for _ in range(3):
            client.act(observations(1)[0])
        with pytest.raises(C.PolicyServerError):
            client.act(np.zeros(1, np.float32))
    line = server.latency.flush_window()
    assert line.startswith("[lps serve] last") and "3 chunks, latency p50" in line and "1 error replies" in line
    assert line in server.lines
    # The ticker thread logs by itself.
    stop = server.latency.every(0.05)
    try:
        with C.PolicyClient(server.url) as client:
            client.act(observations(1)[0])
        deadline = time.monotonic() + 10
        while server.lines[-1] == line and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
    assert "1 chunks" in server.lines[-1]
    assert server.latency.percentiles()["count"] > 0 and "error replies" in server.latency.final()


def test_replay_numbers_equal_direct_computation(run, server, policy):
    data = np.load(run / "demos.npz")
    episode = replay_check.read_recorded_episode(run / "demos.npz", index=2)
    rows = slice(2 * STEPS, 3 * STEPS - 1)  # the final row's action is unused: not replayed
    np.testing.assert_array_equal(episode.actions, data["actions"][rows])
    for stride in (None, 1):
        result = replay_check.replay_against_server(server.url, episode, stride=stride)
        step = stride or CHUNK
        diffs = []
        for t in range(0, STEPS - 1, step):
            k = min(CHUNK, STEPS - 1 - t)
            diffs.append(policy(data["observations"][rows][t])[:k] - data["actions"][rows][t : t + k])
        diff = np.concatenate(diffs).astype(np.float64)
        assert result["queries"] == len(range(0, STEPS - 1, step)) and result["steps"] == len(diff)
        np.testing.assert_allclose(result["mse_per_dim"], np.mean(diff**2, axis=0), rtol=1e-5)
        np.testing.assert_allclose(result["max_abs_per_dim"], np.max(np.abs(diff), axis=0), rtol=1e-5)
        np.testing.assert_allclose(result["mse"], np.mean(diff**2), rtol=1e-5)
        assert result["round_trip_ms_p99"] >= result["round_trip_ms_p50"] > 0
    assert result["episode"] == f"{run / 'demos.npz'} episode 2"
    text = replay_check.format_result(result)
    assert "mse" in text and len(text.splitlines()) == 3 + ACTION_DIM


def test_replay_reader_errors(run, tmp_path, monkeypatch):
    import lps.data

    with pytest.raises(ValueError, match=r"holds 6 episode\(s\); --episode must be in 0..5"):
        replay_check.read_recorded_episode(run / "demos.npz", index=6)
    with pytest.raises(ValueError, match="episode files end in"):
        replay_check.read_recorded_episode(tmp_path / "demo.csv")
    with pytest.raises(FileNotFoundError, match="not found"):
        replay_check.read_recorded_episode(tmp_path / "missing.npz")
    (tmp_path / "ep.h5").write_bytes(b"")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "lps.data.robot", None)  # as on a checkout without the robot loader
        m.delattr(lps.data, "robot", raising=False)
        with pytest.raises(ImportError, match="needs the robot-data loader lps.data.robot"):
            replay_check.read_recorded_episode(tmp_path / "ep.h5")


@dataclasses.dataclass(frozen=True)
class FakeRobotData:
    cameras: tuple = ("wrist_left",)
    image_size: int = 8


@dataclasses.dataclass(frozen=True)
class ImageSpec:  # the robot branch's Spec: image_shape None for state vectors, obs_dim 0 for images only
    obs_dim: int
    image_shape: tuple | None
    action_dim: int = 2
    chunk_len: int = 3


class StubPolicy:
    """A policy shaped like a robot-data run's: state + image dict observations, robot settings."""

    def __init__(self, obs_dim, image_shape, robot=None):
        self.spec = ImageSpec(obs_dim, image_shape)
        self.robot = robot
        self.seen = []

    def __call__(self, obs, key=None):
        self.seen.append(obs)
        return np.ones((3, 2), np.float32)


def test_observation_spec_for_image_policies():
    spec_of = observation_spec
    assert spec_of(StubPolicy(7, None)) == {"shape": [7], "dtype": "float32"}
    assert spec_of(StubPolicy(0, (8, 8, 6))) == {"shape": [8, 8, 6], "dtype": "uint8"}
    both = spec_of(StubPolicy(7, (8, 8, 6)))
    assert both == {"state": {"shape": [7], "dtype": "float32"}, "image": {"shape": [8, 8, 6], "dtype": "uint8"}}
    with pytest.raises(ValueError, match="must be a uint8 image"):
        check_observation(np.zeros((8, 8, 6), np.float32), spec_of(StubPolicy(0, (8, 8, 6))))
    # A dict observation's keys are the policy's business (it may take the robot's raw dict).
    check_observation({"robot_state": {"cartesian_position": np.zeros(6)}, "image": {"a": np.zeros((4, 4, 4))}}, both)


def test_server_with_a_dict_policy_reports_robot_data():
    policy = StubPolicy(7, (8, 8, 6), robot=FakeRobotData())
    srv = PolicyServer(policy, log_every_s=0.0, log=lambda s: None)
    srv.warm_up()  # zeros shaped like the spec reach the policy
    assert policy.seen[0]["image"].dtype == np.uint8 and policy.seen[0]["state"].shape == (7,)
    spec = C.unpack(srv.respond(C.pack({"type": "spec"}), 1)[0])
    assert spec["robot_data"] == {"cameras": ["wrist_left"], "image_size": 8}
    assert spec["observation"]["image"] == {"shape": [8, 8, 6], "dtype": "uint8"}
    raw = {"observation": {"robot_state": {"cartesian_position": np.zeros(6, np.float32)}}}
    reply = C.unpack(srv.respond(C.pack({"obs": raw}), 1)[0])
    assert reply["step"] == 1 and reply["action"].shape == (3, 2)
    np.testing.assert_array_equal(policy.seen[-1]["observation"]["robot_state"]["cartesian_position"], np.zeros(6))


def test_h5_episodes_go_through_the_robot_loader(monkeypatch, tmp_path):
    """The .h5 path with a stand-in for lps.data.robot: settings from the server's spec, rows
    sliced like an npz episode (the final row not replayed)."""
    import lps.data

    calls = []
    rows = 6
    fake = types.ModuleType("lps.data.robot")
    fake.RobotDataConfig = lambda **kw: ("settings", kw)
    fake.read_episode = lambda path, cfg, chunk_len=5: calls.append((path, cfg, chunk_len)) or {
        "observations": {"state": np.arange(rows * 7, dtype=np.float32).reshape(rows, 7),
                         "image": np.zeros((rows, 8, 8, 6), np.uint8)},
        "actions": np.full((rows, 2), 0.5, np.float32), "terminals": np.eye(rows)[-1].astype(bool),
    }  # fmt: skip
    monkeypatch.setitem(sys.modules, "lps.data.robot", fake)
    monkeypatch.setattr(lps.data, "robot", fake, raising=False)
    (tmp_path / "ep.h5").write_bytes(b"")
    episode = replay_check.read_recorded_episode(tmp_path / "ep.h5", robot_data={"image_size": 8})
    assert calls == [(str(tmp_path / "ep.h5"), ("settings", {"image_size": 8}), 1)]
    assert len(episode.actions) == rows - 1 and episode.observation(2)["state"][0] == 14
    result = replay_check.replay(lambda obs: np.ones((3, 2), np.float32), episode, chunk_len=3)
    assert result["queries"] == 2 and result["steps"] == rows - 1
    np.testing.assert_allclose(result["mse_per_dim"], [0.25, 0.25])
    with pytest.raises(ValueError, match="--episode does not apply"):
        replay_check.read_recorded_episode(tmp_path / "ep.h5", index=1)


def test_policy_exception_becomes_an_error_reply():
    class Broken:
        spec = lps.agents.base.Spec(obs_dim=2, action_dim=1, chunk_len=1)

        def __call__(self, obs, key=None):
            raise ValueError("image must be 32x32")

    srv = PolicyServer(Broken(), log_every_s=0.0, log=lambda s: None)
    reply, served = srv.respond(C.pack({"obs": np.zeros(2, np.float32)}), 1)
    assert not served
    assert C.unpack(reply) == {"error": "observation rejected by the policy: ValueError: image must be 32x32"}


def test_cli_serve_and_replay_end_to_end(run, capsys):
    """`lps serve` in a subprocess on a free port, `lps serve-replay` against it, Ctrl-C, exit 0."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(filter(None, [str(helpers.ROOT),
               os.environ.get("PYTHONPATH")])))  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "lps.cli", "serve", str(run / "run"), "--port", "0", "--device", "cpu"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=helpers.default_ctrl_c,  # a suite started in the background (`cmd &`) inherits Ctrl-C ignored
    )  # fmt: skip
    try:
        url, lines, deadline = None, [], time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "listening on ws://" in line:
                url = line.split("listening on ", 1)[1].split()[0]
        assert url, "".join(lines)
        from lps.cli import main as lps_main

        argv = ["serve-replay", url, str(run / "demos.npz"), "--episode", "1", "--json", str(run / "replay.json")]
        assert lps_main(argv) == 0
        assert "19 action steps compared" in capsys.readouterr().out
        assert json.loads((run / "replay.json").read_text())["steps"] == STEPS - 1
        connected = C.PolicyClient(url)  # still connected when the server is stopped
        assert connected.act(observations(1)[0]).shape == (CHUNK, ACTION_DIM)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "in total: 8 chunks" in rest and "[lps serve] stopped" in rest  # 7 replayed (19 steps / 3) + 1
    with pytest.raises(ConnectionError, match="closed the connection"):
        connected.act(observations(1)[0])


def test_device_choice():
    import jax

    from lps.deploy.serve import pick_device

    assert pick_device("cpu").platform == "cpu" and pick_device("auto") == jax.devices()[0]
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(RuntimeError, match=r"--device gpu: JAX has no such device.*jax\[cuda12\]"):
            pick_device("gpu")
    with pytest.raises(ValueError, match="auto, cpu or gpu"):
        pick_device("tpu0")


def test_only_lps_serve_learn_on_the_cpu_asks_for_a_second_device():
    """Importing lps leaves XLA_FLAGS alone; `lps serve --learn` acting on the CPU asks for a second
    host device before JAX starts, and the learner's device is that one."""
    code = ("import os, sys; from lps.cli import devices; devices.request_learner_device(sys.argv[1:]); "
            "import jax, lps.deploy.serve, lps.deploy.robot_sim, lps.deploy.replay_check, lps.experiments.sweep; "
            "from lps.deploy.learner import spare_device; "
            "print(os.environ.get('XLA_FLAGS', '-'), len(jax.devices()), spare_device(jax.devices()[0]))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}

    def run(*argv):
        return subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True,
                              timeout=120, check=True).stdout.split()  # fmt: skip

    assert run("RUN", "--learn", "--device", "cpu") == ["--xla_force_host_platform_device_count=2", "2", "cpu:1"]
    assert run("RUN", "--device", "cpu") == ["-", "1", "cpu:0"]  # serving alone: the environment as it was
    assert run("RUN", "--learn", "--device", "gpu") == ["-", "1", "cpu:0"]  # acts on a GPU: no CPU device added


def test_cli_refuses_bad_flags(run):
    out = helpers.run_cli("serve", run / "run", "--port", "70000", cwd=run)
    assert out.returncode == 2 and "--port must be in 0..65535" in out.stderr
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        out = helpers.run_cli("serve", run / "run", "--port", taken.getsockname()[1], cwd=run)
    assert out.returncode == 1 and "cannot listen on 127.0.0.1:" in out.stderr, out.stderr
    out = helpers.run_cli("serve-replay", "ws://127.0.0.1:1", run / "demos.npz", cwd=run)
    assert out.returncode == 1 and "cannot reach the policy server" in out.stderr


def test_robot_policy_served_from_raw_droid_dicts(tmp_path):
    """With the robot-data loader (issue 9 part A; this test runs once both parts are merged): a
    tiny image + proprio run is served, a raw DROID observation dict gets the chunk load_policy
    gives, and an .h5 episode replays with the settings the server reports."""
    robot = pytest.importorskip("lps.data.robot", reason="needs lps.data.robot, the robot-data loader (issue 9 A)")
    h5py = pytest.importorskip("h5py")
    import jax

    from lps.data import synthetic

    size, steps = 16, 12
    folder = synthetic.hdf5_folder(tmp_path / "demos", success=2, failure=0, steps=steps, size=size)
    run = tmp_path / "run"
    helpers.run_cli(
        "train", "--dataset", folder, "--image-size", size, "--chunk-len", CHUNK, "--steps", 2, "--log-every", 1,
        "--save-every", 2, "--batch-size", 4, "--eval-episodes", 0, "--encoder", "impala-small",
        "--encoder-features", 8, "--base-hidden", 16, "--critic-hidden", 16, "--actor-hidden", 8, "--run-dir", run,
        "--no-progress", cwd=tmp_path, check=True,
    )  # fmt: skip
    episode_file = folder / "success" / "episode_000.h5"
    with h5py.File(episode_file) as f:
        raw = {
            "robot_state": {k: f["observation/robot_state"][k][0] for k in ("cartesian_position", "gripper_position")},
            "image": {k: f["observation/image"][k][0] for k in f["observation/image"]},
        }
    srv = load_server(run, device="cpu", log_every_s=0.0, log=lambda s: None, precompile=False)
    ws = srv.start("127.0.0.1", 0)
    thread = threading.Thread(target=ws.serve_forever, daemon=True)
    thread.start()
    url = f"ws://127.0.0.1:{ws.socket.getsockname()[1]}"
    try:
        policy = lps.load_policy(run)
        with C.PolicyClient(url) as client:
            spec = client.spec()
            assert spec["observation"]["image"] == {cam: {"shape": [size, size, 3], "dtype": "uint8"}
                                                    for cam in ("ext1_left", "wrist_left")}  # fmt: skip
            assert spec["observation"]["state"] == {"shape": [7], "dtype": "float32"}
            assert spec["robot_data"]["image_size"] == size
            np.testing.assert_allclose(client.act(raw), policy(raw), rtol=1e-5, atol=1e-5)
            with pytest.raises(C.PolicyServerError, match="rejected by the policy"):
                client.act({"robot_state": raw["robot_state"], "image": {"one_left": raw["image"]["wrist_left"]}})
        result = replay_check.replay_against_server(url, episode_file)
        rows = robot.read_episode(episode_file, robot.RobotDataConfig(image_size=size), chunk_len=1)
        diffs = [
            policy(jax.tree_util.tree_map(lambda v: v[t], rows["observations"]))[: min(CHUNK, steps - 1 - t)]
            - rows["actions"][t : t + min(CHUNK, steps - 1 - t)]
            for t in range(0, steps - 1, CHUNK)
        ]
        np.testing.assert_allclose(result["mse_per_dim"], np.mean(np.concatenate(diffs) ** 2, axis=0), rtol=1e-4)
        assert result["steps"] == steps - 1
    finally:
        ws.shutdown()
        thread.join(timeout=10)
