"""`lps serve --protocol openpi`, driven by the real openpi-client package (PyPI `openpi-client`,
installed without its dependencies: it pins numpy < 2 in its metadata but runs on numpy 2).

A tiny LPS run on a drifting 4-D state is served on 127.0.0.1 in a thread; openpi's
`WebsocketClientPolicy` connects (it waits for the metadata frame), infers, and is refused with a
message naming the key for a bad observation. Observation-key mapping for image and camera-dict
runs is checked with stand-in policies (what is checked is the mapping, not acting)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
import urllib.request

import helpers
import numpy as np
import pytest

if os.environ.get("CI"):  # CI installs it (.ci/run): a missing client must fail there, not skip
    import openpi_client  # noqa: F401
openpi_client = pytest.importorskip(
    "openpi_client", reason="needs openpi-client: pip install --no-deps openpi-client==0.1.2 (see .ci/run)"
)
from openpi_client import msgpack_numpy  # noqa: E402
from openpi_client.websocket_client_policy import WebsocketClientPolicy  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

import lps  # noqa: E402
from lps.agents import LPSConfig  # noqa: E402
from lps.deploy import openpi  # noqa: E402
from lps.deploy.serve import PolicyServer, load_server  # noqa: E402
from lps.training.loop import train  # noqa: E402

# openpi-client 0.1.2 enters its connection without `with` (websockets >= 17.1 warns about it).
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

OBS_DIM, ACTION_DIM, CHUNK = 4, 2, 3
SMALL = LPSConfig(base_hidden=(16, 16), critic_hidden=(16, 16), actor_hidden=(8,))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("openpi")
    np.savez(d / "demos.npz", **helpers.drift_episodes(4, 20, OBS_DIM, ACTION_DIM))
    cfg = helpers.toy_config(d / "run", dataset=str(d / "demos.npz"), chunk_len=CHUNK, steps=20, save_every=20,
                             log_every=20, batch_size=16)  # fmt: skip
    train("lps", cfg, SMALL)
    return d / "run"


class Serving:
    """A PolicyServer speaking openpi's protocol on a free port, in a thread."""

    def __init__(self, srv: PolicyServer, obs_keys=()):
        self.srv = srv
        self.ws = srv.start("127.0.0.1", 0, protocol="openpi", obs_keys=list(obs_keys))
        self.thread = threading.Thread(target=self.ws.serve_forever, daemon=True)
        self.thread.start()
        self.port = self.ws.socket.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}"

    def client(self, **kw) -> WebsocketClientPolicy:
        return WebsocketClientPolicy(host="127.0.0.1", port=self.port, **kw)

    def close(self):
        self.ws.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def served(run):
    srv = load_server(run, device="cpu", log_every_s=0.0, log=lambda s: None, max_batch=4)
    s = Serving(srv)
    yield s
    s.close()


@pytest.fixture(scope="module")
def policy(run):
    return lps.load_policy(run)


def states(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.5, (n, OBS_DIM)).astype(np.float32)


def test_wire_encoding_matches_openpi_client():
    msg = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.zeros((2, 2), np.uint8)},
           "n": np.int64(3), "t": "pick the cube", "f": 1.5}  # fmt: skip
    back = msgpack_numpy.unpackb(openpi.packb(msg))  # ours, read by openpi's decoder
    np.testing.assert_array_equal(back["a"], msg["a"])
    assert back["b"]["c"].dtype == np.uint8 and back["n"] == 3 and back["n"].dtype == np.int64
    assert back["t"] == "pick the cube" and back["f"] == 1.5
    ours = openpi.unpackb(msgpack_numpy.packb(msg))  # openpi's, read by ours
    np.testing.assert_array_equal(ours["a"], msg["a"])
    assert ours["n"] == 3 and ours["b"]["c"].shape == (2, 2)
    with pytest.raises(openpi.ProtocolError, match="not accepted"):
        openpi.unpackb(msgpack_numpy.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O",
                                                   b"shape": [1]}}))  # fmt: skip
    with pytest.raises(openpi.ProtocolError, match="carries 8 bytes, not 24"):
        openpi.unpackb(msgpack_numpy.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "<f8",
                                                   b"shape": [3]}}))  # fmt: skip
    with pytest.raises(TypeError, match="dtype complex"):
        openpi.packb({"x": np.zeros(2, np.complex64)})


def test_metadata_on_connect_and_infer(served, policy):
    client = served.client()
    meta = client.get_server_metadata()
    spec = served.srv.spec_reply()
    assert meta["observation"] == {"shape": [OBS_DIM], "dtype": "float32"} == spec["observation"]
    assert meta["chunk_len"] == CHUNK and meta["action_dim"] == ACTION_DIM and meta["policy_version"] == 0
    assert meta["openpi_observation"] == {"observation/state": "state"}
    obs = states(3)
    for i, state in enumerate(obs):
        reply = client.infer({"observation/state": state.astype(np.float64), "prompt": "drift"})
        assert reply["actions"].shape == (CHUNK, ACTION_DIM) and reply["actions"].dtype == np.float32
        np.testing.assert_allclose(reply["actions"], policy(state), rtol=1e-5, atol=1e-5)
        assert reply["policy_version"] == 0 and reply["server_timing"]["infer_ms"] > 0
        assert ("prev_total_ms" in reply["server_timing"]) == (i > 0)
    # /healthz (and /health) answer over HTTP on the same port.
    for path in ("/healthz", "/health"):
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{served.port}{path}", timeout=10).read())
        assert health["status"] == "ok" and health["chunk_len"] == CHUNK


