"""Frame stacking (`--frame-stack K`): the sampler and the replay buffer stack each row's last K
frames of its episode exactly as stacking by hand does, the encoder gives each camera its own K
frames, and a policy's stack follows the episode (consecutive frames, reset between episodes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lps.agents import Spec
from lps.agents.encoded import build_agent
from lps.data import replay
from lps.data.frames import Frames, episode_first_rows
from lps.data.sampler import gather_chunks, to_device
from lps.deploy.policy import Policy
from lps.nets.encoders import camera_frames
from lps.training.config import TrainConfig
from tests.helpers import small_config

H, K = 2, 3


def image_rows(n: int, offset: int = 0) -> np.ndarray:
    """n 2x2 RGB frames whose pixels all hold the row number (offset + row), so a stack names its rows."""
    return np.broadcast_to((offset + np.arange(n, dtype=np.uint8))[:, None, None, None], (n, 2, 2, 3)).copy()


def row_dataset(lengths: list[int], offset: int = 0) -> dict:
    """Episodes of the given lengths (rows, the last one final) in the row layout."""
    n = sum(lengths)
    terminals = np.zeros(n, bool)
    terminals[np.cumsum(lengths) - 1] = True
    return {"observations": image_rows(n, offset), "actions": np.zeros((n, 1), np.float32),
            "rewards": np.zeros(n, np.float32), "masks": np.ones(n, np.float32), "terminals": terminals}  # fmt: skip


def by_hand(frames: np.ndarray, first_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each row's frames t-K+1..t of its episode (the first repeated), concatenated on channels."""
    return np.stack([
        np.concatenate([frames[max(t - back, first_rows[t])] for back in range(K - 1, -1, -1)], axis=-1) for t in rows
    ])  # fmt: skip


def test_episode_first_rows():
    terminals = np.array([0, 0, 1, 0, 1, 1, 0, 0, 1], bool)
    np.testing.assert_array_equal(episode_first_rows(terminals), [0, 0, 0, 3, 3, 5, 6, 6, 6])


def test_sampler_stacks_frames_as_stacking_by_hand():
    data = row_dataset([6, 5])
    device = to_device(data, H, frame_stack=K)
    first = episode_first_rows(data["terminals"])
    rows = np.asarray(device.starts)  # every chunk start: episode starts included
    batch = jax.device_get(gather_chunks(device, jnp.asarray(rows), H, 0.99))
    assert batch["observations"].shape == (len(rows), 2, 2, 3 * K) and batch["observations"].dtype == np.uint8
    np.testing.assert_array_equal(batch["observations"], by_hand(data["observations"], first, rows))
    np.testing.assert_array_equal(batch["next_observations"], by_hand(data["observations"], first, rows + H))
    # The second episode's first chunk repeats its own first frame, never the first episode's frames.
    assert batch["observations"][list(rows).index(6)][0, 0].tolist() == [6] * 3 * K
    # Without stacking: the rows' own frames.
    plain = jax.device_get(gather_chunks(to_device(data, H), jnp.asarray(rows), H, 0.99))
    np.testing.assert_array_equal(plain["observations"], data["observations"][rows])


