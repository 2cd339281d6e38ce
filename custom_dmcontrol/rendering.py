"""Pick an OpenGL backend for MuJoCo that works without a display.

dm_control reads `MUJOCO_GL` once, when `dm_control._render` is first imported (importing the suite does that),
and PyOpenGL cannot switch platforms inside a running process, so the backend has to be settled before dm_control
loads. Two steps keep physics-only runs free of any OpenGL work:

- `prefer_headless_backend()` runs before our code imports dm_control. It never renders and never fails: on a
  Linux machine without a display it exports `egl` (or `osmesa`) when that library is installed, because GLFW,
  dm_control's own first choice, cannot open a context there and warns on import.
- `configure_rendering_backend()` runs when something is about to render. It proves a backend by rendering one
  tiny frame in a throw-away subprocess (a backend whose library imports fine can still fail at the first frame)
  and raises a one-line RuntimeError when none works.
"""

from __future__ import annotations

import ctypes.util
import functools
import os
import subprocess
import sys

_CANDIDATES = (("egl", "EGL"), ("osmesa", "OSMesa"))
_PROBE = "from dm_control import mujoco; mujoco.Physics.from_xml_string('<mujoco/>').render(8, 8)"
_FIX = "install libEGL (Debian libegl1) or OSMesa (Debian libosmesa6), or set MUJOCO_GL before Python starts"

# The MUJOCO_GL value exported by `prefer_headless_backend`, so it is not mistaken for the user's own choice.
_unproven_default: str | None = None


def prefer_headless_backend() -> None:
    """Before dm_control loads: steer it away from GLFW on a Linux machine without a display (no probing)."""
    global _unproven_default
    if os.environ.get("MUJOCO_GL") or "dm_control._render" in sys.modules:
        return
    if not sys.platform.startswith("linux") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    for backend, library in _CANDIDATES:
        if ctypes.util.find_library(library):
            os.environ["MUJOCO_GL"] = _unproven_default = backend
            return


@functools.cache
def _renders_with(backend: str) -> bool:
    env = {**os.environ, "MUJOCO_GL": backend}
    env.pop("PYOPENGL_PLATFORM", None)
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def configure_rendering_backend() -> str:
    """Return the `MUJOCO_GL` backend rendering will use, after making sure one works.

    A value the user set is respected as is. If dm_control has already fixed its backend in this process, that
    one is checked (it can no longer change). Otherwise `egl` is tried, then `osmesa`, and the first that renders
    is exported to `os.environ['MUJOCO_GL']`. Raises a one-line RuntimeError when no backend renders.
    """
    user_choice = os.environ.get("MUJOCO_GL")
    if user_choice and user_choice != _unproven_default:
        return user_choice
    dm_render = sys.modules.get("dm_control._render")
    if dm_render is not None:
        backend = dm_render.BACKEND or "none"
        if not _renders_with(backend):
            raise RuntimeError(f"MuJoCo cannot render with MUJOCO_GL={backend!r}, fixed when dm_control loaded; {_FIX}")
        return backend
    for backend, _ in _CANDIDATES:
        if _renders_with(backend):
            os.environ["MUJOCO_GL"] = backend
            return backend
    raise RuntimeError(f"no headless OpenGL backend renders MuJoCo (tried MUJOCO_GL=egl and osmesa); {_FIX}")
