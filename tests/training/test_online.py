"""Offline-to-online fine-tuning: the replay buffer's chunk sampling and mixes, labelling online
rows like the offline data, the online phase on the toy bandit, exact resume, and bad input."""

from __future__ import annotations

import json
import os
import signal

import helpers
import jax
import numpy as np
import pytest

from lps.agents import LPSConfig
from lps.data import replay, toy
from lps.data.sampler import chunk_starts
from lps.training import online, rundir
from lps.training.config import TrainConfig, preset, with_flags
from lps.training.envs import ChunkOutcome
from lps.training.loop import train
from lps.training.plan import resolve

H = 3


def episodes_data(lengths: list[int], first_id: int = 0) -> dict[str, np.ndarray]:
    """Row-layout episodes whose observation row is (episode id, t) so a chunk's rows can be traced."""
    obs, terminals = [], []
    for i, n in enumerate(lengths):
        obs += [(first_id + i, t) for t in range(n)]
        terminals += [False] * (n - 1) + [True]
    obs = np.asarray(obs, np.float32)
    rows = len(obs)
    return {
        "observations": obs,
        "actions": np.tile(obs[:, :1], (1, 2)) / 100.0,
        "rewards": obs[:, 1].copy(),
        "masks": np.ones(rows, np.float32),
        "terminals": np.asarray(terminals),
    }


def check_chunks(batch: dict) -> None:
    """Every chunk's rows are consecutive rows of one episode, and so is the observation after it."""
    first, after = np.asarray(batch["observations"]), np.asarray(batch["next_observations"])
    assert np.array_equal(first[:, 0], after[:, 0]), "a chunk crossed an episode"
    assert np.array_equal(after[:, 1] - first[:, 1], np.full(len(first), H))
    # The reward of row t is t here: the discounted chunk return pins down the chunk's rows.
    t = first[:, 1:2] + np.arange(H)
    np.testing.assert_allclose(np.asarray(batch["chunk_return"]), np.sum(t * 0.9 ** np.arange(H), -1), rtol=1e-5)


def test_replay_chunks_never_cross_episodes_and_include_new_rows():
    offline = episodes_data([5, 4, 7])
    buffer = replay.create(offline, H, capacity=64)
    assert int(buffer.num_starts) == len(chunk_starts(offline["terminals"], H))
    new = episodes_data([6, 3, 2, 9], first_id=10)  # episodes of 3 and 2 rows hold no whole chunk
    buffer = replay.append(buffer, new, H, block_rows=32)
    all_terminals = np.concatenate([offline["terminals"], new["terminals"]])
    expected = chunk_starts(all_terminals, H)
    assert int(buffer.num_starts) == len(expected)
    np.testing.assert_array_equal(np.asarray(buffer.starts[: len(expected)]), expected)
    assert not np.asarray(buffer.starts[len(expected) :]).any()
    episode_ids = set()
    for i in range(20):
        batch = replay.sample(buffer, jax.random.PRNGKey(i), 64, H, 0.9, "buffer")
        check_chunks(batch)
        episode_ids |= set(np.asarray(batch["observations"])[:, 0].astype(int).tolist())
    assert {10, 13} <= episode_ids  # new rows are sampled
    assert not {11, 12} & episode_ids  # too short for a chunk
    with pytest.raises(ValueError, match="whole episode"):
        unfinished = dict(new, terminals=np.zeros_like(new["terminals"]))
        replay.append(buffer, unfinished, H, block_rows=32)
    with pytest.raises(MemoryError, match="full"):
        replay.append(buffer, episodes_data([30]), H, block_rows=32)


