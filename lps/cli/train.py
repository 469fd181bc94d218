"""`lps train`, `lps eval` and `lps agents`.

Every field of the training config and of the chosen agent's config is a flag of `lps train`
(see `lps train --agent NAME --help`); unknown flags and impossible values are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Annotated

import tyro

from lps import agents
from lps.cli.args import drop_flag, flag_values, seed_arg, split_commas
from lps.deploy.offline_eval import evaluate_on_dataset
from lps.deploy.policy import evaluate_run
from lps.files import user_path
from lps.training import config
from lps.training.evaluate import MAX_EVAL_EPISODES
from lps.training.loop import train


def train_command(argv: list[str]) -> int:
    argv = split_commas(argv, "--seeds")
    known = _known_flags(argv)
    if known.resume is not None:
        agent_name, train_cfg, agent_cfg = _resumed(known)
        argv = drop_flag(argv, "--run-dir")
    else:
        agent_name = known.agent or "lps"
        train_cfg, agent_cfg = config.preset(known.preset or "paper", agents.config_class(agent_name))
    args = tyro.cli(_args_class(agent_name, known, train_cfg, agent_cfg), args=argv, prog="lps train")
    train(agent_name, args.train, args.agent_config, resume=known.resume is not None)
    return 0


def _known_flags(argv: list[str]) -> argparse.Namespace:
    """The flags that choose the defaults of every other one: --agent, --preset, --resume (and --run-dir)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--agent", default=None)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--resume", default=None)
    pre.add_argument("--run-dir", default=None)
    known, _ = pre.parse_known_args(argv)
    presets = flag_values(argv, "--preset")
    if len(presets) > 1:
        raise ValueError(
            f"--preset is given {len(presets)} times ({', '.join(presets)}); give one: a preset sets many fields at "
            "once, and single flags after it override them"
        )
    return known


def _resumed(known: argparse.Namespace) -> tuple:
    """(agent name, train config, agent config) of the run `--resume` names, its seeds those found there."""
    resume = resume_target(known.resume, known.run_dir)
    # A run directory, or the parent of the seed<k> directories of seeds trained together.
    seed_dirs = (
        []
        if os.path.exists(os.path.join(resume, config.CONFIG_JSON))
        else sorted(p.parent for p in Path(resume).glob(f"seed*/{config.CONFIG_JSON}"))
    )
    if not os.path.exists(os.path.join(resume, config.CONFIG_JSON)):
        for orphan in sorted(Path(resume).glob("seed*")):
            if orphan.is_dir() and not (orphan / config.CONFIG_JSON).exists():
                print(
                    f"[lps] warning: {orphan} has no {config.CONFIG_JSON} (it stopped before starting): it is not "
                    f"resumed; start it with `lps train --seed N --run-dir {orphan}` and the others' flags"
                )
    agent_name, train_cfg, agent_cfg, _ = config.load_config(seed_dirs[0] if seed_dirs else resume)
    if known.agent not in (None, agent_name):
        raise ValueError(f"{resume} is a run of agent {agent_name!r}, not {known.agent!r}")
    seeds = tuple(config.load_config(d)[1].seed for d in seed_dirs)
    return agent_name, dataclasses.replace(train_cfg, run_dir=resume, seeds=seeds), agent_cfg


def _args_class(agent_name: str, known: argparse.Namespace, train_cfg, agent_cfg) -> type:
    """The dataclass tyro reads `lps train`'s flags into: every field of both configs, these as defaults."""
    Args = dataclasses.make_dataclass(
        "Args",
        [
            ("agent", str, dataclasses.field(default=agent_name)),
            ("preset", str, dataclasses.field(default=known.preset or "paper")),
            ("resume", "str | None", dataclasses.field(default=known.resume)),
            ("train", Annotated[config.TrainConfig, tyro.conf.OmitArgPrefixes], dataclasses.field(default=train_cfg)),
            (
                "agent_config",
                Annotated[type(agent_cfg), tyro.conf.OmitArgPrefixes],
                dataclasses.field(default=agent_cfg),
            ),
        ],
    )
    Args.__doc__ = f"Train agent {agent_name!r} (defaults shown are those of preset {known.preset or 'paper'!r})."
    return Args


def resume_target(resume: str, run_dir: str | None) -> str:
    """The run directory `--resume` names; `--run-dir` beside it must name the same one."""
    if not resume.strip():
        raise ValueError("--resume needs a run directory, got an empty string")
    resume = user_path(resume)
    if run_dir is not None and os.path.abspath(user_path(run_dir)) != os.path.abspath(resume):
        raise ValueError(
            f"--run-dir {run_dir} differs from --resume {resume}: a resume continues the run where it is; "
            "drop --run-dir (to start a new run elsewhere, leave out --resume)"
        )
    return resume


def eval_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lps eval", description="Evaluate a run's saved policy.")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=None,
                   help=f"default: the run's eval episodes (at most {MAX_EVAL_EPISODES})")  # fmt: skip
    p.add_argument("--seed", type=seed_arg, default=None, help="evaluation seed (default: the run's seed)")
    p.add_argument("--workers", type=int, default=None, help="env worker processes (default: one per core; 0: none)")
    p.add_argument("--chunk-timeout", type=float, default=None, metavar="SECONDS",
                   help="a worker that takes longer to reset or execute one action chunk is killed and the "
                        "evaluation fails, naming its episodes (default: the run's --eval-chunk-timeout, 60)")  # fmt: skip
    p.add_argument("--dataset", default=None,
                   help="held-out recorded episodes (robot folder or npz): report the action error instead of rolling out")  # fmt: skip
    p.add_argument("--skip-bad", action="store_true", help="with --dataset DIR: skip bad episodes (listed)")
    a = p.parse_args(argv)
    _check_eval_args(p, a, MAX_EVAL_EPISODES)
    if a.dataset is not None:
        result = evaluate_on_dataset(a.run_dir, a.dataset, seed=a.seed, skip_bad=a.skip_bad)
    else:
        result = evaluate_run(a.run_dir, episodes=a.episodes, seed=a.seed, workers=a.workers,
                              chunk_timeout=a.chunk_timeout)  # fmt: skip
    print(" ".join(f"{k}={v:.4g}" for k, v in result.items()))
    return 0


def _check_eval_args(p: argparse.ArgumentParser, a: argparse.Namespace, max_episodes: int) -> None:
    if a.skip_bad and a.dataset is None:
        p.error("--skip-bad applies to the episodes of --dataset; give --dataset DIR")
    if a.episodes is not None and a.episodes < 1:
        p.error("--episodes must be at least 1")
    if a.episodes is not None and a.episodes > max_episodes:
        p.error(f"--episodes {a.episodes} is above {max_episodes}: every episode's results are kept in memory "
                "(the paper evaluates 50); evaluate fewer")  # fmt: skip
    if a.workers is not None and a.workers < 0:
        p.error("--workers must be >= 0")
    if a.chunk_timeout is not None and not 0 < a.chunk_timeout < float("inf"):
        p.error(f"--chunk-timeout must be a positive number of seconds, got {a.chunk_timeout}")


def agents_command(argv: list[str]) -> int:
    for name, (cls, cfg_cls) in sorted(agents.REGISTRY.items()):
        cfg = agents.published_defaults(name, cfg_cls())
        keys = ", ".join(f"{k}={getattr(cfg, k) if getattr(cfg, k) is not None else 'per-env'}" for k in cls.key_fields)
        print(f"{name:10s} {cls.summary}\n{'':10s} {keys}")
        for note in getattr(cls, "notes", ()):
            print(f"{'':10s} - {note}")
    return 0
