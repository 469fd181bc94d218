"""The validation split: loading it, the fixed chunk set, the val/ metrics, and the trainer's hook."""

import dataclasses
import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lps.agents import Spec, config_class, make_agent, resolve_config
from lps.data import synthetic, toy
from lps.data.validate import validate
from lps.training import val_split
from lps.training.config import TrainConfig, agent_overrides
from lps.training.loop import train
from lps.training.plan import resolve
from tests.helpers import toy_config

SPEC = Spec(obs_dim=6, action_dim=2, chunk_len=3)
TASK = "cube-single-play-singletask-task1-v0"


def small_agent(name, **kw):
    cls = config_class(name)
    cfg = resolve_config(name, cls(**agent_overrides({"hidden": (32, 32)}, cls), **kw), TASK)
    return make_agent(name, cfg, SPEC)


def row_dataset(episodes=3, length=40, seed=0):
    return synthetic.row_dataset(episodes, length, SPEC.obs_dim, SPEC.action_dim, seed)


def test_fixed_chunks_are_seeded_capped_and_inside_episodes():
    data = row_dataset()
    a = val_split.fixed_chunks(data, SPEC.chunk_len, 0.99, max_chunks=50)
    b = val_split.fixed_chunks(data, SPEC.chunk_len, 0.99, max_chunks=50)
    assert a["observations"].shape == (50, SPEC.obs_dim) and a["actions"].shape == (50, SPEC.chunk_dim)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # Every chunk's next observation is H rows later in the same episode.
    rows = [int(np.flatnonzero((data["observations"] == o).all(1))[0]) for o in np.asarray(a["observations"])]
    next_rows = [int(np.flatnonzero((data["observations"] == o).all(1))[0]) for o in np.asarray(a["next_observations"])]
    assert all(n - r == SPEC.chunk_len and r // 40 == n // 40 for r, n in zip(rows, next_rows))
    whole = val_split.fixed_chunks(data, SPEC.chunk_len, 0.99)  # fewer chunks than the cap: all of them
    assert len(whole["observations"]) == 3 * (40 - SPEC.chunk_len)


@pytest.mark.parametrize("name", ["lps", "qc-mfql", "dsrl-na", "cfgrl", "bc-fm"])
def test_validation_metrics_present_and_finite(name):
    agent = small_agent(name)
    params = agent.init(jax.random.PRNGKey(0))
    target = {k: params[k] for k in agent.target_keys}
    val = val_split.fixed_chunks(row_dataset(), SPEC.chunk_len, 0.99)
    metrics = val_split.validation_metrics(agent, params, target, val, jax.random.PRNGKey(0))
    expected = {"val/bc_loss", "val/clip_fraction"} | ({"val/td_error", "val/q_gap"} if "critic" in params else set())
    assert set(metrics) == expected
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    assert 0.0 <= float(metrics["val/clip_fraction"]) <= 1.0
    assert float(metrics["val/bc_loss"]) > 0.0


def test_clip_fraction_counts_saturated_action_dimensions():
    agent = small_agent("qc-fql")
    params = agent.init(jax.random.PRNGKey(0))
    val = val_split.fixed_chunks(row_dataset(), SPEC.chunk_len, 0.99)

    def shifted(shift):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(params["actor"])
        out = [x + shift if (p[-1].key == "bias" and x.shape == (SPEC.chunk_dim,)) else x for p, x in leaves]
        return {**params, "actor": jax.tree_util.tree_unflatten(treedef, out)}

    def clip_fraction(shift):
        target = {"critic": params["critic"]}
        m = val_split.validation_metrics(agent, shifted(shift), target, val, jax.random.PRNGKey(0))
        return float(m["val/clip_fraction"])

    # Every output dimension pushed far outside the box; then half of them; then none.
    assert clip_fraction(jnp.full(SPEC.chunk_dim, -50.0)) == 1.0
    assert 0.5 <= clip_fraction(jnp.where(jnp.arange(SPEC.chunk_dim) % 2 == 0, 50.0, 0.0)) < 0.6
    assert clip_fraction(jnp.zeros(SPEC.chunk_dim)) < 0.1


def test_training_logs_val_rows_at_every_evaluation(tmp_path, monkeypatch):
    val = validate(toy.make_dataset(seed=1), 1, source="toy-val")
    monkeypatch.setattr(val_split, "load_validation_data", lambda plan, val_dataset, chunk_len: (val, "toy-val"))
    cfg = toy_config(tmp_path / "run", steps=200, eval_every=100, eval_episodes=16)
    cfg_lps = config_class("lps")(**agent_overrides({"hidden": (32, 32)}, config_class("lps")))
    train("lps", cfg, cfg_lps)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val_rows = [r for r in rows if "val/bc_loss" in r]
    assert [r["step"] for r in val_rows] == [100, 200]
    for r in val_rows:
        assert {"val/bc_loss", "val/td_error", "val/q_gap", "val/clip_fraction"} <= set(r)
        assert all(np.isfinite(v) for v in r.values())


def test_training_without_validation_data_says_so_once(tmp_path, capsys):
    cfg = toy_config(tmp_path / "run", steps=200, eval_every=100, eval_episodes=16)
    cfg_lps = config_class("lps")(**agent_overrides({"hidden": (32, 32)}, config_class("lps")))
    train("lps", cfg, cfg_lps)
    out = capsys.readouterr().out
    assert out.count("val/ metrics off") == 1 and "no validation data (toy task toy-bandit" in out
    rows = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"val/' not in rows and "eval/success" in rows


@pytest.mark.skipif(importlib.util.find_spec("ogbench") is None, reason="needs lps[ogbench]")
@pytest.mark.filterwarnings("ignore:.*precision lowered", "ignore:.*DISPLAY")
def test_ogbench_validation_file_is_loaded_and_relabelled(tmp_path):
    from lps.data import generate

    train_path, val_path = generate.generate(
        "cube-single", tmp_path, episodes=2, seed=0, workers=1, progress=False, max_episode_steps=40
    )
    cfg = TrainConfig(env=TASK, data_dir=str(tmp_path))
    data, source = val_split.load_validation_data(resolve(cfg), None, cfg.chunk_len)
    assert source == str(val_path)
    with np.load(val_path) as raw:
        np.testing.assert_array_equal(data["observations"], raw["observations"])
    assert set(np.unique(data["rewards"])) <= {-1.0, 0.0} and len(data["rewards"]) == 40
    val_path.unlink()
    data, source = val_split.load_validation_data(resolve(cfg), None, cfg.chunk_len)
    assert data is None and "cube-single-play-v0-val.npz" in source
    npz_plan = resolve(dataclasses.replace(cfg, dataset=str(train_path)))
    assert val_split.load_validation_data(npz_plan, None, cfg.chunk_len)[0] is None


def test_a_named_val_dataset_of_another_width_stops_the_run(tmp_path):
    """--val-dataset given by name but of other observation or action widths is a mistake: the run
    stops before its first step, saying both shapes (without the flag, a mismatch only turns val/ off)."""
    rows = 40
    terminals = np.zeros(rows, np.float32)
    terminals[19::20] = 1
    np.savez(tmp_path / "val.npz", observations=np.zeros((rows, 7), np.float32), actions=np.zeros((rows, 2), np.float32),
             rewards=-np.ones(rows, np.float32), terminals=terminals)  # fmt: skip
    cfg = toy_config(tmp_path / "run", steps=100, val_dataset=str(tmp_path / "val.npz"))
    cfg_lps = config_class("lps")(**agent_overrides({"hidden": (8,)}, config_class("lps")))
    with pytest.raises(ValueError, match=r"val\.npz has observations state \(7,\) .*give a --val-dataset"):
        train("lps", cfg, cfg_lps)
    assert not (tmp_path / "run" / "checkpoint.msgpack").exists()