def test_episodes_in_progress_are_sampled_from_the_staging_area():
    offline = episodes_data([5, 4, 7])
    buffer = replay.create(offline, H, capacity=64 + 20, staging_rows=20)  # two segments of 10 rows
    committed = int(buffer.num_starts)
    playing = [episodes_data([6], first_id=20), episodes_data([2], first_id=21)]  # rows so far, latest last
    buffer = replay.stage(buffer, playing, committed, H)
    assert int(buffer.num_starts) == committed + 3  # 6 rows so far: chunks at t = 0, 1, 2 fit; 2 rows: none
    seen = set()
    for i in range(10):
        batch = replay.sample(buffer, jax.random.PRNGKey(i), 64, H, 0.9, "buffer")
        check_chunks(batch)
        seen |= set(np.asarray(batch["observations"])[:, 0].astype(int).tolist())
    assert 20 in seen and 21 not in seen
    playing[0] = episodes_data([9], first_id=20)  # it went on: now 6 chunks fit
    buffer = replay.stage(buffer, playing, committed, H)
    assert int(buffer.num_starts) == committed + 6
    # The wave ends: unstage, then append the finished episodes for good.
    buffer = replay.stage(buffer, [], committed, H)
    assert int(buffer.num_starts) == committed
    buffer = replay.append(buffer, episodes_data([9, 2], first_id=20), H, block_rows=32)
    assert int(buffer.num_starts) == committed + 6 and int(buffer.num_rows) == 16 + 11
    with pytest.raises(MemoryError, match="full"):  # appends stop where the staging area starts
        replay.append(buffer, episodes_data([40]), H, block_rows=64)


def test_staging_only_the_new_rows_gives_the_buffer_of_a_whole_rewrite():
    # The online phase stages each round's new rows only (`since`); the staged rows, starts and
    # counts must equal staging the episodes whole, every round.
    offline = episodes_data([5, 4, 7])
    grown = [episodes_data([9], first_id=20), episodes_data([12], first_id=21), episodes_data([4], first_id=22)]
    rng = np.random.default_rng(0)
    for ep in grown:  # distinct rewards and masks per row, so a row written at the wrong place shows
        ep["rewards"] = rng.normal(size=len(ep["rewards"])).astype(np.float32)
        ep["masks"] = rng.uniform(size=len(ep["masks"])).astype(np.float32)

    def prefix(ep, n):  # the episode after n rows: its latest row marked as the terminal, with no action yet
        rows = {k: np.array(v[:n]) for k, v in ep.items()}
        rows["terminals"][:] = False
        rows["terminals"][-1] = True
        for key in ("actions", "rewards", "masks"):
            rows[key][-1] = 0
        return rows

    incremental = replay.create(offline, H, capacity=64 + 3 * 14, staging_rows=3 * 14)
    committed = int(incremental.num_starts)
    since = [0, 0, 0]
    for n in (3, 6, 9, 12):
        playing = [prefix(ep, min(n, len(ep["actions"]))) for ep in grown]
        incremental = replay.stage(incremental, playing, committed, H, since)
        since = [len(p["actions"]) if len(p["actions"]) == len(ep["actions"]) else len(p["actions"]) - 1
                 for p, ep in zip(playing, grown)]  # fmt: skip
        whole = replay.stage(replay.create(offline, H, capacity=64 + 3 * 14, staging_rows=3 * 14), playing, committed, H)
        assert int(incremental.num_starts) == int(whole.num_starts)
        np.testing.assert_array_equal(np.asarray(incremental.starts), np.asarray(whole.starts))
        for k, p in enumerate(playing):  # each segment's rows so far
            seg = slice(64 + 14 * k, 64 + 14 * k + len(p["actions"]))
            for key in ("observations", "actions", "rewards", "masks"):
                np.testing.assert_array_equal(np.asarray(getattr(incremental, key))[seg],
                                              np.asarray(getattr(whole, key))[seg], err_msg=f"{key} at n={n}")  # fmt: skip
    assert int(incremental.num_starts) == committed + sum(len(chunk_starts(ep["terminals"], H)) for ep in grown)


