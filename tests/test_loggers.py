"""--wandb: the same metrics rows and the config reach Weights & Biases (offline: no network)."""

from __future__ import annotations

import json
import struct

import helpers
import pytest

from lps.agents import LPSConfig
from lps.training.loop import train

wandb = pytest.importorskip("wandb", reason="wandb is part of the [all] extra that CI installs")
SMALL = LPSConfig(base_hidden=(16, 16), critic_hidden=(16, 16), actor_hidden=(16,))


def read_offline_run(path) -> list:
    """The protobuf records of an offline `.wandb` file (a LevelDB-style log of 32 KiB blocks:
    7-byte file header, then records with a 7-byte header: crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, part, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        part, pos = part + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            records.append(record)
            part = b""
    return records


def test_wandb_offline_gets_the_metrics_rows_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = helpers.toy_config(tmp_path / "run", steps=200, eval_every=100, eval_episodes=128, wandb=True,
                             wandb_mode="offline", wandb_project="lps-test", wandb_group="g")  # fmt: skip
    train("lps", cfg, SMALL)
    files = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = read_offline_run(files[0])
    logged = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            items = {k: v for k, v in items.items() if not k.startswith("_")}
            if items:  # wandb's own bookkeeping records have only `_` keys
                logged.append((items.pop("step"), items))
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert logged == [(r.pop("step"), r) for r in rows]
    assert any("eval/success" in items for _, items in logged)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["agent"] == "lps" and config["train"]["steps"] == 200 and run.project == "lps-test"
    assert run.run_group == "g" and run.display_name == f"toy-bandit/lps/seed{cfg.seed}"


def test_missing_wandb_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    from lps.training.loggers import WandbSink

    with pytest.raises(ImportError, match=r'pip install "lps\[wandb\]"'):
        WandbSink(tmp_path, {}, mode="offline")
