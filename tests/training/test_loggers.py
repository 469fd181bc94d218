"""--wandb: the same metrics rows and the config reach Weights & Biases (offline: no network)."""

from __future__ import annotations

import json

import helpers
import pytest

from lps.agents import LPSConfig
from lps.training.loop import train

wandb = pytest.importorskip("wandb", reason="wandb is part of the [all] extra that CI installs")
SMALL = LPSConfig(base_hidden=(16, 16), critic_hidden=(16, 16), actor_hidden=(16,))


def test_wandb_offline_gets_the_metrics_rows_and_config(tmp_path, monkeypatch):
    """The rows handed to the real (offline) wandb Run are the rows of metrics.jsonl, and the run
    carries the config, project, group and name. We spy on `Run.log` rather than parse the `.wandb`
    file: that file is written by wandb's own service process, on its own schedule (an earlier
    parser of it saw no history records on a loaded 2-core CI machine)."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged, seen = [], {}
    real_log, real_finish = wandb.Run.log, wandb.Run.finish

    def spy_log(run, data, *args, **kwargs):
        logged.append(dict(data))
        return real_log(run, data, *args, **kwargs)

    def spy_finish(run, *args, **kwargs):
        seen.update(config=dict(run.config), project=run.project, group=run.group, name=run.name)
        return real_finish(run, *args, **kwargs)

    monkeypatch.setattr(wandb.Run, "log", spy_log)
    monkeypatch.setattr(wandb.Run, "finish", spy_finish)
    cfg = helpers.toy_config(tmp_path / "run", steps=200, eval_every=100, eval_episodes=128, wandb=True,
                             wandb_mode="offline", wandb_project="lps-test", wandb_group="g")  # fmt: skip
    train("lps", cfg, SMALL)
    assert len(list((tmp_path / "run" / "wandb").glob("offline-run-*"))) == 1
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [(r.pop("step"), r) for r in logged] == [(r.pop("step"), r) for r in rows]
    assert any("eval/success" in r for r in rows)
    config = seen["config"]
    assert config["agent"] == "lps" and config["train"]["steps"] == 200 and seen["project"] == "lps-test"
    assert seen["group"] == "g" and seen["name"] == f"toy-bandit/lps/seed{cfg.seed}"


def test_missing_wandb_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    from lps.training.loggers import WandbSink

    with pytest.raises(ImportError, match=r'pip install "lps\[wandb\]"'):
        WandbSink(tmp_path, {}, mode="offline")