def test_balanced_mix_takes_half_of_each_batch_online():
    offline = episodes_data([50] * 8)
    buffer = replay.create(offline, H, capacity=600)
    n_off = int(buffer.num_offline_rows)
    key = jax.random.PRNGKey(0)
    rows = np.asarray(replay.sample_rows(buffer, key, 256, "balanced"))
    assert (rows < n_off).all()  # nothing online yet: all offline
    buffer = replay.append(buffer, episodes_data([10, 10], first_id=100), H, block_rows=64)
    for i in range(5):
        rows = np.asarray(replay.sample_rows(buffer, jax.random.PRNGKey(i), 256, "balanced"))
        assert (rows >= n_off).sum() == 128
        check_chunks(replay.sample(buffer, jax.random.PRNGKey(i), 256, H, 0.9, "balanced"))
    rows = np.asarray(replay.sample_rows(buffer, key, 4096, "buffer"))
    share = (rows >= n_off).mean()  # 14 of 390 chunk starts are online
    assert 0.02 < share < 0.07, share
    with pytest.raises(ValueError, match="online-mix"):
        replay.make_sampler("half")


def test_online_rows_are_labelled_like_the_offline_data():
    """Row t carries step t's reward and success (OGBench computes both on the state the step
    starts from, as relabelling does for row t); sparse rewards are -(r != 0); masks are 0 on
    success; the toy's rows never bootstrap."""

    def outcome(rewards, successes, done, obs_dim=3):
        n = len(rewards)
        return ChunkOutcome(np.full(obs_dim, n, np.float32), np.asarray(rewards, float), n, done, successes[-1],
                            np.zeros((n, obs_dim), np.float32), np.asarray(successes, float))  # fmt: skip

    for sparse in (False, True):
        ep = online._EpisodeRows(0, np.zeros(3, np.float32), toy_rows=False, sparse=sparse)
        ep.add(np.ones((H, 2)), outcome([-2.0, -1.0, -1.0], [0, 0, 0], False))
        ep.add(np.ones((H, 2)), outcome([0.0], [1], True))
        rows = ep.rows()
        dense = np.array([-2, -1, -1, 0, 0], np.float32)
        np.testing.assert_array_equal(rows["rewards"], -(dense != 0).astype(np.float32) if sparse else dense)
        np.testing.assert_array_equal(rows["masks"], [1, 1, 1, 0, 0])
        np.testing.assert_array_equal(rows["terminals"], [0, 0, 0, 0, 1])
        assert rows["actions"].shape == (5, 2) and not rows["actions"][-1].any()
    toy = online._EpisodeRows(0, np.zeros(1, np.float32), toy_rows=True, sparse=False)
    toy.add(np.full((1, 2), 0.7), outcome([1.0], [1], True, obs_dim=1))
    rows = toy.rows()
    np.testing.assert_array_equal(rows["rewards"], [1.0, 0.0])  # the action's reward, as lps.data.toy's data
    np.testing.assert_array_equal(rows["masks"], [0.0, 0.0])


def toy_online_config(run_dir, **kw) -> TrainConfig:
    return helpers.toy_config(run_dir, **{
        "steps": 100, "log_every": 50, "save_every": 100, "online_steps": 192, "online_envs": 16, "progress": False,
        "online_workers": 0, **kw})  # fmt: skip


SMALL = LPSConfig(base_hidden=(32, 32), critic_hidden=(32, 32), actor_hidden=(16,))


