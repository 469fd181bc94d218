"""`lps sweep`: grid expansion, sweep files, and real sweeps on the toy bandit (local and on Ray).

The real sweeps train tiny networks for 100 steps; each `lps train` process costs a JAX start-up
and one compilation (~10-20 s on 2 busy cores), so the file launches as few processes as it can.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from lps import cli
from lps.cli.sweep import parse_args
from lps.experiments import sweep
from lps.experiments.sweep import SweepSpec, expand, load_spec, run_sweep

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["cube-single-play-singletask-task1-v0", "scene-play-singletask-task2-v0"]
TINY = "--preset toy --base-hidden 16 16 --critic-hidden 16 16 --actor-hidden 16 --steps 100 --log-every 50 "
TINY += "--eval-every 100 --save-every 100 --eval-episodes 50"


@pytest.fixture(autouse=True)
def cpu_env(monkeypatch):
    """`lps train` subprocesses run on the CPU and import this checkout."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def toy_spec(out, agents=("lps", "bc-mf"), seeds=(0, 1), grid=None) -> SweepSpec:
    return SweepSpec(list(agents), ["toy-bandit"], list(seeds), grid or {}, TINY.split(), str(out))


def summaries(out) -> list[Path]:
    return sorted(Path(out).glob("**/summary.json"))


# --- expansion and sweep files (no training) -------------------------------------------------


def test_grid_expansion_collapse_and_names(tmp_path):
    spec = SweepSpec(["lps", "qc-fql", "bc-fm"], TASKS, [0, 1, 2], {"alpha": [1, 3, 10]}, ["--steps", "20"], "out")
    messages = []
    per_seed = expand(spec, group_seeds=False, report=messages.append)
    # lps and qc-fql: 2 tasks x 3 alphas x 3 seeds each; bc-fm has no alpha: 2 tasks x 3 seeds.
    assert len(per_seed) == 2 * (2 * 3 * 3) + 2 * 3
    assert all(len(r.seeds) == 1 for r in per_seed)
    groups = expand(spec, report=lambda _: None)
    assert len(groups) == 2 * (2 * 3) + 2 and all(r.seeds == (0, 1, 2) for r in groups)
    assert [m for m in messages if "alpha" in m] == ["[sweep] bc-fm has no config field alpha: dropped for bc-fm"]

    assert groups == expand(spec, report=lambda _: None)  # deterministic
    assert groups[1].run_dir == f"out/{TASKS[0]}/lps-alpha=3"
    assert str(groups[1].seed_dir(2)) == f"out/{TASKS[0]}/lps-alpha=3/seed2"
    bc = [r for r in groups if r.agent == "bc-fm"]
    assert [r.run_dir for r in bc] == [f"out/{t}/bc-fm" for t in TASKS] and bc[0].overrides == {}
    args = groups[1].args()
    assert args[:2] == ["train", "--agent"] and args[-2:] == ["--alpha", "3"] and "--overwrite" in args
    assert args[args.index("--seeds") + 1 : args.index("--run-dir")] == ["0", "1", "2"]
    assert "--alpha" not in bc[0].args()

    # Values of several tokens, names safe for a file system, refused fields.
    (run,) = expand(SweepSpec(["bc-mf"], ["toy-bandit"], grid={"base-hidden": ["32 32"]}), report=print)
    assert run.run_dir.endswith("bc-mf-base_hidden=32x32") and run.args()[-3:] == ["--base-hidden", "32", "32"]
    with pytest.raises(ValueError, match="no config field"):
        expand(SweepSpec(["lps"], ["toy-bandit"], grid={"alhpa": [1]}))
    with pytest.raises(ValueError, match="--tasks"):
        expand(SweepSpec(["lps"], ["toy-bandit"], train_args=["--env", "toy-rings"]))


