"""`lps report` on hand-written run directories whose answers are known: no training involved."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lps import cli
from lps.experiments.report import collect, report

pytest.importorskip("rliable", reason="needs lps[report]")

ROOT = Path(__file__).resolve().parents[2]
T1, T2 = "cube-single-play-singletask-task1-v0", "scene-play-singletask-task2-v0"


def make_run(path: Path, agent: str, task: str, seed: int, success: list[float], alpha: float | None = None,
             every: int = 1000, geometry: str = "sphere", val: bool = False) -> Path:  # fmt: skip
    """A run directory as `lps train` leaves it: training rows every 500 steps, evaluations every `every`."""
    path.mkdir(parents=True)
    steps = every * len(success)
    config = {
        "agent": agent,
        "train": {"env": task, "seed": seed, "steps": steps, "eval_episodes": 50, "eval_every": every},
        "agent_config": {"geometry": geometry, **({} if alpha is None else {"alpha": alpha})},
        "spec": {"obs_dim": 3, "action_dim": 2, "chunk_len": 5, "gamma": 0.99},
    }
    (path / "config.json").write_text(json.dumps(config))
    rows = [{"step": s, "loss/critic": 1.0} for s in range(500, steps + 1, 500)]
    rows += [{"step": every * (i + 1), "eval/success": x, "eval/return": x, "eval/length": 100.0}
             for i, x in enumerate(success)]  # fmt: skip
    if val:  # what lps.training.val_split logs beside each evaluation
        rows += [{"step": every * (i + 1), "val/bc_loss": 1.0 / (i + 1), "val/td_error": 0.1 * (i + 1),
                  "val/q_gap": 0.5 * i, "val/clip_fraction": 0.1} for i in range(len(success))]  # fmt: skip
    rows.sort(key=lambda r: r["step"])
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "metrics.csv").write_text("step\n")
    summary = {"agent": agent, "env": task, "seed": seed, "final_success": success[-1] if success else None,
               "best_success": max(success) if success else None, "wall_time_s": 1.0}  # fmt: skip
    (path / "summary.json").write_text(json.dumps(summary))
    return path


@pytest.fixture
def compare(tmp_path) -> Path:
    """A: 0.5 in every seed of two tasks. B: 0.2/0.4/0.6 on both (after a better earlier evaluation
    on seed 0, so --final max differs). Plus a run that never evaluated."""
    root = tmp_path / "runs"
    for task in (T1, T2):
        for seed in range(3):
            make_run(root / task / "A" / f"seed{seed}", "A", task, seed, [0.0, 0.5])
            make_run(
                root / "compare" / task / "B" / f"seed{seed}",
                "B",
                task,
                seed,
                [0.9 if seed == 0 else 0.0, 0.2 + 0.2 * seed],
            )
    make_run(root / T1 / "C" / "seed0", "C", T1, 0, [])
    return root


def test_known_answers(compare, capsys):
    result = report(compare)
    assert "skipping" in capsys.readouterr().err  # agent C: no evaluation rows
    assert set(result["cells"]) == {"A", "B"}
    for task in (T1, T2):
        a, b = result["cells"]["A"][task], result["cells"]["B"][task]
        assert (a["n_seeds"], a["mean"], a["ci_low"], a["ci_high"]) == (3, 0.5, 0.5, 0.5)
        assert b["n_seeds"] == 3 and b["mean"] == pytest.approx(0.4)
        assert 0.2 - 1e-9 <= b["ci_low"] < 0.4 < b["ci_high"] <= 0.6 + 1e-9
    assert result["aggregate"]["A"]["iqm"] == 0.5
    assert (result["aggregate"]["A"]["iqm_low"], result["aggregate"]["A"]["iqm_high"]) == (0.5, 0.5)
    assert result["aggregate"]["B"]["iqm"] == pytest.approx(0.4)  # 25 % trimmed from each end of 6 scores
    assert result["aggregate"]["B"]["iqm_low"] < 0.4 < result["aggregate"]["B"]["iqm_high"]
    assert not result["notes"] and not result["alpha"]

    out = compare / "report"
    lines = (out / "report.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| agent | cube-single-task1 | scene-task2 | IQM |"
    assert [row.split(" | ")[0] for row in table[2:]] == ["| A", "| B"]
    assert table[2] == "| A | 0.50 [0.50, 0.50] (n=3) | 0.50 [0.50, 0.50] (n=3) | 0.50 [0.50, 0.50] |"
    assert all(row.count("|") == 5 for row in table)
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["agent", "task", "n_seeds", "mean", "ci_low", "ci_high"]
    assert {(r["agent"], r["task"]) for r in rows} == {(a, t) for a in "AB" for t in (T1, T2)}
    assert (out / "aggregate.csv").read_text().startswith("agent,")
    for task in (T1, T2):
        for ext in ("png", "svg"):
            assert (out / f"curves-{task}.{ext}").stat().st_size > 1000
    assert not (out / "alpha.png").exists()

    best = report(compare, out=compare / "best", final="max")
    assert best["cells"]["B"][T1]["scores"] == pytest.approx([0.9, 0.4, 0.6])


def test_collect_reads_runs_at_any_depth(compare):
    runs = collect(compare)
    assert len(runs) == 12  # C is skipped
    run = next(r for r in runs if r.agent == "B" and r.seed == 2 and r.task == T2)
    assert run.steps.tolist() == [1000, 2000] and run.success == pytest.approx([0.0, 0.6])
    assert run.alpha is None and run.run_dir == compare / "compare" / T2 / "B" / "seed2"


def test_warnings_duplicate_seed_mixed_settings_bad_config(tmp_path, capsys):
    make_run(tmp_path / "a" / "seed0", "A", T1, 0, [0.2])
    make_run(tmp_path / "copy" / "seed0", "A", T1, 0, [0.4])
    make_run(tmp_path / "a" / "seed1", "A", T1, 1, [0.6], geometry="normal")  # an ablation, pooled: warned
    (make_run(tmp_path / "broken", "A", T1, 1, [1.0]) / "config.json").write_text("{")
    result = report(tmp_path)
    err = capsys.readouterr().err
    assert "appears twice" in err and "unreadable config.json" in err and "differ in geometry" in err
    assert result["cells"]["A"][T1]["scores"] == pytest.approx([0.2, 0.4, 0.6])


def test_alpha_sweep_is_not_pooled(tmp_path):
    root = tmp_path / "alpha"
    known = {1.0: [0.1, 0.3], 10.0: [0.8, 0.8], 100.0: [0.4, 0.6]}
    for alpha, successes in known.items():
        for seed, x in enumerate(successes):
            make_run(root / f"qc-fql-{alpha:g}" / f"seed{seed}", "qc-fql", T1, seed, [x], alpha=alpha)
    # A per-task default alpha (QC-FQL's differs by environment) is not a sweep: one row.
    make_run(root / "lps-a" / "seed0", "lps", T1, 0, [0.7], alpha=30.0)
    make_run(root / "lps-b" / "seed0", "lps", T2, 0, [0.9], alpha=3.0)
    result = report(root, out=tmp_path / "out")
    assert list(result["cells"]) == ["lps", "qc-fql (alpha=1)", "qc-fql (alpha=10)", "qc-fql (alpha=100)"]
    assert result["cells"]["qc-fql (alpha=1)"][T1]["mean"] == pytest.approx(0.2)
    assert result["cells"]["qc-fql (alpha=10)"][T1]["mean"] == pytest.approx(0.8)
    assert list(result["alpha"]) == ["qc-fql"]
    points = result["alpha"]["qc-fql"]
    assert list(points) == [1.0, 10.0, 100.0]
    assert [p["mean"] for p in points.values()] == pytest.approx([0.2, 0.8, 0.5])
    assert (points[10.0]["ci_low"], points[10.0]["ci_high"]) == (0.8, 0.8)
    for ext in ("png", "svg"):
        assert (tmp_path / "out" / f"alpha.{ext}").stat().st_size > 1000
    md = result["markdown"]
    assert "| agent | alpha=1 | alpha=10 | alpha=100 |" in md
    assert "| qc-fql | 0.20 [0.10, 0.30] (n=2) | 0.80 [0.80, 0.80] (n=2) | 0.50 [0.40, 0.60] (n=2) |" in md


def test_unequal_seed_counts_use_the_common_seeds(tmp_path):
    for seed in range(3):
        make_run(tmp_path / T1 / f"seed{seed}", "A", T1, seed, [0.1 * seed])
    for seed in range(2):
        make_run(tmp_path / T2 / f"seed{seed}", "A", T2, seed, [0.5])
    result = report(tmp_path)
    assert result["cells"]["A"][T1]["n_seeds"] == 3
    assert (result["aggregate"]["A"]["n_seeds"], result["aggregate"]["A"]["n_tasks"]) == (2, 2)
    assert len(result["notes"]) == 1 and "2 seeds per task" in result["notes"][0]
    assert "Note: " in (tmp_path / "report" / "report.md").read_text()


def test_unfinished_runs_are_named_in_the_notes(tmp_path):
    """A run still training (or stopped) has no summary.json: its latest evaluation counts, and says so."""
    for seed in range(2):
        make_run(tmp_path / f"seed{seed}", "A", T1, seed, [0.2, 0.4])
    (tmp_path / "seed1" / "summary.json").unlink()
    result = report(tmp_path)
    (note,) = result["notes"]
    assert "A on cube-single-task1: 1 run(s) unfinished" in note and "seed 1 at step 2000 of 2000" in note
    assert result["cells"]["A"][T1]["mean"] == pytest.approx(0.4)
    assert note in (tmp_path / "report" / "report.md").read_text()


def test_same_seed_same_intervals(compare):
    state = np.random.get_state()
    first = report(compare, out=compare / "r1", seed=3)
    second = report(compare, out=compare / "r2", seed=3)
    other = report(compare, out=compare / "r3", seed=4, reps=200)
    assert first["cells"] == second["cells"] and first["aggregate"] == second["aggregate"]
    assert first["markdown"] == second["markdown"]
    assert (compare / "r1" / f"curves-{T1}.svg").read_bytes() == (compare / "r2" / f"curves-{T1}.svg").read_bytes()
    assert other["cells"]["B"][T1]["ci_low"] != first["cells"]["B"][T1]["ci_low"] or (
        other["aggregate"]["B"] != first["aggregate"]["B"]
    )
    after = np.random.get_state()
    assert (after[1] == state[1]).all() and after[2] == state[2]  # the caller's global RNG is left as it was


def test_errors(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        report(tmp_path / "missing")
    make_run(tmp_path / "empty" / "seed0", "A", T1, 0, [])
    with pytest.raises(FileNotFoundError, match=r"no run with evaluations.*config.json.*metrics.jsonl"):
        report(tmp_path / "empty")
    assert cli.main(["report", str(tmp_path / "missing")]) == 1
    assert "lps report: error:" in capsys.readouterr().err


def test_success_outside_zero_one_or_not_a_number_is_a_skipped_row(tmp_path, capsys):
    good = make_run(tmp_path / "good", "A", T1, 0, [0.5, 0.25])
    with open(good / "metrics.jsonl", "a") as f:  # rows a broken logger (or a hand edit) appended
        for step, x in ((3000, 5.0), (4000, -3), (5000, "x")):
            f.write(json.dumps({"step": step, "eval/success": x}) + "\n")
    bad = make_run(tmp_path / "bad", "A", T1, 1, [])
    (bad / "metrics.jsonl").write_text('{"step": 1000, "eval/success": NaN}\n{"step": 2000, "eval/success": 2}\n')
    none = make_run(tmp_path / "none", "A", T1, 2, [])
    result = report(tmp_path)
    assert result["cells"]["A"][T1]["scores"] == [0.25]  # the last usable evaluation, not a mean with 5 and -3
    err = capsys.readouterr().err.splitlines()
    (line,) = [e for e in err if str(good) in e]
    assert f"{good / 'metrics.jsonl'}: skipped 3 of 5 evaluation rows" in line
    assert "step 3000: 5.0, step 4000: -3, step 5000: 'x'" in line
    (line,) = [e for e in err if str(bad) in e]
    assert f"skipping {bad}: {bad / 'metrics.jsonl'} has 2 evaluation rows, none usable: " in line
    assert "step 1000: nan, step 2000: 2 (eval/success must be a number in [0, 1])" in line
    assert f"skipping {none}: no evaluation rows" in "\n".join(err)


def test_cli_subprocess(compare):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "lps.cli", "report", str(compare), "--out", str(compare / "cli"), "--reps", "200"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "| agent | cube-single-task1 | scene-task2 | IQM |" in proc.stdout
    assert "| A | 0.50 [0.50, 0.50] (n=3)" in proc.stdout and "| B | 0.40 [" in proc.stdout
    assert (compare / "cli" / "report.md").exists()


def test_alpha_figure_draws_alpha_free_agents_as_one_untuned_line(tmp_path):
    root = tmp_path / "alpha"
    for alpha, x in ((1.0, 0.2), (10.0, 0.6)):
        make_run(root / f"qc-fql-{alpha:g}" / "seed0", "qc-fql", T1, 0, [x], alpha=alpha)
    # LPS and DSRL-NA at several alphas: alpha has no effect on them, so they are never split.
    for alpha, x in ((1.0, 0.7), (10.0, 0.9)):
        make_run(root / f"lps-{alpha:g}" / "seed0", "lps", T1, 0, [x], alpha=alpha)
    make_run(root / "dsrl" / "seed0", "dsrl-na", T1, 0, [0.4], alpha=1.0)
    make_run(root / "lps-other-task" / "seed0", "lps", T2, 0, [0.0], alpha=1.0)  # not a swept task
    result = report(root, out=tmp_path / "out")
    assert list(result["cells"]) == ["dsrl-na", "lps", "qc-fql (alpha=1)", "qc-fql (alpha=10)"]
    assert list(result["alpha"]) == ["qc-fql"]
    assert result["untuned"]["lps"]["mean"] == pytest.approx(0.8) and result["untuned"]["lps"]["n"] == 2
    assert result["untuned"]["dsrl-na"]["mean"] == pytest.approx(0.4)
    assert "| lps (untuned: alpha has no effect) | 0.80" in result["markdown"]
    assert (tmp_path / "out" / "alpha.png").stat().st_size > 1000


def test_validation_curves_beside_success(tmp_path):
    root = tmp_path / "runs"
    for seed in range(2):
        make_run(root / "lps" / f"seed{seed}", "lps", T1, seed, [0.2, 0.8, 0.5], val=True)
    make_run(root / "bc" / "seed0", "bc-mf", T2, 0, [0.1, 0.2])  # no val rows: no validation figure
    result = report(root, out=tmp_path / "out")
    run = next(r for r in collect(root) if r.agent == "lps")
    np.testing.assert_array_equal(run.val["val/q_gap"][0], [1000, 2000, 3000])
    np.testing.assert_allclose(run.val["val/q_gap"][1], [0.0, 0.5, 1.0])
    assert (tmp_path / "out" / f"validation-{T1}.png").stat().st_size > 1000
    assert not (tmp_path / "out" / f"validation-{T2}.png").exists()
    assert tmp_path / "out" / f"validation-{T1}.svg" in result["files"]


def test_table_one_layout_per_env_mean_over_tasks(tmp_path):
    """Two envs x two tasks: per env the mean over its tasks and seeds, with a CI inside the data."""
    known = {("cube-single", 1): [0.2, 0.4], ("cube-single", 2): [0.6, 0.8], ("scene", 1): [1.0, 1.0],
             ("scene", 3): [1.0, 1.0]}  # fmt: skip
    for (env, i), successes in known.items():
        task = f"{env}-play-singletask-task{i}-v0"
        for seed, x in enumerate(successes):
            make_run(tmp_path / task / "lps" / f"seed{seed}", "lps", task, seed, [x])
    result = report(tmp_path)
    table = result["per_env"]["lps"]
    assert table["cube-single"]["mean"] == pytest.approx(0.5) and table["cube-single"]["n_tasks"] == 2
    assert 0.2 <= table["cube-single"]["ci_low"] < 0.5 < table["cube-single"]["ci_high"] <= 0.8
    assert (table["scene"]["mean"], table["scene"]["ci_low"], table["scene"]["ci_high"]) == (1.0, 1.0, 1.0)
    assert "| agent | cube-single | scene |" in result["markdown"]
    assert "| lps | 0.50 [" in result["markdown"] and "1.00 [1.00, 1.00] (2) |" in result["markdown"]
    assert (tmp_path / "report" / "per_env.csv").exists()
    # One task per env: no Table I section.
    assert report(tmp_path / "cube-single-play-singletask-task1-v0")["per_env"] == {}


def test_ablation_variants_are_separate_rows(tmp_path):
    """The ablation suite's variants share seeds: each is its own row, named by what it changes."""
    for geometry, successes in (("sphere", [0.8, 1.0]), ("normal", [0.2, 0.4]), ("truncated", [0.6, 0.6])):
        name = "lps" if geometry == "sphere" else f"lps-geometry={geometry}"
        for seed, x in enumerate(successes):
            make_run(tmp_path / T1 / name / f"seed{seed}", "lps", T1, seed, [x], geometry=geometry)
    result = report(tmp_path)
    assert sorted(result["cells"]) == ["lps", "lps (geometry=normal)", "lps (geometry=truncated)"]
    assert result["cells"]["lps"][T1]["mean"] == pytest.approx(0.9)
    assert result["cells"]["lps (geometry=normal)"][T1]["mean"] == pytest.approx(0.3)


def test_train_settings_are_read_by_flag_name_from_grouped_and_flat_configs():
    """config.json holds the eval/online flags in groups (`online.steps`); runs recorded before hold
    them flat. The report reads both by flag name, the names lps.training.config gives them."""
    from lps.training.config import GROUPS, TrainConfig, flat, group_flags, to_dict, with_flags

    cfg = with_flags(TrainConfig(), online_steps=7, utd=3, online_mix="balanced", eval_async="true")
    from lps.experiments import report as report_module

    grouped = report_module._flat_train(to_dict(cfg))
    names = [n for g in GROUPS for n in group_flags(type(getattr(cfg, g))).values()]
    assert {n: grouped[n] for n in names} == {n: flat(cfg)[n] for n in names}
    assert report_module._flat_train({"online_steps": 5, "utd": 2}) == {"online_steps": 5, "utd": 2}
