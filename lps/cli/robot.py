"""`lps robot-sim`: an OGBench task playing the robot of `lps serve --learn`."""

from __future__ import annotations

import argparse
import os

import numpy as np

from lps.deploy.robot_sim import DEFAULT_CHUNK_LEN, simulate


def robot_sim_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lps robot-sim", description="A simulated robot for `lps serve --learn`.")
    p.add_argument("url", nargs="?", default=None, help="the server, e.g. ws://127.0.0.1:8000 (not with --scripted)")
    p.add_argument("--env", required=True, help="OGBench task playing the robot, e.g. cube-single-play-singletask-task1-v0")
    p.add_argument("--episodes", type=int, default=10, help="episodes to play (and send)")
    p.add_argument("--token", default=None, help="the server's --token (default: $LPS_TOKEN)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode's reset (and of the operator's draws)")
    p.add_argument("--max-steps", type=int, default=None, help="end an episode (as a failure) after this many steps")
    p.add_argument("--intervene-prob", type=float, default=0.0,
                   help="probability that the scripted operator takes over a chunk (single-cube tasks)")
    p.add_argument("--scripted", action="store_true", help="the scripted operator plays every step (demonstrations)")
    p.add_argument("--no-send", action="store_true",
                   help="keep the episodes from the server: measure the served policy's success without training it")
    p.add_argument("--no-wait", action="store_true",
                   help="play the next episode at once; by default the robot waits until the learner has trained on "
                        "the last episode, as between a real robot's rollouts")  # fmt: skip
    p.add_argument("--record", default=None, metavar="FILE.npz", help="add every episode to this dataset file")
    p.add_argument("--chunk-len", type=int, default=None,
                   help=f"chunk length of the recording's labels (default: the server's; {DEFAULT_CHUNK_LEN} with --scripted)")
    a = p.parse_args(argv)
    _check_args(p, a)
    results = simulate(a.env, a.url, episodes=a.episodes, token=a.token or os.environ.get("LPS_TOKEN"), seed=a.seed,
                       max_steps=a.max_steps, intervene_prob=a.intervene_prob, scripted=a.scripted,
                       send=not a.no_send, wait=not a.no_wait, record=a.record, chunk_len=a.chunk_len)  # fmt: skip
    rate = np.mean([r["success"] for r in results])
    tail = f", final policy_version {results[-1]['policy_version']}" if not a.scripted else ""
    where = f"; recorded in {a.record}" if a.record else ""
    print(f"[lps robot-sim] {len(results)} episodes, success {rate:.2f}{tail}{where}")
    return 0


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.episodes < 1:
        p.error("--episodes must be at least 1")
    if a.scripted == (a.url is not None):
        p.error("give the server's URL, or --scripted to let the scripted operator play without one")
    if not 0.0 <= a.intervene_prob <= 1.0:
        p.error(f"--intervene-prob must lie in [0, 1], got {a.intervene_prob}")
    if a.scripted and a.record is None:
        p.error("--scripted plays without a server: add --record FILE.npz to keep its episodes")
