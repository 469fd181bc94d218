"""Evaluations during training, run at the evaluation step or overlapped with training
(`--eval-async`); see docs/training.md.

    schedule.log_training(step, rows)          # one metrics row per seed, every --log-every steps
    schedule.submit(step, params, extra_rows)  # at an evaluation step
    schedule.wait_before(step)                 # before a checkpoint at `step`
    schedule.finish()                          # at the end: waits for the last evaluation

Overlapped, `submit` evaluates a host snapshot in a background thread (at most one in flight),
holding later training rows so metrics stay in step order; both paths write the same numbers.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import jax
import numpy as np

from lps.training.evaluate import EvaluationCancelled, EvaluationFailed, make_seeds_policy


class EvaluationSchedule:
    def __init__(self, evaluator, make_evaluator: Callable[[], Any] | None, agent, seeds: list[int], episodes: int,
                 logs: list, overlap: bool, after_eval: Callable[[int, list[dict]], None] | None = None):  # fmt: skip
        self.evaluator, self.make_evaluator = evaluator, make_evaluator
        self.agent, self.seeds, self.episodes = agent, list(seeds), episodes
        self.logs, self.overlap = logs, overlap
        self.after_eval = after_eval or (lambda step, results: None)
        self.held: list[tuple[int, list[dict]]] = []  # training rows waiting for an evaluation in flight
        self.pending: _Pending | None = None

    @property
    def enabled(self) -> bool:
        return self.evaluator is not None

    # --- rows ---------------------------------------------------------------------------------

    def log_training(self, step: int, rows: list[dict]) -> None:
        self.poll()
        if self.pending is not None:
            self.held.append((step, rows))
        else:
            self._write(step, rows)

    def _write(self, step: int, rows: list[dict]) -> None:
        for log, row in zip(self.logs, rows):
            log.log(step, row)

    def _flush_held(self) -> None:
        held, self.held = self.held, []
        for step, rows in held:
            self._write(step, rows)

    # --- evaluations --------------------------------------------------------------------------

    def submit(self, step: int, params, extra_rows: list[dict] | None = None) -> None:
        """Evaluate `params` (leading seed axis, one entry per seed) as the evaluation of `step`;
        `extra_rows` (one dict per seed) are written in the same row as that seed's results."""
        extra_rows = extra_rows or [{} for _ in self.seeds]
        # The evaluation in flight first: if it failed, its pool is discarded there, and this one
        # must then start a fresh pool rather than run on none.
        self.wait()
        if self.evaluator is None and self.make_evaluator is not None and not self._rebuild():
            self._write(step, [{**x, "eval/failed": 1.0} for x in extra_rows])
            return
        if self.evaluator is None:
            if any(extra_rows):
                self._write(step, extra_rows)
            return
        if not self.overlap:
            self._complete(step, extra_rows, *self._evaluate(params, None))
            return

        snapshot = jax.device_get(params)  # the host copy; training may now overwrite the device's
        self.pending = _Pending(step, extra_rows)
        self.pending.thread = threading.Thread(
            target=self.pending.run, args=(lambda cancel: self._evaluate(snapshot, cancel, host=True),),
            name=f"lps-eval-{step}", daemon=True,
        )  # fmt: skip
        self.pending.thread.start()

    def _evaluate(self, params, cancel, host: bool = False) -> tuple[list[dict] | None, str | None]:

        device = _host_cpu() if host else None
        policy = make_seeds_policy(self.agent, params, self.seeds, device)
        try:
            return self.evaluator.run_seeds(policy, self.seeds, self.episodes, cancel=cancel), None
        except EvaluationFailed as e:
            return None, str(e)

    def _rebuild(self) -> bool:
        try:
            self.evaluator = self.make_evaluator()
            return True
        except Exception as e:  # noqa: BLE001  (any start-up failure marks this evaluation failed)
            print(f"[lps] evaluation failed: could not start the environments: {e}")
            return False

    def _complete(self, step: int, extra_rows: list[dict], results: list[dict] | None, error: str | None) -> None:
        if results is None:
            print(f"[lps] evaluation at step {step} failed, training goes on: {error}")
            self._write(step, [{**x, "eval/failed": 1.0} for x in extra_rows])
            self._discard_evaluator()
            results = []
        else:
            self._write(step, [{**x, **r} for x, r in zip(extra_rows, results)])
        self._flush_held()
        self.after_eval(step, results)

    def _discard_evaluator(self) -> None:
        if self.evaluator is not None:
            try:
                self.evaluator.close()
            except Exception:  # noqa: BLE001  (a broken pool may fail to close; it is dropped anyway)
                pass
            self.evaluator = None

    def poll(self) -> None:
        """Write the evaluation in flight if it has finished."""
        if self.pending is not None and not self.pending.thread.is_alive():
            self._take_pending()

    def _take_pending(self) -> None:
        pending, self.pending = self.pending, None
        pending.thread.join()
        if pending.crash is not None:
            raise pending.crash
        self._complete(pending.step, pending.extra_rows, pending.results, pending.error)

    def wait(self) -> None:
        """Wait for the evaluation in flight, if any, and write it."""
        if self.pending is not None:
            self.pending.thread.join()
            self._take_pending()

    def wait_before(self, step: int) -> None:
        """Wait for an evaluation in flight of a step before `step` (call before a checkpoint)."""
        if self.pending is not None and self.pending.step < step:
            self.wait()

    def finish(self) -> None:
        self.wait()
        self._flush_held()

    def shutdown(self) -> None:
        """On any exit: write a finished evaluation, cancel an unfinished one, write held rows,
        close the environments."""
        if self.pending is not None:
            if self.pending.thread.is_alive():
                self.pending.cancel.set()
                self.pending.thread.join(timeout=30.0)
            if not self.pending.thread.is_alive() and self.pending.results is not None:
                self._take_pending()
            self.pending = None
        self._flush_held()
        self._discard_evaluator()


class _Pending:
    """An evaluation in flight on a background thread."""

    def __init__(self, step: int, extra_rows: list[dict]):
        self.step, self.extra_rows = step, extra_rows
        self.cancel = threading.Event()
        self.results: list[dict] | None = None
        self.error: str | None = None
        self.crash: BaseException | None = None  # anything but an environment failure: re-raised
        self.thread: threading.Thread | None = None

    def run(self, evaluate) -> None:
        try:
            self.results, self.error = evaluate(self.cancel)
        except EvaluationCancelled:
            self.error = "cancelled"
        except BaseException as e:  # noqa: BLE001
            self.crash = e


def _host_cpu():
    """The host CPU device, or None (JAX_PLATFORMS excluded it: act on the default device)."""
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return None


def seed_axis(params, num_seeds: int):
    """Parameters with a leading seed axis (a single seed's training state has none)."""
    if num_seeds > 1:
        return params

    return jax.tree_util.tree_map(lambda x: np.asarray(x)[None], params)
