"""Robot data (DROID-style HDF5 folders): reading, rewards, validation errors, cache, the raw
observation conversion, and train -> offline eval -> load_policy end to end on the CPU."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from lps.data.robot import (
    RobotDataConfig,
    append_episodes,
    droid_obs_to_lps,
    load_folder,
    read_episode,
    write_episode,
)
from lps.data.synthetic import hdf5_folder
from lps.data.validate import DatasetError
from tests.helpers import run_cli

CFG = RobotDataConfig(image_size=32)
H = 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """5 success + 2 failure episodes, 40 steps, two 32x32 cameras."""
    return hdf5_folder(tmp_path_factory.mktemp("robot") / "demos", success=5, failure=2, steps=40, size=32)


def _raw_obs(path, t):
    with h5py.File(path) as f:
        return {
            "robot_state": {
                "cartesian_position": f["observation/robot_state/cartesian_position"][t],
                "gripper_position": f["observation/robot_state/gripper_position"][t],
            },
            "image": {k: f["observation/image"][k][t] for k in f["observation/image"]},
        }


def test_episode_layout_rewards_and_rgb(folder):
    ep = read_episode(folder / "success" / "episode_000.h5", CFG, chunk_len=H)
    assert ep["observations"]["state"].shape == (40, 7) and ep["observations"]["state"].dtype == np.float32
    image = ep["observations"]["image"]
    assert sorted(image) == ["ext1_left", "wrist_left"]  # cameras by name, each its own array
    assert all(v.shape == (40, 32, 32, 3) and v.dtype == np.uint8 for v in image.values())
    assert ep["actions"].shape == (40, 7)
    expected = np.full(40, -1.0)
    expected[40 - H] = 0.0
    np.testing.assert_array_equal(ep["rewards"], expected)
    np.testing.assert_array_equal(ep["masks"], (np.arange(40) < 40 - H).astype(float))
    assert ep["terminals"].sum() == 1 and ep["terminals"][-1]
    failure = read_episode(folder / "failure" / "episode_005.h5", CFG, chunk_len=H)
    assert failure["rewards"][40 - H] == -100.0 and failure["rewards"][0] == -1.0
    # BGRA -> RGB, each camera under its own name.
    with h5py.File(folder / "success" / "episode_000.h5") as f:
        bgra = f["observation/image/wrist_left"][7]
    np.testing.assert_array_equal(image["wrist_left"][7], bgra[..., 2::-1])


def test_resize_on_load(folder):
    ep = read_episode(folder / "success" / "episode_001.h5", RobotDataConfig(image_size=16))
    assert {v.shape for v in ep["observations"]["image"].values()} == {(40, 16, 16, 3)}


def _write(path, steps=20, cams=("a_left", "b_left"), drop=None, **override):
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, 7)).astype(np.float32)
    state = rng.normal(size=(steps, 7)).astype(np.float32)
    images = {c: rng.integers(0, 255, (steps, 8, 8, 4), dtype=np.uint8) for c in cams}
    write_episode(path, actions, state, images)
    with h5py.File(path, "a") as f:
        if drop:
            del f[drop]
        for key, value in override.items():
            key = key.replace("__", "/")
            del f[key]
            f[key] = value


BAD = {
    "missing key": (dict(drop="observation/robot_state/cartesian_position"), "missing key 'observation/robot_state/cartesian_position'"),
    "length mismatch": (dict(action__gripper_position=np.zeros(19, np.float32)), "length mismatch: 'action/gripper_position' has 19"),
    "nan": (dict(observation__robot_state__gripper_position=np.array([0.0] * 5 + [np.nan] + [0.0] * 14, np.float32)),
            "'observation/robot_state/gripper_position' holds NaN/inf at step 5"),
    "wrong camera count": (dict(cams=("a_left", "b_left", "c_left")), "wrong camera count"),
    "empty": (dict(steps=0), "empty episode"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_episode_error_names_file_and_key(tmp_path, case):
    kwargs, message = BAD[case]
    path = tmp_path / "success" / "bad.h5"
    _write(path, **kwargs)
    with pytest.raises(DatasetError) as e:
        read_episode(path, RobotDataConfig(image_size=0))
    assert str(path) in str(e.value) and message in str(e.value)


def test_skip_bad_summary(tmp_path, capsys):
    for i in range(3):
        _write(tmp_path / "success" / f"good{i}.h5")
    _write(tmp_path / "success" / "bad.h5", drop="action/gripper_position")
    cfg = RobotDataConfig(image_size=0, cache=False)
    with pytest.raises(DatasetError, match="bad.h5.*missing key 'action/gripper_position'(.|\n)*--skip-bad"):
        load_folder(tmp_path, cfg, progress=False)
    data = load_folder(tmp_path, RobotDataConfig(image_size=0, cache=False, skip_bad=True), progress=False)
    out = capsys.readouterr().out
    assert "skipped 1 of 4 episode(s)" in out and "bad.h5" in out
    assert data["terminals"].sum() == 3 and len(data["actions"]) == 60


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_folder(tmp_path / "nope", CFG)
    with pytest.raises(DatasetError, match="holds no episodes"):
        load_folder(tmp_path, CFG)


def test_include_failure_false_drops_failure_folder_and_says_so(tmp_path):
    folder = hdf5_folder(tmp_path / "d", success=1, failure=2, steps=12, size=8)
    cfg = RobotDataConfig(image_size=0, cache=False, include_failure=False)
    data = load_folder(folder, cfg, chunk_len=H, progress=False)
    assert data["terminals"].sum() == 1 and data["rewards"][12 - H] == 0.0
    every = load_folder(folder, RobotDataConfig(image_size=0, cache=False), chunk_len=H, progress=False)
    assert every["terminals"].sum() == 3
    shutil.rmtree(folder / "success")
    with pytest.raises(DatasetError, match="all 2 episode\\(s\\) are failures.*pass --include-failure"):
        load_folder(folder, cfg, chunk_len=H, progress=False)


def test_action_range_is_normalised_by_default_and_refused_with_none(tmp_path, capsys):
    """Physical units: `--normalize auto` (the default) picks quantile statistics and says why;
    `--normalize none` refuses them, naming the dimension and the flag."""
    from lps.data.normalize import fit_dataset

    _write(tmp_path / "success" / "a.h5", action__cartesian_velocity=np.full((20, 6), 3.0, np.float32))
    data = load_folder(tmp_path, RobotDataConfig(image_size=0, cache=False), progress=False)
    stats = fit_dataset(data, "auto")
    assert stats["mode"] == "quantile" and "action dimension 0 reaches 3" in capsys.readouterr().out
    with pytest.raises(DatasetError, match="action dimension 0 reaches 3.*drop --normalize none"):
        fit_dataset(data, "none")
    in_range = {**data, "actions": np.clip(data["actions"], -1, 1), "observations": {**data["observations"],
                "state": np.clip(data["observations"]["state"], -1, 1)}}  # fmt: skip
    assert fit_dataset(in_range, "auto") is None and "no normalisation" in capsys.readouterr().out


def test_cache_key_covers_decoding_options_not_labels(tmp_path):
    from lps.data import robot_cache
    from lps.data.robot import decode_options

    folder = hdf5_folder(tmp_path / "d", success=1, failure=0, steps=8, size=8)
    inputs = sorted(folder.rglob("*.h5"))
    decoding = (CFG, dataclasses.replace(CFG, image_size=8), dataclasses.replace(CFG, success_column="x"))
    assert len({robot_cache.entry_path(folder, inputs, decode_options(c)) for c in decoding}) == 3
    labelling = (CFG, dataclasses.replace(CFG, failure_reward=-5.0), dataclasses.replace(CFG, normalize="none"),
                 dataclasses.replace(CFG, include_failure=False))  # fmt: skip
    assert len({robot_cache.entry_path(folder, inputs, decode_options(c)) for c in labelling}) == 1


def test_cache_hit_invalidation_and_corruption(tmp_path, capsys):
    folder = hdf5_folder(tmp_path / "d", success=2, failure=1, steps=12, size=16)
    cfg = RobotDataConfig(image_size=16)
    first = load_folder(folder, cfg, chunk_len=H, progress=False)
    caches = list((folder / ".lps-cache").glob("robot-*.npz"))
    assert len(caches) == 1 and not list((folder / ".lps-cache").glob("*.tmp"))
    second = load_folder(folder, cfg, chunk_len=H, progress=False)
    assert "from cache" in capsys.readouterr().out
    for key in ("actions", "rewards", "masks", "terminals"):
        np.testing.assert_array_equal(first[key], second[key])
    for cam in first["observations"]["image"]:
        np.testing.assert_array_equal(first["observations"]["image"][cam], second["observations"]["image"][cam])
    # Another chunk length only moves the labels: the same entry serves it (lps data robot and
    # lps train --preset robot share one), and its labels are those of a fresh read.
    moved = load_folder(folder, cfg, chunk_len=3, progress=False)
    assert "from cache" in capsys.readouterr().out
    fresh = load_folder(folder, dataclasses.replace(cfg, cache=False), chunk_len=3, progress=False)
    np.testing.assert_array_equal(moved["rewards"], fresh["rewards"])
    # The robot preset's --no-include-failure reads the same entry (issue 31 item 6) ...
    successes = load_folder(folder, dataclasses.replace(cfg, include_failure=False), chunk_len=H, progress=False)
    assert "from cache" in capsys.readouterr().out and successes["terminals"].sum() == 2
    # ... other decoding options get their own entry and never delete another's.
    load_folder(folder, dataclasses.replace(cfg, image_size=8), chunk_len=H, progress=False)
    assert len(list((folder / ".lps-cache").glob("robot-*.npz"))) == 2
    # A new episode invalidates the cache.
    hdf5_folder(tmp_path / "extra", success=1, failure=0, steps=12, size=16, seed=3)
    shutil.copy(tmp_path / "extra" / "success" / "episode_000.h5", folder / "success" / "episode_new.h5")
    third = load_folder(folder, cfg, chunk_len=H, progress=False)
    assert "from cache" not in capsys.readouterr().out and third["terminals"].sum() == 4
    assert len(list((folder / ".lps-cache").glob("robot-*.npz"))) == 2  # the stale entry of these options went
    # A damaged cache is rebuilt, not trusted.
    for cache in (folder / ".lps-cache").glob("robot-*.npz"):
        cache.write_bytes(b"not an npz")
    again = load_folder(folder, cfg, chunk_len=H, progress=False)
    assert "ignoring the cache" in capsys.readouterr().out and again["terminals"].sum() == 4


def test_cache_sees_an_edit_that_keeps_size_and_mtime(tmp_path, capsys):
    """Issue 32 item 1: one value edited in place, size and mtime restored: the cache is keyed on
    content, so the edited value is what loads."""
    folder = hdf5_folder(tmp_path / "d", success=2, failure=0, steps=12, size=8)
    cfg = RobotDataConfig(image_size=0)
    load_folder(folder, cfg, chunk_len=H, progress=False)
    path = folder / "success" / "episode_001.h5"
    st = path.stat()
    with h5py.File(path, "r+") as f:
        f["action/gripper_position"][3] = 0.123
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    data = load_folder(folder, cfg, chunk_len=H, progress=False)
    assert "from cache" not in capsys.readouterr().out
    assert np.isclose(data["actions"][12 + 3, -1], 0.123)


def test_cache_with_rows_missing_is_rebuilt(tmp_path, capsys):
    """Issue 32 item 2: an entry rewritten with rows missing (consistently) is not used."""
    from lps.data import robot_cache

    folder = hdf5_folder(tmp_path / "d", success=2, failure=0, steps=12, size=8)
    cfg = RobotDataConfig(image_size=0)
    load_folder(folder, cfg, chunk_len=H, progress=False)
    (entry,) = (folder / ".lps-cache").glob("robot-*.npz")
    with np.load(entry) as f:
        arrays = {k: f[k] for k in f.files}
    cut = {k: (v[:-4] if k in ("state", "action") or k.startswith("images/") else v) for k, v in arrays.items()}
    cut["lengths"] = arrays["lengths"] - np.array([0, 4])
    np.savez(entry, **cut)
    with pytest.raises(ValueError, match="do not match the digest"):
        robot_cache.read(entry)
    data = load_folder(folder, cfg, chunk_len=H, progress=False)
    assert "ignoring the cache" in capsys.readouterr().out and len(data["actions"]) == 24


def test_droid_obs_to_lps_matches_training_rows(folder):
    path = folder / "success" / "episode_002.h5"
    ep = read_episode(path, CFG)
    raw = _raw_obs(path, 11)
    obs = droid_obs_to_lps(raw, CFG)
    for cam in ("ext1_left", "wrist_left"):
        np.testing.assert_array_equal(obs["image"][cam], ep["observations"]["image"][cam][11])
    np.testing.assert_allclose(obs["state"], ep["observations"]["state"][11])
    # Nested under "observation", or already ours, gives the same.
    np.testing.assert_array_equal(droid_obs_to_lps({"observation": raw}, CFG)["image"]["wrist_left"], obs["image"]["wrist_left"])
    np.testing.assert_array_equal(droid_obs_to_lps(obs, CFG)["image"]["ext1_left"], obs["image"]["ext1_left"])
    with pytest.raises(ValueError, match="the policy needs 2"):
        droid_obs_to_lps({**raw, "image": {"ext1_left": raw["image"]["ext1_left"]}}, CFG)
    # Cameras by identity (issue 31 item 3): another serial is refused, not slotted in by sort order.
    cameras = {c: {"shape": [32, 32, 3], "channels": 4, "order": "bgr"} for c in ("ext1_left", "wrist_left")}
    swapped = {**raw, "image": {"zz_left": raw["image"]["ext1_left"], "wrist_left": raw["image"]["wrist_left"]}}
    with pytest.raises(ValueError, match=r"missing \['ext1_left'\].*unknown \['zz_left'\]"):
        droid_obs_to_lps(swapped, CFG, cameras)
    with_right = {**raw, "image": {**raw["image"], "ext1_right": raw["image"]["ext1_left"]}}  # DROID sends both views
    np.testing.assert_array_equal(droid_obs_to_lps(with_right, CFG, cameras)["image"]["ext1_left"], obs["image"]["ext1_left"])
    rgb = {**raw, "image": {c: v[..., :3] for c, v in raw["image"].items()}}  # 3 channels for a BGRA-trained run
    with pytest.raises(ValueError, match="sends 3-channel frames; this run was trained on 4-channel BGRA"):
        droid_obs_to_lps(rgb, CFG, cameras)
    with pytest.raises(ValueError, match="lacks 'observation/robot_state/cartesian_position'"):
        droid_obs_to_lps({"image": raw["image"]}, CFG)
    with pytest.raises(ValueError, match="has 'state' but no 'image'"):  # ours, half of it: named as such
        droid_obs_to_lps({"state": obs["state"]}, CFG)


def test_append_episodes(folder):
    a = read_episode(folder / "success" / "episode_000.h5", CFG)
    b = read_episode(folder / "failure" / "episode_006.h5", CFG)
    data = append_episodes(append_episodes(None, [a]), [b])
    assert len(data["actions"]) == 80 and data["terminals"].sum() == 2
    np.testing.assert_array_equal(data["observations"]["image"]["ext1_left"][40:], b["observations"]["image"]["ext1_left"])
    with pytest.raises(DatasetError, match="terminal"):
        append_episodes(data, [{**a, "terminals": np.zeros(40, bool)}])


def test_train_eval_and_load_policy_end_to_end(folder, tmp_path):
    """`lps train --dataset DIR` on images + proprio, `lps eval RUN --dataset HELD_OUT`, then
    `load_policy` on a raw DROID observation dict."""
    import lps

    held_out = hdf5_folder(tmp_path / "held-out", success=2, failure=0, steps=40, size=32, seed=1)
    run = tmp_path / "run"
    # The robot preset (IMPALA encoder, DiT base, cosine schedule) with tiny networks.
    small = ["--dit-width", "16", "--dit-depth", "1", "--dit-heads", "2", "--actor-hidden", "32", "--critic-hidden", "32", "32",
             "--encoder", "impala-small", "--encoder-features", "16"]  # fmt: skip
    run_cli("train", "--dataset", folder, "--preset", "robot", "--steps", "6", "--log-every", "3", "--batch-size", "8",
            "--save-every", "6", "--image-size", "32", "--run-dir", run, "--no-progress", *small, cwd=tmp_path, check=True,
            timeout=420)  # fmt: skip  # one IMPALA per camera and per network: compilation takes minutes on a loaded CPU
    config = json.loads((run / "config.json").read_text())
    assert config["spec"]["cameras"] == [["ext1_left", [32, 32, 3]], ["wrist_left", [32, 32, 3]]]
    assert config["spec"]["obs_dim"] == 7 and config["spec"]["image_shape"] is None
    assert json.loads((run / "cameras.json").read_text())["wrist_left"] == {"channels": 4, "order": "bgr", "shape": [32, 32, 3]}
    assert config["agent_config"]["base_arch"] == "mfdit" and config["train"]["lr_schedule"] == "cosine"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss/critic" in r] == [3, 6]

    from lps.deploy.offline_eval import evaluate_on_dataset

    result = evaluate_on_dataset(run, held_out)
    assert result["offline/episodes"] == 2 and result["offline/chunks"] == 2 * 7
    assert 0 < result["offline/action_mse"] < 4 and result == evaluate_on_dataset(run, held_out)
    assert json.loads((run / "offline-eval.json").read_text())["offline/action_mae"] == result["offline/action_mae"]

    import jax

    policy = lps.load_policy(run)
    raw = _raw_obs(held_out / "success" / "episode_000.h5", 0)
    chunk = policy(raw, key=jax.random.PRNGKey(0))
    assert chunk.shape == (H, 7) and np.all(np.abs(chunk) <= 1)
    # Our dict, as a batch (of one: no new compilation), gives the same chunk as the raw dict.
    ours = droid_obs_to_lps(raw, CFG)
    batch = policy(jax.tree_util.tree_map(lambda v: v[None], ours), key=jax.random.PRNGKey(0))
    assert batch.shape == (1, H, 7)
    np.testing.assert_allclose(batch[0], chunk, atol=1e-6)
    frames = {c: np.zeros((1, 32, 32, 3), np.uint8) for c in ("ext1_left", "wrist_left")}
    with pytest.raises(ValueError, match="policy takes state"):
        policy({"state": np.zeros((1, 3), np.float32), "image": frames})
    with pytest.raises(ValueError, match=r"unknown \['zz_left'\]"):
        policy({"state": np.zeros((1, 7), np.float32), "image": {**frames, "zz_left": frames["ext1_left"]}})


def test_cli_data_robot_and_bad_folder(folder, tmp_path):
    out = run_cli("data", "robot", folder, "--image-size", "32", cwd=tmp_path, check=True)
    assert "7 episodes (5 success, 2 failure)" in out.stdout and "'wrist_left' (32, 32, 3)" in out.stdout
    assert "lps train --preset robot --dataset" in out.stdout and "--image-size 32" in out.stdout
    os.makedirs(tmp_path / "empty" / "success")
    out = run_cli("train", "--dataset", tmp_path / "empty", "--steps", "1", cwd=tmp_path)
    assert out.returncode == 1 and "holds no episodes" in out.stderr
