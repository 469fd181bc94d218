"""The environment worker pool and the evaluator on a real OGBench task (cube-single).

Parallel evaluation must give exactly the episodes of the single-process one: same reset seeds,
same per-episode acting keys, so the same final observations, returns, lengths and success.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

pytest.importorskip("ogbench", reason="OGBench is part of the [all] extra that CI installs")

from lps.agents import LPSConfig, Spec, make_agent  # noqa: E402
from lps.training.config import TrainConfig, agent_overrides  # noqa: E402
from lps.training.envs import EnvWorkerError, EnvWorkerPool, LocalEnvs, plan_pool  # noqa: E402
from lps.training.evaluate import EvaluationFailed, Evaluator, make_seeds_policy  # noqa: E402
from lps.training.update import create_state, make_optimizer  # noqa: E402

ENV = "cube-single-singletask-task1-v0"
SEEDS = [3, 7]


@pytest.fixture(scope="module")
def tiny():
    """A tiny untrained LPS agent with two seeds' parameters stacked (a stochastic policy)."""
    cfg = LPSConfig(**agent_overrides(dict(hidden=(16, 16)), LPSConfig))
    agent = make_agent("lps", cfg, Spec(28, 5, 5, 0.99))
    states = [create_state(agent, make_optimizer(TrainConfig()), s) for s in SEEDS]
    return agent, jax.tree_util.tree_map(lambda *x: np.stack(x), *[s.params for s in states])


def evaluate(agent, params, workers, slots, seeds=SEEDS, episodes=3):
    stacked = jax.tree_util.tree_map(lambda x: x[[SEEDS.index(s) for s in seeds]], params)
    ev = Evaluator(ENV, slots, len(seeds), workers)
    try:
        results = ev.run_seeds(make_seeds_policy(agent, stacked, seeds), seeds, episodes)
        return results, ev.last_episodes
    finally:
        ev.close()


def test_parallel_equals_single_process(tiny):
    agent, params = tiny
    single, single_eps = evaluate(agent, params, workers=0, slots=2)
    parallel, parallel_eps = evaluate(agent, params, workers=2, slots=2)
    for key in ("success", "return", "length", "final_obs"):
        np.testing.assert_array_equal(single_eps[key], parallel_eps[key], err_msg=key)
    for a, b in zip(single, parallel):
        assert {k: v for k, v in a.items() if "per_sec" not in k} == {k: v for k, v in b.items() if "per_sec" not in k}
    # Episodes differ from each other (the check above is not vacuous), and per seed.
    assert len({tuple(o) for o in single_eps["final_obs"].reshape(-1, 28).round(6)}) == 2 * 3
    # A seed's episodes do not depend on which other seeds share the evaluation.
    alone, alone_eps = evaluate(agent, params, workers=0, slots=2, seeds=[7])
    np.testing.assert_array_equal(alone_eps["final_obs"][0], single_eps["final_obs"][1])


def test_dead_worker_names_worker_slot_and_episode(tiny):
    agent, params = tiny
    ev = Evaluator(ENV, 2, 2, workers=2)
    policy = make_seeds_policy(agent, params, SEEDS)
    calls = 0

    def killing_policy(obs, episodes, chunks):
        nonlocal calls
        calls += 1
        if calls == 3:
            ev.envs.procs[1].kill()
            ev.envs.procs[1].join()
        return policy(obs, episodes, chunks)

    try:
        with pytest.raises(EvaluationFailed, match=r"episode \d+ of seed \d+ \(slot [13]\).*env worker 1 .*died"):
            ev.run_seeds(killing_policy, SEEDS, 3)
    finally:
        ev.close()


def test_pool_and_local_backends_agree_step_by_step():
    local, pool = LocalEnvs(ENV, 3), EnvWorkerPool(ENV, 3, 2)
    try:
        a, b = local.reset({0: 1, 1: 2, 2: 3}), pool.reset({0: 1, 1: 2, 2: 3})
        for s in range(3):
            np.testing.assert_array_equal(a[s], b[s])
        chunk = np.random.default_rng(0).uniform(-1, 1, (5, 5)).astype(np.float32)
        a, b = local.step_chunks({0: chunk, 2: chunk}), pool.step_chunks({0: chunk, 2: chunk})
        for s in (0, 2):
            np.testing.assert_array_equal(a[s].obs, b[s].obs)
            np.testing.assert_array_equal(a[s].rewards, b[s].rewards)
            assert a[s].steps == b[s].steps == 5 and not a[s].done
        pool.procs[0].kill()
        with pytest.raises(EnvWorkerError, match=r"env worker 0 .*died") as info:
            pool.step_chunks({0: chunk})
        assert info.value.worker == 0 and 0 in info.value.slots
    finally:
        local.close()
        pool.close()


def test_pool_plan_caps_workers_and_memory(monkeypatch):
    import lps.training.envs as envs

    messages = []
    monkeypatch.setattr(envs, "available_cores", lambda: 2)
    assert plan_pool(10, 64, messages.append) == (10, 2)
    assert "more than the 2 cores" in messages[-1]
    assert plan_pool(10, None, messages.append) == (10, 2)
    assert plan_pool(1, None, messages.append) == (1, 1)
    monkeypatch.setattr(envs, "available_memory_bytes", lambda: 5 * envs.ENV_MEMORY_BYTES)
    assert plan_pool(10, 1, messages.append) == (4, 1)
    assert "environments need" in messages[-1]


def test_envs_are_made_and_reset_without_the_float32_bounds_warning():
    """OGBench rebuilds its action space at every reset, so gymnasium warned about float64 bounds
    once per episode and per worker; that one warning is gone, any other still shows."""
    import warnings

    from lps.training.envs import make_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = make_env("cube-single-singletask-task1-v0")
        for seed in range(2):
            env.reset(seed=seed)
            env.step(np.zeros(5, np.float32))
        warnings.warn("another warning", UserWarning)
        env.close()
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "precision lowered" in m], messages
    assert "another warning" in messages
