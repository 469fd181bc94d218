"""LeRobot v2.1 / v3.0 datasets written here (tiny parquet tables + H.264 MP4s) and read back."""

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from lps.data import lerobot, synthetic  # noqa: E402
from lps.data.robot import RobotDataConfig, load_folder  # noqa: E402
from lps.data.validate import DatasetError  # noqa: E402

RAW = RobotDataConfig(image_size=0, cache=False)


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_rows_equal_what_was_written(tmp_path, version):
    written = synthetic.lerobot_dataset(tmp_path / "ds", version, episodes=3, steps=10)
    data = load_folder(tmp_path / "ds", RAW, chunk_len=5, progress=False)
    obs = data["observations"]
    assert sorted(obs["image"]) == ["front", "wrist"]  # camera names: the features without observation.images.
    assert all(v.shape == (30, 32, 32, 3) and v.dtype == np.uint8 for v in obs["image"].values())
    state = np.concatenate([e["state"] for e in written["episodes"]])
    action = np.concatenate([e["action"] for e in written["episodes"]])
    np.testing.assert_array_equal(obs["state"], state)
    np.testing.assert_array_equal(data["actions"], action)
    for key in written["cameras"]:
        image = np.concatenate([e["images"][key] for e in written["episodes"]])
        assert np.abs(obs["image"][lerobot.camera_name(key)].astype(int) - image).max() <= 6  # codec tolerance (yuv420p)
    assert data["terminals"].sum() == 3 and data["terminals"][9] and data["rewards"][5] == 0.0


def test_estimate_counts_frames_and_bytes(tmp_path):
    synthetic.lerobot_dataset(tmp_path / "ds", "v3.0", episodes=4, steps=8, size=32)
    line = lerobot.estimate(tmp_path / "ds")
    assert "64 frames (32 rows x 2 camera(s))" in line and "~0 MiB" in line  # 32 * 32*32*3*2 bytes = 0.19 MiB


def test_cameras_flag_picks_and_orders_cameras_and_cache_matches(tmp_path):
    written = synthetic.lerobot_dataset(tmp_path / "ds", "v3.0", episodes=2, steps=8)
    cfg = RobotDataConfig(image_size=16, cameras=("wrist",), num_cameras=1)
    first = load_folder(tmp_path / "ds", cfg, chunk_len=3, progress=False)
    assert list(first["observations"]["image"]) == ["wrist"]
    assert first["observations"]["image"]["wrist"].shape == (16, 16, 16, 3)
    wrist = written["episodes"][0]["images"]["observation.images.wrist"][0, 0, 0]
    assert np.abs(first["observations"]["image"]["wrist"][0, 0, 0].astype(int) - wrist).max() <= 6
    assert list((tmp_path / "ds" / ".lps-cache").glob("robot-*.npz"))
    again = load_folder(tmp_path / "ds", cfg, chunk_len=3, progress=False)
    np.testing.assert_array_equal(again["observations"]["image"]["wrist"], first["observations"]["image"]["wrist"])


def test_failure_episodes_flag(tmp_path):
    synthetic.lerobot_dataset(tmp_path / "ds", "v2.1", episodes=3, steps=8)
    data = load_folder(tmp_path / "ds", RobotDataConfig(image_size=0, cache=False, failure_episodes=(1,)), 3, False)
    assert data["rewards"][8 + 5] == -100.0 and data["rewards"][5] == 0.0 and data["rewards"][16 + 5] == 0.0


def test_bad_input_is_named(tmp_path):
    ds = tmp_path / "ds"
    synthetic.lerobot_dataset(ds, "v2.1", episodes=2, steps=8)
    with pytest.raises(DatasetError, match="column 'observation.joints' does not exist.*observation.state"):
        load_folder(ds, RobotDataConfig(image_size=0, cache=False, state_column="observation.joints"), 3, False)
    with pytest.raises(DatasetError, match="camera 'top' is not a video/image feature"):
        load_folder(ds, RobotDataConfig(image_size=0, cache=False, cameras=("top",), num_cameras=1), 3, False)
    video = ds / "videos/chunk-000/observation.images.wrist/episode_000001.mp4"
    short = lerobot.decode_video(video, 10)[0][:5]
    synthetic.write_video(video, short, 10)
    with pytest.raises(DatasetError, match="episode 1, camera 'observation.images.wrist'.*cannot cover"):
        load_folder(ds, RAW, 3, False)
    synthetic.write_video(video, short, 20)
    with pytest.raises(DatasetError, match="20 fps but meta/info.json says 10"):
        load_folder(ds, RAW, 3, False)
    video.unlink()
    with pytest.raises(DatasetError, match="video file missing"):
        load_folder(ds, RAW, 3, False)


