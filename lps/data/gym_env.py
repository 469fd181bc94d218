"""Making an OGBench environment without the warnings it raises on every episode (docs/data.md).

OGBench's manipulation envs build their action space anew on every access (each reset samples
from it), so gymnasium prints "Box low's/high's precision lowered by casting to float32" (for its
float64 bounds) at every reset, in every evaluation and online worker: a screenful on a newcomer's
first `lps train`. That one warning is ignored for the process from the first env on (it is raised
inside OGBench's own reset, so no narrower scope catches it), and MuJoCo's "no DISPLAY" one while
the env is made; nothing else is silenced.
"""

from __future__ import annotations

import warnings

FLOAT32_BOUNDS_WARNING = r".*Box (low|high)'s precision lowered by casting to float32.*"


def make_gym_env(env_id: str, **kwargs):
    """`gymnasium.make(env_id, **kwargs)`, with the float32-bounds warning ignored (see above)."""
    import gymnasium

    warnings.filterwarnings("ignore", message=FLOAT32_BOUNDS_WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*DISPLAY environment variable.*")
        return gymnasium.make(env_id, **kwargs)
