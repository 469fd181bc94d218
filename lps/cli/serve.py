"""`lps serve` (a run's policy for robots, optionally learning from their episodes) and
`lps serve-replay` (a recorded episode replayed to a running server).

Importing this module imports no JAX (lps.deploy.serve and lps.deploy.replay_check keep it out): the
learner, which imports JAX, is imported once `lps.cli.main` has set XLA_FLAGS for it (lps.cli.devices).
"""

from __future__ import annotations

import argparse
import ipaddress
import os

from lps.deploy.openpi import parse_obs_key
from lps.deploy.replay_check import EPISODE_READERS, format_result, replay_against_server
from lps.deploy.serve import DEFAULT_MAX_BATCH, PROTOCOLS, serve
from lps.files import write_json


def serve_command(argv: list[str]) -> int:
    from lps.deploy.learner import LearnerConfig  # imports JAX (see the module's docstring)

    p = _serve_parser()
    a = p.parse_args(argv)
    token = a.token or os.environ.get("LPS_TOKEN")
    _check_serve_args(p, a, token)
    learn = None
    if a.learn:
        learn = LearnerConfig(token=token, utd=a.utd, batch_size=a.batch_size, start_episodes=a.start_episodes,
                              lr=a.lr, lr_schedule=a.lr_schedule, failures=a.failures, clone=a.clone,
                              range_margin=a.range_margin, mix=a.online_mix,
                              buffer_rows=a.buffer_rows, max_steps=a.max_steps, update_block=a.update_block,
                              dataset=a.dataset, skip_bad=a.skip_bad)  # fmt: skip
    serve(a.run_dir, a.host, a.port, a.device, weights=a.weights, seed=a.seed, log_every_s=a.log_every,
          max_message_mb=a.max_message_mb, max_batch=a.max_batch, precompile=a.precompile, protocol=a.protocol,
          obs_keys=a.obs_key, learn=learn, log=lambda s: print(s, flush=True))  # fmt: skip
    return 0


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lps serve",
        description="Serve a run's policy over websockets + msgpack (client: lps.client.PolicyClient).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", help="a run directory (config.json + checkpoint.msgpack)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface; no auth!)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto", help="where the policy runs")
    p.add_argument("--weights", choices=["latest", "offline"], default="latest",
                   help="latest: the learner's fine-tuned weights when the run has them (else the offline ones)")
    p.add_argument("--seed", type=int, default=0, help="seed of the acting noise (stochastic agents)")
    p.add_argument("--log-every", type=float, default=10.0, help="seconds between latency summaries (0: off)")
    p.add_argument("--max-message-mb", type=float, default=64.0, help="largest request accepted, in MiB")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help="most observations per request; batches are padded to powers of two up to it, so "
                        "clients cannot make the server compile without bound")  # fmt: skip
    p.add_argument("--precompile", action=argparse.BooleanOptionalAction, default=True,
                   help="compile every batch size up to --max-batch at start-up, so no request waits for (or "
                        "shares the CPU with) a compile; --no-precompile: each size on first use")  # fmt: skip
    p.add_argument("--protocol", choices=PROTOCOLS, default="lps",
                   help="lps: lps.client.PolicyClient; openpi: openpi-client's WebsocketClientPolicy (metadata "
                        "frame on connect, {'actions'} replies)")  # fmt: skip
    p.add_argument("--obs-key", action="append", default=[], type=parse_obs_key, metavar="OPENPI_KEY=LPS_KEY",
                   help="(--protocol openpi; repeatable) read the run's LPS_KEY (state, image, image/CAMERA) from "
                        "the client's OPENPI_KEY; several keys for one LPS_KEY are joined on the last axis in "
                        "order. Default: observation/state, observation/image, observation/CAMERA")  # fmt: skip
    _add_learn_flags(p)
    return p