def rows_of(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    for r in rows:
        r.pop("steps_per_sec", None), r.pop("env_steps_per_sec", None)  # timings differ
    return rows


def train_killed_at_append(monkeypatch, cfg, n: int) -> None:
    """Train `cfg` until its n-th wave is appended to the replay buffer, killed there (Ctrl-C)."""
    real_append, calls = replay.append, []

    def append_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt("killed")
        return real_append(*args, **kwargs)

    monkeypatch.setattr(replay, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        train("lps", cfg, SMALL)
    monkeypatch.setattr(replay, "append", real_append)


def test_online_resume_equals_uninterrupted(tmp_path, monkeypatch):
    straight_cfg = toy_online_config(tmp_path / "straight")
    train("lps", straight_cfg, SMALL)

    # Killed in the online phase at the 8th wave's end, after its checkpoint at gradient step 212
    # (env step 112).
    killed_cfg = toy_online_config(tmp_path / "killed")
    train_killed_at_append(monkeypatch, killed_cfg, 8)
    killed_rows = rows_of(killed_cfg.run_dir)
    assert 0 < max(r.get("env_step", 0) for r in killed_rows) < 192
    train("lps", killed_cfg, SMALL, resume=True)

    # Ctrl-C during the 5th wave: the wave is played to its end, checkpointed, and the run stops
    # (not at a save_every boundary, so the checkpoint is the signal's own).
    signalled_cfg = toy_online_config(tmp_path / "signalled")
    real_append, calls = replay.append, []

    def append_with_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real_append(*args, **kwargs)

    monkeypatch.setattr(replay, "append", append_with_ctrl_c)
    with pytest.raises(rundir.TrainingInterrupted, match=f"stopped by SIGINT.*--resume {signalled_cfg.run_dir}"):
        train("lps", signalled_cfg, SMALL)
    monkeypatch.setattr(replay, "append", real_append)
    assert len(calls) == 5  # no episode was played after the signal's wave
    assert max(r.get("env_step", 0) for r in rows_of(signalled_cfg.run_dir)) < 192
    train("lps", signalled_cfg, SMALL, resume=True)

    # The whole online state (train state, buffer, env steps, episodes, RNG) and the plain
    # checkpoint are byte for byte those of the uninterrupted run, and so are the metrics rows.
    for other in ("killed", "signalled"):
        for name in (f"{online.ONLINE_DIR}/checkpoint.msgpack", "checkpoint.msgpack"):
            assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / other / name).read_bytes(), name
    rows = rows_of(straight_cfg.run_dir)
    assert rows == rows_of(killed_cfg.run_dir)
    # The signal's checkpoint writes the metrics row pending at it, which the straight run
    # averaged into a later row, so only the training rows' cuts differ.
    steps, signalled_steps = ([r["step"] for r in rows_of(d)] for d in (straight_cfg.run_dir, signalled_cfg.run_dir))
    assert len(signalled_steps) == len(steps) + 1 and set(steps) < set(signalled_steps)
    assert max(r.get("env_step", 0) for r in rows) == 192
    assert any("env_step" in r and "loss/critic" in r and "online/return" in r for r in rows)


def test_online_fine_tuning_raises_the_toy_bandit_return(tmp_path, monkeypatch):
    """The offline data overstates one cluster (true payoff 0.5, labelled 1.5); QC-FQL trained on
    it, then fine-tuned online with balanced batches, learns the true rewards from its episodes and
    raises its return above the offline policy's, and above an offline-only control given the same
    gradient steps (so the online episodes, not the extra updates, raise it)."""
    import lps.training.setup
    from lps.agents import config_class
    from lps.data import toy

    def overstated(plan, cfg, run_dirs=()):
        data = toy.make_dataset(cfg.env, seed=cfg.data_seed)
        near = np.linalg.norm(data["actions"] - np.array([-0.7, 0.7]), axis=-1) < 0.25
        data["rewards"] = np.where(near, 1.5, data["rewards"]).astype(np.float32)
        return data

    monkeypatch.setattr(lps.training.setup, "load_data", overstated)
    finals = {}
    for name, steps, online_steps in (("online", 600, 1200), ("control", 1800, 0)):
        cfg, agent_cfg = preset("toy", config_class("qc-fql"))
        cfg = with_flags(cfg, run_dir=str(tmp_path / name), progress=False, steps=steps, eval_every=600,
                                  save_every=600, log_every=100, eval_episodes=400, online_steps=online_steps,
                                  online_envs=24, online_workers=0, online_mix="balanced")  # fmt: skip
        train("qc-fql", cfg, agent_cfg)
        finals[name] = [r for r in rows_of(cfg.run_dir) if "eval/return" in r]
    offline = next(r for r in finals["online"] if r["step"] == 600)
    online_final, control_final = finals["online"][-1], finals["control"][-1]
    assert online_final["env_step"] == 1200 and control_final["step"] == online_final["step"] == 1800
    assert online_final["eval/return"] > offline["eval/return"] + 0.05, (offline, online_final)
    assert online_final["eval/return"] > control_final["eval/return"] + 0.05, (control_final, online_final)


def test_online_bad_input(tmp_path):
    with pytest.raises(ValueError, match="live environment"):
        train("lps", toy_online_config(tmp_path / "a", dataset=str(tmp_path / "own.npz")), SMALL)
    with pytest.raises(ValueError, match="one seed per run"):
        train("lps", toy_online_config(tmp_path / "b", seeds=(0, 1)), SMALL)
    with pytest.raises(MemoryError, match=r"would need [0-9.]+ GiB"):
        train("lps", toy_online_config(tmp_path / "c", online_steps=2 * 10**9), SMALL)  # within the int32 bound
    assert not (tmp_path / "c" / "checkpoint.msgpack").exists()  # refused before the offline steps
    for flag, value in (("utd", 0), ("online_envs", 0), ("online_steps", -1)):
        with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')}"):
            with_flags(TrainConfig(), **{flag: value})
    with pytest.raises(MemoryError, match="2.00 GiB"):
        replay.check_fits(2**27, 16, 2**30, "this machine")


def test_cli_online_on_dataset_is_refused(tmp_path):
    np.savez(tmp_path / "own.npz", **{k: v for k, v in episodes_data([10, 10]).items()})
    out = helpers.run_cli("train", "--preset", "toy", "--dataset", tmp_path / "own.npz", "--online-steps", "100",
                          "--run-dir", tmp_path / "run", cwd=tmp_path)  # fmt: skip
    assert out.returncode != 0
    assert "--online-steps needs a live environment" in out.stderr
    assert "Traceback" not in out.stderr


def test_report_draws_the_offline_to_online_curve(tmp_path):
    from lps.experiments.report import collect, report

    def fake_run(name, seed, online_steps):
        run = tmp_path / "runs" / name / f"seed{seed}"
        run.mkdir(parents=True)
        train_cfg = {"env": "toy-bandit", "seed": seed, "steps": 1000, "online_steps": online_steps}
        (run / "config.json").write_text(json.dumps({"agent": name, "train": train_cfg, "agent_config": {}}))
        rows = [{"step": 500, "eval/success": 0.1}, {"step": 1000, "eval/success": 0.2}]
        if online_steps:
            # --utd 2; seeds reach an evaluation at slightly different env steps (episodes end in waves)
            rows += [{"step": 1800, "env_step": 400.0 + 2 * seed, "eval/success": 0.5},
                     {"step": 2600, "env_step": 800.0 + 2 * seed, "eval/success": 0.7 + 0.1 * seed}]  # fmt: skip
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    for seed in (0, 1):
        fake_run("lps", seed, 800)
    fake_run("bc-fm", 0, 0)
    runs = {(r.agent, r.seed): r for r in collect(tmp_path / "runs")}
    np.testing.assert_array_equal(runs["lps", 0].phase_steps, [500, 1000, 1400, 1800])
    np.testing.assert_array_equal(runs["lps", 1].phase_steps, [500, 1000, 1402, 1802])
    np.testing.assert_array_equal(runs["bc-fm", 0].phase_steps, [500, 1000])
    # The curve keeps every evaluation the seeds share, drawn at their mean env step.
    from lps.experiments.report import _seed_band

    class Recorder:
        def plot(self, x, y, **kw):
            self.x, self.y = list(x), list(y)
            return (type("Line", (), {"get_color": lambda self: "C0"})(),)

        def fill_between(self, *a, **kw):
            pass

    ax = Recorder()
    group = [runs["lps", 0], runs["lps", 1]]
    assert _seed_band(ax, group, lambda r: r.phase_steps, "lps", np.random.default_rng(0), 50)
    np.testing.assert_allclose(ax.x, [500, 1000, 1401, 1801])
    np.testing.assert_allclose(ax.y, [0.1, 0.2, 0.5, 0.75])
    out = report(tmp_path / "runs", reps=50)
    names = {p.name for p in out["files"]}
    assert {"online-toy-bandit.png", "online-toy-bandit.svg", "curves-toy-bandit.png"} <= names
    assert out["cells"]["lps"]["toy-bandit"]["mean"] == pytest.approx(0.75)


def test_online_labels_match_ogbench_relabelling():
    """On cube-single, the rows an online episode writes carry the rewards and masks that OGBench's
    own relabelling (what the offline data gets) gives the same states: the cube is moved onto its
    target after the first step, so the episode succeeds and the labels change."""
    pytest.importorskip("ogbench", reason='needs OGBench: pip install "lps[ogbench]"')
    import mujoco

    from lps.data import tasks
    from lps.training.envs import LocalEnvs

    for reward in ("dense", "sparse"):
        task = tasks.parse_task("cube-single-play-singletask-task1-v0", reward)
        envs = LocalEnvs(task.env_id, 1)
        try:
            obs = envs.reset({0: 7})[0]
            env = envs.envs[0].unwrapped
            qpos = [env._data.qpos.copy()]
            episode = online._EpisodeRows(0, obs, toy_rows=False, sparse=task.sparse)
            for i in range(10):  # one-step chunks, to record every state's qpos
                chunk = np.zeros((1, 5), np.float32)
                outcome = envs.step_chunks({0: chunk})[0]
                episode.add(chunk, outcome)
                if i == 0:  # the cube onto its target, as if this step had put it there
                    env._data.qpos[14:17] = env._data.mocap_pos[0]
                    mujoco.mj_forward(env._model, env._data)
                    env.post_step()
                qpos.append(env._data.qpos.copy())
                if outcome.done:
                    break
        finally:
            envs.close()
        assert outcome.done and outcome.success == 1.0
        rows = episode.rows()
        want_rewards, want_masks = tasks.relabel(task, {"qpos": np.asarray(qpos, np.float32)})
        np.testing.assert_array_equal(rows["rewards"], want_rewards)
        np.testing.assert_array_equal(rows["masks"], want_masks)
        assert want_masks[0] == 1.0 and want_masks[-1] == 0.0  # the labels did change


def test_overlap_equals_strict_when_no_round_is_stale(tmp_path):
    """The toy bandit's episodes last one step, so every wave is one round and its updates run at
    the wave's end in both modes: nothing is acted stale, and overlap must reproduce the strict
    run byte for byte (same updates on the same buffers, same rows)."""
    runs = {}
    for sync in (True, False):
        cfg = toy_online_config(tmp_path / str(sync), steps=50, save_every=50, online_steps=32, online_envs=4,
                                online_sync=sync)  # fmt: skip
        train("lps", cfg, SMALL)
        runs[sync] = cfg.run_dir
    name = f"{online.ONLINE_DIR}/checkpoint.msgpack"
    assert (tmp_path / "True" / name).read_bytes() == (tmp_path / "False" / name).read_bytes()
    assert rows_of(runs[True]) == rows_of(runs[False])
    assert max(r.get("env_step", 0) for r in rows_of(runs[False])) == 32


def test_online_evaluation_in_the_background_gives_the_synchronous_rows(tmp_path):
    """--eval-async true: evaluations during the online phase run beside it on a snapshot of the
    parameters (the offline mechanism) and must log exactly what evaluating in line does."""
    runs = {}
    for mode in ("false", "true"):
        cfg = toy_online_config(tmp_path / mode, steps=200, save_every=100, online_steps=48, online_envs=4,
                                log_every=25, eval_every=25, eval_episodes=50, eval_async=mode)  # fmt: skip
        train("lps", cfg, SMALL)
        runs[mode] = rows_of(cfg.run_dir)
    evals = [r for r in runs["true"] if "eval/return" in r]
    online_evals = [r for r in evals if r.get("env_step", 0) > 0]
    assert len(online_evals) >= 2 and any(r["eval/return"] != 0 for r in online_evals)  # evaluated online, not all alike
    for r in runs["true"] + runs["false"]:
        r.pop("eval/env_steps_per_sec", None)
    assert runs["true"] == runs["false"]


class FourStepToy(toy.ToyEnv):
    """The toy bandit played for 4 steps per episode (truncated then), so that a wave is 4 rounds
    of chunks and overlap acts rounds 2..4 with the parameters of one round before."""

    max_episode_steps = 4

    def reset(self, seed=None):
        self.t = 0
        return super().reset(seed)

    def step(self, action):
        ob, reward, _, _, info = super().step(action)
        self.t += 1
        return ob, reward, False, self.t >= 4, info


def test_overlap_resumes_exactly_with_multi_round_episodes(tmp_path, monkeypatch):
    """Overlap with episodes of 4 rounds (acting really one round stale): killed and resumed, the
    run is byte for byte the uninterrupted one; strict alternation does as many updates but plays
    other actions. (Strict resume is the toy test above, where each wave is one round.)"""
    sync = False
    monkeypatch.setattr(toy, "ToyEnv", FourStepToy)
    # 6 waves of 4 envs x 4 steps; a checkpoint at the wave crossing gradient step 100 (the 4th).
    kw = dict(steps=50, log_every=25, save_every=50, online_steps=96, online_envs=4, online_sync=sync)
    straight_cfg = toy_online_config(tmp_path / "straight", **kw)
    train("lps", straight_cfg, SMALL)

    killed_cfg = toy_online_config(tmp_path / "killed", **kw)
    train_killed_at_append(monkeypatch, killed_cfg, 5)
    assert 0 < max(r.get("env_step", 0) for r in rows_of(killed_cfg.run_dir)) < 96
    train("lps", killed_cfg, SMALL, resume=True)
    for name in (f"{online.ONLINE_DIR}/checkpoint.msgpack", "checkpoint.msgpack"):
        assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name
    rows = rows_of(straight_cfg.run_dir)
    assert rows == rows_of(killed_cfg.run_dir)
    assert rows[-1]["step"] == 50 + 96 and max(r.get("env_step", 0) for r in rows) == 96
    if not sync:
        strict_cfg = toy_online_config(tmp_path / "strict", **{**kw, "online_sync": True})
        train("lps", strict_cfg, SMALL)
        strict_rows = rows_of(strict_cfg.run_dir)
        assert [r["step"] for r in strict_rows] == [r["step"] for r in rows]
        assert strict_rows != rows


def test_online_start_steps_owe_no_updates_before_the_warm_up(tmp_path):
    from lps.training import online

    train("lps", toy_online_config(tmp_path / "run", online_start_steps=96), SMALL)
    assert rows_of(tmp_path / "run")[-1]["step"] == 100 + (192 - 96)  # offline + utd x steps past the warm-up

    assert [online.owed_steps(e, 10, 25) for e in (0, 10, 20, 30)] == [0, 0, 5, 10]
    toy_cfg = toy_online_config("unused")
    assert online.start_steps(toy_cfg.online, resolve(toy_cfg)) == 0  # toy bandits: no warm-up
    ogbench = TrainConfig(env="cube-single-play-singletask-task1-v0")
    assert online.start_steps(ogbench.online, resolve(ogbench)) == online.QCHUNKING_START_STEPS == 5000
    assert online.start_steps(with_flags(ogbench, online_start_steps=7).online, resolve(ogbench)) == 7
    with pytest.raises(ValueError, match="--online-start-steps"):
        with_flags(TrainConfig(), online_start_steps=-1)
    # A run recorded before the warm-up existed resumes without one.
    from lps.training.config import flat, from_dict, to_dict

    recorded = flat(ogbench) | {"robot": to_dict(ogbench.robot), "distributed": to_dict(ogbench.distributed)}
    del recorded["online_start_steps"], recorded["online_lr_schedule"]  # flat, as before the eval/online groups
    old = from_dict(TrainConfig, recorded)
    assert online.start_steps(old.online, resolve(old)) == 0
    assert old.online.lr_schedule == "continue" and from_dict(TrainConfig, to_dict(ogbench)) == ogbench
