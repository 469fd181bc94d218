"""A run's records: metrics as CSV and JSONL, optional TensorBoard, and the learning curve;
see docs/outputs.md.

Rows are appended as training goes; on resume, rows past the checkpoint's step are dropped so
that a killed-and-resumed run has exactly the rows of an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from lps.files import atomic_write, naming

METRICS_JSONL, METRICS_CSV, CURVE_PNG = "metrics.jsonl", "metrics.csv", "curves.png"


def pyplot():
    """matplotlib.pyplot drawing to files only (Agg: no display needed). Imported on first use: it takes
    most of a second, which a run that plots nothing, or `lps --help`, should not pay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_rows(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl. A torn last line (a crash or a full disk mid-append) is dropped
    with a message; damage anywhere else is a ValueError naming the file and line."""
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    complete = text.endswith("\n")
    if complete:
        lines.pop()  # the empty string after the final newline
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a row with an integer 'step'")
        except ValueError as e:
            if number == len(lines) and not complete:
                print(f"[lps] {path}: dropped its unfinished last line {number} (written when the run was killed)")
                break
            raise ValueError(
                f"{path} is damaged at line {number} ({e}); fix or delete that line, then resume again"
            ) from None
        rows.append(row)
    return rows


class RunLog:
    def __init__(self, run_dir: str | Path, tensorboard: bool = False, resume_step: int | None = None,
                 writes: bool = True):  # fmt: skip
        """`writes=False` keeps the rows in memory only (the processes of a multi-host run other than
        the one that writes the run directory)."""
        self.dir, self.writes = Path(run_dir), writes
        self.rows: list[dict] = []
        self.sinks: list = []  # e.g. lps.training.loggers.WandbSink: each gets every row logged
        if resume_step is not None and (self.dir / METRICS_JSONL).exists():
            self.rows = [r for r in read_rows(self.dir / METRICS_JSONL) if r["step"] <= resume_step]
        self._rewrite()
        self.tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as e:
                raise ImportError('--tensorboard needs tensorboardX: pip install "lps[tensorboard]"') from e
            self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=resume_step)

    def _rewrite(self) -> None:
        if not self.writes:
            return
        atomic_write(self.dir / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in self.rows))
        keys = sorted({k for r in self.rows for k in r} - {"step"})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["step", *keys], restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.dir / METRICS_CSV, buf.getvalue())

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self.rows.append(row)
        if self.writes:
            with naming(self.dir / METRICS_JSONL), open(self.dir / METRICS_JSONL, "a") as f:
                f.write(json.dumps(row) + "\n")
        # The CSV header is the union of all keys seen, so it is rewritten whole (it is small).
        self._rewrite()
        for sink in self.sinks:
            sink.log(step, row)
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, float(v), step)
            self.tb.flush()

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(r["step"], r[key]) for r in self.rows if key in r and not math.isnan(r[key])]
        return [p[0] for p in pts], [p[1] for p in pts]

    def plot(self, title: str) -> None:
        """Success rate and the training losses against gradient steps."""
        if not self.writes:
            return
        plt = pyplot()
        loss_keys = sorted(k for k in {k for r in self.rows for k in r} if k.startswith("loss/"))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        steps, success = self.series("eval/success")
        axes[0].plot(steps, success, marker="o")
        axes[0].set(xlabel="gradient steps", ylabel="success rate", ylim=(-0.02, 1.02), title=title)
        axes[0].grid(alpha=0.3)
        for k in loss_keys:
            axes[1].plot(*self.series(k), label=k.removeprefix("loss/"))
        axes[1].set(xlabel="gradient steps", ylabel="loss", title="training losses")
        axes[1].set_yscale("symlog", linthresh=1e-2)
        axes[1].grid(alpha=0.3)
        if loss_keys:
            axes[1].legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        atomic_write(self.dir / CURVE_PNG, buf.getvalue())

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        if self.tb is not None:
            self.tb.close()
