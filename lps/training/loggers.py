"""Metric sinks beside the run directory's own files: each gets every metrics row RunLog writes;
see docs/outputs.md.

    log.sinks.append(WandbSink(run_dir, config, project="lps", mode="offline"))

Weights & Biases is optional (`pip install "lps[wandb]"`). `mode="offline"` writes the run under
`<run_dir>/wandb/` with no network (upload later with `wandb sync`); the run's id is kept in
`<run_dir>/wandb_id.txt` so a resumed training continues the same W&B run.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from lps.files import atomic_write

WANDB_ID = "wandb_id.txt"


class WandbSink:
    def __init__(self, run_dir: str | Path, config: dict, project: str = "lps", group: str | None = None,
                 name: str | None = None, mode: str = "online", resume: bool = False):  # fmt: skip
        try:
            import wandb
        except ImportError as e:
            raise ImportError(f'--wandb needs Weights & Biases: pip install "lps[wandb]" ({e})') from e
        run_dir = Path(run_dir)
        id_path = run_dir / WANDB_ID
        if resume and id_path.exists():
            run_id = id_path.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            atomic_write(id_path, run_id + "\n")
        self.run = wandb.init(
            project=project, group=group, name=name, mode=mode, dir=str(run_dir), config=config, id=run_id,
            resume="allow", reinit="create_new",
        )  # fmt: skip
        # Evaluation curves against gradient steps (not wandb's own call counter).
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, row: dict[str, float]) -> None:
        self.run.log({"step": step, **row})

    def close(self) -> None:
        self.run.finish()
