"""The `lps` command: train, eval, data (generate, prepare, robot), agents, report, toy, sweep,
serve, robot-sim and serve-replay; each command's page is listed in README.md (docs/training.md
for `lps train` and `lps eval`). `main` hands a command's arguments to its module here (train,
data, experiments, sweep, serve, robot), which parses them and calls plain functions of the library.

`main` imports only the chosen command's module (COMMANDS names it), so `lps --help` and a light
command stay fast and `lps serve` sets XLA_FLAGS (lps.cli.devices) before anything imports JAX.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

from lps.cli.devices import request_learner_device

USAGE = """\
    lps train [--agent lps] [--preset paper|quick|toy] [--seeds 0,1,2] [--resume RUN_DIR] [--any-config-field VALUE ...]
    lps eval RUN_DIR [--episodes K] [--seed S] [--workers W] [--dataset DIR|FILE.npz [--skip-bad]]   (--dataset: action error on held-out episodes)
    lps data generate ENV [--episodes N] [--seed S] [--workers W] [--data-dir DIR] [--overwrite]
    lps data prepare TASK --out FILE.npz     (a relabelled npz that trains without OGBench installed)
    lps data robot DIR [--image-size 128] [--skip-bad] [...]   (check + cache a folder of robot episodes)
    lps agents
    lps report RUNS_DIR [--out DIR] [--reps 1000] [--seed 0] [--final last|max]   (tables with 95 % CIs, curves)
    lps toy list|figure2|figure3 [--task four-gaussians] [--steps N]   (the paper's analysis figures)
    lps sweep [FILE.yaml|.toml] [--agents A ...] [--tasks T ...] [--seeds 0,1,2] [--grid FIELD=V1,V2 ...]
              [--out DIR] [--workers N] [--ray ADDRESS] [--dry-run] [-- TRAIN ARGS ...]   (resumable grids of runs)
    lps serve RUN_DIR [--host 127.0.0.1] [--port 8000] [--device auto|cpu|gpu]   (policy server for a robot)
              [--learn --token T [--utd U] [--online-mix balanced|buffer] [--dataset DIR]]   (+ fine-tune on its episodes)
    lps robot-sim [URL] --env TASK --episodes N [--token T] [--intervene-prob P] [--scripted] [--record F.npz]
                                                              (an OGBench task as the robot of `lps serve --learn`)
    lps serve-replay URL EPISODE [--episode K] [--stride N] [--run RUN_DIR]   (replay a recorded episode, action error)
""".rstrip()

COMMANDS = {  # command -> (its module, the function that takes its arguments)
    "train": ("lps.cli.train", "train_command"),
    "eval": ("lps.cli.train", "eval_command"),
    "data": ("lps.cli.data", "data_command"),
    "agents": ("lps.cli.train", "agents_command"),
    "toy": ("lps.cli.experiments", "toy_command"),
    "report": ("lps.cli.experiments", "report_command"),
    "sweep": ("lps.cli.sweep", "sweep_command"),
    "serve": ("lps.cli.serve", "serve_command"),
    "serve-replay": ("lps.cli.serve", "serve_replay_command"),
    "robot-sim": ("lps.cli.robot", "robot_sim_command"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nlps: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    if argv[0] == "serve":
        request_learner_device(argv[1:])  # sets XLA_FLAGS: before anything imports JAX (just below)
    from lps.training.rundir import TrainingInterrupted  # imports JAX: not for `lps --help`

    module, function = COMMANDS[argv[0]]
    try:
        return getattr(importlib.import_module(module), function)(argv[1:])
    except TrainingInterrupted as e:
        print(f"lps {argv[0]}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"lps {argv[0]}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lps agents | head -1`: the reader has what it wanted; not an error
        _silence_stdout()
        return 0
    except OSError as e:
        print(f"lps {argv[0]}: error: {_os_error(e)}", file=sys.stderr)
        return 1
    except (ValueError, ImportError, RuntimeError, MemoryError) as e:
        stopped = getattr(e, "exit_code", None)  # a clean stop on a signal (lps.data.generate.GenerationStopped)
        print(f"lps {argv[0]}: {'' if stopped else 'error: '}{e}", file=sys.stderr)
        return stopped or 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush into the closed pipe is silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _os_error(e: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and what to do."""
    if e.errno is None or e.strerror is None:  # raised by lps with its own message
        return str(e.args[0] if len(e.args) == 1 else e)
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    hint = {
        errno.ENOSPC: "the disk is full: free some space; files written before stay intact, so resume after",
        errno.EACCES: "no permission: choose a folder you can write to",
        errno.EROFS: "the file system is read-only: choose another folder",
        errno.ENAMETOOLONG: "a name is longer than the file system allows: choose a shorter path",
        errno.EISDIR: "a folder is where a file should be: give a file path",
        errno.ENOTDIR: "a file is where a folder should be: choose another path",
        errno.EDQUOT: "the disk quota is exceeded: free some space",
    }.get(e.errno, "")
    return f"{e.strerror}" + (f": {paths}" if paths else "") + (f" ({hint})" if hint else "")
