"""lps: Latent Policy Steering and its comparison set for offline RL, in JAX; see README.md and docs/layout.md.
"""

__version__ = "0.1.0"

# Before anything imports mujoco: a headless machine gets an offscreen GL backend (see lps.data.render).
from lps.data.render import choose_gl_backend as _choose_gl_backend  # noqa: E402

_choose_gl_backend()


def load_policy(run_dir, seed: int = 0, device: str = "auto"):
    """Load a trained policy from a run directory: `policy(obs) -> action chunk (H, A)`.
    `device`: "auto" (host CPU, fastest for one observation at a time), "cpu" or "gpu"."""
    from lps.deploy.policy import load_policy as _load

    return _load(run_dir, seed, device)
