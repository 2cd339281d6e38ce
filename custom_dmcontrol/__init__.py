"""Our small additions to upstream dm_control (never a copy of it).

- `split_task_name` / `load_task`: `domain_task` names such as `ball_in_cup_catch` -> a seeded suite environment.
- `prefer_headless_backend` / `configure_rendering_backend`: a `MUJOCO_GL` that works without a display; the
  second proves it by rendering and is called only when something is about to render.
- `check_versions`: warn when the installed mujoco / dm_control pair is not the one this project supports.
"""

from custom_dmcontrol.rendering import configure_rendering_backend, prefer_headless_backend
from custom_dmcontrol.tasks import load_task, split_task_name, task_names
from custom_dmcontrol.versions import SUPPORTED_VERSIONS, check_versions

__all__ = [
    "SUPPORTED_VERSIONS",
    "check_versions",
    "configure_rendering_backend",
    "load_task",
    "prefer_headless_backend",
    "split_task_name",
    "task_names",
]
