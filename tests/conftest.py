"""Session-wide test settings.

Most of the suite's time is XLA compiling the same small programs again and again (every toy run,
every CLI subprocess compiles the same update). JAX's persistent compilation cache, pointed at one
directory for the whole session, lets every test and every `lps` subprocess it starts reuse a
program another one compiled. The cache is keyed by the program, the jax version and the flags, so
results are bit-for-bit those of a fresh compile; it only saves time. The directory is new for each
session (a clean CI run starts empty) unless `JAX_COMPILATION_CACHE_DIR` is already set, which keeps
a cache across local runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile

# Set before anything imports jax (conftest is imported before the test modules), and in the
# environment so subprocesses and pytest-xdist workers inherit the same directory.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="lps-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # small programs are most of them
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
