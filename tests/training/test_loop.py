"""The training loop: exact resume, reproducibility, and LPS on the toy bandit."""

import dataclasses
import json

import helpers
import jax
import numpy as np

import lps
from lps.agents import LPSConfig
from lps.training import checkpoint
from lps.training.config import preset, with_flags
from lps.training.loop import train
from lps.training.update import create_state, make_optimizer

SMALL = LPSConfig(base_hidden=(32, 32), critic_hidden=(32, 32), actor_hidden=(16,))


def toy_config(tmp_path, name, **kw):
    return helpers.toy_config(tmp_path / name, **{"steps": 400, "save_every": 200, **kw})


def load_state(run_dir, cfg):
    from lps.agents import make_agent
    from lps.training.config import load_config

    name, cfg, agent_cfg, spec = load_config(run_dir)
    agent = make_agent(name, agent_cfg, spec)
    return checkpoint.restore(run_dir, create_state(agent, make_optimizer(cfg), cfg.seed))


def leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_resume_is_exact(tmp_path):
    straight = toy_config(tmp_path, "straight")
    train("lps", straight, SMALL)
    half = toy_config(tmp_path, "halves", steps=200)
    train("lps", half, SMALL)
    train("lps", dataclasses.replace(half, steps=400), SMALL, resume=True)
    a, b = load_state(straight.run_dir, straight), load_state(half.run_dir, half)
    assert int(a.step) == int(b.step) == 400
    assert leaves_equal(a.params, b.params)
    assert leaves_equal(a.target_params, b.target_params)
    assert leaves_equal(a.opt_state, b.opt_state)
    # The metrics rows of the resumed run are those of the straight run.
    rows = lambda d: (tmp_path / d / "metrics.csv").read_text().splitlines()[1:]  # noqa: E731
    strip = lambda r: r.rsplit(",", 1)[0]  # drop steps_per_sec, a timing  # noqa: E731
    assert [strip(r) for r in rows("straight")] == [strip(r) for r in rows("halves")]


def test_same_seed_same_numbers_other_seed_differs(tmp_path):
    a = toy_config(tmp_path, "a", steps=200)
    b = toy_config(tmp_path, "b", steps=200)
    c = toy_config(tmp_path, "c", steps=200, seed=1)
    for cfg in (a, b, c):
        train("lps", cfg, SMALL)
    sa, sb, sc = (load_state(x.run_dir, x) for x in (a, b, c))
    assert leaves_equal(sa.params, sb.params)
    assert not leaves_equal(sa.params, sc.params)


def test_lps_on_toy_bandit_finds_best_cluster_within_support(tmp_path):
    """Untuned LPS (paper hyperparameters, small nets) steers to the best of four data modes. The
    three seeds train together (vmapped: the same numbers as three runs, see the test below)."""
    cfg, agent_cfg = preset("toy", LPSConfig)
    cfg = with_flags(cfg, run_dir=str(tmp_path / "toy"), progress=False, seeds=(0, 1, 2), steps=3000,
                              eval_every=3000, save_every=3000, log_every=500)  # fmt: skip
    summaries = train("lps", cfg, agent_cfg)
    finals = []
    for seed, summary in zip(cfg.seeds, summaries):
        lines = (tmp_path / "toy" / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()
        rows = [r for r in map(json.loads, lines) if "eval/success" in r]
        finals.append(rows[-1])
        assert summary["final_success"] == rows[-1]["eval/success"]
    on_best = [r["eval/success"] for r in finals]
    in_support = [r["eval/in_support"] for r in finals]
    assert sum(s > 0.9 for s in on_best) >= 2, on_best
    assert min(in_support) > 0.9, in_support
    policy = lps.load_policy(str(tmp_path / "toy" / "seed0"))
    assert policy(np.zeros(1)).shape == (1, 2)


def test_seeds_trained_together_match_separate_runs(tmp_path):
    """Seed-vmapped training gives each seed the parameters of its single-seed run."""
    together = toy_config(tmp_path, "together", steps=200, seeds=(0, 1, 2))
    summaries = train("lps", together, SMALL)
    assert [s["seed"] for s in summaries] == [0, 1, 2]
    for seed in (0, 2):
        alone = toy_config(tmp_path, f"alone{seed}", steps=200, seed=seed)
        train("lps", alone, SMALL)
        run_dir = tmp_path / "together" / f"seed{seed}"
        a, b = load_state(run_dir, together), load_state(alone.run_dir, alone)
        for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
            np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)
        # Each seed's directory is a complete single-seed run.
        _, cfg, _, _ = __import__("lps.training.config", fromlist=["load_config"]).load_config(run_dir)
        assert cfg.seed == seed and cfg.seeds == ()
        assert (run_dir / "metrics.csv").exists() and (run_dir / "summary.json").exists()