def test_nan_state_is_an_error_and_physical_actions_need_normalising(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds = tmp_path / "ds"
    synthetic.lerobot_dataset(ds, "v2.1", episodes=1, steps=8)
    path = ds / "data/chunk-000/episode_000000.parquet"
    table = pq.read_table(path)
    state = np.asarray(table.column("observation.state").to_pylist())
    state[3, 1] = np.nan
    pq.write_table(table.set_column(0, "observation.state", pa.array(state.tolist())), path)
    with pytest.raises(DatasetError, match="episode 0: state holds NaN/inf at step 3"):
        load_folder(ds, RAW, 3, False)
    from lps.data.normalize import fit_dataset

    action = 5 * np.asarray(table.column("action").to_pylist())
    pq.write_table(table.set_column(1, "action", pa.array(action.tolist())), path)
    data = load_folder(ds, RAW, 3, False)  # read as they are; the units are normalisation's business
    with pytest.raises(DatasetError, match=r"actions must lie in \[-1, 1\] without normalisation"):
        fit_dataset(data, "none")


def test_unknown_layout_lists_known_ones(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(DatasetError, match="holds no episodes in a known robot data layout.*LeRobot.*success/\\*.h5"):
        load_folder(tmp_path / "junk", RAW, 3, False)
    (tmp_path / "old" / "meta").mkdir(parents=True)
    (tmp_path / "old" / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v1.6"}))
    with pytest.raises(DatasetError, match="v1.6.*not supported"):
        load_folder(tmp_path / "old", RAW, 3, False)


def test_images_stored_in_the_table(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    ds = tmp_path / "ds"
    written = synthetic.lerobot_dataset(ds, "v2.1", episodes=1, steps=8, cameras=("front",))
    shutil.rmtree(ds / "videos")
    frames = written["episodes"][0]["images"]["observation.images.front"]
    cells = []
    for img in frames:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": None})
    path = ds / "data/chunk-000/episode_000000.parquet"
    pq.write_table(pq.read_table(path).append_column("observation.images.front", pa.array(cells)), path)
    info = json.loads((ds / "meta/info.json").read_text())
    info["features"]["observation.images.front"]["dtype"] = "image"
    (ds / "meta/info.json").write_text(json.dumps(info))
    data = load_folder(ds, RAW, 3, False)
    np.testing.assert_array_equal(data["observations"]["image"]["front"], frames)  # PNG is lossless


def test_normalisation_round_trip_and_constant_dims(capsys):
    from lps.data import normalize

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-50, 300, (200, 2)), np.full((200, 1), 7.0)], axis=1).astype(np.float32)
    for mode in ("minmax", "meanstd", "quantile"):
        stats = normalize.fit(x, mode, "state")
        assert stats["constant"] == [2]
        y = normalize.apply(x, stats)
        if mode == "minmax":
            assert np.allclose(y[:, :2].min(0), -1, atol=1e-5) and np.allclose(y[:, :2].max(0), 1, atol=1e-5)
        if mode == "meanstd":
            assert np.allclose(y[:, :2].mean(0), 0, atol=1e-4) and np.allclose(y[:, :2].std(0), 1, atol=1e-3)
        np.testing.assert_array_equal(y[:, 2], 0.0)  # constant: shifted, not divided by zero
        if mode != "quantile":  # quantile clips the outer 2%
            np.testing.assert_allclose(normalize.invert(y, stats), x, rtol=1e-5, atol=1e-3)
    action = normalize.fit(x, "meanstd", "action")  # actions always get a range map into [-1, 1]
    assert np.abs(normalize.apply(x, action)).max() <= 1.0
    assert "dimension(s) [2] are constant" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--normalize must be one of auto, none, minmax, meanstd, quantile"):
        RobotDataConfig(normalize="zscore")


def test_normalised_run_acts_and_serves_in_robot_units(tmp_path, capsys):
    """Issue 31's user: actions in [10, 30] (robot units) and two cameras of different sizes, with
    no extra flags: --normalize auto picks quantile statistics, each camera keeps its size and gets
    its own encoder, load_policy and lps serve answer in [10, 30] and match cameras by name;
    without the stats file (an older run) the same run answers in [-1, 1]."""
    import threading

    import jax

    import lps
    from lps import client as C
    from lps.agents import LPSConfig
    from lps.deploy.serve import load_server
    from lps.training.loop import train
    from tests import helpers

    ds = tmp_path / "ds"
    synthetic.lerobot_dataset(ds, "v3.0", episodes=3, steps=12, size=16, action_offset=20.0, action_scale=10.0,
                              sizes={"wrist": (12, 20)})  # fmt: skip
    from lps.data.normalize import fit_dataset

    with pytest.raises(DatasetError, match="drop --normalize none"):
        fit_dataset(load_folder(ds, RobotDataConfig(image_size=0, cache=False), 3, False), "none")
    run = tmp_path / "run"
    # In-process, tiny MLP base and IMPALA-small encoder: the point is the units, not the learning.
    cfg = helpers.toy_config(run, dataset=str(ds), chunk_len=3, steps=2, log_every=2, save_every=2, batch_size=4,
                             encoder="impala-small", encoder_features=8,
                             robot=RobotDataConfig(image_size=0))  # fmt: skip
    train("lps", cfg, LPSConfig(base_hidden=(16,), critic_hidden=(16,), actor_hidden=(16,)))
    assert "--normalize auto: quantile statistics" in capsys.readouterr().out
    stats = json.loads((run / "normalization.json").read_text())
    assert stats["mode"] == "quantile" and len(stats["action"]["offset"]) == 4 and len(stats["state"]["scale"]) == 3
    assert json.loads((run / "config.json").read_text())["spec"]["cameras"] == [["front", [16, 16, 3]], ["wrist", [12, 20, 3]]]
    policy = lps.load_policy(run)
    encoders = policy.params["critic_encoder"]
    assert sorted(encoders) == ["camera_front", "camera_wrist"]  # one encoder per camera
    raw = {"observation.state": np.array([1.0, -1.0, 0.5], np.float32),
           "observation.images.front": np.zeros((16, 16, 3), np.uint8),
           "observation.images.wrist": np.zeros((12, 20, 3), np.uint8)}  # fmt: skip
    chunk = policy(raw, key=jax.random.PRNGKey(0))
    assert chunk.shape == (3, 4) and chunk.min() >= 10.0 - 1e-3 and chunk.max() <= 30.0 + 1e-3
    with pytest.raises(ValueError, match=r"camera 'wrist' gives \[16, 16, 3\] images; this run takes \[12, 20, 3\]"):
        policy({**raw, "observation.images.wrist": np.zeros((16, 16, 3), np.uint8)})
    with pytest.raises(ValueError, match=r"unknown \['top'\]"):
        policy({**raw, "observation.images.top": np.zeros((16, 16, 3), np.uint8)})

    srv = load_server(run, device="cpu", log_every_s=0.0, log=lambda line: None, precompile=False)
    ws = srv.start("127.0.0.1", 0)
    thread = threading.Thread(target=ws.serve_forever, daemon=True)
    thread.start()
    try:
        with C.PolicyClient(f"ws://127.0.0.1:{ws.socket.getsockname()[1]}") as client:
            served = client.act(raw)
    finally:
        ws.shutdown()
        thread.join(timeout=10)
    assert served.shape == (3, 4) and served.min() >= 10.0 - 1e-3 and served.max() <= 30.0 + 1e-3
    # openpi's own client, unchanged, with the default key mapping (observation/<camera>).
    websocket_client_policy = pytest.importorskip("openpi_client.websocket_client_policy")
    ws = srv.start("127.0.0.1", 0, protocol="openpi")
    thread = threading.Thread(target=ws.serve_forever, daemon=True)
    thread.start()
    try:
        client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=ws.socket.getsockname()[1])
        reply = client.infer({"observation/state": raw["observation.state"], "prompt": "stack the cube",
                              "observation/front": raw["observation.images.front"],
                              "observation/wrist": raw["observation.images.wrist"]})  # fmt: skip
    finally:
        ws.shutdown()
        thread.join(timeout=10)
    np.testing.assert_allclose(reply["actions"], served, atol=1e-4)  # LPS acts deterministically: the same chunk

    from lps.deploy.offline_eval import evaluate_on_dataset

    scored = evaluate_on_dataset(run, ds)  # held-out rows in robot units, scored in normalised units
    assert scored["offline/episodes"] == 3 and 0 < scored["offline/action_mse"] < 4

    (run / "normalization.json").unlink()  # a run from before normalisation existed
    old = lps.load_policy(run)
    assert old.normalization is None and np.abs(old(raw, key=jax.random.PRNGKey(0))).max() <= 1.0


