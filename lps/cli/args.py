"""Argument helpers shared by the commands: the --seed type and reading flags out of a raw argv."""

from __future__ import annotations

import argparse

MAX_SEED = 2**32 - 1  # lps.training.config.MAX_SEED (not imported: it pulls in JAX)


def seed_arg(text: str) -> int:
    """argparse type of every --seed: an integer from 0 to MAX_SEED (JAX and NumPy seeds are unsigned 32-bit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_SEED} (seeds are unsigned 32-bit integers), "
                                         f"got {value}")  # fmt: skip
    return value


def flag_values(argv: list[str], flag: str) -> list[str]:
    """The values given to `flag` (as `flag VALUE` or `flag=VALUE`), in order."""
    return [arg.split("=", 1)[1] if arg != flag else argv[i + 1]
            for i, arg in enumerate(argv) if arg.startswith(flag + "=") or (arg == flag and i + 1 < len(argv))]  # fmt: skip


def drop_flag(argv: list[str], flag: str) -> list[str]:
    """`argv` without `flag` and its value (given as `flag VALUE` or `flag=VALUE`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def split_commas(argv: list[str], flag: str) -> list[str]:
    """Accept `--seeds 0,1,2` as well as `--seeds 0 1 2`."""
    out, in_flag = [], False
    for arg in argv:
        if arg.startswith("--"):
            in_flag = arg == flag
            if arg.startswith(flag + "="):
                out.append(flag)
                out.extend(x for x in arg.split("=", 1)[1].split(",") if x)
                continue
        elif in_flag:
            out.extend(x for x in arg.split(",") if x)
            continue
        out.append(arg)
    return out
