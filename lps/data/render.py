"""Offscreen rendering for OGBench's visual environments (64x64 RGB observations); see docs/data.md
("Pixel tasks").

`choose_gl_backend` (run when `lps` is imported) sets $MUJOCO_GL on a headless machine, if unset,
to an installed backend: EGL with an NVIDIA GPU, else OSMesa, else EGL via Mesa's llvmpipe.
`require_renderer`, called before any visual environment is made, renders one tiny frame and
raises `RendererUnavailable` naming what to install instead of a deep OpenGL traceback.
"""

from __future__ import annotations

import ctypes.util
import functools
import os
import sys
import time

from lps.data.gym_env import make_gym_env

VISUAL_PREFIX = "visual-"
INSTALL_HINT = (
    "install a software OpenGL for MuJoCo: on Debian/Ubuntu `apt-get install -y libosmesa6` (OSMesa; then "
    "MUJOCO_GL=osmesa) or `apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri` (EGL: a GPU's driver when "
    "there is one, else Mesa's llvmpipe on the CPU; then MUJOCO_GL=egl)"
)


class RendererUnavailable(RuntimeError):
    """No working offscreen OpenGL renderer for MuJoCo; the message says what to install."""


def is_visual(env: str) -> bool:
    """Whether an OGBench env / task / gymnasium id has pixel observations (`visual-...`)."""
    return env.startswith(VISUAL_PREFIX)


def state_env(env: str) -> str:
    """The state-based twin of a visual env name (same scene, tasks and dynamics)."""
    return env[len(VISUAL_PREFIX) :] if is_visual(env) else env


def choose_gl_backend() -> str | None:
    """Set $MUJOCO_GL for a headless machine if it is unset; returns the backend in effect."""
    chosen = os.environ.get("MUJOCO_GL")
    if chosen or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform != "linux":
        return chosen
    # Without a GPU, OSMesa (when installed) renders as fast as Mesa's EGL here and, unlike EGL,
    # exits cleanly (mujoco's EGL contexts print tracebacks when freed after EGL's exit handler).
    gpu = any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl"))
    order = (("egl", "EGL"), ("osmesa", "OSMesa")) if gpu else (("osmesa", "OSMesa"), ("egl", "EGL"))
    platform = os.environ.get("PYOPENGL_PLATFORM", "").lower()
    if platform in ("egl", "osmesa"):  # mujoco refuses a backend that differs from PyOpenGL's platform
        order = [o for o in order if o[0] == platform]
    for backend, library in order:
        if ctypes.util.find_library(library):
            os.environ["MUJOCO_GL"] = backend
            # PyOpenGL must use the same platform, and (like mujoco) reads it on first import.
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            return backend
    return None


def require_renderer(env: str = "a visual environment") -> str:
    """Check that MuJoCo can render offscreen (once per process); returns the backend's name.

    Raises `RendererUnavailable` (what failed and what to install) otherwise."""
    backend = choose_gl_backend() or "glfw (the default, which needs a display)"
    try:
        _render_one_frame()
    except Exception as e:  # noqa: BLE001  (any failure here means the same thing: no renderer)
        raise RendererUnavailable(
            f"{env} renders its observations with MuJoCo, but offscreen rendering failed with MUJOCO_GL={backend} "
            f"({type(e).__name__}: {e}). To fix it, {INSTALL_HINT} (MuJoCo reads MUJOCO_GL when it is first "
            "imported: set it before starting Python)."
        ) from e
    return backend


@functools.lru_cache(maxsize=1)  # a failure raises, so it is not cached and is retried next time
def _render_one_frame() -> None:
    import mujoco

    model = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=".1"/></worldbody></mujoco>')
    renderer = mujoco.Renderer(model, 8, 8)
    try:
        renderer.update_scene(mujoco.MjData(model))
        renderer.render()
    finally:
        renderer.close()


def image_shape(env_id: str) -> tuple[int, int, int]:
    """(height, width, 3) of a visual gymnasium env's observations, read from its registration
    (no renderer needed)."""
    import gymnasium

    kwargs = gymnasium.spec(env_id).kwargs
    return int(kwargs["height"]), int(kwargs["width"]), 3


def check_image_size(data_shape, env_shape, env: str) -> None:
    """A dataset's (or policy's) image shape must be the one the env renders."""
    if data_shape is not None and env_shape is not None and len(env_shape) == 3 and tuple(data_shape) != tuple(env_shape):
        raise ValueError(
            f"the data's images are {tuple(data_shape)} but {env} renders {tuple(env_shape)}: a policy trained on "
            "them cannot act in it; regenerate the data for this env (`lps data generate`), or pick the matching --env"
        )


def measure_render_rate(env_id: str, frames: int = 4) -> tuple[float, float]:
    """(frames/s of wall time, CPU seconds per frame) of rendering `env_id`'s observation in this
    process. The CPU time does not depend on how busy the machine is; the wall rate does."""
    env = make_gym_env(env_id)
    try:
        env.reset(seed=0)
        env.unwrapped.render()  # the first frame builds the GL context
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(frames):
            env.unwrapped.render()
        return frames / (time.perf_counter() - start), (time.process_time() - cpu) / frames
    finally:
        renderer = getattr(env.unwrapped, "_renderer", None)
        if renderer is not None:
            renderer.close()
        env.close()