def test_summary_names_outcomes_cameras_ranges_and_constant_dims(tmp_path):
    from lps.data.robot import summary

    synthetic.lerobot_dataset(tmp_path / "ds", "v2.1", episodes=3, steps=8, action_offset=5.0)
    cfg = RobotDataConfig(image_size=0, cache=False, normalize="minmax", failure_episodes=(2,))
    data = load_folder(tmp_path / "ds", cfg, 3, False)
    data["observations"]["state"][:, 1] = 0.5
    text = summary(data, cfg, 3)
    assert "3 episodes (2 success, 1 failure), 24 steps" in text and "'front' (32, 32, 3), 'wrist' (32, 32, 3)" in text
    assert "actions (4,): min [4." in text and "state dimension(s) [1] are constant" in text


def test_robomimic_file_read_with_filter(tmp_path):
    import h5py

    rng = np.random.default_rng(0)
    written = {}
    with h5py.File(tmp_path / "image.hdf5", "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = '{"env_name": "Lift"}'
        for i in range(3):
            g = data.create_group(f"demo_{i}")
            written[i] = {"eef": rng.normal(size=(8, 3)).astype(np.float32), "grip": rng.normal(size=(8, 2)).astype(np.float32),
                          "img": rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8),
                          "actions": rng.uniform(-1, 1, (8, 7)).astype(np.float32)}  # fmt: skip
            g["actions"] = written[i]["actions"]
            g["obs/robot0_eef_pos"], g["obs/robot0_gripper_qpos"] = written[i]["eef"], written[i]["grip"]
            g["obs/agentview_image"] = written[i]["img"]
        f["mask/train"] = np.array([b"demo_0", b"demo_2"])
    data = load_folder(tmp_path, RobotDataConfig(image_size=0, cache=False, robomimic_filter="train"), 3, False)
    np.testing.assert_array_equal(data["actions"], np.concatenate([written[0]["actions"], written[2]["actions"]]))
    np.testing.assert_array_equal(data["observations"]["state"][:8], np.concatenate([written[0]["eef"], written[0]["grip"]], 1))
    np.testing.assert_array_equal(data["observations"]["image"]["agentview_image"][8:], written[2]["img"])
    with pytest.raises(DatasetError, match="no filter mask/valid; filters there: \\['train'\\]"):
        load_folder(tmp_path, RobotDataConfig(image_size=0, cache=False, robomimic_filter="valid"), 3, False)
    # A run on robomimic files keeps their env_args beside its config.
    import json

    from lps.data.robot import DATASET_JSON, load_for_training

    run = tmp_path / "run"
    run.mkdir()
    load_for_training(tmp_path, RobotDataConfig(image_size=0, cache=False), 3, False, [run])
    assert json.loads((run / DATASET_JSON).read_text())["env_args"] == {"image.hdf5": {"env_name": "Lift"}}


