"""Evaluations during training: overlapped (async) == synchronous, failures marked and survived,
rows in step order, nothing finished lost on shutdown, a missing evaluation re-run on resume."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import helpers
import numpy as np
import pytest

from lps.agents import LPSConfig
from lps.data import toy
from lps.training.eval_schedule import EvaluationSchedule
from lps.training.evaluate import EvaluationCancelled, EvaluationFailed, Evaluator
from lps.training.loop import train

SMALL = LPSConfig(base_hidden=(16, 16), critic_hidden=(16, 16), actor_hidden=(16,))


def rows(run_dir):
    with open(run_dir / "metrics.jsonl") as f:
        return [{k: v for k, v in json.loads(line).items() if "per_sec" not in k} for line in f]


def toy_cfg(run_dir, **kw):
    return helpers.toy_config(run_dir, **{"steps": 300, "eval_every": 100, "eval_episodes": 256, **kw})


def test_async_equals_sync_rows_in_step_order(tmp_path):
    for mode in ("false", "true"):
        train("lps", toy_cfg(tmp_path / mode, seeds=(0, 1), eval_async=mode), SMALL)
    for seed in (0, 1):
        sync, overlapped = rows(tmp_path / "false" / f"seed{seed}"), rows(tmp_path / "true" / f"seed{seed}")
        assert sync == overlapped
        assert [r["step"] for r in sync] == sorted(r["step"] for r in sync)
        assert [r["step"] for r in sync if "eval/success" in r] == [100, 200, 300]


def test_failed_evaluation_is_marked_and_training_goes_on(tmp_path, monkeypatch, capsys):
    real, calls = toy.ToyEvaluator.run_seeds, []

    def failing_once(self, policy, seeds, episodes=1000, cancel=None):
        calls.append(1)
        if len(calls) == 1:
            raise EvaluationFailed("evaluation on toy failed at episode 4 of seed 0 (slot 1): env worker 1 died")
        return real(self, policy, seeds, episodes, cancel)

    monkeypatch.setattr(toy.ToyEvaluator, "run_seeds", failing_once)
    train("lps", toy_cfg(tmp_path / "run"), SMALL)
    evals = [r for r in rows(tmp_path / "run") if "eval/success" in r or "eval/failed" in r]
    assert [r["step"] for r in evals] == [100, 200, 300]
    assert evals[0]["eval/failed"] == 1.0 and "eval/success" not in evals[0]
    assert all("eval/success" in r for r in evals[1:])
    assert "episode 4 of seed 0" in capsys.readouterr().out


def test_a_stopped_env_worker_fails_its_episodes_at_the_chunk_deadline(capsys):
    """A SIGSTOPped worker hung the evaluation forever: past the deadline it is treated as dead
    (killed and reaped) and the evaluation ends, failed, naming its episodes, as for a dead one."""
    ev = Evaluator(toy.TOY_ENV, slots_per_seed=2, workers=2, chunk_timeout=0.5)
    stopped = ev.envs.procs[1]
    os.kill(stopped.pid, signal.SIGSTOP)
    resume = threading.Timer(20.0, os.kill, (stopped.pid, signal.SIGCONT))  # today's code: no hang past 20 s
    resume.start()
    start = time.monotonic()
    try:
        with pytest.raises(EvaluationFailed, match=r"episode \d+ of seed 0 \(slot 1\).*env worker 1 .*within 0.5 s"):
            ev.run_seeds(lambda obs, episodes, chunks: np.zeros((*obs.shape[:2], 1, 2), np.float32), [0], 4)
        assert time.monotonic() - start < 10
        assert not stopped.is_alive() and stopped.exitcode == -signal.SIGKILL  # killed at the deadline, reaped
    finally:
        resume.cancel()
        ev.close()
    assert f"env worker 1 (PID {stopped.pid}) did not answer within 0.5 s" in capsys.readouterr().out


def test_resume_reruns_a_missing_evaluation_of_the_checkpoint_step(tmp_path):
    cfg = toy_cfg(tmp_path / "run", steps=200, save_every=200)
    train("lps", cfg, SMALL)
    path = tmp_path / "run" / "metrics.jsonl"
    lines = path.read_text().splitlines()
    kept = [line for line in lines if not (json.loads(line)["step"] == 200 and "eval/success" in json.loads(line))]
    assert len(kept) == len(lines) - 1
    path.write_text("".join(line + "\n" for line in kept))  # as if killed before the evaluation was written
    train("lps", cfg, SMALL, resume=True)
    assert rows(tmp_path / "run") == [{k: v for k, v in json.loads(x).items() if "per_sec" not in k} for x in lines]


# --- the schedule alone, with a controllable evaluator ------------------------------------------


class FakeLog:
    def __init__(self):
        self.rows = []

    def log(self, step, row):
        self.rows.append((step, dict(row)))


class GatedEvaluator:
    """Returns once `gate` is set (or raises EvaluationCancelled when asked to stop)."""

    def __init__(self):
        self.gate, self.closed = threading.Event(), False

    def run_seeds(self, policy, seeds, episodes, cancel=None):
        while not self.gate.wait(0.01):
            if cancel is not None and cancel.is_set():
                raise EvaluationCancelled("cancelled")
        return [{"eval/success": 0.5} for _ in seeds]

    def close(self):
        self.closed = True


@pytest.fixture
def schedule(monkeypatch):
    import lps.training.eval_schedule as es

    monkeypatch.setattr(es, "make_seeds_policy", lambda agent, params, seeds, device=None: None)
    log, ev = FakeLog(), GatedEvaluator()
    return EvaluationSchedule(ev, lambda: GatedEvaluator(), None, [0], 5, [log], overlap=True), log, ev


def test_training_rows_wait_for_the_evaluation_in_flight(schedule):
    sched, log, ev = schedule
    sched.log_training(100, [{"loss": 1.0}])
    sched.submit(100, {"w": [0.0]})
    sched.log_training(200, [{"loss": 2.0}])
    assert [s for s, _ in log.rows] == [100]  # step 200 is held
    ev.gate.set()
    sched.finish()
    assert log.rows == [(100, {"loss": 1.0}), (100, {"eval/success": 0.5}), (200, {"loss": 2.0})]


def test_shutdown_keeps_finished_evaluation_and_held_rows(schedule):
    sched, log, ev = schedule
    sched.submit(100, {"w": [0.0]})
    sched.log_training(200, [{"loss": 2.0}])
    ev.gate.set()
    sched.pending.thread.join()
    sched.shutdown()  # e.g. Ctrl-C right after the evaluation finished
    assert log.rows == [(100, {"eval/success": 0.5}), (200, {"loss": 2.0})]
    assert ev.closed


def test_shutdown_cancels_an_unfinished_evaluation(schedule):
    sched, log, ev = schedule
    sched.submit(100, {"w": [0.0]})
    sched.log_training(200, [{"loss": 2.0}])
    sched.shutdown()  # never finishes: cancelled, not written (a resume re-runs it)
    assert log.rows == [(200, {"loss": 2.0})]
