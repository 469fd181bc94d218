"""`lps robot-sim URL --env TASK --episodes N [--token T]`: a simulated robot for `lps serve --learn`.

It speaks exactly the robot's protocol (`lps.client.PolicyClient` and its episode recorder): an
OGBench task plays the role of the robot, each chunk the server sends is executed open-loop step
by step, every executed step is recorded, and the episode is sent with the environment's success
label when it ends (success, or the time limit: failure). So the whole loop - offline training,
serving, online fine-tuning on the "robot" - runs on one machine without hardware.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from lps.client import PolicyClient


def play_episodes(policy: PolicyClient, env, episodes: int, seed: int = 0, max_steps: int | None = None,
                  log=print) -> list[dict]:  # fmt: skip
    """Play `episodes` episodes of a gymnasium-style `env` (reset(seed=) -> (obs, info); step(a) ->
    (obs, reward, terminated, truncated, info) with info["success"]) through the served policy;
    each is sent on its end. Returns one {"success", "steps", "policy_version", "ack"} per episode."""
    results = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        success, steps = False, 0
        with policy.episode() as ep:
            done = False
            while not done:
                chunk = ep.act(np.asarray(obs, np.float32))
                for action in chunk:
                    action = np.clip(action, -1.0, 1.0)
                    ep.record(np.asarray(obs, np.float32), action)
                    obs, _, terminated, truncated, info = env.step(action)
                    steps += 1
                    success = bool(info.get("success", False))
                    done = terminated or truncated or success or (max_steps is not None and steps >= max_steps)
                    if done:
                        break
            ack = ep.finish(success=success)
        results.append({"success": success, "steps": steps, "policy_version": policy.last_policy_version, "ack": ack})
        log(f"[lps robot-sim] episode {i + 1}/{episodes}: {'success' if success else 'failure'} in {steps} steps, "
            f"policy_version {policy.last_policy_version}")  # fmt: skip
    return results


def make_env(task: str):
    """The OGBench task's environment (e.g. cube-single-play-singletask-task1-v0)."""
    try:
        import gymnasium
        import ogbench  # noqa: F401  (registers the environments)
    except ImportError as e:
        raise ImportError(f'lps robot-sim needs OGBench: pip install "lps[ogbench]" ({e})') from e
    from lps.data import tasks

    return gymnasium.make(tasks.parse_task(task).env_id)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lps robot-sim", description="A simulated robot for `lps serve --learn`.")
    p.add_argument("url", help="the server, e.g. ws://127.0.0.1:8000")
    p.add_argument("--env", required=True, help="OGBench task playing the robot, e.g. cube-single-play-singletask-task1-v0")
    p.add_argument("--episodes", type=int, default=10, help="episodes to play and send")
    p.add_argument("--token", default=None, help="the server's --token (default: $LPS_TOKEN)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode's reset")
    a = p.parse_args(argv)
    if a.episodes < 1:
        p.error("--episodes must be at least 1")
    env = make_env(a.env)
    try:
        with PolicyClient(a.url, token=a.token or os.environ.get("LPS_TOKEN")) as policy:
            results = play_episodes(policy, env, a.episodes, a.seed)
    finally:
        env.close()
    rate = np.mean([r["success"] for r in results])
    print(f"[lps robot-sim] {len(results)} episodes, success {rate:.2f}, final policy_version "
          f"{results[-1]['policy_version']}")  # fmt: skip
    return 0