def _droid_episode(root, sub, steps, fps, mono=True, stereo=True, robot_times=True, frames=None, seed=0):
    """One raw DROID trajectory: 15 Hz steps (robot timestamps unless told not), camera 12345
    recorded at `fps` as `12345.mp4` (left view) and/or `12345-stereo.mp4` (left | right)."""
    import h5py

    rng = np.random.default_rng(seed)
    cfg = RobotDataConfig()
    ep = root / sub / "2024-01-01" / f"Mon_Jan__1_10:00:0{seed}_2024"
    (ep / "recordings" / "MP4").mkdir(parents=True)
    action = rng.uniform(-1, 1, (steps, 7)).astype(np.float32)
    state = rng.normal(size=(steps, 7)).astype(np.float32)
    with h5py.File(ep / "trajectory.h5", "w") as f:
        for keys, arr in ((cfg.action_keys, action), (cfg.state_keys, state)):
            f[keys[0]], f[keys[1]] = arr[:, :-1], arr[:, -1]
        if robot_times:
            t = 1700000000 + np.arange(steps) / 15.0
            f["observation/timestamp/robot_state/robot_timestamp_seconds"] = np.floor(t).astype(np.int64)
            f["observation/timestamp/robot_state/robot_timestamp_nanos"] = np.round((t % 1) * 1e9).astype(np.int64)
    n = frames or int(np.ceil(steps * fps / 15.0))
    left = np.broadcast_to((10 + 4 * np.arange(n))[:, None, None, None], (n, 16, 16, 3)).astype(np.uint8)  # frame i: 10 + 4i
    if mono:
        synthetic.write_video(ep / "recordings" / "MP4" / "12345.mp4", left, fps)
    if stereo:
        right = np.full_like(left, 250)
        synthetic.write_video(ep / "recordings" / "MP4" / "12345-stereo.mp4", np.concatenate([left, right], axis=2), fps)
    return ep, action, state