def _add_learn_flags(p: argparse.ArgumentParser) -> None:
    from lps.deploy.learner import LearnerConfig  # imports JAX (see the module's docstring)

    learn = p.add_argument_group("learning from the robot's episodes (see lps.deploy.learner)")
    learn.add_argument("--learn", action="store_true", help="accept finished episodes and fine-tune on them online")
    learn.add_argument("--token", default=None, help="episodes are accepted only with this token (default: $LPS_TOKEN)")
    learn.add_argument("--dataset", default=None, help="offline data of the balanced batches (default: the run's)")
    learn.add_argument("--skip-bad", action="store_true", help="skip bad episodes of the --dataset folder (listed)")
    recipe = LearnerConfig(token="-")  # the defaults (the fine-tuning recipe, see docs: "Fine-tuning on a robot")
    learn.add_argument("--utd", type=float, default=recipe.utd, help="gradient updates per received step")
    learn.add_argument("--batch-size", type=int, default=recipe.batch_size,
                       help="batch of the online updates (half offline, half online); 0: the run's --batch-size")
    learn.add_argument("--start-episodes", type=int, default=recipe.start_episodes,
                       help="updates start once this many episodes have arrived (earlier ones owe no updates)")
    learn.add_argument("--lr", type=float, default=recipe.lr, help="online learning rate; 0: the run's --lr")
    learn.add_argument("--lr-schedule", choices=["restart", "continue"], default=recipe.lr_schedule,
                       help="restart: a constant --lr online (Adam's moments kept); continue: the offline schedule goes on")
    learn.add_argument("--failures", choices=["timeout", "penalty"], default=recipe.failures,
                       help="timeout: a failed episode was cut off (-1 per step, bootstrapped); penalty: the paper's "
                            "failure reward at step T - H, no bootstrapping (the release)")  # fmt: skip
    learn.add_argument("--range-margin", type=float, default=recipe.range_margin,
                       help="refuse episodes whose states/actions leave the training data's range by more than this "
                            "many widths (a glitch); inf: no check")  # fmt: skip
    learn.add_argument("--clone", choices=["successes", "all"], default=recipe.clone,
                       help="rows the base policy clones: successful episodes and operator takeovers, or all (the release)")
    learn.add_argument("--online-mix", choices=["balanced", "buffer"], default="balanced",
                       help="balanced: half offline, half online batches (paper); buffer: uniform over both")
    learn.add_argument("--buffer-rows", type=int, default=100_000, help="online rows the replay buffer holds")
    learn.add_argument("--max-steps", type=int, default=2000, help="longest episode accepted")
    learn.add_argument("--update-block", type=int, default=50, help="updates per compiled dispatch")


def _check_serve_args(p: argparse.ArgumentParser, a: argparse.Namespace, token: str | None) -> None:
    if a.learn and not token:
        where = "on " + a.host + (" (reachable from other machines)" if not _is_loopback(a.host) else "")
        p.error(f"--learn accepts data that changes the policy, so it needs a token; refusing to start {where} "
                "without one: pass --token T or set LPS_TOKEN")  # fmt: skip
    if not 0 <= a.port < 65536:
        p.error(f"--port must be in 0..65535, got {a.port}")
    if a.max_message_mb <= 0:
        p.error("--max-message-mb must be positive")
    if a.max_batch < 1:
        p.error(f"--max-batch must be at least 1, got {a.max_batch}")
    if not a.log_every >= 0:  # NaN too
        p.error(f"--log-every must be >= 0 seconds (0: off), got {a.log_every}")
    if a.obs_key and a.protocol != "openpi":
        p.error("--obs-key maps openpi's observation keys: it needs --protocol openpi")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_replay_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lps serve-replay",
        description="Replay a recorded episode's observations to `lps serve` and print the action error "
        "(MSE and max |error| per dimension) against the recorded actions.",
    )
    p.add_argument("url", help="the server, e.g. ws://127.0.0.1:8000")
    p.add_argument("episode", help=f"an episode file: {', '.join(EPISODE_READERS)}")
    p.add_argument("--episode", dest="index", type=int, default=0, help="which episode of an .npz (0-based)")
    p.add_argument("--stride", type=int, default=None, help="steps between queries (default: the chunk length)")
    p.add_argument("--max-queries", type=int, default=None, help="stop after this many chunks")
    p.add_argument("--run", default=None, help="the served run directory (its data settings read .h5 episodes)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each reply")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    a = p.parse_args(argv)
    if a.stride is not None and a.stride < 1:
        p.error("--stride must be at least 1")
    if a.max_queries is not None and a.max_queries < 1:
        p.error("--max-queries must be at least 1")
    try:
        result = replay_against_server(a.url, a.episode, a.index, a.run, a.stride, a.max_queries, a.timeout)
    except (ConnectionError, TimeoutError) as e:
        raise RuntimeError(str(e)) from e
    print(format_result(result))
    if a.json:
        write_json(a.json, result | {"url": a.url})
    return 0