def test_replay_buffer_stacks_appended_and_staged_episodes_within_themselves():
    offline = row_dataset([5])
    buffer = replay.create(offline, H, capacity=40, staging_rows=16, frame_stack=K)
    buffer = replay.append(buffer, row_dataset([4, 6], offset=100), H, block_rows=12)
    in_progress = row_dataset([5], offset=200)
    buffer = replay.stage(buffer, [in_progress, row_dataset([3], offset=220)], int(buffer.num_starts), H)
    n = int(buffer.num_starts)
    rows = np.asarray(buffer.starts)[:n]
    got = jax.device_get(gather_chunks(buffer, jnp.asarray(rows), H, 0.99))["observations"]
    frames = np.asarray(buffer.observations).astype(np.uint8)
    first = np.asarray(buffer.first_rows)
    np.testing.assert_array_equal(got, by_hand(frames, first, rows))
    # Each episode's stacks hold only its own frames (the row values tell which episode they came from).
    for stack, row in zip(got, rows):
        values = set(stack[0, 0].tolist())
        own = frames[row, 0, 0, 0]
        assert all(v <= own and v // 100 == own // 100 for v in values), (row, values)
    assert (np.asarray(buffer.first_rows)[[24, 32]] == [24, 32]).all()  # the staging segments' own starts


def test_frames_start_full_and_follow_the_episode():
    frames = Frames(3)
    with pytest.raises(ValueError, match="no frame yet"):
        frames.stacked()
    one = lambda v: np.full((2, 2, 1), v, np.uint8)  # noqa: E731
    frames.push(one(1))
    assert frames.stacked()[0, 0].tolist() == [1, 1, 1]
    frames.extend([one(2), one(3), one(4)])
    assert frames.stacked()[0, 0].tolist() == [2, 3, 4]
    frames.reset()
    frames.push(one(9))
    assert frames.stacked()[0, 0].tolist() == [9, 9, 9]
    # A dict observation stacks its image; its state is the latest.
    robot = Frames(2, {"state": np.zeros(1), "image": one(5)})
    robot.push({"state": np.ones(1), "image": one(6)})
    stacked = robot.stacked()
    assert stacked["image"][0, 0].tolist() == [5, 6] and stacked["state"].tolist() == [1.0]


def test_each_camera_sees_its_own_frames():
    # 2 frames of 2 cameras: channels [f0 cam0 (3), f0 cam1 (3), f1 cam0 (3), f1 cam1 (3)].
    images = jnp.arange(12, dtype=jnp.uint8).reshape(1, 1, 1, 12)
    assert camera_frames(images, 0, 6, 2)[0, 0, 0].tolist() == [0, 1, 2, 6, 7, 8]
    assert camera_frames(images, 1, 6, 2)[0, 0, 0].tolist() == [3, 4, 5, 9, 10, 11]


@pytest.fixture(scope="module")
def stacked_policy():
    """An untrained pixel LPS policy seeing 2 frames of 8x8 images (acting needs no training)."""
    spec = Spec(0, 2, chunk_len=2, image_shape=(8, 8, 3), frame_stack=2)
    agent = build_agent("lps", small_config("lps", hidden=(16, 16)), spec, "impala-small", encoder_features=8)
    assert agent.encoder.frame_stack == 2
    params = agent.init(jax.random.PRNGKey(0))
    first_conv = params["base_encoder"]["ImpalaEncoder_0"]["Conv_0"]["kernel"]
    assert first_conv.shape[2] == 6  # the first conv takes 2 frames of 3 channels
    return Policy(agent, params)


def test_policy_stack_is_per_episode_and_takes_the_frames_between_calls(stacked_policy):
    policy = stacked_policy
    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3))
    key = jax.random.PRNGKey(1)

    def fresh(*frames):
        """The chunk a new episode's stack gives after these frames (the last one acted on)."""
        stack = policy.new_frames()
        for f in frames[:-1]:
            policy.observe(f, frames=stack)
        return policy(frames[-1], key=key, frames=stack)

    policy.reset()
    first = policy(a, key=key)
    np.testing.assert_array_equal(first, fresh(a))  # a new episode starts with its frame repeated
    policy.observe(b)  # a step executed between calls
    np.testing.assert_array_equal(policy(c, key=key), fresh(b, c))  # acts on the last 2 frames: b, c
    assert not np.array_equal(fresh(b, c), fresh(a, c))  # which frames are stacked matters
    policy.reset()  # the next episode forgets the last one's frames
    np.testing.assert_array_equal(policy(c, key=key), fresh(c))


def test_frame_stack_is_checked():
    with pytest.raises(ValueError, match="--frame-stack must be positive"):
        TrainConfig(frame_stack=0)
    with pytest.raises(ValueError, match="--frame-stack 17 is above 16"):
        TrainConfig(frame_stack=17)