def test_raw_droid_mono_and_stereo_files_and_frames_matched_by_time(tmp_path):
    """Issue 31 item 4: `<serial>.mp4` is the left view (never cropped), `<serial>-stereo.mp4` the
    pair (left half taken when it is the only file); a 30 fps video beside a 15 Hz trajectory gives
    step i frame 2i (by timestamps, not index)."""
    cfg = RobotDataConfig(image_size=0, cache=False)
    _, a0, s0 = _droid_episode(tmp_path, "success", 8, fps=30, mono=True, stereo=True, seed=0)
    _, a1, s1 = _droid_episode(tmp_path, "failure", 9, fps=30, mono=False, stereo=True, seed=1)
    data = load_folder(tmp_path, cfg, 3, False)
    np.testing.assert_array_equal(data["actions"], np.concatenate([a0, a1]))
    np.testing.assert_array_equal(data["observations"]["state"], np.concatenate([s0, s1]))
    image = data["observations"]["image"]["12345"]
    assert image.shape == (17, 16, 16, 3)  # the left view's width, both from the mono and the stereo file
    expected = np.concatenate([10 + 8 * np.arange(8), 10 + 8 * np.arange(9)])  # frame 2i of each episode
    assert np.abs(image[:, 8, 8, 1].astype(int) - expected).max() <= 6
    assert data["rewards"][8 - 3] == 0.0 and data["rewards"][8 + 9 - 3] == -100.0
    successes = load_folder(tmp_path, dataclasses.replace(cfg, include_failure=False), 3, False)
    np.testing.assert_array_equal(successes["actions"], a0)
    shutil.rmtree(tmp_path / "success")
    only_failures = re.escape(f"{tmp_path}: all 1 episode(s) are failures") + ".*--include-failure"
    with pytest.raises(DatasetError, match=only_failures):
        load_folder(tmp_path, dataclasses.replace(cfg, include_failure=False), 3, False)


def test_raw_droid_video_that_cannot_cover_or_be_matched_is_named(tmp_path):
    cfg = RobotDataConfig(image_size=0, cache=False)
    ep, _, _ = _droid_episode(tmp_path / "short", "success", 10, fps=30, stereo=False, frames=8)  # 8 frames: 0.27 s
    with pytest.raises(DatasetError, match=re.escape(str(ep / "recordings" / "MP4" / "12345.mp4")) + ".*cannot cover"):
        load_folder(tmp_path / "short", cfg, 3, False)
    ep, _, _ = _droid_episode(tmp_path / "untimed", "success", 8, fps=30, stereo=False, robot_times=False)
    with pytest.raises(DatasetError, match="16 frames for 8 steps and no timestamps"):
        load_folder(tmp_path / "untimed", cfg, 3, False)
    _droid_episode(tmp_path / "same", "success", 8, fps=15, stereo=False, robot_times=False)  # one frame per step
    assert load_folder(tmp_path / "same", cfg, 3, False)["observations"]["image"]["12345"].shape == (8, 16, 16, 3)


def test_av1_video_lerobots_default_codec(tmp_path):
    """LeRobot v3.0 encodes AV1 by default: PyAV's wheels encode it (SVT-AV1) and decode it (dav1d)."""
    written = synthetic.lerobot_dataset(tmp_path / "ds", "v3.0", episodes=2, steps=4, size=64, cameras=("front",),
                                        codec="libsvtav1")  # fmt: skip
    data = load_folder(tmp_path / "ds", RAW, 2, False)
    image = np.concatenate([e["images"]["observation.images.front"] for e in written["episodes"]])
    assert data["observations"]["image"]["front"].shape == (8, 64, 64, 3)
    assert np.abs(data["observations"]["image"]["front"].astype(int) - image).max() <= 8