@pytest.mark.parametrize(
    "obs, message",
    [
        ({"observation/state": np.zeros(OBS_DIM), "observation/wrist_image": np.zeros((4, 4, 3), np.uint8)},
         r"'observation/wrist_image' are not ones this run takes; it takes 'observation/state' \(state, float32 \[4\]\)"),
        ({"state": np.zeros(OBS_DIM), "prompt": "x"}, r"'state' are not ones this run takes.*--obs-key"),
        ({"prompt": "x"}, r"lacks 'observation/state'.*keys sent: 'prompt'"),
        ({"observation/state": np.zeros(OBS_DIM + 1)}, r"'observation/state' must have shape \[4\].*got \[5\]"),
        ({"observation/state": np.array([0, np.nan, 0, 0])}, r"'observation/state' holds 1 NaN"),
        ({"observation/state": "four numbers"}, r"'observation/state' \(state\) must be an array of numbers"),
        ({"observation/state": np.zeros((5, OBS_DIM))}, r"larger than this server's --max-batch 4"),
    ],
)  # fmt: skip
def test_bad_observations_are_refused_with_the_key_and_the_connection_closed(served, obs, message):
    client = served.client()
    with pytest.raises(RuntimeError, match="Error in inference server") as err:
        client.infer(obs)
    assert "lps serve: bad observation" in str(err.value)
    assert re.search(message, str(err.value)), str(err.value)
    with pytest.raises(ConnectionClosed):  # as openpi's server: the error frame, then the close
        client.infer({"observation/state": np.zeros(OBS_DIM)})
    assert served.client().infer({"observation/state": np.zeros(OBS_DIM)})["actions"].shape == (CHUNK, ACTION_DIM)


def test_obs_key_joins_droid_style_keys_into_the_state(run, policy):
    srv = load_server(run, device="cpu", log_every_s=0.0, log=lambda s: None, max_batch=1)
    s = Serving(srv, [openpi.parse_obs_key("observation/joint_position=state"),
                      openpi.parse_obs_key("observation/gripper_position=state")])  # fmt: skip
    try:
        client = s.client()
        assert client.get_server_metadata()["openpi_observation"] == {
            "observation/joint_position": "state", "observation/gripper_position": "state"}  # fmt: skip
        state = states(1)[0]
        reply = client.infer({"observation/joint_position": state[:3], "observation/gripper_position": state[3:],
                              "observation/exterior_image_1_left_prompt": "not an array", "prompt": "go"})  # fmt: skip
        np.testing.assert_allclose(reply["actions"], policy(state), rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError, match=r"lacks 'observation/gripper_position'"):
            s.client().infer({"observation/joint_position": state[:3]})
        with pytest.raises(RuntimeError, match=r"'observation/state' are not ones this run takes; it takes "
                                               r"'observation/joint_position' \+ 'observation/gripper_position' "
                                               r"\(state, float32 \[4\]\)"):  # fmt: skip
            s.client().infer({"observation/state": state})
    finally:
        s.close()


@dataclasses.dataclass(frozen=True)
class StubSpec:
    obs_dim: int = 3
    image_shape: tuple | None = (8, 8, 3)
    action_dim: int = 2
    chunk_len: int = 3


class StubPolicy:
    """Records the observations it is given; `obs_spec` overrides the spec derived from `spec`."""

    def __init__(self, obs_spec=None, spec=StubSpec()):
        self.spec, self._obs_spec, self.seen = spec, obs_spec, []
        if obs_spec is not None:
            self.observation_spec = lambda: obs_spec

    def __call__(self, obs, key=None):
        self.seen.append(obs)
        return np.ones((3, 2), np.float32)


