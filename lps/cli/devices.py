"""The learner's second CPU device for `lps serve --learn`: XLA_FLAGS set before anything imports JAX.

`lps.cli.main` calls `request_learner_device` before it imports the command's module, so this module
imports nothing that imports JAX; the benches that run a learner call `ask_for_host_devices` too.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from lps.cli.args import flag_values

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def request_learner_device(argv: list[str]) -> None:
    """`lps serve --learn` on a CPU-only host: ask XLA for two host devices, so the learner trains on
    the second (lps.deploy.learner.spare_device) and acting never queues behind an update.

    XLA reads XLA_FLAGS once, when JAX starts its CPU backend, so this runs in `lps.cli.main` before
    anything imports JAX; it is the only place lps changes XLA_FLAGS (a flag the user set is kept).
    A host with a GPU acts there and needs no second CPU device."""
    if "--learn" not in argv or "jax" in sys.modules or DEVICE_COUNT_FLAG in os.environ.get("XLA_FLAGS", ""):
        return
    if _acts_on_cpu(argv):
        ask_for_host_devices(2)


def ask_for_host_devices(count: int) -> None:
    """Make XLA's CPU backend show `count` devices (before JAX starts; benches call this too)."""
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_COUNT_FLAG}={count}".strip()


def _acts_on_cpu(argv: list[str]) -> bool:
    """Whether `lps serve ARGV`'s policy will run on the CPU, judged without starting JAX: --device cpu,
    $JAX_PLATFORMS naming the CPU first, or no GPU/TPU plugin for JAX installed."""
    device = (flag_values(argv, "--device") or ["auto"])[-1]
    if device != "auto":
        return device == "cpu"
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return importlib.util.find_spec("jax_plugins") is None and importlib.util.find_spec("libtpu") is None