# --- outcomes: --success-column, next.success, next.reward, --include-failure ------------------


def _add_column(ds, name, per_episode):
    """Append a column to each episode's table of a v2.1 dataset (one list of values per episode)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for e, values in enumerate(per_episode):
        path = ds / f"data/chunk-000/episode_{e:06d}.parquet"
        pq.write_table(pq.read_table(path).append_column(name, pa.array(values)), path)


def _outcomes(data, chunk_len):
    """Each episode's outcome as its outcome reward says: True success (0), False failure (-100)."""
    ends = np.flatnonzero(data["terminals"])
    rewards = data["rewards"][ends - chunk_len + 1]
    assert set(rewards.tolist()) <= {0.0, -100.0}
    return [bool(r == 0.0) for r in rewards]


def _tiny(ds, version="v2.1", episodes=3):
    return synthetic.lerobot_dataset(ds, version, episodes=episodes, steps=8, size=16, cameras=("front",))


def _cfg(**kw):
    return RobotDataConfig(image_size=0, num_cameras=1, cache=False, **kw)


def test_include_failure_false_drops_lerobot_failures(tmp_path):
    """--no-include-failure (the robot preset's default) leaves LeRobot failures out, right rows kept;
    --include-failure keeps them; nothing left is an error naming the dataset and the flag."""
    ds = tmp_path / "ds"
    written = _tiny(ds, "v3.0")
    kept = load_folder(ds, _cfg(failure_episodes=(0,), include_failure=False), 3, False)
    assert _outcomes(kept, 3) == [True, True] and len(kept["actions"]) == 16
    state = np.concatenate([e["state"] for e in written["episodes"][1:]])
    np.testing.assert_array_equal(kept["observations"]["state"], state)
    frames = np.concatenate([e["images"]["observation.images.front"] for e in written["episodes"][1:]])
    assert np.abs(kept["observations"]["image"]["front"].astype(int) - frames).max() <= 6  # episodes 1, 2 of the one video
    every = load_folder(ds, _cfg(failure_episodes=(0,), include_failure=True), 3, False)
    assert _outcomes(every, 3) == [False, True, True] and len(every["actions"]) == 24
    only_failures = re.escape(f"{ds}: all 3 episode(s) are failures") + ".*pass --include-failure"
    with pytest.raises(DatasetError, match=only_failures):
        load_folder(ds, _cfg(failure_episodes=(0, 1, 2), include_failure=False), 3, False)


def test_success_from_next_success_any_step(tmp_path):
    ds = tmp_path / "ds"
    _tiny(ds)
    _add_column(ds, "next.success", [[False] * 8, [False] * 7 + [True], [False] * 3 + [True] + [False] * 4])
    _add_column(ds, "next.reward", [[1.0] * 8, [0.0] * 8, [0.0] * 8])  # next.success outranks the rewards
    assert _outcomes(load_folder(ds, _cfg(), 3, False), 3) == [False, True, True]
    assert _outcomes(load_folder(ds, _cfg(include_failure=False), 3, False), 3) == [True, True]
    assert _outcomes(load_folder(ds, _cfg(failure_episodes=(2,)), 3, False), 3) == [False, True, False]


def test_success_column_flag_and_cache_key(tmp_path, capsys):
    ds = tmp_path / "ds"
    _tiny(ds)
    _add_column(ds, "is_success", [[0] * 8, [0] * 6 + [1, 1], [0] * 8])
    _add_column(ds, "next.success", [[True] * 8] * 3)  # the named column outranks next.success
    cfg = RobotDataConfig(image_size=0, num_cameras=1)
    assert _outcomes(load_folder(ds, cfg, 3, False), 3) == [True, True, True]
    named = dataclasses.replace(cfg, success_column="is_success")
    assert _outcomes(load_folder(ds, named, 3, False), 3) == [False, True, False]  # not the cache above
    assert "from cache" not in capsys.readouterr().out
    assert _outcomes(load_folder(ds, named, 3, False), 3) == [False, True, False]
    assert "from cache" in capsys.readouterr().out
    dropped = load_folder(ds, dataclasses.replace(named, include_failure=False), 3, False)  # a labelling choice:
    assert "from cache" in capsys.readouterr().out and _outcomes(dropped, 3) == [True]  # the same entry