def test_yaml_and_toml_give_the_same_spec_as_flags(tmp_path):
    flags = ["--agents", "lps", "bc-fm", "--tasks", *TASKS, "--seeds", "0,1", "2", "--grid", "alpha=1,3,10"]
    flags += ["base_hidden=32 32,64 64", "--out", "runs/s", "--workers", "2", "--", "--preset", "quick"]
    from_flags, _ = parse_args(flags)
    (tmp_path / "s.yaml").write_text(
        "agents: [lps, bc-fm]\n"
        f"tasks: [{TASKS[0]}, {TASKS[1]}]\n"
        "seeds: [0, 1, 2]\n"
        "grid:\n  alpha: [1, 3, 10]\n  base_hidden: [[32, 32], [64, 64]]\n"
        "train_args: [--preset, quick]\n"
        "out: runs/s\nworkers: 2\n"
    )
    (tmp_path / "s.toml").write_text(
        'agents = ["lps", "bc-fm"]\n'
        f'tasks = ["{TASKS[0]}", "{TASKS[1]}"]\n'
        "seeds = [0, 1, 2]\n"
        'train_args = ["--preset", "quick"]\n'
        'out = "runs/s"\nworkers = 2\n'
        '[grid]\nalpha = [1, 3, 10]\nbase_hidden = ["32 32", "64 64"]\n'
    )
    assert load_spec(tmp_path / "s.yaml") == from_flags == load_spec(tmp_path / "s.toml")
    assert expand(load_spec(tmp_path / "s.yaml"), report=print) == expand(from_flags, report=print)
    # Flags override the file's keys; train args after `--` add to the file's.
    spec, _ = parse_args([str(tmp_path / "s.toml"), "--seeds", "5", "--", "--steps", "10"])
    assert spec.seeds == [5] and spec.train_args == ["--preset", "quick", "--steps", "10"]
    (tmp_path / "bad.yaml").write_text("agents: [lps]\ntasks: [toy-bandit]\ngrids: {}\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_spec(tmp_path / "bad.yaml")


@pytest.mark.parametrize("text, message", [
    ("grid: {alpha: abc}", r"s.yaml: grid field 'alpha' has value 'abc', but alpha takes a number"),
    ("grid: {alpha: [1, x]}", r"s.yaml: grid field 'alpha' has value 'x', but alpha takes a number"),
    ("grid: {geometry: [sphere, flat]}", r"s.yaml: grid field 'geometry' has value 'flat', but geometry takes one of"),
    ("grid: {base_hidden: [[16, x]]}", r"s.yaml: grid field 'base_hidden' has value '16 x', but .* each an integer"),
    ("grid: {alpha: []}", r"s.yaml: grid field 'alpha' has no values; expected a list"),
    ("grid: {alhpa: [1]}", r"s.yaml: grid field 'alhpa' is no config field of training or of agent\(s\) lps"),
    ("grid: [1, 2]", r"s.yaml: grid is \[1, 2\]; expected a mapping of config field -> list of values"),
    ("seeds: [-1]", r"s.yaml: seed -1 is not a seed; seeds are non-negative integers"),
    ("seeds: [0, 1.5]", r"s.yaml: seed 1.5 is not a seed"),
    ("train_args: {steps: 10}", r"s.yaml: train_args is \{'steps': 10\}; expected a list of strings"),
    ("workers: 0", r"s.yaml: workers is 0; expected an integer >= 1"),
])  # fmt: skip
def test_sweep_file_values_are_checked_before_any_run(tmp_path, text, message):
    (tmp_path / "s.yaml").write_text(f"agents: [lps]\ntasks: [toy-bandit]\n{text}\n")
    with pytest.raises(ValueError, match=message):
        load_spec(tmp_path / "s.yaml")


def test_scalars_are_one_element_lists_and_strings_are_never_split_into_letters(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "agents: lps\ntasks: [toy-bandit]\nseeds: 3\n"
        "grid: {alpha: 3, geometry: normal}\ntrain_args: --steps 10 --log-every '5'\n"
    )
    spec = load_spec(tmp_path / "s.yaml")
    assert spec.agents == ["lps"] and spec.seeds == [3]
    assert spec.grid == {"alpha": ["3"], "geometry": ["normal"]}
    assert spec.train_args == ["--steps", "10", "--log-every", "5"]
    with pytest.raises(ValueError, match=r"^sweep: grid field 'alpha' has value 'x'"):  # built in code: no file
        SweepSpec(["lps"], ["toy-bandit"], grid={"alpha": [1, "x"]})
    with pytest.raises(ValueError, match=r"workers is 0; expected an integer >= 1"):
        run_sweep(SweepSpec(["lps"], ["toy-bandit"]), workers=0, dry_run=True)


@pytest.mark.parametrize("flags, message", [
    (["--grid", "alpha=a,b"], "--grid alpha=a,b: grid field 'alpha' has value 'a', but alpha takes a number"),
    (["--seeds", "-1"], "--seeds: seed '-1' is not a seed; seeds are non-negative integers"),
    (["--workers", "0"], "--workers: workers is 0; expected an integer >= 1"),
    (["--workers", "-1"], "--workers: workers is -1; expected an integer >= 1"),
])  # fmt: skip
def test_bad_flags_are_one_line_before_any_run(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.setattr(sweep, "_launch", lambda *a: pytest.fail("a run started"))
    argv = ["sweep", "--agents", "lps", "--tasks", "toy-bandit", "--out", str(tmp_path), *flags, "--dry-run"]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"lps sweep: error: {message}") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err and "lps.cli train" not in captured.out


def test_dry_run_launches_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "_launch", lambda *a: pytest.fail("a dry run launched a process"))
    code = cli.main(["sweep", "--agents", "lps", "--tasks", "toy-bandit", "--out", str(tmp_path), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "-m lps.cli train --agent lps --env toy-bandit --seeds 0" in out
    assert not list(tmp_path.iterdir())


# --- real sweeps on the toy bandit ----------------------------------------------------------


def test_local_sweep_skips_finished_runs_and_reruns_missing_ones(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    results = run_sweep(toy_spec(out), workers=2)
    assert [r.status for r in results] == ["finished"] * 4
    assert summaries(out) == sorted(
        out / "toy-bandit" / a / f"seed{s}" / "summary.json" for a in ("lps", "bc-mf") for s in (0, 1)
    )
    log = (out / "toy-bandit" / "bc-mf" / "seed1" / "sweep.log").read_text()
    assert "--seeds 0 1" in log and "[lps] done: bc-mf on toy-bandit seed 1" in log
    assert "--critic-hidden" not in log  # bc-mf has no critic: the flag is dropped for it

    # Again: every run is skipped and nothing is launched.
    launched = []
    real_launch = sweep._launch
    monkeypatch.setattr(sweep, "_launch", lambda args, *rest: launched.append(args) or real_launch(args, *rest))
    assert [r.status for r in run_sweep(toy_spec(out), workers=2)] == ["skipped"] * 4 and not launched

    # A run without its summary (killed) is the only one launched, alone in its seed-group.
    (out / "toy-bandit" / "bc-mf" / "seed0" / "summary.json").unlink()
    results = run_sweep(toy_spec(out))
    assert [(r.run_dir.parent.name, r.seed, r.status) for r in results] == [
        ("lps", 0, "skipped"),
        ("lps", 1, "skipped"),
        ("bc-mf", 0, "finished"),
        ("bc-mf", 1, "skipped"),
    ]
    assert len(launched) == 1 and launched[0][launched[0].index("--seeds") + 1] == "0"
    assert launched[0][launched[0].index("--seeds") + 2].startswith("--")
    assert len(summaries(out)) == 4


def test_a_failed_run_is_reported_and_the_others_finish(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--agents", "bc-mf", "--tasks", "toy-bandit", "--grid", "batch_size=16,999999"]
    code = cli.main([*argv, "--out", str(out), "--workers", "2", "--", *TINY.split()])
    printed = capsys.readouterr().out
    assert code == 1
    assert "FAILED (exit code 1)" in printed and "larger than the dataset" in printed  # the log's last lines
    assert summaries(out) == [out / "toy-bandit" / "bc-mf-batch_size=16" / "seed0" / "summary.json"]
    table = printed[printed.index("status") :]
    assert "1 finished, 1 failed" in table and "bc-mf-batch_size=999999/seed0" in table


@pytest.mark.filterwarnings("ignore:os.fork")  # Ray starts its processes with fork + exec
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='needs Ray (pip install "lps[sweep]")')
def test_ray_sweep(tmp_path):
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        out = tmp_path / "ray"
        results = run_sweep(toy_spec(out, agents=["bc-mf"]), ray_address="auto", cpus_per_task=2)
        assert [r.status for r in results] == ["finished", "finished"]
        assert len(summaries(out)) == 2 and ray.is_initialized()  # an instance it did not start is left running
    finally:
        ray.shutdown()


# --- suites and GPUs --------------------------------------------------------------------------


def test_suite_ogbench_state_dry_run(tmp_path, monkeypatch):
    monkeypatch.setenv("OGBENCH_DATA_DIR", str(tmp_path / "data"))
    spec, a = parse_args(["--suite", "ogbench-state", "--out", str(tmp_path / "out"), "--dry-run"])
    lines = []
    results = run_sweep(spec, dry_run=True, report=lines.append)
    assert len(spec.tasks) == 25 and len({t.split("-play")[0] for t in spec.tasks}) == 5
    assert {"lps", "qc-fql", "dsrl-na", "cfgrl", "bc-fm"} <= set(spec.agents)
    assert len(results) == len(spec.agents) * 25 * 3 and {r.status for r in results} == {"planned"}
    commands = [line for line in lines if "lps.cli" in line]
    assert len(commands) == len(spec.agents) * 25  # seeds vmapped: one process per (agent, task)
    assert all("--reward paper" in c and "--preset paper" in c and "--seeds 0 1 2" in c for c in commands)
    generated = [line for line in lines if "would generate" in line]
    assert len(generated) == 5 and "1000 episodes" in generated[0]


def test_suite_ablations_vary_one_factor_at_a_time(tmp_path):
    spec, _ = parse_args(["--suite", "ogbench-ablations", "--tasks", TASKS[0], "--out", str(tmp_path)])
    runs = expand(spec)
    names = sorted(Path(r.run_dir).name for r in runs)
    assert names == sorted(["lps", "lps-geometry=normal", "lps-geometry=truncated", "lps-backbone=fm-10step",
                            "lps-backbone=fm-1step", "lps-parameterisation=velocity"])  # fmt: skip
    assert ["--geometry", "truncated"] == next(r for r in runs if "truncated" in r.run_dir).args()[-2:]


def test_unknown_suite_lists_the_suites(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--suite", "ogbench-pixels"])
    err = capsys.readouterr().err
    assert "unknown suite 'ogbench-pixels'" in err and "ogbench-state" in err and "ogbench-ablations" in err


def test_gpus_give_each_concurrent_group_its_own_gpu(tmp_path, monkeypatch):
    import threading
    import time

    seen, lock, running = [], threading.Lock(), set()

    def fake_launch(args, logs, env=None):
        gpu = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            assert gpu not in running, "two groups on one GPU at once"
            running.add(gpu)
            seen.append(gpu)
        time.sleep(0.05)
        with lock:
            running.discard(gpu)
        return 0, 0.05, ""

    monkeypatch.setattr(sweep, "_launch", fake_launch)
    spec = toy_spec(tmp_path, agents=("lps", "bc-mf", "bc-fm"), seeds=(0,))
    list(sweep._local(expand(spec), workers=2, gpus=2))
    assert len(seen) == 3 and set(seen) == {"0", "1"}