def test_server_keeps_each_connections_frames_per_episode(stacked_policy):
    """`lps serve` with a frame-stacked policy: a connection's requests stack its episode's frames
    (those it acted on and the `frames` it sends), a new `episode` id starts afresh, and the spec
    says how many frames the policy stacks."""
    from lps.client import pack, unpack
    from lps.deploy.serve import PolicyServer

    served, direct = (Policy(stacked_policy.agent, stacked_policy.params) for _ in range(2))
    server = PolicyServer(served, log=lambda m: None)
    assert server.spec_message["frame_stack"] == 2
    assert server.spec_message["observation"]["shape"] == [8, 8, 3]  # the robot sends one frame
    session = server.new_session()
    rng = np.random.default_rng(1)
    a, b, c = (rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3))

    def ask(**request):
        reply = unpack(server.respond(pack(request), 1, session)[0])
        assert "error" not in reply, reply
        return reply["action"]

    first = direct.new_frames()
    np.testing.assert_array_equal(ask(obs=a, episode="one"), direct(a, frames=first))
    direct.observe(b, frames=first)
    np.testing.assert_array_equal(ask(obs=c, episode="one", frames=[b]), direct(c, frames=first))
    np.testing.assert_array_equal(ask(obs=c, episode="two"), direct(c, frames=direct.new_frames()))
    bad = unpack(server.respond(pack({"obs": a, "frames": [np.zeros((4, 4, 3), np.uint8)]}), 1, session)[0])
    assert "frames[0]" in bad["error"]


def test_episode_recorder_sends_the_steps_since_the_last_chunk():
    from lps.client import Episode

    class Client:
        sent: list = []

        def spec(self):
            return {"frame_stack": 3}

        def act(self, obs, frames=None, episode=None):
            self.sent.append((obs, list(frames or []), episode))
            return np.zeros((2, 1), np.float32)

    ep = Episode(Client(), "ep-1")
    ep.act(0)
    for t in range(5):  # a chunk of 5 steps executed from observation 0
        ep.record(t, np.zeros(1))
    ep.act(5)
    for t in range(5, 7):
        ep.record(t, np.zeros(1))
    ep.act(7)
    # Observation 0 and 5 were acted on; between calls the last K-1 = 2 executed steps are sent.
    assert Client.sent == [(0, [], "ep-1"), (5, [3, 4], "ep-1"), (7, [6], "ep-1")]


def test_validation_metrics_on_stacked_pixels(stacked_policy):
    """The val/ metrics of an image agent (stacked frames here): its critic scores its own
    encoder's features of the validation chunks; a pixel dataset is recognised as the training
    data's kind (its shape[1] is the image height, not a state size)."""
    from lps.agents.encoded import spec_fields
    from lps.training.val_split import fixed_chunks, validation_metrics

    agent, params = stacked_policy.agent, stacked_policy.params
    rng = np.random.default_rng(0)
    val = row_dataset([6, 5])
    val["observations"] = rng.integers(0, 256, (11, 8, 8, 3), dtype=np.uint8)
    val["actions"] = rng.uniform(-1, 1, (11, 2)).astype(np.float32)
    assert spec_fields(val["observations"]) == {"obs_dim": agent.spec.obs_dim, "image_shape": agent.spec.image_shape}
    chunks = fixed_chunks(val, agent.spec.chunk_len, agent.spec.gamma, frame_stack=agent.spec.frame_stack)
    assert chunks["observations"].shape[1:] == (8, 8, 6)
    metrics = jax.device_get(validation_metrics(agent, params, params, chunks, jax.random.PRNGKey(0)))
    assert set(metrics) == {"val/bc_loss", "val/clip_fraction", "val/td_error", "val/q_gap"}
    assert all(np.isfinite(v) for v in metrics.values()), metrics