def test_missing_success_column_is_named(tmp_path):
    ds = tmp_path / "ds"
    _tiny(ds, episodes=2)
    named = "success column 'done_ok' does not exist.*columns are .*'observation.state'"
    with pytest.raises(DatasetError, match=named):
        load_folder(ds, _cfg(success_column="done_ok"), 3, False)


def test_rewards_never_positive_say_nothing(tmp_path):
    """-1 per step and 0 at the end (no reward > 0 anywhere): every episode is a success, not a failure."""
    ds = tmp_path / "ds"
    _tiny(ds)
    _add_column(ds, "next.reward", [[-1.0] * 7 + [0.0], [-1.0] * 8, [0.0] * 8])
    assert _outcomes(load_folder(ds, _cfg(), 3, False), 3) == [True, True, True]
    assert _outcomes(load_folder(ds, _cfg(include_failure=False), 3, False), 3) == [True, True, True]
    assert _outcomes(load_folder(ds, _cfg(failure_episodes=(1,)), 3, False), 3) == [True, False, True]


def test_positive_reward_marks_success(tmp_path):
    ds = tmp_path / "ds"
    _tiny(ds)
    _add_column(ds, "next.reward", [[0.0] * 7 + [1.0], [-1.0] * 8, [-1.0] * 4 + [0.5] + [-1.0] * 3])
    assert _outcomes(load_folder(ds, _cfg(), 3, False), 3) == [True, False, True]
    assert _outcomes(load_folder(ds, _cfg(include_failure=False), 3, False), 3) == [True, True]


def test_success_from_rewards_rule():
    assert lerobot.success_from_rewards([0.0, -1.0, None]) == [True, True, True]
    assert lerobot.success_from_rewards([1.0, 0.0, -1.0, None]) == [True, False, False, True]
    assert lerobot.success_from_rewards([]) == []


def _robomimic_file(path, rewards, steps=8):
    """A robomimic file with one demo per entry of `rewards` (None: the demo has no rewards array)."""
    import h5py

    rng = np.random.default_rng(0)
    actions = []
    with h5py.File(path, "w") as f:
        for i, r in enumerate(rewards):
            g = f.create_group(f"data/demo_{i}")
            actions.append(rng.uniform(-1, 1, (steps, 7)).astype(np.float32))
            g["actions"] = actions[-1]
            g["obs/robot0_eef_pos"] = rng.normal(size=(steps, 3)).astype(np.float32)
            g["obs/agentview_image"] = rng.integers(0, 255, (steps, 8, 8, 3), dtype=np.uint8)
            if r is not None:
                g["rewards"] = np.asarray(r, np.float64)
    return actions


def test_robomimic_outcomes_from_rewards_and_include_failure(tmp_path):
    import h5py

    one = [0.0] * 7 + [1.0]
    actions = _robomimic_file(tmp_path / "mg.hdf5", [one, [0.0] * 8, one])
    every = load_folder(tmp_path, _cfg(), 3, False)
    assert _outcomes(every, 3) == [True, False, True]
    kept = load_folder(tmp_path, _cfg(include_failure=False), 3, False)
    assert _outcomes(kept, 3) == [True, True]
    np.testing.assert_array_equal(kept["actions"], np.concatenate([actions[0], actions[2]]))
    _robomimic_file(tmp_path / "mg.hdf5", [[0.0] * 8, [0.0] * 8])  # no positive reward: demonstrations
    assert _outcomes(load_folder(tmp_path, _cfg(include_failure=False), 3, False), 3) == [True, True]
    _robomimic_file(tmp_path / "mg.hdf5", [[0.0] * 8, one, None])
    assert _outcomes(load_folder(tmp_path, _cfg(), 3, False), 3) == [False, True, True]
    _robomimic_file(tmp_path / "mg.hdf5", [[0.0] * 8, one])
    with h5py.File(tmp_path / "mg.hdf5", "a") as f:  # a filter of failures stays failures: rewards of the whole file
        f["mask/failed"] = np.array([b"demo_0"])
    only_failures = re.escape(f"{tmp_path}: all 1 episode(s) are failures") + ".*pass --include-failure"
    with pytest.raises(DatasetError, match=only_failures):
        load_folder(tmp_path, _cfg(include_failure=False, robomimic_filter="failed"), 3, False)
    assert _outcomes(load_folder(tmp_path, _cfg(robomimic_filter="failed"), 3, False), 3) == [False]