def test_obs_map_follows_the_observation_spec():
    state = {"shape": [3], "dtype": "float32"}
    image = {"shape": [8, 8, 3], "dtype": "uint8"}
    one_image = openpi.ObsMap({"state": state, "image": image})
    assert one_image.table() == {"observation/state": "state", "observation/image": "image"}
    obs = one_image.to_lps({"observation/state": np.zeros(3), "observation/image": np.zeros((8, 8, 3), np.uint8),
                            "prompt": "x"})  # fmt: skip
    assert set(obs) == {"state", "image"} and obs["image"].shape == (8, 8, 3)
    # Cameras by name (a dict under 'image'): each from observation/<camera>, nested as the spec is.
    cams = openpi.ObsMap({"state": state, "image": {"wrist": image, "exterior": image}})
    assert cams.table() == {"observation/state": "state", "observation/wrist": "image/wrist",
                            "observation/exterior": "image/exterior"}  # fmt: skip
    nested = {"observation": {"state": np.zeros(3), "wrist": np.ones((8, 8, 3), np.uint8),
                              "exterior": np.zeros((8, 8, 3), np.uint8)}}  # fmt: skip
    obs = cams.to_lps(nested)  # nested maps read as a/b keys
    assert set(obs["image"]) == {"wrist", "exterior"} and obs["image"]["wrist"].max() == 1
    # --obs-key by camera name or path; a key of nothing in the run is refused at start-up.
    aloha = openpi.ObsMap({"state": state, "image": {"wrist": image, "exterior": image}},
                          [("images/cam_left_wrist", "wrist"), ("images/cam_high", "image/exterior")])  # fmt: skip
    assert aloha.sources["image/wrist"] == ["images/cam_left_wrist"]
    assert aloha.sources["image/exterior"] == ["images/cam_high"]
    one_camera = openpi.ObsMap({"state": state, "image": {"front": image}}, [("observation/exterior", "image")])
    assert one_camera.table() == {"observation/state": "state", "observation/exterior": "image/front"}
    with pytest.raises(ValueError, match="has no 'gripper'; it has state, image/wrist, image/exterior"):
        openpi.ObsMap({"state": state, "image": {"wrist": image, "exterior": image}}, [("a", "gripper")])
    with pytest.raises(ValueError, match="read for both"):
        openpi.ObsMap({"state": state, "image": image}, [("observation/image", "state")])
    # An image-only (pixel) run: its one array is the image.
    assert openpi.ObsMap(image).table() == {"observation/image": "image"}
    with pytest.raises(ValueError, match="OPENPI_KEY=LPS_KEY"):
        openpi.parse_obs_key("observation/state")


def test_image_runs_act_through_the_policy_path():
    """The mapped observation reaches the policy as lps's own `{"obs": ...}` would."""
    policy = StubPolicy()
    s = Serving(PolicyServer(policy, log_every_s=0.0, log=lambda line: None))
    try:
        client = s.client()
        image = np.full((8, 8, 3), 7, np.uint8)
        reply = client.infer({"observation/state": np.ones(3), "observation/image": image, "prompt": "stack"})
        assert reply["actions"].shape == (3, 2)
        assert set(policy.seen[-1]) == {"state", "image"} and policy.seen[-1]["image"][0, 0, 0] == 7
        with pytest.raises(RuntimeError, match=r"'observation/wrist'.*it takes 'observation/state' \(state, "
                                               r"float32 \[3\]\), 'observation/image' \(image, uint8 \[8, 8, 3\]\)"):  # fmt: skip
            s.client().infer({"observation/state": np.ones(3), "observation/wrist": image})
    finally:
        s.close()


class FakeLearner:
    def __init__(self):
        self.requests = []

    def status(self):
        return {"state": "idle", "last_problem": None}

    def receive(self, request):
        if request.get("token") != "secret":
            raise ValueError("episode refused: missing or wrong 'token'")
        self.requests.append(request)
        return {"type": "episode_ack", "id": request["id"], "duplicate": False}


def test_episodes_take_the_learners_token_from_the_api_key():
    policy = StubPolicy({"state": {"shape": [3], "dtype": "float32"}})
    srv = PolicyServer(policy, log_every_s=0.0, log=lambda line: None)
    srv.learner = FakeLearner()
    s = Serving(srv)
    episode = {"type": "episode", "id": "ep1", "outcome": "success", "actions": np.zeros((5, 2), np.float32),
               "interventions": np.zeros(5, bool), "observations": {"observation/state": np.zeros((5, 3))}}  # fmt: skip
    try:
        client = s.client(api_key="secret")
        assert client.get_server_metadata()["learning"]["state"] == "idle"
        ack = client.infer(episode)
        assert ack["type"] == "episode_ack" and ack["policy_version"] == 0
        received = srv.learner.requests[-1]
        assert received["token"] == "secret" and set(received["observations"]) == {"state"}  # mapped to lps keys
        assert client.infer({"observation/state": np.zeros(3)})["actions"].shape == (3, 2)  # acting goes on
        with pytest.raises(RuntimeError, match="bad episode: episode refused: missing or wrong 'token'"):
            s.client().infer(episode)  # no api_key
    finally:
        s.close()


def test_cli_flags(run):
    out = helpers.run_cli("serve", run, "--obs-key", "observation/x=state", "--port", "0", cwd=run.parent)
    assert out.returncode == 2 and "--obs-key maps openpi's observation keys: it needs --protocol openpi" in out.stderr
    out = helpers.run_cli("serve", run, "--protocol", "openpi", "--obs-key", "nokey", cwd=run.parent)
    assert out.returncode == 2 and "invalid OPENPI_KEY=LPS_KEY value: 'nokey'" in out.stderr
